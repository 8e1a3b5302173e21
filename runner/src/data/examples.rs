//! Tokenized examples, stored flat (one token buffer plus offsets).
//!
//! - `packed`: each document's lines are concatenated, documents are joined by
//!   `[SEP]`, and the stream is cut into blocks of `max_seq_len - 2` tokens,
//!   each wrapped as `[CLS] block [SEP]` (the `group_texts` way; the short tail
//!   is dropped). Every example is full length, so no compute goes to padding.
//! - `line_by_line`: each line becomes `[CLS] line [SEP]`, truncated to
//!   `max_seq_len`.

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tokenizers::Tokenizer;

use runner_api::{Document, VocabInfo};

use crate::recipe::raw::ExampleMode;

/// The token buffer: built in memory, or memory-mapped from the token cache.
#[derive(Debug, Clone)]
pub enum Tokens {
    Owned(Vec<u32>),
    /// `len` u32 values at byte `start` of a mapped cache file (4-byte aligned).
    Mapped { map: std::sync::Arc<memmap2::Mmap>, start: usize, len: usize },
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Owned(Vec::new())
    }
}

impl std::ops::Deref for Tokens {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            Tokens::Owned(v) => v,
            Tokens::Mapped { map, start, len } => {
                let bytes = &map[*start..*start + 4 * *len];
                assert_eq!(bytes.as_ptr() as usize % 4, 0, "token cache data is 4-byte aligned");
                // SAFETY: in bounds (sliced above), aligned (checked), and any bit pattern is a valid u32.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u32>(), *len) }
            }
        }
    }
}

/// Token-id sequences, each starting with `[CLS]` and ending with `[SEP]`.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    pub(crate) tokens: Tokens,
    pub(crate) offsets: Vec<usize>,
}

impl Examples {
    fn push(&mut self, seq: impl IntoIterator<Item = u32>) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let Tokens::Owned(tokens) = &mut self.tokens else { unreachable!("examples are built in memory") };
        tokens.extend(seq);
        self.offsets.push(tokens.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Example `i` as int64 ids.
    pub fn ids(&self, i: usize) -> Vec<i64> {
        self.get(i).iter().map(|&t| t as i64).collect()
    }

    pub fn num_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Tokenizes documents (in parallel) and cuts them into examples.
    pub fn build(
        docs: &[Document],
        tok: &Tokenizer,
        vocab: &VocabInfo,
        mode: ExampleMode,
        max_seq_len: usize,
    ) -> Result<Self> {
        let tokenized: Vec<Vec<Vec<u32>>> = docs
            .par_iter()
            .map(|doc| {
                doc.iter()
                    .map(|line| {
                        tok.encode(line.as_str(), false)
                            .map(|e| e.get_ids().to_vec())
                            .map_err(|e| anyhow::anyhow!("tokenizer failed on a line: {e}"))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let (cls, sep) = (vocab.cls_id as u32, vocab.sep_id as u32);
        let body = max_seq_len - 2;
        let mut out = Examples::default();
        match mode {
            ExampleMode::LineByLine => {
                for line in tokenized.iter().flatten().filter(|l| !l.is_empty()) {
                    let n = line.len().min(body);
                    out.push(std::iter::once(cls).chain(line[..n].iter().copied()).chain(std::iter::once(sep)));
                }
            }
            ExampleMode::Packed => {
                let mut block: Vec<u32> = Vec::with_capacity(body);
                let stream = tokenized.iter().enumerate().flat_map(|(i, doc)| {
                    let separator = (i > 0).then_some(sep);
                    separator.into_iter().chain(doc.iter().flatten().copied())
                });
                for id in stream {
                    block.push(id);
                    if block.len() == body {
                        out.push(std::iter::once(cls).chain(block.drain(..)).chain(std::iter::once(sep)));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Splits documents into (train, held out): `fraction` of them, at least one,
/// chosen with `seed`. Both keep the corpus order.
pub fn split_holdout(docs: Vec<Document>, fraction: f64, seed: u64) -> Result<(Vec<Document>, Vec<Document>)> {
    let n = docs.len();
    if n < 2 {
        anyhow::bail!("the corpus has {n} document(s); holding some out for eval needs at least 2 (or give data.eval)");
    }
    let n_eval = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut held = vec![false; n];
    for &i in &order[..n_eval] {
        held[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if held[i] {
            eval.push(d)
        } else {
            train.push(d)
        }
    }
    Ok((train, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_seeded_disjoint_and_ordered() {
        let docs: Vec<Document> = (0..20).map(|i| vec![format!("doc {i}")]).collect();
        let (t1, e1) = split_holdout(docs.clone(), 0.1, 3).unwrap();
        let (t2, e2) = split_holdout(docs.clone(), 0.1, 3).unwrap();
        assert_eq!((t1.len(), e1.len()), (18, 2));
        assert_eq!((&t1, &e1), (&t2, &e2));
        assert!(e1.iter().all(|d| !t1.contains(d)));
        assert!(split_holdout(docs[..1].to_vec(), 0.1, 0).is_err());
    }
}
