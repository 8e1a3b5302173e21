//! A checkpoint's tokenizer (`tokenizer.json`, any kind: WordPiece, byte-level
//! BPE, SentencePiece) and what the masker needs to know about its vocabulary:
//! the special tokens, named by the tokenizer's own files, and how its pieces
//! mark word boundaries; [`ids`]: a text's ids, a long text a piece at a time.

use std::path::Path;

use anyhow::Result;
use serde_json::Value;
use tokenizers::models::ModelWrapper;
use tokenizers::Tokenizer;

use rayon::prelude::*;
use runner_api::text::{self, PIECE_BYTES};
use runner_api::{SpecialIds, Tokenize, VocabInfo, WordMarks};

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

/// The files beside `tokenizer.json` that name its special tokens, in the
/// order `transformers` reads them (a later one wins).
const SPECIAL_TOKEN_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// A special token's role: the keys that name it in those files, and the
/// names it has in the vocabularies of the known families when no file does.
struct Role {
    what: &'static str,
    keys: &'static [&'static str],
    known: &'static [&'static str],
}

const MASK: Role = Role { what: "mask", keys: &["mask_token"], known: &["[MASK]", "<mask>"] };
const PAD: Role = Role { what: "padding", keys: &["pad_token"], known: &["[PAD]", "<pad>"] };
const CLS: Role = Role { what: "start", keys: &["cls_token", "bos_token"], known: &["[CLS]", "<s>"] };
const SEP: Role = Role { what: "end", keys: &["sep_token", "eos_token"], known: &["[SEP]", "</s>"] };
const UNK: Role = Role { what: "unknown", keys: &["unk_token"], known: &["[UNK]", "<unk>"] };

/// Vocabulary facts: the special tokens and the word marks.
///
/// A special token is found, in this order: in `tokenizer_config.json` /
/// `special_tokens_map.json` beside `path` (`mask_token`, `pad_token`,
/// `cls_token` or `bos_token`, `sep_token` or `eos_token`), in the
/// post-processor's template (start and end), or by the names the BERT and
/// RoBERTa families give it. A tokenizer without a mask, padding, start or end
/// token cannot frame or mask examples and is refused with the key to set.
pub fn vocab_info(tok: &Tokenizer, path: &Path) -> Result<VocabInfo> {
    let json = structure(tok)?;
    let named = named_special_tokens(path)?;
    let template = template_ends(&json);
    let find = |role: &Role, from_template: Option<&String>| -> Result<Option<i64>> {
        if let Some((file, token)) = role.keys.iter().find_map(|k| named.iter().rev().find_map(|(f, m)| m.get(*k).map(|t| (f, t)))) {
            return match tok.token_to_id(token) {
                Some(id) => Ok(Some(i64::from(id))),
                None => Err(user_msg(format!(
                    "{}: its {} token `{token}` is not in the vocabulary of {}",
                    file.display(),
                    role.what,
                    path.display()
                ))),
            };
        }
        let candidates = from_template.into_iter().map(String::as_str).chain(role.known.iter().copied());
        Ok(candidates.filter_map(|t| tok.token_to_id(t)).map(i64::from).next())
    };
    let need = |role: &Role, id: Option<i64>| {
        id.ok_or_else(|| {
            user_msg(format!(
                "{}: the tokenizer has no {} token (none of {} is in its vocabulary); name it with `{}` in a tokenizer_config.json beside it",
                path.display(),
                role.what,
                role.known.join(", "),
                role.keys[0]
            ))
        })
    };
    let special = SpecialIds {
        mask: need(&MASK, find(&MASK, None)?)?,
        pad: need(&PAD, find(&PAD, None)?)?,
        cls: need(&CLS, find(&CLS, template.as_ref().map(|t| &t.0))?)?,
        sep: need(&SEP, find(&SEP, template.as_ref().map(|t| &t.1))?)?,
    };
    let vocab_size = tok.get_vocab_size(true);
    let mut also: Vec<i64> = find(&UNK, None)?.into_iter().collect();
    also.extend(tok.get_added_tokens_decoder().into_iter().filter(|(_, a)| a.special).map(|(id, _)| i64::from(id)));
    let mut tokens = vec![String::new(); vocab_size];
    for (token, id) in tok.get_vocab(true) {
        if let Some(slot) = tokens.get_mut(id as usize) {
            *slot = token;
        }
    }
    Ok(VocabInfo::new(tokens, special, &also, word_marks(&json)))
}

/// The parts of `tokenizer.json` this module reads (model type and WordPiece
/// prefix, pre-tokenizer, post-processor), without serialising the vocabulary
/// of a model that has no prefix to read (a 250k-token Unigram).
fn structure(tok: &Tokenizer) -> Result<Value> {
    let model = match tok.get_model() {
        ModelWrapper::WordPiece(wp) => serde_json::to_value(wp)?,
        ModelWrapper::BPE(_) => serde_json::json!({"type": "BPE"}),
        ModelWrapper::Unigram(_) => serde_json::json!({"type": "Unigram"}),
        ModelWrapper::WordLevel(_) => serde_json::json!({"type": "WordLevel"}),
    };
    Ok(serde_json::json!({
        "model": model,
        "pre_tokenizer": serde_json::to_value(tok.get_pre_tokenizer())?,
        "post_processor": serde_json::to_value(tok.get_post_processor())?,
    }))
}

/// The special-token names in the files beside `tokenizer`, each file with its
/// `key → token` map. A value is a string or `{"content": ...}`.
fn named_special_tokens(tokenizer: &Path) -> Result<Vec<(std::path::PathBuf, std::collections::BTreeMap<String, String>)>> {
    let dir = tokenizer.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for name in SPECIAL_TOKEN_FILES {
        let file = dir.join(name);
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| user_msg(format!("{}: not valid JSON: {e}", file.display())))?;
        let keys = [MASK, PAD, CLS, SEP, UNK].into_iter().flat_map(|r| r.keys.iter().copied());
        let map = keys
            .filter_map(|k| {
                let v = value.get(k)?;
                let token = v.as_str().or_else(|| v.get("content")?.as_str())?;
                Some((k.to_string(), token.to_string()))
            })
            .collect();
        out.push((file, map));
    }
    Ok(out)
}

/// The first and last special token of the post-processor's single-sequence
/// framing (`[CLS] $A [SEP]`, `<s> $A </s>`), if it has one.
fn template_ends(json: &Value) -> Option<(String, String)> {
    let post = json.get("post_processor")?;
    let pair = |k: &str| post.get(k)?.get(0)?.as_str().map(str::to_string);
    match post.get("type")?.as_str()? {
        "BertProcessing" | "RobertaProcessing" => Some((pair("cls")?, pair("sep")?)),
        "TemplateProcessing" => {
            let single = post.get("single")?.as_array()?;
            let special = |v: &Value| v.get("SpecialToken")?.get("id")?.as_str().map(str::to_string);
            let first = single.first().and_then(special)?;
            let last = single.last().and_then(special)?;
            Some((first, last))
        }
        _ => None,
    }
}

/// How the tokenizer's pieces mark word boundaries: WordPiece's continuation
/// prefix, a Metaspace marker, or byte-level spaces.
fn word_marks(json: &Value) -> WordMarks {
    fn pre_tokenizer_types<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        if let Some(list) = v.get("pretokenizers").and_then(Value::as_array) {
            list.iter().for_each(|p| pre_tokenizer_types(p, out));
        } else {
            out.push(v);
        }
    }
    let model = &json["model"];
    if let Some(prefix) = model.get("continuing_subword_prefix").and_then(Value::as_str).filter(|p| !p.is_empty()) {
        if model["type"] == "WordPiece" {
            return WordMarks::ContinuationPrefix(prefix.to_string());
        }
    }
    if model["type"] == "WordPiece" {
        return WordMarks::ContinuationPrefix("##".into());
    }
    let mut pre = Vec::new();
    pre_tokenizer_types(&json["pre_tokenizer"], &mut pre);
    for p in pre {
        match p.get("type").and_then(Value::as_str) {
            Some("ByteLevel") => return WordMarks::ByteLevel,
            Some("Metaspace") => {
                let marker = p.get("replacement").and_then(Value::as_str).unwrap_or("\u{2581}");
                return WordMarks::WordMarker(marker.to_string());
            }
            _ => {}
        }
    }
    WordMarks::EveryToken
}

/// The token ids of `text` without special tokens. A text longer than
/// [`PIECE_BYTES`] is tokenized a piece at a time (`runner_api::text`: cut
/// before a space, so the ids are the whole text's), in parallel, in memory
/// bounded by the piece, not the text: a corpus that is one 50 MB line took
/// over 5 GB tokenized whole.
pub fn ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    ids_in_pieces(tok, text, PIECE_BYTES)
}

fn ids_in_pieces(tok: &Tokenizer, text: &str, max: usize) -> Result<Vec<u32>> {
    let one = |piece: &str| {
        tok.encode_fast(piece, false).map(|e| e.get_ids().to_vec()).map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))
    };
    if text.len() <= max {
        return one(text);
    }
    let pieces: Vec<&str> = text::pieces(text, max).collect();
    let ids = pieces.par_iter().map(|p| one(p)).collect::<Result<Vec<_>>>()?;
    Ok(ids.concat())
}

/// The tokenizer as metrics see it ([`Tokenize`]): ids without special tokens.
pub struct Encoder<'a>(pub &'a Tokenizer);

impl Tokenize for Encoder<'_> {
    fn encode(&self, text: &str) -> Result<Vec<i64>> {
        Ok(ids(self.0, text)?.into_iter().map(i64::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped family's tokenizer gives a text cut into small pieces
    /// the ids it gives the whole text: cased and lowercased words,
    /// punctuation, digits, runs of spaces and tabs, accents, CJK, emoji.
    #[test]
    fn a_text_in_pieces_has_the_ids_of_the_whole() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let corpus = std::fs::read_to_string(fixtures.join("toy-corpus.txt")).unwrap();
        let mut text = corpus.lines().take(60).collect::<Vec<_>>().join(" ");
        text.push_str(
            "  Hello,   WORLD!\tit's 2026-12-03; don't  \t stop. Café naïve résumé — «quoted» \
             日本語のテキスト です 😀😀 x1000 antidisestablishmentarianism [MASK] <mask>  end",
        );
        for family in ["tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert"] {
            let tok = load(&fixtures.join(family).join("tokenizer.json")).unwrap();
            let whole = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            for max in [29, 64, 301] {
                assert_eq!(ids_in_pieces(&tok, &text, max).unwrap(), whole, "{family}, pieces of {max} bytes");
            }
            assert_eq!(ids(&tok, &text).unwrap(), whole, "{family}");
        }
    }
}
