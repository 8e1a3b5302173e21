//! Where a run reads its model, tokenizer and corpus from: the recipe's local
//! paths as they are, and every `hf://` source fetched into the Hugging Face
//! cache first. Called once at the start of a run, before anything is written.
//! Here, not in `hub/`, so that the hub needs nothing from the recipe layer.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{EvalSource, Recipe};
use crate::error::user_msg;
use crate::hub::{as_hub, parse, Hub, RepoType};

/// A run's inputs, all local files.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The model folder (`config.json`, `model.safetensors`), if any.
    pub checkpoint: Option<PathBuf>,
    pub tokenizer: PathBuf,
    /// The training corpus: one path, or an `hf://` dataset's parquet files.
    pub train: Vec<PathBuf>,
    /// The held-out corpus, when `data.eval` gives one.
    pub eval: Option<Vec<PathBuf>>,
}

fn corpus(hub: &mut Option<Hub>, path: &Path, key: &str) -> Result<Vec<PathBuf>> {
    match as_hub(path) {
        None => Ok(vec![path.to_path_buf()]),
        Some(s) => {
            let hub = hub.get_or_insert_with(Hub::from_env);
            parse(s, RepoType::Dataset).and_then(|u| hub.dataset(&u)).with_context(|| key.to_string())
        }
    }
}

/// Resolves a checked recipe's sources, downloading `hf://` ones when needed.
pub fn sources(recipe: &Recipe) -> Result<Sources> {
    let mut hub: Option<Hub> = None;
    let raw = &recipe.raw;
    let mut tokenizer = recipe.tokenizer.clone();
    let checkpoint = match raw.model.checkpoint.as_deref() {
        None => None,
        Some(dir) => match as_hub(dir) {
            None => Some(dir.to_path_buf()),
            Some(s) => {
                let h = hub.get_or_insert_with(Hub::from_env);
                let snapshot = parse(s, RepoType::Model).and_then(|u| h.model(&u)).context("model.checkpoint")?;
                if raw.tokenizer.path.is_none() {
                    tokenizer = snapshot.join("tokenizer.json");
                    if !tokenizer.is_file() {
                        return Err(user_msg(format!("tokenizer.path: not given, and {s} has no tokenizer.json")));
                    }
                }
                Some(snapshot)
            }
        },
    };
    let train = corpus(&mut hub, &recipe.train_path, "data.train")?;
    let eval = match &recipe.eval_source {
        EvalSource::Path(p) => Some(corpus(&mut hub, p, "data.eval")?),
        EvalSource::Holdout(_) => None,
    };
    Ok(Sources { checkpoint, tokenizer, train, eval })
}
