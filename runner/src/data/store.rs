//! The token store on disk: a corpus tokenized once into flat files that every
//! run memory-maps. A store is one directory holding, for each split (`train`,
//! `eval`):
//!
//! - `<split>.tokens`: the token ids of every non-empty line, in corpus order,
//!   little-endian u16 when the vocabulary fits (at most 65536 ids), else u32;
//! - `<split>.lines`: u64 offsets into the tokens where each line starts,
//!   then the end (lines + 1 values);
//! - `<split>.docs`: u64 offsets into the lines where each document starts,
//!   then the end (documents + 1 values);
//!
//! and `manifest.json` (format, token width, counts, every file's size),
//! written last. A store whose files do not match its manifest is refused.
//! Packed blocks and line-by-line examples are views over a split
//! (`examples.rs`); nothing is copied out of the store to build them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Names the format in each manifest; a store of another format is rebuilt.
pub const FORMAT: &str = "runner-token-store-1";
pub const MANIFEST: &str = "manifest.json";
pub const SPLITS: [&str; 2] = ["train", "eval"];

/// Bytes per stored token id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Width {
    U16,
    U32,
}

impl Width {
    /// The narrowest width that holds every id of a vocabulary.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            Width::U16
        } else {
            Width::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }
}

/// How much one split holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub documents: u64,
    /// Non-empty (tokenized) lines.
    pub lines: u64,
    pub tokens: u64,
}

impl SplitCounts {
    /// The size each of the split's files must have.
    fn file_sizes(&self, split: &str, width: Width) -> [(String, u64); 3] {
        [
            (format!("{split}.tokens"), self.tokens * width.bytes() as u64),
            (format!("{split}.lines"), (self.lines + 1) * 8),
            (format!("{split}.docs"), (self.documents + 1) * 8),
        ]
    }
}

/// `manifest.json`: what the store holds and how big each file is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub width: Width,
    /// The cache key the store was built for (see `cache.rs`).
    pub key: String,
    /// What was read, for `runner data stats`.
    pub sources: Vec<String>,
    pub train: SplitCounts,
    pub eval: SplitCounts,
    /// UTF-8 bytes of the documents' lines (what was tokenized).
    pub text_bytes: u64,
    pub files: BTreeMap<String, u64>,
}

impl Manifest {
    pub fn new(key: &str, sources: Vec<String>, width: Width, train: SplitCounts, eval: SplitCounts, text_bytes: u64) -> Self {
        let files = train.file_sizes("train", width).into_iter().chain(eval.file_sizes("eval", width)).collect();
        Manifest { format: FORMAT.into(), width, key: key.into(), sources, train, eval, text_bytes, files }
    }

    /// Bytes on disk, manifest excluded.
    pub fn size(&self) -> u64 {
        self.files.values().sum()
    }

    /// Writes `manifest.json` (to a temporary name, then renamed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        runner_recipe::fs::atomic_write_bytes(&dir.join(MANIFEST), &serde_json::to_vec_pretty(self)?)
    }
}

/// Appends documents to one split's three files.
pub struct SplitWriter {
    tokens: BufWriter<File>,
    lines: BufWriter<File>,
    docs: BufWriter<File>,
    width: Width,
    counts: SplitCounts,
}

fn create(path: PathBuf) -> Result<BufWriter<File>> {
    let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

impl SplitWriter {
    /// Creates `<name>.tokens/.lines/.docs` in `dir`.
    pub fn create(dir: &Path, name: &str, width: Width) -> Result<Self> {
        let mut w = SplitWriter {
            tokens: create(dir.join(format!("{name}.tokens")))?,
            lines: create(dir.join(format!("{name}.lines")))?,
            docs: create(dir.join(format!("{name}.docs")))?,
            width,
            counts: SplitCounts::default(),
        };
        w.lines.write_all(&0u64.to_le_bytes())?;
        w.docs.write_all(&0u64.to_le_bytes())?;
        Ok(w)
    }

    pub fn counts(&self) -> SplitCounts {
        self.counts
    }

    /// Appends one document, given as its lines' token ids; empty lines are
    /// dropped (they add nothing to a packed block and make no line example),
    /// but a document with none still counts (a packed `[SEP]` follows it).
    pub fn push_document<L: AsRef<[u32]>>(&mut self, lines: &[L]) -> Result<()> {
        for line in lines.iter().map(AsRef::as_ref).filter(|l| !l.is_empty()) {
            match self.width {
                Width::U16 => {
                    for &t in line {
                        let t = u16::try_from(t).map_err(|_| anyhow::anyhow!("token id {t} does not fit the store's u16 ids"))?;
                        self.tokens.write_all(&t.to_le_bytes())?;
                    }
                }
                Width::U32 => line.iter().try_for_each(|t| self.tokens.write_all(&t.to_le_bytes()))?,
            }
            self.counts.tokens += line.len() as u64;
            self.counts.lines += 1;
            self.lines.write_all(&self.counts.tokens.to_le_bytes())?;
        }
        self.counts.documents += 1;
        self.docs.write_all(&self.counts.lines.to_le_bytes())?;
        Ok(())
    }

    /// Flushes and syncs the files; returns what they hold.
    pub fn finish(self) -> Result<SplitCounts> {
        for w in [self.tokens, self.lines, self.docs] {
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        Ok(self.counts)
    }
}

/// Reads a split back one document at a time with buffered reads (not a
/// map), so copying a large split does not hold it in memory.
pub struct SplitReader {
    tokens: BufReader<File>,
    lines: BufReader<File>,
    docs: BufReader<File>,
    width: Width,
    line_at: u64,
    token_at: u64,
}

fn read_u64(r: &mut impl Read) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn open(path: PathBuf) -> Result<BufReader<File>> {
    let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, f))
}

impl SplitReader {
    pub fn open(dir: &Path, name: &str, width: Width) -> Result<Self> {
        let mut r = SplitReader {
            tokens: open(dir.join(format!("{name}.tokens")))?,
            lines: open(dir.join(format!("{name}.lines")))?,
            docs: open(dir.join(format!("{name}.docs")))?,
            width,
            line_at: 0,
            token_at: 0,
        };
        ensure!(read_u64(&mut r.lines)? == 0 && read_u64(&mut r.docs)? == 0, "{name}: offsets do not start at 0");
        Ok(r)
    }

    /// The next document's lines (call it as many times as documents were written).
    pub fn next_document(&mut self) -> Result<Vec<Vec<u32>>> {
        let line_end = read_u64(&mut self.docs)?;
        let mut lines = Vec::with_capacity((line_end - self.line_at) as usize);
        let mut bytes = Vec::new();
        while self.line_at < line_end {
            let token_end = read_u64(&mut self.lines)?;
            bytes.resize((token_end - self.token_at) as usize * self.width.bytes(), 0);
            self.tokens.read_exact(&mut bytes)?;
            lines.push(decode(&bytes, self.width));
            (self.line_at, self.token_at) = (self.line_at + 1, token_end);
        }
        Ok(lines)
    }
}

fn decode(bytes: &[u8], width: Width) -> Vec<u32> {
    match width {
        Width::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect(),
        Width::U32 => bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
    }
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: store files are written under a temporary directory name and
    // never modified once the directory is renamed into place.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
}

/// One split, memory-mapped.
pub struct Split {
    tokens: memmap2::Mmap,
    lines: memmap2::Mmap,
    docs: memmap2::Mmap,
    width: Width,
    pub counts: SplitCounts,
}

fn u64_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))
}

impl Split {
    fn open(dir: &Path, name: &str, width: Width, counts: SplitCounts) -> Result<Self> {
        let split = Split {
            tokens: map(&dir.join(format!("{name}.tokens")))?,
            lines: map(&dir.join(format!("{name}.lines")))?,
            docs: map(&dir.join(format!("{name}.docs")))?,
            width,
            counts,
        };
        let ends = (split.line_start(counts.lines as usize), split.doc_start(counts.documents as usize));
        if ends != (counts.tokens, counts.lines) {
            bail!("{name}: offsets end at {ends:?}, the manifest says ({}, {})", counts.tokens, counts.lines);
        }
        Ok(split)
    }

    pub fn documents(&self) -> usize {
        self.counts.documents as usize
    }

    pub fn lines(&self) -> usize {
        self.counts.lines as usize
    }

    pub fn tokens(&self) -> usize {
        self.counts.tokens as usize
    }

    /// Where line `i` starts in the tokens (`i == lines()`: the end).
    pub fn line_start(&self, i: usize) -> u64 {
        u64_at(&self.lines, i)
    }

    /// The first line of document `k` (`k == documents()`: the end).
    pub fn doc_start(&self, k: usize) -> u64 {
        u64_at(&self.docs, k)
    }

    /// Where document `k` starts in the tokens.
    pub fn doc_token_start(&self, k: usize) -> u64 {
        self.line_start(self.doc_start(k) as usize)
    }

    /// Appends tokens `start..end` to `out`.
    pub fn extend_ids(&self, start: usize, end: usize, out: &mut Vec<i64>) {
        let w = self.width.bytes();
        let bytes = &self.tokens[start * w..end * w];
        match self.width {
            Width::U16 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)),
            Width::U32 => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)),
        }
    }
}

/// A store, mapped.
pub struct Store {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub train: std::sync::Arc<Split>,
    pub eval: std::sync::Arc<Split>,
}

impl Store {
    /// Maps the store in `dir` after checking every file against its
    /// manifest: a store cut short or half written is an error, never used.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{}: not a store manifest", path.display()))?;
        ensure!(manifest.format == FORMAT, "{}: format {} (this runner reads {FORMAT})", path.display(), manifest.format);
        let expected = Manifest::new(&manifest.key, vec![], manifest.width, manifest.train, manifest.eval, 0).files;
        ensure!(manifest.files == expected, "{}: file sizes disagree with the counts", path.display());
        for (name, size) in &manifest.files {
            let file = dir.join(name);
            let actual = std::fs::metadata(&file).with_context(|| format!("{}: missing", file.display()))?.len();
            ensure!(actual == *size, "{}: {actual} bytes, the manifest says {size}", file.display());
        }
        let open = |name, counts| Split::open(dir, name, manifest.width, counts).map(std::sync::Arc::new);
        let (train, eval) = (open("train", manifest.train)?, open("eval", manifest.eval)?);
        Ok(Store { dir: dir.to_path_buf(), manifest, train, eval })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a store of the given documents (each a list of token lines) to `dir`.
    pub(crate) fn write_store(dir: &Path, width: Width, train: &[Vec<Vec<u32>>], eval: &[Vec<Vec<u32>>]) -> Store {
        let mut counts = Vec::new();
        for (name, docs) in [("train", train), ("eval", eval)] {
            let mut w = SplitWriter::create(dir, name, width).unwrap();
            for d in docs {
                w.push_document(d).unwrap();
            }
            counts.push(w.finish().unwrap());
        }
        Manifest::new("k", vec![], width, counts[0], counts[1], 0).write(dir).unwrap();
        Store::open(dir).unwrap()
    }

    #[test]
    fn documents_read_back_as_written_in_either_width() {
        let docs = vec![vec![vec![5, 6], vec![], vec![7]], vec![], vec![vec![70000u32.min(65535)]]];
        for width in [Width::U16, Width::U32] {
            let dir = tempfile::tempdir().unwrap();
            let store = write_store(dir.path(), width, &docs, &[vec![vec![1]]]);
            let t = &store.train;
            assert_eq!((t.documents(), t.lines(), t.tokens()), (3, 3, 4));
            assert_eq!((t.doc_start(1), t.doc_start(2), t.doc_token_start(2)), (2, 2, 3));
            let mut ids = Vec::new();
            t.extend_ids(0, 4, &mut ids);
            assert_eq!(ids, vec![5, 6, 7, 65535]);
            let mut r = SplitReader::open(dir.path(), "train", width).unwrap();
            let back: Vec<Vec<Vec<u32>>> = (0..3).map(|_| r.next_document().unwrap()).collect();
            assert_eq!(back, vec![vec![vec![5, 6], vec![7]], vec![], vec![vec![65535]]]);
        }
        let dir = tempfile::tempdir().unwrap();
        let mut w = SplitWriter::create(dir.path(), "train", Width::U16).unwrap();
        assert!(w.push_document(&[vec![70000u32]]).is_err(), "an id too wide for u16 is an error");
    }

    #[test]
    fn a_truncated_or_unfinished_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_store(dir.path(), Width::U16, &[vec![vec![1, 2, 3]]], &[vec![vec![4]]]);
        let tokens = dir.path().join("train.tokens");
        std::fs::write(&tokens, [1u8, 0, 2, 0]).unwrap();
        let err = Store::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("train.tokens: 4 bytes, the manifest says 6"), "{err}");
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        assert!(Store::open(dir.path()).is_err(), "no manifest, no store");
    }
}
