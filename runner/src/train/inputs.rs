//! What a run read besides its recipe, recorded with every checkpoint
//! (`state.json`'s `inputs`) and compared when the run is resumed, so that a
//! resume never continues silently on other ground:
//!
//! - the token store: its key (`data/cache.rs`: the corpus files' paths,
//!   sizes and times, the dataset, the split, the tokenizer) and the SHA-256
//!   of each of its files, that is, the examples themselves;
//! - the SHA-256 of each tokenizer file (`tokenizer.json` and the files beside
//!   it that name its special tokens);
//! - the model folder's `config.json`, as it was read.
//!
//! A resume is refused (exit 2, naming what changed, with how to go on) when
//! the examples differ (the corpus was edited), a tokenizer file differs, or a
//! key of `config.json` differs that the model reads (a dropout, a size). It
//! goes on with a warning when the change cannot alter the run: corpus files
//! touched, moved or rewritten with the same text (a new store key, the same
//! examples), or only `config.json`'s bookkeeping keys ([`BOOKKEEPING`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::data::store::Manifest;
use crate::error::user_msg;

/// Keys of a model's `config.json` no model reads to build or train itself.
const BOOKKEEPING: &[&str] = &["_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache"];

/// The files beside `tokenizer.json` that the run reads (its special tokens).
const TOKENIZER_SIDE_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// What a run read at its start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inputs {
    /// The corpus as the store describes it (its paths), for messages.
    pub corpus: Vec<String>,
    /// The token store's cache key.
    pub store_key: String,
    /// SHA-256 of each token store file.
    pub store_files: BTreeMap<String, String>,
    /// Train and eval tokens in the store, for messages.
    pub tokens: (u64, u64),
    /// SHA-256 of each tokenizer file read, by path.
    pub tokenizer_files: BTreeMap<String, String>,
    /// The model folder's `config.json` (its path and content); none without a model folder.
    pub model_config: Option<(String, Value)>,
}

impl Inputs {
    /// What this run reads: the token store it mapped, the tokenizer at
    /// `tokenizer` and the model folder `checkpoint`.
    pub fn read(store: &Manifest, tokenizer: &Path, checkpoint: Option<&Path>) -> Result<Inputs> {
        let mut tokenizer_files = BTreeMap::new();
        tokenizer_files.insert(tokenizer.display().to_string(), sha256_of(tokenizer)?);
        let dir = tokenizer.parent().unwrap_or(Path::new("."));
        for name in TOKENIZER_SIDE_FILES {
            let path = dir.join(name);
            if path.is_file() {
                tokenizer_files.insert(path.display().to_string(), sha256_of(&path)?);
            }
        }
        let model_config = match checkpoint.map(|d| d.join("config.json")).filter(|p| p.is_file()) {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                let value = serde_json::from_str(&text).map_err(|e| user_msg(format!("{}: not valid JSON: {e}", path.display())))?;
                Some((path.display().to_string(), value))
            }
        };
        Ok(Inputs {
            corpus: store.sources.clone(),
            store_key: store.key.clone(),
            store_files: store.sha256.clone(),
            tokens: (store.train.tokens, store.eval.tokens),
            tokenizer_files,
            model_config,
        })
    }
}

/// Compares what a checkpoint's run read (`saved`; none for a checkpoint
/// written before inputs were recorded) with what this resume reads. Returns
/// the warnings to show, or refuses naming every change that alters the run.
pub fn check(saved: Option<&Inputs>, now: &Inputs, step: u64) -> Result<Vec<String>> {
    let Some(saved) = saved else {
        return Ok(vec![format!(
            "the checkpoint after step {step} does not record the corpus, tokenizer and model config it was trained on \
             (an older runner wrote it): they are not compared"
        )]);
    };
    let mut refused = Vec::new();
    let mut warnings = Vec::new();
    let files: std::collections::BTreeSet<&String> = saved.tokenizer_files.keys().chain(now.tokenizer_files.keys()).collect();
    for f in files {
        match (saved.tokenizer_files.get(f), now.tokenizer_files.get(f)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => refused.push(format!("{f} changed")),
            (Some(_), None) => refused.push(format!("{f} is gone")),
            (None, _) => refused.push(format!("{f} is new")),
        }
    }
    if saved.store_files != now.store_files {
        // A changed tokenizer is reason enough; the corpus is named only when it is the cause.
        if refused.is_empty() {
            refused.push(format!(
                "the corpus ({}) gives other examples than when the run started ({} train and {} eval tokens then, {} and {} now): \
                 it was edited",
                now.corpus.join(", "),
                saved.tokens.0,
                saved.tokens.1,
                now.tokens.0,
                now.tokens.1
            ));
        }
    } else if saved.store_key != now.store_key {
        warnings.push(format!(
            "the corpus ({}) was touched, moved or rewritten since the run started, but it gives the same examples: resuming",
            now.corpus.join(", ")
        ));
    }
    match (&saved.model_config, &now.model_config) {
        (Some((_, a)), Some((path, b))) => {
            let (changed, bookkeeping) = config_changes(a, b);
            if !changed.is_empty() {
                refused.push(format!("{path}: {}", changed.join(", ")));
            }
            if !bookkeeping.is_empty() {
                warnings.push(format!("{path}: {} changed, which does not change training: resuming", bookkeeping.join(", ")));
            }
        }
        (Some((path, _)), None) => refused.push(format!("{path} is gone")),
        (None, Some((path, _))) => refused.push(format!("{path} is new")),
        (None, None) => {}
    }
    if !refused.is_empty() {
        return Err(user_msg(format!(
            "cannot resume from the checkpoint after step {step}: what the run read has changed since it started: {}. \
             Put back what it read, or start a new run from the changed inputs (another run.name, or --overwrite)",
            refused.join("; ")
        )));
    }
    Ok(warnings)
}

/// The top-level keys of two `config.json`s that differ: those the model
/// reads (`key (old -> new)`), and the bookkeeping ones.
fn config_changes(a: &Value, b: &Value) -> (Vec<String>, Vec<String>) {
    let empty = serde_json::Map::new();
    let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let (mut changed, mut bookkeeping) = (Vec::new(), Vec::new());
    let shown = |v: Option<&Value>| v.map_or_else(|| "unset".to_string(), Value::to_string);
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x == y {
            continue;
        }
        if BOOKKEEPING.contains(&k.as_str()) {
            bookkeeping.push(k.clone());
        } else {
            changed.push(format!("{k} ({} -> {})", shown(x), shown(y)));
        }
    }
    (changed, bookkeeping)
}

fn sha256_of(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            corpus: vec!["corpus.txt".into()],
            store_key: "k1".into(),
            store_files: BTreeMap::from([("train.tokens".into(), "aa".into())]),
            tokens: (100, 20),
            tokenizer_files: BTreeMap::from([("m/tokenizer.json".into(), "t1".into())]),
            model_config: Some(("m/config.json".into(), serde_json::json!({"hidden_dropout_prob": 0.0, "transformers_version": "4"}))),
        }
    }

    fn refusal(saved: &Inputs, now: &Inputs) -> String {
        format!("{:#}", check(Some(saved), now, 5).unwrap_err())
    }

    #[test]
    fn the_same_inputs_resume_quietly() {
        assert!(check(Some(&inputs()), &inputs(), 5).unwrap().is_empty());
    }

    #[test]
    fn other_examples_a_tokenizer_file_or_a_model_key_refuse_naming_it() {
        let mut now = inputs();
        now.store_key = "k2".into();
        now.store_files.insert("train.tokens".into(), "bb".into());
        now.tokens = (104, 20);
        let e = refusal(&inputs(), &now);
        assert!(e.contains("after step 5") && e.contains("corpus.txt") && e.contains("100 train and 20 eval tokens then, 104 and 20 now"), "{e}");
        assert!(e.contains("start a new run"), "{e}");

        let mut now = inputs();
        now.tokenizer_files.insert("m/tokenizer.json".into(), "t2".into());
        now.store_files.insert("train.tokens".into(), "bb".into());
        let e = refusal(&inputs(), &now);
        assert!(e.contains("m/tokenizer.json changed") && !e.contains("corpus.txt"), "{e}");

        let mut now = inputs();
        now.model_config.as_mut().unwrap().1["hidden_dropout_prob"] = serde_json::json!(0.1);
        assert!(refusal(&inputs(), &now).contains("m/config.json: hidden_dropout_prob (0.0 -> 0.1)"));
        let mut now = inputs();
        now.model_config = None;
        assert!(refusal(&inputs(), &now).contains("m/config.json is gone"));
    }

    #[test]
    fn changes_that_cannot_alter_the_run_warn() {
        let mut now = inputs();
        now.store_key = "k2".into();
        now.model_config.as_mut().unwrap().1["transformers_version"] = serde_json::json!("5");
        let w = check(Some(&inputs()), &now, 5).unwrap();
        assert!(w[0].contains("the same examples") && w[1].contains("transformers_version changed"), "{w:?}");
        // A checkpoint that records nothing: said, not refused.
        assert!(check(None, &now, 5).unwrap()[0].contains("not compared"));
    }
}
