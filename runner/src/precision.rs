//! Which precision a run computes in, and whether the machine does it natively.
//!
//! `precision: auto` picks bf16 on a GPU that has it (compute capability 8.0
//! or newer) and on a CPU with bf16 instructions (AVX512-BF16 or AMX-BF16),
//! float32 elsewhere. Without those instructions libtorch emulates bf16 (and
//! fp16 without AVX512-FP16 / AMX-FP16) and runs many times slower than
//! float32, so `run` and `validate` warn, naming the missing feature.

use std::collections::HashSet;

use tch::Device;

use crate::recipe::raw::Precision;

// Here rather than in `recipe/raw.rs`, which stays free of libtorch (the
// recipe fuzz target compiles it without tch).
impl Precision {
    /// The dtype matmuls run in. `Auto` is resolved before anything computes
    /// (`Recipe::precision`); on its own it means float32.
    pub fn compute_kind(self) -> tch::Kind {
        match self {
            Precision::Fp32 | Precision::Auto => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::Fp16 => tch::Kind::Half,
        }
    }
}

/// The CPU's feature flags (`/proc/cpuinfo`); empty where that file is absent.
fn cpu_flags() -> HashSet<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The CPU features that run `precision` natively, as /proc/cpuinfo names them.
fn cpu_features(precision: Precision) -> &'static [&'static str] {
    match precision {
        Precision::Bf16 => &["avx512_bf16", "amx_bf16"],
        Precision::Fp16 => &["avx512_fp16", "amx_fp16"],
        Precision::Fp32 | Precision::Auto => &[],
    }
}

/// Whether this CPU runs `precision` natively.
fn cpu_native(precision: Precision, flags: &HashSet<String>) -> bool {
    let needed = cpu_features(precision);
    needed.is_empty() || needed.iter().any(|f| flags.contains(*f))
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
    if device != Device::Cpu || cpu_native(precision, &cpu_flags()) {
        return None;
    }
    let (name, features) = match precision {
        Precision::Bf16 => ("bf16", "AVX512-BF16 or AMX-BF16"),
        Precision::Fp16 => ("fp16", "AVX512-FP16 or AMX-FP16"),
        Precision::Fp32 | Precision::Auto => return None,
    };
    Some(format!(
        "training.precision: {name} on this CPU is emulated (it lacks {features}) and runs many times slower than fp32; \
         use fp32 or auto here"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_precision_follows_the_cpu_flags() {
        let flags = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let avx2 = flags(&["avx2", "fma"]);
        assert!(cpu_native(Precision::Fp32, &avx2));
        assert!(!cpu_native(Precision::Bf16, &avx2));
        assert!(!cpu_native(Precision::Fp16, &avx2));
        assert!(cpu_native(Precision::Bf16, &flags(&["avx2", "avx512_bf16"])));
        assert!(cpu_native(Precision::Bf16, &flags(&["amx_bf16"])));
        assert!(cpu_native(Precision::Fp16, &flags(&["avx512_fp16"])));
    }

    #[test]
    fn auto_on_the_cpu_is_bf16_exactly_when_the_cpu_has_it() {
        let (chosen, why) = choose(Precision::Auto, Device::Cpu);
        let native = cpu_native(Precision::Bf16, &cpu_flags());
        assert_eq!(chosen, if native { Precision::Bf16 } else { Precision::Fp32 }, "{why}");
        assert_eq!(cpu_warning(Precision::Bf16, Device::Cpu).is_some(), !native);
        assert_eq!(choose(Precision::Fp16, Device::Cpu).0, Precision::Fp16);
    }
}
