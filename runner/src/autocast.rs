//! `precision: bf16`: libtorch's autocast around every forward pass, for any
//! model plugin. Matmuls, linear layers and attention run in bf16 on bf16
//! copies of the float32 master weights; LayerNorm inputs, losses and the
//! weights themselves stay float32, as under `torch.autocast`. tch binds only
//! CUDA autocast, so a small C++ shim (`cpp/autocast.cpp`, built by
//! `build.rs` against the libtorch headers) switches it for the CPU too.

use std::os::raw::c_int;

use tch::{Device, Kind};

unsafe extern "C" {
    fn runner_autocast_enter(device: c_int, dtype: c_int, was_enabled: *mut c_int, was_dtype: *mut c_int);
    fn runner_autocast_exit(device: c_int, was_enabled: c_int, was_dtype: c_int);
    fn runner_autocast_is_enabled(device: c_int) -> c_int;
}

/// Autocast to a dtype on one device for the current thread, until dropped.
#[must_use = "autocast ends when the guard is dropped"]
pub struct Autocast {
    device: c_int,
    was_enabled: c_int,
    was_dtype: c_int,
}

/// c10::ScalarType numbers of the dtypes autocast can compute in.
fn scalar_type(kind: Kind) -> c_int {
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        other => unreachable!("autocast to {other:?} is never asked for"),
    }
}

fn device_code(device: Device) -> c_int {
    if device.is_cuda() { 1 } else { 0 }
}

impl Autocast {
    /// Starts autocast to `kind` on `device`; `None` for float32 (nothing to do).
    pub fn enter(device: Device, kind: Kind) -> Option<Autocast> {
        if kind == Kind::Float {
            return None;
        }
        let device = device_code(device);
        let (mut was_enabled, mut was_dtype) = (0, 0);
        // SAFETY: plain calls into libtorch with valid out-pointers.
        unsafe { runner_autocast_enter(device, scalar_type(kind), &mut was_enabled, &mut was_dtype) };
        Some(Autocast { device, was_enabled, was_dtype })
    }

    /// Whether autocast is on for `device` in this thread.
    pub fn is_enabled(device: Device) -> bool {
        // SAFETY: a read of libtorch's thread-local state.
        unsafe { runner_autocast_is_enabled(device_code(device)) != 0 }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: restores the state saved by `enter` on this thread.
        unsafe { runner_autocast_exit(self.device, self.was_enabled, self.was_dtype) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn bf16_matmuls_inside_float32_outside() {
        let (a, b) = (Tensor::randn([4, 8], (Kind::Float, Device::Cpu)), Tensor::randn([8, 3], (Kind::Float, Device::Cpu)));
        assert!(Autocast::enter(Device::Cpu, Kind::Float).is_none());
        {
            let _bf16 = Autocast::enter(Device::Cpu, Kind::BFloat16);
            assert!(Autocast::is_enabled(Device::Cpu));
            assert_eq!(a.matmul(&b).kind(), Kind::BFloat16);
            assert_eq!(a.layer_norm([8], None::<Tensor>, None::<Tensor>, 1e-5, false).kind(), Kind::Float);
        }
        assert!(!Autocast::is_enabled(Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
    }
}
