//! The Hugging Face environment variables, read as `huggingface_hub` reads them:
//! `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`.

use std::path::{Path, PathBuf};

/// The default Hub endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the cache is, where the Hub is, and how to talk to it.
#[derive(Debug, Clone)]
pub struct HubEnv {
    /// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache: PathBuf,
    /// `$HF_ENDPOINT` without a trailing `/`, else <https://huggingface.co>.
    pub endpoint: String,
    /// Sent as `Authorization: Bearer`: `$HF_TOKEN`, else the token file `huggingface-cli login` writes.
    pub token: Option<String>,
    /// `$HF_HUB_OFFLINE` (or `$TRANSFORMERS_OFFLINE`) is 1, ON, YES or TRUE: never touch the network.
    pub offline: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn is_true(v: Option<String>) -> bool {
    v.is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.trim().to_ascii_uppercase().as_str()))
}

/// `~` at the start of a path means the home directory, as in Python's `expanduser`.
fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix('~'), var("HOME")) {
        (Some(rest), Some(home)) if rest.is_empty() || rest.starts_with('/') => {
            PathBuf::from(format!("{home}{rest}"))
        }
        _ => PathBuf::from(p),
    }
}

impl HubEnv {
    /// Reads the environment.
    pub fn from_env() -> HubEnv {
        let home = var("HF_HOME").map(|h| expand_home(&h)).unwrap_or_else(|| {
            let xdg = var("XDG_CACHE_HOME").map(|x| expand_home(&x)).unwrap_or_else(|| expand_home("~/.cache"));
            xdg.join("huggingface")
        });
        let cache = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(|c| expand_home(&c))
            .unwrap_or_else(|| home.join("hub"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()).trim_end_matches('/').to_string();
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let file = var("HF_TOKEN_PATH").map(|p| expand_home(&p)).unwrap_or_else(|| home.join("token"));
            read_token(&file)
        });
        let offline = is_true(var("HF_HUB_OFFLINE").or_else(|| var("TRANSFORMERS_OFFLINE")));
        HubEnv { cache, endpoint, token, offline }
    }
}

fn read_token(file: &Path) -> Option<String> {
    std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthy_values_are_those_of_huggingface_hub() {
        for v in ["1", "on", "YES", "true", " True "] {
            assert!(is_true(Some(v.into())), "{v}");
        }
        for v in ["0", "false", "no", "", "2"] {
            assert!(!is_true(Some(v.into())), "{v}");
        }
        assert!(!is_true(None));
    }

    #[test]
    fn tilde_is_the_home_directory() {
        let home = var("HOME").unwrap_or_default();
        if !home.is_empty() {
            assert_eq!(expand_home("~/x"), PathBuf::from(format!("{home}/x")));
        }
        assert_eq!(expand_home("/abs/~x"), PathBuf::from("/abs/~x"));
        assert_eq!(expand_home("~other/x"), PathBuf::from("~other/x"));
    }
}
