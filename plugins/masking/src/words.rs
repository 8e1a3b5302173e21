//! Word-level masking: `whole_word` and `span` (SpanBERT).
//!
//! Words are the tokenizer's own ([`VocabInfo::words`]): WordPiece `##`
//! continuations, SentencePiece `▁` and byte-level `Ġ` word starts alike.
//! Both strategies choose whole words, and decide `[MASK]` / random / unchanged
//! once per chosen word or span, so a word is never left half hidden (the
//! transformers whole-word collator decides per token, which leaks the rest of
//! a word through its unmasked pieces).

use anyhow::{bail, Result};
use rand::Rng;
use serde::Deserialize;

use runner_api::{MaskedSequence, Masker, MaskingRates, RngCore, VocabInfo, IGNORE_INDEX};

use crate::check_rates;


/// Shared state of the word-level maskers.
pub(crate) struct Corrupter {
    rates: MaskingRates,
    mask_id: i64,
    replacements: Vec<i64>,
}

impl Corrupter {
    pub(crate) fn new(rates: MaskingRates, vocab: &VocabInfo) -> Result<Self> {
        check_rates(&rates)?;
        let replacements = vocab.replacement_ids();
        if replacements.is_empty() {
            bail!("the vocabulary has no non-special token to draw random replacements from");
        }
        Ok(Corrupter { rates, mask_id: vocab.mask_id, replacements })
    }

    /// Labels and corrupts tokens `range`, with one decision for all of them.
    pub(crate) fn apply(&self, range: std::ops::Range<usize>, out: &mut MaskedSequence, rng: &mut dyn RngCore) {
        let r: f64 = rng.random();
        for i in range {
            out.labels[i] = out.input_ids[i];
            if r < self.rates.mask_token {
                out.input_ids[i] = self.mask_id;
            } else if r < self.rates.mask_token + self.rates.random_token {
                out.input_ids[i] = self.replacements[rng.random_range(0..self.replacements.len())];
            }
        }
    }
}

fn unmasked(ids: &[i64]) -> MaskedSequence {
    MaskedSequence { input_ids: ids.to_vec(), labels: vec![IGNORE_INDEX; ids.len()] }
}

/// Whole-word masking: each word is chosen with probability `rate`, so the
/// expected share of chosen tokens is `rate` whatever the word lengths.
pub struct WholeWordMasker {
    corrupter: Corrupter,
    vocab: VocabInfo,
}

impl WholeWordMasker {
    pub fn new(rates: MaskingRates, vocab: &VocabInfo) -> Result<Self> {
        Ok(WholeWordMasker { corrupter: Corrupter::new(rates, vocab)?, vocab: vocab.clone() })
    }
}

impl Masker for WholeWordMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        Ok(mask_each_word(ids, &self.vocab.words(ids), &self.corrupter, rng))
    }
}

/// Chooses each word with probability `rate` and corrupts it as one unit.
pub(crate) fn mask_each_word(ids: &[i64], words: &[(usize, usize)], c: &Corrupter, rng: &mut dyn RngCore) -> MaskedSequence {
    let mut out = unmasked(ids);
    for &(start, end) in words {
        if rng.random::<f64>() < c.rates.rate {
            c.apply(start..end, &mut out, rng);
        }
    }
    out
}

/// `masking.options` of `span`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpanOptions {
    /// Parameter of the geometric span-length distribution (in words).
    #[serde(default = "default_p")]
    pub p: f64,
    /// Longest span, in words.
    #[serde(default = "default_max_words")]
    pub max_words: usize,
}

fn default_p() -> f64 {
    0.2
}
fn default_max_words() -> usize {
    10
}

impl SpanOptions {
    pub fn check(&self) -> Result<()> {
        if !(self.p > 0.0 && self.p <= 1.0) {
            bail!("p must be in (0, 1], got {}", self.p);
        }
        if self.max_words == 0 {
            bail!("max_words must be positive");
        }
        Ok(())
    }

    /// A span length in words: Geometric(p) on 1, 2, ..., clipped at `max_words`.
    pub fn sample_len(&self, rng: &mut dyn RngCore) -> usize {
        let mut len = 1;
        while len < self.max_words && rng.random::<f64>() >= self.p {
            len += 1;
        }
        len
    }
}

/// SpanBERT masking (Joshi et al., 2020): spans of whole words with
/// geometric lengths are chosen until `rate` of the tokens are; each span is
/// corrupted as one unit.
pub struct SpanMasker {
    corrupter: Corrupter,
    vocab: VocabInfo,
    opts: SpanOptions,
}

impl SpanMasker {
    pub fn new(rates: MaskingRates, vocab: &VocabInfo, opts: SpanOptions) -> Result<Self> {
        opts.check()?;
        Ok(SpanMasker { corrupter: Corrupter::new(rates, vocab)?, vocab: vocab.clone(), opts })
    }
}

impl Masker for SpanMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        let mut out = unmasked(ids);
        let words = self.vocab.words(ids);
        let tokens: usize = words.iter().map(|(s, e)| e - s).sum();
        // Stochastic rounding keeps the expected budget at exactly rate * tokens.
        let exact = self.corrupter.rates.rate * tokens as f64;
        let mut budget = exact.floor() as usize + usize::from(rng.random::<f64>() < exact.fract());
        let mut taken = vec![false; words.len()];
        let mut misses = 0;
        while budget > 0 && misses < 4 * words.len().max(1) {
            let want = self.opts.sample_len(rng);
            let first = rng.random_range(0..words.len());
            // Grow the span word by word while it stays free and within budget.
            let mut last = first;
            let mut size = 0;
            while last < words.len() && last - first < want && !taken[last] {
                let len = words[last].1 - words[last].0;
                if size + len > budget {
                    break;
                }
                size += len;
                last += 1;
            }
            if size == 0 {
                misses += 1;
                continue;
            }
            for t in &mut taken[first..last] {
                *t = true;
            }
            self.corrupter.apply(words[first].0..words[last - 1].1, &mut out, rng);
            budget -= size;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// ids 0..5 special, 5..500 word starts, 500..1000 `##` continuations.
    fn vocab() -> VocabInfo {
        crate::test_vocab((0..1000).map(|i| if i >= 500 { format!("##t{i}") } else { format!("t{i}") }).collect())
    }

    /// `[CLS]` then words of 1 to 4 pieces up to 126 tokens, then `[SEP]`.
    fn sequence(rng: &mut ChaCha8Rng) -> Vec<i64> {
        let mut ids = vec![2i64];
        while ids.len() < 127 {
            ids.push(rng.random_range(5..500));
            for _ in 0..rng.random_range(0..4) {
                if ids.len() < 127 {
                    ids.push(rng.random_range(500..1000));
                }
            }
        }
        ids.push(3);
        ids
    }

    fn rates(rate: f64) -> MaskingRates {
        MaskingRates { rate, mask_token: 0.8, random_token: 0.1 }
    }

    /// Masks 1M tokens; checks the realised rate, specials, and whole words.
    fn check_strategy(masker: &dyn Masker, rate: f64, whole_words: bool) {
        let v = vocab();
        let (mut rng, mut data) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(2));
        let (mut tokens, mut chosen) = (0usize, 0usize);
        while tokens < 1_000_000 {
            let ids = sequence(&mut data);
            let out = masker.mask(&ids, &mut rng).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                if v.is_special[id as usize] {
                    assert_eq!((out.input_ids[i], out.labels[i]), (id, IGNORE_INDEX), "a special token was touched");
                } else {
                    tokens += 1;
                    chosen += usize::from(out.labels[i] != IGNORE_INDEX);
                }
            }
            if whole_words {
                for (s, e) in v.words(&ids) {
                    let labelled: Vec<bool> = (s..e).map(|i| out.labels[i] != IGNORE_INDEX).collect();
                    assert!(labelled.iter().all(|&l| l == labelled[0]), "a word was split: {:?}", &ids[s..e]);
                    let masked: Vec<bool> = (s..e).map(|i| out.input_ids[i] == v.mask_id).collect();
                    assert!(masked.iter().all(|&m| m == masked[0]), "a word was half [MASK]ed");
                }
            }
        }
        let realised = 100.0 * chosen as f64 / tokens as f64;
        assert!((realised - 100.0 * rate).abs() < 0.5, "asked {}%, realised {realised:.2}%", 100.0 * rate);
    }

    #[test]
    fn whole_word_masking_keeps_words_whole_at_the_asked_rate() {
        for rate in [0.15, 0.4] {
            check_strategy(&WholeWordMasker::new(rates(rate), &vocab()).unwrap(), rate, true);
        }
    }

    #[test]
    fn span_masking_keeps_words_whole_at_the_asked_rate() {
        let opts = SpanOptions { p: 0.2, max_words: 10 };
        for rate in [0.15, 0.3] {
            check_strategy(&SpanMasker::new(rates(rate), &vocab(), opts.clone()).unwrap(), rate, true);
        }
    }

    #[test]
    fn bert_token_masking_is_at_the_asked_rate() {
        check_strategy(&crate::TokenMasker::new(rates(0.3), &vocab()).unwrap(), 0.3, false);
    }

    #[test]
    fn span_lengths_follow_the_clipped_geometric_distribution() {
        let opts = SpanOptions { p: 0.2, max_words: 10 };
        // E[min(L, 10)] for L ~ Geometric(0.2) on {1, 2, ...}: sum of P(L >= k) for k = 1..10.
        let theory: f64 = (1..=10).map(|k| 0.8f64.powi(k - 1)).sum();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 100_000;
        let lens: Vec<usize> = (0..n).map(|_| opts.sample_len(&mut rng)).collect();
        let mean = lens.iter().sum::<usize>() as f64 / n as f64;
        assert!((mean / theory - 1.0).abs() < 0.05, "mean {mean}, theory {theory}");
        assert!(lens.iter().all(|&l| (1..=10).contains(&l)));
        let ones = lens.iter().filter(|&&l| l == 1).count() as f64 / n as f64;
        assert!((ones - 0.2).abs() < 0.01, "P(L = 1) = {ones}");
    }
}
