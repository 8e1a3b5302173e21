//! Which precision a run computes in, on which device.
//!
//! `precision: auto` picks bf16 on a GPU that has it (compute capability 8.0
//! or newer) and on a CPU with bf16 instructions (AVX512-BF16 or AMX-BF16),
//! float32 elsewhere; `run` and `validate` warn when the CPU emulates the
//! precision asked for. The names and the CPU features are in
//! `runner_recipe::precision`; what needs libtorch (the dtype, the device) is here.

use tch::Device;

pub use runner_recipe::precision::Precision;
use runner_recipe::precision::{cpu_flags, cpu_native};

/// The dtype matmuls run in.
pub trait ComputeKind {
    /// `Auto` is resolved before anything computes (`Recipe::precision`); on
    /// its own it means float32.
    fn compute_kind(self) -> tch::Kind;
}

impl ComputeKind for Precision {
    fn compute_kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 | Precision::Auto => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::Fp16 => tch::Kind::Half,
        }
    }
}

/// Whether CUDA device `i` computes in bf16 natively (compute capability >= 8.0).
fn cuda_bf16(i: usize) -> bool {
    crate::device::cuda_capability(i).is_some_and(|(major, _)| major >= 8)
}

/// The precision a run uses: `precision` itself, or what `auto` picks, with
/// the reason for the choice.
pub fn choose(precision: Precision, device: Device) -> (Precision, String) {
    if precision != Precision::Auto {
        return (precision, String::new());
    }
    match device {
        Device::Cuda(i) if cuda_bf16(i) => (Precision::Bf16, format!("cuda:{i} computes in bf16 natively")),
        Device::Cuda(i) => (Precision::Fp32, format!("cuda:{i} has no native bf16 (compute capability below 8.0)")),
        _ if cpu_native(Precision::Bf16, &cpu_flags()) => (Precision::Bf16, "this CPU has bf16 instructions".into()),
        _ => (Precision::Fp32, "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16)".into()),
    }
}

/// A warning when `precision` is emulated on this CPU, naming what is missing.
pub fn cpu_warning(precision: Precision, device: Device) -> Option<String> {
    if device != Device::Cpu {
        return None;
    }
    runner_recipe::precision::cpu_warning(precision, &cpu_flags())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_on_the_cpu_is_bf16_exactly_when_the_cpu_has_it() {
        let (chosen, why) = choose(Precision::Auto, Device::Cpu);
        let native = cpu_native(Precision::Bf16, &cpu_flags());
        assert_eq!(chosen, if native { Precision::Bf16 } else { Precision::Fp32 }, "{why}");
        assert_eq!(cpu_warning(Precision::Bf16, Device::Cpu).is_some(), !native);
        assert_eq!(choose(Precision::Fp16, Device::Cpu).0, Precision::Fp16);
    }
}
