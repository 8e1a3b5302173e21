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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use runner_api::{parse_options, Component, Dataset, Document, Documents, Factory, Options, ParamDoc, Registrar};

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
        let mut splitter = Splitter::new(self.opts.documents);
        let mut docs: Vec<Document> = text.lines().filter_map(|line| splitter.push(line)).collect();
        docs.extend(splitter.finish());
        docs
    }
}

/// Cuts a stream of lines into documents, one line at a time: lines are
/// trimmed, blank ones skipped (and, for `blank_line`, end a document).
pub struct Splitter {
    boundary: DocumentBoundary,
    doc: Document,
}

impl Splitter {
    pub fn new(boundary: DocumentBoundary) -> Self {
        Splitter { boundary, doc: Vec::new() }
    }

    /// Takes the next line; returns a document when this line ends one.
    pub fn push(&mut self, line: &str) -> Option<Document> {
        let line = line.trim();
        if line.is_empty() {
            let ends = self.boundary == DocumentBoundary::BlankLine && !self.doc.is_empty();
            return ends.then(|| std::mem::take(&mut self.doc));
        }
        self.doc.push(line.to_string());
        (self.boundary == DocumentBoundary::Line).then(|| std::mem::take(&mut self.doc))
    }

    /// The end of the text: the last document, if it has lines.
    pub fn finish(&mut self) -> Option<Document> {
        (!self.doc.is_empty()).then(|| std::mem::take(&mut self.doc))
    }
}

/// One open text file, read a line at a time.
struct OpenFile {
    path: PathBuf,
    reader: BufReader<std::fs::File>,
    /// Bytes and lines read so far, for the place of an invalid byte.
    offset: usize,
    line_no: usize,
    line: Vec<u8>,
}

impl OpenFile {
    fn open(path: PathBuf) -> Result<Self> {
        let file = std::fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(OpenFile { path, reader: BufReader::with_capacity(1 << 20, file), offset: 0, line_no: 0, line: Vec::new() })
    }

    /// The next line without its newline, or `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<&str>> {
        self.line.clear();
        let n = self.reader.read_until(b'\n', &mut self.line).with_context(|| format!("cannot read {}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        let start = self.offset;
        self.offset += n;
        self.line_no += 1;
        let text = std::str::from_utf8(&self.line).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: not UTF-8 text (invalid byte at offset {}); convert the file to UTF-8 (e.g. iconv)",
                self.path.display(),
                self.line_no,
                start + e.valid_up_to()
            )
        })?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        // A UTF-8 byte-order mark (as some editors write) is no text.
        Ok(Some(if self.line_no == 1 { text.strip_prefix('\u{feff}').unwrap_or(text) } else { text }))
    }
}

/// The documents of a list of files, streamed: one line in memory at a time,
/// plus the document being gathered. A document never spans two files.
struct TextDocuments {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<OpenFile>,
    splitter: Splitter,
}

impl TextDocuments {
    fn step(&mut self) -> Result<Option<Document>> {
        loop {
            let Some(file) = self.current.as_mut() else {
                match self.files.next() {
                    Some(path) => self.current = Some(OpenFile::open(path)?),
                    None => return Ok(None),
                }
                continue;
            };
            match file.next_line()? {
                Some(line) => {
                    if let Some(doc) = self.splitter.push(line) {
                        return Ok(Some(doc));
                    }
                }
                None => {
                    self.current = None;
                    if let Some(doc) = self.splitter.finish() {
                        return Ok(Some(doc));
                    }
                }
            }
        }
    }
}

impl Iterator for TextDocuments {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Result<Document>> {
        let item = self.step().transpose();
        if matches!(item, Some(Err(_))) {
            self.files = Vec::new().into_iter();
            self.current = None;
        }
        item
    }
}

impl Dataset for TextDataset {
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let files = self.files(path)?;
        Ok(Box::new(TextDocuments { files: files.into_iter(), current: None, splitter: Splitter::new(self.opts.documents) }))
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
        let docs: Vec<Document> = ds.read(dir.path()).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(docs, vec![vec!["one".to_string()], vec!["two".to_string()]]);
        let err = ds.read(&dir.path().join("missing")).err().unwrap().to_string();
        assert!(err.contains("no such file"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_at_the_start_of_a_file_is_no_text() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "\u{feff}one\n\ntwo\n").unwrap();
        let ds = TextDataset::new(TextOptions::default());
        let docs: Vec<Document> = ds.read(&dir.path().join("a.txt")).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(docs, vec![vec!["one".to_string()], vec!["two".to_string()]]);
    }

    #[test]
    fn streamed_files_split_as_whole_texts_do() {
        let dir = tempfile::tempdir().unwrap();
        let text = "a b\r\n  c  \n\n\n d\n\ne\nf";
        std::fs::write(dir.path().join("a.txt"), text).unwrap();
        std::fs::write(dir.path().join("b.txt"), "g\n\nh\n").unwrap();
        for documents in [DocumentBoundary::BlankLine, DocumentBoundary::File, DocumentBoundary::Line] {
            let ds = TextDataset::new(TextOptions { documents, suffix: None });
            let mut whole = ds.split(text);
            whole.extend(ds.split("g\n\nh\n"));
            let streamed: Vec<Document> = ds.read(dir.path()).unwrap().collect::<Result<_>>().unwrap();
            assert_eq!(streamed, whole, "{documents:?}");
        }
        std::fs::write(dir.path().join("c.txt"), b"ok\nbad \xff\n").unwrap();
        let ds = TextDataset::new(TextOptions::default());
        let err = ds.read(dir.path()).unwrap().find_map(|d| d.err()).unwrap().to_string();
        assert!(err.contains("c.txt:2: not UTF-8 text (invalid byte at offset 7)"), "{err}");
    }
}
