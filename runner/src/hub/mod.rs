//! Hugging Face Hub sources: `hf://` models and datasets in recipes, downloaded
//! into and reused from the standard Hugging Face cache (`$HF_HOME/hub`), in
//! the layout `huggingface_hub` uses, so both find each other's files.
//!
//! - [`uri`]: the `hf://` forms (`runner_recipe::hf_uri`); [`env`]: the `HF_*` variables;
//! - [`cache`]: the cache layout; [`select`]: which files a recipe needs;
//! - [`download`]: HTTP (listing, `HEAD`, resumable `GET`, checksums).
//!
//! A resolved recipe's local model, tokenizer and corpus files are found by
//! `recipe::sources`, which calls this module.
//!
//! Online, one listing request per repository says which commit a revision is
//! at; only files missing from that commit's snapshot are downloaded. Offline
//! (`HF_HUB_OFFLINE=1`), or when the Hub cannot be reached, the cached snapshot
//! of the revision is used, and a missing one is a clear error.

pub mod cache;
pub mod download;
pub mod env;
pub mod select;

/// The `hf://` forms, from the bottom layer.
pub use runner_recipe::hf_uri as uri;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use env::HubEnv;
pub use uri::{as_hub, HubUri, RepoType};

use crate::error::user_msg;
use cache::RepoCache;
use download::{Client, Unreachable};

/// Resolves an `hf://` model to its snapshot folder in the cache (downloading
/// what is missing), with the environment's settings.
pub fn resolve_model(uri: &str) -> Result<PathBuf> {
    Hub::from_env().model(&parse(uri, RepoType::Model)?)
}

/// Resolves an `hf://datasets/...` address to its parquet files in the cache
/// (downloading what is missing), with the environment's settings.
pub fn resolve_dataset(uri: &str) -> Result<Vec<PathBuf>> {
    Hub::from_env().dataset(&parse(uri, RepoType::Dataset)?)
}

/// Parses an `hf://` address that must name a `kind` repository.
pub fn parse(s: &str, kind: RepoType) -> Result<HubUri> {
    let uri = HubUri::parse(s).map_err(user_msg)?;
    kind_matches(&uri, kind).map_err(user_msg)?;
    Ok(uri)
}

fn kind_matches(uri: &HubUri, kind: RepoType) -> Result<(), String> {
    match (uri.repo_type, kind) {
        (RepoType::Model, RepoType::Dataset) => {
            Err(format!("`{uri}` names a model; a dataset is hf://datasets/org/name/path (e.g. hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/train)"))
        }
        (RepoType::Dataset, RepoType::Model) => Err(format!("`{uri}` names a dataset; a model is hf://org/name[@revision]")),
        _ => Ok(()),
    }
}

/// Checks a recipe path without downloading: `None` if it is no `hf://`
/// address; else its syntax, its kind and, when offline, that the cache holds it.
pub fn check_recipe_path(path: &Path, kind: RepoType) -> Option<Result<(), String>> {
    let s = as_hub(path)?;
    Some(HubUri::parse(s).and_then(|uri| {
        kind_matches(&uri, kind)?;
        let hub = Hub::from_env();
        if hub.env.offline {
            hub.cached(&uri).map_err(|missing| hub.offline_message(&uri, &missing))?;
        }
        Ok(())
    }))
}

/// The Hub and its cache, as the environment configures them.
#[derive(Debug, Clone)]
pub struct Hub {
    pub env: HubEnv,
}

impl Hub {
    pub fn from_env() -> Hub {
        Hub { env: HubEnv::from_env() }
    }

    pub fn new(env: HubEnv) -> Hub {
        Hub { env }
    }

    fn repo(&self, uri: &HubUri) -> RepoCache {
        RepoCache::new(&self.env.cache, uri)
    }

    /// The snapshot folder of a model (its files fetched when missing).
    pub fn model(&self, uri: &HubUri) -> Result<PathBuf> {
        let files = self.fetch(uri)?;
        Ok(files.first().and_then(|f| f.parent()).map(Path::to_path_buf).unwrap_or_default())
    }

    /// The parquet files of a dataset path (fetched when missing).
    pub fn dataset(&self, uri: &HubUri) -> Result<Vec<PathBuf>> {
        self.fetch(uri)
    }

    /// Which files of the repository `uri` needs, among `files`.
    fn wanted(uri: &HubUri, files: &[String]) -> Result<Vec<String>, String> {
        match uri.repo_type {
            RepoType::Model => Ok(select::model_files(files)?.into_iter().map(str::to_string).collect()),
            RepoType::Dataset => {
                let found = select::dataset_files(files, &uri.path);
                if found.is_empty() {
                    let what = if uri.path.is_empty() { "no parquet files".to_string() } else { format!("no parquet files for `{}`", uri.path) };
                    return Err(format!("{what}; {}", select::describe_parquet(files)));
                }
                Ok(found)
            }
        }
    }

    /// The cached files `uri` needs, or what is missing from the cache.
    fn cached(&self, uri: &HubUri) -> Result<Vec<PathBuf>, String> {
        let repo = self.repo(uri);
        let commit = repo
            .commit_for(&uri.revision)
            .ok_or_else(|| format!("revision `{}` (no {})", uri.revision, repo.dir.join("refs").join(&uri.revision).display()))?;
        let files = repo.snapshot_files(&commit);
        if files.is_empty() {
            return Err(format!("snapshot {commit} (no {})", repo.snapshot(&commit).display()));
        }
        let wanted = Self::wanted(uri, &files).map_err(|m| format!("files: the cached snapshot {commit} {m}"))?;
        Ok(wanted.iter().map(|f| repo.pointer(&commit, f)).collect())
    }

    fn offline_message(&self, uri: &HubUri, missing: &str) -> String {
        let local = match uri.repo_type {
            RepoType::Model => "model.checkpoint: path/to/folder with config.json, model.safetensors and tokenizer.json",
            RepoType::Dataset => "data.train / data.eval: a local parquet file or folder, with data.dataset: parquet",
        };
        format!(
            "HF_HUB_OFFLINE is set and the Hugging Face cache ({}) does not hold {uri} ({}, revision `{}`): missing {missing}. \
             Run once without HF_HUB_OFFLINE to download it, or point the recipe at a local folder instead ({local})",
            self.env.cache.display(),
            uri.repo_label(),
            uri.revision
        )
    }

    /// The files `uri` needs: from the cache offline, else listed on the Hub
    /// and downloaded when the snapshot lacks them.
    fn fetch(&self, uri: &HubUri) -> Result<Vec<PathBuf>> {
        if self.env.offline {
            return self.cached(uri).map_err(|missing| user_msg(self.offline_message(uri, &missing)));
        }
        let client = Client::new(&self.env);
        let info = match client.repo_info(uri) {
            Ok(info) => info,
            Err(e) if e.is::<Unreachable>() => {
                return match self.cached(uri) {
                    Ok(files) => {
                        tracing::warn!("{e:#}; using the cached copy of {uri}");
                        Ok(files)
                    }
                    Err(missing) => Err(e.context(format!(
                        "{uri} is not cached either (missing {missing}); check the network or HF_ENDPOINT, \
                         or point the recipe at a local folder instead"
                    ))),
                };
            }
            Err(e) => return Err(e),
        };
        let repo = self.repo(uri);
        let wanted = Self::wanted(uri, &info.files).map_err(|m| user_msg(format!("{} at revision `{}` {m}", uri.repo_label(), uri.revision)))?;
        repo.write_ref(&uri.revision, &info.sha).with_context(|| format!("cannot write {}", repo.dir.join("refs").display()))?;
        let mut out = Vec::new();
        for f in &wanted {
            let pointer = repo.pointer(&info.sha, f);
            if pointer.is_file() {
                out.push(pointer);
            } else {
                tracing::info!("downloading {f} of {} ({})", uri.repo_label(), &info.sha[..info.sha.len().min(12)]);
                out.push(client.download(&repo, uri, &info.sha, f)?);
            }
        }
        Ok(out)
    }
}
