//! The `{{name}}` plugin: a dataset, `{{name}}-records`, and a masking
//! strategy, `{{name}}-long-words`, as a starting point. Add datasets, maskers,
//! models or metrics in `register`. A model family also says which
//! `config.json` `model_type`s it reads, so recipes get it from their
//! checkpoint without naming it: `r.reads_model_types("my-model", &["my_type"])`.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{Context, Result};
use rand::Rng;
use serde::Deserialize;

use runner_api::{
    no_options, parse_options, Component, Dataset, Document, Documents, Factory, MaskedSequence, Masker,
    MaskingRates, Options, ParamDoc, Registrar, RngCore, VocabInfo, IGNORE_INDEX,
};

runner_api::declare_plugin!("{{name}}", register);

/// One text file of records separated by lines holding `---`; each record is
/// a document. Corpora may be larger than memory, so documents are streamed:
/// the iterator holds one line and the record being gathered.
struct RecordsDataset;

impl Dataset for RecordsDataset {
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut lines = BufReader::new(file).lines();
        let mut record: Document = Vec::new();
        let name = path.display().to_string();
        Ok(Box::new(std::iter::from_fn(move || loop {
            match lines.next() {
                Some(Ok(line)) if line.trim() == "---" => {
                    if !record.is_empty() {
                        return Some(Ok(std::mem::take(&mut record)));
                    }
                }
                Some(Ok(line)) if line.trim().is_empty() => {}
                Some(Ok(line)) => record.push(line.trim().to_string()),
                Some(Err(e)) => return Some(Err(anyhow::Error::new(e).context(format!("cannot read {name}")))),
                None => return (!record.is_empty()).then(|| Ok(std::mem::take(&mut record))),
            }
        })))
    }
}

/// Recipe `masking.options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongWordOptions {
    /// Only tokens with at least this many characters are chosen.
    #[serde(default = "default_min_chars")]
    min_chars: usize,
}

fn default_min_chars() -> usize {
    4
}

/// BERT-style masking restricted to long tokens.
struct LongWordMasker {
    rates: MaskingRates,
    mask_id: i64,
    eligible: Vec<bool>,
    replacements: Vec<i64>,
}

impl Masker for LongWordMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        let mut input_ids = ids.to_vec();
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for (i, &id) in ids.iter().enumerate() {
            if !self.eligible[id as usize] || rng.random::<f64>() >= self.rates.rate {
                continue;
            }
            labels[i] = id;
            let r: f64 = rng.random();
            if r < self.rates.mask_token {
                input_ids[i] = self.mask_id;
            } else if r < self.rates.mask_token + self.rates.random_token {
                input_ids[i] = self.replacements[rng.random_range(0..self.replacements.len())];
            }
        }
        Ok(MaskedSequence { input_ids, labels })
    }
}

fn build(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Result<Box<dyn Masker>> {
    let opts: LongWordOptions = parse_options(options)?;
    let eligible = (0..vocab.vocab_size)
        .map(|id| !vocab.is_special[id] && vocab.word_marks.bare(&vocab.tokens[id]).chars().count() >= opts.min_chars)
        .collect();
    Ok(Box::new(LongWordMasker { rates, mask_id: vocab.mask_id, eligible, replacements: vocab.replacement_ids() }))
}

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "{{name}}-records",
        doc: "a text file of records separated by `---` lines, one document each",
        params: vec![],
        check: no_options,
        factory: Factory::Dataset(|_| Ok(Box::new(RecordsDataset))),
    });
    r.add(Component {
        name: "{{name}}-long-words",
        doc: "BERT masking of tokens with at least `min_chars` characters",
        params: vec![ParamDoc { name: "min_chars", default: "4", doc: "shortest token that may be chosen" }],
        check: |o| parse_options::<LongWordOptions>(o).map(|_| ()),
        factory: Factory::Masker(build),
    });
}
