//! Evaluation: the fixed held-out batches through the model in eval mode,
//! feeding every metric component.

use std::collections::BTreeMap;

use anyhow::Result;

use runner_api::{Metric, MlmModel};

use crate::data::EvalSet;

/// Runs one eval pass and returns every metric's values (e.g. `eval_loss`).
pub fn evaluate(model: &dyn MlmModel, set: &EvalSet, metrics: &mut [Box<dyn Metric>]) -> Result<BTreeMap<String, f64>> {
    let _guard = tch::no_grad_guard();
    for m in metrics.iter_mut() {
        m.reset();
    }
    for batch in &set.batches {
        let out = model.forward_mlm(&batch.to_device(model.device()), false)?;
        for m in metrics.iter_mut() {
            m.update(&out)?;
        }
    }
    Ok(metrics.iter().flat_map(|m| m.compute()).collect())
}
