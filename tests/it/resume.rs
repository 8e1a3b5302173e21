//! Stopping and resuming through the real binary, dropout on: a run stopped
//! by SIGTERM, or SIGKILLed (at moments drawn from a seeded generator, some
//! during checkpoint writes), then resumed, ends with the same parameters,
//! bit for bit, and the same metric rows as a run that was never stopped.
//! And a second run of the same name is refused while the first one runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use tch::Tensor;

use crate::common::{assert_error, assert_same_run, dropout_args, read_csv, runner_command, signal, stderr, tiny_bert, EXACT};

const STEPS: u64 = 40;

/// The tiny recipe with dropout on, checkpoints every `every` steps.
fn args(command: &str, out: &Path, every: u64, extra: &[&str]) -> Vec<String> {
    let sets = [
        "run.name=r".to_string(),
        format!("training.max_steps={STEPS}"),
        format!("training.checkpoint.every={every}"),
        "training.checkpoint.keep=2".into(),
        "eval.every=7".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    [command.to_string()].into_iter().chain(dropout_args(out, &sets)).collect()
}

fn start(a: &[String]) -> Child {
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    runner_command(&a)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(a: &[String]) -> Output {
    start(a).wait_with_output().unwrap()
}

/// The run that is never stopped.
fn reference(out: &Path) -> PathBuf {
    let o = finish(&args("run", out, 0, &["run.name=reference"]));
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("reference")
}

/// Waits until `path` exists (the run has got that far), at most a minute.
fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {} appeared", path.display());
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Parameters equal bit for bit; metric rows equal except wall-clock columns,
/// a row for each step and one at step 0.
fn assert_same_end(reference: &Path, resumed: &Path) {
    assert_same_run(reference, resumed, EXACT);
    assert_eq!(read_csv(&resumed.join("metrics.csv")).height() as u64, STEPS + 1, "a row per step and one at step 0");
}

#[test]
fn a_run_stopped_by_sigterm_resumes_to_the_same_end() {
    let out = tempfile::tempdir().unwrap();
    let reference = reference(out.path());
    let run = out.path().join("r");
    let mut child = start(&args("run", out.path(), 0, &[]));
    // Once the first steps are logged (metrics.csv has more than its step-0 row).
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(run.join("metrics.csv")).map_or(0, |t| t.lines().count()) < 4 {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "the run ended before it was signalled");
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(child.id(), libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(err.contains("stopped by SIGTERM after step") && err.contains("resume with: runner resume"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let stopped_at: u64 = err.split("stopped by SIGTERM after step ").nth(1).unwrap().split(';').next().unwrap().trim().parse().unwrap();
    assert!(stopped_at < STEPS, "{err}");
    assert!(run.join(format!("checkpoints/step-{stopped_at}/manifest.json")).is_file());

    // A resume with a recipe that would change the result is refused, naming the key.
    let changed: Vec<String> = args("run", out.path(), 0, &["training.lr=1e-3"]).into_iter().chain(["--resume".to_string()]).collect();
    assert_error(&finish(&changed), 2, &["training.lr (0.002 -> 0.001)"]);

    let o = finish(&["resume".to_string(), run.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("resuming after step {stopped_at}")), "{}", stderr(&o));
    assert_same_end(&reference, &run);
}

#[test]
fn sigkill_at_random_moments_then_resume_ends_as_an_uninterrupted_run() {
    let out = tempfile::tempdir().unwrap();
    let reference = reference(out.path());
    let run = out.path().join("r");
    // A checkpoint every step, so that many kills land during a write.
    let a = args("run", out.path(), 1, &[]);
    let resume: Vec<String> = a.iter().cloned().chain(["--resume".to_string()]).collect();

    // The first kill comes after a complete checkpoint.
    let mut child = start(&a);
    wait_for(&run.join("checkpoints/step-3/manifest.json"), &mut child);
    signal(child.id(), libc::SIGKILL);
    child.wait().unwrap();

    // Then 10 kills after delays drawn from a seeded generator.
    let mut state: u64 = 0x5EED;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % 1000
    };
    let mut resumed_from = Vec::new();
    for _ in 0..10 {
        let newest = newest_complete(&run);
        let child = start(&resume);
        let delay = Duration::from_millis(300 + next() * 2);
        let t = Instant::now();
        // Polled without reaping, so the pid stays this child's until it is killed.
        let running = |c: &Child| {
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child with WNOWAIT leaves it to be reaped below.
            unsafe { libc::waitid(libc::P_PID, c.id(), &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT) };
            (unsafe { info.si_pid() }) == 0
        };
        while t.elapsed() < delay && running(&child) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed = running(&child);
        if killed {
            signal(child.id(), libc::SIGKILL);
        }
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{err}");
        assert!(killed || o.status.success(), "a run that was not killed failed:\n{err}");
        // If it got as far as loading, it loaded the newest complete checkpoint.
        if let Some(line) = err.lines().find(|l| l.contains("resuming after step")) {
            assert!(line.contains(&format!("resuming after step {newest} ")), "expected step {newest}: {line}");
            resumed_from.push(newest);
        }
    }
    assert!(resumed_from.len() >= 3, "too few of the killed runs got to training: {resumed_from:?}");

    let o = finish(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_end(&reference, &run);
    // Only the newest `keep` checkpoints remain, and no temporary folder.
    let left: Vec<String> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.len() <= 2 && left.iter().all(|n| n.starts_with("step-")), "{left:?}");
}

/// The step of the newest checkpoint folder with a manifest (0 if none).
fn newest_complete(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("manifest.json").is_file())
                .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("step-").and_then(|s| s.parse().ok()))
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn a_second_run_of_the_same_name_is_refused_while_the_first_runs() {
    let out = tempfile::tempdir().unwrap();
    let a = args("run", out.path(), 0, &["training.max_steps=100000"]);
    let mut first = start(&a);
    wait_for(&out.path().join("r/metrics.csv"), &mut first);
    let o = finish(&args("run", out.path(), 0, &["training.max_steps=100000", "training.lr=1e-3"]));
    let overwrite: Vec<String> = a.iter().cloned().chain(["--overwrite".to_string()]).collect();
    let o2 = finish(&overwrite);
    signal(first.id(), libc::SIGKILL);
    first.wait().unwrap();
    assert_error(&o, 2, &["in use by another runner process"]);
    assert_error(&o2, 2, &["in use by another runner process"]);
    // And the first run's rows are still there.
    assert!(out.path().join("r/metrics.csv").is_file());
}

#[test]
fn a_loss_that_is_not_a_number_names_the_step_the_checkpoint_and_the_documents_and_keeps_overwritten_results() {
    let out = tempfile::tempdir().unwrap();
    // The tiny model with a NaN in a LayerNorm: every loss is NaN.
    let model = out.path().join("nan-bert");
    std::fs::create_dir(&model).unwrap();
    let fixture = tiny_bert();
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
    }
    let weights = model.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    let (_, t) = tensors.iter_mut().find(|(n, _)| n.ends_with("embeddings.LayerNorm.weight")).unwrap();
    let _ = t.fill_(f64::NAN);
    Tensor::write_safetensors(&tensors, &weights).unwrap();

    // An earlier run of the same name, which the failing run asks to overwrite.
    let earlier = finish(&args("run", out.path(), 0, &["training.max_steps=2"]));
    assert!(earlier.status.success(), "{}", stderr(&earlier));
    let rows = std::fs::read(out.path().join("r/metrics.csv")).unwrap();

    let m = format!("model.checkpoint={}", model.display());
    let mut a = args("run", out.path(), 0, &[&m, "eval.at_start=false"]);
    a.push("--overwrite".into());
    let o = finish(&a);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for needle in ["training loss became NaN at step 1", "last good checkpoint: none", "training documents"] {
        assert!(err.contains(needle), "`{needle}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    // The failed run did not cost the earlier results: they are back in place.
    assert_eq!(std::fs::read(out.path().join("r/metrics.csv")).unwrap(), rows, "the earlier run's rows are restored");
    assert!(out.path().join("r/checkpoint/model.safetensors").is_file());
    assert!(!out.path().join(".r.replaced").exists());
}

#[test]
fn an_interrupted_sweep_run_continues_from_its_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let dir = format!("run.output_dir={}", out.path().display());
    let sweep: Vec<String> = [
        "sweep", "tests/recipes/sweep-tiny.yaml.j2", "--set", &dir, "--grid", "masking.rate=0.15", "--grid", "training.lr=1e-3",
        "--set", "training.checkpoint.every=4", "--set", "training.checkpoint.keep=3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let o = finish(&sweep);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = out.path().join("sweep-tiny/rate-0.15_lr-0.001");
    let before = std::fs::read(run.join("checkpoint/model.safetensors")).unwrap();
    // As if killed after the checkpoint of step 8: no summary, no export, no step 12.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-12")).unwrap();
    let o = finish(&sweep);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming after step 8"), "{}", stderr(&o));
    assert_eq!(std::fs::read(run.join("checkpoint/model.safetensors")).unwrap(), before, "the continued run ends where the first one did");
}

/// A second signal stops the run at once and says so: no checkpoint is
/// started, the newest complete one stays, and the exit code is 128 + signal.
#[test]
fn a_second_signal_stops_at_once_and_says_so() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let out = tempfile::tempdir().unwrap();
        let run = out.path().join("r");
        // bert-base's long steps, so the second signal lands while the first one's
        // step still runs (two signals sent at once would merge into one).
        let tokenizer = format!("tokenizer.path={}", tiny_bert().join("tokenizer.json").display());
        let extra = ["training.max_steps=100000", "eval.every=0", "model.checkpoint=null", "model.options.preset=bert-base", &tokenizer];
        let mut child = start(&args("run", out.path(), 0, &extra));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(run.join("metrics.csv")).map_or(0, |t| t.lines().count()) < 2 {
            assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "the run ended before it was signalled");
            std::thread::sleep(Duration::from_millis(2));
        }
        signal(child.id(), sig);
        std::thread::sleep(Duration::from_millis(20));
        signal(child.id(), sig);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(128 + sig), "{err}");
        assert!(err.contains(&format!("a second {name}: stopped at once")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The tiny recipe on copies of the toy corpus and the tiny model (under
/// `out`), 10 steps, a checkpoint every 5; `command` then its arguments.
fn copied_inputs_args(command: &str, out: &Path) -> Vec<String> {
    let corpus = out.join("corpus.txt");
    let model = out.join("model");
    if !model.exists() {
        std::fs::copy(crate::common::root().join("tests/fixtures/toy-corpus.txt"), &corpus).unwrap();
        std::fs::create_dir(&model).unwrap();
        for f in std::fs::read_dir(tiny_bert()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), model.join(f.file_name())).unwrap();
        }
    }
    let sets = [
        format!("run.output_dir={}", out.display()),
        "run.name=r".into(),
        format!("data.train={}", corpus.display()),
        format!("model.checkpoint={}", model.display()),
        "training.max_steps=10".into(),
        "training.checkpoint.every=5".into(),
        "eval.every=5".into(),
        "data.cache=false".into(),
    ];
    let mut a = vec![command.to_string(), "tests/recipes/tiny.yaml".into()];
    for s in sets {
        a.extend(["--set".to_string(), s]);
    }
    a
}

/// A run of `copied_inputs_args` stopped as if killed after its step-5 checkpoint.
fn run_stopped_after_step_5(out: &Path) -> PathBuf {
    let o = finish(&copied_inputs_args("run", out));
    assert!(o.status.success(), "{}", stderr(&o));
    let run = out.join("r");
    std::fs::remove_file(run.join("summary.json")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(run.join("checkpoints/step-10")).unwrap();
    run
}

/// The files of a run folder with their bytes, but its lock (none should be left).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                all.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    all.sort();
    all
}

/// What a run read besides its recipe is recorded at its start: a corpus
/// edited in place, or a key of the model's config.json that changes training
/// (its dropout), refuses the resume (exit 2) naming what changed and how to go
/// on, and leaves the run as it was; a corpus only touched (same text) resumes
/// with a warning.
#[test]
fn a_resume_after_the_corpus_or_the_model_config_changed_is_refused_naming_it() {
    let out = tempfile::tempdir().unwrap();
    let run = run_stopped_after_step_5(out.path());
    let resume = ["resume".to_string(), run.display().to_string()];
    let before = snapshot(&run);
    let corpus = out.path().join("corpus.txt");
    let text = std::fs::read_to_string(&corpus).unwrap();

    // The corpus edited in place.
    std::fs::write(&corpus, text.replace("cat", "dog")).unwrap();
    let o = finish(&resume);
    assert_error(&o, 2, &["cannot resume from the checkpoint after step 5", "corpus.txt", "start a new run"]);
    assert_eq!(snapshot(&run), before, "nothing in the run changed");
    assert!(!out.path().join(".r.lock").exists());

    // Put back with a new modification time: the same examples, so it resumes.
    std::fs::write(&corpus, &text).unwrap();
    // The model's dropout changed in its config.json.
    let config = out.path().join("model/config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, original.replace("\"hidden_dropout_prob\": 0.0", "\"hidden_dropout_prob\": 0.2")).unwrap();
    let o = finish(&resume);
    assert_error(&o, 2, &["cannot resume from the checkpoint after step 5", "config.json", "hidden_dropout_prob (0.0 -> 0.2)"]);
    assert_eq!(snapshot(&run), before, "nothing in the run changed");

    std::fs::write(&config, original).unwrap();
    let o = finish(&resume);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("resuming after step 5") && err.contains("the same examples"), "{err}");
}

/// The tiny recipe on a wider model (BERT-base's width, three narrow layers:
/// a step long enough for a signal to land inside it), 4 steps, an eval every
/// 2, a row every step, no checkpoint unless stopped.
fn wide_args(command: &str, out: &Path, name: &str) -> Vec<String> {
    let tokenizer = format!("tokenizer.path={}", tiny_bert().join("tokenizer.json").display());
    let sets = [
        format!("run.name={name}"),
        "training.max_steps=4".into(),
        "eval.every=2".into(),
        "training.checkpoint.every=0".into(),
        "data.holdout=0.5".into(),
        "model.checkpoint=null".into(),
        "model.options.preset=bert-base".into(),
        "model.options.config.num_hidden_layers=3".into(),
        "model.options.config.intermediate_size=768".into(),
        tokenizer,
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    [command.to_string()].into_iter().chain(dropout_args(out, &sets)).collect()
}

/// The rows of a run's metrics.csv: (step, whether it has an eval value).
fn rows(run: &Path) -> Vec<(u64, bool)> {
    let text = std::fs::read_to_string(run.join("metrics.csv")).unwrap_or_default();
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    let eval = header.split(',').position(|c| c == "eval_loss").unwrap();
    lines.map(|l| l.split(',').collect::<Vec<_>>()).map(|c| (c[0].parse().unwrap(), !c[eval].is_empty())).collect()
}

/// Starts a wide run, sends SIGINT `after` once `ready` says so (given the
/// rows so far), and returns the step the run says it stopped after.
fn interrupt_when(out: &Path, name: &str, after: Duration, ready: impl Fn(&[(u64, bool)]) -> bool) -> u64 {
    let run = out.join(name);
    let mut child = start(&wide_args("run", out, name));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready(&rows(&run)) {
        assert!(child.try_wait().unwrap().is_none() && Instant::now() < deadline, "the run ended before it was signalled");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(after);
    signal(child.id(), libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    err.split("stopped by SIGINT after step ").nth(1).and_then(|t| t.split(';').next()?.trim().parse().ok()).unwrap_or_else(|| panic!("{err}"))
}

/// A SIGINT stops the run at the end of the step it lands in: no further
/// step, no eval that step did not start, the checkpoint written; the resumed
/// run (which first does the eval the stopped one skipped) ends bit for bit
/// as one never stopped.
#[test]
fn a_sigint_during_a_step_stops_at_its_end_and_resumes_exactly() {
    let out = tempfile::tempdir().unwrap();
    let o = finish(&wide_args("run", out.path(), "reference"));
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = out.path().join("reference");

    // Landing in step 2's forward pass (step 1's row is written, and step 1 ends
    // soon after it; step 2, which has an eval due, takes longer than the wait).
    let stopped = interrupt_when(out.path(), "in-step", Duration::from_millis(100), |r| r.iter().any(|&(s, _)| s == 1));
    let run = out.path().join("in-step");
    assert_eq!(stopped, 2, "stopped after the step the signal came in");
    assert_eq!(rows(&run).last(), Some(&(2, false)), "no further step, and step 2's eval not run");
    assert!(run.join("checkpoints/step-2/manifest.json").is_file());
    let o = finish(&["resume".to_string(), run.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("step 2: accuracy"), "the eval step 2 owed comes first:\n{}", stderr(&o));
    assert_same_run(&reference, &run, EXACT);

    // Landing in step 2's eval (its row is written, the eval runs after it).
    let stopped = interrupt_when(out.path(), "in-eval", Duration::ZERO, |r| r.iter().any(|&(s, _)| s == 2));
    let run = out.path().join("in-eval");
    assert_eq!(stopped, 2, "stopped after the eval the signal came in");
    assert_eq!(rows(&run).last(), Some(&(2, true)), "the eval it was in finished, no further step");
    let o = finish(&["resume".to_string(), run.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_run(&reference, &run, EXACT);
}
