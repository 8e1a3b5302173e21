//! `probe`: how well a linear head on the frozen encoder's features does a
//! labelled task, measured at every eval beside the MLM loss.
//!
//! Once per run ([`Metric::prepare`]) the train and eval JSONL files are read
//! and tokenized (`[CLS] text [SEP]`, truncated; a long text is cut before it
//! is tokenized: [`first_ids`]). At each eval the encoder's
//! hidden states of every example are pooled (`cls`: the first position;
//! `mean`: the mean over real tokens), standardised with the train features'
//! mean and standard deviation, and a multinomial logistic regression
//! ([`crate::logreg`]) is fitted on the train features and scored on the eval
//! ones: `<name>_accuracy` and `<name>_macro_f1`.
//!
//! The probe does not read the eval batches; it reports empty partial sums so
//! a data-parallel eval still splits the other metrics, and each process
//! computes the same probe figures on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use runner_api::{ColumnRole, ColumnSpec, parse_options, Metric, MlmModel, MlmOutput, Options, ParamDoc, Tokenize, VocabInfo};

use crate::labelled::{self, Labelled};
use crate::logreg;

/// How a sequence's hidden states become one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The hidden state at `[CLS]` (position 0).
    Cls,
    /// The mean over real (unpadded) positions, `[CLS]` and `[SEP]` included.
    #[default]
    Mean,
}

/// The probe's recipe options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeOptions {
    /// JSONL the head is fitted on.
    pub train: PathBuf,
    /// JSONL the head is scored on.
    pub eval: PathBuf,
    #[serde(default = "default_text_field")]
    pub text_field: String,
    #[serde(default = "default_label_field")]
    pub label_field: String,
    #[serde(default)]
    pub pooling: Pooling,
    /// Column prefix: `<name>_accuracy`, `<name>_macro_f1`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Use at most the first this many examples of each file.
    #[serde(default)]
    pub max_examples: Option<usize>,
    /// L2 penalty on the head's weights (on the mean loss): scikit-learn's C = 1 / (l2 * n_train).
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// Tokens per example, `[CLS]` and `[SEP]` included; default min(128, the model's positions).
    #[serde(default)]
    pub max_seq_len: Option<usize>,
    /// Sequences per forward pass.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// L-BFGS iterations at most.
    #[serde(default = "default_max_iter")]
    pub max_iter: usize,
}

fn default_text_field() -> String {
    "text".into()
}
fn default_label_field() -> String {
    "label".into()
}
fn default_name() -> String {
    "probe".into()
}
fn default_l2() -> f64 {
    1e-3
}
fn default_batch_size() -> usize {
    32
}
fn default_max_iter() -> usize {
    1000
}

/// The option table `runner plugins` shows.
pub fn params() -> Vec<ParamDoc> {
    let p = |name, default, doc| ParamDoc { name, default, doc };
    vec![
        p("train", "(required)", "JSONL file the head is fitted on"),
        p("eval", "(required)", "JSONL file the head is scored on"),
        p("text_field", "text", "field holding the text"),
        p("label_field", "label", "field holding the label (string or integer)"),
        p("pooling", "mean", "cls (first position) or mean (over real tokens)"),
        p("name", "probe", "column prefix: <name>_accuracy, <name>_macro_f1"),
        p("max_examples", "all", "use the first N examples of each file"),
        p("l2", "0.001", "L2 penalty on the mean loss (scikit-learn C = 1 / (l2 * n_train))"),
        p("max_seq_len", "min(128, model)", "tokens per example, [CLS] and [SEP] included"),
        p("batch_size", "32", "sequences per forward pass"),
        p("max_iter", "1000", "L-BFGS iterations at most"),
    ]
}

/// The labelled examples with class indices, checked.
#[derive(Debug)]
pub struct Task {
    pub classes: Vec<String>,
    pub train: Labelled,
    pub eval: Labelled,
    pub train_y: Vec<i64>,
    pub eval_y: Vec<i64>,
}

impl ProbeOptions {
    pub fn parse(o: &Options) -> Result<Self> {
        let opts: ProbeOptions = parse_options(o)?;
        if !(opts.l2 > 0.0 && opts.l2.is_finite()) {
            bail!("l2: must be positive, got {}", opts.l2);
        }
        if opts.batch_size == 0 {
            bail!("batch_size: must be positive");
        }
        if opts.max_iter == 0 {
            bail!("max_iter: must be positive");
        }
        if opts.max_examples == Some(0) {
            bail!("max_examples: must be positive");
        }
        if let Some(n) = opts.max_seq_len.filter(|&n| n < 3) {
            bail!("max_seq_len: must be at least 3, got {n}");
        }
        if opts.name.is_empty() || !opts.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("name: `{}` must be letters, digits or '_'", opts.name);
        }
        Ok(opts)
    }

    /// Reads and checks both files: at least two classes in train, and no
    /// eval label that train lacks.
    pub fn task(&self) -> Result<Task> {
        let train = labelled::read(&self.train, &self.text_field, &self.label_field, self.max_examples)?;
        let eval = labelled::read(&self.eval, &self.text_field, &self.label_field, self.max_examples)?;
        let mut classes: Vec<String> = train.labels.clone();
        classes.sort();
        classes.dedup();
        if classes.len() < 2 {
            let (first, last) = (train.lines[0], train.lines[train.len() - 1]);
            bail!(
                "{} lines {first} to {last}: every example has label `{}`; a probe needs at least two classes{}",
                self.train.display(),
                classes[0],
                if self.max_examples.is_some() { " (within max_examples)" } else { "" }
            );
        }
        let index = |l: &String| classes.binary_search(l).map(|i| i as i64);
        let train_y: Vec<i64> = train.labels.iter().map(|l| index(l).expect("a train label")).collect();
        let mut eval_y = Vec::with_capacity(eval.len());
        for (l, line) in eval.labels.iter().zip(&eval.lines) {
            match index(l) {
                Ok(i) => eval_y.push(i),
                Err(_) => bail!(
                    "{} line {line}: label `{l}` does not occur in {}",
                    self.eval.display(),
                    self.train.display()
                ),
            }
        }
        Ok(Task { classes, train, eval, train_y, eval_y })
    }
}

/// `check` for `runner validate`: the options and both files.
pub fn check(o: &Options) -> Result<()> {
    ProbeOptions::parse(o)?.task().map(|_| ())
}

/// `[CLS] ids [SEP]`, the text cut to fit `max_len`.
/// At least the first `n` token ids of `text` (all of them if it has fewer),
/// tokenizing only as much of it as that takes: a prefix of `32 n` bytes (at
/// least 1 KiB) cut before a space (`runner_api::text::cut`, so its ids are the
/// whole text's first ones), doubled while it gives fewer than `n` ids. An
/// example of 20 MB took 3 GB tokenized whole, for 64 ids.
fn first_ids(tokenizer: &dyn Tokenize, text: &str, n: usize) -> Result<Vec<i64>> {
    let mut max = n.saturating_mul(32).max(1024);
    loop {
        let end = runner_api::text::cut(text, max);
        let ids = tokenizer.encode(&text[..end])?;
        if ids.len() >= n || end == text.len() {
            return Ok(ids);
        }
        max = max.saturating_mul(2);
    }
}

fn with_specials(ids: Vec<i64>, vocab: &VocabInfo, max_len: usize) -> Vec<i64> {
    let mut seq = Vec::with_capacity(ids.len().min(max_len - 2) + 2);
    seq.push(vocab.cls_id);
    seq.extend(ids.into_iter().take(max_len - 2));
    seq.push(vocab.sep_id);
    seq
}

/// Pooled features (n, H) float64 of `sequences`, computed in batches of
/// similar length (longest first) under `no_grad`, returned in input order.
pub fn features(
    model: &dyn MlmModel,
    sequences: &[Vec<i64>],
    pooling: Pooling,
    batch_size: usize,
    pad_id: i64,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let device = model.info()?.device;
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
    let mut rows: Vec<Tensor> = Vec::new();
    for chunk in order.chunks(batch_size.max(1)) {
        let t = sequences[chunk[0]].len();
        let (mut ids, mut mask) = (Vec::with_capacity(chunk.len() * t), Vec::with_capacity(chunk.len() * t));
        for &i in chunk {
            let s = &sequences[i];
            ids.extend(s.iter().copied().chain(std::iter::repeat_n(pad_id, t - s.len())));
            mask.extend((0..t).map(|j| i64::from(j < s.len())));
        }
        let b = chunk.len() as i64;
        let ids = Tensor::from_slice(&ids).f_view([b, t as i64])?.f_to_device(device)?;
        let mask = Tensor::from_slice(&mask).f_view([b, t as i64])?.f_to_device(device)?;
        let h = model.hidden_states(&ids, &mask)?.f_to_kind(Kind::Double)?; // (B, T, H)
        let pooled = match pooling {
            Pooling::Cls => h.f_select(1, 0)?, // (B, H)
            Pooling::Mean => {
                let m = mask.f_to_kind(Kind::Double)?.f_unsqueeze(-1)?; // (B, T, 1)
                h.f_mul(&m)?.f_sum_dim_intlist(1i64, false, Kind::Double)?.f_div(&m.f_sum_dim_intlist(1i64, false, Kind::Double)?)?
            }
        };
        rows.push(pooled.f_to_device(Device::Cpu)?);
    }
    let stacked = Tensor::f_cat(&rows, 0)?; // (n, H), sorted order
    let mut inverse = vec![0i64; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as i64;
    }
    Ok(stacked.f_index_select(0, &Tensor::from_slice(&inverse))?)
}

/// Standardises `train` and `eval` (n, H) with the train columns' mean and
/// (population) standard deviation; constant columns are only centred.
pub fn standardise(train: &Tensor, eval: &Tensor) -> Result<(Tensor, Tensor)> {
    let mean = train.f_mean_dim(0i64, true, Kind::Double)?;
    let std = train.f_std_correction(0i64, 0i64, true)?;
    let std = std.f_where_scalarother(&std.f_gt(1e-12)?, 1.0)?;
    Ok(((train - &mean) / &std, (eval - &mean) / &std))
}

/// The probe metric: options, tokenized examples, and the last eval's figures.
#[derive(Debug)]
pub struct Probe {
    pub opts: ProbeOptions,
    task: Option<Task>,
    train_ids: Vec<Vec<i64>>,
    eval_ids: Vec<Vec<i64>>,
    pad_id: i64,
    accuracy: f64,
    macro_f1: f64,
}

impl Probe {
    pub fn new(opts: ProbeOptions) -> Self {
        Probe {
            opts,
            task: None,
            train_ids: vec![],
            eval_ids: vec![],
            pad_id: 0,
            accuracy: f64::NAN,
            macro_f1: f64::NAN,
        }
    }

    /// Train and eval features (n, H) of `model`, before standardising.
    pub fn features_of(&self, model: &dyn MlmModel) -> Result<(Tensor, Tensor)> {
        let f = |seqs: &[Vec<i64>]| features(model, seqs, self.opts.pooling, self.opts.batch_size, self.pad_id);
        Ok((f(&self.train_ids)?, f(&self.eval_ids)?))
    }

    /// Fits the head on the train features and scores the eval ones.
    pub fn score(&mut self, model: &dyn MlmModel) -> Result<()> {
        let Some(task) = &self.task else { bail!("the probe was not prepared (no tokenizer given)") };
        let (train, eval) = self.features_of(model)?;
        let (train, eval) = standardise(&train, &eval)?;
        let head = logreg::fit(&train, &task.train_y, task.classes.len() as i64, self.opts.l2, self.opts.max_iter, 1e-6)?;
        let pred = head.predict(&eval)?;
        self.accuracy = logreg::accuracy(&task.eval_y, &pred);
        self.macro_f1 = logreg::macro_f1(&task.eval_y, &pred);
        Ok(())
    }
}

impl Metric for Probe {
    fn reset(&mut self) -> Result<()> {
        (self.accuracy, self.macro_f1) = (f64::NAN, f64::NAN);
        Ok(())
    }
    fn update(&mut self, _: &MlmOutput) -> Result<()> {
        Ok(())
    }
    fn prepare(&mut self, tokenizer: &dyn Tokenize, vocab: &VocabInfo, max_positions: usize) -> Result<()> {
        let max_len = match self.opts.max_seq_len {
            Some(n) if n > max_positions => {
                bail!("max_seq_len: {n} is longer than the model's {max_positions} positions")
            }
            Some(n) => n,
            None => 128.min(max_positions),
        };
        let task = self.opts.task()?;
        let encode = |l: &Labelled| -> Result<Vec<Vec<i64>>> {
            l.texts.iter().map(|t| Ok(with_specials(first_ids(tokenizer, t, max_len - 2)?, vocab, max_len))).collect()
        };
        self.train_ids = encode(&task.train)?;
        self.eval_ids = encode(&task.eval)?;
        self.pad_id = vocab.pad_id;
        self.task = Some(task);
        Ok(())
    }
    fn update_with_model(&mut self, model: &dyn MlmModel, _: &[Vec<i64>], _: &VocabInfo) -> Result<()> {
        self.score(model)
    }
    fn partial_sums(&self) -> Result<Option<Vec<f64>>> {
        Ok(Some(vec![]))
    }
    fn set_partial_sums(&mut self, sums: &[f64]) -> Result<()> {
        if !sums.is_empty() {
            bail!("the probe has no partial sums, got {}", sums.len());
        }
        Ok(())
    }
    fn compute(&self) -> Result<BTreeMap<String, f64>> {
        let n = &self.opts.name;
        Ok(BTreeMap::from([(format!("{n}_accuracy"), self.accuracy), (format!("{n}_macro_f1"), self.macro_f1)]))
    }
    fn columns(&self) -> Result<Vec<ColumnSpec>> {
        let n = &self.opts.name;
        Ok(vec![ColumnSpec::new(format!("{n}_accuracy"), ColumnRole::Task, true), ColumnSpec::new(format!("{n}_macro_f1"), ColumnRole::Detail, true)])
    }
}

/// The factory: options checked, files read when the run prepares it.
pub fn build(o: &Options) -> Result<Box<dyn Metric>> {
    Ok(Box::new(Probe::new(ProbeOptions::parse(o)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per whitespace-separated word (its length), noting the longest
    /// text it was given.
    struct Words(std::cell::Cell<usize>);

    impl Tokenize for Words {
        fn encode(&self, text: &str) -> Result<Vec<i64>> {
            self.0.set(self.0.get().max(text.len()));
            Ok(text.split_whitespace().map(|w| w.len() as i64).collect())
        }
    }

    #[test]
    fn a_long_text_is_cut_before_it_is_tokenized_and_keeps_its_first_ids() {
        let text: String = (0..200_000).map(|i| format!("w{} ", "x".repeat(i % 7))).collect();
        let whole = Words(0.into()).encode(&text).unwrap();
        for n in [1, 62, 510] {
            let words = Words(0.into());
            let ids = first_ids(&words, &text, n).unwrap();
            assert_eq!(ids[..n], whole[..n], "n = {n}");
            assert!(words.0.get() <= (n * 32).max(1024), "tokenized {} bytes for {n} ids", words.0.get());
        }
        // Leading whitespace that gives no ids: the prefix grows until it does.
        let spaced = format!("{}a b c", " ".repeat(100_000));
        assert_eq!(first_ids(&Words(0.into()), &spaced, 2).unwrap(), [1, 1, 1]);
        assert_eq!(first_ids(&Words(0.into()), "short text", 100).unwrap(), [5, 4]);
    }

    fn options(yaml: &str) -> Options {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn files(train: &str, eval: &str) -> (tempfile::TempDir, Options) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.jsonl"), train).unwrap();
        std::fs::write(dir.path().join("eval.jsonl"), eval).unwrap();
        let o = options(&format!(
            "train: {}\neval: {}",
            dir.path().join("train.jsonl").display(),
            dir.path().join("eval.jsonl").display()
        ));
        (dir, o)
    }

    #[test]
    fn options_are_checked_with_their_key() {
        for (yaml, want) in [
            ("eval: e.jsonl", "missing field `train`"),
            ("train: t\neval: e\npooling: max", "pooling: unknown variant `max`"),
            ("train: t\neval: e\nl2: 0", "l2: must be positive"),
            ("train: t\neval: e\nmax_seq_len: 2", "max_seq_len: must be at least 3"),
            ("train: t\neval: e\nname: a-b", "name: `a-b`"),
            ("train: t\neval: e\nlayers: 3", "unknown field `layers`"),
        ] {
            let e = format!("{:#}", ProbeOptions::parse(&options(yaml)).unwrap_err());
            assert!(e.contains(want), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn one_class_and_unseen_eval_labels_are_refused_naming_file_and_line() {
        let (dir, o) = files("{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"x\"}\n", "{\"text\": \"c\", \"label\": \"x\"}\n");
        let e = format!("{:#}", check(&o).unwrap_err());
        assert!(e.contains("train.jsonl lines 1 to 2: every example has label `x`"), "{e}");
        std::fs::write(dir.path().join("train.jsonl"), "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n").unwrap();
        std::fs::write(dir.path().join("eval.jsonl"), "{\"text\": \"c\", \"label\": \"x\"}\n{\"text\": \"d\", \"label\": \"z\"}\n").unwrap();
        let e = format!("{:#}", check(&o).unwrap_err());
        assert!(e.contains("eval.jsonl line 2: label `z` does not occur in"), "{e}");
        std::fs::write(dir.path().join("eval.jsonl"), "{\"text\": \"c\", \"label\": \"y\"}\n").unwrap();
        check(&o).unwrap();
    }

    #[test]
    fn columns_carry_the_name() {
        let (_dir, mut o) = files("", "");
        o.insert("name".into(), "topic".into());
        let p = build(&o).unwrap();
        let keys: Vec<String> = p.compute().unwrap().into_keys().collect();
        assert_eq!(keys, ["topic_accuracy", "topic_macro_f1"]);
    }

    #[test]
    fn standardised_train_columns_have_zero_mean_and_unit_variance() {
        let train = Tensor::from_slice(&[1.0f64, 5.0, 3.0, 5.0, 5.0, 5.0]).view([3, 2]);
        let (t, e) = standardise(&train, &train.narrow(0, 0, 1)).unwrap();
        assert!(t.mean_dim(0i64, false, Kind::Double).abs().max().double_value(&[]) < 1e-12);
        let std = t.std_correction(0i64, 0i64, false);
        assert!((std.double_value(&[0]) - 1.0).abs() < 1e-12);
        assert_eq!(std.double_value(&[1]), 0.0); // a constant column stays 0, not NaN
        assert_eq!(e.double_value(&[0, 0]), t.double_value(&[0, 0]));
    }
}
