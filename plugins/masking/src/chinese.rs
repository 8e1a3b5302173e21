//! `chinese_whole_word`: whole-word masking for Chinese BERT (bert-base-chinese).
//!
//! Its WordPiece vocabulary splits Chinese text into single characters, so
//! `##` pieces say nothing about Chinese words. Runs of Chinese characters are
//! segmented into words with jieba (as the Chinese BERT-wwm models were
//! trained), and each word is masked as a unit; everything else falls back to
//! WordPiece words.

use std::sync::Arc;

use anyhow::Result;
use jieba_rs::Jieba;

use runner_api::{MaskedSequence, Masker, MaskingRates, RngCore, VocabInfo};

use crate::words::{mask_each_word, Corrupter};

/// CJK unified ideographs (and extensions, compatibility ideographs).
fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

pub struct ChineseWholeWordMasker {
    corrupter: Corrupter,
    vocab: VocabInfo,
    jieba: Arc<Jieba>,
    /// `cjk[id]`: the token is one Chinese character (possibly as a `##` piece).
    cjk: Vec<Option<char>>,
}

impl ChineseWholeWordMasker {
    pub fn new(rates: MaskingRates, vocab: &VocabInfo) -> Result<Self> {
        let cjk = vocab
            .tokens
            .iter()
            .map(|t| {
                let mut chars = vocab.word_marks.bare(t).chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if is_cjk(c) => Some(c),
                    _ => None,
                }
            })
            .collect();
        Ok(ChineseWholeWordMasker { corrupter: Corrupter::new(rates, vocab)?, vocab: vocab.clone(), jieba: Arc::new(Jieba::new()), cjk })
    }

    /// Word ranges: jieba words over runs of Chinese characters, WordPiece words elsewhere.
    pub fn words(&self, ids: &[i64]) -> Vec<(usize, usize)> {
        let base = self.vocab.words(ids);
        let char_of = |i: usize| self.cjk.get(ids[i] as usize).copied().flatten();
        let mut out = Vec::with_capacity(base.len());
        let mut k = 0;
        while k < base.len() {
            let (s, e) = base[k];
            if e - s != 1 || char_of(s).is_none() {
                out.push((s, e));
                k += 1;
                continue;
            }
            // A run of adjacent one-character Chinese tokens.
            let mut run_end = k;
            while run_end < base.len() && base[run_end].1 - base[run_end].0 == 1 && char_of(base[run_end].0).is_some()
                && (run_end == k || base[run_end].0 == base[run_end - 1].1)
            {
                run_end += 1;
            }
            let first = base[k].0;
            let text: String = (k..run_end).map(|j| char_of(base[j].0).expect("checked above")).collect();
            for token in self.jieba.cut(&text, false) {
                out.push((first + token.start, first + token.end));
            }
            k = run_end;
        }
        out
    }
}

impl Masker for ChineseWholeWordMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        Ok(mask_each_word(ids, &self.words(ids), &self.corrupter, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use runner_api::IGNORE_INDEX;

    fn vocab() -> VocabInfo {
        let mut tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].iter().map(|s| s.to_string()).collect();
        tokens.extend("我爱北京天安门。".chars().map(String::from));
        tokens.extend(["bert", "##ology"].iter().map(|s| s.to_string()));
        crate::test_vocab(tokens)
    }

    fn ids(v: &VocabInfo, tokens: &[&str]) -> Vec<i64> {
        tokens.iter().map(|t| v.tokens.iter().position(|x| x == t).unwrap() as i64).collect()
    }

    #[test]
    fn chinese_words_come_from_jieba_and_stay_whole() {
        let v = vocab();
        let m = ChineseWholeWordMasker::new(MaskingRates { rate: 0.5, mask_token: 1.0, random_token: 0.0 }, &v).unwrap();
        let seq = ids(&v, &["[CLS]", "我", "爱", "北", "京", "天", "安", "门", "。", "bert", "##ology", "[SEP]"]);
        // 我 / 爱 / 北京 / 天安门 / 。 / bertology
        assert_eq!(m.words(&seq), vec![(1, 2), (2, 3), (3, 5), (5, 8), (8, 9), (9, 11)]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut seen_partial = false;
        for _ in 0..200 {
            let out = m.mask(&seq, &mut rng).unwrap();
            for (s, e) in m.words(&seq) {
                let chosen: Vec<bool> = (s..e).map(|i| out.labels[i] != IGNORE_INDEX).collect();
                seen_partial |= chosen.iter().any(|&c| c) && !chosen.iter().all(|&c| c);
            }
            assert_eq!(out.labels[0], IGNORE_INDEX);
        }
        assert!(!seen_partial, "a Chinese word was split");
    }

    #[test]
    fn realised_rate_is_the_asked_rate_over_a_million_tokens() {
        use rand::Rng;
        let v = vocab();
        let m = ChineseWholeWordMasker::new(MaskingRates { rate: 0.15, mask_token: 0.8, random_token: 0.1 }, &v).unwrap();
        let (mut rng, mut data) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(2));
        let (mut tokens, mut chosen) = (0usize, 0usize);
        while tokens < 1_000_000 {
            let mut seq = vec![2i64];
            seq.extend((0..126).map(|_| data.random_range(5..v.vocab_size as i64)));
            seq.push(3);
            let out = m.mask(&seq, &mut rng).unwrap();
            assert_eq!((out.labels[0], out.labels[127]), (IGNORE_INDEX, IGNORE_INDEX));
            tokens += 126;
            chosen += out.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        }
        let realised = 100.0 * chosen as f64 / tokens as f64;
        assert!((realised - 15.0).abs() < 0.5, "realised {realised:.2}%");
    }
}
