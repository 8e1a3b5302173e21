//! The `text` dataset: plain text files, or a directory of them. The `parquet`
//! dataset (a text column of parquet files) is in [`parquet`].
//!
//! One example per line, as the classic BERT scripts take them; blank lines are
//! skipped. Where documents end is chosen by `documents`:
//! - `blank_line` (default): a blank line ends a document (the format of BERT's
//!   `create_pretraining_data.py`);
//! - `file`: each file is one document;
//! - `line`: each line is one document.
//!
//! The `jsonl` dataset (JSON Lines with a named text field) is in `jsonl.rs`.

pub mod jsonl;

pub mod parquet;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use runner_api::{parse_options, Component, Dataset, Document, Factory, Options, ParamDoc, Registrar};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentBoundary {
    #[default]
    BlankLine,
    File,
    Line,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextOptions {
    #[serde(default)]
    pub documents: DocumentBoundary,
    /// In a directory, read only files whose name ends with this (e.g. `.txt`).
    #[serde(default)]
    pub suffix: Option<String>,
}

/// `path` itself if it is a file; else every file below it whose name ends
/// with `suffix` (hidden entries skipped), sorted. `what` names them in errors.
pub fn list_files(path: &Path, suffix: Option<&str>, what: &str) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("{}: no such file or directory", path.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries {
            let p = entry?.path();
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if suffix.is_none_or(|s| p.to_string_lossy().ends_with(s)) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        bail!("{}: no {what} found{}", path.display(), suffix.map(|s| format!(" ending with `{s}`")).unwrap_or_default());
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct TextDataset {
    opts: TextOptions,
}

impl TextDataset {
    pub fn new(opts: TextOptions) -> Self {
        TextDataset { opts }
    }

    /// Files under `path` in a stable (sorted) order.
    pub fn files(&self, path: &Path) -> Result<Vec<PathBuf>> {
        list_files(path, self.opts.suffix.as_deref(), "text files")
    }

    /// Splits one file's text into documents.
    pub fn split(&self, text: &str) -> Vec<Document> {
        let mut docs = Vec::new();
        let mut doc: Document = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                if self.opts.documents == DocumentBoundary::BlankLine && !doc.is_empty() {
                    docs.push(std::mem::take(&mut doc));
                }
                continue;
            }
            doc.push(line.to_string());
            if self.opts.documents == DocumentBoundary::Line {
                docs.push(std::mem::take(&mut doc));
            }
        }
        if !doc.is_empty() {
            docs.push(doc);
        }
        docs
    }
}

impl Dataset for TextDataset {
    fn read(&self, path: &Path) -> Result<Vec<Document>> {
        let mut docs = Vec::new();
        for file in self.files(path)? {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let text = String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", file.display(), e.utf8_error().valid_up_to())
            })?;
            docs.extend(self.split(&text));
        }
        Ok(docs)
    }
}

fn build(options: &Options) -> Result<Box<dyn Dataset>> {
    Ok(Box::new(TextDataset::new(parse_options(options)?)))
}

runner_api::declare_plugin!("text", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    r.add(Component {
        name: "text",
        doc: "plain text: one example per line, blank lines skipped; a file or a directory of files",
        params: vec![
            ParamDoc { name: "documents", default: "blank_line", doc: "where documents end: blank_line, file or line" },
            ParamDoc { name: "suffix", default: "(any)", doc: "in a directory, read only files whose name ends with this" },
        ],
        check: |o| parse_options::<TextOptions>(o).map(|_| ()),
        factory: Factory::Dataset(build),
    });
    r.add(Component {
        name: "jsonl",
        doc: "JSON Lines: one document per record, its text from a named field",
        params: vec![
            ParamDoc { name: "text_field", default: "text", doc: "the field holding the text" },
            ParamDoc { name: "suffix", default: ".jsonl", doc: "in a directory, read only files ending with this" },
        ],
        check: |o| parse_options::<jsonl::JsonlOptions>(o).map(|_| ()),
        factory: Factory::Dataset(|o| Ok(Box::new(jsonl::JsonlDataset { opts: parse_options(o)? }))),
    });
    parquet::register(r);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_end_documents_and_are_skipped() {
        let ds = TextDataset::new(TextOptions::default());
        let docs = ds.split("a b\n  c  \n\n\n d\n\ne\n");
        assert_eq!(docs, vec![vec!["a b".to_string(), "c".into()], vec!["d".into()], vec!["e".into()]]);
        let per_file = TextDataset::new(TextOptions { documents: DocumentBoundary::File, suffix: None });
        assert_eq!(per_file.split("a\n\nb\n"), vec![vec!["a".to_string(), "b".into()]]);
    }

    #[test]
    fn directory_is_read_in_sorted_order_with_suffix_filter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), "two\n").unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\n").unwrap();
        std::fs::write(dir.path().join("c.bin"), "skip\n").unwrap();
        let ds = TextDataset::new(TextOptions { documents: DocumentBoundary::File, suffix: Some(".txt".into()) });
        let docs = ds.read(dir.path()).unwrap();
        assert_eq!(docs, vec![vec!["one".to_string()], vec!["two".to_string()]]);
        let err = ds.read(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
