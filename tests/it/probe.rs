//! The `probe` metric against a reference: a tiny run with a probe, its
//! exported checkpoint's features against transformers' `BertModel` (both
//! poolings), and the probe's accuracy against scikit-learn's
//! `LogisticRegression` on those features with the same regularisation
//! (`tests/fixtures/probe_reference.py`). Then bad probe inputs: exit 2 and a
//! message naming the file and the line.

use std::path::{Path, PathBuf};

use runner::data::tokenizer;
use runner_api::Metric;
use runner_plugin_bert::{Bert, Mlm};
use runner_plugin_metrics::probe::{Pooling, Probe, ProbeOptions};
use tch::{Device, Tensor};

use crate::common::{assert_error, column, read_csv, root, runner, stderr};

const L2: f64 = 0.01;

/// A 3-class task from the toy corpus: the label is a line's verb, with every
/// fourth label moved to the next class so the task is not trivially separable.
/// Lines 0..240 train, the rest eval.
pub(crate) fn write_task(dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(root().join("tests/fixtures/toy-corpus.txt")).unwrap();
    let verbs = ["lives", "ran", "sat"];
    let rows: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, line)| {
            let verb = line.split_whitespace().nth(3).unwrap();
            let mut class = verbs.iter().position(|v| *v == verb).unwrap_or_else(|| panic!("a verb in {line:?}"));
            if i % 4 == 0 {
                class = (class + 1) % 3;
            }
            serde_json::json!({"text": line, "label": verbs[class]}).to_string()
        })
        .collect();
    assert!(rows.len() > 300, "{} lines", rows.len());
    let (train, eval) = (dir.join("train.jsonl"), dir.join("eval.jsonl"));
    std::fs::write(&train, rows[..240].join("\n") + "\n").unwrap();
    std::fs::write(&eval, rows[240..].join("\n") + "\n").unwrap();
    (train, eval)
}

fn probe_entry(train: &Path, eval: &Path, extra: &str) -> String {
    format!(
        "metrics=[loss, {{name: probe, options: {{train: {}, eval: {}, l2: {L2}{extra}}}}}]",
        train.display(),
        eval.display()
    )
}

#[test]
fn probe_features_and_accuracy_match_transformers_and_scikit_learn() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_task(tmp.path());
    let out = format!("run.output_dir={}", tmp.path().display());
    let o = runner(&[
        "run",
        "tests/recipes/tiny.yaml",
        "--set",
        &out,
        "--set",
        "training.max_steps=20",
        "--set",
        "eval.every=10",
        "--set",
        &probe_entry(&train, &eval, ", pooling: mean"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = read_csv(&tmp.path().join("tiny/metrics.csv"));
    let values = |name: &str| column(&csv, name).into_iter().flatten().collect::<Vec<f64>>();
    let (acc, f1) = (values("probe_accuracy"), values("probe_macro_f1"));
    assert_eq!(acc.len(), 3, "probe rows at steps 0, 10 and 20:\n{csv}");
    assert_eq!(f1.len(), 3);
    assert!(acc.iter().chain(&f1).all(|v| (0.0..=1.0).contains(v)), "{acc:?} {f1:?}");

    // The exported checkpoint, through the probe's own code: features for both poolings.
    let ckpt = tmp.path().join("tiny/checkpoint");
    let model = Mlm(Bert::from_pretrained(&ckpt, &serde_yaml::Mapping::new(), Device::Cpu).unwrap());
    let tok = tokenizer::load(&ckpt.join("tokenizer.json")).unwrap();
    let vocab = tokenizer::vocab_info(&tok, &ckpt).unwrap();
    let max_len = 32;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    let mut cls_accuracy = f64::NAN;
    for (pooling, name) in [(Pooling::Cls, "cls"), (Pooling::Mean, "mean")] {
        let yaml = format!("train: {}\neval: {}\nl2: {L2}\nmax_seq_len: {max_len}", train.display(), eval.display());
        let mut opts = ProbeOptions::parse(&serde_yaml::from_str(&yaml).unwrap()).unwrap();
        opts.pooling = pooling;
        let mut probe = Probe::new(opts);
        probe.prepare(&tokenizer::Encoder(&tok), &vocab, 64).unwrap();
        let (tr, ev) = probe.features_of(&model).unwrap();
        named.push((format!("{name}_train"), tr));
        named.push((format!("{name}_eval"), ev));
        if pooling == Pooling::Cls {
            probe.score(&model).unwrap();
            cls_accuracy = probe.compute().unwrap()["probe_accuracy"];
        }
    }
    let ours = tmp.path().join("ours.safetensors");
    Tensor::write_safetensors(&named, &ours).unwrap();

    let python = root().join(".venv/bin/python");
    let r = std::process::Command::new(&python)
        .arg(root().join("tests/fixtures/probe_reference.py"))
        .args([&ckpt, &train, &eval, &ours])
        .args([L2.to_string(), max_len.to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (run scripts/setup.sh): {e}", python.display()));
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let reference: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    for pooling in ["cls", "mean"] {
        let diff = reference[pooling]["max_feature_diff"].as_f64().unwrap();
        assert!(diff < 1e-4, "{pooling} features differ from transformers' by {diff}");
    }
    // The run's last probe (mean pooling, on the weights it exported) and the
    // in-process cls probe, each within 1 point of scikit-learn.
    let (sk_mean, sk_cls) = (reference["mean"]["accuracy"].as_f64().unwrap(), reference["cls"]["accuracy"].as_f64().unwrap());
    let last = *acc.last().unwrap();
    assert!((last - sk_mean).abs() <= 0.01 + 1e-9, "probe accuracy {last}, scikit-learn {sk_mean}");
    assert!((cls_accuracy - sk_cls).abs() <= 0.01 + 1e-9, "cls probe accuracy {cls_accuracy}, scikit-learn {sk_cls}");
    let sk_f1 = reference["mean"]["macro_f1"].as_f64().unwrap();
    assert!((f1.last().unwrap() - sk_f1).abs() <= 0.02, "macro-F1 {:?}, scikit-learn {sk_f1}", f1.last());
    eprintln!("probe accuracy by eval {acc:?}; scikit-learn: mean {sk_mean}, cls {sk_cls}; ours cls {cls_accuracy}");
}

/// A bad probe file is refused before anything runs: exit 2, the file and line named.
#[test]
fn bad_probe_inputs_exit_2_naming_the_file_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, eval) = write_task(tmp.path());
    let bad = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let good = "{\"text\": \"the cat sat\", \"label\": \"a\"}\n";
    let malformed = bad("malformed.jsonl", &format!("{good}{good}{{\"text\": \"the dog\", \"label\": \n"));
    let one_class = bad("one.jsonl", &good.repeat(3));
    let missing = tmp.path().join("missing.jsonl");
    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(String, Vec<String>)> = vec![
        (probe_entry(&missing, &eval, ""), vec![s(&missing), "cannot read".into()]),
        (probe_entry(&malformed, &eval, ""), vec![format!("{} line 3", s(&malformed)), "not a JSON object".into()]),
        (probe_entry(&train, &eval, ", label_field: topic"), vec![format!("{} line 1", s(&train)), "no field `topic`".into()]),
        (probe_entry(&one_class, &eval, ""), vec![format!("{} lines 1 to 3", s(&one_class)), "two classes".into()]),
        (probe_entry(&train, &eval, ", pooling: max"), vec!["metrics[1].options: pooling".into()]),
    ];
    for (set, needles) in &cases {
        let o = runner(&["validate", "tests/recipes/tiny.yaml", "--set", set]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        assert_error(&o, 2, &needles);
    }
    // `run` refuses the same way, and leaves no run folder.
    let out = format!("run.output_dir={}", tmp.path().join("results").display());
    let o = runner(&["run", "tests/recipes/tiny.yaml", "--set", &out, "--set", &cases[3].0]);
    assert_error(&o, 2, &["two classes"]);
    assert!(!tmp.path().join("results/tiny").exists());
}
