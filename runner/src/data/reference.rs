//! The in-memory pipeline the token store replaced (read every document,
//! shuffle-split them, tokenize, pack), kept as the reference the store's
//! examples and batches are tested against: for the shipped recipes they must
//! be the same blocks in the same order for a seed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokenizers::Tokenizer;

use runner_api::{Dataset, Document, MaskedSequence, Masker, RngCore, VocabInfo, IGNORE_INDEX};
use runner_plugin_text::{DocumentBoundary, TextDataset, TextOptions};

use super::examples::tests::{line_reference, packed_reference};
use super::prepare::{self, EvalInput, Input};
use super::store::{Manifest, Store, Width};
use super::{tokenizer, BatchMaker, Examples};
use crate::recipe::raw::ExampleMode;

/// The old `split_holdout`: shuffle every document index, hold out the first.
fn split_holdout(docs: Vec<Document>, fraction: f64, seed: u64) -> (Vec<Document>, Vec<Document>) {
    let n = docs.len();
    let n_eval = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let mut held = vec![false; n];
    for &i in &order[..n_eval] {
        held[i] = true;
    }
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if held[i] {
            eval.push(d)
        } else {
            train.push(d)
        }
    }
    (train, eval)
}

/// The old `Examples::build`, as lists of ids.
fn build(docs: &[Document], tok: &Tokenizer, vocab: &VocabInfo, mode: ExampleMode, max_seq_len: usize) -> Vec<Vec<u32>> {
    let tokenized: Vec<Vec<Vec<u32>>> =
        docs.iter().map(|doc| doc.iter().map(|line| tok.encode(line.as_str(), false).unwrap().get_ids().to_vec()).collect()).collect();
    let (cls, sep) = (vocab.cls_id as u32, vocab.sep_id as u32);
    match mode {
        ExampleMode::Packed => packed_reference(&tokenized, cls, sep, max_seq_len),
        ExampleMode::LineByLine => line_reference(&tokenized, cls, sep, max_seq_len),
    }
}

/// A recipe's data section, as far as examples depend on it.
struct Case {
    dataset: TextDataset,
    train: PathBuf,
    eval: Option<PathBuf>,
    holdout: f64,
    seed: u64,
    max_train_documents: Option<usize>,
    tokenizer: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

impl Case {
    /// (train, eval) the old way, per mode and length.
    fn today(&self, tok: &Tokenizer, vocab: &VocabInfo, mode: ExampleMode, max_seq_len: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
        let read = |p: &Path| self.dataset.read(p).unwrap().collect::<Result<Vec<_>>>().unwrap();
        let (mut train, eval) = match &self.eval {
            Some(e) => (read(&self.train), read(e)),
            None => split_holdout(read(&self.train), self.holdout, self.seed),
        };
        if let Some(n) = self.max_train_documents {
            train.truncate(n);
        }
        (build(&train, tok, vocab, mode, max_seq_len), build(&eval, tok, vocab, mode, max_seq_len))
    }

    fn store(&self, dir: &Path, tok: &Tokenizer, vocab: &VocabInfo) -> Store {
        let train = [self.train.clone()];
        let eval_paths: Vec<PathBuf> = self.eval.iter().cloned().collect();
        let eval = match &self.eval {
            Some(_) => EvalInput::Paths(&eval_paths),
            None => EvalInput::Holdout { fraction: self.holdout, seed: self.seed },
        };
        let input = Input { dataset: &self.dataset, train: &train, eval, max_train_documents: self.max_train_documents };
        let width = Width::for_vocab(vocab.vocab_size);
        let built = prepare::build(dir, &input, tok, width).unwrap();
        Manifest::new("test", vec![], width, vocab.vocab_size, built.train, built.eval, built.text_bytes).write(dir).unwrap();
        Store::open(dir, vocab.vocab_size).unwrap()
    }
}

/// Labels each token with probability 0.15 drawn from the batch's stream,
/// so batches differ if either the order or the masks' stream differs.
struct DrawnMask;
impl Masker for DrawnMask {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        let labels = ids.iter().map(|&id| if rng.next_u32() % 100 < 15 { id } else { IGNORE_INDEX }).collect();
        Ok(MaskedSequence { input_ids: ids.to_vec(), labels })
    }
}

fn all(ex: &Examples) -> Vec<Vec<u32>> {
    (0..ex.len()).map(|i| ex.ids(i).into_iter().map(|t| t as u32).collect()).collect()
}

/// For each mode and length: the same examples, and the same batches for a seed.
fn check(case: &Case, layouts: &[(ExampleMode, usize)], batch_size: usize, seed: u64) {
    let tok = tokenizer::load(&case.tokenizer).unwrap();
    let vocab = tokenizer::vocab_info(&tok, &case.tokenizer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = case.store(dir.path(), &tok, &vocab);
    for &(mode, max_seq_len) in layouts {
        let (train, eval) = case.today(&tok, &vocab, mode, max_seq_len);
        let viewed = Examples::new(store.train.clone(), mode, max_seq_len, false, &vocab);
        let held = Examples::new(store.eval.clone(), mode, max_seq_len, false, &vocab);
        assert!(!train.is_empty() && !eval.is_empty(), "{mode:?} {max_seq_len}: a case with examples on both sides");
        assert!(all(&viewed) == train, "{mode:?} {max_seq_len}: train examples differ from today's");
        assert!(all(&held) == eval, "{mode:?} {max_seq_len}: eval examples differ from today's");
        for group_by_length in [false, true] {
            let maker = |examples: Examples| BatchMaker {
                examples: Arc::new(examples),
                masker: Arc::new(DrawnMask),
                batch_size,
                seed,
                pad_id: vocab.pad_id,
                group_by_length,
            };
            let (today, from_store) = (maker(Examples::Listed(train.clone())), maker(viewed.clone()));
            let n = today.batches_per_epoch() + 3; // into the second epoch
            let (mut c1, mut c2) = (None, None);
            for i in 0..n {
                assert!(today.batch(i, &mut c1).unwrap() == from_store.batch(i, &mut c2).unwrap(), "{mode:?} {max_seq_len}: batch {i}");
            }
        }
    }
}

#[test]
fn the_tiny_recipe_makes_todays_examples_and_batches() {
    // tests/recipes/tiny.yaml: text (blank_line documents), holdout 0.2, eval.seed 0, packed 32, run.seed 7.
    let case = Case {
        dataset: TextDataset::new(TextOptions::default()),
        train: root().join("tests/fixtures/toy-corpus.txt"),
        eval: None,
        holdout: 0.2,
        seed: 0,
        max_train_documents: None,
        tokenizer: root().join("tests/fixtures/tiny-bert/tokenizer.json"),
    };
    check(&case, &[(ExampleMode::Packed, 32), (ExampleMode::LineByLine, 32), (ExampleMode::LineByLine, 8)], 8, 7);
    // Documents per line, an explicit eval file (data.eval), the first 100 train documents.
    let case = Case {
        dataset: TextDataset::new(TextOptions { documents: DocumentBoundary::Line, suffix: None }),
        eval: Some(root().join("tests/fixtures/toy-corpus.txt")),
        max_train_documents: Some(100),
        ..case
    };
    check(&case, &[(ExampleMode::Packed, 16), (ExampleMode::LineByLine, 16)], 8, 7);
}

#[test]
fn the_quickstart_recipe_makes_todays_examples_and_batches() {
    // recipes/quickstart.yaml: the Python docs (setup.sh fetches them), one document per
    // .txt file, holdout 0.05, eval.seed 0, packed 128, run.seed 42, batch 16.
    let case = Case {
        dataset: TextDataset::new(TextOptions { documents: DocumentBoundary::File, suffix: Some(".txt".into()) }),
        train: root().join("data/python-docs"),
        eval: None,
        holdout: 0.05,
        seed: 0,
        max_train_documents: None,
        tokenizer: root().join("data/models/all-minilm-l6-v2/tokenizer.json"),
    };
    check(&case, &[(ExampleMode::Packed, 128), (ExampleMode::LineByLine, 128)], 16, 42);
}

/// Every family's examples are framed with its own start and end tokens, as its
/// tokenizer's post-processor frames a text (`[CLS] … [SEP]`, `<s> … </s>`):
/// a line-by-line example is the tokenizer's own encoding of its line, and a
/// packed block starts and ends with them, one end token after each document.
#[test]
fn every_family_frames_examples_as_its_tokenizer_does() {
    for family in ["tiny-bert", "tiny-roberta", "tiny-xlm-roberta", "tiny-distilbert"] {
        let case = Case {
            dataset: TextDataset::new(TextOptions { documents: DocumentBoundary::Line, suffix: None }),
            train: root().join("tests/fixtures/toy-corpus.txt"),
            eval: None,
            holdout: 0.2,
            seed: 0,
            max_train_documents: None,
            tokenizer: root().join("tests/fixtures").join(family).join("tokenizer.json"),
        };
        check(&case, &[(ExampleMode::Packed, 32), (ExampleMode::LineByLine, 64)], 8, 7);
        let tok = tokenizer::load(&case.tokenizer).unwrap();
        let vocab = tokenizer::vocab_info(&tok, &case.tokenizer).unwrap();
        let framed: std::collections::HashSet<Vec<u32>> = std::fs::read_to_string(&case.train)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| tok.encode(l, true).unwrap().get_ids().to_vec())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = case.store(dir.path(), &tok, &vocab);
        let lines = Examples::new(store.train.clone(), ExampleMode::LineByLine, 64, false, &vocab);
        for ex in all(&lines) {
            assert!(framed.contains(&ex), "{family}: {ex:?} is not how the tokenizer frames a line");
        }
        let blocks = all(&Examples::new(store.train.clone(), ExampleMode::Packed, 32, false, &vocab));
        let (cls, sep) = (vocab.cls_id as u32, vocab.sep_id as u32);
        for b in &blocks {
            assert!(b[0] == cls && b[b.len() - 1] == sep, "{family}: block {b:?}");
        }
        let ends: usize = blocks.iter().map(|b| b[1..b.len() - 1].iter().filter(|&&t| t == sep).count()).sum();
        assert!(ends > 0, "{family}: documents inside blocks end with {}", vocab.tokens[sep as usize]);
    }
}
