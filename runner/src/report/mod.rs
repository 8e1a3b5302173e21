//! Run outputs written with polars: the metrics table (`metrics.csv`,
//! `metrics.parquet`), what its eval columns mean (`columns.json`, as the
//! metric plugins declared it) and the one-row summary (`summary.csv`,
//! `summary.json`).
//! Files are written to a temporary name and renamed
//! (`runner_recipe::fs::atomic_write`), so a crash never leaves a half-written
//! table behind. Reports over many runs: [`table`] and [`plot`].

pub mod plot;
pub mod table;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use polars::prelude::*;
use runner_api::{ColumnRole, ColumnSpec};
use runner_recipe::fs::{atomic_write, atomic_write_bytes};
use serde::{Deserialize, Serialize};

/// One row of the metrics table: a train-log row, an eval row, or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub step: u64,
    pub epoch: f64,
    pub lr: f64,
    pub train_loss: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub elapsed_s: f64,
    /// fp16: the loss scale after this step, and the steps skipped so far.
    pub loss_scale: Option<f64>,
    pub skipped_steps: Option<u64>,
    /// The gradients' global norm before clipping, at this step (none on a
    /// step skipped for inf/NaN gradients; checkpoints written before it was
    /// kept have none either).
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// Eval metric values by name (`eval_loss`, `perplexity`, `accuracy`, ...).
    pub eval: BTreeMap<String, f64>,
}

/// The columns of a run's metrics table, which is rewritten as rows come. The
/// rows themselves belong to the training state (a checkpoint saves them).
#[derive(Debug, Default)]
pub struct MetricsTable {
    /// The eval columns, in the order the recipe lists the metrics.
    eval_columns: Vec<String>,
    /// Whether the table has `loss_scale` and `skipped_steps` columns (fp16).
    loss_scale: bool,
}

impl MetricsTable {
    pub fn new(eval_columns: Vec<String>) -> Self {
        MetricsTable { eval_columns, loss_scale: false }
    }

    /// Adds the `loss_scale` and `skipped_steps` columns when `on`.
    pub fn with_loss_scale(mut self, on: bool) -> Self {
        self.loss_scale = on;
        self
    }

    /// Adds `row` to `rows`, merged into the last one when it is for the same
    /// step (a train-log row and an eval row).
    pub fn push(&self, rows: &mut Vec<Row>, row: Row) {
        if let Some(last) = rows.last_mut() {
            if last.step == row.step {
                last.train_loss = last.train_loss.or(row.train_loss);
                last.tokens_per_s = last.tokens_per_s.or(row.tokens_per_s);
                last.loss_scale = last.loss_scale.or(row.loss_scale);
                last.skipped_steps = last.skipped_steps.or(row.skipped_steps);
                last.grad_norm = last.grad_norm.or(row.grad_norm);
                last.eval.extend(row.eval);
                last.elapsed_s = last.elapsed_s.max(row.elapsed_s);
                return;
            }
        }
        rows.push(row);
    }

    pub fn frame(&self, rows: &[Row]) -> Result<DataFrame> {
        let mut cols: Vec<Column> = vec![
            Column::new("step".into(), rows.iter().map(|r| r.step).collect::<Vec<u64>>()),
            Column::new("epoch".into(), rows.iter().map(|r| r.epoch).collect::<Vec<f64>>()),
            Column::new("lr".into(), rows.iter().map(|r| r.lr).collect::<Vec<f64>>()),
            Column::new("train_loss".into(), rows.iter().map(|r| r.train_loss).collect::<Vec<Option<f64>>>()),
            Column::new("grad_norm".into(), rows.iter().map(|r| r.grad_norm).collect::<Vec<Option<f64>>>()),
        ];
        for name in &self.eval_columns {
            let values: Vec<Option<f64>> = rows.iter().map(|r| r.eval.get(name).copied()).collect();
            cols.push(Column::new(name.as_str().into(), values));
        }
        if self.loss_scale {
            cols.push(Column::new("loss_scale".into(), rows.iter().map(|r| r.loss_scale).collect::<Vec<Option<f64>>>()));
            cols.push(Column::new("skipped_steps".into(), rows.iter().map(|r| r.skipped_steps).collect::<Vec<Option<u64>>>()));
        }
        cols.push(Column::new("tokens_per_s".into(), rows.iter().map(|r| r.tokens_per_s).collect::<Vec<Option<f64>>>()));
        cols.push(Column::new("elapsed_s".into(), rows.iter().map(|r| r.elapsed_s).collect::<Vec<f64>>()));
        Ok(DataFrame::new(cols)?)
    }

    /// Writes `rows` as `metrics.csv` and `metrics.parquet` into `dir`.
    pub fn write(&self, rows: &[Row], dir: &Path) -> Result<()> {
        write_tables(&mut self.frame(rows)?, dir, "metrics")
    }
}

/// Writes `<stem>.csv` and `<stem>.parquet` atomically.
pub fn write_tables(df: &mut DataFrame, dir: &Path, stem: &str) -> Result<()> {
    let csv = dir.join(format!("{stem}.csv"));
    atomic_write(&csv, |f| Ok(CsvWriter::new(f).include_header(true).finish(df)?))?;
    let parquet = dir.join(format!("{stem}.parquet"));
    atomic_write(&parquet, |f| {
        ParquetWriter::new(f).finish(df)?;
        Ok(())
    })
}

/// The file in a run folder that says what each eval column means
/// ([`ColumnSpec`]s, as the metric plugins declared them).
pub const COLUMNS_FILE: &str = "columns.json";

/// Writes the run's column declarations into `dir`.
pub fn write_columns(dir: &Path, columns: &[ColumnSpec]) -> Result<()> {
    atomic_write_bytes(&dir.join(COLUMNS_FILE), &serde_json::to_vec_pretty(columns)?)
}

/// The column declarations of the run in `dir` (none when it has no such file).
pub fn read_columns(dir: &Path) -> Vec<ColumnSpec> {
    std::fs::read(dir.join(COLUMNS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// The eval loss column among `columns`, if a metric declared one.
pub fn loss_column(columns: &[ColumnSpec]) -> Option<&str> {
    columns.iter().find(|c| c.role == ColumnRole::Loss).map(|c| c.name.as_str())
}

/// The one-row summary of a finished run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    pub run: String,
    pub steps: u64,
    pub epochs: f64,
    pub train_tokens: u64,
    pub parameters: i64,
    pub final_train_loss: Option<f64>,
    /// The first, last and best value of the eval loss column.
    pub initial_eval_loss: Option<f64>,
    pub final_eval_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    /// `final_<column>` of every headline column (perplexity, accuracy, ...).
    #[serde(flatten)]
    pub finals: BTreeMap<String, Option<f64>>,
    pub tokens_per_s: f64,
    /// Data-parallel processes, and the share of training time they spent in all-reduce.
    pub processes: usize,
    pub allreduce_share: f64,
    /// Wall time in evals, over the whole run (resumes included).
    pub eval_s: f64,
    pub elapsed_s: f64,
    pub checkpoint: String,
}

impl Summary {
    /// Writes `summary.json` and `summary.csv` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        atomic_write_bytes(&dir.join("summary.json"), &serde_json::to_vec_pretty(self)?)?;
        let s = self;
        let mut df = df!(
            "run" => [s.run.as_str()],
            "steps" => [s.steps],
            "epochs" => [s.epochs],
            "train_tokens" => [s.train_tokens],
            "parameters" => [s.parameters],
            "final_train_loss" => [s.final_train_loss],
            "initial_eval_loss" => [s.initial_eval_loss],
            "final_eval_loss" => [s.final_eval_loss],
            "best_eval_loss" => [s.best_eval_loss],
        )?;
        for (name, value) in &s.finals {
            df.with_column(Column::new(name.as_str().into(), [*value]))?;
        }
        let tail = df!(
            "tokens_per_s" => [s.tokens_per_s],
            "processes" => [s.processes as u64],
            "allreduce_share" => [s.allreduce_share],
            "eval_s" => [s.eval_s],
            "elapsed_s" => [s.elapsed_s],
            "checkpoint" => [s.checkpoint.as_str()],
        )?;
        let mut df = df.hstack(tail.get_columns())?;
        let csv = dir.join("summary.csv");
        atomic_write(&csv, |f| Ok(CsvWriter::new(f).include_header(true).finish(&mut df)?))
    }
}
