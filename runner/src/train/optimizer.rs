//! AdamW (Loshchilov & Hutter), written out so that its state can be saved
//! and restored exactly, with per-parameter weight-decay groups and global
//! gradient-norm clipping. Matches `torch.optim.AdamW` step for step.

use anyhow::Result;
use tch::Tensor;

use runner_api::Parameter;

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
    /// (as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: Option<f64>) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
        let total = Tensor::f_stack(&norms, 0)?.f_norm()?.f_double_value(&[])?;
        if let Some(max) = max_norm {
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for mut g in grads {
                    let _ = g.f_mul_(&Tensor::from(coef))?;
                }
            }
        }
        Ok(total)
    }

    /// Number of trainable parameter elements.
    pub fn num_elements(&self) -> i64 {
        self.params.iter().map(|p| p.tensor.numel() as i64).sum()
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
        let norm = opt.clip_grad_norm(Some(1.0)).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let ga = a.grad().double_value(&[]);
        let gb = b.grad().double_value(&[]);
        assert!(((ga * ga + gb * gb).sqrt() - 1.0).abs() < 1e-5);
    }
}
