//! The `parquet` dataset: one text column of parquet files (a file, or a
//! directory of `*.parquet` files), as Hugging Face datasets are stored.
//!
//! Where documents end is chosen by `documents`:
//! - `row` (default): each row is one document (its non-empty lines);
//! - `blank_line` / `line`: the rows of a file are read as the lines of one
//!   text (a newline added where a row lacks one) and split as the `text`
//!   dataset does: a blank line ends a document / each line is one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::Deserialize;

use runner_api::{parse_options, Component, Dataset, Document, Documents, Factory, Options, ParamDoc, Registrar};

use crate::{DocumentBoundary, Splitter};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowBoundary {
    #[default]
    Row,
    BlankLine,
    Line,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetOptions {
    /// The column that holds the text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    #[serde(default)]
    pub documents: RowBoundary,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions { text_column: default_text_column(), documents: RowBoundary::Row }
    }
}

fn default_text_column() -> String {
    "text".into()
}

#[derive(Debug, Clone)]
pub struct ParquetDataset {
    opts: ParquetOptions,
}

impl ParquetDataset {
    pub fn new(opts: ParquetOptions) -> Self {
        ParquetDataset { opts }
    }

    /// The row groups of one file, as (first row, rows), after checking that
    /// it has the text column.
    fn row_groups(&self, file: &Path) -> Result<Vec<(usize, usize)>> {
        let col = &self.opts.text_column;
        let open = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let mut reader = ParquetReader::new(open);
        let schema = reader.schema().with_context(|| format!("{}: not a parquet file", file.display()))?;
        if !schema.contains(col) {
            let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
            bail!("{}: no column `{col}` (text_column); its columns are {}", file.display(), names.join(", "));
        }
        let mut at = 0;
        let groups = reader.get_metadata()?.row_groups.iter().map(|g| {
            let group = (at, g.num_rows());
            at += g.num_rows();
            group
        });
        Ok(groups.collect())
    }

    /// The text column of one row group, nulls skipped.
    fn rows(&self, file: &Path, (first, len): (usize, usize)) -> Result<Vec<String>> {
        let col = &self.opts.text_column;
        let open = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        let df = ParquetReader::new(open)
            .with_columns(Some(vec![col.clone()]))
            .with_slice(Some((first, len)))
            .finish()
            .with_context(|| format!("cannot read {}", file.display()))?;
        let column = df.column(col)?;
        let text = column.str().map_err(|_| anyhow::anyhow!("{}: column `{col}` holds {}, not text", file.display(), column.dtype()))?;
        Ok(text.into_iter().flatten().map(str::to_string).collect())
    }

    /// Splits one file's rows into documents.
    pub fn split(&self, rows: &[String]) -> Vec<Document> {
        let mut splitter = self.splitter();
        let mut docs = Vec::new();
        self.push_rows(rows, splitter.as_mut(), &mut docs);
        docs.extend(splitter.and_then(|mut s| s.finish()));
        docs
    }

    /// A line splitter for `blank_line` / `line`; none for `row`.
    fn splitter(&self) -> Option<Splitter> {
        match self.opts.documents {
            RowBoundary::Row => None,
            RowBoundary::BlankLine => Some(Splitter::new(DocumentBoundary::BlankLine)),
            RowBoundary::Line => Some(Splitter::new(DocumentBoundary::Line)),
        }
    }

    /// Adds the documents that `rows` complete. Rows are read as the lines of
    /// one text, a newline added where a row lacks one (so an empty row is a
    /// blank line).
    fn push_rows(&self, rows: &[String], splitter: Option<&mut Splitter>, docs: &mut Vec<Document>) {
        let Some(splitter) = splitter else {
            let row_docs = rows.iter().map(|r| r.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect());
            docs.extend(row_docs.filter(|d: &Document| !d.is_empty()));
            return;
        };
        for r in rows {
            if r.is_empty() {
                docs.extend(splitter.push(""));
            }
            docs.extend(r.lines().filter_map(|line| splitter.push(line)));
        }
    }
}

/// The documents of a list of parquet files, streamed one row group at a time.
struct ParquetDocuments<'a> {
    dataset: &'a ParquetDataset,
    files: std::vec::IntoIter<PathBuf>,
    /// The file being read and its row groups still to read.
    current: Option<(PathBuf, std::vec::IntoIter<(usize, usize)>)>,
    splitter: Option<Splitter>,
    ready: VecDeque<Document>,
    failed: bool,
}

impl ParquetDocuments<'_> {
    /// Reads row groups until a document is ready; `false` at the end.
    fn fill(&mut self) -> Result<bool> {
        while self.ready.is_empty() {
            let Some((file, groups)) = self.current.as_mut() else {
                let Some(file) = self.files.next() else { return Ok(false) };
                let groups = self.dataset.row_groups(&file)?;
                self.current = Some((file, groups.into_iter()));
                continue;
            };
            match groups.next() {
                Some(group) => {
                    let rows = self.dataset.rows(file, group)?;
                    let mut docs = Vec::new();
                    self.dataset.push_rows(&rows, self.splitter.as_mut(), &mut docs);
                    self.ready.extend(docs);
                }
                None => {
                    self.current = None;
                    self.ready.extend(self.splitter.as_mut().and_then(Splitter::finish));
                }
            }
        }
        Ok(true)
    }
}

impl Iterator for ParquetDocuments<'_> {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Result<Document>> {
        if self.failed {
            return None;
        }
        match self.fill() {
            Ok(true) => self.ready.pop_front().map(Ok),
            Ok(false) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl Dataset for ParquetDataset {
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let files = crate::list_files(path, Some(".parquet"), "parquet files")?;
        Ok(Box::new(ParquetDocuments {
            dataset: self,
            files: files.into_iter(),
            current: None,
            splitter: self.splitter(),
            ready: VecDeque::new(),
            failed: false,
        }))
    }
}

fn build(options: &Options) -> Result<Box<dyn Dataset>> {
    Ok(Box::new(ParquetDataset::new(parse_options(options)?)))
}

/// The `parquet` component.
pub fn component() -> Component {
    Component {
        name: "parquet",
        doc: "parquet files (e.g. a Hugging Face dataset, hf://datasets/...): one text column; a file or a directory",
        params: vec![
            ParamDoc { name: "text_column", default: "text", doc: "the column that holds the text" },
            ParamDoc { name: "documents", default: "row", doc: "where documents end: row, blank_line or line" },
        ],
        check: |o| parse_options::<ParquetOptions>(o).map(|_| ()),
        factory: Factory::Dataset(build),
    }
}

/// Registers the `parquet` dataset.
pub fn register(r: &mut Registrar) {
    r.add(component());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, rows: &[Option<&str>], column: &str) {
        let mut df = DataFrame::new(vec![
            Column::new(column.into(), rows.to_vec()),
            Column::new("id".into(), (0..rows.len() as i64).collect::<Vec<_>>()),
        ])
        .unwrap();
        ParquetWriter::new(std::fs::File::create(path).unwrap()).finish(&mut df).unwrap();
    }

    fn read(ds: &ParquetDataset, path: &Path) -> Result<Vec<Document>> {
        ds.read(path)?.collect()
    }

    #[test]
    fn rows_become_documents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("train-00000-of-00001.parquet");
        write(&f, &[Some(" = Title = \n"), Some(""), Some(" first line \n second\n"), None, Some("")], "text");
        let rows = read(&ParquetDataset::new(ParquetOptions::default()), &f).unwrap();
        assert_eq!(rows, vec![vec!["= Title =".to_string()], vec!["first line".into(), "second".into()]]);
        let blank = ParquetDataset::new(ParquetOptions { documents: RowBoundary::BlankLine, ..Default::default() });
        assert_eq!(read(&blank, &f).unwrap(), rows, "wikitext's empty rows are blank lines");
        let lines = ParquetDataset::new(ParquetOptions { documents: RowBoundary::Line, ..Default::default() });
        assert_eq!(read(&lines, &f).unwrap().len(), 3);
    }

    #[test]
    fn directories_and_column_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.parquet"), &[Some("two")], "content");
        write(&dir.path().join("a.parquet"), &[Some("one")], "content");
        std::fs::write(dir.path().join("notes.txt"), "skip").unwrap();
        let ds = ParquetDataset::new(ParquetOptions { text_column: "content".into(), ..Default::default() });
        assert_eq!(read(&ds, dir.path()).unwrap(), vec![vec!["one".to_string()], vec!["two".to_string()]]);
        let err = read(&ParquetDataset::new(ParquetOptions::default()), dir.path()).unwrap_err().to_string();
        assert!(err.contains("no column `text`") && err.contains("content, id"), "{err}");
        let err = read(&ParquetDataset::new(ParquetOptions { text_column: "id".into(), ..Default::default() }), dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not text"), "{err:#}");
        let err = read(&ds, &dir.path().join("notes.txt")).unwrap_err();
        assert!(format!("{err:#}").contains("not a parquet file"), "{err:#}");
    }
}
