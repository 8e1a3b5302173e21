//! The `parquet` dataset: one text column of parquet files (a file, or a
//! directory of `*.parquet` files), as Hugging Face datasets are stored.
//!
//! Where documents end is chosen by `documents`:
//! - `row` (default): each row is one document (its non-empty lines);
//! - `blank_line` / `line`: the rows of a file are read as the lines of one
//!   text (a newline added where a row lacks one) and split as the `text`
//!   dataset does: a blank line ends a document / each line is one.

use std::path::Path;

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use serde::Deserialize;

use runner_api::{parse_options, Component, Dataset, Document, Factory, Options, ParamDoc, Registrar};

use crate::{DocumentBoundary, TextDataset, TextOptions};

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

    /// The text column of one file, nulls skipped.
    fn rows(&self, file: &Path) -> Result<Vec<String>> {
        let col = &self.opts.text_column;
        let open = || std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()));
        let schema = ParquetReader::new(open()?).schema().with_context(|| format!("{}: not a parquet file", file.display()))?;
        if !schema.contains(col) {
            let names: Vec<String> = schema.iter_names().map(|n| n.to_string()).collect();
            bail!("{}: no column `{col}` (text_column); its columns are {}", file.display(), names.join(", "));
        }
        let df = ParquetReader::new(open()?)
            .with_columns(Some(vec![col.clone()]))
            .finish()
            .with_context(|| format!("cannot read {}", file.display()))?;
        let column = df.column(col)?;
        let text = column.str().map_err(|_| anyhow::anyhow!("{}: column `{col}` holds {}, not text", file.display(), column.dtype()))?;
        Ok(text.into_iter().flatten().map(str::to_string).collect())
    }

    /// Splits one file's rows into documents.
    pub fn split(&self, rows: &[String]) -> Vec<Document> {
        let boundary = match self.opts.documents {
            RowBoundary::Row => {
                return rows
                    .iter()
                    .map(|r| r.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect::<Document>())
                    .filter(|d| !d.is_empty())
                    .collect();
            }
            RowBoundary::BlankLine => DocumentBoundary::BlankLine,
            RowBoundary::Line => DocumentBoundary::Line,
        };
        let mut text = String::new();
        for r in rows {
            text.push_str(r);
            if !r.ends_with('\n') {
                text.push('\n');
            }
        }
        TextDataset::new(TextOptions { documents: boundary, suffix: None }).split(&text)
    }
}

impl Dataset for ParquetDataset {
    fn read(&self, path: &Path) -> Result<Vec<Document>> {
        let mut docs = Vec::new();
        for file in crate::list_files(path, Some(".parquet"), "parquet files")? {
            docs.extend(self.split(&self.rows(&file)?));
        }
        Ok(docs)
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

    #[test]
    fn rows_become_documents() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("train-00000-of-00001.parquet");
        write(&f, &[Some(" = Title = \n"), Some(""), Some(" first line \n second\n"), None, Some("")], "text");
        let rows = ParquetDataset::new(ParquetOptions::default()).read(&f).unwrap();
        assert_eq!(rows, vec![vec!["= Title =".to_string()], vec!["first line".into(), "second".into()]]);
        let blank = ParquetDataset::new(ParquetOptions { documents: RowBoundary::BlankLine, ..Default::default() });
        assert_eq!(blank.read(&f).unwrap(), rows, "wikitext's empty rows are blank lines");
        let lines = ParquetDataset::new(ParquetOptions { documents: RowBoundary::Line, ..Default::default() });
        assert_eq!(lines.read(&f).unwrap().len(), 3);
    }

    #[test]
    fn directories_and_column_errors() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("b.parquet"), &[Some("two")], "content");
        write(&dir.path().join("a.parquet"), &[Some("one")], "content");
        std::fs::write(dir.path().join("notes.txt"), "skip").unwrap();
        let ds = ParquetDataset::new(ParquetOptions { text_column: "content".into(), ..Default::default() });
        assert_eq!(ds.read(dir.path()).unwrap(), vec![vec!["one".to_string()], vec!["two".to_string()]]);
        let err = ParquetDataset::new(ParquetOptions::default()).read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no column `text`") && err.contains("content, id"), "{err}");
        let err = ParquetDataset::new(ParquetOptions { text_column: "id".into(), ..Default::default() }).read(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("not text"), "{err:#}");
        let err = ds.read(&dir.path().join("notes.txt")).unwrap_err();
        assert!(format!("{err:#}").contains("not a parquet file"), "{err:#}");
    }
}
