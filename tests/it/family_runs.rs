//! Every family through the real binary, as a user runs it: the tiny recipe on
//! the RoBERTa, XLM-RoBERTa and DistilBERT fixtures, each with its own
//! tokenizer, whole-word masking, the token store, dropout on, and the loss,
//! pseudo-perplexity and probe metrics. A run resumed from its middle
//! checkpoint ends bit for bit as the uninterrupted one; fp16 trains to the
//! loss of fp32; two Gloo workers match one process with accumulation; the
//! export loads in transformers as the family's own class, with its tokenizer.

use std::path::{Path, PathBuf};

use crate::common::{assert_same_run, column, read_csv, root, runner, runner_with, stderr, Within, EXACT};

struct Family {
    fixture: &'static str,
    /// `model.options.config` keys that turn dropout on.
    dropout: [&'static str; 2],
    /// The class transformers loads the export as, and the tokenizer's mask token.
    class: &'static str,
    mask: &'static str,
}

const ROBERTA: Family = Family {
    fixture: "tiny-roberta",
    dropout: ["hidden_dropout_prob", "attention_probs_dropout_prob"],
    class: "RobertaForMaskedLM",
    mask: "<mask>",
};
const XLM_ROBERTA: Family = Family {
    fixture: "tiny-xlm-roberta",
    dropout: ["hidden_dropout_prob", "attention_probs_dropout_prob"],
    class: "XLMRobertaForMaskedLM",
    mask: "<mask>",
};
const DISTILBERT: Family =
    Family { fixture: "tiny-distilbert", dropout: ["dropout", "attention_dropout"], class: "DistilBertForMaskedLM", mask: "[MASK]" };
const MODERNBERT: Family =
    Family { fixture: "tiny-modernbert", dropout: ["attention_dropout", "mlp_dropout"], class: "ModernBertForMaskedLM", mask: "[MASK]" };

/// `runner COMMAND` on the tiny recipe for `f`, results in `out/name`.
fn run(command: &[&str], f: &Family, out: &Path, name: &str, extra: &[String]) -> PathBuf {
    let task = crate::probe::write_task(out);
    let mut sets = vec![
        format!("run.output_dir={}", out.display()),
        format!("run.name={name}"),
        format!("model.checkpoint=tests/fixtures/{}", f.fixture),
        format!("model.options.config.{}=0.1", f.dropout[0]),
        format!("model.options.config.{}=0.1", f.dropout[1]),
        "masking.strategy=whole_word".into(),
        format!("metrics=[loss, perplexity, pseudo_perplexity, {{name: probe, options: {{train: {}, eval: {}}}}}]", task.0.display(), task.1.display()),
        "training.log_every=1".into(),
    ];
    sets.extend(extra.iter().cloned());
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.push("tests/recipes/tiny.yaml".into());
    for s in sets {
        args.extend(["--set".into(), s]);
    }
    let o = runner(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}: {}", f.fixture, stderr(&o));
    out.join(name)
}

fn last(df: &polars::prelude::DataFrame, col: &str) -> f64 {
    column(df, col).into_iter().flatten().last().unwrap_or_else(|| panic!("a value in column {col}"))
}

/// Trains, resumes from the middle checkpoint, and trains in fp16.
fn trains_resumes_and_exports(f: &Family) {
    trains_resumes_and_exports_with(f, &[]);
}

/// [`trains_resumes_and_exports`] with more `--set`s on every run.
fn trains_resumes_and_exports_with(f: &Family, extra: &[&str]) {
    let out = tempfile::tempdir().unwrap();
    let mut steps = vec!["training.max_steps=20".to_string(), "eval.every=10".into(), "training.checkpoint.every=10".into()];
    steps.extend(extra.iter().map(|s| s.to_string()));
    let whole = run(&["run"], f, out.path(), "whole", &steps);
    let df = read_csv(&whole.join("metrics.csv"));
    for col in ["train_loss", "eval_loss", "perplexity", "pseudo_perplexity", "probe_accuracy"] {
        assert!(last(&df, col).is_finite(), "{}: {col}", f.fixture);
    }
    let losses: Vec<f64> = column(&df, "eval_loss").into_iter().flatten().collect();
    assert!(losses.last() < losses.first(), "{}: eval loss should fall: {losses:?}", f.fixture);

    // The same run, then taken back to its step-10 checkpoint and resumed.
    let resumed = run(&["run"], f, out.path(), "resumed", &steps);
    std::fs::remove_dir_all(resumed.join("checkpoints/step-20")).unwrap();
    let o = runner_with(&["resume", resumed.to_str().unwrap()], &[("RUST_LOG", "info")]);
    assert!(o.status.success(), "{}: {}", f.fixture, stderr(&o));
    assert!(stderr(&o).contains("resuming after step 10"), "{}: {}", f.fixture, stderr(&o));
    assert_same_run(&whole, &resumed, EXACT);

    let mut fp16 = steps.clone();
    fp16.extend(["training.checkpoint.every=0".to_string(), "training.precision=fp16".into()]);
    let fp16 = run(&["run"], f, out.path(), "fp16", &fp16);
    let (a, b) = (last(&df, "eval_loss"), last(&read_csv(&fp16.join("metrics.csv")), "eval_loss"));
    assert!((a - b).abs() < 0.02 * a, "{}: fp16 eval loss {b} vs fp32 {a}", f.fixture);

    // The export, as transformers loads it.
    let script = format!(
        "import sys\nfrom transformers import AutoModelForMaskedLM, AutoTokenizer\n\
         m = AutoModelForMaskedLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1])\n\
         print(type(m).__name__, t.mask_token, t('the cat')['input_ids'][0] == t.cls_token_id)"
    );
    let o = std::process::Command::new(root().join(".venv/bin/python"))
        .args(["-c", &script])
        .arg(whole.join("checkpoint"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("{} {} True", f.class, f.mask));
}

#[test]
fn roberta_trains_resumes_and_exports() {
    trains_resumes_and_exports(&ROBERTA);
}

#[test]
fn xlm_roberta_trains_resumes_and_exports() {
    trains_resumes_and_exports(&XLM_ROBERTA);
}

#[test]
fn distilbert_trains_resumes_and_exports() {
    trains_resumes_and_exports(&DISTILBERT);
}

#[test]
fn modernbert_trains_resumes_and_exports() {
    trains_resumes_and_exports(&MODERNBERT);
}

/// Document attention, packed and line by line: trains, resumes bit for bit,
/// exports. Line by line, rows hold several whole lines and less padding.
#[test]
fn modernbert_with_document_attention_trains_and_resumes() {
    trains_resumes_and_exports_with(&MODERNBERT, &["data.document_attention=true"]);
    trains_resumes_and_exports_with(&MODERNBERT, &["data.document_attention=true", "data.examples=line_by_line"]);
}

/// The BERT-like families keep documents apart too: RoBERTa on whole lines packed into rows.
#[test]
fn roberta_with_document_attention_trains_and_resumes() {
    trains_resumes_and_exports_with(&ROBERTA, &["data.document_attention=true", "data.examples=line_by_line"]);
}

/// Two Gloo workers with micro-batch 8 end as one process with two accumulation steps.
#[test]
fn two_roberta_workers_match_one_process_with_accumulation() {
    let out = tempfile::tempdir().unwrap();
    let steps = vec!["training.max_steps=5".to_string(), "eval.every=4".into()];
    let one = run(&["run"], &ROBERTA, out.path(), "one", &[steps.clone(), vec!["training.grad_accum_steps=2".into()]].concat());
    let two = run(&["launch", "--nproc-per-node", "2"], &ROBERTA, out.path(), "two", &steps);
    assert_same_run(&one, &two, Within { params: 1e-5, metrics: 1e-6 });
}

/// A sweep over the four families' checkpoints, then one report that ranks
/// them by the same eval loss column.
#[test]
fn a_sweep_over_families_runs_and_reports() {
    let out = tempfile::tempdir().unwrap();
    let template = out.path().join("families.yaml.j2");
    let fixtures = ["tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert"];
    let grid: Vec<String> = fixtures.iter().map(|f| root().join("tests/fixtures").join(f).display().to_string()).collect();
    std::fs::write(
        &template,
        format!(
            "{{#\ngrid:\n  model.checkpoint: [{}]\n#}}\nrun: {{name: {{{{ sweep.run }}}}, seed: 7}}\n\
             data: {{train: {}, holdout: 0.2, max_seq_len: 32}}\nmodel: {{checkpoint: {{{{ model.checkpoint }}}}}}\n\
             masking: {{strategy: whole_word}}\n\
             training: {{threads: 1, batch_size: 8, max_steps: 4, warmup_steps: 1}}\neval: {{every: 4}}\n\
             metrics: [loss, perplexity, accuracy]\n",
            grid.join(", "),
            root().join("tests/fixtures/toy-corpus.txt").display()
        ),
    )
    .unwrap();
    let dir = format!("run.output_dir={}", out.path().join("sweeps").display());
    let o = runner(&["sweep", template.to_str().unwrap(), "--set", &dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sweep = out.path().join("sweeps/families");
    let o = runner(&["report", sweep.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report = read_csv(&sweep.join("report.csv"));
    assert_eq!(report.height(), fixtures.len(), "one row per family:\n{report}");
    let runs: Vec<String> = report.column("run").unwrap().str().unwrap().into_iter().map(|s| s.unwrap().to_string()).collect();
    for f in fixtures {
        assert!(runs.iter().any(|r| r.contains(f)), "{f} in {runs:?}");
    }
    assert!(column(&report, "final_eval_loss").iter().all(|l| l.is_some_and(f64::is_finite)), "{report}");
}
