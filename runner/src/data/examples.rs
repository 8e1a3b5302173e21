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
//!
//! With `data.document_attention` each row also says which document each of
//! its tokens belongs to ([`Examples::documents`]), and attention keeps to it:
//!
//! - `packed`: each document is framed as `[CLS] document [SEP]`, the framed
//!   documents follow one another, and the stream is cut into rows of exactly
//!   `max_seq_len` tokens (document `k` starts at stream position: its first
//!   token's offset plus `2k`). A document cut by a row's end goes on at the
//!   start of the next row, where its positions count from 0 again.
//! - `line_by_line`: framed lines (truncated as above) are packed whole, in
//!   order, into rows of at most `max_seq_len` tokens: padding only where the
//!   next line does not fit. Where each row starts is worked out once.

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

/// How a split's tokens become rows.
#[derive(Clone)]
enum Layout {
    /// `packed`: `[CLS] block [SEP]`.
    Blocks,
    /// `line_by_line`: `[CLS] line [SEP]`.
    Lines,
    /// `packed` with document attention: framed documents cut into rows.
    FramedDocuments,
    /// `line_by_line` with document attention: framed lines packed whole;
    /// row `i` holds lines `rows[i]..rows[i + 1]`.
    PackedLines { rows: Arc<Vec<usize>> },
}

#[derive(Clone)]
pub struct StoreExamples {
    split: Arc<Split>,
    layout: Layout,
    /// Tokens between `[CLS]` and `[SEP]`: `max_seq_len - 2`.
    body: usize,
    cls: i64,
    sep: i64,
    len: usize,
}

impl Examples {
    /// The examples of `split` in `mode`; with `document_attention`, rows
    /// that keep their documents apart (see the module's notes).
    pub fn new(split: Arc<Split>, mode: ExampleMode, max_seq_len: usize, document_attention: bool, vocab: &VocabInfo) -> Self {
        let body = max_seq_len - 2;
        let (layout, len) = match (mode, document_attention) {
            (ExampleMode::LineByLine, false) => (Layout::Lines, split.lines()),
            // The stream: every token plus one [SEP] between documents.
            (ExampleMode::Packed, false) => (Layout::Blocks, (split.tokens() + split.documents().saturating_sub(1)) / body),
            // The stream: every token plus [CLS] and [SEP] around each document.
            (ExampleMode::Packed, true) => (Layout::FramedDocuments, (split.tokens() + 2 * split.documents()) / max_seq_len),
            (ExampleMode::LineByLine, true) => {
                let rows = pack_lines(&split, body, max_seq_len);
                let len = rows.len() - 1;
                (Layout::PackedLines { rows: Arc::new(rows) }, len)
            }
        };
        Examples::Store(StoreExamples { split, layout, body, cls: vocab.cls_id, sep: vocab.sep_id, len })
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
            Examples::Store(s) => match &s.layout {
                Layout::Blocks | Layout::FramedDocuments => s.body + 2,
                Layout::Lines => s.framed_line_len(i),
                Layout::PackedLines { rows } => (rows[i]..rows[i + 1]).map(|l| s.framed_line_len(l)).sum(),
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

    /// With document attention, the document (numbered from 0 in the row) of
    /// each token of example `i`; `None` otherwise.
    pub fn documents(&self, i: usize) -> Option<Vec<i64>> {
        match self {
            Examples::Store(s) => s.documents(i),
            #[cfg(test)]
            Examples::Listed(_) => None,
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

    /// Tokens over all examples, `[CLS]` and `[SEP]` included (padding not).
    pub fn num_tokens(&self) -> usize {
        match self {
            Examples::Store(s) => match &s.layout {
                Layout::Blocks | Layout::FramedDocuments => s.len * (s.body + 2),
                Layout::Lines => (0..s.len).map(|i| self.example_len(i)).sum(),
                Layout::PackedLines { rows } => (0..rows[s.len]).map(|l| s.framed_line_len(l)).sum(),
            },
            #[cfg(test)]
            Examples::Listed(l) => l.iter().map(Vec::len).sum(),
        }
    }
}

/// Where each row of framed lines starts (first line of each row, then the
/// number of lines): lines in order, each whole, as many as fit in `max_seq_len`.
fn pack_lines(split: &Split, body: usize, max_seq_len: usize) -> Vec<usize> {
    let mut rows = vec![0];
    let mut filled = 0;
    for l in 0..split.lines() {
        let n = (split.line_start(l + 1) - split.line_start(l)) as usize;
        let framed = n.min(body) + 2;
        if filled + framed > max_seq_len {
            rows.push(l);
            filled = 0;
        }
        filled += framed;
    }
    if split.lines() > 0 {
        rows.push(split.lines());
    }
    rows
}

impl StoreExamples {
    /// Line `l` as `[CLS] line [SEP]`, truncated: its length.
    fn framed_line_len(&self, l: usize) -> usize {
        let n = self.split.line_start(l + 1) - self.split.line_start(l);
        (n as usize).min(self.body) + 2
    }

    /// Appends line `l`, framed and truncated.
    fn framed_line(&self, l: usize, out: &mut Vec<i64>) {
        let start = self.split.line_start(l) as usize;
        let end = (self.split.line_start(l + 1) as usize).min(start + self.body);
        out.push(self.cls);
        self.split.extend_ids(start, end, out);
        out.push(self.sep);
    }

    fn ids(&self, i: usize) -> Vec<i64> {
        assert!(i < self.len, "example {i} of {}", self.len);
        let mut out = Vec::with_capacity(self.body + 2);
        match &self.layout {
            Layout::Lines => self.framed_line(i, &mut out),
            Layout::Blocks => {
                out.push(self.cls);
                self.block(i, &mut out);
                out.push(self.sep);
            }
            Layout::FramedDocuments => self.framed_documents(i, Some(&mut out), None),
            Layout::PackedLines { rows } => (rows[i]..rows[i + 1]).for_each(|l| self.framed_line(l, &mut out)),
        }
        out
    }

    fn documents(&self, i: usize) -> Option<Vec<i64>> {
        assert!(i < self.len, "example {i} of {}", self.len);
        let mut out = Vec::with_capacity(self.body + 2);
        match &self.layout {
            Layout::Lines | Layout::Blocks => return None,
            Layout::FramedDocuments => self.framed_documents(i, None, Some(&mut out)),
            Layout::PackedLines { rows } => {
                for (k, l) in (rows[i]..rows[i + 1]).enumerate() {
                    out.extend(std::iter::repeat_n(k as i64, self.framed_line_len(l)));
                }
            }
        }
        Some(out)
    }

    fn documents_of(&self, i: usize) -> std::ops::RangeInclusive<usize> {
        let split = &self.split;
        let doc_of_line = |l: usize| partition_point(split.documents(), |k| split.doc_start(k) as usize <= l) - 1;
        match &self.layout {
            Layout::Lines => doc_of_line(i)..=doc_of_line(i),
            Layout::PackedLines { rows } => doc_of_line(rows[i])..=doc_of_line(rows[i + 1] - 1),
            Layout::Blocks => {
                let stream_start = |k: usize| split.doc_token_start(k) as usize + k;
                let doc_at = |pos: usize| partition_point(split.documents(), |k| stream_start(k) <= pos) - 1;
                doc_at(i * self.body)..=doc_at((i + 1) * self.body - 1)
            }
            Layout::FramedDocuments => {
                let row = self.body + 2;
                doc_at_framed(split, i * row)..=doc_at_framed(split, (i + 1) * row - 1)
            }
        }
    }

    /// Row `i` of the framed-document stream: its ids into `ids` and each
    /// token's document within the row into `docs`.
    fn framed_documents(&self, i: usize, mut ids: Option<&mut Vec<i64>>, mut docs: Option<&mut Vec<i64>>) {
        let split = &self.split;
        let row = self.body + 2;
        let (mut pos, end) = (i * row, (i + 1) * row);
        let mut k = doc_at_framed(split, pos);
        let mut within = 0;
        while pos < end {
            let start = split.doc_token_start(k) as usize;
            let n = split.doc_token_start(k + 1) as usize - start;
            let framed_start = start + 2 * k;
            // Stream positions framed_start + (0 ..= n + 1): [CLS], the tokens, [SEP].
            let (from, to) = (pos - framed_start, (n + 2).min(end - framed_start));
            if let Some(out) = ids.as_deref_mut() {
                if from == 0 {
                    out.push(self.cls);
                }
                let (a, b) = (from.max(1) - 1, (to - 1).min(n));
                if a < b {
                    split.extend_ids(start + a, start + b, out);
                }
                if to == n + 2 {
                    out.push(self.sep);
                }
            }
            if let Some(out) = docs.as_deref_mut() {
                out.extend(std::iter::repeat_n(within, to - from));
            }
            (pos, k, within) = (framed_start + to, k + 1, within + 1);
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

/// The document holding stream position `pos` of the framed-document stream.
fn doc_at_framed(split: &Split, pos: usize) -> usize {
    partition_point(split.documents(), |k| split.doc_token_start(k) as usize + 2 * k <= pos) - 1
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
            let packed = Examples::new(store.train.clone(), ExampleMode::Packed, max_seq_len, false, &vocab());
            assert_eq!(all(&packed), packed_reference(&docs, 2, 3, max_seq_len), "packed, max_seq_len {max_seq_len}");
            assert!((0..packed.len()).all(|i| packed.example_len(i) == max_seq_len));
            let lines = Examples::new(store.train.clone(), ExampleMode::LineByLine, max_seq_len, false, &vocab());
            let reference = line_reference(&docs, 2, 3, max_seq_len);
            assert_eq!(all(&lines), reference, "line_by_line, max_seq_len {max_seq_len}");
            assert_eq!(lines.num_tokens(), reference.iter().map(Vec::len).sum::<usize>());
            assert!((0..lines.len()).all(|i| lines.example_len(i) == reference[i].len()));
        }
        // Which documents an example comes from.
        let packed = Examples::new(store.train.clone(), ExampleMode::Packed, 8, false, &vocab());
        assert_eq!(packed.documents_of(0), 0..=1, "[10 11 12 13 SEP SEP]: document 0, then empty document 1");
        assert_eq!(packed.documents_of(1), 2..=2);
        let lines = Examples::new(store.train.clone(), ExampleMode::LineByLine, 8, false, &vocab());
        assert_eq!((0..lines.len()).map(|i| *lines.documents_of(i).start()).collect::<Vec<_>>(), vec![0, 0, 2, 3, 5, 5]);
        let empty = Examples::new(store.eval.clone(), ExampleMode::Packed, 8, false, &vocab());
        assert!(empty.is_empty());
    }

    /// Framed documents cut into rows, and framed lines packed whole, as built
    /// in memory: the ids, and each token's document within its row.
    #[test]
    fn document_rows_equal_their_in_memory_reference() {
        let docs: Vec<Vec<Vec<u32>>> = vec![
            vec![vec![10, 11, 12], vec![], vec![13]],
            vec![],
            vec![(20..45).collect()],
            vec![vec![50]],
            vec![vec![60, 61], vec![62, 63, 64, 65, 66, 67, 68]],
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), Width::U16, &docs, &[]);
        let (cls, sep) = (2i64, 3i64);
        for max_seq_len in [3, 4, 8, 9, 40, 64] {
            // Framed documents: one stream, cut every max_seq_len.
            let mut stream: Vec<(i64, usize)> = Vec::new();
            for (k, doc) in docs.iter().enumerate() {
                stream.push((cls, k));
                stream.extend(doc.iter().flatten().map(|&t| (t as i64, k)));
                stream.push((sep, k));
            }
            let want: Vec<&[(i64, usize)]> = stream.chunks_exact(max_seq_len).collect();
            let ex = Examples::new(store.train.clone(), ExampleMode::Packed, max_seq_len, true, &vocab());
            assert_eq!(ex.len(), want.len(), "max_seq_len {max_seq_len}");
            for (i, row) in want.iter().enumerate() {
                assert_eq!(ex.ids(i), row.iter().map(|x| x.0).collect::<Vec<_>>(), "framed documents, max_seq_len {max_seq_len}, row {i}");
                let first = row[0].1;
                let within: Vec<i64> = row.iter().map(|x| (x.1 - first) as i64).collect();
                // Documents numbered from 0 in the row; an empty document still counts.
                let got = ex.documents(i).unwrap();
                assert_eq!(got.len(), max_seq_len);
                assert!(got.windows(2).all(|w| w[1] >= w[0]));
                let changes = |v: &[i64]| v.windows(2).map(|w| w[0] != w[1]).collect::<Vec<_>>();
                assert_eq!(changes(&got), changes(&within), "row {i}");
                assert_eq!(*ex.documents_of(i).start(), first);
                assert_eq!(ex.example_len(i), max_seq_len);
            }
            // Framed lines, packed whole.
            let lines = line_reference(&docs, 2, 3, max_seq_len);
            let mut rows: Vec<Vec<Vec<u32>>> = vec![];
            for line in lines {
                match rows.last_mut() {
                    Some(r) if r.iter().map(Vec::len).sum::<usize>() + line.len() <= max_seq_len => r.push(line),
                    _ => rows.push(vec![line]),
                }
            }
            let ex = Examples::new(store.train.clone(), ExampleMode::LineByLine, max_seq_len, true, &vocab());
            assert_eq!(ex.len(), rows.len(), "packed lines, max_seq_len {max_seq_len}");
            for (i, row) in rows.iter().enumerate() {
                let ids: Vec<i64> = row.iter().flatten().map(|&t| t as i64).collect();
                assert_eq!(ex.ids(i), ids, "packed lines, max_seq_len {max_seq_len}, row {i}");
                let docs: Vec<i64> = row.iter().enumerate().flat_map(|(k, l)| std::iter::repeat_n(k as i64, l.len())).collect();
                assert_eq!(ex.documents(i).unwrap(), docs);
                assert_eq!(ex.example_len(i), ids.len());
            }
            assert_eq!(ex.num_tokens(), rows.iter().flatten().map(Vec::len).sum::<usize>());
        }
    }
}
