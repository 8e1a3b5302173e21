//! Pathological inputs in bounded memory: a corpus that is one 20 MB line and
//! a probe file with one 20 MB example. Each is run through the real binary
//! and the peak resident memory of that process (its `ru_maxrss`, from
//! `wait4`) is held under 800 MB: tokenized whole, the texts took 2.6 and 3.1
//! GB; in pieces (or cut), about 200 MB, as a normal corpus of that size does.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::{root, runner_command};
use crate::probe::write_task;

/// The bound on a process's peak resident memory.
const PEAK_BYTES: u64 = 800_000_000;

/// Runs `cmd` to its end; returns its exit code, its stderr and its peak
/// resident memory in bytes (this child's alone, unlike `RUSAGE_CHILDREN`,
/// which the other tests' children would share).
fn run_measured(mut cmd: Command, dir: &Path) -> (Option<i32>, String, u64) {
    let err_path = dir.join("stderr.txt");
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&err_path).unwrap());
    let child = cmd.spawn().unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for this test's own child, which std's handle never waits for.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4: {}", std::io::Error::last_os_error());
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    eprintln!("peak RSS of `{:?}`: {} MB", cmd.get_args().take(2).collect::<Vec<_>>(), usage.ru_maxrss / 1024);
    (code, std::fs::read_to_string(err_path).unwrap(), usage.ru_maxrss as u64 * 1024)
}

/// About `bytes` of the toy corpus's sentences joined by spaces: one line.
fn one_long_line(bytes: usize) -> String {
    let text = std::fs::read_to_string(root().join("tests/fixtures/toy-corpus.txt")).unwrap();
    let sentences: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut line = String::with_capacity(bytes + 200);
    for s in sentences.iter().cycle() {
        if line.len() >= bytes {
            break;
        }
        line.push_str(s);
        line.push(' ');
    }
    line
}

#[test]
fn a_corpus_of_one_20_mb_line_prepares_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = tmp.path().join("one-line.txt");
    std::fs::write(&corpus, one_long_line(20 << 20) + "\n").unwrap();
    let train = format!("data.train={}", corpus.display());
    let mut cmd = runner_command(&[
        "data",
        "prepare",
        "tests/recipes/tiny.yaml",
        "--set",
        &train,
        "--set",
        "data.eval=tests/fixtures/toy-corpus.txt",
    ]);
    cmd.env("RUNNER_CACHE_DIR", tmp.path().join("cache"));
    let (code, err, peak) = run_measured(cmd, tmp.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(peak < PEAK_BYTES, "peak RSS {:.2} GB", peak as f64 / 1e9);
}

#[test]
fn a_probe_example_of_20_mb_is_cut_before_it_is_tokenized() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_task(tmp.path());
    let mut rows = std::fs::read_to_string(&train).unwrap();
    rows.push_str(&serde_json::json!({"text": one_long_line(20 << 20), "label": "ran"}).to_string());
    rows.push('\n');
    std::fs::write(&train, rows).unwrap();
    let out = format!("run.output_dir={}", tmp.path().display());
    let metrics = format!(
        "metrics=[loss, {{name: probe, options: {{train: {}, eval: {}, max_seq_len: 64}}}}]",
        train.display(),
        eval.display()
    );
    let cmd = runner_command(&[
        "run",
        "tests/recipes/tiny.yaml",
        "--set",
        &out,
        "--set",
        &metrics,
        "--set",
        "training.max_steps=1",
        "--set",
        "eval.at_start=false",
        "--set",
        "data.cache=false",
    ]);
    let (code, err, peak) = run_measured(cmd, tmp.path());
    assert_eq!(code, Some(0), "{err}");
    assert!(peak < PEAK_BYTES, "peak RSS {:.2} GB", peak as f64 / 1e9);
}
