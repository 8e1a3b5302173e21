//! The `modernbert` model against transformers' `ModernBertForMaskedLM`, on the
//! fixture `tests/fixtures/make_modernbert_fixture.py` made (64-token rows,
//! local layers with a window of 8): logits and loss, three AdamW steps, the
//! export reloaded by transformers (fill-mask's top 5 is in families.rs), and
//! training-mode dropout in distribution. (Document attention, for every
//! family, is in families.rs.)

use runner_api::{MlmModel, Mode, ModelSource};
use tch::{Device, Kind};

use crate::families::{export_loads_in_transformers, logits_and_loss, max_abs_diff, plugins, three_adamw_steps, MODERNBERT};

/// The fixture's model with `config` overrides (YAML) from the recipe's `model.options.config`.
fn model_with(config: &str) -> Box<dyn MlmModel> {
    let dir = MODERNBERT.path();
    let options: serde_yaml::Mapping = serde_yaml::from_str(&format!("config: {config}")).unwrap();
    let source = ModelSource { checkpoint: Some(&dir), options: &options, device: Device::Cpu, compute: Kind::Float };
    runner::components::model(&plugins(), "modernbert", &source).unwrap()
}

#[test]
fn modernbert_logits_and_loss_match_transformers() {
    logits_and_loss(&MODERNBERT);
}

#[test]
fn modernbert_three_adamw_steps_match_transformers() {
    three_adamw_steps(&MODERNBERT);
}

#[test]
fn modernbert_export_loads_in_transformers_with_the_same_logits() {
    export_loads_in_transformers(&MODERNBERT);
}

/// The fixture's window matters: with every layer global the logits move.
#[test]
fn modernbert_local_layers_see_only_their_window() {
    let e = MODERNBERT.expected();
    let global = model_with("{global_attn_every_n_layers: 1}");
    let logits = tch::no_grad(|| global.logits(&e["input_ids"], &e["attention_mask"]).unwrap());
    let gap = max_abs_diff(&logits, &e["logits"]);
    assert!(gap > 1e-2, "all-global logits should differ from local ones, differ by {gap}");
}

/// Dropout draws cannot match torch's generator, so the training-mode loss
/// with every dropout at 0.1 is compared in distribution: its mean over 400
/// keyed draws within 4 standard errors of transformers' mean over 400
/// seeds, and its spread within a third of theirs.
#[test]
fn modernbert_dropout_matches_transformers_in_distribution() {
    let e = MODERNBERT.expected();
    let model = model_with("{embedding_dropout: 0.1, attention_dropout: 0.1, mlp_dropout: 0.1}");
    let batch = crate::common::batch(&e);
    let n = e["dropout_draws"].double_value(&[0]) as u64;
    let losses: Vec<f64> = (0..n)
        .map(|key| tch::no_grad(|| model.forward_mlm(&batch, Mode::Train { dropout_key: key }).unwrap().loss.double_value(&[])))
        .collect();
    let mean = losses.iter().sum::<f64>() / n as f64;
    let sd = (losses.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let (their_mean, their_sd) = (e["dropout_loss_mean"].double_value(&[0]), e["dropout_loss_std"].double_value(&[0]));
    let se = ((sd * sd + their_sd * their_sd) / n as f64).sqrt();
    eprintln!("dropout 0.1: loss {mean:.5} ± {sd:.5} vs transformers {their_mean:.5} ± {their_sd:.5} (se {se:.5})");
    assert!((mean - their_mean).abs() < 4.0 * se, "mean loss {mean} vs transformers {their_mean} (se {se})");
    assert!((sd / their_sd - 1.0).abs() < 0.33, "spread {sd} vs transformers {their_sd}");
    let eval = tch::no_grad(|| model.forward_mlm(&batch, Mode::Eval).unwrap().loss.double_value(&[]));
    assert!((eval - e["loss"].double_value(&[0])).abs() < 1e-4, "eval mode has no dropout: {eval}");
}

/// The released checkpoints' config.json form (`global_attn_every_n_layers`,
/// `global_rope_theta`, `local_rope_theta`; no `layer_types`, no
/// `rope_parameters`) builds the same model as the newer form the fixture has.
#[test]
fn modernbert_reads_the_released_config_form() {
    let e = MODERNBERT.expected();
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(MODERNBERT.path().join(f), tmp.path().join(f)).unwrap();
    }
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(MODERNBERT.path().join("config.json")).unwrap()).unwrap();
    let c = config.as_object_mut().unwrap();
    let thetas = c.remove("rope_parameters").unwrap();
    c.remove("layer_types");
    c.insert("global_rope_theta".into(), thetas["full_attention"]["rope_theta"].clone());
    c.insert("local_rope_theta".into(), thetas["sliding_attention"]["rope_theta"].clone());
    c.insert("reference_compile".into(), true.into());
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    let options = serde_yaml::Mapping::new();
    let source = ModelSource { checkpoint: Some(tmp.path()), options: &options, device: Device::Cpu, compute: Kind::Float };
    let model = runner::components::model(&plugins(), "modernbert", &source).unwrap();
    let logits = tch::no_grad(|| model.logits(&e["input_ids"], &e["attention_mask"]).unwrap());
    let gap = max_abs_diff(&logits, &e["logits"]);
    assert!(gap < 1e-4, "the released config form gives logits {gap} away");
    // Its export keeps the released keys and adds the newer ones transformers 5 writes.
    let out = tmp.path().join("export");
    model.save_pretrained(&out).unwrap();
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(exported["reference_compile"], true);
    assert_eq!(exported["global_rope_theta"], 160000.0);
    assert_eq!(exported["layer_types"], serde_json::json!(["full_attention", "sliding_attention", "sliding_attention"]));
}
