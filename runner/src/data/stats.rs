//! `runner data stats`: what a token store holds, as a table: documents,
//! lines, tokens, the examples a recipe makes of them, and how long documents
//! and lines are (a histogram in powers of two).

use std::fmt::Write;

use super::examples::Examples;
use super::store::{Split, Store};

/// Counts of lengths in buckets `[0, 1]`, `2..=3`, `4..=7`, ... (bucket `b` holds `2^b..2^(b+1)`).
#[derive(Debug, Default, PartialEq)]
pub struct Histogram(pub Vec<u64>);

impl Histogram {
    pub fn add(&mut self, len: u64) {
        let b = (64 - len.leading_zeros()).saturating_sub(1) as usize;
        if self.0.len() <= b {
            self.0.resize(b + 1, 0);
        }
        self.0[b] += 1;
    }

    /// One row per non-empty bucket: range, count, a bar.
    fn render(&self, out: &mut String) {
        let max = self.0.iter().copied().max().unwrap_or(0).max(1);
        for (b, &n) in self.0.iter().enumerate().filter(|(_, n)| **n > 0) {
            let (lo, hi) = (if b == 0 { 0 } else { 1u64 << b }, (1u64 << (b + 1)) - 1);
            let bar = "#".repeat(((n as f64 / max as f64) * 40.0).ceil() as usize);
            let _ = writeln!(out, "    {lo:>7} - {hi:<7} {n:>10}  {bar}");
        }
    }
}

/// Document and line lengths of a split, in tokens.
pub fn histograms(split: &Split) -> (Histogram, Histogram) {
    let (mut docs, mut lines) = (Histogram::default(), Histogram::default());
    for k in 0..split.documents() {
        docs.add(split.doc_token_start(k + 1) - split.doc_token_start(k));
    }
    for i in 0..split.lines() {
        lines.add(split.line_start(i + 1) - split.line_start(i));
    }
    (docs, lines)
}

/// The report `runner data stats` prints.
pub fn report(store: &Store, train: &Examples, eval: &Examples, describe_examples: &str) -> String {
    let m = &store.manifest;
    let mut out = String::new();
    let _ = writeln!(out, "token store {} ({:.1} MB, {}-bit token ids)", store.dir.display(), m.size() as f64 / 1e6, 8 * m.width.bytes());
    for s in &m.sources {
        let _ = writeln!(out, "  from {s}");
    }
    let _ = writeln!(out, "  text: {:.1} MB", m.text_bytes as f64 / 1e6);
    for (name, split, examples) in [("train", &store.train, train), ("eval", &store.eval, eval)] {
        let c = split.counts;
        let _ = writeln!(out, "{name}: {} documents, {} lines, {} tokens; {} {describe_examples}", c.documents, c.lines, c.tokens, examples.len());
        let (docs, lines) = histograms(split);
        let _ = writeln!(out, "  document length (tokens):");
        docs.render(&mut out);
        let _ = writeln!(out, "  line length (tokens):");
        lines.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_fall_in_power_of_two_buckets() {
        let mut h = Histogram::default();
        for len in [0, 1, 2, 3, 4, 7, 8, 128, 255, 256] {
            h.add(len);
        }
        assert_eq!(h.0, vec![2, 2, 2, 1, 0, 0, 0, 2, 1]);
    }
}
