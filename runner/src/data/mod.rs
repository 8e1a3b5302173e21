//! Data: stream corpora through the dataset component into a token store on
//! disk (`store.rs`, built by `prepare.rs`, found and shared by `cache.rs`),
//! view it as examples (packed or line by line), and serve masked, padded
//! batches.

pub mod batches;
pub mod cache;
pub mod examples;
pub mod prepare;
#[cfg(test)]
mod reference;
pub mod stats;
pub mod store;
pub mod tokenizer;

pub use batches::{Batch, BatchMaker, EvalSet};
pub use examples::Examples;
