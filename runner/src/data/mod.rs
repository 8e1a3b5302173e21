//! Data: read corpora through the dataset component, tokenize, cut into
//! examples (packed or line by line), and serve masked, padded batches.

pub mod batches;
pub mod cache;
pub mod examples;
pub mod tokenizer;

pub use batches::{Batch, BatchMaker, EvalSet};
pub use examples::Examples;
