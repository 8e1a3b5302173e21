//! Multinomial logistic regression with an L2 penalty, fitted by full-batch
//! L-BFGS in float64: the probe's head. It minimises
//!
//!   mean_i CE(softmax(x_i W + b), y_i) + l2/2 * ||W||^2   (b unpenalised)
//!
//! which is scikit-learn's `LogisticRegression(C = 1 / (l2 * n))` objective
//! divided by `C * n`, so both reach the same optimum. The start is all zeros,
//! so a fit is a pure function of its inputs.

use std::collections::VecDeque;

use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// A fitted head: weights (H, K) and biases (K,), float64.
#[derive(Debug)]
pub struct LogReg {
    pub weights: Tensor,
    pub bias: Tensor,
    /// L-BFGS iterations taken.
    pub iterations: usize,
}

/// The objective and its gradient at `theta` = W (H, K) row-major, then b (K).
struct Problem<'a> {
    x: &'a Tensor,      // (n, H) float64
    onehot: Tensor,     // (n, K) float64
    h: i64,
    k: i64,
    l2: f64,
}

impl Problem<'_> {
    fn value_and_grad(&self, theta: &[f64]) -> Result<(f64, Vec<f64>)> {
        let n = self.x.size()[0] as f64;
        let hk = (self.h * self.k) as usize;
        let w = Tensor::from_slice(&theta[..hk]).f_view([self.h, self.k])?;
        let b = Tensor::from_slice(&theta[hk..]);
        let z = self.x.f_matmul(&w)?.f_add(&b)?; // (n, K)
        let logp = z.f_log_softmax(1, Kind::Double)?;
        let nll = -(logp.f_mul(&self.onehot)?.f_sum(Kind::Double)?.f_double_value(&[])?) / n;
        let penalty = 0.5 * self.l2 * w.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let gz = (logp.f_exp()? - &self.onehot) / n; // (n, K)
        let gw = self.x.f_tr()?.f_matmul(&gz)? + &w * self.l2; // (H, K)
        let gb = gz.f_sum_dim_intlist(0i64, false, Kind::Double)?; // (K,)
        let mut grad = Vec::<f64>::try_from(&gw.f_reshape([-1])?)?;
        grad.extend(Vec::<f64>::try_from(&gb)?);
        Ok((nll + penalty, grad))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fits the head on features `x` (n, H) and class indices `y` (n,) in `0..k`.
/// Stops when the gradient's largest entry is below `gtol`, when a step
/// lowers the objective by less than 1e-12 of it, or after `max_iter`.
pub fn fit(x: &Tensor, y: &[i64], k: i64, l2: f64, max_iter: usize, gtol: f64) -> Result<LogReg> {
    let x = x.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
    let h = x.size()[1];
    let labels = Tensor::from_slice(y).f_unsqueeze(1)?;
    let onehot = Tensor::f_zeros([y.len() as i64, k], (Kind::Double, Device::Cpu))?.f_scatter_value(1, &labels, 1.0)?;
    let problem = Problem { x: &x, onehot, h, k, l2 };
    let dim = ((h + 1) * k) as usize;
    let mut theta = vec![0.0; dim];
    let (mut f, mut g) = problem.value_and_grad(&theta)?;
    // (s, y, 1 / y.s) of the last `memory` steps.
    let memory = 10;
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
    let mut iterations = 0;
    while iterations < max_iter {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < gtol {
            break;
        }
        iterations += 1;
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, yv, _)) = history.back() {
            let gamma = dot(s, yv) / dot(yv, yv);
            q.iter_mut().for_each(|qi| *qi *= gamma);
        } else {
            // First step: length 1 / |g| along -g.
            let norm = dot(&g, &g).sqrt().max(1e-12);
            q.iter_mut().for_each(|qi| *qi /= norm);
        }
        for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let beta = rho * dot(yv, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - beta) * si);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            history.clear();
            d = g.iter().map(|v| -v).collect();
            slope = dot(&g, &d);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let (mut f_new, mut g_new, mut theta_new);
        loop {
            theta_new = theta.iter().zip(&d).map(|(t, di)| t + step * di).collect::<Vec<f64>>();
            (f_new, g_new) = problem.value_and_grad(&theta_new)?;
            if f_new <= f + 1e-4 * step * slope || step < 1e-12 {
                break;
            }
            step *= 0.5;
        }
        let s: Vec<f64> = theta_new.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-12 {
            if history.len() == memory {
                history.pop_front();
            }
            history.push_back((s, yv, 1.0 / sy));
        }
        let decrease = f - f_new;
        (theta, f, g) = (theta_new, f_new, g_new);
        if decrease.abs() <= 1e-12 * f.abs().max(1.0) {
            break;
        }
    }
    let hk = (h * k) as usize;
    Ok(LogReg {
        weights: Tensor::from_slice(&theta[..hk]).f_view([h, k])?,
        bias: Tensor::from_slice(&theta[hk..]),
        iterations,
    })
}

impl LogReg {
    /// The most probable class of each row of `x` (n, H).
    pub fn predict(&self, x: &Tensor) -> Result<Vec<i64>> {
        let x = x.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?;
        let z = x.f_matmul(&self.weights)?.f_add(&self.bias)?;
        Ok(Vec::<i64>::try_from(&z.f_argmax(1, false)?)?)
    }
}

/// Share of `pred` equal to `truth`.
pub fn accuracy(truth: &[i64], pred: &[i64]) -> f64 {
    truth.iter().zip(pred).filter(|(a, b)| a == b).count() as f64 / truth.len().max(1) as f64
}

/// Mean F1 over the classes that occur in `truth` or `pred` (as scikit-learn's
/// `f1_score(average="macro")`); a class with no true or predicted example
/// scores 0.
pub fn macro_f1(truth: &[i64], pred: &[i64]) -> f64 {
    let mut classes: Vec<i64> = truth.iter().chain(pred).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    let f1 = |c: i64| {
        let tp = truth.iter().zip(pred).filter(|&(&t, &p)| t == c && p == c).count() as f64;
        let fp = truth.iter().zip(pred).filter(|&(&t, &p)| t != c && p == c).count() as f64;
        let fneg = truth.iter().zip(pred).filter(|&(&t, &p)| t == c && p != c).count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fneg)
        }
    };
    classes.iter().map(|&c| f1(c)).sum::<f64>() / classes.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three Gaussian blobs: the fit separates them, and at the optimum the
    /// gradient of the penalised objective vanishes (checked in closed form).
    #[test]
    fn fits_separable_blobs_to_a_stationary_point() {
        tch::manual_seed(0);
        let centres = Tensor::from_slice(&[3.0f64, 0.0, -3.0, 0.0, 0.0, 3.0]).view([3, 2]);
        let y: Vec<i64> = (0..150).map(|i| i % 3).collect();
        let x = centres.index_select(0, &Tensor::from_slice(&y)) + Tensor::randn([150, 2], (Kind::Double, Device::Cpu));
        let l2 = 1e-2;
        let fit = fit(&x, &y, 3, l2, 1000, 1e-8).unwrap();
        let pred = fit.predict(&x).unwrap();
        assert!(accuracy(&y, &pred) > 0.9, "accuracy {}", accuracy(&y, &pred));
        // Gradient at the fit, recomputed from scratch.
        let p = (x.matmul(&fit.weights) + &fit.bias).softmax(1, Kind::Double);
        let onehot = Tensor::zeros([150, 3], (Kind::Double, Device::Cpu)).scatter_value(1, &Tensor::from_slice(&y).unsqueeze(1), 1.0);
        let gz = (p - onehot) / 150.0;
        let gw = x.tr().matmul(&gz) + &fit.weights * l2;
        let gb = gz.sum_dim_intlist(0i64, false, Kind::Double);
        let worst = gw.abs().max().double_value(&[]).max(gb.abs().max().double_value(&[]));
        assert!(worst < 1e-6, "gradient {worst} after {} iterations", fit.iterations);
    }

    #[test]
    fn macro_f1_averages_over_classes_seen() {
        // class 0: tp 1, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: only predicted -> 0.
        let (truth, pred) = ([0, 0, 1, 1], [0, 1, 1, 2]);
        assert!((macro_f1(&truth, &pred) - (2.0 / 3.0 + 0.5 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(accuracy(&truth, &pred), 0.5);
        assert_eq!(macro_f1(&[1, 1], &[1, 1]), 1.0);
    }
}
