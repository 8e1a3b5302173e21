//! Masking strategies:
//! - `bert`: BERT's token masking (Devlin et al., 2019), here;
//! - `whole_word` and `span` (SpanBERT), in `words.rs`;
//! - `chinese_whole_word` (jieba word segmentation), in `chinese.rs`.
//!
//! Each non-special token is chosen with probability `rate`; a chosen token
//! becomes `[MASK]` with probability `mask_token`, a random non-special token
//! with probability `random_token`, and stays unchanged otherwise. Labels hold
//! the original id at chosen positions and `IGNORE_INDEX` elsewhere.

pub mod chinese;
pub mod words;

use anyhow::{bail, Result};
use rand::Rng;

use runner_api::{
    no_options, parse_options, Component, ParamDoc, Factory, MaskedSequence, Masker, MaskingRates, Options, Registrar, RngCore,
    VocabInfo, IGNORE_INDEX,
};

/// BERT's token-level masking.
#[derive(Debug, Clone)]
pub struct TokenMasker {
    rates: MaskingRates,
    mask_id: i64,
    is_special: Vec<bool>,
    replacements: Vec<i64>,
}

impl TokenMasker {
    pub fn new(rates: MaskingRates, vocab: &VocabInfo) -> Result<Self> {
        check_rates(&rates)?;
        let replacements = vocab.replacement_ids();
        if replacements.is_empty() {
            bail!("the vocabulary has no non-special token to draw random replacements from");
        }
        Ok(TokenMasker { rates, mask_id: vocab.mask_id, is_special: vocab.is_special.clone(), replacements })
    }

    fn is_special(&self, id: i64) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(false)
    }
}

/// Corrupts one chosen token: `[MASK]`, a random token, or itself.
pub fn corrupt(
    id: i64,
    rates: &MaskingRates,
    mask_id: i64,
    replacements: &[i64],
    rng: &mut dyn RngCore,
) -> i64 {
    let r: f64 = rng.random();
    if r < rates.mask_token {
        mask_id
    } else if r < rates.mask_token + rates.random_token {
        replacements[rng.random_range(0..replacements.len())]
    } else {
        id
    }
}

/// Rejects rates that are not probabilities or whose split exceeds 1.
pub fn check_rates(r: &MaskingRates) -> Result<()> {
    for (name, v) in [("rate", r.rate), ("mask_token_rate", r.mask_token), ("random_token_rate", r.random_token)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("masking.{name} must be in [0, 1], got {v}");
        }
    }
    if r.mask_token + r.random_token > 1.0 + 1e-9 {
        bail!(
            "masking.mask_token_rate + masking.random_token_rate must be at most 1, got {} + {}",
            r.mask_token,
            r.random_token
        );
    }
    Ok(())
}

impl Masker for TokenMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for (i, &id) in ids.iter().enumerate() {
            if self.is_special(id) {
                continue;
            }
            let chosen: f64 = rng.random();
            if chosen < self.rates.rate {
                labels[i] = id;
                input_ids[i] = corrupt(id, &self.rates, self.mask_id, &self.replacements, rng);
            }
        }
        Ok(MaskedSequence { input_ids, labels })
    }
}

fn build_token(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    no_options(options)?;
    Ok(Box::new(TokenMasker::new(rates, vocab)?))
}

runner_api::declare_plugin!("masking", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "bert",
        doc: "BERT token masking: each non-special token chosen with `rate`, then [MASK]/random/unchanged",
        params: vec![],
        check: no_options,
        factory: Factory::Masker(build_token),
    });
    r.add(Component {
        name: "whole_word",
        doc: "whole-word masking: each word (with its ## pieces) chosen with `rate`, corrupted as one",
        params: vec![],
        check: no_options,
        factory: Factory::Masker(build_whole_word),
    });
    r.add(Component {
        name: "span",
        doc: "SpanBERT: spans of whole words, geometric lengths, until `rate` of the tokens are chosen",
        params: vec![
            ParamDoc { name: "p", default: "0.2", doc: "geometric distribution parameter of span lengths (words)" },
            ParamDoc { name: "max_words", default: "10", doc: "longest span, in words" },
        ],
        check: |o| parse_options::<words::SpanOptions>(o)?.check(),
        factory: Factory::Masker(build_span),
    });
    r.add(Component {
        name: "chinese_whole_word",
        doc: "whole-word masking for Chinese BERT: Chinese words found with jieba, masked as units",
        params: vec![],
        check: no_options,
        factory: Factory::Masker(build_chinese),
    });
}

fn build_chinese(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    no_options(options)?;
    Ok(Box::new(chinese::ChineseWholeWordMasker::new(rates, vocab)?))
}

fn build_whole_word(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    no_options(options)?;
    Ok(Box::new(words::WholeWordMasker::new(rates, vocab)?))
}

fn build_span(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    Ok(Box::new(words::SpanMasker::new(rates, vocab, parse_options(options)?)?))
}

/// A test vocabulary: ids 0..5 are [PAD], [UNK], [CLS], [SEP], [MASK] whatever
/// their text; a token starting with `##` continues a word.
#[cfg(test)]
pub(crate) fn test_vocab(tokens: Vec<String>) -> VocabInfo {
    let special = runner_api::SpecialIds { mask: 4, pad: 0, cls: 2, sep: 3 };
    VocabInfo::new(tokens, special, &[1], runner_api::WordMarks::ContinuationPrefix("##".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// ids 0..5 special ([PAD], [UNK], [CLS], [SEP], [MASK]); 5..1000 ordinary.
    fn vocab() -> VocabInfo {
        test_vocab((0..1000).map(|i| format!("t{i}")).collect())
    }

    /// Over 1M tokens the realised rates are within 0.5 points of the asked ones,
    /// and no special token is ever chosen or drawn as a replacement.
    #[test]
    fn bert_masking_statistics_over_a_million_tokens() {
        let v = vocab();
        let rates = MaskingRates { rate: 0.15, mask_token: 0.8, random_token: 0.1 };
        let masker = TokenMasker::new(rates, &v).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut tokens, mut chosen, mut masked, mut random, mut same) = (0usize, 0usize, 0usize, 0usize, 0usize);
        let mut seq_rng = ChaCha8Rng::seed_from_u64(8);
        while tokens < 1_000_000 {
            // [CLS] 126 ordinary tokens [SEP]
            let mut ids = vec![2i64];
            ids.extend((0..126).map(|_| seq_rng.random_range(5..1000i64)));
            ids.push(3);
            let out = masker.mask(&ids, &mut rng).unwrap();
            for (i, &id) in ids.iter().enumerate() {
                let special = v.is_special[id as usize];
                if special {
                    assert_eq!(out.labels[i], IGNORE_INDEX, "a special token was chosen");
                    assert_eq!(out.input_ids[i], id, "a special token was changed");
                    continue;
                }
                tokens += 1;
                if out.labels[i] == IGNORE_INDEX {
                    assert_eq!(out.input_ids[i], id);
                    continue;
                }
                assert_eq!(out.labels[i], id);
                chosen += 1;
                let new = out.input_ids[i];
                if new == v.mask_id {
                    masked += 1;
                } else if new == id {
                    same += 1;
                } else {
                    assert!(!v.is_special[new as usize], "random replacement drew a special token");
                    random += 1;
                }
            }
        }
        let pct = |a: usize, b: usize| 100.0 * a as f64 / b as f64;
        // A random draw equal to the original counts as unchanged: expected share 10% + 10%/995.
        let expect_same = 10.0 + 10.0 / 995.0;
        assert!((pct(chosen, tokens) - 15.0).abs() < 0.5, "chosen {}", pct(chosen, tokens));
        assert!((pct(masked, chosen) - 80.0).abs() < 0.5, "mask {}", pct(masked, chosen));
        assert!((pct(random, chosen) - (10.0 - 10.0 / 995.0)).abs() < 0.5, "random {}", pct(random, chosen));
        assert!((pct(same, chosen) - expect_same).abs() < 0.5, "same {}", pct(same, chosen));
    }

    #[test]
    fn same_seed_same_masks() {
        let v = vocab();
        let rates = MaskingRates { rate: 0.3, mask_token: 0.8, random_token: 0.1 };
        let m = TokenMasker::new(rates, &v).unwrap();
        let ids: Vec<i64> = (5..200).collect();
        let a = m.mask(&ids, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let b = m.mask(&ids, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let c = m.mask(&ids, &mut ChaCha8Rng::seed_from_u64(2)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_split_is_rejected() {
        let rates = MaskingRates { rate: 0.15, mask_token: 0.8, random_token: 0.3 };
        let err = TokenMasker::new(rates, &vocab()).unwrap_err().to_string();
        assert!(err.contains("at most 1"), "{err}");
    }
}
