//! The `distilbert` model component: DistilBERT for masked LM, loaded from a
//! Hugging Face directory or initialised from a preset, and exported back in
//! that format.

pub mod config;
pub mod model;

use std::path::Path;

use anyhow::Result;
use tch::nn::VarStore;

use runner_api::{Component, Factory, MlmModel, ModelSource, ParamDoc, Registrar};
use runner_encoder::model::{Family, Mlm};
use runner_encoder::options::{ModelOptions, Start};
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

impl Family for DistilBert {
    type Net = DistilBertForMaskedLm;
    fn net(&self) -> &DistilBertForMaskedLm {
        &self.model
    }
    fn vars(&self) -> &VarStore {
        &self.vs
    }
    fn export_config(&self) -> serde_json::Value {
        self.config.to_hf_json(self.source_config.as_ref())
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
    fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings
    }
}

fn check_options(options: &runner_api::Options) -> Result<()> {
    let opts = ModelOptions::parse(options)?;
    DistilBertConfig::preset(opts.preset_or("distilbert-base"))?.with_overrides(&opts.config).map(|_| ())
}

fn build(source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let opts = ModelOptions::parse(source.options)?;
    let model = match opts.start(source.checkpoint, "distilbert-base")? {
        Start::Checkpoint(dir) => DistilBert::from_pretrained(dir, &opts.config, &opts.allow_missing, source.device)?,
        Start::Preset(name) => DistilBert::from_config(DistilBertConfig::preset(name)?.with_overrides(&opts.config)?, source.device),
    };
    Ok(Box::new(Mlm(model)))
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
    r.reads_model_types("distilbert", &["distilbert"]);
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
