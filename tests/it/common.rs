//! What the end-to-end tests share: the repository root and its fixtures, the
//! real `runner` binary run from it with nothing from the outside environment
//! steering it, the tiny recipe, results tables, and two runs compared.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::*;
use tch::Tensor;

/// Variables that would point the binary at other plugins or another Hub.
const OUTSIDE: [&str; 9] = [
    "RUNNER_PLUGIN_PATH",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
];

/// The repository root, where the tests run the binary.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The tiny random BERT the tests train and compare (`tests/fixtures/tiny-bert`).
pub fn tiny_bert() -> PathBuf {
    root().join("tests/fixtures/tiny-bert")
}

/// `tests/recipes/tiny.yaml` with `edit` applied to its text, written as
/// `dir/name`; returns its path.
pub fn tiny_recipe(dir: &Path, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(root().join("tests/recipes/tiny.yaml")).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The arguments after the command for the tiny recipe with dropout on: results
/// under `out`, a train row every step, no token cache, and then each of `sets`
/// as one more `--set`.
pub fn dropout_args<S: AsRef<str>>(out: &Path, sets: &[S]) -> Vec<String> {
    let mut a = vec!["tests/recipes/tiny.yaml".to_string()];
    let base = [
        format!("run.output_dir={}", out.display()),
        "training.log_every=1".into(),
        "model.options.config.hidden_dropout_prob=0.1".into(),
        "model.options.config.attention_probs_dropout_prob=0.1".into(),
        "data.cache=false".into(),
    ];
    for s in base.iter().map(String::as_str).chain(sets.iter().map(AsRef::as_ref)) {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a
}

/// A port that is free now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (or its child).
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0, "kill {pid}");
}

/// A file in the folder of the `runner` binary (the shipped plugin libraries).
pub fn beside_runner(file: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_runner")).with_file_name(file)
}

/// `runner args...` from the repository root, not yet started.
pub fn runner_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.args(args).current_dir(root()).env("RUST_LOG", "warn");
    for v in OUTSIDE {
        c.env_remove(v);
    }
    c
}

/// Runs `runner args...` from the repository root with `envs` set.
pub fn runner_with(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = runner_command(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("the runner binary starts")
}

pub fn runner(args: &[&str]) -> Output {
    runner_with(args, &[])
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: exit `code`, no panic, a message holding every needle.
pub fn assert_error(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "no panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message should say `{n}`:\n{err}");
    }
}

/// Asserts that `text` (a process's stderr) holds none of libtorch's C++
/// stack: no `frame #N` lines and no "Exception raised from" headers, whether
/// from an error's text or from c10's own logging.
pub fn assert_no_cpp_frames(text: &str) {
    assert!(!text.contains("frame #") && !text.contains("Exception raised from"), "libtorch's C++ stack reached stderr:\n{text}");
}

/// Builds a plugin crate outside the workspace with cargo (into
/// target/plugin-tests, shared by every test that builds one); returns the
/// folder holding its library.
pub fn build_plugin(manifest_dir: &Path) -> PathBuf {
    let target = root().join("target/plugin-tests");
    let o = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env("LIBTORCH", root().join(".venv/torch"))
        .env("LIBTORCH_CXX11_ABI", "1")
        .output()
        .expect("cargo runs");
    assert!(o.status.success(), "building {} failed:\n{}", manifest_dir.display(), stderr(&o));
    target.join("debug")
}

/// The library file a plugin crate builds.
pub fn library(dir: &Path, crate_name: &str) -> PathBuf {
    dir.join(format!("lib{}.so", crate_name.replace('-', "_")))
}

/// A CSV table the runner wrote (metrics, summary, report).
pub fn read_csv(path: &Path) -> DataFrame {
    CsvReadOptions::default().try_into_reader_with_file_path(Some(path.into())).unwrap().finish().unwrap()
}

/// Column `name` of `df` as numbers, `None` where a row has none.
pub fn column(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().into_iter().collect()
}

/// How close two runs must end: parameters within `params` (max abs
/// difference), metric values within `metrics` relative (to at least 1).
/// [`EXACT`]: bit for bit, and the same metric text.
#[derive(Clone, Copy)]
pub struct Within {
    pub params: f64,
    pub metrics: f64,
}

pub const EXACT: Within = Within { params: 0.0, metrics: 0.0 };

/// Two runs end alike: the same parameters in `checkpoint/model.safetensors`,
/// and the same `metrics.csv` rows but for the wall-clock columns (tokens_per_s,
/// elapsed_s), as close as `within` says.
pub fn assert_same_run(one: &Path, two: &Path, within: Within) {
    let params = |run: &Path| {
        let mut t = Tensor::read_safetensors(run.join("checkpoint/model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (params(one), params(two));
    let names = |t: &[(String, Tensor)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "the same tensors");
    let diff = |x: &Tensor, y: &Tensor| (x - y).abs().max().double_value(&[]);
    for ((name, ta), (_, tb)) in a.iter().zip(&b) {
        if within.params == 0.0 {
            assert!(ta.equal(tb), "{name} differs by {}", diff(ta, tb));
        } else {
            let d = diff(ta, tb);
            assert!(d < within.params, "{name} differs by {d}");
        }
    }
    // The CSV text, so a value that differs in its last digit shows as such.
    let table = |run: &Path| -> Vec<Vec<String>> {
        let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let rows: Vec<Vec<String>> = text.lines().map(|l| l.split(',').map(str::to_string).collect()).collect();
        let keep: Vec<bool> = rows[0].iter().map(|c| c != "tokens_per_s" && c != "elapsed_s").collect();
        rows.into_iter().map(|r| r.into_iter().zip(&keep).filter(|(_, k)| **k).map(|(v, _)| v).collect()).collect()
    };
    let (ta, tb) = (table(one), table(two));
    assert_eq!(ta[0], tb[0], "the same columns");
    for (i, (ra, rb)) in ta.iter().zip(&tb).enumerate().skip(1) {
        if within.metrics == 0.0 {
            assert_eq!(ra, rb, "metric row {i} differs (header {:?})", ta[0]);
            continue;
        }
        for ((col, x), y) in ta[0].iter().zip(ra).zip(rb) {
            match (x.parse::<f64>().ok(), y.parse::<f64>().ok()) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= within.metrics * x.abs().max(1.0), "row {i}, {col}: {x} vs {y}"),
                _ => assert_eq!(x, y, "row {i}, {col}"),
            }
        }
    }
    assert_eq!(ta.len(), tb.len(), "the same number of metric rows");
}

/// A fixture's batch (`expected.safetensors`: input ids, attention mask, labels).
pub fn batch(e: &std::collections::HashMap<String, Tensor>) -> runner_api::MlmBatch {
    runner_api::MlmBatch {
        input_ids: e["input_ids"].shallow_clone(),
        attention_mask: e["attention_mask"].shallow_clone(),
        labels: e["labels"].shallow_clone(),
        documents: e.get("documents").map(Tensor::shallow_clone),
    }
}

/// Runs a fixture's AdamW steps (`fixture/training.json`) on its batch; returns
/// the losses before each step and, last, the eval-mode loss after them.
pub fn adamw_steps(model: &dyn runner_api::MlmModel, fixture: &Path, e: &std::collections::HashMap<String, Tensor>) -> Vec<f64> {
    use runner::train::optimizer::{AdamW, AdamWConfig};
    use runner_api::Mode;
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture.join("training.json")).unwrap()).unwrap();
    let g = |k: &str| cfg[k].as_f64().unwrap();
    let mut opt = AdamW::new(
        model.parameters().unwrap(),
        AdamWConfig { beta1: cfg["betas"][0].as_f64().unwrap(), beta2: cfg["betas"][1].as_f64().unwrap(), eps: g("eps"), weight_decay: g("weight_decay") },
    );
    let b = batch(e);
    let mut losses = Vec::new();
    for _ in 0..cfg["steps"].as_u64().unwrap() {
        opt.zero_grad();
        let loss = model.forward_mlm(&b, Mode::Train { dropout_key: 1 }).unwrap().loss;
        losses.push(loss.double_value(&[]));
        loss.backward();
        let _ = opt.clip_grad_norm(Some(g("max_grad_norm"))).unwrap();
        opt.step(g("lr")).unwrap();
    }
    losses.push(tch::no_grad(|| model.forward_mlm(&b, Mode::Eval).unwrap().loss.double_value(&[])));
    losses
}
