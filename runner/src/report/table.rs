//! The report over many runs: [`collect`] reads every run under a directory
//! (metrics with polars, `summary.json`, `recipe.yaml`), [`build`] makes one row
//! per run (swept values, best and final eval loss and perplexity, accuracy,
//! tokens/s, wall time), [`write`] saves `report.csv`, `report.parquet` and
//! `report.md` next to the runs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use polars::prelude::*;
use runner_api::{ColumnRole, ColumnSpec};
use serde_yaml::Value;

use runner_recipe::fs::atomic_write;
use runner_recipe::show::show_scalar;

use super::write_tables;
use crate::error::user_msg;

/// The manifest's file name in a sweep directory: written by `runner sweep`
/// (the grid and the runs in order), read here for the swept keys.
pub const SWEEP_MANIFEST: &str = "sweep.json";

/// A value as written in a report and in a sweep's run names: scalars plainly,
/// others as JSON.
pub fn show(v: &Value) -> String {
    show_scalar(v).unwrap_or_else(|| serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}")))
}

/// One run as read from disk.
#[derive(Debug)]
pub struct RunData {
    pub name: String,
    pub dir: PathBuf,
    /// `metrics.parquet` (or `metrics.csv`) as written by the run.
    pub metrics: DataFrame,
    /// `summary.json`, present once the run finished.
    pub summary: Option<serde_json::Value>,
    /// The run's value of each swept key (`None` where its recipe lacks it).
    pub swept: Vec<Option<String>>,
    /// What its eval columns mean (`columns.json`).
    pub columns: Vec<ColumnSpec>,
}

/// The runs under a directory and the keys that were swept.
#[derive(Debug)]
pub struct Runs {
    pub keys: Vec<String>,
    pub runs: Vec<RunData>,
}

impl Runs {
    /// Every eval column the runs declared, first declaration first.
    pub fn columns(&self) -> Vec<ColumnSpec> {
        let mut all: Vec<ColumnSpec> = Vec::new();
        for c in self.runs.iter().flat_map(|r| &r.columns) {
            if !all.iter().any(|a| a.name == c.name) {
                all.push(c.clone());
            }
        }
        all
    }
}

fn has_metrics(dir: &Path) -> bool {
    dir.join("metrics.parquet").is_file() || dir.join("metrics.csv").is_file()
}

/// Reads every run under `dir` (each subdirectory with a metrics table), or `dir`
/// itself when it is one run. Swept keys come from the sweep's `sweep.json`,
/// else they are the recipe keys whose values differ between runs.
pub fn collect(dir: &Path) -> Result<Runs> {
    if !dir.is_dir() {
        return Err(user_msg(format!("{}: not a directory", dir.display())));
    }
    let mut dirs: Vec<PathBuf> = if has_metrics(dir) {
        vec![dir.to_path_buf()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            // Hidden folders are results moved aside by --overwrite, not runs.
            .filter(|p| p.is_dir() && has_metrics(p) && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        v.sort();
        v
    };
    if dirs.is_empty() {
        return Err(user_msg(format!(
            "{}: no runs here (no metrics.parquet or metrics.csv in it or its subdirectories)",
            dir.display()
        )));
    }
    let manifest: Option<serde_json::Value> = std::fs::read_to_string(dir.join(SWEEP_MANIFEST))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    if let Some(order) = manifest.as_ref().and_then(|m| m["runs"].as_array()) {
        let pos = |p: &PathBuf| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            order.iter().position(|r| r["run"].as_str() == Some(name.as_str())).unwrap_or(usize::MAX)
        };
        dirs.sort_by_key(|p| pos(p));
    }
    let recipes: Vec<Option<Value>> = dirs.iter().map(|d| read_recipe(&d.join("recipe.yaml"))).collect();
    let keys: Vec<String> = match manifest.as_ref().and_then(|m| m["grid"].as_array()) {
        Some(grid) => grid.iter().filter_map(|a| a["key"].as_str().map(str::to_string)).collect(),
        None => differing_keys(&recipes),
    };
    let mut runs = Vec::with_capacity(dirs.len());
    for (d, recipe) in dirs.into_iter().zip(recipes) {
        let name = d.file_name().map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into_owned());
        let metrics = read_metrics(&d)?;
        let summary = std::fs::read_to_string(d.join("summary.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
        let swept = keys.iter().map(|k| recipe.as_ref().and_then(|r| lookup(r, k)).map(show)).collect();
        let columns = super::read_columns(&d);
        runs.push(RunData { name, dir: d, metrics, summary, swept, columns });
    }
    Ok(Runs { keys, runs })
}

/// A run's `recipe.yaml` as a tree of keys; one that is not a recipe's
/// sections (damaged, or not a recipe) is left out with a warning naming it,
/// so its text never becomes a column.
fn read_recipe(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    // The sections of a recipe (`runner_recipe::raw::RawRecipe`); `run` is always written.
    const SECTIONS: &[&str] = &["run", "data", "tokenizer", "masking", "model", "training", "eval", "metrics", "plugins"];
    let is_recipe = |m: &serde_yaml::Mapping| {
        m.get("run").is_some_and(Value::is_mapping) && m.keys().all(|k| k.as_str().is_some_and(|k| SECTIONS.contains(&k)))
    };
    match serde_yaml::from_str::<Value>(&text) {
        Ok(Value::Mapping(m)) if is_recipe(&m) => Some(Value::Mapping(m)),
        Ok(_) => {
            tracing::warn!("{}: not a recipe (not a mapping of a recipe's sections); its run's recipe keys are left out", path.display());
            None
        }
        Err(e) => {
            tracing::warn!("{}: does not parse ({e}); its run's recipe keys are left out", path.display());
            None
        }
    }
}

/// Reads `metrics.parquet`, falling back to `metrics.csv`.
fn read_metrics(dir: &Path) -> Result<DataFrame> {
    let parquet = dir.join("metrics.parquet");
    if let Ok(f) = std::fs::File::open(&parquet) {
        if let Ok(df) = ParquetReader::new(f).finish() {
            return Ok(df);
        }
    }
    let csv = dir.join("metrics.csv");
    CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(csv.clone()))
        .and_then(|r| r.finish())
        // polars' first line says what is wrong; what follows is advice about its own options.
        .map_err(|e| {
            let what = e.to_string();
            let what = what.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("unreadable").to_string();
            user_msg(format!("{}: cannot read the metrics table ({what}); it is not a table the runner wrote, or it was damaged", csv.display()))
        })
}

/// The value at a dotted key path.
fn lookup<'a>(tree: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(tree, |node, k| node.get(k))
}

/// Leaf key paths whose values are not the same in every recipe (the run's own
/// name and directory aside).
fn differing_keys(recipes: &[Option<Value>]) -> Vec<String> {
    fn leaves(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, v) in m {
                    let k = show(k);
                    let path = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    leaves(&path, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    for r in recipes.iter().flatten() {
        let mut here = Vec::new();
        leaves("", r, &mut here);
        for k in here {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    // Runs without a readable recipe say nothing about which keys differ.
    let present: Vec<&Value> = recipes.iter().flatten().collect();
    if present.len() < 2 {
        return Vec::new();
    }
    keys.into_iter()
        .filter(|k| k != "run.name" && k != "run.output_dir")
        .filter(|k| {
            let first = lookup(present[0], k);
            present.iter().any(|r| lookup(r, k) != first)
        })
        .collect()
}

/// The f64 values of a metrics column, nulls kept; empty when the column is absent.
fn values(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name)
        .ok()
        .and_then(|c| c.cast(&DataType::Float64).ok())
        .and_then(|c| c.f64().ok().map(|c| c.into_iter().collect()))
        .unwrap_or_default()
}

fn last(v: &[Option<f64>]) -> Option<f64> {
    v.iter().rev().find_map(|x| *x)
}

/// The best value: the highest or the lowest.
fn best(v: &[Option<f64>], higher_is_better: bool) -> Option<f64> {
    v.iter().flatten().copied().reduce(if higher_is_better { f64::max } else { f64::min })
}

/// 1 for the best value, 2 for the next, ...; runs without a value get none.
fn ranks(v: &[Option<f64>], higher_is_better: bool) -> Vec<Option<u32>> {
    v.iter()
        .map(|x| {
            x.filter(|x| !x.is_nan()).map(|x| {
                let better = |y: f64| if higher_is_better { y > x } else { y < x };
                1 + v.iter().flatten().filter(|&&y| better(y)).count() as u32
            })
        })
        .collect()
}

/// The report table, and the same as Markdown.
#[derive(Debug)]
pub struct Report {
    pub frame: DataFrame,
    pub markdown: String,
}

/// One row per run.
pub fn build(runs: &Runs) -> Result<Report> {
    let rs = &runs.runs;
    let summary_f64 = |r: &RunData, k: &str| r.summary.as_ref().and_then(|s| s[k].as_f64());
    let mut cols: Vec<Column> = vec![Column::new("run".into(), rs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())];
    for (i, key) in runs.keys.iter().enumerate() {
        let raw: Vec<Option<String>> = rs.iter().map(|r| r.swept[i].clone()).collect();
        let nums: Vec<Option<f64>> = raw.iter().map(|v| v.as_deref().and_then(|s| s.parse().ok())).collect();
        let numeric = raw.iter().zip(&nums).all(|(r, n)| r.is_none() || n.is_some());
        cols.push(if numeric {
            Column::new(key.as_str().into(), nums)
        } else {
            Column::new(key.as_str().into(), raw)
        });
    }
    let per = |f: &dyn Fn(&RunData) -> Option<f64>| rs.iter().map(f).collect::<Vec<Option<f64>>>();
    let steps: Vec<Option<u64>> = rs.iter().map(|r| last(&values(&r.metrics, "step")).map(|s| s as u64)).collect();
    cols.push(Column::new("steps".into(), steps));
    cols.push(Column::new("finished".into(), rs.iter().map(|r| r.summary.is_some()).collect::<Vec<bool>>()));
    let declared = runs.columns();
    if let Some(loss) = declared.iter().find(|c| c.role == ColumnRole::Loss) {
        cols.push(Column::new("best_eval_loss".into(), per(&|r| best(&values(&r.metrics, &loss.name), false))));
        cols.push(Column::new("final_eval_loss".into(), per(&|r| last(&values(&r.metrics, &loss.name)))));
    }
    let headline: Vec<&ColumnSpec> = declared.iter().filter(|c| c.role == ColumnRole::Headline).collect();
    for c in &headline {
        cols.push(Column::new(format!("best_{}", c.name).into(), per(&|r| best(&values(&r.metrics, &c.name), c.higher_is_better))));
        cols.push(Column::new(format!("final_{}", c.name).into(), per(&|r| last(&values(&r.metrics, &c.name)))));
    }
    // Downstream tasks (a probe's accuracy): each run's rank by the first
    // lower-is-better headline figure (perplexity) and by every task, so one
    // table says whether the run with the best perplexity also helps the task.
    let tasks: Vec<&ColumnSpec> = declared.iter().filter(|c| c.role == ColumnRole::Task).collect();
    if !tasks.is_empty() {
        if let Some(lm) = headline.iter().find(|c| !c.higher_is_better) {
            let v = per(&|r| last(&values(&r.metrics, &lm.name)));
            cols.push(Column::new(format!("rank_{}", lm.name).into(), ranks(&v, false)));
        }
        for t in &tasks {
            let v = per(&|r| last(&values(&r.metrics, &t.name)));
            cols.push(Column::new(format!("rank_{}", t.name).into(), ranks(&v, t.higher_is_better)));
            cols.push(Column::new(format!("final_{}", t.name).into(), v));
        }
    }
    cols.push(Column::new(
        "tokens_per_s".into(),
        per(&|r| {
            summary_f64(r, "tokens_per_s").or_else(|| {
                let v: Vec<f64> = values(&r.metrics, "tokens_per_s").into_iter().flatten().collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            })
        }),
    ));
    cols.push(Column::new(
        "wall_s".into(),
        per(&|r| {
            summary_f64(r, "elapsed_s")
                .or_else(|| values(&r.metrics, "elapsed_s").into_iter().flatten().reduce(f64::max))
        }),
    ));
    let frame = DataFrame::new(cols)?;
    let markdown = markdown(&frame)?;
    Ok(Report { frame, markdown })
}

/// A Markdown table: numbers right-aligned, losses to 4 decimals, rates and
/// times shorter, missing values as `-`.
fn markdown(df: &DataFrame) -> Result<String> {
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); df.height()];
    let mut right = Vec::new();
    for c in df.get_columns() {
        let name = c.name().as_str();
        let numeric = c.dtype().is_primitive_numeric();
        right.push(numeric);
        for (i, row) in cells.iter_mut().enumerate() {
            let v = c.get(i)?;
            let s = match v {
                AnyValue::Null => "-".to_string(),
                AnyValue::Float64(x) => match name {
                    "tokens_per_s" => format!("{x:.0}"),
                    "wall_s" => format!("{x:.1}"),
                    _ if name.starts_with("best_") || name.starts_with("final_") => format!("{x:.4}"),
                    _ => format!("{x}"),
                },
                AnyValue::String(s) => s.to_string(),
                AnyValue::StringOwned(s) => s.to_string(),
                AnyValue::Boolean(b) => if b { "yes" } else { "no" }.to_string(),
                other => other.to_string(),
            };
            row.push(s.replace('|', "\\|"));
        }
    }
    let widths: Vec<usize> = (0..names.len())
        .map(|j| cells.iter().map(|r| r[j].len()).chain([names[j].len(), 3]).max().unwrap_or(3))
        .collect();
    let line = |row: &[String]| {
        let parts: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, s)| if right[j] { format!("{s:>w$}", w = widths[j]) } else { format!("{s:<w$}", w = widths[j]) })
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = vec![line(&names)];
    let rule: Vec<String> = widths
        .iter()
        .zip(&right)
        .map(|(w, r)| if *r { format!("{}:", "-".repeat(w - 1)) } else { "-".repeat(*w) })
        .collect();
    out.push(format!("| {} |", rule.join(" | ")));
    out.extend(cells.iter().map(|r| line(r)));
    Ok(out.join("\n") + "\n")
}

/// Writes `report.csv`, `report.parquet` and `report.md` into `dir`; returns their paths.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut df = report.frame.clone();
    write_tables(&mut df, dir, "report")?;
    let md = dir.join("report.md");
    atomic_write(&md, |f| {
        use std::io::Write;
        f.write_all(report.markdown.as_bytes())?;
        Ok(())
    })?;
    Ok(vec![dir.join("report.csv"), dir.join("report.parquet"), md])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_skip_the_run_name() {
        let a: Value = serde_yaml::from_str("run: {name: a, output_dir: x}\nm: {rate: 0.1, s: b}\nt: {lr: 1}").unwrap();
        let b: Value = serde_yaml::from_str("run: {name: b, output_dir: y}\nm: {rate: 0.3, s: b}\nt: {lr: 1}").unwrap();
        assert_eq!(differing_keys(&[Some(a.clone()), Some(b.clone())]), vec!["m.rate".to_string()]);
        // A run without a readable recipe makes no key differ.
        assert_eq!(differing_keys(&[Some(a.clone()), None, Some(b)]), vec!["m.rate".to_string()]);
        assert!(differing_keys(&[Some(a), None]).is_empty());
    }

    #[test]
    fn ranks_put_the_best_first_and_skip_missing_values() {
        let v = [Some(3.0), None, Some(1.0), Some(3.0), Some(f64::NAN)];
        assert_eq!(ranks(&v, false), [Some(2), None, Some(1), Some(2), None]);
        assert_eq!(ranks(&v, true), [Some(1), None, Some(3), Some(1), None]);
    }

    #[test]
    fn markdown_table_has_a_row_per_run() {
        let df = df!("run" => ["a", "b"], "best_eval_loss" => [Some(1.23456), None], "finished" => [true, false]).unwrap();
        let md = markdown(&df).unwrap();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 4, "{md}");
        assert!(lines[2].contains("1.2346") && lines[2].contains("yes"), "{md}");
        assert!(lines[3].contains(" - ") && lines[3].contains("no"), "{md}");
    }
}
