//! `BertConfig`: the Hugging Face `config.json` of a BERT model, with named
//! presets. RoBERTa and XLM-RoBERTa configs have the same fields (other
//! defaults), so the `roberta` plugin reads them with it too.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Sizes become tensor shapes and buffer lengths, so each is bounded: a config
/// passing the check never overflows one. `sizes` are (name, value, least);
/// the model (`embeddings` rows of `hidden_size`, `layers` layers with a
/// feed-forward of `intermediate`) must stay under 1e11 parameters.
pub fn check_sizes(sizes: &[(&str, i64, i64)], embeddings: i64, layers: i64, intermediate: i64) -> Result<()> {
    const MAX_SIZE: i64 = 1 << 24;
    for &(name, v, min) in sizes {
        if !(min..=MAX_SIZE).contains(&v) {
            bail!("{name} must be in [{min}, {MAX_SIZE}], got {v}");
        }
    }
    let h = sizes.iter().find(|s| s.0 == "hidden_size" || s.0 == "dim").map_or(0, |s| s.1) as f64;
    let params = embeddings as f64 * h + layers as f64 * (4.0 * h * h + 2.0 * h * intermediate as f64);
    if params > 1e11 {
        bail!("the config makes a model of about {params:.2e} parameters, more than 1e11");
    }
    Ok(())
}

/// Mirrors `transformers.BertConfig`. `Default` is bert-base-uncased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
        }
    }
}

/// Field names a recipe may override in `model.options.config`.
pub const CONFIG_FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "initializer_range",
    "layer_norm_eps",
    "pad_token_id",
];

impl BertConfig {
    /// A named architecture for pretraining from scratch.
    pub fn preset(name: &str) -> Result<Self> {
        let base = BertConfig::default();
        Ok(match name {
            "bert-base" => base,
            "bert-large" => BertConfig {
                hidden_size: 1024,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                intermediate_size: 4096,
                ..base
            },
            "bert-medium" => BertConfig {
                hidden_size: 512,
                num_hidden_layers: 8,
                num_attention_heads: 8,
                intermediate_size: 2048,
                ..base
            },
            "bert-small" => BertConfig {
                hidden_size: 512,
                num_hidden_layers: 4,
                num_attention_heads: 8,
                intermediate_size: 2048,
                ..base
            },
            "minilm-l6" => BertConfig {
                hidden_size: 384,
                num_hidden_layers: 6,
                num_attention_heads: 12,
                intermediate_size: 1536,
                ..base
            },
            "bert-tiny" => BertConfig {
                hidden_size: 128,
                num_hidden_layers: 2,
                num_attention_heads: 2,
                intermediate_size: 512,
                ..base
            },
            other => bail!(
                "unknown preset `{other}` (known: bert-tiny, bert-small, bert-medium, minilm-l6, bert-base, bert-large)"
            ),
        })
    }

    /// Reads `config.json` from a Hugging Face model directory. Keys this model
    /// does not use (architectures, model_type, ...) are ignored, as transformers does.
    pub fn from_file(path: &Path) -> Result<(Self, serde_json::Value)> {
        BertConfig::from_file_of(path, &["bert"], BertConfig::default())
    }

    /// [`BertConfig::from_file`] for a family whose `model_type` is one of
    /// `model_types`, with `defaults` for the keys the file leaves out.
    pub fn from_file_of(path: &Path, model_types: &[&str], defaults: BertConfig) -> Result<(Self, serde_json::Value)> {
        let raw = read_json(path, model_types)?;
        let Some(fields) = raw.as_object() else {
            bail!("{}: not a {} config (not a JSON object)", path.display(), model_types.join(" or "));
        };
        let mut value = serde_json::to_value(&defaults)?;
        for (k, x) in fields.iter().filter(|(k, _)| CONFIG_FIELDS.contains(&k.as_str())) {
            value[k.as_str()] = x.clone();
        }
        let cfg: BertConfig = serde_json::from_value(value)
            .with_context(|| format!("{}: not a {} config", path.display(), model_types.join(" or ")))?;
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok((cfg, raw))
    }

    /// Applies `key: value` overrides (from the recipe) on top of this config.
    pub fn with_overrides(&self, overrides: &serde_yaml::Mapping) -> Result<Self> {
        let cfg: BertConfig = with_overrides(self, overrides, CONFIG_FIELDS, "BERT")?;
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 {
            bail!("hidden_size and num_attention_heads must be positive");
        }
        check_sizes(
            &[
                ("vocab_size", self.vocab_size, 1),
                ("hidden_size", self.hidden_size, 1),
                ("num_hidden_layers", self.num_hidden_layers, 0),
                ("num_attention_heads", self.num_attention_heads, 1),
                ("intermediate_size", self.intermediate_size, 1),
                ("max_position_embeddings", self.max_position_embeddings, 1),
                ("type_vocab_size", self.type_vocab_size, 1),
            ],
            self.vocab_size + self.max_position_embeddings + self.type_vocab_size,
            self.num_hidden_layers,
            self.intermediate_size,
        )?;
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            bail!("layer_norm_eps must be positive, got {}", self.layer_norm_eps);
        }
        if !(self.initializer_range >= 0.0 && self.initializer_range.is_finite()) {
            bail!("initializer_range must be a number >= 0, got {}", self.initializer_range);
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size ({}) is not a multiple of num_attention_heads ({})",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), got {p}");
            }
        }
        match self.hidden_act.as_str() {
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu" => Ok(()),
            other => bail!("hidden_act `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Sizes, activation and dropout of the encoder's layers.
    pub fn dims(&self) -> crate::layers::Dims {
        crate::layers::Dims {
            hidden: self.hidden_size,
            heads: self.num_attention_heads,
            intermediate: self.intermediate_size,
            act: self.hidden_act.clone(),
            hidden_dropout: self.hidden_dropout_prob,
            attention_dropout: self.attention_probs_dropout_prob,
            attention_output_dropout: self.hidden_dropout_prob,
            layer_norm_eps: self.layer_norm_eps,
            initializer_range: self.initializer_range,
        }
    }

    /// The `config.json` written next to exported weights: the source config's
    /// extra keys kept, this config's values and the MLM architecture on top.
    pub fn to_hf_json(&self, base: Option<&serde_json::Value>) -> serde_json::Value {
        self.to_hf_json_as(base, "BertForMaskedLM", "bert")
    }

    /// [`BertConfig::to_hf_json`] for another family of the same layout
    /// (`RobertaForMaskedLM`, `roberta`).
    pub fn to_hf_json_as(&self, base: Option<&serde_json::Value>, architecture: &str, model_type: &str) -> serde_json::Value {
        let mut out = match base {
            Some(serde_json::Value::Object(m)) => serde_json::Value::Object(m.clone()),
            _ => serde_json::json!({}),
        };
        let ours = serde_json::to_value(self).expect("config serializes");
        if let (Some(o), Some(s)) = (out.as_object_mut(), ours.as_object()) {
            for (k, v) in s {
                o.insert(k.clone(), v.clone());
            }
            o.insert("architectures".into(), serde_json::json!([architecture]));
            o.insert("model_type".into(), serde_json::json!(model_type));
            o.insert("position_embedding_type".into(), serde_json::json!("absolute"));
            o.insert("torch_dtype".into(), serde_json::json!("float32"));
            o.remove("dtype");
        }
        out
    }
}

/// `config` with `key: value` overrides (from the recipe) applied; `fields`
/// are the keys a recipe may override, `family` names the config in messages.
pub fn with_overrides<T: Serialize + DeserializeOwned>(
    config: &T,
    overrides: &serde_yaml::Mapping,
    fields: &[&str],
    family: &str,
) -> Result<T> {
    let mut value = serde_json::to_value(config)?;
    for (k, v) in overrides {
        let key = k.as_str().context("config override keys must be strings")?;
        if !fields.contains(&key) {
            bail!("config.{key}: unknown {family} config field (known: {})", fields.join(", "));
        }
        let v: serde_json::Value =
            serde_yaml::from_value(v.clone()).with_context(|| format!("config.{key}: not a plain value"))?;
        value[key] = v;
    }
    serde_json::from_value(value).context("config: wrong type in an override")
}

/// Reads a `config.json` as a JSON object, checking its `model_type` against
/// `model_types` when it has one.
pub fn read_json(path: &Path, model_types: &[&str]) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    if let Some(t) = raw.get("model_type").and_then(|t| t.as_str()) {
        if !model_types.contains(&t) {
            bail!("{}: model_type is `{t}`, this model reads `{}`", path.display(), model_types.join("`, `"));
        }
    }
    Ok(raw)
}
