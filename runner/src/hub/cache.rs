//! The Hugging Face cache layout, shared with `huggingface_hub`:
//!
//! ```text
//! <cache>/models--org--name/
//!     refs/main                      the commit hash `main` last resolved to
//!     blobs/<etag>                   file contents, named by ETag (sha256 for LFS files)
//!     blobs/<etag>.incomplete        a download in progress (resumed with HTTP Range)
//!     snapshots/<commit>/<file>      relative symlink to ../../blobs/<etag>
//! <cache>/datasets--org--name/...    the same for datasets
//! ```

use std::io;
use std::path::{Path, PathBuf};

use super::uri::HubUri;

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub dir: PathBuf,
}

/// A full commit hash: 40 lowercase hex digits.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl RepoCache {
    pub fn new(cache: &Path, uri: &HubUri) -> RepoCache {
        let name = format!("{}--{}", uri.repo_type.plural(), uri.repo_id.replace('/', "--"));
        RepoCache { dir: cache.join(name) }
    }

    /// The commit a revision names, as far as the cache knows.
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    /// Records that `revision` resolved to `commit` (written atomically).
    pub fn write_ref(&self, revision: &str, commit: &str) -> anyhow::Result<()> {
        if revision == commit {
            return Ok(());
        }
        let path = self.dir.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|c| c == commit) {
            return Ok(());
        }
        std::fs::create_dir_all(self.dir.join("refs"))?;
        runner_recipe::fs::atomic_write_bytes(&path, commit.as_bytes())
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.dir.join("snapshots").join(commit)
    }

    /// Where a file of a commit is found (`file` uses `/` separators).
    pub fn pointer(&self, commit: &str, file: &str) -> PathBuf {
        file.split('/').fold(self.snapshot(commit), |p, part| p.join(part))
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.dir.join("blobs").join(etag)
    }

    /// Points `snapshots/<commit>/<file>` at `blobs/<etag>` with a relative
    /// symlink, as `huggingface_hub` does (a copy where symlinks fail).
    pub fn link(&self, commit: &str, file: &str, etag: &str) -> io::Result<PathBuf> {
        let pointer = self.pointer(commit, file);
        if let Some(parent) = pointer.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&pointer);
        let up = "../".repeat(2 + file.matches('/').count());
        let target = PathBuf::from(format!("{up}blobs/{etag}"));
        #[cfg(unix)]
        let linked = std::os::unix::fs::symlink(&target, &pointer);
        #[cfg(not(unix))]
        let linked: io::Result<()> = Err(io::Error::other("no symlinks"));
        if linked.is_err() {
            std::fs::copy(self.blob(etag), &pointer)?;
        }
        Ok(pointer)
    }

    /// Every file of a cached snapshot, relative, with `/` separators, sorted.
    pub fn snapshot_files(&self, commit: &str) -> Vec<String> {
        let root = self.snapshot(commit);
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.is_file() {
                    if let Ok(rel) = p.strip_prefix(&root) {
                        let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
                        out.push(parts.join("/"));
                    }
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let tmp = tempfile::tempdir().unwrap();
        let uri = HubUri::parse("hf://datasets/Salesforce/wikitext/wikitext-2-raw-v1/train").unwrap();
        let c = RepoCache::new(tmp.path(), &uri);
        assert!(c.dir.ends_with("datasets--Salesforce--wikitext"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(c.commit_for("main"), None);
        c.write_ref("main", commit).unwrap();
        assert_eq!(c.commit_for("main").as_deref(), Some(commit));
        assert_eq!(std::fs::read_to_string(c.dir.join("refs/main")).unwrap(), commit, "no newline, as huggingface_hub writes it");
        assert_eq!(c.commit_for(commit).as_deref(), Some(commit));

        std::fs::create_dir_all(c.dir.join("blobs")).unwrap();
        std::fs::write(c.blob("e1"), b"data").unwrap();
        let p = c.link(commit, "wikitext-2-raw-v1/train-00000-of-00001.parquet", "e1").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        #[cfg(unix)]
        assert_eq!(std::fs::read_link(&p).unwrap(), PathBuf::from("../../../blobs/e1"));
        assert_eq!(c.snapshot_files(commit), vec!["wikitext-2-raw-v1/train-00000-of-00001.parquet".to_string()]);
    }
}
