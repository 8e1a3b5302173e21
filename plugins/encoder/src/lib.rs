//! What the encoder model plugins (`bert`, `roberta`, `distilbert`) share: the
//! layers and the masked-LM pass (`layers.rs`), keyed dropout (`dropout.rs`),
//! the BERT-style `config.json` (`config.rs`, which RoBERTa's also is), the
//! matching of checkpoint tensors and the safetensors export (`weights.rs`),
//! and the variables as parameters (`store.rs`).
//!
//! An rlib, not a plugin: each model plugin links it and declares itself.

pub mod config;
pub mod dropout;
pub mod layers;
pub mod store;
pub mod weights;
