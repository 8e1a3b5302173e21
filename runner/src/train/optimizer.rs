//! AdamW (Loshchilov & Hutter), written out so that its state can be saved
//! and restored exactly, with per-parameter weight-decay groups and global
//! gradient-norm clipping. Matches `torch.optim.AdamW` step for step.
//!
//! Contiguous float32 CPU parameters are updated in one fused pass over
//! (parameter, gradient, first and second moment), split over threads; tch
//! has no binding for torch's fused kernel, and the per-tensor chain of ops
//! reads and writes each buffer several times. Other parameters take that chain.

use std::collections::HashMap;

use anyhow::Result;
use tch::Tensor;

use runner_api::Parameter;

use super::state::{copy_named, Stateful};

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Parameter>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Optimizer steps taken.
    pub steps: u64,
}

impl AdamW {
    pub fn new(params: Vec<Parameter>, cfg: AdamWConfig) -> Self {
        let zeros = |p: &Parameter| p.tensor.zeros_like();
        AdamW {
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
            params,
            cfg,
            steps: 0,
        }
    }

    /// One update at learning rate `lr`. Parameters without a gradient are skipped.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bias1 = 1.0 - beta1.powi(self.steps as i32);
        let bias2_sqrt = (1.0 - beta2.powi(self.steps as i32)).sqrt();
        let step_size = lr / bias1;
        for ((p, m), v) in self.params.iter_mut().zip(&mut self.exp_avg).zip(&mut self.exp_avg_sq) {
            let g = p.tensor.grad();
            if !g.defined() {
                continue;
            }
            let decay = if p.decay { lr * weight_decay } else { 0.0 };
            let coeffs = Coeffs {
                decay: (1.0 - decay) as f32,
                beta1: 1.0 - beta1 as f32,
                beta2: beta2 as f32,
                one_minus_beta2: (1.0 - beta2) as f32,
                bias2_sqrt: bias2_sqrt as f32,
                eps: eps as f32,
                step_size: step_size as f32,
            };
            if fused_update(&p.tensor, &g, m, v, &coeffs) {
                continue;
            }
            if p.decay && weight_decay != 0.0 {
                let _ = p.tensor.f_mul_(&Tensor::from(1.0 - lr * weight_decay))?;
            }
            let _ = m.f_lerp_(&g, 1.0 - beta1)?;
            let _ = v.f_mul_(&Tensor::from(beta2))?;
            let _ = v.f_addcmul_(&g.f_mul_scalar(1.0 - beta2)?, &g)?;
            let denom = v.f_sqrt()?.f_div_scalar(bias2_sqrt)?.f_add_scalar(eps)?;
            let _ = p.tensor.f_addcdiv_(&m.f_mul_scalar(-step_size)?, &denom)?;
        }
        Ok(())
    }

    /// The parameters' gradients (undefined tensors where none was computed).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.tensor.grad()).filter(|g| g.defined()).collect()
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// Scales gradients so that their global L2 norm is at most `max_norm`
    /// (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping,
    /// a 0-dim tensor on the gradients' device: nothing is read back to the
    /// host, so a GPU never waits for it.
    pub fn clip_grad_norm(&mut self, max_norm: Option<f64>) -> Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return Ok(Tensor::from(0.0));
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
        if let Some(max) = max_norm {
            // max / (norm + 1e-6) in float64, at most 1 (a factor of 1 leaves a gradient as it is).
            let total64 = total.f_to_kind(tch::Kind::Double)?;
            let coef = Tensor::f_full([], max, (tch::Kind::Double, total.device()))?.f_div(&total64.f_add_scalar(1e-6)?)?.f_clamp_max(1.0)?;
            for mut g in grads {
                let _ = g.f_mul_(&coef)?;
            }
        }
        Ok(total)
    }

    /// Number of trainable parameter elements.
    pub fn num_elements(&self) -> i64 {
        self.params.iter().map(|p| p.tensor.numel() as i64).sum()
    }
}

/// Per-tensor constants of one AdamW update, in float32 as torch computes them.
struct Coeffs {
    decay: f32,
    /// 1 - beta1: the weight of the new gradient in the first moment.
    beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

/// The whole update in one pass when every buffer is a contiguous float32 CPU
/// tensor of the same size; false (nothing done) otherwise.
fn fused_update(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &Coeffs) -> bool {
    let all = [p, g, m, v];
    let n = p.numel();
    if !all.iter().all(|t| {
        t.device() == tch::Device::Cpu && t.kind() == tch::Kind::Float && t.is_contiguous() && t.numel() == n
    }) {
        return false;
    }
    // SAFETY: four distinct contiguous float32 buffers of `n` elements (the
    // moments are the optimizer's own; a gradient never shares its parameter's
    // storage), alive for the whole call; no other code touches them meanwhile.
    let (p, g, m, v) = unsafe {
        let slice = |t: &Tensor| std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n);
        (slice(p), &*slice(g), slice(m), slice(v))
    };
    const MIN_CHUNK: usize = 1 << 16;
    let threads = (tch::get_num_threads().max(1) as usize).min(n / MIN_CHUNK + 1);
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let mut parts = p.chunks_mut(chunk).zip(g.chunks(chunk)).zip(m.chunks_mut(chunk)).zip(v.chunks_mut(chunk));
        let first = parts.next();
        for (((p, g), m), v) in parts {
            s.spawn(move || adamw_kernel(p, g, m, v, k));
        }
        if let Some((((p, g), m), v)) = first {
            adamw_kernel(p, g, m, v, k);
        }
    });
    true
}

/// torch's single-tensor AdamW, element by element: decay, lerp of the first
/// moment, second moment, then `p += (-step_size * m) / (sqrt(v) / bias2_sqrt + eps)`.
fn adamw_kernel(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &Coeffs) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += k.beta1 * (g - *m);
        *v = *v * k.beta2 + (g * k.one_minus_beta2) * g;
        let denom = v.sqrt() / k.bias2_sqrt + k.eps;
        *p = *p * k.decay + (*m * -k.step_size) / denom;
    }
}


/// Saved: the moments as `exp_avg.<name>` and `exp_avg_sq.<name>`, and the step count.
impl Stateful for AdamW {
    fn tensors(&self) -> Vec<(String, Tensor)> {
        let named = |prefix: &str, ts: &[Tensor]| -> Vec<(String, Tensor)> {
            self.params.iter().zip(ts).map(|(p, t)| (format!("{prefix}.{}", p.name), t.shallow_clone())).collect()
        };
        let mut out = named("exp_avg", &self.exp_avg);
        out.extend(named("exp_avg_sq", &self.exp_avg_sq));
        out
    }

    fn values(&self) -> Result<serde_json::Value> {
        Ok(serde_json::json!({ "steps": self.steps }))
    }

    fn load_tensors(&mut self, saved: &HashMap<&str, &Tensor>) -> Result<()> {
        for (prefix, moments) in [("exp_avg", &mut self.exp_avg), ("exp_avg_sq", &mut self.exp_avg_sq)] {
            for (p, m) in self.params.iter().zip(moments.iter_mut()) {
                copy_named(saved, &format!("{prefix}.{}", p.name), m)?;
            }
        }
        Ok(())
    }

    fn load_values(&mut self, values: serde_json::Value) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            steps: u64,
        }
        self.steps = serde_json::from_value::<Saved>(values)?.steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    /// Two steps on f(p) = sum(p^2), against the closed form of PyTorch's update.
    #[test]
    fn matches_torch_adamw_update() {
        let p = Tensor::from_slice(&[1.0f64, -2.0]).set_requires_grad(true);
        let params = vec![Parameter { name: "p".into(), tensor: p.shallow_clone(), decay: true }];
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
        let mut opt = AdamW::new(params, cfg);
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        let lr = 0.1;
        for t in 1..=2 {
            opt.zero_grad();
            (&p * &p).sum(Kind::Double).backward();
            opt.step(lr).unwrap();
            for i in 0..2 {
                let g = 2.0 * expect[i];
                expect[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mhat = m[i] / (1.0 - 0.9f64.powi(t));
                let denom = v[i].sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8;
                expect[i] -= lr * mhat / denom * (1.0 - 0.9f64.powi(t)) / (1.0 - 0.9f64.powi(t));
            }
        }
        let got: Vec<f64> = Vec::try_from(&p.detach()).unwrap();
        for i in 0..2 {
            assert!((got[i] - expect[i]).abs() < 1e-12, "{got:?} vs {expect:?}");
        }
    }

    /// The fused float32 pass and the per-tensor op chain (taken for float64)
    /// give the same parameters after a few steps with decay.
    #[test]
    fn fused_pass_matches_the_op_chain() {
        tch::manual_seed(3);
        let start = Tensor::randn([300, 300], (Kind::Double, tch::Device::Cpu));
        let run = |kind: Kind| {
            let p = start.to_kind(kind).set_requires_grad(true);
            let params = vec![Parameter { name: "p".into(), tensor: p.shallow_clone(), decay: true }];
            let mut opt = AdamW::new(params, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 });
            for step in 0..4 {
                opt.zero_grad();
                ((&p * &p).sum(kind) * (step + 1) as f64 + p.sin().sum(kind)).backward();
                opt.step(1e-2).unwrap();
            }
            p.detach().to_kind(Kind::Double)
        };
        let gap = (run(Kind::Float) - run(Kind::Double)).abs().max().double_value(&[]);
        assert!(gap < 1e-5, "fused float32 and op-chain float64 differ by {gap}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let a = Tensor::from_slice(&[3.0f64]).set_requires_grad(true);
        let b = Tensor::from_slice(&[4.0f64]).set_requires_grad(true);
        let params = vec![
            Parameter { name: "a".into(), tensor: a.shallow_clone(), decay: true },
            Parameter { name: "b".into(), tensor: b.shallow_clone(), decay: false },
        ];
        let mut opt = AdamW::new(params, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
        (&a * &a / 2.0 + &b * &b / 2.0).sum(Kind::Double).backward(); // grads (3, 4): norm 5
        let norm = opt.clip_grad_norm(Some(1.0)).unwrap().double_value(&[]);
        assert!((norm - 5.0).abs() < 1e-9);
        let ga = a.grad().double_value(&[]);
        let gb = b.grad().double_value(&[]);
        assert!(((ga * ga + gb * gb).sqrt() - 1.0).abs() < 1e-5);
    }
}
