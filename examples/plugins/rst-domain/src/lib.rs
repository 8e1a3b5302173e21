//! `rst-domain`: a dataset and a masking strategy for reStructuredText documentation.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::Deserialize;

use runner_api::{
    no_options, parse_options, Component, Dataset, Document, Documents, Factory, MaskedSequence, Masker, MaskingRates, Options,
    ParamDoc, Registrar, RngCore, VocabInfo, IGNORE_INDEX,
};

runner_api::declare_plugin!("rst-domain", register);

// ---------------------------------------------------------------------------
// Dataset `rst`
// ---------------------------------------------------------------------------

struct RstDataset;

fn rst_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let p = entry?.path();
            let name = p.to_string_lossy();
            if p.is_dir() {
                stack.push(p);
            } else if name.ends_with(".rst") || name.ends_with(".rst.txt") {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no .rst or .rst.txt files", path.display());
    }
    Ok(out)
}

/// A line of section adornment: one punctuation character repeated.
fn is_adornment(line: &str) -> bool {
    let mut chars = line.chars();
    match chars.next() {
        Some(c) if c.is_ascii_punctuation() => line.len() >= 3 && chars.all(|d| d == c),
        _ => false,
    }
}

/// Drops role prefixes: ":func:`open`" -> "`open`".
fn strip_roles(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find(':') {
        let after = &rest[start + 1..];
        match after.find(":`") {
            Some(end) if end > 0 && after[..end].chars().all(|c| c.is_ascii_alphanumeric() || c == ':' || c == '-') => {
                out.push_str(&rest[..start]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..=start]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The language in one rst file, as one document.
pub fn clean(text: &str) -> Document {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(".. ") && !is_adornment(l))
        .filter(|l| !(l.starts_with(':') && l[1..].contains(": ")))
        .map(strip_roles)
        .collect()
}

impl Dataset for RstDataset {
    /// Streams one file at a time: a document is a file, so no more than one
    /// file's text is ever in memory.
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let docs = rst_files(path)?.into_iter().filter_map(|f| {
            let text = match std::fs::read_to_string(&f) {
                Ok(text) => text,
                Err(e) => return Some(Err(anyhow::Error::new(e).context(format!("cannot read {} as UTF-8", f.display())))),
            };
            let doc = clean(&text);
            (!doc.is_empty()).then_some(Ok(doc))
        });
        Ok(Box::new(docs))
    }
}

// ---------------------------------------------------------------------------
// Masking `rst-literal`
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LiteralOptions {
    /// How many times more often tokens inside ``literals`` are chosen.
    #[serde(default = "default_boost")]
    literal_boost: f64,
}

fn default_boost() -> f64 {
    2.0
}

struct LiteralMasker {
    rates: MaskingRates,
    literal_rate: f64,
    vocab: VocabInfo,
    backtick: Option<i64>,
    replacements: Vec<i64>,
}

impl Masker for LiteralMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        let mut inside = false;
        let mut i = 0;
        while i < ids.len() {
            let id = ids[i];
            // Two backticks in a row open or close an inline literal.
            if Some(id) == self.backtick && ids.get(i + 1).copied() == self.backtick {
                inside = !inside;
                i += 2;
                continue;
            }
            let rate = if inside { self.literal_rate } else { self.rates.rate };
            if !self.vocab.is_special[id as usize] && rng.random::<f64>() < rate {
                labels[i] = id;
                let r: f64 = rng.random();
                if r < self.rates.mask_token {
                    input_ids[i] = self.vocab.mask_id;
                } else if r < self.rates.mask_token + self.rates.random_token {
                    input_ids[i] = self.replacements[rng.random_range(0..self.replacements.len())];
                }
            }
            i += 1;
        }
        Ok(MaskedSequence { input_ids, labels })
    }
}

fn build_masker(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    let opts: LiteralOptions = parse_options(options)?;
    if opts.literal_boost < 1.0 {
        bail!("literal_boost must be at least 1, got {}", opts.literal_boost);
    }
    let backtick = vocab.tokens.iter().position(|t| t == "`").map(|i| i as i64);
    Ok(Box::new(LiteralMasker {
        rates,
        literal_rate: (rates.rate * opts.literal_boost).min(1.0),
        vocab: vocab.clone(),
        backtick,
        replacements: vocab.replacement_ids(),
    }))
}

fn build_dataset(options: &Options) -> Result<Box<dyn Dataset>> {
    no_options(options)?;
    Ok(Box::new(RstDataset))
}

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "rst",
        doc: "reStructuredText files (.rst, .rst.txt), one document per file, markup lines dropped",
        params: vec![],
        check: no_options,
        factory: Factory::Dataset(build_dataset),
    });
    r.add(Component {
        name: "rst-literal",
        doc: "BERT masking with ``inline literals`` chosen literal_boost times as often",
        params: vec![ParamDoc { name: "literal_boost", default: "2.0", doc: "rate multiplier inside ``...``" }],
        check: |o| parse_options::<LiteralOptions>(o).map(|_| ()),
        factory: Factory::Masker(build_masker),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_dropped_and_roles_unwrapped() {
        let doc = clean("Title\n=====\n\n.. note::\n   :maxdepth: 2\n\nCall :func:`open` to read ``x``.\n");
        assert_eq!(doc, vec!["Title".to_string(), "Call `open` to read ``x``.".to_string()]);
    }
}
