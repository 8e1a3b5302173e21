//! Dynamic loss scaling for `precision: fp16`, as `torch.amp.GradScaler` does
//! it and with the same libtorch kernels: the loss is multiplied by the scale
//! before backward; the gradients are divided by it (and checked for inf/NaN)
//! before clipping; a step with a non-finite gradient is skipped and halves the
//! scale; `growth_interval` clean steps in a row double it.

use std::collections::HashMap;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

use super::state::{copy_named, Stateful};

/// `torch.amp.GradScaler`'s settings; the defaults are its defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalerConfig {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: i64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

/// The scale, its growth tracker, and the count of skipped steps.
pub struct LossScaler {
    cfg: ScalerConfig,
    /// 0-dim float32, as GradScaler keeps it.
    scale: Tensor,
    /// 0-dim int32: clean steps since the last change of scale.
    growth_tracker: Tensor,
    /// Optimizer steps skipped for a non-finite gradient.
    pub skipped: u64,
}

impl LossScaler {
    pub fn new(cfg: ScalerConfig, device: Device) -> Self {
        LossScaler {
            cfg,
            scale: Tensor::full([], cfg.init_scale, (Kind::Float, device)),
            growth_tracker: Tensor::full([], 0, (Kind::Int, device)),
            skipped: 0,
        }
    }

    /// The current scale (a read back to the host: for log rows only).
    pub fn value(&self) -> f64 {
        self.scale.double_value(&[])
    }

    /// `loss * scale`, to call backward on.
    pub fn scale(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.f_mul(&self.scale.f_to_kind(loss.kind())?)?)
    }

    /// Divides every gradient by the scale in place; returns 1.0 if any of
    /// them holds an inf or NaN, else 0.0 (the `found_inf` of GradScaler).
    pub fn unscale(&self, grads: &[Tensor]) -> Result<f64> {
        Ok(self.unscale_on_device(grads)?.f_double_value(&[])?)
    }

    /// [`unscale`](Self::unscale) with the flag left on the device (0-dim
    /// float32), for the caller to read together with other values.
    pub fn unscale_on_device(&self, grads: &[Tensor]) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        // As GradScaler: the reciprocal in double, then float32.
        let inv_scale = self.scale.f_to_kind(Kind::Double)?.f_reciprocal()?.f_to_kind(Kind::Float)?;
        let mut found_inf = Tensor::full([], 0.0, (Kind::Float, self.scale.device()));
        for g in grads.iter().filter(|g| g.defined()) {
            g.shallow_clone().f_internal_amp_non_finite_check_and_unscale(&mut found_inf, &inv_scale)?;
        }
        Ok(found_inf)
    }

    /// Updates the scale after a step: `found_inf` is the flag every process
    /// agreed on (non-zero: the step was skipped).
    pub fn update(&mut self, found_inf: bool) -> Result<()> {
        let flag = Tensor::full([], if found_inf { 1.0 } else { 0.0 }, (Kind::Float, self.scale.device()));
        let ScalerConfig { growth_factor, backoff_factor, growth_interval, .. } = self.cfg;
        let _ = self.scale.f_internal_amp_update_scale_(&self.growth_tracker, &flag, growth_factor, backoff_factor, growth_interval)?;
        if found_inf {
            self.skipped += 1;
        }
        Ok(())
    }
}


/// Saved: `scaler.scale` and `scaler.growth_tracker`, and the skipped-step count.
impl Stateful for LossScaler {
    fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scaler.scale".to_string(), self.scale.shallow_clone()),
            ("scaler.growth_tracker".to_string(), self.growth_tracker.shallow_clone()),
        ]
    }

    fn values(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "skipped": self.skipped }))
    }

    fn load_tensors(&mut self, saved: &HashMap<&str, &Tensor>) -> Result<()> {
        if !saved.contains_key("scaler.scale") {
            anyhow::bail!("the saved state has no loss scale (was it saved by a run without precision: fp16?)");
        }
        copy_named(saved, "scaler.scale", &mut self.scale)?;
        copy_named(saved, "scaler.growth_tracker", &mut self.growth_tracker)
    }

    fn load_values(&mut self, values: serde_json::Value) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            skipped: u64,
        }
        self.skipped = serde_json::from_value::<Saved>(values)?.skipped;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_grows_after_clean_steps_and_halves_on_inf() {
        let cfg = ScalerConfig { init_scale: 8.0, growth_interval: 3, ..Default::default() };
        let mut s = LossScaler::new(cfg, Device::Cpu);
        let mut seen = Vec::new();
        for inf in [false, false, false, false, true, false, false, false] {
            s.update(inf).unwrap();
            seen.push(s.value());
        }
        assert_eq!(seen, [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 8.0, 16.0]);
        assert_eq!(s.skipped, 1);
    }

    #[test]
    fn unscale_divides_and_flags_non_finite_gradients() {
        let s = LossScaler::new(ScalerConfig { init_scale: 4.0, ..Default::default() }, Device::Cpu);
        let g = Tensor::from_slice(&[4.0f32, -8.0]);
        assert_eq!(s.unscale(&[g.shallow_clone()]).unwrap(), 0.0);
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [1.0, -2.0]);
        let bad = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        assert_eq!(s.unscale(&[g, bad]).unwrap(), 1.0);
        assert_eq!(s.scale(&Tensor::from(0.5f32)).unwrap().double_value(&[]), 2.0);
    }
}
