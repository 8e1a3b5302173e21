//! Examples as views over a split of the token store: example `i` is computed
//! from the store's offsets when asked for, never copied out beforehand.
//!
//! - `packed`: each document's lines are concatenated, documents are joined by
//!   `[SEP]`, and the stream is cut into blocks of `max_seq_len - 2` tokens,
//!   each wrapped as `[CLS] block [SEP]` (the `group_texts` way; the short tail
//!   is dropped). Every example is full length, so no compute goes to padding.
//!   Block `i` starts at stream position `i * (max_seq_len - 2)`; the document
//!   holding it is found by binary search over the document offsets (document
//!   `k` starts at its first token's offset plus `k` separators).
//! - `line_by_line`: each non-empty line becomes `[CLS] line [SEP]`, truncated
//!   to `max_seq_len`.

use std::sync::Arc;

use runner_api::VocabInfo;

use super::store::Split;
use crate::recipe::raw::ExampleMode;

/// Token-id sequences, each starting with `[CLS]` and ending with `[SEP]`.
#[derive(Clone)]
pub enum Examples {
    /// A view over one split of the token store.
    Store(StoreExamples),
    /// Sequences held in memory as they are (tests).
    #[cfg(test)]
    Listed(Vec<Vec<u32>>),
}

#[derive(Clone)]
pub struct StoreExamples {
    split: Arc<Split>,
    mode: ExampleMode,
    /// Tokens between `[CLS]` and `[SEP]`: `max_seq_len - 2`.
    body: usize,
    cls: i64,
    sep: i64,
    len: usize,
}

impl Examples {
    /// The examples of `split` in `mode`.
    pub fn new(split: Arc<Split>, mode: ExampleMode, max_seq_len: usize, vocab: &VocabInfo) -> Self {
        let body = max_seq_len - 2;
        let len = match mode {
            ExampleMode::LineByLine => split.lines(),
            // The stream: every token plus one [SEP] between documents.
            ExampleMode::Packed => (split.tokens() + split.documents().saturating_sub(1)) / body,
        };
        Examples::Store(StoreExamples { split, mode, body, cls: vocab.cls_id, sep: vocab.sep_id, len })
    }

    pub fn len(&self) -> usize {
        match self {
            Examples::Store(s) => s.len,
            #[cfg(test)]
            Examples::Listed(l) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length of example `i`, in tokens.
    pub fn example_len(&self, i: usize) -> usize {
        match self {
            Examples::Store(s) => match s.mode {
                ExampleMode::Packed => s.body + 2,
                ExampleMode::LineByLine => {
                    let n = s.split.line_start(i + 1) - s.split.line_start(i);
                    (n as usize).min(s.body) + 2
                }
            },
            #[cfg(test)]
            Examples::Listed(l) => l[i].len(),
        }
    }

    /// Example `i` as int64 ids.
    pub fn ids(&self, i: usize) -> Vec<i64> {
        match self {
            Examples::Store(s) => s.ids(i),
            #[cfg(test)]
            Examples::Listed(l) => l[i].iter().map(|&t| t as i64).collect(),
        }
    }

    /// The documents (numbered in the split, from 0) example `i` takes its tokens from.
    pub fn documents_of(&self, i: usize) -> std::ops::RangeInclusive<usize> {
        match self {
            Examples::Store(s) => s.documents_of(i),
            #[cfg(test)]
            Examples::Listed(_) => i..=i,
        }
    }

    /// Tokens over all examples, `[CLS]` and `[SEP]` included.
    pub fn num_tokens(&self) -> usize {
        match self {
            Examples::Store(s) => match s.mode {
                ExampleMode::Packed => s.len * (s.body + 2),
                ExampleMode::LineByLine => (0..s.len).map(|i| self.example_len(i)).sum(),
            },
            #[cfg(test)]
            Examples::Listed(l) => l.iter().map(Vec::len).sum(),
        }
    }
}

impl StoreExamples {
    fn ids(&self, i: usize) -> Vec<i64> {
        assert!(i < self.len, "example {i} of {}", self.len);
        let mut out = Vec::with_capacity(self.body + 2);
        out.push(self.cls);
        match self.mode {
            ExampleMode::LineByLine => {
                let start = self.split.line_start(i) as usize;
                let end = (self.split.line_start(i + 1) as usize).min(start + self.body);
                self.split.extend_ids(start, end, &mut out);
            }
            ExampleMode::Packed => self.block(i, &mut out),
        }
        out.push(self.sep);
        out
    }

    fn documents_of(&self, i: usize) -> std::ops::RangeInclusive<usize> {
        let split = &self.split;
        match self.mode {
            ExampleMode::LineByLine => {
                let k = partition_point(split.documents(), |k| split.doc_start(k) as usize <= i) - 1;
                k..=k
            }
            ExampleMode::Packed => {
                let stream_start = |k: usize| split.doc_token_start(k) as usize + k;
                let doc_at = |pos: usize| partition_point(split.documents(), |k| stream_start(k) <= pos) - 1;
                doc_at(i * self.body)..=doc_at((i + 1) * self.body - 1)
            }
        }
    }

    /// Appends block `i` of the packed stream.
    fn block(&self, i: usize, out: &mut Vec<i64>) {
        let split = &self.split;
        let stream_start = |k: usize| split.doc_token_start(k) as usize + k;
        let pos = i * self.body;
        // The last document starting at or before `pos`.
        let mut k = partition_point(split.documents(), |k| stream_start(k) <= pos) - 1;
        let mut at = pos - k; // `pos` in token offsets (the k separators before it removed)
        let mut left = self.body;
        while left > 0 {
            let doc_end = split.doc_token_start(k + 1) as usize;
            let n = (doc_end - at).min(left);
            split.extend_ids(at, at + n, out);
            (at, left) = (at + n, left - n);
            if left > 0 {
                out.push(self.sep); // the separator after document k
                (k, left) = (k + 1, left - 1);
            }
        }
    }
}

/// The first `i` in `0..n` for which `pred` is false (`pred` true then false).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::data::store::tests::write_store;
    use crate::data::store::Width;

    fn vocab() -> VocabInfo {
        let tokens = (0..100).map(|i| format!("t{i}")).collect();
        let special = runner_api::SpecialIds { mask: 4, pad: 0, cls: 2, sep: 3 };
        VocabInfo::new(tokens, special, &[], runner_api::WordMarks::EveryToken)
    }

    /// Packing as it was done in memory: the reference for the views.
    pub(crate) fn packed_reference(docs: &[Vec<Vec<u32>>], cls: u32, sep: u32, max_seq_len: usize) -> Vec<Vec<u32>> {
        let body = max_seq_len - 2;
        let mut out = Vec::new();
        let mut block: Vec<u32> = Vec::with_capacity(body);
        let stream = docs.iter().enumerate().flat_map(|(i, doc)| (i > 0).then_some(sep).into_iter().chain(doc.iter().flatten().copied()));
        for id in stream {
            block.push(id);
            if block.len() == body {
                out.push(std::iter::once(cls).chain(block.drain(..)).chain(std::iter::once(sep)).collect());
            }
        }
        out
    }

    pub(crate) fn line_reference(docs: &[Vec<Vec<u32>>], cls: u32, sep: u32, max_seq_len: usize) -> Vec<Vec<u32>> {
        let body = max_seq_len - 2;
        let lines = docs.iter().flatten().filter(|l| !l.is_empty());
        lines.map(|l| std::iter::once(cls).chain(l[..l.len().min(body)].iter().copied()).chain(std::iter::once(sep)).collect()).collect()
    }

    fn all(ex: &Examples) -> Vec<Vec<u32>> {
        (0..ex.len()).map(|i| ex.ids(i).into_iter().map(|t| t as u32).collect()).collect()
    }

    #[test]
    fn views_equal_packing_and_lines_built_in_memory() {
        // Documents of every shape: empty ones, empty lines, longer than a block.
        let docs: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![10, 11, 12], vec![], vec![13]],
            vec![],
            vec![(20..45).collect()],
            vec![vec![50]],
            vec![],
            vec![vec![60, 61], vec![62, 63, 64, 65, 66, 67, 68]],
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), Width::U16, &docs, &[]);
        for max_seq_len in [3, 4, 8, 9, 40, 64] {
            let packed = Examples::new(store.train.clone(), ExampleMode::Packed, max_seq_len, &vocab());
            assert_eq!(all(&packed), packed_reference(&docs, 2, 3, max_seq_len), "packed, max_seq_len {max_seq_len}");
            assert!((0..packed.len()).all(|i| packed.example_len(i) == max_seq_len));
            let lines = Examples::new(store.train.clone(), ExampleMode::LineByLine, max_seq_len, &vocab());
            let reference = line_reference(&docs, 2, 3, max_seq_len);
            assert_eq!(all(&lines), reference, "line_by_line, max_seq_len {max_seq_len}");
            assert_eq!(lines.num_tokens(), reference.iter().map(Vec::len).sum::<usize>());
            assert!((0..lines.len()).all(|i| lines.example_len(i) == reference[i].len()));
        }
        // Which documents an example comes from.
        let packed = Examples::new(store.train.clone(), ExampleMode::Packed, 8, &vocab());
        assert_eq!(packed.documents_of(0), 0..=1, "[10 11 12 13 SEP SEP]: document 0, then empty document 1");
        assert_eq!(packed.documents_of(1), 2..=2);
        let lines = Examples::new(store.train.clone(), ExampleMode::LineByLine, 8, &vocab());
        assert_eq!((0..lines.len()).map(|i| *lines.documents_of(i).start()).collect::<Vec<_>>(), vec![0, 0, 2, 3, 5, 5]);
        let empty = Examples::new(store.eval.clone(), ExampleMode::Packed, 8, &vocab());
        assert!(empty.is_empty());
    }
}
