//! The `distilbert` model component: DistilBERT for masked LM, loaded from a
//! Hugging Face directory or initialised from a preset, and exported back in
//! that format.

pub mod config;
pub mod model;

use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::nn::VarStore;
use tch::Tensor;

use runner_api::{
    parse_options, Component, Factory, MlmBatch, MlmModel, Mode, MlmOutput, ModelInfo, ModelSource, ParamDoc, Parameter,
    Registrar,
};
use runner_encoder::layers::MaskedLm;
use runner_encoder::store;
use runner_encoder::weights::{self, Naming};

pub use config::DistilBertConfig;
pub use model::DistilBertForMaskedLm;

/// How DistilBERT checkpoints name their tensors: `distilbert.*` (or no prefix
/// when saved from `DistilBertModel`) and the `vocab_*` head.
pub const NAMING: Naming = Naming { canonical: canonical_name, twins: &[], base: "distilbert.", head: &["vocab_"] };

/// A checkpoint name mapped to this model's, or `None` when the tensor has no
/// place in `DistilBertForMaskedLM` (the tied projector weight, position ids).
fn canonical_name(name: &str) -> Option<String> {
    let mut name = name.to_string();
    if name.starts_with("embeddings.") || name.starts_with("transformer.") {
        name = format!("distilbert.{name}");
    }
    let ignored = name.ends_with("position_ids") || name == "vocab_projector.weight"; // tied to the word embeddings
    (!ignored).then_some(name)
}

/// `model.options` in a recipe.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistilBertOptions {
    /// Architecture preset for random initialisation (`distilbert-base`).
    preset: Option<String>,
    /// Overrides of `config.json` fields (dropout, sizes, ...).
    #[serde(default)]
    config: serde_yaml::Mapping,
    /// Tensors (names or prefixes) the checkpoint may lack; they start fresh.
    /// The MLM head (`vocab_`) always may.
    #[serde(default)]
    allow_missing: Vec<String>,
}

/// A DistilBERT masked LM with its weights.
pub struct DistilBert {
    pub config: DistilBertConfig,
    /// The source `config.json`, kept so an export preserves its extra keys.
    source_config: Option<serde_json::Value>,
    vs: VarStore,
    model: DistilBertForMaskedLm,
}

impl DistilBert {
    /// Random initialisation from a config, the way transformers does it.
    pub fn from_config(config: DistilBertConfig, device: tch::Device) -> Self {
        let vs = VarStore::new(device);
        let model = DistilBertForMaskedLm::new(&vs.root(), &config);
        DistilBert { config, source_config: None, vs, model }
    }

    /// Loads `config.json` + `model.safetensors` from a Hugging Face directory,
    /// with `overrides` applied to the config. Tensors named by `allow_missing`
    /// (names or prefixes), and the MLM head, may be missing; every missing and
    /// unexpected tensor is listed, as transformers does.
    pub fn from_pretrained(
        dir: &Path,
        overrides: &serde_yaml::Mapping,
        allow_missing: &[String],
        device: tch::Device,
    ) -> Result<Self> {
        let (config, raw) = DistilBertConfig::from_file(&dir.join("config.json"))?;
        let config = config.with_overrides(overrides)?;
        let mut model = DistilBert::from_config(config, device);
        model.source_config = Some(raw);
        let depth = ("n_layers", model.config.n_layers);
        weights::load_checked(&model.vs.variables(), dir, &NAMING, allow_missing, depth)?;
        Ok(model)
    }
}

impl MlmModel for DistilBert {
    fn forward_mlm(&self, batch: &MlmBatch, mode: Mode) -> Result<MlmOutput> {
        let (loss, logits, labels) =
            self.model.masked_lm(&batch.input_ids, &batch.attention_mask, &batch.labels, mode)?;
        Ok(MlmOutput { loss, logits, labels })
    }

    fn logits(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.model.logits(input_ids, attention_mask, Mode::Eval))
    }

    fn hidden_states(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.model.encode(input_ids, attention_mask, Mode::Eval))
    }

    fn parameters(&self) -> Result<Vec<Parameter>> {
        Ok(store::parameters(&self.vs))
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        store::save_pretrained(&self.vs, &self.config.to_hf_json(self.source_config.as_ref()), dir)
    }

    fn info(&self) -> Result<ModelInfo> {
        Ok(ModelInfo {
            device: self.vs.device(),
            vocab_size: self.config.vocab_size,
            max_positions: self.config.max_position_embeddings,
            num_parameters: store::num_parameters(&self.vs),
        })
    }
}

fn check_options(options: &runner_api::Options) -> Result<()> {
    let opts: DistilBertOptions = parse_options(options)?;
    let base = DistilBertConfig::preset(opts.preset.as_deref().unwrap_or("distilbert-base"))?;
    base.with_overrides(&opts.config).map(|_| ())
}

fn build(source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let opts: DistilBertOptions = parse_options(source.options)?;
    let model = match (source.checkpoint, &opts.preset) {
        (Some(dir), None) => DistilBert::from_pretrained(dir, &opts.config, &opts.allow_missing, source.device)?,
        (None, preset) => {
            let base = DistilBertConfig::preset(preset.as_deref().unwrap_or("distilbert-base"))?;
            DistilBert::from_config(base.with_overrides(&opts.config)?, source.device)
        }
        (Some(_), Some(_)) => bail!("preset: give either a checkpoint or a preset, not both"),
    };
    Ok(Box::new(model))
}

runner_api::declare_plugin!("distilbert", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "distilbert",
        doc: "DistilBERT for masked LM (Hugging Face layout); from a checkpoint directory or a preset",
        params: vec![
            ParamDoc { name: "preset", default: "distilbert-base", doc: "architecture for random init: distilbert-base" },
            ParamDoc { name: "config", default: "{}", doc: "overrides of config.json fields, e.g. {dropout: 0.0}" },
            ParamDoc {
                name: "allow_missing",
                default: "[]",
                doc: "checkpoint tensors (names or prefixes) that may be missing and start fresh; the MLM head always may",
            },
        ],
        check: check_options,
        factory: Factory::Model(build),
    });
}

#[cfg(test)]
mod tests {
    use super::{canonical_name, NAMING};
    use runner_encoder::weights::may_start_fresh;

    #[test]
    fn names_map_to_masked_lm_layout() {
        assert_eq!(
            canonical_name("transformer.layer.0.ffn.lin1.weight").unwrap(),
            "distilbert.transformer.layer.0.ffn.lin1.weight"
        );
        assert!(canonical_name("vocab_projector.weight").is_none());
        assert_eq!(canonical_name("vocab_projector.bias").unwrap(), "vocab_projector.bias");
        assert!(may_start_fresh("vocab_transform.weight", &[], &NAMING));
        assert!(!may_start_fresh("distilbert.embeddings.word_embeddings.weight", &[], &NAMING));
    }
}
