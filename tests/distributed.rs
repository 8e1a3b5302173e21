//! Data-parallel training through the real binary, on the CPU with Gloo: two
//! processes with micro-batch 8 end with the parameters and metric rows of one
//! process with micro-batch 8 and two accumulation steps, dropout on, whether
//! `runner launch` starts them or torchrun's variables are set by hand. And
//! `precision: fp16` trains the tiny recipe to the loss of fp32.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{root, runner, stderr};
use polars::prelude::*;
use tch::Tensor;

/// The tiny recipe with dropout on, 5 steps, an eval at steps 0, 4 and 5.
fn args(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["tests/recipes/tiny.yaml"].iter().map(|s| s.to_string()).collect();
    let sets = [
        format!("run.output_dir={}", out.display()),
        format!("run.name={name}"),
        "training.max_steps=5".into(),
        "training.log_every=1".into(),
        "eval.every=4".into(),
        "model.options.config.hidden_dropout_prob=0.1".into(),
        "model.options.config.attention_probs_dropout_prob=0.1".into(),
        "data.cache=false".into(),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        a.extend(["--set".to_string(), s.to_string()]);
    }
    a
}

fn params(run: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(run.join("checkpoint/model.safetensors")).unwrap().into_iter().collect()
}

fn metrics(run: &Path) -> DataFrame {
    CsvReadOptions::default().try_into_reader_with_file_path(Some(run.join("metrics.csv"))).unwrap().finish().unwrap()
}

fn column(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    df.column(name).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().into_iter().collect()
}

/// Same parameters (max abs difference below 1e-5) and the same metric rows.
fn assert_same_run(one: &Path, two: &Path) {
    let (a, b) = (params(one), params(two));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let d = (t - &b[name]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{name} differs by {d}");
    }
    let (ma, mb) = (metrics(one), metrics(two));
    assert_eq!(ma.shape(), mb.shape(), "{ma}\n{mb}");
    assert_eq!(column(&ma, "step"), column(&mb, "step"));
    for col in ["lr", "epoch", "train_loss", "eval_loss", "perplexity", "accuracy"] {
        for (x, y) in column(&ma, col).into_iter().zip(column(&mb, col)) {
            match (x, y) {
                (Some(x), Some(y)) => assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{col}: {x} vs {y}\n{ma}\n{mb}"),
                (x, y) => assert_eq!(x, y, "{col}"),
            }
        }
    }
    // A train row for each of the 5 steps, so every step's loss was compared.
    assert_eq!(column(&ma, "train_loss").iter().flatten().count(), 5);
}

fn one_process_reference(out: &Path) -> PathBuf {
    let mut a = vec!["run".to_string()];
    a.extend(args(out, "one", &["training.grad_accum_steps=2"]));
    let o = runner(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("one")
}

#[test]
fn two_gloo_workers_by_runner_launch_match_one_process_with_accumulation() {
    let out = tempfile::tempdir().unwrap();
    let one = one_process_reference(out.path());
    let mut a = vec!["launch".to_string(), "--nproc-per-node".into(), "2".into()];
    a.extend(args(out.path(), "two", &[]));
    let o = runner(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_run(&one, &out.path().join("two"));
}

#[test]
fn two_workers_started_with_torchrun_variables_match_one_process() {
    let out = tempfile::tempdir().unwrap();
    let one = one_process_reference(out.path());
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            let mut a = vec!["run".to_string()];
            a.extend(args(out.path(), "two", &[]));
            let rank = rank.to_string();
            Command::new(env!("CARGO_BIN_EXE_runner"))
                .args(&a)
                .current_dir(root())
                .env("RUST_LOG", "warn")
                .envs([
                    ("RANK", rank.as_str()),
                    ("LOCAL_RANK", rank.as_str()),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "127.0.0.1"),
                    ("MASTER_PORT", port.as_str()),
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    assert_same_run(&one, &out.path().join("two"));
}

#[test]
fn fp16_trains_the_tiny_recipe_to_the_loss_of_fp32() {
    let out = tempfile::tempdir().unwrap();
    let final_loss = |precision: &str| {
        let dir = format!("run.output_dir={}", out.path().display());
        let name = format!("run.name={precision}");
        let p = format!("training.precision={precision}");
        let o = runner(&["run", "tests/recipes/tiny.yaml", "--set", &dir, "--set", &name, "--set", &p]);
        assert!(o.status.success(), "{}", stderr(&o));
        let df = metrics(&out.path().join(precision));
        (column(&df, "eval_loss").into_iter().flatten().last().unwrap(), df)
    };
    let (fp32, _) = final_loss("fp32");
    let (fp16, df) = final_loss("fp16");
    assert!((fp16 - fp32).abs() < 0.02 * fp32, "fp16 eval loss {fp16} vs fp32 {fp32}");
    // The loss scale and skipped steps are in the table, on every train row.
    let scales: Vec<f64> = column(&df, "loss_scale").into_iter().flatten().collect();
    assert_eq!(scales.len(), column(&df, "train_loss").iter().flatten().count());
    assert!(scales.iter().all(|&s| s >= 1.0 && s <= 65536.0), "{scales:?}");
    assert!(column(&df, "skipped_steps").iter().flatten().all(|&s| s < 30.0));
}
