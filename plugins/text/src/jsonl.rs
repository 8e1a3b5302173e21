//! The `jsonl` dataset: JSON Lines files (or a directory of them), one record
//! per line, one document per record, the text taken from a named field.
//! Lines within the text become the document's lines; blank ones are skipped.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use runner_api::{Dataset, Document};

use crate::{DocumentBoundary, TextDataset, TextOptions};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlOptions {
    /// The field holding the text.
    #[serde(default = "default_field")]
    pub text_field: String,
    /// In a directory, read only files whose name ends with this.
    #[serde(default = "default_suffix")]
    pub suffix: String,
}

fn default_field() -> String {
    "text".into()
}
fn default_suffix() -> String {
    ".jsonl".into()
}

pub struct JsonlDataset {
    pub opts: JsonlOptions,
}

impl Dataset for JsonlDataset {
    fn read(&self, path: &Path) -> Result<Vec<Document>> {
        let lister = TextDataset::new(TextOptions { documents: DocumentBoundary::File, suffix: Some(self.opts.suffix.clone()) });
        let mut docs = Vec::new();
        for file in lister.files(path)? {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {} as UTF-8", file.display()))?;
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let record: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a JSON object", file.display(), n + 1))?;
                let Some(field) = record.get(&self.opts.text_field) else {
                    bail!("{}:{}: no `{}` field (set data.options.text_field)", file.display(), n + 1, self.opts.text_field);
                };
                let Some(body) = field.as_str() else {
                    bail!("{}:{}: `{}` is not a string", file.display(), n + 1, self.opts.text_field);
                };
                let doc: Document = body.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
                if !doc.is_empty() {
                    docs.push(doc);
                }
            }
        }
        Ok(docs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_documents_and_errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.jsonl");
        std::fs::write(&f, "{\"body\": \"one\\ntwo\", \"id\": 1}\n\n{\"body\": \"three\"}\n").unwrap();
        let ds = JsonlDataset { opts: JsonlOptions { text_field: "body".into(), suffix: ".jsonl".into() } };
        assert_eq!(ds.read(&f).unwrap(), vec![vec!["one".to_string(), "two".into()], vec!["three".into()]]);
        let ds = JsonlDataset { opts: JsonlOptions { text_field: "text".into(), suffix: ".jsonl".into() } };
        let err = ds.read(&f).unwrap_err().to_string();
        assert!(err.contains("a.jsonl:1: no `text` field"), "{err}");
    }
}
