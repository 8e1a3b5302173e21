//! `DistilBertConfig`: the Hugging Face `config.json` of a DistilBERT model.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use runner_encoder::layers::{check_activation, Dims};

/// transformers' DistilBERT uses this LayerNorm epsilon everywhere, whatever the config.
pub const LAYER_NORM_EPS: f64 = 1e-12;

/// Mirrors `transformers.DistilBertConfig`. `Default` is distilbert-base-uncased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DistilBertConfig {
    pub vocab_size: i64,
    pub max_position_embeddings: i64,
    pub sinusoidal_pos_embds: bool,
    pub n_layers: i64,
    pub n_heads: i64,
    pub dim: i64,
    pub hidden_dim: i64,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation: String,
    pub initializer_range: f64,
    pub pad_token_id: i64,
}

impl Default for DistilBertConfig {
    fn default() -> Self {
        DistilBertConfig {
            vocab_size: 30522,
            max_position_embeddings: 512,
            sinusoidal_pos_embds: false,
            n_layers: 6,
            n_heads: 12,
            dim: 768,
            hidden_dim: 3072,
            dropout: 0.1,
            attention_dropout: 0.1,
            activation: "gelu".into(),
            initializer_range: 0.02,
            pad_token_id: 0,
        }
    }
}

/// Field names a recipe may override in `model.options.config`.
pub const CONFIG_FIELDS: &[&str] = &[
    "vocab_size",
    "max_position_embeddings",
    "n_layers",
    "n_heads",
    "dim",
    "hidden_dim",
    "dropout",
    "attention_dropout",
    "activation",
    "initializer_range",
    "pad_token_id",
];

impl DistilBertConfig {
    /// A named architecture for pretraining from scratch.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "distilbert-base" => Ok(DistilBertConfig::default()),
            other => bail!("unknown preset `{other}` (known: distilbert-base)"),
        }
    }

    /// Reads `config.json` from a Hugging Face model directory; keys this model
    /// does not use are ignored, as transformers does.
    pub fn from_file(path: &Path) -> Result<(Self, serde_json::Value)> {
        let raw = runner_encoder::config::read_json(path, &["distilbert"])?;
        let cfg: DistilBertConfig = serde_json::from_value(raw.clone())
            .with_context(|| format!("{}: not a distilbert config", path.display()))?;
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok((cfg, raw))
    }

    /// Applies `key: value` overrides (from the recipe) on top of this config.
    pub fn with_overrides(&self, overrides: &serde_yaml::Mapping) -> Result<Self> {
        let cfg: DistilBertConfig =
            runner_encoder::config::with_overrides(self, overrides, CONFIG_FIELDS, "DistilBERT")?;
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        runner_encoder::config::check_sizes(
            &[
                ("vocab_size", self.vocab_size, 1),
                ("dim", self.dim, 1),
                ("n_layers", self.n_layers, 0),
                ("n_heads", self.n_heads, 1),
                ("hidden_dim", self.hidden_dim, 1),
                ("max_position_embeddings", self.max_position_embeddings, 1),
            ],
            self.vocab_size + self.max_position_embeddings,
            self.n_layers,
            self.hidden_dim,
        )?;
        if self.dim <= 0 || self.n_heads <= 0 || self.dim % self.n_heads != 0 {
            bail!("dim ({}) must be a positive multiple of n_heads ({})", self.dim, self.n_heads);
        }
        for (name, p) in [("dropout", self.dropout), ("attention_dropout", self.attention_dropout)] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), got {p}");
            }
        }
        if self.sinusoidal_pos_embds {
            // transformers keeps sinusoidal position embeddings out of training.
            bail!("sinusoidal_pos_embds: true is not supported (the position embeddings would train)");
        }
        check_activation(&self.activation)
    }

    /// Sizes, activation and dropout of the layers. DistilBERT drops out
    /// after the feed-forward but not after the attention output projection.
    pub fn dims(&self) -> Dims {
        Dims {
            hidden: self.dim,
            heads: self.n_heads,
            intermediate: self.hidden_dim,
            act: self.activation.clone(),
            hidden_dropout: self.dropout,
            attention_dropout: self.attention_dropout,
            attention_output_dropout: 0.0,
            layer_norm_eps: LAYER_NORM_EPS,
            initializer_range: self.initializer_range,
        }
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
            o.insert("architectures".into(), serde_json::json!(["DistilBertForMaskedLM"]));
            o.insert("model_type".into(), serde_json::json!("distilbert"));
            o.insert("torch_dtype".into(), serde_json::json!("float32"));
            o.remove("dtype");
        }
        out
    }
}
