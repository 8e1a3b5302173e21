//! Parity of the `roberta` (RoBERTa, XLM-RoBERTa) and `distilbert` models with
//! Hugging Face transformers, against fixtures that
//! `tests/fixtures/make_family_fixtures.py` made: logits and loss, the loss
//! and every parameter after three AdamW steps, and an exported checkpoint
//! loaded back by transformers giving the same logits. Within 1e-4. Then the
//! model component a recipe gets from its checkpoint's `model_type`.
//!
//! The models are built through the plugin libraries beside this test binary
//! (cargo builds them as dev-dependencies), as the runner builds them: each
//! plugin declares itself with the same exported symbol, so two of them
//! cannot be linked into one binary.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use runner::registry::Registry;
use runner::train::optimizer::{AdamW, AdamWConfig};
use runner_api::{MlmBatch, MlmModel, Mode, ModelSource};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One fixture: its folder under tests/fixtures, the model component that
/// reads it, and the class transformers loads the export as.
struct Family {
    dir: &'static str,
    model: &'static str,
    class: &'static str,
}

impl Family {
    fn path(&self) -> PathBuf {
        root().join("tests/fixtures").join(self.dir)
    }

    fn model(&self) -> Box<dyn MlmModel> {
        let dir = self.path();
        let options = serde_yaml::Mapping::new();
        let source = ModelSource { checkpoint: Some(&dir), options: &options, device: Device::Cpu, compute: Kind::Float };
        runner::components::model(&plugins(), self.model, &source).unwrap()
    }

    fn expected(&self) -> HashMap<String, Tensor> {
        Tensor::read_safetensors(self.path().join("expected.safetensors")).unwrap().into_iter().collect()
    }
}

/// The plugins beside this test binary (target/*/deps), loaded as the runner loads its own.
fn plugins() -> Registry {
    Registry::discover(&[]).unwrap()
}

const ROBERTA: Family = Family { dir: "tiny-roberta", model: "roberta", class: "RobertaForMaskedLM" };
const XLM_ROBERTA: Family = Family { dir: "tiny-xlm-roberta", model: "roberta", class: "XLMRobertaForMaskedLM" };
const DISTILBERT: Family = Family { dir: "tiny-distilbert", model: "distilbert", class: "DistilBertForMaskedLM" };

fn batch(e: &HashMap<String, Tensor>) -> MlmBatch {
    MlmBatch {
        input_ids: e["input_ids"].shallow_clone(),
        attention_mask: e["attention_mask"].shallow_clone(),
        labels: e["labels"].shallow_clone(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

fn logits_and_loss(f: &Family) {
    let e = f.expected();
    let model = f.model();
    let logits = tch::no_grad(|| model.logits(&e["input_ids"], &e["attention_mask"]).unwrap());
    assert_eq!(logits.size(), e["logits"].size());
    let diff = max_abs_diff(&logits, &e["logits"]);
    eprintln!("{}: logits max abs diff {diff:.3e}", f.dir);
    assert!(diff < TOL, "{}: logits differ by {diff}", f.dir);
    let loss = tch::no_grad(|| model.forward_mlm(&batch(&e), Mode::Eval).unwrap().loss.double_value(&[]));
    let want = e["loss"].double_value(&[0]);
    eprintln!("{}: loss {loss} vs {want} (diff {:.3e})", f.dir, (loss - want).abs());
    assert!((loss - want).abs() < TOL, "{}: loss {loss} vs transformers {want}", f.dir);
}

/// Runs the fixture's three AdamW steps; returns the losses before each step and after the last.
fn three_steps(f: &Family, model: &dyn MlmModel, e: &HashMap<String, Tensor>) -> Vec<f64> {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.path().join("training.json")).unwrap()).unwrap();
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
        opt.clip_grad_norm(Some(g("max_grad_norm"))).unwrap();
        opt.step(g("lr")).unwrap();
    }
    losses.push(tch::no_grad(|| model.forward_mlm(&b, Mode::Eval).unwrap().loss.double_value(&[])));
    losses
}

fn three_adamw_steps(f: &Family) {
    let e = f.expected();
    let model = f.model();
    let losses = three_steps(f, model.as_ref(), &e);
    let want: Vec<f64> = Vec::try_from(&e["train_losses"]).unwrap();
    assert_eq!(losses.len(), want.len());
    for (i, (got, w)) in losses.iter().zip(&want).enumerate() {
        assert!((got - w).abs() < TOL, "{}: loss {i}: {got} vs transformers {w} (all: {losses:?} vs {want:?})", f.dir);
    }
    assert!(losses[3] < losses[0] - 0.1, "{}: training did not lower the loss: {losses:?}", f.dir);
    // The same parameters, under the same names, in the same places after the steps.
    let params = model.parameters().unwrap();
    let ours: BTreeSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let theirs: BTreeSet<&str> = e.keys().filter_map(|k| k.strip_prefix("param.")).collect();
    assert_eq!(ours, theirs, "{}: parameter names", f.dir);
    let (mut worst, mut at) = (0.0, String::new());
    for p in &params {
        let d = max_abs_diff(&p.tensor, &e[&format!("param.{}", p.name)]);
        if d > worst {
            (worst, at) = (d, p.name.clone());
        }
    }
    eprintln!("{}: after 3 AdamW steps, losses {losses:?}; parameters max abs diff {worst:.3e} ({at})", f.dir);
    assert!(worst < TOL, "{}: parameters differ from transformers' by {worst} in {at}", f.dir);
}

fn export_loads_in_transformers(f: &Family) {
    let e = f.expected();
    let model = f.model();
    three_steps(f, model.as_ref(), &e);
    let ours = tch::no_grad(|| model.logits(&e["input_ids"], &e["attention_mask"]).unwrap());
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path()).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(f.path().join(file), out.path().join(file)).unwrap();
    }
    let python = root().join(".venv/bin/python");
    let logits_file = out.path().join("hf_logits.safetensors");
    let result = std::process::Command::new(&python)
        .arg(root().join("tests/fixtures/hf_loss.py"))
        .arg(out.path())
        .arg(f.path().join("expected.safetensors"))
        .arg(&logits_file)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} (run scripts/setup.sh): {err}", python.display()));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "transformers failed to load the export:\n{}", String::from_utf8_lossy(&result.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["class"], f.class, "{report}");
    assert_eq!(report["missing"], serde_json::json!([]), "{report}");
    assert_eq!(report["unexpected"], serde_json::json!([]), "{report}");
    let theirs: HashMap<String, Tensor> = Tensor::read_safetensors(&logits_file).unwrap().into_iter().collect();
    let diff = max_abs_diff(&ours, &theirs["logits"]);
    eprintln!("{}: export reloaded by transformers, logits max abs diff {diff:.3e}", f.dir);
    assert!(diff < TOL, "{}: transformers on our export differs by {diff}", f.dir);
    let loss = tch::no_grad(|| model.forward_mlm(&batch(&e), Mode::Eval).unwrap().loss.double_value(&[]));
    let hf = report["loss"].as_f64().unwrap();
    assert!((loss - hf).abs() < TOL, "{}: our loss {loss}, transformers on our export {hf}", f.dir);
}

#[test]
fn roberta_logits_and_loss_match_transformers() {
    logits_and_loss(&ROBERTA);
}

#[test]
fn roberta_three_adamw_steps_match_transformers() {
    three_adamw_steps(&ROBERTA);
}

#[test]
fn roberta_export_loads_in_transformers_with_the_same_logits() {
    export_loads_in_transformers(&ROBERTA);
}

#[test]
fn xlm_roberta_logits_and_loss_match_transformers() {
    logits_and_loss(&XLM_ROBERTA);
}

#[test]
fn xlm_roberta_three_adamw_steps_match_transformers() {
    three_adamw_steps(&XLM_ROBERTA);
}

#[test]
fn xlm_roberta_export_loads_in_transformers_with_the_same_logits() {
    export_loads_in_transformers(&XLM_ROBERTA);
}

#[test]
fn distilbert_logits_and_loss_match_transformers() {
    logits_and_loss(&DISTILBERT);
}

#[test]
fn distilbert_three_adamw_steps_match_transformers() {
    three_adamw_steps(&DISTILBERT);
}

#[test]
fn distilbert_export_loads_in_transformers_with_the_same_logits() {
    export_loads_in_transformers(&DISTILBERT);
}

/// RoBERTa's positions start after padding_idx: 66 position embeddings with
/// padding_idx 1 take 64 tokens, and the model says so.
#[test]
fn roberta_reports_its_usable_length() {
    let model = ROBERTA.model();
    assert_eq!(model.info().unwrap().max_positions, 64);
    let ids = Tensor::ones([1, 64], (Kind::Int64, Device::Cpu)) * 5;
    let logits = tch::no_grad(|| model.logits(&ids, &ids.ones_like()).unwrap());
    assert_eq!(logits.size(), [1, 64, 300]);
    assert_eq!(DISTILBERT.model().info().unwrap().max_positions, 64);
}

/// Resolves tests/recipes/tiny.yaml with `sets` (`KEY=VALUE`, as `--set`
/// takes them), its corpus and output folder made absolute, against the
/// plugins beside this binary.
fn resolve(sets: &[String]) -> anyhow::Result<runner::recipe::Recipe> {
    let out = tempfile::tempdir().unwrap();
    let mut all = vec![
        format!("run.output_dir={}", out.path().display()),
        format!("data.train={}", root().join("tests/fixtures/toy-corpus.txt").display()),
    ];
    all.extend(sets.iter().cloned());
    let overrides: Vec<runner::recipe::Override> = all.iter().map(|s| s.parse().unwrap()).collect();
    let recipe = root().join("tests/recipes/tiny.yaml");
    let raw = runner::recipe::load(&recipe, &overrides)?;
    runner::recipe::resolve(raw, &recipe, &plugins())
}

/// A checkpoint and, until the runner reads each family's special tokens, the
/// BERT fixture's tokenizer (no bigger than any fixture's vocabulary).
fn checkpoint(dir: &Path) -> Vec<String> {
    vec![
        format!("model.checkpoint={}", dir.display()),
        format!("tokenizer.path={}", root().join("tests/fixtures/tiny-bert/tokenizer.json").display()),
    ]
}

#[test]
fn the_checkpoint_model_type_chooses_the_model_component() {
    for (dir, want) in [
        ("tiny-bert", "bert"),
        ("tiny-roberta", "roberta"),
        ("tiny-xlm-roberta", "roberta"),
        ("tiny-distilbert", "distilbert"),
    ] {
        let recipe = resolve(&checkpoint(&root().join("tests/fixtures").join(dir))).unwrap();
        assert_eq!(recipe.raw.model.name.as_deref(), Some(want), "{dir}");
    }
    // A named model is kept whatever the checkpoint says.
    let mut sets = checkpoint(&ROBERTA.path());
    sets.push("model.name=distilbert".into());
    assert_eq!(resolve(&sets).unwrap().raw.model.name.as_deref(), Some("distilbert"));
}

#[test]
fn roberta_sequences_are_checked_against_the_usable_positions() {
    let mut sets = checkpoint(&ROBERTA.path());
    sets.push("data.max_seq_len=64".into());
    resolve(&sets).unwrap();
    sets.push("data.max_seq_len=65".into());
    let err = format!("{:#}", resolve(&sets).unwrap_err());
    assert!(err.contains("data.max_seq_len") && err.contains("64 positions"), "{err}");
}

#[test]
fn a_model_type_no_plugin_reads_stops_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(root().join("tests/fixtures/tiny-bert").join(f), tmp.path().join(f)).unwrap();
    }
    let config = tmp.path().join("config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    c["model_type"] = "gpt2".into();
    std::fs::write(&config, c.to_string()).unwrap();
    let err = resolve(&checkpoint(tmp.path())).unwrap_err();
    assert_eq!(runner::error::exit_code(&err), 2);
    let msg = format!("{err:#}");
    for needle in ["model.name", "model_type `gpt2`", "installed model plugins", "bert", "roberta", "distilbert"] {
        assert!(msg.contains(needle), "the message should say `{needle}`:\n{msg}");
    }
}
