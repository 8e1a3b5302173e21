//! `ModernBertConfig`: the Hugging Face `config.json` of a ModernBERT model,
//! as `transformers.ModernBertConfig` reads it, in both of its forms: the
//! released checkpoints' (`global_attn_every_n_layers`, `global_rope_theta`,
//! `local_rope_theta`) and newer exports' (`layer_types`, `rope_parameters`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use runner_encoder::config::{check_sizes, read_json, with_overrides};
use runner_encoder::layers::check_activation;

/// Mirrors `transformers.ModernBertConfig`. `Default` is ModernBERT-base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModernBertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub hidden_activation: String,
    pub max_position_embeddings: i64,
    pub initializer_range: f64,
    pub initializer_cutoff_factor: f64,
    pub norm_eps: f64,
    pub norm_bias: bool,
    pub pad_token_id: i64,
    pub attention_bias: bool,
    pub attention_dropout: f64,
    /// The whole window of a local layer: each token sees `local_attention / 2`
    /// tokens on either side (and itself).
    pub local_attention: i64,
    pub embedding_dropout: f64,
    pub mlp_bias: bool,
    pub mlp_dropout: f64,
    pub decoder_bias: bool,
    pub classifier_activation: String,
    pub classifier_bias: bool,
    /// Layer `i` attends globally when `i % global_attn_every_n_layers == 0`.
    pub global_attn_every_n_layers: i64,
    pub global_rope_theta: f64,
    pub local_rope_theta: f64,
    /// Each layer's `full_attention` or `sliding_attention`; when absent, from
    /// `global_attn_every_n_layers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
}

impl Default for ModernBertConfig {
    fn default() -> Self {
        ModernBertConfig {
            vocab_size: 50368,
            hidden_size: 768,
            intermediate_size: 1152,
            num_hidden_layers: 22,
            num_attention_heads: 12,
            hidden_activation: "gelu".into(),
            max_position_embeddings: 8192,
            initializer_range: 0.02,
            initializer_cutoff_factor: 2.0,
            norm_eps: 1e-5,
            norm_bias: false,
            pad_token_id: 50283,
            attention_bias: false,
            attention_dropout: 0.0,
            local_attention: 128,
            embedding_dropout: 0.0,
            mlp_bias: false,
            mlp_dropout: 0.0,
            decoder_bias: true,
            classifier_activation: "gelu".into(),
            classifier_bias: false,
            global_attn_every_n_layers: 3,
            global_rope_theta: 160_000.0,
            local_rope_theta: 10_000.0,
            layer_types: None,
        }
    }
}

/// Field names a recipe may override in `model.options.config`.
pub const CONFIG_FIELDS: &[&str] = &[
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_activation",
    "max_position_embeddings",
    "initializer_range",
    "initializer_cutoff_factor",
    "norm_eps",
    "norm_bias",
    "pad_token_id",
    "attention_bias",
    "attention_dropout",
    "local_attention",
    "embedding_dropout",
    "mlp_bias",
    "mlp_dropout",
    "decoder_bias",
    "classifier_activation",
    "classifier_bias",
    "global_attn_every_n_layers",
    "global_rope_theta",
    "local_rope_theta",
];

const FULL: &str = "full_attention";
const SLIDING: &str = "sliding_attention";

impl ModernBertConfig {
    /// A named architecture for pretraining from scratch.
    pub fn preset(name: &str) -> Result<Self> {
        let base = ModernBertConfig::default();
        Ok(match name {
            "modernbert-base" => base,
            "modernbert-large" => ModernBertConfig {
                hidden_size: 1024,
                intermediate_size: 2624,
                num_hidden_layers: 28,
                num_attention_heads: 16,
                ..base
            },
            other => bail!("unknown preset `{other}` (known: modernbert-base, modernbert-large)"),
        })
    }

    /// Reads `config.json` from a Hugging Face model directory, in either form.
    pub fn from_file(path: &Path) -> Result<(Self, serde_json::Value)> {
        let raw = read_json(path, &["modernbert"])?;
        let Some(fields) = raw.as_object() else {
            bail!("{}: not a ModernBERT config (not a JSON object)", path.display());
        };
        let mut value = serde_json::to_value(ModernBertConfig::default())?;
        for (k, x) in fields.iter().filter(|(k, _)| CONFIG_FIELDS.contains(&k.as_str()) || k.as_str() == "layer_types") {
            value[k.as_str()] = x.clone();
        }
        // Newer exports: rope_parameters per layer type.
        if let Some(rope) = fields.get("rope_parameters").filter(|r| !r.is_null()) {
            for (layer_type, key) in [(FULL, "global_rope_theta"), (SLIDING, "local_rope_theta")] {
                let Some(p) = rope.get(layer_type).filter(|p| !p.is_null()) else { continue };
                let kind = p.get("rope_type").and_then(|t| t.as_str()).unwrap_or("default");
                if kind != "default" {
                    bail!("{}: rope_parameters.{layer_type}.rope_type `{kind}` is not supported (default)", path.display());
                }
                if let Some(theta) = p.get("rope_theta") {
                    value[key] = theta.clone();
                }
            }
        }
        if fields.get("rope_scaling").is_some_and(|s| !s.is_null()) {
            bail!("{}: rope_scaling is not supported", path.display());
        }
        let cfg: ModernBertConfig =
            serde_json::from_value(value).with_context(|| format!("{}: not a ModernBERT config", path.display()))?;
        cfg.check().with_context(|| format!("{}", path.display()))?;
        Ok((cfg, raw))
    }

    /// Applies `key: value` overrides (from the recipe) on top of this config.
    /// An override of `global_attn_every_n_layers` replaces the file's `layer_types`.
    pub fn with_overrides(&self, overrides: &serde_yaml::Mapping) -> Result<Self> {
        let mut cfg: ModernBertConfig = with_overrides(self, overrides, CONFIG_FIELDS, "ModernBERT")?;
        let layering = ["global_attn_every_n_layers", "num_hidden_layers"];
        if overrides.keys().any(|k| k.as_str().is_some_and(|k| layering.contains(&k))) {
            cfg.layer_types = None;
        }
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<()> {
        check_sizes(
            &[
                ("vocab_size", self.vocab_size, 1),
                ("hidden_size", self.hidden_size, 1),
                ("intermediate_size", self.intermediate_size, 1),
                ("num_hidden_layers", self.num_hidden_layers, 0),
                ("num_attention_heads", self.num_attention_heads, 1),
                ("max_position_embeddings", self.max_position_embeddings, 1),
            ],
            self.vocab_size,
            self.num_hidden_layers,
            self.intermediate_size,
        )?;
        if self.hidden_size % self.num_attention_heads != 0 || (self.hidden_size / self.num_attention_heads) % 2 != 0 {
            bail!(
                "hidden_size ({}) must be num_attention_heads ({}) times an even head size (rotary positions pair dimensions)",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if self.global_attn_every_n_layers < 1 {
            bail!(
                "global_attn_every_n_layers must be at least 1 (every n-th layer attends globally), got {}",
                self.global_attn_every_n_layers
            );
        }
        if self.local_attention < 2 || self.local_attention % 2 != 0 {
            bail!("local_attention must be an even window of at least 2 tokens, got {}", self.local_attention);
        }
        if self.local_attention > self.max_position_embeddings {
            bail!(
                "local_attention ({}) is larger than the context, max_position_embeddings ({})",
                self.local_attention,
                self.max_position_embeddings
            );
        }
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                bail!("layer_types has {} entries for {} layers", types.len(), self.num_hidden_layers);
            }
            if let Some(t) = types.iter().find(|t| *t != FULL && *t != SLIDING) {
                bail!("layer_types: `{t}` is not {FULL} or {SLIDING}");
            }
        }
        for (name, x) in [("norm_eps", self.norm_eps), ("global_rope_theta", self.global_rope_theta), ("local_rope_theta", self.local_rope_theta)] {
            if !(x > 0.0 && x.is_finite()) {
                bail!("{name} must be positive, got {x}");
            }
        }
        for (name, x) in [("initializer_range", self.initializer_range), ("initializer_cutoff_factor", self.initializer_cutoff_factor)] {
            if !(x >= 0.0 && x.is_finite()) {
                bail!("{name} must be a number >= 0, got {x}");
            }
        }
        for (name, p) in [
            ("attention_dropout", self.attention_dropout),
            ("embedding_dropout", self.embedding_dropout),
            ("mlp_dropout", self.mlp_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                bail!("{name} must be in [0, 1), got {p}");
            }
        }
        check_activation(&self.hidden_activation).context("hidden_activation")?;
        check_activation(&self.classifier_activation).context("classifier_activation")
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether layer `i` attends globally (else within its local window).
    pub fn is_global(&self, i: usize) -> bool {
        match &self.layer_types {
            Some(types) => types[i] == FULL,
            None => i as i64 % self.global_attn_every_n_layers == 0,
        }
    }

    /// The `config.json` written next to exported weights: the source config's
    /// extra keys kept, this config's values on top, in both forms.
    pub fn to_hf_json(&self, base: Option<&serde_json::Value>) -> serde_json::Value {
        let mut out = match base {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let serde_json::Value::Object(ours) = serde_json::to_value(self).expect("config serializes") {
            out.extend(ours);
        }
        let types: Vec<&str> = (0..self.num_hidden_layers as usize).map(|i| if self.is_global(i) { FULL } else { SLIDING }).collect();
        out.insert("layer_types".into(), serde_json::json!(types));
        if out.get("rope_parameters").is_some_and(|r| r.is_object()) {
            out.insert(
                "rope_parameters".into(),
                serde_json::json!({
                    FULL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
                    SLIDING: {"rope_type": "default", "rope_theta": self.local_rope_theta},
                }),
            );
        }
        out.insert("architectures".into(), serde_json::json!(["ModernBertForMaskedLM"]));
        out.insert("model_type".into(), serde_json::json!("modernbert"));
        out.insert("torch_dtype".into(), serde_json::json!("float32"));
        out.remove("dtype");
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(yaml: &str) -> serde_yaml::Mapping {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn every_third_layer_is_global_by_default() {
        let cfg = ModernBertConfig::default();
        let global: Vec<usize> = (0..22).filter(|&i| cfg.is_global(i)).collect();
        assert_eq!(global, [0, 3, 6, 9, 12, 15, 18, 21]);
    }

    #[test]
    fn bad_layouts_name_their_key() {
        let base = ModernBertConfig::default();
        for (yaml, key) in [
            ("global_attn_every_n_layers: 0", "global_attn_every_n_layers"),
            ("local_attention: 16384", "local_attention"),
            ("local_attention: 7", "local_attention"),
            ("num_attention_heads: 5", "hidden_size"),
            ("mlp_dropout: 1.0", "mlp_dropout"),
            ("hidden_activation: swish", "hidden_activation"),
        ] {
            let err = format!("{:#}", base.with_overrides(&overrides(yaml)).unwrap_err());
            assert!(err.contains(key), "{yaml}: {err}");
        }
    }
}
