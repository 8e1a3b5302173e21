//! `hf://` addresses in recipes: parsing and checking them, nothing else (the
//! runner's `hub/` fetches what they name).
//!
//! - a model: `hf://org/name` or `hf://org/name@revision` (`hf://name` for the
//!   few repositories without an owner);
//! - a dataset: `hf://datasets/org/name[@revision]/path`, where `path` names a
//!   parquet file, a folder of them, or a split: `wikitext-2-raw-v1/train` is
//!   every `wikitext-2-raw-v1/train-*.parquet` (the runner's `hub/select.rs`).
//!
//! The revision is a branch, a tag or a commit hash (default `main`), as in
//! `huggingface_hub`'s `HfFileSystem`.

use std::fmt;
use std::path::Path;

/// The `hf://` scheme.
pub const SCHEME: &str = "hf://";

/// What kind of repository an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoType {
    Model,
    Dataset,
}

impl RepoType {
    /// `models` / `datasets`: the cache folder prefix and the API path segment.
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
        }
    }
}

/// A parsed `hf://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUri {
    pub repo_type: RepoType,
    /// `org/name` (or `name`).
    pub repo_id: String,
    /// Branch, tag or commit hash; `main` unless given.
    pub revision: String,
    /// Inside a dataset repository: a file, folder or split; empty for models.
    pub path: String,
}

/// The `hf://` text of a recipe path, if it is one.
pub fn as_hub(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| s.starts_with(SCHEME))
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
        && !s.contains("--")
        && !s.contains("..")
}

fn valid_revision(s: &str) -> bool {
    !s.is_empty() && !s.contains("..") && s.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != '\\')
}

impl HubUri {
    /// Parses an `hf://` address; the error says what the forms are.
    pub fn parse(s: &str) -> Result<HubUri, String> {
        let forms = "expected hf://org/name[@revision] for a model or hf://datasets/org/name[@revision]/path for a dataset";
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| format!("`{s}` is not an hf:// address ({forms})"))?;
        let bad = |why: &str| format!("`{s}`: {why} ({forms})");
        let (repo_type, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (RepoType::Dataset, r),
            None => (RepoType::Model, rest),
        };
        let rest = rest.trim_end_matches('/');
        let parts: Vec<&str> = if rest.is_empty() { vec![] } else { rest.split('/').collect() };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("empty path segment"));
        }
        // The revision, if any, is attached to the repository name.
        let (id_parts, path_parts): (Vec<&str>, Vec<&str>) = match repo_type {
            RepoType::Model => match parts.len() {
                1 | 2 => (parts, vec![]),
                0 => return Err(bad("no repository named")),
                _ => return Err(bad("a model is named by org/name, with no path after it")),
            },
            RepoType::Dataset => {
                if parts.len() < 2 {
                    return Err(bad("a dataset is named by org/name"));
                }
                (parts[..2].to_vec(), parts[2..].to_vec())
            }
        };
        let last = id_parts.len() - 1;
        let (name, revision) = match id_parts[last].split_once('@') {
            Some((n, r)) => (n, r.to_string()),
            None => (id_parts[last], "main".to_string()),
        };
        if !valid_revision(&revision) {
            return Err(bad(&format!("bad revision `{revision}` (a branch, tag or commit hash)")));
        }
        let mut id: Vec<&str> = id_parts[..last].to_vec();
        id.push(name);
        if let Some(p) = id.iter().find(|p| !valid_repo_part(p)) {
            return Err(bad(&format!("bad repository name part `{p}` (letters, digits, '-', '_', '.')")));
        }
        if path_parts.iter().any(|p| *p == "." || *p == "..") {
            return Err(bad("`.` and `..` are not allowed in the path"));
        }
        Ok(HubUri { repo_type, repo_id: id.join("/"), revision, path: path_parts.join("/") })
    }

    /// `model org/name` or `dataset org/name`, for messages.
    pub fn repo_label(&self) -> String {
        match self.repo_type {
            RepoType::Model => format!("model {}", self.repo_id),
            RepoType::Dataset => format!("dataset {}", self.repo_id),
        }
    }
}

impl fmt::Display for HubUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.repo_type == RepoType::Dataset { "datasets/" } else { "" };
        write!(f, "{SCHEME}{prefix}{}", self.repo_id)?;
        if self.revision != "main" {
            write!(f, "@{}", self.revision)?;
        }
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_and_datasets_parse_with_optional_revision() {
        let m = HubUri::parse("hf://google-bert/bert-base-uncased").unwrap();
        assert_eq!((m.repo_type, m.repo_id.as_str(), m.revision.as_str(), m.path.as_str()), (RepoType::Model, "google-bert/bert-base-uncased", "main", ""));
        let m = HubUri::parse("hf://org/name@v1.0").unwrap();
        assert_eq!((m.repo_id.as_str(), m.revision.as_str()), ("org/name", "v1.0"));
        assert_eq!(HubUri::parse("hf://bert-base-uncased").unwrap().repo_id, "bert-base-uncased");

        let d = HubUri::parse("hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/train").unwrap();
        assert_eq!((d.repo_type, d.repo_id.as_str(), d.revision.as_str(), d.path.as_str()), (RepoType::Dataset, "Salesforce/wikitext", "main", "wikitext-2-raw-v1/train"));
        let d = HubUri::parse("hf://datasets/Salesforce/wikitext@abc123/wikitext-2-raw-v1/validation").unwrap();
        assert_eq!((d.revision.as_str(), d.path.as_str()), ("abc123", "wikitext-2-raw-v1/validation"));
        assert_eq!(d.to_string(), "hf://datasets/Salesforce/wikitext@abc123/wikitext-2-raw-v1/validation");
        assert_eq!(HubUri::parse("hf://datasets/org/name").unwrap().path, "");
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        for (s, needle) in [
            ("hf://", "no repository"),
            ("hf://org/name/extra", "no path after it"),
            ("hf://datasets/only", "org/name"),
            ("hf://org/na me", "bad repository name"),
            ("hf://org--x/name", "bad repository name"),
            ("hf://org/name@", "bad revision"),
            ("hf://datasets/org/name/../x", "not allowed"),
            ("hf:/org/name", "not an hf:// address"),
        ] {
            let e = HubUri::parse(s).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }
}
