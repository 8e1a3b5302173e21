//! The `modernbert` model component: ModernBERT for masked LM, loaded from a
//! Hugging Face directory (`model_type` `modernbert`) or initialised from a
//! preset, and exported back in that format. It keeps attention within
//! documents when the data asks for it (`data.document_attention`).

pub mod attention;
pub mod config;
pub mod model;

use std::path::Path;

use anyhow::Result;
use tch::nn::VarStore;

use runner_api::{Component, Factory, MlmModel, ModelSource, ParamDoc, Registrar};
use runner_encoder::model::{Family, Mlm};
use runner_encoder::options::{ModelOptions, Start};
use runner_encoder::weights::{self, Naming};

pub use config::ModernBertConfig;
pub use model::ModernBertForMaskedLm;

/// How ModernBERT checkpoints name their tensors: `model.*` (or no prefix
/// when saved from `ModernBertModel`), `head.*` and `decoder.bias`.
pub const NAMING: Naming = Naming { canonical: canonical_name, twins: &[], base: "model.", head: &["head.", "decoder."] };

/// A checkpoint name mapped to this model's, or `None` when the tensor has no
/// place in `ModernBertForMaskedLM` (the tied decoder weight, a classifier).
fn canonical_name(name: &str) -> Option<String> {
    let bare = ["embeddings.", "layers.", "final_norm."];
    let name = if bare.iter().any(|p| name.starts_with(p)) { format!("model.{name}") } else { name.to_string() };
    let ignored = name == "decoder.weight" || name.starts_with("classifier.");
    (!ignored).then_some(name)
}

/// A ModernBERT masked LM with its weights.
pub struct ModernBert {
    pub config: ModernBertConfig,
    /// The source `config.json`, kept so an export preserves its extra keys.
    source_config: Option<serde_json::Value>,
    vs: VarStore,
    model: ModernBertForMaskedLm,
}

impl ModernBert {
    /// Random initialisation from a config, the way transformers does it.
    pub fn from_config(config: ModernBertConfig, device: tch::Device) -> Self {
        let vs = VarStore::new(device);
        let model = ModernBertForMaskedLm::new(&vs.root(), &config);
        ModernBert { config, source_config: None, vs, model }
    }

    /// Loads `config.json` + `model.safetensors` from a Hugging Face directory,
    /// with `overrides` applied to the config; missing and unexpected tensors
    /// are reported as for every family.
    pub fn from_pretrained(dir: &Path, overrides: &serde_yaml::Mapping, allow_missing: &[String], device: tch::Device) -> Result<Self> {
        let (config, raw) = ModernBertConfig::from_file(&dir.join("config.json"))?;
        let config = config.with_overrides(overrides)?;
        let mut modernbert = ModernBert::from_config(config, device);
        modernbert.source_config = Some(raw);
        let depth = ("num_hidden_layers", modernbert.config.num_hidden_layers);
        weights::load_checked(&modernbert.vs.variables(), dir, &NAMING, allow_missing, depth)?;
        Ok(modernbert)
    }
}

impl Family for ModernBert {
    type Net = ModernBertForMaskedLm;
    fn net(&self) -> &ModernBertForMaskedLm {
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
    ModernBertConfig::preset(opts.preset_or("modernbert-base"))?.with_overrides(&opts.config).map(|_| ())
}

/// The options against a checkpoint's `config.json`: overrides that only
/// that config makes wrong (a window wider than its context) are found too.
fn check_checkpoint(options: &runner_api::Options, dir: &Path) -> Result<()> {
    let opts = ModelOptions::parse(options)?;
    let (config, _) = ModernBertConfig::from_file(&dir.join("config.json"))?;
    config.with_overrides(&opts.config).map(|_| ())
}

fn build(source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let opts = ModelOptions::parse(source.options)?;
    let modernbert = match opts.start(source.checkpoint, "modernbert-base")? {
        Start::Checkpoint(dir) => ModernBert::from_pretrained(dir, &opts.config, &opts.allow_missing, source.device)?,
        Start::Preset(name) => ModernBert::from_config(ModernBertConfig::preset(name)?.with_overrides(&opts.config)?, source.device),
    };
    Ok(Box::new(Mlm(modernbert)))
}

runner_api::declare_plugin!("modernbert", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "modernbert",
        doc: "ModernBERT for masked LM (Hugging Face layout): rotary positions, GeGLU, local and global attention; \
              from a checkpoint directory or a preset",
        params: vec![
            ParamDoc { name: "preset", default: "modernbert-base", doc: "architecture for random init: modernbert-base, modernbert-large" },
            ParamDoc {
                name: "config",
                default: "{}",
                doc: "overrides of config.json fields, e.g. {local_attention: 256, global_attn_every_n_layers: 3, mlp_dropout: 0.0}",
            },
            ParamDoc {
                name: "allow_missing",
                default: "[]",
                doc: "checkpoint tensors (names or prefixes) that may be missing and start fresh; the MLM head always may",
            },
        ],
        check: check_options,
        factory: Factory::Model(build),
    });
    r.reads_model_types("modernbert", &["modernbert"]);
    r.checks_checkpoint("modernbert", check_checkpoint);
}

#[cfg(test)]
mod tests {
    use super::{canonical_name, NAMING};
    use runner_encoder::weights::may_start_fresh;

    #[test]
    fn names_map_to_masked_lm_layout() {
        assert_eq!(canonical_name("layers.0.attn.Wqkv.weight").unwrap(), "model.layers.0.attn.Wqkv.weight");
        assert_eq!(canonical_name("model.final_norm.weight").unwrap(), "model.final_norm.weight");
        assert_eq!(canonical_name("decoder.bias").unwrap(), "decoder.bias");
        assert!(canonical_name("decoder.weight").is_none());
        assert!(canonical_name("classifier.weight").is_none());
        assert!(may_start_fresh("head.dense.weight", &[], &NAMING));
        assert!(!may_start_fresh("model.layers.1.mlp.Wi.weight", &[], &NAMING));
    }
}
