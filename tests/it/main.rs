//! The end-to-end and parity tests, one test binary with a module per area, so
//! libtorch, polars and tokenizers are linked into one binary, not one per area.
//!
//! `cargo test --release --test it` runs them all; `-- cli::` one area,
//! `-- --exact collectives::launch_flags_are_checked` one test. They run in parallel
//! threads of one process: each test writes under its own temporary folder,
//! asks the system for a free port, and sets variables only on the processes
//! it starts, never on this one.

mod common;

mod bad_inputs;
mod cli;
mod collectives;

mod distributed;
mod families;
mod family_runs;
mod gpu_script;
mod hub;
mod keyed_dropout;
mod memory;
mod modernbert;
mod parity;
mod plugins;
mod probe;
mod resume;
mod space;
mod sweep;
mod tensorboard;
