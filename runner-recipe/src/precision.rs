//! `training.precision`: its names, and which CPU features compute each one
//! natively. Without those instructions libtorch emulates bf16 (and fp16
//! without AVX512-FP16 / AMX-FP16) and runs many times slower than float32.
//! The runner's `precision.rs` adds what needs libtorch: the dtype, and what
//! `auto` picks on a given device.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Numeric precision of the forward and backward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Fp32,
    /// bfloat16 matmuls with float32 master weights, LayerNorm and loss (autocast).
    Bf16,
    /// float16 matmuls (autocast) with float32 master weights and dynamic loss scaling.
    Fp16,
    /// bf16 where the device computes it natively, else fp32 (the runner's `precision::choose`).
    Auto,
}

/// The CPU's feature flags (`/proc/cpuinfo`); empty where that file is absent.
pub fn cpu_flags() -> HashSet<String> {
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

/// Whether a CPU with these `flags` runs `precision` natively.
pub fn cpu_native(precision: Precision, flags: &HashSet<String>) -> bool {
    let needed = cpu_features(precision);
    needed.is_empty() || needed.iter().any(|f| flags.contains(*f))
}

/// A warning when `precision` is emulated on a CPU with these `flags`, naming
/// what is missing.
pub fn cpu_warning(precision: Precision, flags: &HashSet<String>) -> Option<String> {
    if cpu_native(precision, flags) {
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
        assert!(cpu_warning(Precision::Bf16, &avx2).is_some_and(|w| w.contains("AVX512-BF16")));
        assert!(cpu_warning(Precision::Fp32, &avx2).is_none());
    }
}
