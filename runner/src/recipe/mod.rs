//! Recipes: YAML file -> [`RawRecipe`] (serde, `--set` applied) -> [`Recipe`]
//! (every value checked, every name found in the registry). The engine sees
//! only the resolved [`Recipe`]; nothing downstream re-reads YAML.

pub mod overrides;
pub mod raw;
mod resolve;

use std::path::Path;

use anyhow::Result;

pub use overrides::Override;
pub use raw::RawRecipe;
pub use resolve::{parse_device, resolve, EvalSource, Recipe, TrainLength, Warmup};

use crate::error::user_msg;

/// Reads a recipe file and applies `--set` overrides. Errors name the file and
/// the key path (and the line, when the error is in the file itself).
pub fn load(path: &Path, overrides: &[Override]) -> Result<RawRecipe> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| user_msg(format!("{shown}: cannot read recipe: {e}")))?;
    let located = |e: serde_path_to_error::Error<serde_yaml::Error>| {
        let key = e.path().to_string();
        if key == "." {
            user_msg(format!("{shown}: {}", e.inner()))
        } else {
            user_msg(format!("{shown}: {key}: {}", e.inner()))
        }
    };
    if overrides.is_empty() {
        // Straight from the text, so errors carry line and column.
        return serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text)).map_err(located);
    }
    let mut tree: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| user_msg(format!("{shown}: {e}")))?;
    for o in overrides {
        overrides::apply(&mut tree, o).map_err(|e| user_msg(format!("{e:#}")))?;
    }
    serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        user_msg(format!("{shown} (with --set): {key}: {}", e.inner()))
    })
}
