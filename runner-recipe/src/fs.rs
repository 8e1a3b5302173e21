//! Files replaced whole: [`atomic_write`] writes a temporary file beside the
//! target, fsyncs it and renames it over the target, so a reader (or a run
//! killed half way) sees the old file or the new one, never a part. Every file
//! the runner replaces goes through here; folders built whole (checkpoints, the
//! token store) are built under a temporary name and renamed by their own code.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// The temporary name beside `path`: hidden, unique to this process and call,
/// and ending in `path`'s own extension (some writers choose the format by it).
fn temporary(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!(".{stem}.tmp-{}-{n}{ext}", std::process::id()))
}

/// Replaces `path` with what `write` writes into a new file (see the module docs).
pub fn atomic_write(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    atomic_write_with(path, |tmp| {
        let mut f = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write(&mut f)
    })
}

/// [`atomic_write`] of `bytes`.
pub fn atomic_write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |f| Ok(std::io::Write::write_all(f, bytes)?))
}

/// [`atomic_write`] for a writer that takes a path, not a file: `write` creates
/// the file at the path it is given (which ends in `path`'s extension).
pub fn atomic_write_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temporary(path);
    let done = write(&tmp)
        .with_context(|| format!("cannot write {}", path.display()))
        .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("cannot sync {}", tmp.display())))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("summary.json");
        atomic_write_bytes(&target, b"old").unwrap();
        atomic_write(&target, |f| Ok(std::io::Write::write_all(f, b"new")?)).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        // A writer that fails leaves the old file and no temporary one.
        let err = atomic_write(&target, |f| {
            std::io::Write::write_all(f, b"half")?;
            anyhow::bail!("disk full")
        })
        .unwrap_err();
        assert!(format!("{err:#}").starts_with(&format!("cannot write {}: disk full", target.display())), "{err:#}");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["summary.json"]);
    }

    #[test]
    fn a_path_writer_gets_a_hidden_name_with_the_same_extension() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("report.png");
        let mut seen = PathBuf::new();
        atomic_write_with(&target, |tmp| {
            seen = tmp.to_path_buf();
            Ok(std::fs::write(tmp, b"png")?)
        })
        .unwrap();
        assert_eq!(seen.parent(), Some(dir.path()));
        let name = seen.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".report.tmp-") && name.ends_with(".png"), "{name}");
        assert_eq!(names(dir.path()), ["report.png"]);
        // A missing folder is an error naming the file.
        let err = atomic_write_bytes(&dir.path().join("no/such.csv"), b"x").unwrap_err();
        assert!(format!("{err:#}").contains("no/.such.tmp-"), "{err:#}");
    }
}
