//! Recipes: YAML file -> [`RawRecipe`] (serde, `--set` applied) -> [`Recipe`]
//! (every value checked, every name found in the registry). The engine sees
//! only the resolved [`Recipe`]; nothing downstream re-reads YAML.
//!
//! The raw recipe, its parsing (text and `--set` overrides) and the checks of
//! values alone are the `runner-recipe` crate, re-exported here as
//! `recipe::{raw, parse, overrides, check}`: they need neither the file system
//! nor libtorch. This module is the layer that joins them to the rest of the
//! runner: `resolve.rs` adds the checks of files (`files.rs`, with the
//! tokenizer), of `hf://` sources (the hub) and of components (the registry),
//! and `sources.rs` fetches a resolved recipe's `hf://` inputs.

pub use runner_recipe::{check, overrides, parse, raw};

pub mod files;
mod resolve;
pub mod sources;

use std::path::Path;

use anyhow::Result;

pub use check::{EvalSource, TrainLength, Warmup};
pub use overrides::Override;
pub use raw::RawRecipe;
pub use resolve::{parse_device, resolve, Recipe};
pub use sources::{sources, Sources};

use crate::error::user_msg;

/// Reads a recipe file and applies `--set` overrides. Errors name the file and
/// the key path (and the line, when the error is in the file itself).
pub fn load(path: &Path, overrides: &[Override]) -> Result<RawRecipe> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(user_msg(format!("{shown}: is a folder, not a recipe file")));
    }
    let bytes = std::fs::read(path).map_err(|e| user_msg(format!("{shown}: cannot read recipe: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        user_msg(format!("{shown}:{line}: not UTF-8 text (invalid byte at offset {at})"))
    })?;
    parse::parse(&text, &shown, overrides)
}
