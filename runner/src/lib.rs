//! `runner`: a declarative experiment runner for masked-language-model
//! pretraining of BERT-family encoders on libtorch.
//!
//! Where things happen:
//! - a recipe is parsed and checked in [`recipe`];
//! - `hf://` models and datasets are fetched into the Hugging Face cache in [`hub`];
//! - components are found by name in [`registry`] and built in [`components`];
//! - data becomes masked batches in [`data`];
//! - a training step happens in [`train::Trainer::fit`];
//! - eval is [`eval::evaluate`]; tables and summaries are written by [`report`];
//! - a template becomes many runs in [`sweep`]; runs become one table and plot in
//!   [`report::table`] and [`report::plot`].

pub mod allocator;
pub mod autocast;
pub mod c10_log;
pub mod cli;
pub mod components;
pub mod data;
pub mod device;
pub mod elf;
pub mod distributed;
pub mod eval;
pub mod precision;
pub mod hub;
pub mod recipe;
pub mod registry;
pub mod report;
pub mod sweep;
pub mod train;

/// User errors and exit codes, from the bottom layer (`runner_recipe::error`).
pub use runner_recipe::error;
