//! `model.options` as every family reads them: a preset or a checkpoint,
//! overrides of the config, and the tensors a checkpoint may lack.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

/// `model.options` in a recipe.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    /// Architecture preset for random initialisation (`bert-base`, ...).
    pub preset: Option<String>,
    /// Overrides of `config.json` fields (dropout, sizes, ...).
    #[serde(default)]
    pub config: serde_yaml::Mapping,
    /// Tensors (names or prefixes) the checkpoint may lack; they start fresh.
    /// The family's MLM head always may.
    #[serde(default)]
    pub allow_missing: Vec<String>,
}

/// Where a model's weights come from.
#[derive(Debug, PartialEq)]
pub enum Start<'a> {
    /// A Hugging Face checkpoint directory.
    Checkpoint(&'a Path),
    /// Random initialisation of the named preset.
    Preset(&'a str),
}

impl ModelOptions {
    pub fn parse(options: &runner_api::Options) -> Result<Self> {
        runner_api::parse_options(options)
    }

    /// The named preset, else the family's `default`.
    pub fn preset_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.preset.as_deref().unwrap_or(default)
    }

    /// The checkpoint when the recipe gives one, else the preset; both at once is a mistake.
    pub fn start<'a>(&'a self, checkpoint: Option<&'a Path>, default: &'a str) -> Result<Start<'a>> {
        match (checkpoint, &self.preset) {
            (Some(_), Some(_)) => bail!("preset: give either a checkpoint or a preset, not both"),
            (Some(dir), None) => Ok(Start::Checkpoint(dir)),
            (None, _) => Ok(Start::Preset(self.preset_or(default))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_or_a_preset_never_both() {
        let none = ModelOptions::default();
        let named = ModelOptions { preset: Some("bert-tiny".into()), ..Default::default() };
        let dir = Path::new("/ckpt");
        assert_eq!(none.start(None, "bert-base").unwrap(), Start::Preset("bert-base"));
        assert_eq!(named.start(None, "bert-base").unwrap(), Start::Preset("bert-tiny"));
        assert_eq!(none.start(Some(dir), "bert-base").unwrap(), Start::Checkpoint(dir));
        assert!(named.start(Some(dir), "bert-base").unwrap_err().to_string().starts_with("preset:"));
    }
}
