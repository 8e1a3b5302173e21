//! What the encoder model plugins (`bert`, `roberta`, `distilbert`,
//! `modernbert`) share: the
//! layers and the masked-LM pass (`layers.rs`), keyed dropout (`dropout.rs`),
//! rows of several documents (`documents.rs`), `model.options` (`options.rs`),
//! the BERT-style `config.json` (`config.rs`, which RoBERTa's also is), the
//! matching of checkpoint tensors and the safetensors export (`weights.rs`),
//! the variables as parameters (`store.rs`), and the `MlmModel` contract
//! implemented once for every family (`model.rs`).
//!
//! An rlib, not a plugin: each model plugin links it and declares itself.

pub mod config;
pub mod documents;
pub mod dropout;
pub mod layers;
pub mod model;
pub mod options;
pub mod store;
pub mod weights;
