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
//! and `manifest.json` (format, token width, the vocabulary's size, counts,
//! every file's size and SHA-256), written last. Opening a store reads every
//! file once, sequentially: a file whose size or SHA-256 differs from the
//! manifest's, a token id beyond the vocabulary, or an offset that goes
//! backwards or past its file is refused, naming the file, so damage that
//! keeps a file's size is found before a step trains (`cache.rs` then
//! rebuilds the store).
//! Packed blocks and line-by-line examples are views over a split
//! (`examples.rs`); nothing is copied out of the store to build them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// Names the format in each manifest; a store of another format is rebuilt.
pub const FORMAT: &str = "runner-token-store-2";
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
    /// The tokenizer's vocabulary: every stored id is below it.
    pub vocab_size: u64,
    /// The cache key the store was built for (see `cache.rs`).
    pub key: String,
    /// What was read, for `runner data stats`.
    pub sources: Vec<String>,
    pub train: SplitCounts,
    pub eval: SplitCounts,
    /// UTF-8 bytes of the documents' lines (what was tokenized).
    pub text_bytes: u64,
    pub files: BTreeMap<String, u64>,
    /// Each file's SHA-256 (hex), filled in by [`Manifest::write`].
    pub sha256: BTreeMap<String, String>,
}

impl Manifest {
    pub fn new(
        key: &str,
        sources: Vec<String>,
        width: Width,
        vocab_size: usize,
        train: SplitCounts,
        eval: SplitCounts,
        text_bytes: u64,
    ) -> Self {
        let files = train.file_sizes("train", width).into_iter().chain(eval.file_sizes("eval", width)).collect();
        let (vocab_size, sha256) = (vocab_size as u64, BTreeMap::new());
        Manifest { format: FORMAT.into(), width, vocab_size, key: key.into(), sources, train, eval, text_bytes, files, sha256 }
    }

    /// Bytes on disk, manifest excluded.
    pub fn size(&self) -> u64 {
        self.files.values().sum()
    }

    /// Writes `manifest.json` (to a temporary name, then renamed), with the
    /// SHA-256 of every file, read back from `dir`.
    pub fn write(mut self, dir: &Path) -> Result<()> {
        for name in self.files.keys() {
            let file = dir.join(name);
            let mapped = map(&file)?;
            self.sha256.insert(name.clone(), sha256_hex(&mapped));
        }
        runner_recipe::fs::atomic_write_bytes(&dir.join(MANIFEST), &serde_json::to_vec_pretty(&self)?)
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Offsets (u64) that start at 0, never go back (`strict`: always go forward)
/// and end at `end`.
fn check_offsets(file: &Path, bytes: &[u8], strict: bool, end: u64) -> Result<()> {
    let mut prev: Option<u64> = None;
    for (i, c) in bytes.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        match prev {
            None if v != 0 => bail!("{}: the first offset is {v}, not 0", file.display()),
            Some(p) if v < p || (strict && v == p) => {
                bail!("{}: offset {i} is {v}, after {p}: offsets must go forward", file.display())
            }
            _ if v > end => bail!("{}: offset {i} is {v}, past the end ({end})", file.display()),
            _ => {}
        }
        prev = Some(v);
    }
    ensure!(prev == Some(end), "{}: offsets end at {}, not at {end}", file.display(), prev.unwrap_or(0));
    Ok(())
}

/// Token ids that are all below `vocab_size`.
fn check_ids(file: &Path, bytes: &[u8], width: Width, vocab_size: u64) -> Result<()> {
    let bad = match width {
        Width::U16 => bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u64).position(|t| t >= vocab_size),
        Width::U32 => {
            bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64).position(|t| t >= vocab_size)
        }
    };
    if let Some(i) = bad {
        let w = width.bytes();
        let mut b = [0u8; 4];
        b[..w].copy_from_slice(&bytes[i * w..i * w + w]);
        bail!("{}: token {i} has id {}, beyond the vocabulary of {vocab_size}", file.display(), u32::from_le_bytes(b));
    }
    Ok(())
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
    /// Maps a split and checks its content against the manifest (see the module docs).
    fn open(dir: &Path, name: &str, manifest: &Manifest, counts: SplitCounts) -> Result<Self> {
        let files = [format!("{name}.tokens"), format!("{name}.lines"), format!("{name}.docs")];
        let [tokens, lines, docs] = files.clone().map(|f| map(&dir.join(f)));
        let split = Split { tokens: tokens?, lines: lines?, docs: docs?, width: manifest.width, counts };
        for (file, bytes) in files.iter().zip([&split.tokens, &split.lines, &split.docs]) {
            let path = dir.join(file);
            let Some(want) = manifest.sha256.get(file) else { bail!("{}: the manifest has no SHA-256 of it", path.display()) };
            match file.rsplit('.').next() {
                Some("tokens") => check_ids(&path, bytes, manifest.width, manifest.vocab_size)?,
                Some("lines") => check_offsets(&path, bytes, true, counts.tokens)?,
                _ => check_offsets(&path, bytes, false, counts.lines)?,
            }
            ensure!(
                sha256_hex(bytes) == *want,
                "{}: its content does not match the SHA-256 in the manifest (changed or damaged since it was written)",
                path.display()
            );
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
    /// manifest: a store cut short, half written or damaged is an error
    /// naming the file, never used. `vocab_size` is the tokenizer's.
    pub fn open(dir: &Path, vocab_size: usize) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{}: not a store manifest", path.display()))?;
        ensure!(manifest.format == FORMAT, "{}: format {} (this runner reads {FORMAT})", path.display(), manifest.format);
        ensure!(
            manifest.vocab_size == vocab_size as u64 && (manifest.width == Width::U32 || vocab_size <= 1 << 16),
            "{}: built for a vocabulary of {} ids in {:?}, the tokenizer has {vocab_size}",
            path.display(),
            manifest.vocab_size,
            manifest.width
        );
        let expected = Manifest::new(&manifest.key, vec![], manifest.width, vocab_size, manifest.train, manifest.eval, 0).files;
        ensure!(manifest.files == expected, "{}: file sizes disagree with the counts", path.display());
        for (name, size) in &manifest.files {
            let file = dir.join(name);
            let actual = std::fs::metadata(&file).with_context(|| format!("{}: missing", file.display()))?.len();
            ensure!(actual == *size, "{}: {actual} bytes, the manifest says {size}", file.display());
        }
        let open = |name, counts| Split::open(dir, name, &manifest, counts).map(std::sync::Arc::new);
        let (train, eval) = (open("train", manifest.train)?, open("eval", manifest.eval)?);
        Ok(Store { dir: dir.to_path_buf(), manifest, train, eval })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The vocabulary of the test stores: every id fits.
    pub(crate) const VOCAB: usize = 65536;

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
        Manifest::new("k", vec![], width, VOCAB, counts[0], counts[1], 0).write(dir).unwrap();
        Store::open(dir, VOCAB).unwrap()
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
        let err = Store::open(dir.path(), VOCAB).err().unwrap().to_string();
        assert!(err.contains("train.tokens: 4 bytes, the manifest says 6"), "{err}");
        std::fs::remove_file(dir.path().join(MANIFEST)).unwrap();
        assert!(Store::open(dir.path(), VOCAB).is_err(), "no manifest, no store");
    }

    /// Damage that keeps every file's size: found when the store is opened,
    /// the file named, for each file, at its start, middle and end, by a
    /// flipped bit, a byte set to 0xff, and a whole file of one value.
    #[test]
    fn damage_that_keeps_the_size_is_found_and_names_the_file() {
        let train: Vec<Vec<Vec<u32>>> = (0..20).map(|d| (0..3).map(|l| (0..5 + l).map(|t| 5 + (d * 7 + l * 3 + t) % 30).collect()).collect()).collect();
        let eval = vec![vec![vec![6, 7, 8], vec![9]], vec![vec![10, 11]]];
        type Damage = fn(&mut [u8], usize);
        let damages: [(&str, Damage); 3] = [
            ("a flipped bit", |b, at| b[at] ^= 0x01),
            ("a byte set to 0xff", |b, at| b[at] = if b[at] == 0xff { 0xfe } else { 0xff }),
            ("one value throughout", |b, _| {
                let first = b[..2].to_vec();
                for c in b.chunks_exact_mut(2) {
                    c.copy_from_slice(&first);
                }
                if b.iter().all(|&x| x == first[0]) {
                    b[0] ^= 1;
                }
            }),
        ];
        for width in [Width::U16, Width::U32] {
            for split in SPLITS {
                for ext in ["tokens", "lines", "docs"] {
                    let file = format!("{split}.{ext}");
                    for (what, damage) in damages {
                        for at in ["start", "middle", "end"] {
                            let dir = tempfile::tempdir().unwrap();
                            write_store(dir.path(), width, &train, &eval);
                            let path = dir.path().join(&file);
                            let mut bytes = std::fs::read(&path).unwrap();
                            let n = bytes.len();
                            let i = match at {
                                "start" => 0,
                                "middle" => n / 2,
                                _ => n - 1,
                            };
                            damage(&mut bytes, i);
                            std::fs::write(&path, &bytes).unwrap();
                            let err = match Store::open(dir.path(), VOCAB) {
                                Ok(_) => panic!("{file}: {what} at the {at} was not found"),
                                Err(e) => format!("{e:#}"),
                            };
                            assert!(err.contains(&file), "{file}, {what} at the {at}: {err}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ids_beyond_the_vocabulary_and_offsets_that_go_back_are_named() {
        let ids = [5u8, 0, 99, 0, 7, 0];
        assert!(check_ids(Path::new("t"), &ids, Width::U16, 100).is_ok());
        let err = check_ids(Path::new("t"), &ids, Width::U16, 50).unwrap_err().to_string();
        assert!(err.contains("token 1 has id 99, beyond the vocabulary of 50"), "{err}");
        let offs = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert!(check_offsets(Path::new("l"), &offs(&[0, 2, 5]), true, 5).is_ok());
        assert!(check_offsets(Path::new("l"), &offs(&[0, 2, 2, 5]), false, 5).is_ok());
        for (bad, strict, needle) in [
            (vec![0, 3, 2, 5], false, "must go forward"),
            (vec![0, 2, 2, 5], true, "must go forward"),
            (vec![1, 2, 5], false, "not 0"),
            (vec![0, 9, 5], false, "past the end"),
            (vec![0, 2, 4], false, "not at 5"),
        ] {
            let err = check_offsets(Path::new("l"), &offs(&bad), strict, 5).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }
}
