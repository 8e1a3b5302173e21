//! TensorBoard event files read back by TensorBoard's own code
//! (`tests/fixtures/tensorboard_read.py`, EventAccumulator and the hparams
//! plugin's messages, from the `tensorboard` package in `.venv`): the scalars
//! are `metrics.csv`'s values at the same steps, every eval column is there, a
//! sweep's runs carry the hparams their grid gave them, a resumed run reads as
//! an uninterrupted one, and `run.tensorboard: false` writes nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{column, dropout_args, read_csv, root, runner, runner_command, signal, stderr};

const STEPS: u64 = 12;

/// What TensorBoard reads from each folder (see the script's docstring).
fn read_back(dirs: &[&Path]) -> Value {
    let o = Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/fixtures/tensorboard_read.py"))
        .args(dirs)
        .output()
        .expect("the project's .venv python starts");
    assert!(o.status.success(), "tensorboard_read.py failed:\n{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn one(dir: &Path) -> Value {
    let all = read_back(&[dir]);
    all[dir.to_str().unwrap()].clone()
}

/// A scalar's `step -> value` points.
fn points(read: &Value, tag: &str) -> BTreeMap<u64, f64> {
    let pts = read["scalars"][tag].as_array().unwrap_or_else(|| panic!("no scalar {tag} in {}", read["scalars"]));
    let mut out = BTreeMap::new();
    for p in pts {
        let step = p[0].as_u64().unwrap();
        assert!(out.insert(step, p[1].as_f64().unwrap()).is_none(), "{tag}: step {step} twice");
    }
    out
}

/// `metrics.csv`'s non-empty values of `name` by step.
fn csv_points(run: &Path, name: &str) -> BTreeMap<u64, f64> {
    let df = read_csv(&run.join("metrics.csv"));
    let steps = column(&df, "step");
    steps.into_iter().zip(column(&df, name)).filter_map(|(s, v)| Some((s? as u64, v?))).collect()
}

/// Equal as float32, which is what a scalar summary holds.
fn assert_same_points(tag: &str, tb: &BTreeMap<u64, f64>, csv: &BTreeMap<u64, f64>) {
    assert_eq!(tb.keys().collect::<Vec<_>>(), csv.keys().collect::<Vec<_>>(), "{tag}: steps");
    for (step, v) in csv {
        assert_eq!(tb[step] as f32, *v as f32, "{tag} at step {step}");
    }
}

/// The eval columns the run declared.
fn eval_columns(run: &Path) -> Vec<String> {
    let columns: Value = serde_json::from_slice(&std::fs::read(run.join("columns.json")).unwrap()).unwrap();
    columns.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

fn args(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let sets = [format!("run.name={name}"), format!("training.max_steps={STEPS}"), "eval.every=4".into()];
    let sets: Vec<&str> = sets.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    ["run".to_string()].into_iter().chain(dropout_args(out, &sets)).collect()
}

fn run_ok(a: &[String]) {
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = runner(&a);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Every scalar of `read` against the run's `metrics.csv` (tokens/s aside when `timing` is false).
fn assert_scalars_match_csv(read: &Value, run: &Path, timing: bool) {
    let mut pairs = vec![("train/loss".to_string(), "train_loss".to_string())];
    if timing {
        pairs.push(("train/tokens_per_s".into(), "tokens_per_s".into()));
    }
    pairs.extend(eval_columns(run).into_iter().map(|c| (format!("eval/{c}"), c)));
    for (tag, col) in &pairs {
        assert_same_points(tag, &points(read, tag), &csv_points(run, col));
    }
    // lr: at every train-log row (the csv also has it on the step-0 eval row).
    let train_steps = csv_points(run, "train_loss");
    let lr: BTreeMap<u64, f64> = csv_points(run, "lr").into_iter().filter(|(s, _)| train_steps.contains_key(s)).collect();
    assert_same_points("train/lr", &points(read, "train/lr"), &lr);
}

#[test]
fn scalars_and_hparams_read_back_by_tensorboard() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "t", &[]));
    let run = out.path().join("t");
    let files: Vec<_> = std::fs::read_dir(run.join("tensorboard")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().starts_with("events.out.tfevents."), "{files:?}");
    let read = one(&run.join("tensorboard"));
    assert_scalars_match_csv(&read, &run, true);
    let columns = eval_columns(&run);
    assert!(columns.len() >= 3, "loss, perplexity, accuracy at least: {columns:?}");
    let grad = points(&read, "train/grad_norm");
    assert_eq!(grad.len() as u64, STEPS, "a gradient norm for each logged step");
    assert!(grad.values().all(|g| g.is_finite() && *g > 0.0), "{grad:?}");
    let hp = &read["hparams"];
    assert_eq!(hp["training.max_steps"].as_f64(), Some(STEPS as f64), "{hp}");
    assert_eq!(hp["run.name"].as_str(), Some("t"), "{hp}");
    for key in ["training.lr", "masking.rate", "training.batch_size", "model.name"] {
        assert!(!hp[key].is_null(), "{key} missing from {hp}");
    }
    assert_eq!(read["session_end"], Value::Bool(true));
}

#[test]
fn switched_off_writes_no_folder() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "off", &["run.tensorboard=false"]));
    let run = out.path().join("off");
    assert!(run.join("metrics.csv").is_file());
    assert!(!run.join("tensorboard").exists(), "run.tensorboard: false wrote event files");
}

#[test]
fn a_resumed_run_reads_as_an_uninterrupted_one() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "reference", &[]));
    let a = args(out.path(), "r", &[]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let run = out.path().join("r");
    let mut child = runner_command(&a).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(run.join("metrics.csv")).map_or(0, |t| t.lines().count()) < 5 {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "the run ended before it was signalled");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(child.id(), libc::SIGTERM);
    assert!(!child.wait().unwrap().success(), "a stopped run exits with an error");
    run_ok(&args(out.path(), "r", &[]).into_iter().chain(["--resume".to_string()]).collect::<Vec<_>>());
    assert_eq!(std::fs::read_dir(run.join("tensorboard")).unwrap().count(), 2, "a new event file after the resume");
    let (mine, reference) = (one(&run.join("tensorboard")), one(&out.path().join("reference").join("tensorboard")));
    // The resumed run's scalars are its own metrics.csv's, and those of the run never stopped.
    assert_scalars_match_csv(&mine, &run, false);
    let tags: Vec<&String> = reference["scalars"].as_object().unwrap().keys().collect();
    assert_eq!(mine["scalars"].as_object().unwrap().keys().collect::<Vec<_>>(), tags);
    for tag in tags.into_iter().filter(|t| *t != "train/tokens_per_s") {
        assert_same_points(tag, &points(&mine, tag), &points(&reference, tag));
    }
    assert_eq!(mine["hparams"]["run.name"].as_str(), Some("r"), "the first file's hparams: {}", mine["hparams"]);
    assert_eq!(mine["session_end"], Value::Bool(true));
}

#[test]
fn a_sweeps_runs_carry_their_grid_values() {
    let out = tempfile::tempdir().unwrap();
    let dir = format!("run.output_dir={}", out.path().display());
    let o = runner(&["sweep", "tests/recipes/sweep-tiny.yaml.j2", "--set", &dir, "--set", "training.max_steps=3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sweep = out.path().join("sweep-tiny");
    let manifest: Value = serde_json::from_slice(&std::fs::read(sweep.join("sweep.json")).unwrap()).unwrap();
    let runs = manifest["runs"].as_array().unwrap();
    let dirs: Vec<_> = runs.iter().map(|r| sweep.join(r["run"].as_str().unwrap()).join("tensorboard")).collect();
    let mut all: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let experiment = sweep.join("tensorboard");
    all.push(&experiment);
    let read = read_back(&all);
    for (r, d) in runs.iter().zip(&dirs) {
        let hp = &read[d.to_str().unwrap()]["hparams"];
        for (key, value) in r["values"].as_object().unwrap() {
            assert_eq!(hp[key].as_f64(), value.as_f64(), "{}: {key} in {hp}", r["run"]);
        }
    }
    let exp = &read[experiment.to_str().unwrap()]["experiment"];
    let names: Vec<&str> = exp["hparams"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    for key in ["masking.rate", "training.lr", "training.batch_size", "training.max_steps", "model.name"] {
        assert!(names.contains(&key), "{key} not in {names:?}");
    }
    let metrics: Vec<&str> = exp["metrics"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    let first = sweep.join(runs[0]["run"].as_str().unwrap());
    for c in eval_columns(&first) {
        assert!(metrics.contains(&format!("eval/{c}").as_str()), "eval/{c} not in {metrics:?}");
    }
}
