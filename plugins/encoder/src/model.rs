//! The `MlmModel` contract, implemented once for every family: a family
//! ([`Family`]) gives its network, its variables and its export's
//! `config.json`; [`Mlm`] does the rest. A network ([`Network`]) encodes and
//! predicts; the sparse masked-LM pass on top of those is written once here.
//! BERT-like networks ([`MaskedLm`]) are networks as they are. Adding a
//! method to the contract is one edit here.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use anyhow::Result;
use runner_api::{MlmBatch, MlmModel, MlmOutput, Mode, ModelInfo, Parameter, IGNORE_INDEX};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::layers::MaskedLm;
use crate::store;

/// What one forward pass reads.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// (B, T) int64.
    pub input_ids: &'a Tensor,
    /// (B, T) int64, 1 at real tokens.
    pub attention_mask: &'a Tensor,
    /// (B, T) int64, each token's document within its row (-1 at padding),
    /// when attention must not cross documents (`MlmBatch::documents`).
    pub documents: Option<&'a Tensor>,
}

/// An encoder with its masked-LM head.
pub trait Network {
    /// Encoder output (B, T, H).
    fn encode(&self, x: &Inputs, mode: Mode) -> Result<Tensor>;
    /// Encoder output at the flat positions `at` only (N, H). Every position
    /// still serves as a key; a network may spare work on the other rows.
    fn encode_at(&self, x: &Inputs, at: &Tensor, mode: Mode) -> Result<Tensor>;
    /// The head: hidden states (.., H) to float32 logits (.., V).
    fn predict(&self, h: &Tensor) -> Tensor;
    /// Whether the network keeps attention within documents (`Inputs::documents`).
    fn reads_documents(&self) -> bool {
        false
    }

    /// Logits at every position (B, T, V).
    fn logits(&self, x: &Inputs, mode: Mode) -> Result<Tensor> {
        Ok(self.predict(&self.encode(x, mode)?))
    }

    /// Sparse prediction: the head runs only where `labels != IGNORE_INDEX`.
    /// Returns (loss, logits (N, V), labels (N,)).
    fn masked_lm(&self, x: &Inputs, labels: &Tensor, mode: Mode) -> Result<(Tensor, Tensor, Tensor)> {
        let labels = labels.f_reshape([-1])?; // (B*T,)
        // A read back to the host, kept: the sparse head's row count N is a
        // shape, so the host must know it. It is the pass's first op, so a GPU
        // waits only for the copies of this batch and the end of the previous
        // step, not for any of this pass's work.
        let at = labels.f_ne(IGNORE_INDEX)?.f_nonzero()?.f_squeeze_dim(1)?; // (N,)
        let picked = self.encode_at(x, &at, mode)?; // (N, H)
        let labels = labels.f_index_select(0, &at)?; // (N,)
        let logits = self.predict(&picked); // (N, V)
        let loss = if at.numel() == 0 {
            // No labelled token in this batch: a zero that still belongs to the graph.
            logits.sum(Kind::Float) * 0.0
        } else {
            logits.f_cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Mean, IGNORE_INDEX, 0.0)?
        };
        Ok((loss, logits, labels))
    }
}

impl<T: MaskedLm> Network for T {
    fn encode(&self, x: &Inputs, mode: Mode) -> Result<Tensor> {
        Ok(MaskedLm::encode(self, x.input_ids, x.attention_mask, x.documents, mode))
    }
    fn encode_at(&self, x: &Inputs, at: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(MaskedLm::encode_at(self, x.input_ids, x.attention_mask, x.documents, at, mode))
    }
    fn predict(&self, h: &Tensor) -> Tensor {
        self.head().forward(h, self.word_embeddings())
    }
    fn reads_documents(&self) -> bool {
        true
    }
}

/// What a model family gives the shared implementation.
pub trait Family: Send {
    type Net: Network;
    /// The network.
    fn net(&self) -> &Self::Net;
    /// Its variables, under the family's Hugging Face names.
    fn vars(&self) -> &VarStore;
    /// The `config.json` an export writes (the source's extra keys kept).
    fn export_config(&self) -> serde_json::Value;
    fn vocab_size(&self) -> i64;
    /// The longest sequence the model takes.
    fn max_positions(&self) -> i64;
}

/// A family's masked LM as the runner sees it. Derefs to the family.
pub struct Mlm<F>(pub F);

impl<F> Deref for Mlm<F> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.0
    }
}

impl<F> DerefMut for Mlm<F> {
    fn deref_mut(&mut self) -> &mut F {
        &mut self.0
    }
}

impl<F: Family> MlmModel for Mlm<F> {
    fn forward_mlm(&self, batch: &MlmBatch, mode: Mode) -> Result<MlmOutput> {
        let x = Inputs { input_ids: &batch.input_ids, attention_mask: &batch.attention_mask, documents: batch.documents.as_ref() };
        let (loss, logits, labels) = self.0.net().masked_lm(&x, &batch.labels, mode)?;
        Ok(MlmOutput { loss, logits, labels })
    }

    fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.0.net().logits(&Inputs { input_ids, attention_mask, documents: None }, Mode::Eval)
    }

    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.0.net().encode(&Inputs { input_ids, attention_mask, documents: None }, Mode::Eval)
    }

    fn parameters(&self) -> Result<Vec<Parameter>> {
        Ok(store::parameters(self.0.vars()))
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        store::save_pretrained(self.0.vars(), &self.0.export_config(), dir)
    }

    fn info(&self) -> Result<ModelInfo> {
        Ok(ModelInfo {
            device: self.0.vars().device(),
            vocab_size: self.0.vocab_size(),
            max_positions: self.0.max_positions(),
            num_parameters: store::num_parameters(self.0.vars()),
            document_attention: self.0.net().reads_documents(),
        })
    }
}
