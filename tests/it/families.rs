//! Parity of the `roberta` (RoBERTa, XLM-RoBERTa) and `distilbert` models with
//! Hugging Face transformers, against fixtures that
//! `tests/fixtures/make_family_fixtures.py` made: logits and loss, the loss
//! and every parameter after three AdamW steps, and an exported checkpoint
//! loaded back by transformers giving the same logits, and fill-mask's top 5.
//! Within 1e-4. Then the model component a recipe gets from its checkpoint's
//! `model_type`, and each family's tokenizer as the maskers see it: special
//! tokens read from its own files, and words grouped as `word_ids()` groups
//! them (`tests/fixtures/make_family_goldens.py`).
//!
//! The models are built through the plugin libraries beside this test binary
//! (cargo builds them as dev-dependencies), as the runner builds them: each
//! plugin declares itself with the same exported symbol, so two of them
//! cannot be linked into one binary.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use runner::registry::Registry;

use crate::common::{adamw_steps, batch};
use runner_api::{MlmBatch, MlmModel, Mode, ModelSource, IGNORE_INDEX};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One fixture: its folder under tests/fixtures, the model component that
/// reads it, and the class transformers loads the export as.
pub(crate) struct Family {
    pub dir: &'static str,
    pub model: &'static str,
    pub class: &'static str,
}

impl Family {
    pub(crate) fn path(&self) -> PathBuf {
        root().join("tests/fixtures").join(self.dir)
    }

    pub(crate) fn model(&self) -> Box<dyn MlmModel> {
        let dir = self.path();
        let options = serde_yaml::Mapping::new();
        let source = ModelSource { checkpoint: Some(&dir), options: &options, device: Device::Cpu, compute: Kind::Float };
        runner::components::model(&plugins(), self.model, &source).unwrap()
    }

    pub(crate) fn expected(&self) -> HashMap<String, Tensor> {
        Tensor::read_safetensors(self.path().join("expected.safetensors")).unwrap().into_iter().collect()
    }
}

/// The plugins beside this test binary (target/*/deps), loaded as the runner loads its own.
pub(crate) fn plugins() -> Registry {
    Registry::discover(&[]).unwrap()
}

pub(crate) const ROBERTA: Family = Family { dir: "tiny-roberta", model: "roberta", class: "RobertaForMaskedLM" };
const XLM_ROBERTA: Family = Family { dir: "tiny-xlm-roberta", model: "roberta", class: "XLMRobertaForMaskedLM" };
const DISTILBERT: Family = Family { dir: "tiny-distilbert", model: "distilbert", class: "DistilBertForMaskedLM" };
const BERT: Family = Family { dir: "tiny-bert", model: "bert", class: "BertForMaskedLM" };
pub(crate) const MODERNBERT: Family = Family { dir: "tiny-modernbert", model: "modernbert", class: "ModernBertForMaskedLM" };

pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

pub(crate) fn logits_and_loss(f: &Family) {
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

pub(crate) fn three_adamw_steps(f: &Family) {
    let e = f.expected();
    let model = f.model();
    let losses = adamw_steps(model.as_ref(), &f.path(), &e);
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

pub(crate) fn export_loads_in_transformers(f: &Family) {
    let e = f.expected();
    let model = f.model();
    adamw_steps(model.as_ref(), &f.path(), &e);
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

/// A checkpoint, with the tokenizer beside it.
fn checkpoint(dir: &Path) -> Vec<String> {
    vec![format!("model.checkpoint={}", dir.display())]
}

#[test]
fn the_checkpoint_model_type_chooses_the_model_component() {
    for (dir, want) in [
        ("tiny-bert", "bert"),
        ("tiny-roberta", "roberta"),
        ("tiny-xlm-roberta", "roberta"),
        ("tiny-distilbert", "distilbert"),
        ("tiny-modernbert", "modernbert"),
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

/// The vocabulary of a fixture's tokenizer, as the runner reads it.
fn vocab(dir: &str) -> (tokenizers::Tokenizer, runner_api::VocabInfo) {
    let path = root().join("tests/fixtures").join(dir).join("tokenizer.json");
    let tok = runner::data::tokenizer::load(&path).unwrap();
    let vocab = runner::data::tokenizer::vocab_info(&tok, &path).unwrap();
    (tok, vocab)
}

#[test]
fn special_tokens_come_from_the_tokenizer_files() {
    for (dir, [mask, pad, cls, sep]) in [
        ("tiny-bert", ["[MASK]", "[PAD]", "[CLS]", "[SEP]"]),
        ("tiny-distilbert", ["[MASK]", "[PAD]", "[CLS]", "[SEP]"]),
        ("tiny-roberta", ["<mask>", "<pad>", "<s>", "</s>"]),
        ("tiny-xlm-roberta", ["<mask>", "<pad>", "<s>", "</s>"]),
        ("tiny-modernbert", ["[MASK]", "[PAD]", "[CLS]", "[SEP]"]),
    ] {
        let (_, v) = vocab(dir);
        let name = |id: i64| v.tokens[id as usize].as_str();
        assert_eq!([name(v.mask_id), name(v.pad_id), name(v.cls_id), name(v.sep_id)], [mask, pad, cls, sep], "{dir}");
    }
}

/// With no tokenizer_config.json, the start and end tokens come from the
/// post-processor's template and the mask token from the family's name for it;
/// a mask token named in the config must be in the vocabulary; a tokenizer
/// with none at all is refused with the key to set (exit 2).
#[test]
fn special_tokens_without_a_config_and_a_tokenizer_without_a_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let tok_path = tmp.path().join("tokenizer.json");
    std::fs::copy(ROBERTA.path().join("tokenizer.json"), &tok_path).unwrap();
    let (tok, theirs) = vocab("tiny-roberta");
    let ours = runner::data::tokenizer::vocab_info(&tok, &tok_path).unwrap();
    assert_eq!([ours.mask_id, ours.pad_id, ours.cls_id, ours.sep_id], [theirs.mask_id, theirs.pad_id, theirs.cls_id, theirs.sep_id]);

    std::fs::write(tmp.path().join("tokenizer_config.json"), r#"{"mask_token": "<maskk>"}"#).unwrap();
    let err = runner::data::tokenizer::vocab_info(&tok, &tok_path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("tokenizer_config.json") && msg.contains("`<maskk>`"), "{msg}");
    assert_eq!(runner::error::exit_code(&err), 2);

    // The vocabulary without its mask token.
    std::fs::remove_file(tmp.path().join("tokenizer_config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    json["added_tokens"].as_array_mut().unwrap().retain(|t| t["content"] != "<mask>");
    json["model"]["vocab"].as_object_mut().unwrap().remove("<mask>");
    std::fs::write(&tok_path, json.to_string()).unwrap();
    let tok = runner::data::tokenizer::load(&tok_path).unwrap();
    let err = runner::data::tokenizer::vocab_info(&tok, &tok_path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no mask token") && msg.contains("mask_token") && msg.contains("tokenizer.json"), "{msg}");
    assert_eq!(runner::error::exit_code(&err), 2);
}

/// The words the maskers find from token ids alone are the words transformers'
/// `word_ids()` gives, for WordPiece, byte-level BPE and SentencePiece alike.
/// A special token (an unknown piece) belongs to no word and ends the one before it.
#[test]
fn words_match_transformers_word_ids_for_every_tokenizer_kind() {
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/words.json")).unwrap()).unwrap();
    let mut vocabs = HashMap::new();
    let mut multi_piece_words = HashMap::<String, usize>::new();
    for case in &cases {
        let dir = case["fixture"].as_str().unwrap();
        let v = &vocabs.entry(dir.to_string()).or_insert_with(|| vocab(dir).1);
        let ids: Vec<i64> = case["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
        let word_ids: Vec<Option<i64>> = case["word_ids"].as_array().unwrap().iter().map(|x| x.as_i64()).collect();
        // Their words, cut at special tokens.
        let mut theirs: Vec<(usize, usize)> = Vec::new();
        for (i, w) in word_ids.iter().enumerate() {
            if v.is_special(ids[i]) {
                continue;
            }
            match theirs.last_mut() {
                Some(last) if last.1 == i && word_ids[i - 1] == *w => last.1 = i + 1,
                _ => theirs.push((i, i + 1)),
            }
        }
        let ours = v.words(&ids);
        let show = |w: &[(usize, usize)]| -> Vec<String> {
            w.iter().map(|&(s, e)| ids[s..e].iter().map(|&i| v.tokens[i as usize].clone()).collect::<Vec<_>>().join(" ")).collect()
        };
        assert_eq!(show(&ours), show(&theirs), "{dir}: {:?}", case["text"]);
        *multi_piece_words.entry(dir.to_string()).or_default() += ours.iter().filter(|(s, e)| e - s > 1).count();
    }
    for (dir, n) in multi_piece_words {
        assert!(n >= 3, "{dir}: the sentences should split some words into pieces (found {n})");
    }
}

/// Special tokens are never chosen and never drawn as replacements, under
/// every masking strategy and every family's tokenizer, over 100k chosen
/// tokens each; and a word-level strategy chooses whole words only.
#[test]
fn special_tokens_are_never_masked_in_any_family() {
    use rand::SeedableRng;
    let corpus = std::fs::read_to_string(root().join("tests/fixtures/toy-corpus.txt")).unwrap();
    let registry = plugins();
    let rates = runner_api::MaskingRates { rate: 0.3, mask_token: 0.8, random_token: 0.1 };
    for dir in ["tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert"] {
        let (tok, v) = vocab(dir);
        // Each line framed the family's way, with an unknown character in some.
        let sequences: Vec<Vec<i64>> = corpus
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                let text = if i % 3 == 0 { format!("{line} \u{2603}") } else { line.to_string() };
                let ids = tok.encode(text.as_str(), false).unwrap().get_ids().iter().map(|&i| i64::from(i)).collect::<Vec<_>>();
                [vec![v.cls_id], ids, vec![v.sep_id]].concat()
            })
            .collect();
        for strategy in ["bert", "whole_word", "span"] {
            let masker = runner::components::masker(&registry, strategy, &Default::default(), rates, &v).unwrap();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let (mut chosen, mut specials_seen) = (0usize, 0usize);
            'outer: loop {
                for ids in &sequences {
                    let out = masker.mask(ids, &mut rng).unwrap();
                    for (i, &id) in ids.iter().enumerate() {
                        let picked = out.labels[i] != runner_api::IGNORE_INDEX;
                        if v.is_special(id) {
                            specials_seen += 1;
                            assert!(!picked && out.input_ids[i] == id, "{dir} {strategy}: special token {} was masked", v.tokens[id as usize]);
                        } else if picked {
                            chosen += 1;
                            assert!(!v.is_special(out.input_ids[i]) || out.input_ids[i] == v.mask_id, "{dir} {strategy}: drew a special token");
                        }
                    }
                    if strategy != "bert" {
                        for (s, e) in v.words(ids) {
                            let n = (s..e).filter(|&i| out.labels[i] != runner_api::IGNORE_INDEX).count();
                            assert!(n == 0 || n == e - s, "{dir} {strategy}: a word masked in part");
                        }
                    }
                    if chosen >= 100_000 {
                        break 'outer;
                    }
                }
            }
            assert!(specials_seen > 10_000, "{dir}: the sequences should carry special tokens");
        }
    }
}

#[test]
fn fill_mask_matches_the_transformers_pipeline_in_every_family() {
    let registry = plugins();
    for f in [&ROBERTA, &XLM_ROBERTA, &DISTILBERT, &MODERNBERT] {
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f.path().join("fill_mask.json")).unwrap()).unwrap();
        let k = spec["top_k"].as_u64().unwrap() as usize;
        // The family's own mask token, and `[MASK]` read as it.
        let text = spec["text"].as_str().unwrap();
        for text in [text.to_string(), text.replace("<mask>", "[MASK]")] {
            let ours = runner::cli::fill_mask::predict(&registry, &f.path(), &text, k).unwrap();
            assert_eq!(ours.len(), 1, "one mask in {text}");
            let theirs = spec["expected"].as_array().unwrap();
            assert_eq!(ours[0].len(), theirs.len());
            for (o, t) in ours[0].iter().zip(theirs) {
                assert_eq!(o.token, t["token"].as_i64().unwrap(), "{}: ranking differs: ours {:?}", f.dir, ours[0]);
                assert!((o.score - t["score"].as_f64().unwrap()).abs() < TOL, "{}: {o:?} vs {t}", f.dir);
                assert_eq!(o.token_str, t["token_str"].as_str().unwrap(), "{}", f.dir);
                assert_eq!(o.sequence, t["sequence"].as_str().unwrap(), "{}", f.dir);
            }
        }
    }
}

/// Rows of several documents with `documents`: each token's logits are the
/// ones its document gives alone, within 1e-5, in every family; for
/// ModernBERT in short documents (one score matrix) and long rows (chunked
/// local attention), beside padding.
#[test]
fn document_attention_equals_each_document_alone_in_every_family() {
    for f in [&BERT, &ROBERTA, &XLM_ROBERTA, &DISTILBERT, &MODERNBERT] {
        let model = f.model();
        let info = model.info().unwrap();
        assert!(info.document_attention, "{}", f.dir);
        tch::manual_seed(3);
        let ids = Tensor::randint_low(5, info.vocab_size.min(300), [64], (Kind::Int64, Device::Cpu));
        let pad = runner::data::tokenizer::vocab_info(&tokenizer(f), &f.path().join("tokenizer.json")).unwrap().pad_id;
        // Row 0: documents of 10, 30 and 24 tokens. Row 1: 40 tokens, 20 more, 4 of padding.
        let layouts: [&[i64]; 2] = [&[10, 30, 24], &[40, 20]];
        let (mut rows, mut docs, mut masks) = (Vec::new(), Vec::new(), Vec::new());
        for layout in layouts {
            let at: i64 = layout.iter().sum();
            let d: Vec<i64> = layout.iter().enumerate().flat_map(|(k, &len)| std::iter::repeat_n(k as i64, len as usize)).collect();
            let padding = 64 - at;
            rows.push(Tensor::cat(&[ids.narrow(0, 0, at), Tensor::full([padding], pad, (Kind::Int64, Device::Cpu))], 0));
            docs.push(Tensor::from_slice(&[d, vec![-1; padding as usize]].concat()));
            masks.push(Tensor::cat(&[Tensor::ones([at], (Kind::Int64, Device::Cpu)), Tensor::zeros([padding], (Kind::Int64, Device::Cpu))], 0));
        }
        let (input_ids, attention_mask) = (Tensor::stack(&rows, 0), Tensor::stack(&masks, 0));
        // Every real token labelled: the sparse head gives its logits, row-major.
        let labels = input_ids.where_scalarother(&attention_mask.eq(1), IGNORE_INDEX);
        let batch = MlmBatch { input_ids, attention_mask, labels, documents: Some(Tensor::stack(&docs, 0)) };
        let packed = tch::no_grad(|| model.forward_mlm(&batch, Mode::Eval).unwrap().logits);
        let mut alone = Vec::new();
        for layout in layouts {
            let mut at = 0;
            for &len in layout {
                let doc = ids.narrow(0, at, len).unsqueeze(0);
                alone.push(tch::no_grad(|| model.logits(&doc, &doc.ones_like()).unwrap()).squeeze_dim(0));
                at += len;
            }
        }
        let gap = max_abs_diff(&packed, &Tensor::cat(&alone, 0));
        eprintln!("{}: document attention, packed vs alone, max abs diff {gap:.3e}", f.dir);
        assert!(gap < 1e-5, "{}: packed documents differ from documents alone by {gap}", f.dir);
        // Without documents the same rows mix them.
        let mixed = MlmBatch { documents: None, ..batch };
        let mixed = tch::no_grad(|| model.forward_mlm(&mixed, Mode::Eval).unwrap().logits);
        assert!(max_abs_diff(&mixed, &packed) > 1e-3, "{}", f.dir);
    }
}

fn tokenizer(f: &Family) -> tokenizers::Tokenizer {
    runner::data::tokenizer::load(&f.path().join("tokenizer.json")).unwrap()
}
