//! Learning-rate schedules: linear warmup, then linear or cosine decay to zero
//! at the last step, or constant (as transformers' `get_*_schedule_with_warmup`),
//! or warmup-stable-decay (ModernBERT's trapezoid: constant, then `1 - sqrt`
//! down to zero over the last `decay` steps).

use crate::recipe::raw::Schedule;

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub kind: Schedule,
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    /// Steps of the final decay (`warmup_stable_decay` only).
    pub decay: u64,
}

impl LrSchedule {
    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        if step < self.warmup {
            return self.peak * s / w.max(1.0);
        }
        let progress = ((s - w) / (t - w).max(1.0)).clamp(0.0, 1.0);
        self.peak
            * match self.kind {
                Schedule::Constant => 1.0,
                Schedule::Linear => 1.0 - progress,
                Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
                Schedule::WarmupStableDecay => {
                    let start = t - (self.decay as f64).min(t - w);
                    1.0 - ((s - start) / (t - start).max(1.0)).clamp(0.0, 1.0).sqrt()
                }
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = LrSchedule { kind: Schedule::Linear, peak: 1.0, warmup: 10, total: 110, decay: 0 };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12);
        let c = LrSchedule { kind: Schedule::Cosine, ..s };
        assert!((c.lr(60) - 0.5).abs() < 1e-12);
        assert!((c.lr(35) - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12);
        let k = LrSchedule { kind: Schedule::Constant, ..s };
        assert_eq!(k.lr(100), 1.0);
        // Trapezoid: flat until the last 20 steps, then 1 - sqrt down to zero.
        let wsd = LrSchedule { kind: Schedule::WarmupStableDecay, decay: 20, ..s };
        assert!((wsd.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!((wsd.lr(10), wsd.lr(60), wsd.lr(90)), (1.0, 1.0, 1.0));
        assert!((wsd.lr(95) - (1.0 - 0.25f64.sqrt())).abs() < 1e-12);
        assert!(wsd.lr(110).abs() < 1e-12);
    }
}
