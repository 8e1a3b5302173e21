//! The WordPiece tokenizer from a checkpoint's `tokenizer.json`, and what the
//! masker needs to know about its vocabulary.

use std::path::Path;

use anyhow::Result;
use tokenizers::Tokenizer;

use runner_api::{Tokenize, VocabInfo};

use crate::error::user_msg;

/// Loads `tokenizer.json` with truncation and padding turned off: examples are
/// cut and padded by the data pipeline, not by the tokenizer.
pub fn load(path: &Path) -> Result<Tokenizer> {
    let mut tok = Tokenizer::from_file(path)
        .map_err(|e| user_msg(format!("{}: cannot load tokenizer: {e}", path.display())))?;
    tok.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    tok.with_padding(None);
    Ok(tok)
}

/// Vocabulary facts: special ids, `[MASK]`, WordPiece continuations.
pub fn vocab_info(tok: &Tokenizer, path: &Path) -> Result<VocabInfo> {
    let id = |t: &str| {
        tok.token_to_id(t)
            .map(i64::from)
            .ok_or_else(|| user_msg(format!("{}: the vocabulary has no {t} token (a BERT WordPiece tokenizer is expected)", path.display())))
    };
    let vocab_size = tok.get_vocab_size(true);
    let mut is_special = vec![false; vocab_size];
    for (id, added) in tok.get_added_tokens_decoder() {
        if added.special && (id as usize) < vocab_size {
            is_special[id as usize] = true;
        }
    }
    let (mask_id, pad_id, cls_id, sep_id) = (id("[MASK]")?, id("[PAD]")?, id("[CLS]")?, id("[SEP]")?);
    for s in [mask_id, pad_id, cls_id, sep_id] {
        is_special[s as usize] = true;
    }
    if let Some(unk) = tok.token_to_id("[UNK]") {
        is_special[unk as usize] = true;
    }
    let mut is_continuation = vec![false; vocab_size];
    let mut tokens = vec![String::new(); vocab_size];
    for (token, id) in tok.get_vocab(true) {
        if (id as usize) < vocab_size {
            is_continuation[id as usize] = token.starts_with("##");
            tokens[id as usize] = token;
        }
    }
    Ok(VocabInfo { vocab_size, mask_id, pad_id, cls_id, sep_id, is_special, is_continuation, tokens })
}

/// The tokenizer as metrics see it ([`Tokenize`]): ids without special tokens.
pub struct Encoder<'a>(pub &'a Tokenizer);

impl Tokenize for Encoder<'_> {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.0.encode(text, false).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }
}
