//! Parity with Hugging Face transformers, against fixtures that
//! `tests/fixtures/make_fixtures.py` made with `transformers.BertForMaskedLM`:
//! logits and loss, three AdamW steps, an exported checkpoint loaded back by
//! transformers, and the fill-mask pipeline.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use runner::train::optimizer::{AdamW, AdamWConfig};
use runner_api::{MlmBatch, MlmModel};
use runner_plugin_bert::Bert;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture() -> PathBuf {
    root().join("tests/fixtures/tiny-bert")
}

fn expected() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixture().join("expected.safetensors")).unwrap().into_iter().collect()
}

fn batch(e: &HashMap<String, Tensor>) -> MlmBatch {
    MlmBatch {
        input_ids: e["input_ids"].shallow_clone(),
        attention_mask: e["attention_mask"].shallow_clone(),
        labels: e["labels"].shallow_clone(),
    }
}

fn load() -> Bert {
    Bert::from_pretrained(&fixture(), &serde_yaml::Mapping::new(), Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// Runs the fixture's three AdamW steps; returns the losses before each step and after the last.
fn three_steps(model: &Bert, e: &HashMap<String, Tensor>) -> Vec<f64> {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("training.json")).unwrap()).unwrap();
    let f = |k: &str| cfg[k].as_f64().unwrap();
    let mut opt = AdamW::new(
        model.parameters().unwrap(),
        AdamWConfig { beta1: cfg["betas"][0].as_f64().unwrap(), beta2: cfg["betas"][1].as_f64().unwrap(), eps: f("eps"), weight_decay: f("weight_decay") },
    );
    let b = batch(e);
    let mut losses = Vec::new();
    for _ in 0..cfg["steps"].as_u64().unwrap() {
        opt.zero_grad();
        let loss = model.forward_mlm(&b, true).unwrap().loss;
        losses.push(loss.double_value(&[]));
        loss.backward();
        opt.clip_grad_norm(Some(f("max_grad_norm"))).unwrap();
        opt.step(f("lr")).unwrap();
    }
    let last = tch::no_grad(|| model.forward_mlm(&b, false).unwrap().loss.double_value(&[]));
    losses.push(last);
    losses
}

#[test]
fn logits_and_loss_match_transformers() {
    let e = expected();
    let model = load();
    let logits = tch::no_grad(|| model.logits(&e["input_ids"], &e["attention_mask"]).unwrap());
    assert_eq!(logits.size(), e["logits"].size());
    let diff = max_abs_diff(&logits, &e["logits"]);
    assert!(diff < TOL, "logits differ by {diff}");
    let loss = tch::no_grad(|| model.forward_mlm(&batch(&e), false).unwrap().loss.double_value(&[]));
    let want = e["loss"].double_value(&[0]);
    assert!((loss - want).abs() < TOL, "loss {loss} vs transformers {want}");
}

#[test]
fn three_adamw_steps_match_transformers() {
    let e = expected();
    let losses = three_steps(&load(), &e);
    let want: Vec<f64> = Vec::try_from(&e["train_losses"]).unwrap();
    assert_eq!(losses.len(), want.len());
    for (i, (got, want)) in losses.iter().zip(&want).enumerate() {
        assert!((got - want).abs() < TOL, "loss {i}: {got} vs transformers {want} (all: {losses:?} vs {want:?})");
    }
    assert!(losses[3] < losses[0] - 0.1, "training did not lower the loss: {losses:?}");
}

#[test]
fn exported_checkpoint_loads_in_transformers_with_the_same_loss() {
    let e = expected();
    let model = load();
    let ours = *three_steps(&model, &e).last().unwrap();
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt"] {
        std::fs::copy(fixture().join(f), out.path().join(f)).unwrap();
    }
    let python = root().join(".venv/bin/python");
    let result = std::process::Command::new(&python)
        .arg(root().join("tests/fixtures/hf_loss.py"))
        .arg(out.path())
        .arg(fixture().join("expected.safetensors"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (run scripts/setup.sh): {e}", python.display()));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "transformers failed to load the export:\n{}", String::from_utf8_lossy(&result.stderr));
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["class"], "BertForMaskedLM");
    assert_eq!(report["missing"], serde_json::json!([]), "{report}");
    assert_eq!(report["unexpected"], serde_json::json!([]), "{report}");
    let theirs = report["loss"].as_f64().unwrap();
    assert!((ours - theirs).abs() < TOL, "our loss {ours}, transformers on our export {theirs}");
}

#[test]
fn fill_mask_matches_the_transformers_pipeline() {
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("fill_mask.json")).unwrap()).unwrap();
    let text = spec["text"].as_str().unwrap();
    let k = spec["top_k"].as_u64().unwrap() as usize;
    let mut registry = runner::registry::Registry::empty();
    let mut plugin = runner_api::Registrar::new("bert");
    runner_plugin_bert::register(&mut plugin);
    registry.add(plugin).unwrap();
    let ours = runner::cli::fill_mask::predict(&registry, &fixture(), text, k).unwrap();
    assert_eq!(ours.len(), 1, "one [MASK] in the text");
    let ours = &ours[0];
    let theirs = spec["expected"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        assert_eq!(o.token, t["token"].as_i64().unwrap(), "ranking differs: ours {ours:?}");
        assert!((o.score - t["score"].as_f64().unwrap()).abs() < TOL, "{o:?} vs {t}");
        assert_eq!(o.token_str, t["token_str"].as_str().unwrap());
        assert_eq!(o.sequence, t["sequence"].as_str().unwrap());
    }
}
