//! `BertConfig`: the Hugging Face `config.json` of a BERT model, with named presets.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

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
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let cfg: BertConfig = serde_json::from_value(raw.clone())
            .with_context(|| format!("{}: not a BERT config", path.display()))?;
        if let Some(t) = raw.get("model_type").and_then(|t| t.as_str()) {
            if t != "bert" {
                bail!("{}: model_type is `{t}`, this model reads `bert`", path.display());
            }
        }
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok((cfg, raw))
    }

    /// Applies `key: value` overrides (from the recipe) on top of this config.
    pub fn with_overrides(&self, overrides: &serde_yaml::Mapping) -> Result<Self> {
        let mut value = serde_json::to_value(self)?;
        for (k, v) in overrides {
            let key = k.as_str().context("config override keys must be strings")?;
            if !CONFIG_FIELDS.contains(&key) {
                bail!("config.{key}: unknown BERT config field (known: {})", CONFIG_FIELDS.join(", "));
            }
            let v: serde_json::Value = serde_yaml::from_value(v.clone())
                .with_context(|| format!("config.{key}: not a plain value"))?;
            value[key] = v;
        }
        let cfg: BertConfig = serde_json::from_value(value).context("config: wrong type in an override")?;
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 {
            bail!("hidden_size and num_attention_heads must be positive");
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

    /// The `config.json` written next to exported weights: the source config's
    /// extra keys kept, this config's values and the MLM architecture on top.
    pub fn to_hf_json(&self, base: Option<&serde_json::Value>) -> serde_json::Value {
        let mut out = match base {
            Some(serde_json::Value::Object(m)) => serde_json::Value::Object(m.clone()),
            _ => serde_json::json!({}),
        };
        let ours = serde_json::to_value(self).expect("config serializes");
        if let (Some(o), Some(s)) = (out.as_object_mut(), ours.as_object()) {
            for (k, v) in s {
                o.insert(k.clone(), v.clone());
            }
            o.insert("architectures".into(), serde_json::json!(["BertForMaskedLM"]));
            o.insert("model_type".into(), serde_json::json!("bert"));
            o.insert("position_embedding_type".into(), serde_json::json!("absolute"));
            o.insert("torch_dtype".into(), serde_json::json!("float32"));
            o.remove("dtype");
        }
        out
    }
}
