//! Building a token store: documents stream from the dataset component on a
//! reader thread in bounded chunks, each chunk is tokenized in parallel, and
//! its token ids are appended to the store's files. Memory holds a few chunks
//! at a time, never the corpus.
//!
//! The holdout split (no `data.eval`) is decided after every document has been
//! counted, exactly as before the store existed: a ChaCha shuffle of the
//! document indices seeded by `eval.seed` picks `holdout` of them. So the
//! corpus is first written whole (`all.*`), then copied document by document
//! into `train` and `eval` with buffered reads; only the shuffle (4 bytes per
//! document) and a flag per document are held in memory.

use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use runner_api::{Dataset, Document};

use super::store::{SplitCounts, SplitReader, SplitWriter, Width};
use crate::error::user_msg;

/// Text per chunk handed from the reader thread to the tokenizers.
const CHUNK_BYTES: usize = 4 << 20;
/// Chunks waiting for the tokenizers (bounds the memory the reader may run ahead with).
const CHUNKS_AHEAD: usize = 2;

/// Where the held-out documents come from.
#[derive(Debug, Clone)]
pub enum EvalInput<'a> {
    /// `data.eval`: these paths.
    Paths(&'a [PathBuf]),
    /// `data.holdout` of the train documents, chosen with `eval.seed`.
    Holdout { fraction: f64, seed: u64 },
}

/// What a store is built from.
pub struct Input<'a> {
    pub dataset: &'a dyn Dataset,
    pub train: &'a [PathBuf],
    pub eval: EvalInput<'a>,
    /// `data.max_train_documents`: the first this many train documents (after the split).
    pub max_train_documents: Option<usize>,
}

/// What a build wrote.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    pub train: SplitCounts,
    pub eval: SplitCounts,
    pub text_bytes: u64,
}

/// Tokenizes `input` into the split files of `dir` (`train.*`, `eval.*`).
pub fn build(dir: &Path, input: &Input, tok: &Tokenizer, width: Width) -> Result<Built> {
    let progress = Progress::new();
    let built = match input.eval {
        EvalInput::Paths(eval) => {
            let mut train = SplitWriter::create(dir, "train", width)?;
            let mut text_bytes = tokenize(input.dataset, input.train, "data.train", tok, &mut train, input.max_train_documents, &progress)?;
            let mut held = SplitWriter::create(dir, "eval", width)?;
            text_bytes += tokenize(input.dataset, eval, "data.eval", tok, &mut held, None, &progress)?;
            Built { train: train.finish()?, eval: held.finish()?, text_bytes }
        }
        EvalInput::Holdout { fraction, seed } => {
            let mut all = SplitWriter::create(dir, "all", width)?;
            let text_bytes = tokenize(input.dataset, input.train, "data.train", tok, &mut all, None, &progress)?;
            let all = all.finish()?;
            let held = holdout(all.documents as usize, fraction, seed).map_err(|e| user_msg(format!("data.holdout: {e:#}")))?;
            let (train, eval) = copy_split(dir, width, &held, input.max_train_documents)?;
            for ext in ["tokens", "lines", "docs"] {
                std::fs::remove_file(dir.join(format!("all.{ext}")))?;
            }
            Built { train, eval, text_bytes }
        }
    };
    progress.finish();
    Ok(built)
}

/// Which of `n` documents are held out: `fraction` of them (at least one, at
/// least one left), the first of a ChaCha shuffle seeded with `seed`.
pub fn holdout(n: usize, fraction: f64, seed: u64) -> Result<Vec<bool>> {
    if n < 2 {
        anyhow::bail!("the corpus has {n} document(s); holding some out for eval needs at least 2 (or give data.eval)");
    }
    let n_eval = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    // u32 indices: the shuffle draws the same numbers for any element type.
    let mut order: Vec<u32> = (0..u32::try_from(n).context("more than 2^32 documents")?).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut held = vec![false; n];
    for &i in &order[..n_eval] {
        held[i as usize] = true;
    }
    Ok(held)
}

/// Copies `all.*` into `train.*` and `eval.*` as `held` says, in corpus order.
fn copy_split(dir: &Path, width: Width, held: &[bool], max_train: Option<usize>) -> Result<(SplitCounts, SplitCounts)> {
    let mut all = SplitReader::open(dir, "all", width)?;
    let mut train = SplitWriter::create(dir, "train", width)?;
    let mut eval = SplitWriter::create(dir, "eval", width)?;
    for &is_held in held {
        let doc = all.next_document()?;
        if is_held {
            eval.push_document(&doc)?;
        } else if max_train.is_none_or(|m| (train.counts().documents as usize) < m) {
            train.push_document(&doc)?;
        }
    }
    Ok((train.finish()?, eval.finish()?))
}

/// Streams the documents under `paths` into `out`, tokenizing a chunk at a
/// time in parallel; stops after `limit` documents. Returns the text bytes read.
fn tokenize(
    dataset: &dyn Dataset,
    paths: &[PathBuf],
    key: &str,
    tok: &Tokenizer,
    out: &mut SplitWriter,
    limit: Option<usize>,
    progress: &Progress,
) -> Result<u64> {
    let mut text_bytes = 0u64;
    let mut written = 0usize;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = sync_channel::<Result<Vec<Document>>>(CHUNKS_AHEAD);
        s.spawn(move || read_chunks(dataset, paths, &tx));
        for chunk in rx {
            let chunk = chunk.map_err(|e| user_msg(format!("{key}: {e:#}")))?;
            let take = limit.map_or(chunk.len(), |l| (l - written).min(chunk.len()));
            let chunk = &chunk[..take];
            let tokenized = tokenize_documents(chunk, tok)?;
            let (mut bytes, mut tokens) = (0, 0);
            for (doc, ids) in chunk.iter().zip(&tokenized) {
                out.push_document(ids)?;
                bytes += doc.iter().map(|l| l.len() as u64).sum::<u64>();
                tokens += ids.iter().map(|l| l.len() as u64).sum::<u64>();
            }
            written += take;
            text_bytes += bytes;
            progress.add(bytes, tokens);
            if limit.is_some_and(|l| written >= l) {
                break; // dropping the receiver stops the reader
            }
        }
        Ok(())
    })?;
    Ok(text_bytes)
}

/// The reader thread: documents in chunks of about `CHUNK_BYTES` of text.
fn read_chunks(dataset: &dyn Dataset, paths: &[PathBuf], tx: &std::sync::mpsc::SyncSender<Result<Vec<Document>>>) {
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for path in paths {
        let docs = match dataset.read(path) {
            Ok(docs) => docs,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        for doc in docs {
            match doc {
                Ok(doc) => {
                    bytes += doc.iter().map(String::len).sum::<usize>();
                    chunk.push(doc);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            if bytes >= CHUNK_BYTES {
                if tx.send(Ok(std::mem::take(&mut chunk))).is_err() {
                    return; // the writer has what it needs
                }
                bytes = 0;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.send(Ok(chunk));
    }
}

/// Token ids of each line of each document, in parallel over lines (and over
/// the pieces of a long line).
fn tokenize_documents(docs: &[Document], tok: &Tokenizer) -> Result<Vec<Vec<Vec<u32>>>> {
    docs.par_iter()
        .map(|doc| {
            doc.par_iter()
                .map(|line| super::tokenizer::ids(tok, line).context("tokenizer failed on a line"))
                .collect::<Result<Vec<Vec<u32>>>>()
        })
        .collect()
}

/// Bytes and tokens per second while building (on a terminal).
struct Progress {
    bar: ProgressBar,
    started: Instant,
    tokens: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("tokenizing {spinner} {bytes} of text ({bytes_per_sec}), {msg}").expect("a valid template"),
        );
        Progress { bar, started: Instant::now(), tokens: 0.into() }
    }

    fn add(&self, bytes: u64, tokens: u64) {
        use std::sync::atomic::Ordering;
        let total = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        let rate = total as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.inc(bytes);
        self.bar.set_message(format!("{total} tokens ({rate:.0} tokens/s)"));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Today's rule, written out over documents: the reference the store's
    /// split must reproduce.
    fn split_documents(n: usize, fraction: f64, seed: u64) -> Vec<usize> {
        let n_eval = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut held = order[..n_eval].to_vec();
        held.sort();
        held
    }

    #[test]
    fn holdout_is_seeded_and_matches_a_shuffle_of_all_documents() {
        for (n, fraction, seed) in [(20, 0.1, 3), (1000, 0.05, 0), (7, 0.5, 11)] {
            let held = holdout(n, fraction, seed).unwrap();
            let picked: Vec<usize> = (0..n).filter(|&i| held[i]).collect();
            assert_eq!(picked, split_documents(n, fraction, seed));
            assert_eq!(held, holdout(n, fraction, seed).unwrap());
        }
        assert_eq!(holdout(20, 0.1, 3).unwrap().iter().filter(|&&h| h).count(), 2);
        assert!(holdout(1, 0.1, 0).is_err());
    }
}
