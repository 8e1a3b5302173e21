//! The token cache: where token stores live, what they are keyed by, and how
//! one is built exactly once. A run with the same data and tokenizer maps the
//! store and starts training without reading or tokenizing the corpus again.
//!
//! The key is a SHA-256 of everything the store depends on: the dataset
//! component and its options, every corpus file's path, size and modification
//! time, the holdout split and its seed (or the eval files), the tokenizer
//! file's bytes and `max_train_documents`. Not the example mode or length:
//! examples are views over the store, so one store serves them all. Stores
//! live in `$RUNNER_CACHE_DIR`, else `$XDG_CACHE_HOME/runner/tokens`, else
//! `~/.cache/runner/tokens`, one directory per key.
//!
//! A store is built under `<key>.tmp-<pid>/` and renamed to `<key>/` once its
//! manifest is written, so a half-written store is never used; one that does
//! not match its manifest is reported, removed and rebuilt. Processes that need
//! the same store take `<key>.lock` (an exclusive file lock) before building:
//! the first builds, the others wait, then map what it built; the lock file is
//! removed by whoever holds it last, built or failed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::prepare::{self, EvalInput, Input};
use super::store::{Manifest, Store, Width};
use crate::recipe::{EvalSource, Recipe, Sources};
use crate::registry::Registry;

/// Part of every key: a new store format or split rule changes every key.
const KEY_VERSION: &str = "runner-token-store-v1";

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

/// A SHA-256 over length-prefixed fields, so no two field lists hash alike.
struct KeyHasher(Sha256);

impl KeyHasher {
    fn field(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// Path, size and mtime (ns) of every file under `path`, in sorted order.
    fn files(&mut self, path: &Path) -> Result<()> {
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
                files.push((p, meta.len(), mtime.map_or(0, |d| d.as_nanos())));
            }
        }
        files.sort();
        self.field((files.len() as u64).to_le_bytes());
        for (p, len, mtime) in files {
            self.field(p.as_os_str().as_encoded_bytes());
            self.field(len.to_le_bytes());
            self.field(mtime.to_le_bytes());
        }
        Ok(())
    }
}

/// The cache key of a recipe's token store: 32 hex digits of a SHA-256.
pub fn key(recipe: &Recipe, sources: &Sources) -> Result<String> {
    let mut h = KeyHasher(Sha256::new());
    h.field(KEY_VERSION);
    h.field(&recipe.dataset);
    h.field(serde_yaml::to_string(&recipe.dataset_options)?);
    h.field((sources.train.len() as u64).to_le_bytes());
    for p in &sources.train {
        h.files(p)?;
    }
    match (&sources.eval, &recipe.eval_source) {
        (Some(eval), _) => {
            h.field("eval files");
            for p in eval {
                h.files(p)?;
            }
        }
        (None, EvalSource::Holdout(f)) => {
            h.field("holdout");
            h.field(f.to_bits().to_le_bytes());
            h.field(recipe.raw.eval.seed.to_le_bytes());
        }
        (None, EvalSource::Path(_)) => unreachable!("sources have eval files exactly when data.eval is given"),
    }
    h.field(std::fs::read(&sources.tokenizer).with_context(|| format!("cannot read {}", sources.tokenizer.display()))?);
    h.field(recipe.raw.data.max_train_documents.map_or(0u64, |n| n as u64 + 1).to_le_bytes());
    let digest = h.0.finalize();
    Ok(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// The recipe's token store: mapped from the cache when it holds it, else
/// built there (or, with `data.cache: false` or no cache folder, built in a
/// temporary folder that is gone once the run ends).
pub fn store(recipe: &Recipe, sources: &Sources, registry: &Registry, tok: &Tokenizer, vocab_size: usize) -> Result<Store> {
    let root = if recipe.raw.data.cache { dir() } else { None };
    let key = key(recipe, sources)?;
    let build = |dir: &Path| -> Result<()> {
        let t0 = Instant::now();
        let dataset = crate::components::dataset(registry, &recipe.dataset, &recipe.dataset_options)?;
        let eval = match &sources.eval {
            Some(paths) => EvalInput::Paths(paths),
            None => EvalInput::Holdout { fraction: recipe.raw.data.holdout, seed: recipe.raw.eval.seed },
        };
        let input = Input { dataset: dataset.as_ref(), train: &sources.train, eval, max_train_documents: recipe.raw.data.max_train_documents };
        let width = Width::for_vocab(vocab_size);
        let built = prepare::build(dir, &input, tok, width)?;
        let mut described: Vec<String> = sources.train.iter().map(|p| p.display().to_string()).collect();
        described.extend(sources.eval.iter().flatten().map(|p| format!("eval: {}", p.display())));
        let manifest = Manifest::new(&key, described, width, vocab_size, built.train, built.eval, built.text_bytes);
        manifest.write(dir)?;
        let secs = t0.elapsed().as_secs_f64();
        tracing::info!(
            "data: read and tokenized {:.1} MB of text into {} train documents ({} tokens) and {} eval documents in {secs:.1}s ({:.1} MB/s)",
            built.text_bytes as f64 / 1e6,
            built.train.documents,
            built.train.tokens,
            built.eval.documents,
            built.text_bytes as f64 / 1e6 / secs.max(1e-9)
        );
        Ok(())
    };
    match root {
        Some(root) => open_or_build(&root, &key, vocab_size, build),
        None => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let tmp = std::env::temp_dir().join(format!("runner-tokens-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            let store = build(&tmp).and_then(|()| Store::open(&tmp, vocab_size));
            // Mapped files stay readable after the folder is removed.
            let _ = std::fs::remove_dir_all(&tmp);
            store
        }
    }
}

/// Maps the store `root/key`, building it with `build` first when it is
/// missing or broken; concurrent callers build it once (see the module docs).
pub fn open_or_build(root: &Path, key: &str, vocab_size: usize, build: impl FnOnce(&Path) -> Result<()>) -> Result<Store> {
    let path = root.join(key);
    if let Some(store) = open_existing(&path, vocab_size) {
        return Ok(store);
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let lock_path = root.join(format!("{key}.lock"));
    let _lock = StoreLock::take(&lock_path, &path)?;
    // Whoever held the lock may have built it.
    if let Some(store) = open_existing(&path, vocab_size) {
        return Ok(store);
    }
    // Holding the lock, nothing else writes under this key: clear what a
    // killed builder or a broken store left behind.
    remove_leftovers(root, key)?;
    let tmp = root.join(format!("{key}.tmp-{}", std::process::id()));
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = build(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    let store = Store::open(&path, vocab_size)?;
    tracing::info!("data: token store {} ({:.1} MB)", path.display(), store.manifest.size() as f64 / 1e6);
    Ok(store)
}

/// `<key>.lock`, held: removed (while still held) when dropped, so no lock
/// file outlives its builder, built or failed. A waiter that then gets the
/// lock of a file no longer at the path takes the lock again, so two
/// processes never hold `<key>.lock` at once.
struct StoreLock {
    file: File,
    path: PathBuf,
}

impl StoreLock {
    fn take(lock_path: &Path, store: &Path) -> Result<StoreLock> {
        use std::os::unix::fs::MetadataExt;
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_path)
                .with_context(|| format!("cannot open {}", lock_path.display()))?;
            if file.try_lock().is_err() {
                tracing::info!("data: another process is building {}; waiting for it", store.display());
                file.lock().with_context(|| format!("cannot lock {}", lock_path.display()))?;
            }
            let held = file.metadata().with_context(|| format!("cannot read {}", lock_path.display()))?;
            match std::fs::metadata(lock_path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(StoreLock { file, path: lock_path.to_path_buf() })
                }
                _ => continue, // removed by its last holder: lock the file now there
            }
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.sync_all(); // the lock is released when the file closes, after the removal
    }
}

/// The store at `path` if it is there and whole; a broken one is reported.
fn open_existing(path: &Path, vocab_size: usize) -> Option<Store> {
    if !path.exists() {
        return None;
    }
    match Store::open(path, vocab_size) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!("token store {} is broken and will be rebuilt: {e:#}", path.display());
            None
        }
    }
}

/// Clears what a killed builder or a broken store of `key` left (the caller
/// holds its lock), and the temporary folders of any key whose builder is no
/// longer running (`<key>.tmp-<pid>` with no process `pid`), so a killed
/// `data prepare` does not leave its folder until that store is built again.
fn remove_leftovers(root: &Path, key: &str) -> Result<()> {
    let tmp_prefix = format!("{key}.tmp-");
    for entry in std::fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == key || name.starts_with(&tmp_prefix) {
            std::fs::remove_dir_all(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
        } else if let Some(pid) = name.rsplit_once(".tmp-").and_then(|(_, p)| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: kill with signal 0 only checks that the process exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone && entry.path().is_dir() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::store::{SplitWriter, MANIFEST};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Builds a two-document store; counts the builds.
    fn builder(builds: &AtomicUsize) -> impl FnOnce(&Path) -> Result<()> + '_ {
        move |dir: &Path| {
            builds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut counts = Vec::new();
            for name in ["train", "eval"] {
                let mut w = SplitWriter::create(dir, name, Width::U16)?;
                w.push_document(&[vec![1u32, 2, 3]])?;
                counts.push(w.finish()?);
            }
            Manifest::new("k", vec![], Width::U16, 100, counts[0], counts[1], 6).write(dir)
        }
    }

    /// The key of a fixed recipe and tokenizer, pinned: a key that changed (a new
    /// hash, a new field order, a Rust release's hasher) would orphan every
    /// store in every cache. The expected digest is SHA-256 over the same
    /// length-prefixed fields computed outside Rust:
    ///   python3 -c 'import hashlib,struct; h=hashlib.sha256()
    ///   f=lambda b: (h.update(struct.pack("<Q",len(b))), h.update(b))
    ///   [f(b) for b in [b"runner-token-store-v1", b"text", b"{}\n", struct.pack("<Q",0), b"holdout",
    ///    struct.pack("<d",0.2), struct.pack("<Q",0), b"[tokenizer bytes]", struct.pack("<Q",0)]]
    ///   print(h.hexdigest()[:32])'
    #[test]
    fn the_key_of_a_fixed_input_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = dir.path().join("tokenizer.json");
        std::fs::write(&tokenizer, "[tokenizer bytes]").unwrap();
        let text = "run: {name: a}\ndata: {train: none.txt, holdout: 0.2}\nmodel: {checkpoint: m}\n";
        let raw = crate::recipe::parse::parse(text, "r.yaml", &[]).unwrap();
        let recipe = Recipe {
            source: "r.yaml".into(),
            run_dir: "results/a".into(),
            device: tch::Device::Cpu,
            threads: 1,
            precision: raw.training.precision,
            precision_reason: String::new(),
            dataset: raw.data.dataset.clone(),
            dataset_options: raw.data.options.clone(),
            train_path: raw.data.train.clone(),
            eval_source: EvalSource::Holdout(raw.data.holdout),
            examples: raw.data.examples,
            max_seq_len: raw.data.max_seq_len,
            tokenizer: tokenizer.clone(),
            masking_rates: runner_api::MaskingRates { rate: 0.15, mask_token: 0.8, random_token: 0.1 },
            length: crate::recipe::TrainLength::Steps(1),
            warmup: crate::recipe::Warmup::Steps(0),
            raw,
        };
        let sources = Sources { checkpoint: None, tokenizer, train: vec![], eval: None };
        assert_eq!(key(&recipe, &sources).unwrap(), "4a5a932780c59726e23596a45d526bcb");
    }

    #[test]
    fn concurrent_callers_build_once_and_a_broken_store_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let builds = AtomicUsize::new(0);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4).map(|_| s.spawn(|| open_or_build(root.path(), "k", 100, builder(&builds)).unwrap())).collect();
            for h in handles {
                assert_eq!(h.join().unwrap().train.tokens(), 3);
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1, "one build for four callers");
        open_or_build(root.path(), "k", 100, builder(&builds)).unwrap();
        assert_eq!(builds.load(Ordering::SeqCst), 1, "mapped, not rebuilt");
        // Cut a file short: detected, rebuilt.
        std::fs::write(root.path().join("k/train.tokens"), [1u8, 0]).unwrap();
        let store = open_or_build(root.path(), "k", 100, builder(&builds)).unwrap();
        assert_eq!((builds.load(Ordering::SeqCst), store.train.tokens()), (2, 3));
        // A killed builder's folder of another key goes with the next build of any key.
        let dead = root.path().join("other.tmp-999999999");
        std::fs::create_dir(&dead).unwrap();
        std::fs::remove_dir_all(root.path().join("k")).unwrap();
        open_or_build(root.path(), "k", 100, builder(&builds)).unwrap();
        assert!(!dead.exists(), "the dead builder's folder is removed");
        // A build that fails leaves nothing behind; a half-written one is never used.
        std::fs::remove_file(root.path().join("k").join(MANIFEST)).unwrap();
        assert!(open_or_build(root.path(), "k", 100, |_| anyhow::bail!("disk full")).is_err());
        let left: Vec<String> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        assert!(left.is_empty(), "no lock file or temporary folder left: {left:?}");
    }
}
