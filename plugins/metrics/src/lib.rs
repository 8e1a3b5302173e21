//! Eval metrics over masked positions: `loss` (mean cross-entropy, reported as
//! `eval_loss`), `perplexity` (exp of that mean), `accuracy` (top-1) and
//! `top5_accuracy`. Each sums over every masked token of the eval pass, so the
//! result does not depend on how the tokens were batched.
//!
//! `pseudo_perplexity` (Salazar et al., 2020) runs the model itself: each
//! token of each eval sequence is masked in turn (batched), and
//! PPPL = exp(-mean log p(token | rest)).
//!
//! `probe` (in [`probe`]) fits a logistic-regression head on the frozen
//! encoder's features of a labelled task and scores it, at every eval.
//!
//! The batch metrics report their sums ([`Metric::partial_sums`]), so an eval
//! split over processes adds up to a single process's figures;
//! pseudo-perplexity does not split, and every process then scores everything.

pub mod labelled;
pub mod logreg;
pub mod probe;

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Deserialize;
use tch::{Kind, Reduction, Tensor};

use runner_api::{ColumnRole, ColumnSpec, 
    no_options, parse_options, Component, Factory, Metric, MlmModel, MlmOutput, Options, ParamDoc, Registrar, VocabInfo,
    IGNORE_INDEX,
};

/// Summed cross-entropy and token count over an eval pass.
#[derive(Debug, Default)]
struct CrossEntropySum {
    total: f64,
    tokens: i64,
}

impl CrossEntropySum {
    fn update(&mut self, out: &MlmOutput) -> Result<()> {
        let n = out.labels.numel() as i64;
        if n == 0 {
            return Ok(());
        }
        let sum = out.logits.f_to_kind(Kind::Float)?.f_cross_entropy_loss::<Tensor>(
            &out.labels,
            None,
            Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        )?;
        self.total += sum.f_double_value(&[])?;
        self.tokens += n;
        Ok(())
    }

    fn mean(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            self.total / self.tokens as f64
        }
    }
}

/// Mean masked-token cross-entropy (`eval_loss`) or its exponential (`perplexity`).
#[derive(Debug, Default)]
struct LossMetric {
    sum: CrossEntropySum,
    exponentiate: bool,
}

impl Metric for LossMetric {
    fn reset(&mut self) -> Result<()> {
        self.sum = CrossEntropySum::default();
        Ok(())
    }
    fn update(&mut self, out: &MlmOutput) -> Result<()> {
        self.sum.update(out)
    }
    fn partial_sums(&self) -> Result<Option<Vec<f64>>> {
        Ok(Some(vec![self.sum.total, self.sum.tokens as f64]))
    }
    fn set_partial_sums(&mut self, sums: &[f64]) -> Result<()> {
        let [total, tokens] = sums else { anyhow::bail!("expected 2 sums, got {}", sums.len()) };
        self.sum = CrossEntropySum { total: *total, tokens: *tokens as i64 };
        Ok(())
    }
    fn compute(&self) -> Result<BTreeMap<String, f64>> {
        let mean = self.sum.mean();
        Ok(if self.exponentiate {
            BTreeMap::from([("perplexity".to_string(), mean.exp())])
        } else {
            BTreeMap::from([("eval_loss".to_string(), mean)])
        })
    }
    fn columns(&self) -> Result<Vec<ColumnSpec>> {
        Ok(vec![if self.exponentiate {
            ColumnSpec::new("perplexity", ColumnRole::Headline, false)
        } else {
            ColumnSpec::new("eval_loss", ColumnRole::Loss, false)
        }])
    }
}

/// Share of masked tokens whose label is among the model's top `k` predictions.
#[derive(Debug)]
struct TopKAccuracy {
    k: i64,
    hits: i64,
    tokens: i64,
}

impl Metric for TopKAccuracy {
    fn reset(&mut self) -> Result<()> {
        self.hits = 0;
        self.tokens = 0;
        Ok(())
    }
    fn update(&mut self, out: &MlmOutput) -> Result<()> {
        let n = out.labels.numel() as i64;
        if n == 0 {
            return Ok(());
        }
        let (_, top) = out.logits.f_topk(self.k, -1, true, true)?; // (N, k)
        let hits = top.f_eq_tensor(&out.labels.unsqueeze(1))?.f_any_dim(1, false)?.f_sum(Kind::Int64)?;
        self.hits += hits.f_int64_value(&[])?;
        self.tokens += n;
        Ok(())
    }
    fn partial_sums(&self) -> Result<Option<Vec<f64>>> {
        Ok(Some(vec![self.hits as f64, self.tokens as f64]))
    }
    fn set_partial_sums(&mut self, sums: &[f64]) -> Result<()> {
        let [hits, tokens] = sums else { anyhow::bail!("expected 2 sums, got {}", sums.len()) };
        (self.hits, self.tokens) = (*hits as i64, *tokens as i64);
        Ok(())
    }
    fn compute(&self) -> Result<BTreeMap<String, f64>> {
        let name = if self.k == 1 { "accuracy".to_string() } else { format!("top{}_accuracy", self.k) };
        let v = if self.tokens == 0 { f64::NAN } else { self.hits as f64 / self.tokens as f64 };
        Ok(BTreeMap::from([(name, v)]))
    }
    fn columns(&self) -> Result<Vec<ColumnSpec>> {
        let role = if self.k == 1 { ColumnRole::Headline } else { ColumnRole::Detail };
        Ok(self.compute()?.into_keys().map(|name| ColumnSpec::new(name, role, true)).collect())
    }
}


/// Pseudo-perplexity over the first `max_sequences` eval sequences.
#[derive(Debug)]
pub struct PseudoPerplexity {
    pub max_sequences: usize,
    /// Masked copies scored per forward pass.
    pub batch_size: usize,
    log_prob_sum: f64,
    tokens: i64,
}

impl PseudoPerplexity {
    pub fn new(max_sequences: usize, batch_size: usize) -> Self {
        PseudoPerplexity { max_sequences, batch_size, log_prob_sum: 0.0, tokens: 0 }
    }
}

impl Metric for PseudoPerplexity {
    fn reset(&mut self) -> Result<()> {
        (self.log_prob_sum, self.tokens) = (0.0, 0);
        Ok(())
    }
    fn update(&mut self, _: &MlmOutput) -> Result<()> {
        Ok(())
    }
    fn update_with_model(&mut self, model: &dyn MlmModel, sequences: &[Vec<i64>], vocab: &VocabInfo) -> Result<()> {
        let device = model.info()?.device;
        let _guard = tch::no_grad_guard();
        for seq in sequences.iter().take(self.max_sequences) {
            let t = seq.len() as i64;
            let positions: Vec<usize> =
                (0..seq.len()).filter(|&i| !vocab.is_special.get(seq[i] as usize).copied().unwrap_or(false)).collect();
            for chunk in positions.chunks(self.batch_size.max(1)) {
                let n = chunk.len() as i64;
                // n copies of the sequence, copy j with position chunk[j] masked: (n, T)
                let mut ids: Vec<i64> = Vec::with_capacity(chunk.len() * seq.len());
                for &p in chunk {
                    ids.extend(seq.iter().enumerate().map(|(i, &id)| if i == p { vocab.mask_id } else { id }));
                }
                let input = Tensor::from_slice(&ids).view([n, t]).to_device(device);
                let logits = model.logits(&input, &input.ones_like())?; // (n, T, V)
                let rows = Tensor::arange(n, (Kind::Int64, device));
                let cols = Tensor::from_slice(&chunk.iter().map(|&p| p as i64).collect::<Vec<_>>()).to_device(device);
                let picked = logits.f_index(&[Some(rows), Some(cols)])?; // (n, V)
                let targets = Tensor::from_slice(&chunk.iter().map(|&p| seq[p]).collect::<Vec<_>>()).to_device(device);
                let log_probs = picked.f_log_softmax(-1, Kind::Float)?.f_gather(1, &targets.unsqueeze(1), false)?;
                self.log_prob_sum += log_probs.f_sum(Kind::Double)?.f_double_value(&[])?;
                self.tokens += n;
            }
        }
        Ok(())
    }
    fn compute(&self) -> Result<BTreeMap<String, f64>> {
        let v = if self.tokens == 0 { f64::NAN } else { (-self.log_prob_sum / self.tokens as f64).exp() };
        Ok(BTreeMap::from([("pseudo_perplexity".to_string(), v)]))
    }
    fn columns(&self) -> Result<Vec<ColumnSpec>> {
        Ok(vec![ColumnSpec::new("pseudo_perplexity", ColumnRole::Headline, false)])
    }
}

/// `pseudo_perplexity`'s options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PppOptions {
    /// Eval sequences scored.
    #[serde(default = "default_sequences")]
    sequences: usize,
    /// Masked copies per forward pass.
    #[serde(default = "default_ppp_batch")]
    batch_size: usize,
}

fn default_sequences() -> usize {
    16
}
fn default_ppp_batch() -> usize {
    64
}

fn pppl_options(o: &Options) -> Result<PppOptions> {
    let opts: PppOptions = parse_options(o)?;
    anyhow::ensure!(opts.sequences > 0, "sequences: must be positive");
    anyhow::ensure!(opts.batch_size > 0, "batch_size: must be positive");
    Ok(opts)
}

fn check_pppl(o: &Options) -> Result<()> {
    pppl_options(o).map(|_| ())
}

fn build_pppl(o: &Options) -> Result<Box<dyn Metric>> {
    let opts = pppl_options(o)?;
    Ok(Box::new(PseudoPerplexity::new(opts.sequences, opts.batch_size)))
}

fn build_loss(o: &Options) -> Result<Box<dyn Metric>> {
    no_options(o)?;
    Ok(Box::new(LossMetric::default()))
}

fn build_perplexity(o: &Options) -> Result<Box<dyn Metric>> {
    no_options(o)?;
    Ok(Box::new(LossMetric { exponentiate: true, ..Default::default() }))
}

fn build_accuracy(o: &Options) -> Result<Box<dyn Metric>> {
    no_options(o)?;
    Ok(Box::new(TopKAccuracy { k: 1, hits: 0, tokens: 0 }))
}

fn build_top5(o: &Options) -> Result<Box<dyn Metric>> {
    no_options(o)?;
    Ok(Box::new(TopKAccuracy { k: 5, hits: 0, tokens: 0 }))
}

runner_api::declare_plugin!("metrics", register);

/// Registers this plugin's components.
pub fn register(r: &mut Registrar) {
    let metric = |name, doc, f| Component { name, doc, params: vec![], check: no_options, factory: Factory::Metric(f) };
    r.add(metric("loss", "eval_loss: mean cross-entropy over all masked eval tokens", build_loss));
    r.add(metric("perplexity", "perplexity: exp(eval_loss)", build_perplexity));
    r.add(metric("accuracy", "accuracy: share of masked tokens predicted exactly (top-1)", build_accuracy));
    r.add(metric("top5_accuracy", "top5_accuracy: share of masked tokens within the top 5", build_top5));
    r.add(Component {
        name: "pseudo_perplexity",
        doc: "pseudo_perplexity (Salazar et al., 2020): each token masked in turn, on the first eval sequences",
        params: vec![
            ParamDoc { name: "sequences", default: "16", doc: "eval sequences scored" },
            ParamDoc { name: "batch_size", default: "64", doc: "masked copies per forward pass" },
        ],
        check: check_pppl,
        factory: Factory::Metric(build_pppl),
    });
    r.add(Component {
        name: "probe",
        doc: "probe_accuracy, probe_macro_f1: a logistic-regression head on frozen encoder features of a labelled JSONL task",
        params: probe::params(),
        check: probe::check,
        factory: Factory::Metric(probe::build),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(logits: &[f32], labels: &[i64], v: i64) -> MlmOutput {
        let n = labels.len() as i64;
        MlmOutput {
            loss: Tensor::from(0f32),
            logits: Tensor::from_slice(logits).view([n, v]),
            labels: Tensor::from_slice(labels),
        }
    }

    #[test]
    fn loss_is_token_weighted_across_batches() {
        // Batch 1: one token, uniform over 4 -> CE ln 4. Batch 2: three tokens, each certain-ish.
        let mut m = LossMetric::default();
        m.update(&output(&[0.0; 4], &[2], 4)).unwrap();
        let big = [20.0f32, 0.0, 0.0, 0.0];
        let logits: Vec<f32> = big.iter().chain(big.iter()).chain(big.iter()).copied().collect();
        m.update(&output(&logits, &[0, 0, 0], 4)).unwrap();
        let ce_sure = -(20f64.exp() / (20f64.exp() + 3.0)).ln();
        let expect = ((4f64).ln() + 3.0 * ce_sure) / 4.0;
        assert!((m.compute().unwrap()["eval_loss"] - expect).abs() < 1e-6);
        let mut p = LossMetric { exponentiate: true, ..Default::default() };
        p.update(&output(&[0.0; 4], &[2], 4)).unwrap();
        assert!((p.compute().unwrap()["perplexity"] - 4.0).abs() < 1e-5);
    }

    #[test]
    fn sums_of_two_shards_give_the_whole() {
        let logits = [0.9f32, 0.5, 0.1, 0.0, /* row 2 */ 0.1, 0.2, 0.3, 0.9];
        let (first, second) = (output(&logits[..4], &[0], 4), output(&logits[4..], &[2], 4));
        let mut whole = LossMetric::default();
        whole.update(&first).unwrap();
        whole.update(&second).unwrap();
        let (mut a, mut b) = (LossMetric::default(), LossMetric::default());
        a.update(&first).unwrap();
        b.update(&second).unwrap();
        let sums: Vec<f64> =
            a.partial_sums().unwrap().unwrap().iter().zip(b.partial_sums().unwrap().unwrap()).map(|(x, y)| x + y).collect();
        a.set_partial_sums(&sums).unwrap();
        assert_eq!(a.compute().unwrap(), whole.compute().unwrap());
        let mut acc = TopKAccuracy { k: 1, hits: 0, tokens: 0 };
        acc.set_partial_sums(&[3.0, 4.0]).unwrap();
        assert_eq!(acc.compute().unwrap()["accuracy"], 0.75);
        assert!(acc.set_partial_sums(&[1.0]).is_err());
    }

    #[test]
    fn top_k_accuracy_counts_hits() {
        let logits = [0.9f32, 0.5, 0.1, 0.0, /* row 2 */ 0.1, 0.2, 0.3, 0.9];
        let mut a1 = TopKAccuracy { k: 1, hits: 0, tokens: 0 };
        a1.update(&output(&logits, &[0, 2], 4)).unwrap();
        assert_eq!(a1.compute().unwrap()["accuracy"], 0.5);
        let mut a2 = TopKAccuracy { k: 2, hits: 0, tokens: 0 };
        a2.update(&output(&logits, &[1, 2], 4)).unwrap();
        assert_eq!(a2.compute().unwrap()["top2_accuracy"], 1.0);
    }
}
