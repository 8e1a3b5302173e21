//! The `MlmModel` contract, implemented once for every family: a family
//! ([`Family`]) gives its network, its variables and its export's
//! `config.json`; [`Mlm`] does the rest. Adding a method to the contract is
//! one edit here.

use std::ops::{Deref, DerefMut};
use std::path::Path;

use anyhow::Result;
use runner_api::{MlmBatch, MlmModel, MlmOutput, Mode, ModelInfo, Parameter};
use tch::nn::VarStore;
use tch::Tensor;

use crate::layers::MaskedLm;
use crate::store;

/// What a model family gives the shared implementation.
pub trait Family: Send {
    type Net: MaskedLm;
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
        let (loss, logits, labels) = self.0.net().masked_lm(&batch.input_ids, &batch.attention_mask, &batch.labels, mode)?;
        Ok(MlmOutput { loss, logits, labels })
    }

    fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.0.net().logits(input_ids, attention_mask, Mode::Eval))
    }

    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.0.net().encode(input_ids, attention_mask, Mode::Eval))
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
        })
    }
}
