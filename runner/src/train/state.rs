//! The training state: everything a run changes as it goes, apart from the
//! model's parameters. [`TrainState::state_dict`] is its one saved form: a
//! checkpoint writes it, a resume loads it with
//! [`load_state_dict`](TrainState::load_state_dict), and the first process of a
//! data-parallel run sends it to the others. Each part says what it holds
//! through [`Stateful`], so adding a field to a part is one edit (and its test);
//! nothing maps fields by hand.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::Tensor;

use super::optimizer::AdamW;
use super::scaler::LossScaler;
use crate::report::Row;

/// What changes as the run goes.
pub struct TrainState {
    /// The step, the open log window, the counters and the metric rows.
    pub progress: Progress,
    /// AdamW's moments and step count.
    pub optimizer: AdamW,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<LossScaler>,
}

/// The plain values of a run's progress, saved as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done (taken or skipped): the schedule's and the data's
    /// position; the next step is `step + 1`.
    pub step: u64,
    /// The log window not yet written as a row.
    pub window: Window,
    pub stats: FitStats,
    /// Metric rows so far.
    pub rows: Vec<Row>,
}

/// Train-loss figures of the log window that is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub loss: f64,
    pub steps: u64,
    pub tokens: u64,
}

/// What the loop measured so far.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitStats {
    /// Real (non-padding) training tokens seen.
    pub tokens: u64,
    /// Wall time in training steps (evals excluded); for the summary only.
    pub train_seconds: f64,
    /// Of that, time in the all-reduces of gradients and step figures
    /// (waiting for the slowest process included).
    pub allreduce_seconds: f64,
    /// Wall time in evals (metrics that run the model, as a probe, included).
    pub eval_seconds: f64,
}

/// A state in its saved form: tensors by name, and plain values by part.
pub struct StateDict {
    pub tensors: Vec<(String, Tensor)>,
    pub values: Map<String, Value>,
}

/// A part of the training state: its tensors (shallow, so that writing into
/// them writes into the state) and its plain values.
pub trait Stateful {
    fn tensors(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    fn values(&self) -> Result<Value>;
    /// Copies this part's tensors from `saved`; a missing name is an error.
    fn load_tensors(&mut self, saved: &HashMap<&str, &Tensor>) -> Result<()> {
        let _ = saved;
        Ok(())
    }
    fn load_values(&mut self, values: Value) -> Result<()>;
}

impl Stateful for Progress {
    fn values(&self) -> Result<Value> {
        Ok(serde_json::to_value(self)?)
    }
    fn load_values(&mut self, values: Value) -> Result<()> {
        *self = serde_json::from_value(values)?;
        Ok(())
    }
}

impl TrainState {
    /// The parts, by the name their values are saved under.
    fn parts(&self) -> Vec<(&'static str, &dyn Stateful)> {
        let mut parts: Vec<(&'static str, &dyn Stateful)> = vec![("progress", &self.progress), ("optimizer", &self.optimizer)];
        if let Some(scaler) = &self.scaler {
            parts.push(("scaler", scaler));
        }
        parts
    }

    fn parts_mut(&mut self) -> Vec<(&'static str, &mut dyn Stateful)> {
        let mut parts: Vec<(&'static str, &mut dyn Stateful)> = vec![("progress", &mut self.progress), ("optimizer", &mut self.optimizer)];
        if let Some(scaler) = &mut self.scaler {
            parts.push(("scaler", scaler));
        }
        parts
    }

    /// The whole state; its tensors are the live ones (shallow clones).
    pub fn state_dict(&self) -> Result<StateDict> {
        let (mut tensors, mut values) = (Vec::new(), Map::new());
        for (name, part) in self.parts() {
            tensors.extend(part.tensors());
            values.insert(name.to_string(), part.values()?);
        }
        Ok(StateDict { tensors, values })
    }

    /// Takes a saved state: tensors copied in, values replaced.
    pub fn load_state_dict(&mut self, saved: &StateDict) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let by_name: HashMap<&str, &Tensor> = saved.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (_, part) in self.parts_mut() {
            part.load_tensors(&by_name)?;
        }
        self.load_values(&saved.values)
    }

    /// Takes saved values alone (the tensors already in place, as after a broadcast).
    pub fn load_values(&mut self, values: &Map<String, Value>) -> Result<()> {
        for (name, part) in self.parts_mut() {
            let Some(v) = values.get(name) else { bail!("the saved state has no `{name}` part") };
            part.load_values(v.clone()).with_context(|| format!("the saved state's `{name}` part"))?;
        }
        Ok(())
    }
}

/// Copies `saved[name]` into `into`, checking that it exists and has the same shape.
pub fn copy_named(saved: &HashMap<&str, &Tensor>, name: &str, into: &mut Tensor) -> Result<()> {
    let Some(t) = saved.get(name) else { bail!("the saved state has no tensor {name}") };
    if t.size() != into.size() {
        bail!("the saved state's {name} has shape {:?}, the run's {:?}", t.size(), into.size());
    }
    into.f_copy_(t)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optimizer::AdamWConfig;
    use crate::train::scaler::ScalerConfig;
    use runner_api::Parameter;

    fn state(fp16: bool) -> (TrainState, Tensor) {
        let w = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let params = vec![Parameter { name: "w".into(), tensor: w.shallow_clone(), decay: true }];
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let state = TrainState {
            progress: Progress::default(),
            optimizer: AdamW::new(params, cfg),
            scaler: fp16.then(|| LossScaler::new(ScalerConfig::default(), tch::Device::Cpu)),
        };
        (state, w)
    }

    /// A state after two steps with gradients, a skipped step, a half window and a row.
    fn trained(fp16: bool) -> TrainState {
        let (mut s, w) = state(fp16);
        for _ in 0..2 {
            let loss = w.square().sum(tch::Kind::Float);
            loss.backward();
            s.optimizer.step(1e-2).unwrap();
            s.optimizer.zero_grad();
        }
        if let Some(scaler) = &mut s.scaler {
            scaler.update(true).unwrap();
        }
        s.progress = Progress {
            step: 3,
            window: Window { loss: 1.25, steps: 1, tokens: 17 },
            stats: FitStats { tokens: 99, train_seconds: 0.1 + 0.2, allreduce_seconds: 1e-3, eval_seconds: 0.7 / 3.0 },
            rows: vec![Row { step: 2, train_loss: Some(0.1 + 0.7), ..Default::default() }],
        };
        s
    }

    #[test]
    fn a_state_dict_loads_back_into_a_fresh_state_exactly() {
        for fp16 in [false, true] {
            let before = trained(fp16);
            let saved = before.state_dict().unwrap();
            // Through JSON text, as a checkpoint's state.json and a broadcast carry it.
            let text = serde_json::to_string(&saved.values).unwrap();
            let values: Map<String, Value> = serde_json::from_str(&text).unwrap();
            let tensors = saved.tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
            let (mut after, _) = state(fp16);
            after.load_state_dict(&StateDict { tensors, values }).unwrap();
            assert_eq!(after.progress, before.progress, "fp16 {fp16}");
            assert_eq!(after.optimizer.steps, before.optimizer.steps);
            assert_eq!(after.scaler.as_ref().map(|s| s.skipped), before.scaler.as_ref().map(|s| s.skipped));
            let again = after.state_dict().unwrap();
            assert_eq!(again.values, saved.values);
            assert_eq!(again.tensors.len(), saved.tensors.len());
            for ((n1, t1), (n2, t2)) in again.tensors.iter().zip(&saved.tensors) {
                assert_eq!(n1, n2);
                assert!(t1.equal(t2), "{n1} differs after the round trip");
            }
        }
    }

    #[test]
    fn a_state_without_a_part_or_a_tensor_is_refused_by_name() {
        let saved = trained(true).state_dict().unwrap();
        let mut values = saved.values.clone();
        values.remove("scaler");
        let tensors = saved.tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let err = state(true).0.load_state_dict(&StateDict { tensors, values }).unwrap_err();
        assert!(format!("{err:#}").contains("`scaler`"), "{err:#}");
        let tensors = saved.tensors.iter().filter(|(n, _)| !n.starts_with("exp_avg_sq")).map(|(n, t)| (n.clone(), t.copy())).collect();
        let err = state(true).0.load_state_dict(&StateDict { tensors, values: saved.values.clone() }).unwrap_err();
        assert!(format!("{err:#}").contains("exp_avg_sq.w"), "{err:#}");
    }
}
