//! The bottom layer of the runner: everything about a recipe that needs
//! neither libtorch, polars nor a tokenizer, and the few plain pieces every
//! other layer shares. Nothing here imports from the runner.
//!
//! - [`raw`]: the recipe as written (serde types); [`parse`]: text and `--set`
//!   overrides ([`overrides`]) -> [`raw::RawRecipe`], errors naming file, key
//!   and line; [`check`]: the checks of values alone;
//! - [`precision`]: the `training.precision` names and which CPU features run
//!   them natively (the runner's `precision.rs` adds the device and libtorch);
//! - [`hf_uri`]: the `hf://` address forms;
//! - [`error`]: [`error::UserError`] and the exit codes, an interrupted run's included;
//! - [`fs::atomic_write`]: the one way a file is replaced whole;
//! - [`show`]: a YAML scalar as run names, reports and messages show it.
//!
//! The runner re-exports the recipe modules as `runner::recipe::{raw, parse,
//! overrides, check}`; the recipe fuzz target (`fuzz/`) depends on this crate alone.

pub mod check;
pub mod error;
pub mod fs;
pub mod hf_uri;
pub mod overrides;
pub mod parse;
pub mod precision;
pub mod raw;
pub mod show;
