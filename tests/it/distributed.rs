//! Data-parallel training through the real binary, on the CPU with Gloo: two
//! processes with micro-batch 8 end with the parameters and metric rows of one
//! process with micro-batch 8 and two accumulation steps, dropout on, whether
//! `runner launch` starts them or torchrun's variables are set by hand. And
//! `precision: fp16` trains the tiny recipe to the loss of fp32.

use std::path::{Path, PathBuf};

use crate::common::{assert_no_cpp_frames, assert_same_run, column, dropout_args, free_port, read_csv, runner, runner_command, stderr, Within};

/// The tiny recipe with dropout on, 5 steps, an eval at steps 0, 4 and 5.
fn args(out: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let name = format!("run.name={name}");
    let sets = [name.as_str(), "training.max_steps=5", "eval.every=4"];
    dropout_args(out, &[&sets[..], extra].concat())
}

/// Parameters within 1e-5 and metric values within 1e-6 relative, and a train
/// row for each of the 5 steps, so every step's loss was compared.
fn assert_same_five_steps(one: &Path, two: &Path) {
    assert_same_run(one, two, Within { params: 1e-5, metrics: 1e-6 });
    assert_eq!(column(&read_csv(&one.join("metrics.csv")), "train_loss").iter().flatten().count(), 5);
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
    assert_same_five_steps(&one, &out.path().join("two"));
}

#[test]
fn two_workers_started_with_torchrun_variables_match_one_process() {
    let out = tempfile::tempdir().unwrap();
    let one = one_process_reference(out.path());
    let port = free_port().to_string();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            let mut a = vec!["run".to_string()];
            a.extend(args(out.path(), "two", &[]));
            let rank = rank.to_string();
            runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>())
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
    assert_same_five_steps(&one, &out.path().join("two"));
}

/// Two ranks started by hand with one key different: both refuse, naming the
/// key and its two values, and no step is trained (no metrics are written).
#[test]
fn ranks_with_different_recipes_refuse_on_every_rank_naming_the_key() {
    let out = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let workers: Vec<_> = (0..2)
        .map(|rank| {
            let mut a = vec!["run".to_string()];
            let lr = if rank == 0 { "training.lr=2.0e-3" } else { "training.lr=1.0e-3" };
            a.extend(args(out.path(), "disagree", &[lr]));
            let rank = rank.to_string();
            runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>())
                .envs([
                    ("RANK", rank.as_str()),
                    ("LOCAL_RANK", rank.as_str()),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "127.0.0.1"),
                    ("MASTER_PORT", port.as_str()),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, w) in workers.into_iter().enumerate() {
        let o = w.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "rank {rank}: {err}");
        assert!(err.contains("the ranks of this job disagree in training.lr;"), "rank {rank}: {err}");
        assert!(err.contains("training.lr (0.002 on rank 0, 0.001 on rank 1)"), "rank {rank}: {err}");
        assert!(!err.contains("panicked"), "rank {rank}: {err}");
        assert_no_cpp_frames(&err);
    }
    assert!(!out.path().join("disagree/metrics.csv").exists(), "no step trained");
    assert!(!out.path().join("disagree/recipe.yaml").exists(), "nothing written");
}

/// `runner run` as rank `rank` of two with `MASTER_ADDR` `addr` and a 3 s
/// rendezvous timeout; no other rank is ever started.
fn rank_alone(out: &Path, rank: &str, addr: &str) -> std::process::Output {
    let mut a = vec!["run".to_string()];
    a.extend(args(out, "alone", &["training.distributed.timeout_s=3"]));
    let port = free_port().to_string();
    runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .envs([
            ("RANK", rank),
            ("LOCAL_RANK", rank),
            ("WORLD_SIZE", "2"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", addr),
            ("MASTER_PORT", port.as_str()),
        ])
        .output()
        .unwrap()
}

/// A rank that cannot meet its peers (the other never comes, rank 1 started
/// before rank 0, an address that does not resolve) says so in one line:
/// c10d's retry and timeout logging and libtorch's C++ stack stay off stderr.
#[test]
fn a_rank_that_cannot_meet_its_peers_says_so_in_one_line() {
    let out = tempfile::tempdir().unwrap();
    for (rank, addr, code, needle) in [
        ("0", "127.0.0.1", 1, "rank 0 of 2 could not form the gloo process group at 127.0.0.1:"),
        ("1", "127.0.0.1", 1, "rank 1 of 2 could not form the gloo process group at 127.0.0.1:"),
        ("1", "no-such-host.invalid", 2, "MASTER_ADDR no-such-host.invalid"),
    ] {
        let o = rank_alone(out.path(), rank, addr);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "rank {rank} at {addr}: {err}");
        assert_no_cpp_frames(&err);
        assert!(err.contains(needle), "rank {rank} at {addr}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line, rank {rank} at {addr}: {err}");
    }
    assert!(!out.path().join("alone/metrics.csv").exists(), "no step trained");
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
        let df = read_csv(&out.path().join(precision).join("metrics.csv"));
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
