//! The `jsonl` dataset: JSON Lines files (or a directory of them), one record
//! per line, one document per record, the text taken from a named field.
//! Lines within the text become the document's lines; blank ones are skipped.

use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use runner_api::{Dataset, Document, Documents};

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

impl JsonlDataset {
    /// One record's document (`None` when its text has no non-blank line).
    fn document(&self, file: &Path, n: usize, line: &str) -> Result<Option<Document>> {
        // A UTF-8 byte-order mark (as some editors write) before the first record.
        let line = if n == 1 { line.strip_prefix('\u{feff}').unwrap_or(line) } else { line };
        let record: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{n}: not a JSON object", file.display()))?;
        let Some(field) = record.get(&self.opts.text_field) else {
            bail!("{}:{n}: no `{}` field (set data.options.text_field)", file.display(), self.opts.text_field);
        };
        let Some(body) = field.as_str() else {
            bail!("{}:{n}: `{}` is not a string", file.display(), self.opts.text_field);
        };
        let doc: Document = body.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        Ok((!doc.is_empty()).then_some(doc))
    }
}

impl Dataset for JsonlDataset {
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let lister = TextDataset::new(TextOptions { documents: DocumentBoundary::File, suffix: Some(self.opts.suffix.clone()) });
        let files = lister.files(path)?;
        // One record in memory at a time: files are read line by line.
        let records = files.into_iter().flat_map(|file| {
            let lines: Box<dyn Iterator<Item = Result<(usize, String)>> + Send> = match std::fs::File::open(&file) {
                Ok(f) => {
                    let name = file.clone();
                    Box::new(BufReader::with_capacity(1 << 20, f).lines().enumerate().map(move |(n, l)| {
                        l.map(|l| (n + 1, l)).with_context(|| format!("{}:{}: cannot read as UTF-8 text", name.display(), n + 1))
                    }))
                }
                Err(e) => Box::new(std::iter::once(Err(anyhow::Error::new(e).context(format!("cannot read {}", file.display()))))),
            };
            lines.map(move |l| l.map(|(n, line)| (file.clone(), n, line)))
        });
        let docs = records.filter_map(move |r| match r {
            Ok((file, n, line)) if !line.trim().is_empty() => self.document(&file, n, &line).transpose(),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        });
        Ok(Box::new(StopAtError { inner: docs, failed: false }))
    }
}

/// Ends a stream after its first error.
pub struct StopAtError<I> {
    pub inner: I,
    pub failed: bool,
}

impl<I: Iterator<Item = Result<Document>>> Iterator for StopAtError<I> {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Result<Document>> {
        if self.failed {
            return None;
        }
        let item = self.inner.next();
        self.failed = matches!(item, Some(Err(_)));
        item
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
        let docs: Vec<Document> = ds.read(&f).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(docs, vec![vec!["one".to_string(), "two".into()], vec!["three".into()]]);
        let ds = JsonlDataset { opts: JsonlOptions { text_field: "text".into(), suffix: ".jsonl".into() } };
        let mut docs = ds.read(&f).unwrap();
        let err = docs.next().unwrap().unwrap_err().to_string();
        assert!(docs.next().is_none(), "the stream ends at its first error");
        assert!(err.contains("a.jsonl:1: no `text` field"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_before_the_first_record_is_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bom.jsonl");
        std::fs::write(&f, "\u{feff}{\"text\": \"one\"}\n{\"text\": \"two\"}\n").unwrap();
        let ds = JsonlDataset { opts: JsonlOptions { text_field: "text".into(), suffix: ".jsonl".into() } };
        let docs: Vec<Document> = ds.read(&f).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(docs, vec![vec!["one".to_string()], vec!["two".to_string()]]);
    }
}
