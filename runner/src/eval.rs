//! Evaluation: the fixed held-out batches through the model in eval mode,
//! feeding every metric component; then metrics that run the model
//! themselves (pseudo-perplexity) get the eval sequences.

use std::collections::BTreeMap;

use anyhow::Result;

use runner_api::{Metric, MlmModel, VocabInfo};

use crate::autocast::Autocast;
use crate::data::EvalSet;

/// Runs one eval pass and returns every metric's values (e.g. `eval_loss`).
pub fn evaluate(
    model: &dyn MlmModel,
    device: tch::Device,
    compute: tch::Kind,
    set: &EvalSet,
    vocab: &VocabInfo,
    metrics: &mut [Box<dyn Metric>],
) -> Result<BTreeMap<String, f64>> {
    let _guard = tch::no_grad_guard();
    let _autocast = Autocast::enter(device, compute);
    for m in metrics.iter_mut() {
        m.reset()?;
    }
    for batch in &set.batches {
        let out = model.forward_mlm(&batch.to_device(device), false)?;
        for m in metrics.iter_mut() {
            m.update(&out)?;
        }
    }
    for m in metrics.iter_mut() {
        m.update_with_model(model, &set.sequences, vocab)?;
    }
    let mut values = BTreeMap::new();
    for m in metrics.iter() {
        values.extend(m.compute()?);
    }
    Ok(values)
}
