//! Talking to the Hub over HTTP (ureq, rustls): a repository's commit and file
//! list, and one file downloaded into the cache: `HEAD` for its ETag, `GET`
//! (resumed with `Range` from `blobs/<etag>.incomplete`) with a progress bar,
//! then size and sha256 checked against the Hub's headers before the blob is
//! renamed into place and linked from the snapshot.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

use super::cache::RepoCache;
use super::env::HubEnv;
use super::uri::{HubUri, RepoType};
use crate::error::user_msg;

/// The Hub could not be reached (no connection, timeout, server error): a
/// cached copy may stand in for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// A repository at a revision, as the Hub lists it.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    /// The commit hash the revision points at.
    pub sha: String,
    /// Every file, relative, with `/` separators.
    pub files: Vec<String>,
}

/// What `HEAD` on a file's resolve URL says.
#[derive(Debug, Clone)]
struct FileMeta {
    etag: String,
    size: Option<u64>,
    /// Where the bytes are (the CDN for LFS files).
    location: String,
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn quote(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `{endpoint}/[datasets/]{repo_id}/resolve/{revision}/{file}`.
pub fn resolve_url(endpoint: &str, uri: &HubUri, revision: &str, file: &str) -> String {
    let prefix = if uri.repo_type == RepoType::Dataset { "datasets/" } else { "" };
    format!("{endpoint}/{prefix}{}/resolve/{}/{}", uri.repo_id, quote(revision, false), quote(file, true))
}

/// `{endpoint}/api/{models|datasets}/{repo_id}/revision/{revision}`.
pub fn revision_url(endpoint: &str, uri: &HubUri) -> String {
    format!("{endpoint}/api/{}/{}/revision/{}", uri.repo_type.plural(), uri.repo_id, quote(&uri.revision, false))
}

fn header<'a>(r: &'a Response<Body>, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty())
}

/// `W/"abc"` or `"abc"` -> `abc`, as `huggingface_hub` names blobs.
fn normalize_etag(etag: &str) -> String {
    etag.trim().trim_start_matches("W/").trim_matches('"').to_string()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

/// The Hub's client for one run.
pub struct Client<'a> {
    env: &'a HubEnv,
    /// Follows no redirect: a file's metadata is on the Hub's own response.
    head: ureq::Agent,
    /// Follows redirects (to the CDN), without the token.
    get: ureq::Agent,
}

impl<'a> Client<'a> {
    pub fn new(env: &'a HubEnv) -> Client<'a> {
        let agent = |redirects: u32| {
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                .timeout_connect(Some(Duration::from_secs(10)))
                .timeout_recv_response(Some(Duration::from_secs(30)))
                .timeout_recv_body(None)
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("runner/", env!("CARGO_PKG_VERSION")))
                .build();
            ureq::Agent::new_with_config(config)
        };
        Client { env, head: agent(0), get: agent(10) }
    }

    fn call(&self, agent: &ureq::Agent, method: &str, url: &str, range_from: u64) -> Result<Response<Body>> {
        let mut req = match method {
            "HEAD" => agent.head(url),
            _ => agent.get(url),
        };
        req = req.header("accept-encoding", "identity");
        // The token goes to the Hub's own host only, never to a CDN it redirects to.
        if let Some(t) = self.env.token.as_ref().filter(|_| origin(url) == origin(&self.env.endpoint)) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if range_from > 0 {
            req = req.header("range", format!("bytes={range_from}-"));
        }
        match req.call() {
            Ok(r) if r.status().is_server_error() => {
                Err(Unreachable(format!("the Hub at {} answered HTTP {} to {method} {url}", self.env.endpoint, r.status().as_u16())).into())
            }
            Ok(r) => Ok(r),
            Err(ureq::Error::BadUri(e)) => Err(user_msg(format!("HF_ENDPOINT: bad URL {url}: {e}"))),
            Err(e) => Err(Unreachable(format!("cannot reach the Hub at {} ({method} {url}): {e}", self.env.endpoint)).into()),
        }
    }

    /// Turns a 4xx answer into a message that names the repository (and file).
    fn refused(&self, uri: &HubUri, file: Option<&str>, r: &Response<Body>) -> anyhow::Error {
        let code = r.status().as_u16();
        let label = uri.repo_label();
        let rev = &uri.revision;
        match (code, header(r, "x-error-code")) {
            (401 | 403, _) => user_msg(format!(
                "{label}: access denied (HTTP {code}); the repository is private or gated: {}",
                if self.env.token.is_some() { "the token in HF_TOKEN may not read it" } else { "set HF_TOKEN to a token that may read it" }
            )),
            (404, Some("RepoNotFound")) => {
                user_msg(format!("{label} not found on {} (check its name; a private repository needs HF_TOKEN)", self.env.endpoint))
            }
            (404, Some("RevisionNotFound")) => user_msg(format!("{label} has no revision `{rev}`")),
            (404, _) => match file {
                Some(f) => user_msg(format!("{label} has no file `{f}` at revision `{rev}` (HTTP 404)")),
                None => user_msg(format!("{label} at revision `{rev}` not found on {} (HTTP 404)", self.env.endpoint)),
            },
            _ => anyhow!("{label}: HTTP {code} from the Hub{}", file.map(|f| format!(" for `{f}`")).unwrap_or_default()),
        }
    }

    /// The commit a revision points at, and the repository's files.
    pub fn repo_info(&self, uri: &HubUri) -> Result<RepoInfo> {
        let url = revision_url(&self.env.endpoint, uri);
        let mut r = self.call(&self.get, "GET", &url, 0)?;
        if !r.status().is_success() {
            return Err(self.refused(uri, None, &r));
        }
        let text = r.body_mut().with_config().limit(256 << 20).read_to_string().map_err(|e| Unreachable(format!("reading {url}: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{url}: not JSON"))?;
        let sha = json["sha"].as_str().ok_or_else(|| anyhow!("{url}: the answer has no `sha`"))?.to_string();
        let files = json["siblings"]
            .as_array()
            .ok_or_else(|| anyhow!("{url}: the answer has no `siblings`"))?
            .iter()
            .filter_map(|s| s["rfilename"].as_str().map(str::to_string))
            .collect();
        Ok(RepoInfo { sha, files })
    }

    /// `HEAD` on the resolve URL; follows redirects that stay on the Hub's
    /// origin (renamed repositories), not those to a CDN.
    fn file_meta(&self, uri: &HubUri, commit: &str, file: &str) -> Result<FileMeta> {
        let mut url = resolve_url(&self.env.endpoint, uri, commit, file);
        for _ in 0..5 {
            let r = self.call(&self.head, "HEAD", &url, 0)?;
            let status = r.status();
            let location = header(&r, "location").map(|l| if l.starts_with('/') { format!("{}{l}", origin(&url)) } else { l.to_string() });
            if status.is_redirection() {
                if let Some(target) = location.as_deref().filter(|t| origin(t) == origin(&url)) {
                    url = target.to_string();
                    continue;
                }
            } else if !status.is_success() {
                return Err(self.refused(uri, Some(file), &r));
            }
            let etag = header(&r, "x-linked-etag")
                .or_else(|| header(&r, "etag"))
                .map(normalize_etag)
                .ok_or_else(|| anyhow!("{}: the Hub sent no ETag for `{file}`", uri.repo_label()))?;
            if etag.is_empty() || etag.contains(['/', '\\']) || etag.starts_with('.') {
                return Err(anyhow!("{}: the Hub sent an unusable ETag `{etag}` for `{file}`", uri.repo_label()));
            }
            let size = header(&r, "x-linked-size")
                .or_else(|| if status.is_redirection() { None } else { header(&r, "content-length") })
                .and_then(|s| s.parse().ok());
            let location = if status.is_redirection() { location.unwrap_or(url) } else { url };
            return Ok(FileMeta { etag, size, location });
        }
        Err(anyhow!("{}: too many redirects for `{file}`", uri.repo_label()))
    }

    /// Downloads `file` of `commit` into the cache (unless its blob is there)
    /// and returns its snapshot path.
    pub fn download(&self, cache: &RepoCache, uri: &HubUri, commit: &str, file: &str) -> Result<PathBuf> {
        let meta = self.file_meta(uri, commit, file)?;
        let blob = cache.blob(&meta.etag);
        if !blob.is_file() {
            let dir = cache.dir.join("blobs");
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            self.fetch_blob(uri, file, &meta, &blob)?;
        }
        cache.link(commit, file, &meta.etag).with_context(|| format!("cannot link {file} into {}", cache.snapshot(commit).display()))
    }

    fn fetch_blob(&self, uri: &HubUri, file: &str, meta: &FileMeta, blob: &Path) -> Result<()> {
        let part = blob.with_file_name(format!("{}.incomplete", meta.etag));
        let mut have = part.metadata().map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|s| have > s) {
            have = 0;
        }
        if have == 0 || meta.size != Some(have) {
            if have > 0 {
                tracing::info!("resuming {file} of {} at byte {have}", uri.repo_label());
            }
            let mut r = self.call(&self.get, "GET", &meta.location, have)?;
            let status = r.status().as_u16();
            let append = match status {
                206 if have > 0 => true,
                200 => false,
                416 => {
                    // The partial file is no prefix of this one: start again.
                    let _ = std::fs::remove_file(&part);
                    have = 0;
                    r = self.call(&self.get, "GET", &meta.location, 0)?;
                    if r.status().as_u16() != 200 {
                        return Err(self.refused(uri, Some(file), &r));
                    }
                    false
                }
                _ => return Err(self.refused(uri, Some(file), &r)),
            };
            if !append {
                have = 0;
            }
            let mut out = OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&part)
                .with_context(|| format!("cannot write {}", part.display()))?;
            let bar = progress(file, meta.size, have);
            let mut body = r.body_mut().as_reader();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buf).map_err(|e| {
                    Unreachable(format!("download of `{file}` from {} broke off: {e} (run again to resume it)", uri.repo_label()))
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).with_context(|| format!("cannot write {}", part.display()))?;
                bar.inc(n as u64);
            }
            out.flush()?;
            bar.finish_and_clear();
        }
        verify(uri, file, meta, &part)?;
        std::fs::rename(&part, blob).with_context(|| format!("cannot move {} to {}", part.display(), blob.display()))
    }
}

fn progress(file: &str, size: Option<u64>, done: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("downloading {file}"));
    bar.set_position(done);
    bar
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Size and (for LFS files, whose ETag is their sha256) checksum; a bad file is deleted.
fn verify(uri: &HubUri, file: &str, meta: &FileMeta, part: &Path) -> Result<()> {
    let len = part.metadata().map(|m| m.len()).unwrap_or(0);
    if let Some(size) = meta.size.filter(|&s| s != len) {
        if len < size {
            return Err(Unreachable(format!(
                "download of `{file}` from {} stopped at {len} of {size} bytes (run again to resume it)",
                uri.repo_label()
            ))
            .into());
        }
        let _ = std::fs::remove_file(part);
        return Err(anyhow!(
            "`{file}` from {}: the download has {len} bytes but the Hub said {size}; the bad file was deleted, nothing was cached",
            uri.repo_label()
        ));
    }
    if is_sha256(&meta.etag) {
        let got = sha256_file(part).with_context(|| format!("cannot read {}", part.display()))?;
        if !got.eq_ignore_ascii_case(&meta.etag) {
            let _ = std::fs::remove_file(part);
            return Err(anyhow!(
                "checksum mismatch for `{file}` from {}: the Hub says sha256 {}, the download has {got}; \
                 the bad file was deleted, nothing was cached (run again to retry)",
                uri.repo_label(),
                meta.etag
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_hub_layout() {
        let m = HubUri::parse("hf://google-bert/bert-base-uncased").unwrap();
        let commit = "86b5e0934494bd15c9632b12f734a8a67f723594";
        assert_eq!(
            resolve_url("https://huggingface.co", &m, commit, "model.safetensors"),
            format!("https://huggingface.co/google-bert/bert-base-uncased/resolve/{commit}/model.safetensors")
        );
        assert_eq!(revision_url("http://h", &m), "http://h/api/models/google-bert/bert-base-uncased/revision/main");
        let d = HubUri::parse("hf://datasets/Salesforce/wikitext@v 1/x").unwrap_err();
        assert!(d.contains("revision"));
        let d = HubUri::parse("hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/train").unwrap();
        assert_eq!(
            resolve_url("http://h", &d, "main", "wikitext-2-raw-v1/train-00000-of-00001.parquet"),
            "http://h/datasets/Salesforce/wikitext/resolve/main/wikitext-2-raw-v1/train-00000-of-00001.parquet"
        );
        assert_eq!(revision_url("http://h", &d), "http://h/api/datasets/Salesforce/wikitext/revision/main");
        assert_eq!(quote("a b/c%", true), "a%20b/c%25");
    }

    #[test]
    fn etags_and_origins() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(origin("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert!(is_sha256(&"a".repeat(64)) && !is_sha256(&"a".repeat(40)));
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_file(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
