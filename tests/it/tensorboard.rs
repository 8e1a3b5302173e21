//! TensorBoard event files read back by TensorBoard's own code
//! (`tests/fixtures/tensorboard_read.py`, EventAccumulator and the hparams
//! plugin's messages, from the `tensorboard` package in `.venv`): the scalars
//! are `metrics.csv`'s values at the same steps, every eval metric (loss,
//! perplexity, accuracy, top-5, pseudo-perplexity, a probe's accuracy and F1)
//! is there, a sweep's runs carry the hparams their grid gave them, a resumed
//! run reads as an uninterrupted one (after SIGTERM, and after a crash whose
//! steps are trained again), a 2-process run writes one event file, and
//! `run.tensorboard: false` writes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// A scalar's `step -> value` points; a step read twice fails.
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

fn csv_has(run: &Path, name: &str) -> bool {
    read_csv(&run.join("metrics.csv")).get_column_names().iter().any(|c| c.as_str() == name)
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

/// The event files anywhere under `dir`.
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(event_files(&p));
        } else if e.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            out.push(p);
        }
    }
    out
}

/// Every scalar of `read` against the run's `metrics.csv`: each table column
/// TensorBoard shows (tokens/s aside when `timing` is false), and no other tag.
fn assert_scalars_match_csv(read: &Value, run: &Path, timing: bool) {
    let mut pairs = vec![("train/loss".to_string(), "train_loss".to_string()), ("train/grad_norm".into(), "grad_norm".into())];
    if csv_has(run, "loss_scale") {
        pairs.push(("train/loss_scale".into(), "loss_scale".into()));
    }
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
    let mut tags: Vec<&str> = read["scalars"].as_object().unwrap().keys().map(String::as_str).collect();
    tags.retain(|t| !pairs.iter().any(|(p, _)| p == t) && *t != "train/lr" && (timing || *t != "train/tokens_per_s"));
    assert!(tags.is_empty(), "scalars not in metrics.csv: {tags:?}");
}

/// A resumed run's scalars as TensorBoard reads them: its own `metrics.csv`'s,
/// and those of the run never stopped, each step once; hparams from its first
/// file, the session end from its last.
fn assert_reads_as(run: &Path, reference: &Path) {
    let (mine, reference) = (one(&run.join("tensorboard")), one(&reference.join("tensorboard")));
    assert_scalars_match_csv(&mine, run, false);
    let tags: Vec<&String> = reference["scalars"].as_object().unwrap().keys().collect();
    assert_eq!(mine["scalars"].as_object().unwrap().keys().collect::<Vec<_>>(), tags);
    for tag in tags.into_iter().filter(|t| *t != "train/tokens_per_s") {
        assert_same_points(tag, &points(&mine, tag), &points(&reference, tag));
    }
    let name = run.file_name().unwrap().to_str().unwrap();
    assert_eq!(mine["hparams"]["run.name"].as_str(), Some(name), "the first file's hparams: {}", mine["hparams"]);
    assert_eq!(mine["session_end"], Value::Bool(true));
}

#[test]
fn scalars_and_hparams_read_back_by_tensorboard() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "t", &[]));
    let run = out.path().join("t");
    let files = event_files(out.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].parent().unwrap(), run.join("tensorboard"));
    let read = one(&run.join("tensorboard"));
    assert_scalars_match_csv(&read, &run, true);
    assert_eq!(points(&read, "eval/perplexity").len(), 4, "eval/perplexity at steps 0, 4, 8 and 12");
    let grad = points(&read, "train/grad_norm");
    assert_eq!(grad.len() as u64, STEPS, "a gradient norm for each logged step");
    assert!(grad.values().all(|g| g.is_finite() && *g > 0.0), "{grad:?}");
    let hp = &read["hparams"];
    assert_eq!(hp["training.max_steps"].as_f64(), Some(STEPS as f64), "{hp}");
    assert_eq!(hp["run.name"].as_str(), Some("t"), "{hp}");
    for key in ["training.lr", "masking.rate", "training.batch_size", "model.checkpoint"] {
        assert!(!hp[key].is_null(), "{key} missing from {hp}");
    }
    assert_eq!(read["session_end"], Value::Bool(true));
}

#[test]
fn every_eval_metric_is_a_scalar() {
    let out = tempfile::tempdir().unwrap();
    let (train, eval) = crate::probe::write_task(out.path());
    let metrics = format!(
        "metrics=[loss, perplexity, accuracy, top5_accuracy, pseudo_perplexity, {{name: probe, options: {{train: {}, eval: {}}}}}]",
        train.display(),
        eval.display()
    );
    run_ok(&args(out.path(), "m", &[&metrics]));
    let run = out.path().join("m");
    let read = one(&run.join("tensorboard"));
    assert_scalars_match_csv(&read, &run, true);
    let columns = eval_columns(&run);
    for c in ["eval_loss", "perplexity", "accuracy", "top5_accuracy", "pseudo_perplexity", "probe_accuracy", "probe_macro_f1"] {
        assert!(columns.iter().any(|x| x == c), "{c} not among {columns:?}");
        assert_eq!(points(&read, &format!("eval/{c}")).len(), 4, "eval/{c} at steps 0, 4, 8 and 12");
    }
}

#[test]
fn fp16_runs_show_the_loss_scale() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "h", &["training.precision=fp16"]));
    let run = out.path().join("h");
    assert!(csv_has(&run, "loss_scale"));
    let read = one(&run.join("tensorboard"));
    assert_scalars_match_csv(&read, &run, true);
    assert_eq!(points(&read, "train/loss_scale").len() as u64, STEPS);
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
fn a_run_resumed_after_sigterm_reads_as_an_uninterrupted_one() {
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
    assert_eq!(event_files(&run).len(), 2, "a new event file after the resume");
    assert_reads_as(&run, &out.path().join("reference"));
}

/// A run that crashed after step 12 with its newest complete checkpoint at
/// step 4 (the later ones removed, as a kill during their writes leaves
/// them): its first event file holds steps 5 to 12, which the resume trains
/// again. TensorBoard shows each of those steps once, with the new values.
#[test]
fn steps_trained_again_after_a_crash_are_shown_once() {
    let out = tempfile::tempdir().unwrap();
    run_ok(&args(out.path(), "reference", &[]));
    let every = ["training.checkpoint.every=4", "training.checkpoint.keep=3"];
    run_ok(&args(out.path(), "c", &every));
    let run = out.path().join("c");
    for step in [8, 12] {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step}"))).unwrap();
    }
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let first = one(&run.join("tensorboard"));
    assert_eq!(points(&first, "train/loss").keys().max(), Some(&STEPS), "the first file holds the steps trained again");
    let a: Vec<String> = args(out.path(), "c", &every).into_iter().chain(["--resume".to_string()]).collect();
    let o = runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>()).env("RUST_LOG", "info").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after step 4 "), "{}", stderr(&o));
    assert_eq!(event_files(&run).len(), 2, "a new event file after the resume");
    assert_reads_as(&run, &out.path().join("reference"));
}

#[test]
fn two_processes_write_one_event_file() {
    let out = tempfile::tempdir().unwrap();
    let mut a = vec!["launch".to_string(), "--nproc-per-node".into(), "2".into()];
    a.extend(args(out.path(), "two", &["training.max_steps=5"]).into_iter().skip(1));
    run_ok(&a);
    let run = out.path().join("two");
    let files = event_files(out.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].parent().unwrap(), run.join("tensorboard"));
    let read = one(&run.join("tensorboard"));
    assert_scalars_match_csv(&read, &run, true);
    assert_eq!(points(&read, "train/loss").len(), 5);
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
    assert_eq!(runs.len(), 6);
    let dirs: Vec<_> = runs.iter().map(|r| sweep.join(r["run"].as_str().unwrap()).join("tensorboard")).collect();
    let mut all: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let experiment = sweep.join("tensorboard");
    all.push(&experiment);
    let read = read_back(&all);
    for (r, d) in runs.iter().zip(&dirs) {
        let hp = &read[d.to_str().unwrap()]["hparams"];
        let values = r["values"].as_object().unwrap();
        assert_eq!(values.len(), 2, "{r}");
        for (key, value) in values {
            assert_eq!(hp[key].as_f64(), value.as_f64(), "{}: {key} in {hp}", r["run"]);
        }
    }
    let exp = &read[experiment.to_str().unwrap()]["experiment"];
    let names: Vec<&str> = exp["hparams"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    for key in ["masking.rate", "training.lr", "training.batch_size", "training.max_steps"] {
        assert!(names.contains(&key), "{key} not in {names:?}");
    }
    let differ: Vec<&str> = exp["differ"].as_array().unwrap().iter().map(|h| h.as_str().unwrap()).collect();
    assert_eq!(differ, ["masking.rate", "training.lr"], "the swept keys, shown first");
    let metrics: Vec<&str> = exp["metrics"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    let first = sweep.join(runs[0]["run"].as_str().unwrap());
    for c in eval_columns(&first) {
        assert!(metrics.contains(&format!("eval/{c}").as_str()), "eval/{c} not in {metrics:?}");
    }
}
