//! The token cache: tokenized, packed train and eval examples on disk,
//! memory-mapped on the next run, so a run with the same data and tokenizer
//! starts training without reading or tokenizing the corpus again.
//!
//! The key hashes everything the examples depend on: the dataset component
//! and its options, every corpus file's path, size and modification time, the
//! holdout split and its seed, the tokenizer file's bytes, the example mode
//! and length. Files live in `$RUNNER_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/runner/tokens`, else `~/.cache/runner/tokens`, and are
//! written to a temporary name and renamed, so readers never see half a file.
//!
//! Format (little-endian): magic `RUNTOK01`, then four u64 counts (train
//! tokens, train offsets, eval tokens, eval offsets), then the u32 token
//! arrays and the u64 offset arrays, each padded to 8 bytes.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::examples::{Examples, Tokens};
use crate::hub::Sources;
use crate::recipe::{EvalSource, Recipe};

const MAGIC: &[u8; 8] = b"RUNTOK01";

/// The cache folder.
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("RUNNER_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("runner/tokens"))
}

/// Hashes path, size and mtime of every file under `path`, in sorted order.
fn hash_files(path: &Path, h: &mut impl Hasher) -> Result<()> {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("cannot list {}", p.display()))? {
                stack.push(e?.path());
            }
        } else {
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
            files.push((p, meta.len(), mtime.map(|d| d.as_nanos())));
        }
    }
    files.sort();
    files.hash(h);
    Ok(())
}

/// The cache key of a recipe's examples.
pub fn key(recipe: &Recipe, sources: &Sources) -> Result<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "runner-token-cache-v1".hash(&mut h);
    recipe.dataset.hash(&mut h);
    serde_yaml::to_string(&recipe.dataset_options)?.hash(&mut h);
    for p in &sources.train {
        hash_files(p, &mut h)?;
    }
    match (&sources.eval, &recipe.eval_source) {
        (Some(eval), _) => {
            for p in eval {
                hash_files(p, &mut h)?;
            }
        }
        (None, EvalSource::Holdout(f)) => (f.to_bits(), recipe.raw.eval.seed).hash(&mut h),
        (None, EvalSource::Path(_)) => unreachable!("sources have eval files exactly when data.eval is given"),
    }
    std::fs::read(&sources.tokenizer).with_context(|| format!("cannot read {}", sources.tokenizer.display()))?.hash(&mut h);
    (format!("{:?}", recipe.examples), recipe.max_seq_len, recipe.raw.data.max_train_documents).hash(&mut h);
    Ok(format!("{:016x}", h.finish()))
}

fn pad8(w: &mut impl Write, written: usize) -> Result<usize> {
    let pad = (8 - written % 8) % 8;
    w.write_all(&[0u8; 8][..pad])?;
    Ok(written + pad)
}

/// Writes train and eval examples under `key`.
pub fn store(dir: &Path, key: &str, train: &Examples, eval: &Examples) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(format!("{key}.tok"));
    let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?);
    w.write_all(MAGIC)?;
    for n in [train.tokens.len(), train.offsets.len(), eval.tokens.len(), eval.offsets.len()] {
        w.write_all(&(n as u64).to_le_bytes())?;
    }
    let mut written = 8 + 32;
    for ex in [train, eval] {
        for t in ex.tokens.iter() {
            w.write_all(&t.to_le_bytes())?;
        }
        written = pad8(&mut w, written + 4 * ex.tokens.len())?;
        for &o in &ex.offsets {
            w.write_all(&(o as u64).to_le_bytes())?;
        }
        written += 8 * ex.offsets.len();
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Maps the examples stored under `key`, if present and well-formed.
pub fn load(dir: &Path, key: &str) -> Result<Option<(Examples, Examples)>> {
    let path = dir.join(format!("{key}.tok"));
    let Ok(file) = std::fs::File::open(&path) else { return Ok(None) };
    // SAFETY: cache files are only ever replaced by rename, never written in place.
    let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?);
    if map.len() < 40 || &map[..8] != MAGIC {
        bail!("{}: not a token cache file (delete it)", path.display());
    }
    let count = |i: usize| u64::from_le_bytes(map[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes")) as usize;
    let counts = [count(0), count(1), count(2), count(3)];
    let mut at = 40;
    let mut parts = Vec::new();
    for (n_tokens, n_offsets) in [(counts[0], counts[1]), (counts[2], counts[3])] {
        let tokens_at = at;
        at += 4 * n_tokens;
        at += (8 - at % 8) % 8;
        let end = at + 8 * n_offsets;
        if end > map.len() {
            bail!("{}: truncated token cache file (delete it)", path.display());
        }
        let offsets: Vec<usize> =
            map[at..end].chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize).collect();
        if offsets.last().is_some_and(|&o| o != n_tokens) {
            bail!("{}: inconsistent token cache file (delete it)", path.display());
        }
        at = end;
        parts.push(Examples { tokens: Tokens::Mapped { map: map.clone(), start: tokens_at, len: n_tokens }, offsets });
    }
    let eval = parts.pop().expect("two parts");
    let train = parts.pop().expect("two parts");
    Ok(Some((train, eval)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples(seqs: &[&[u32]]) -> Examples {
        let mut tokens = Vec::new();
        let mut offsets = vec![0];
        for s in seqs {
            tokens.extend_from_slice(s);
            offsets.push(tokens.len());
        }
        Examples { tokens: Tokens::Owned(tokens), offsets }
    }

    #[test]
    fn stored_examples_map_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let train = examples(&[&[2, 10, 11, 3], &[2, 12, 3]]);
        let eval = examples(&[&[2, 7, 3]]);
        assert!(load(dir.path(), "k").unwrap().is_none());
        store(dir.path(), "k", &train, &eval).unwrap();
        let (t, e) = load(dir.path(), "k").unwrap().unwrap();
        assert!(matches!(t.tokens, Tokens::Mapped { .. }));
        assert_eq!((t.len(), e.len()), (2, 1));
        assert_eq!((t.get(0), t.get(1), e.get(0)), (&[2u32, 10, 11, 3][..], &[2u32, 12, 3][..], &[2u32, 7, 3][..]));
        std::fs::write(dir.path().join("bad.tok"), b"garbage").unwrap();
        assert!(load(dir.path(), "bad").is_err());
    }
}
