//! Evaluation: the fixed held-out batches through the model in eval mode,
//! feeding every metric component; then metrics that run the model
//! themselves (pseudo-perplexity) get the eval sequences.
//!
//! With several processes, each takes every `W`-th batch and the metrics'
//! partial sums are added over the processes, so the figures are a single
//! process's. If a metric cannot be split, every process evaluates everything.

use std::collections::BTreeMap;

use anyhow::Result;

use runner_api::{Metric, MlmModel, Mode, VocabInfo};

use crate::autocast::Autocast;
use crate::data::EvalSet;
use crate::distributed::Collective;

/// What one eval pass measured.
pub struct Evaluation {
    /// Every metric's values (e.g. `eval_loss`).
    pub values: BTreeMap<String, f64>,
    /// Seconds spent in metrics that run the model themselves (a probe,
    /// pseudo-perplexity), apart from the pass over the eval batches.
    pub model_metric_seconds: f64,
}

/// Runs one eval pass.
pub fn evaluate(
    model: &dyn MlmModel,
    device: tch::Device,
    compute: tch::Kind,
    set: &EvalSet,
    vocab: &VocabInfo,
    metrics: &mut [Box<dyn Metric>],
    collective: &dyn Collective,
) -> Result<Evaluation> {
    let _guard = tch::no_grad_guard();
    let _autocast = Autocast::enter(device, compute);
    for m in metrics.iter_mut() {
        m.reset()?;
    }
    let mut split = collective.world_size() > 1;
    for m in metrics.iter() {
        split &= m.partial_sums()?.is_some();
    }
    let (rank, world) = if split { (collective.rank(), collective.world_size()) } else { (0, 1) };
    for batch in set.batches.iter().skip(rank).step_by(world) {
        let out = model.forward_mlm(&batch.to_device(device), Mode::Eval)?;
        for m in metrics.iter_mut() {
            m.update(&out)?;
        }
    }
    let sequences: Vec<Vec<i64>> = set.sequences.iter().skip(rank).step_by(world).cloned().collect();
    let started = std::time::Instant::now();
    for m in metrics.iter_mut() {
        m.update_with_model(model, &sequences, vocab)?;
    }
    let model_metric_seconds = started.elapsed().as_secs_f64();
    if split {
        let mut sums = Vec::new();
        let mut lengths = Vec::new();
        for m in metrics.iter() {
            let s = m.partial_sums()?.unwrap_or_default();
            lengths.push(s.len());
            sums.extend(s);
        }
        let t = tch::Tensor::from_slice(&sums).to_device(device);
        collective.all_reduce_sum(std::slice::from_ref(&t))?;
        let total = Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu))?;
        let mut at = 0;
        for (m, n) in metrics.iter_mut().zip(lengths) {
            m.set_partial_sums(&total[at..at + n])?;
            at += n;
        }
    }
    let mut values = BTreeMap::new();
    for m in metrics.iter() {
        values.extend(m.compute()?);
    }
    Ok(Evaluation { values, model_metric_seconds })
}
