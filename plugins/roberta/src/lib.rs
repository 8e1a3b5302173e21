//! The `roberta` model component: RoBERTa and XLM-RoBERTa for masked LM,
//! loaded from a Hugging Face directory (`model_type` `roberta` or
//! `xlm-roberta`) or initialised from a preset, and exported back in that format.

pub mod model;

use std::path::Path;

use anyhow::{bail, Result};
use tch::nn::VarStore;

use runner_api::{Component, Factory, MlmModel, ModelSource, ParamDoc, Registrar};
use runner_encoder::config::BertConfig;
use runner_encoder::model::{Family, Mlm};
use runner_encoder::options::{ModelOptions, Start};
use runner_encoder::weights::{self, Naming};

pub use model::RobertaForMaskedLm;

/// The `model_type`s this plugin reads.
pub const MODEL_TYPES: &[&str] = &["roberta", "xlm-roberta"];

/// `transformers.RobertaConfig`'s defaults where they differ from BERT's.
fn defaults() -> BertConfig {
    BertConfig { vocab_size: 50265, pad_token_id: 1, ..BertConfig::default() }
}

/// A named architecture for pretraining from scratch, with its `model_type`.
fn preset(name: &str) -> Result<(BertConfig, &'static str)> {
    // As the published checkpoints are: 512 usable positions after padding_idx, one token type.
    let base = BertConfig {
        max_position_embeddings: 514,
        type_vocab_size: 1,
        layer_norm_eps: 1e-5,
        ..defaults()
    };
    let large = |c: BertConfig| BertConfig {
        hidden_size: 1024,
        num_hidden_layers: 24,
        num_attention_heads: 16,
        intermediate_size: 4096,
        ..c
    };
    let xlmr = BertConfig { vocab_size: 250002, ..base.clone() };
    Ok(match name {
        "roberta-base" => (base, "roberta"),
        "roberta-large" => (large(base), "roberta"),
        "xlm-roberta-base" => (xlmr, "xlm-roberta"),
        "xlm-roberta-large" => (large(xlmr), "xlm-roberta"),
        other => bail!("unknown preset `{other}` (known: roberta-base, roberta-large, xlm-roberta-base, xlm-roberta-large)"),
    })
}

/// How RoBERTa checkpoints name their tensors: `roberta.*` (or no prefix when
/// saved from `RobertaModel`) and `lm_head.*`.
pub const NAMING: Naming = Naming {
    canonical: canonical_name,
    twins: &["lm_head.decoder.bias"],
    base: "roberta.",
    head: &["lm_head."],
};

/// A checkpoint name mapped to this model's, or `None` when the tensor has no
/// place in `RobertaForMaskedLM` (tied decoder weight, pooler, position ids).
fn canonical_name(name: &str) -> Option<String> {
    let mut name = name.to_string();
    if name.starts_with("embeddings.") || name.starts_with("encoder.") || name.starts_with("pooler.") {
        name = format!("roberta.{name}");
    }
    if name == "lm_head.decoder.bias" {
        // transformers ties lm_head.decoder.bias to lm_head.bias.
        return Some("lm_head.bias".into());
    }
    let ignored = name.starts_with("roberta.pooler.")
        || name.ends_with("position_ids")
        || name.ends_with("embeddings.token_type_ids")
        || name == "lm_head.decoder.weight"; // tied to the word embeddings
    (!ignored).then_some(name)
}

/// A RoBERTa or XLM-RoBERTa masked LM with its weights.
pub struct Roberta {
    pub config: BertConfig,
    /// `roberta` or `xlm-roberta`: what the export's config.json says.
    pub model_type: String,
    /// The source `config.json`, kept so an export preserves its extra keys.
    source_config: Option<serde_json::Value>,
    vs: VarStore,
    model: RobertaForMaskedLm,
}

impl Roberta {
    /// Random initialisation from a config, the way transformers does it.
    pub fn from_config(config: BertConfig, model_type: &str, device: tch::Device) -> Result<Self> {
        if config.max_position_embeddings <= config.pad_token_id + 1 {
            bail!(
                "max_position_embeddings ({}) leaves no position after padding_idx + 1 ({})",
                config.max_position_embeddings,
                config.pad_token_id + 1
            );
        }
        let vs = VarStore::new(device);
        let model = RobertaForMaskedLm::new(&vs.root(), &config);
        Ok(Roberta { config, model_type: model_type.to_string(), source_config: None, vs, model })
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
        let (config, raw) = BertConfig::from_file_of(&dir.join("config.json"), MODEL_TYPES, defaults())?;
        let config = config.with_overrides(overrides)?;
        let model_type = raw.get("model_type").and_then(|t| t.as_str()).unwrap_or("roberta").to_string();
        let mut roberta = Roberta::from_config(config, &model_type, device)?;
        roberta.source_config = Some(raw);
        let depth = ("num_hidden_layers", roberta.config.num_hidden_layers);
        weights::load_checked(&roberta.vs.variables(), dir, &NAMING, allow_missing, depth)?;
        Ok(roberta)
    }
}

impl Family for Roberta {
    type Net = RobertaForMaskedLm;
    fn net(&self) -> &RobertaForMaskedLm {
        &self.model
    }
    fn vars(&self) -> &VarStore {
        &self.vs
    }
    fn export_config(&self) -> serde_json::Value {
        let architecture = if self.model_type == "xlm-roberta" { "XLMRobertaForMaskedLM" } else { "RobertaForMaskedLM" };
        self.config.to_hf_json_as(self.source_config.as_ref(), architecture, &self.model_type)
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
    /// Positions start at `padding_idx + 1`.
    fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings - self.config.pad_token_id - 1
    }
}

fn check_options(options: &runner_api::Options) -> Result<()> {
    let opts = ModelOptions::parse(options)?;
    let (base, _) = preset(opts.preset_or("roberta-base"))?;
    base.with_overrides(&opts.config).map(|_| ())
}

fn build(source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let opts = ModelOptions::parse(source.options)?;
    let roberta = match opts.start(source.checkpoint, "roberta-base")? {
        Start::Checkpoint(dir) => Roberta::from_pretrained(dir, &opts.config, &opts.allow_missing, source.device)?,
        Start::Preset(name) => {
            let (base, model_type) = preset(name)?;
            Roberta::from_config(base.with_overrides(&opts.config)?, model_type, source.device)?
        }
    };
    Ok(Box::new(Mlm(roberta)))
}

runner_api::declare_plugin!("roberta", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "roberta",
        doc: "RoBERTa / XLM-RoBERTa for masked LM (Hugging Face layout); from a checkpoint directory or a preset",
        params: vec![
            ParamDoc {
                name: "preset",
                default: "roberta-base",
                doc: "architecture for random init: roberta-base, roberta-large, xlm-roberta-base, xlm-roberta-large",
            },
            ParamDoc { name: "config", default: "{}", doc: "overrides of config.json fields, e.g. {hidden_dropout_prob: 0.0}" },
            ParamDoc {
                name: "allow_missing",
                default: "[]",
                doc: "checkpoint tensors (names or prefixes) that may be missing and start fresh; the MLM head always may",
            },
        ],
        check: check_options,
        factory: Factory::Model(build),
    });
    r.reads_model_types("roberta", &["roberta", "xlm-roberta"]);
}

#[cfg(test)]
mod tests {
    use super::{canonical_name, NAMING};
    use runner_encoder::weights::may_start_fresh;

    #[test]
    fn names_map_to_masked_lm_layout() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight").unwrap(), "roberta.embeddings.word_embeddings.weight");
        assert_eq!(canonical_name("lm_head.decoder.bias").unwrap(), "lm_head.bias");
        assert!(canonical_name("lm_head.decoder.weight").is_none());
        assert!(canonical_name("roberta.pooler.dense.weight").is_none());
        assert!(canonical_name("roberta.embeddings.position_ids").is_none());
        assert!(may_start_fresh("lm_head.dense.weight", &[], &NAMING));
        assert!(!may_start_fresh("roberta.encoder.layer.0.output.dense.weight", &[], &NAMING));
        assert!(may_start_fresh("roberta.encoder.layer.0.output.dense.weight", &["encoder.layer.0.".into()], &NAMING));
    }
}
