//! Devices and threads. libtorch's CUDA backend lives in `libtorch_cuda.so`,
//! which the linker drops as unused (`--as-needed`); it is loaded here, once,
//! only when a recipe asks for CUDA, so CPU runs never pay for it. Besides
//! `registry.rs` (plugins), this is the one file that opens libraries at run
//! time: libtorch's CUDA backend and the CUDA runtime's device attributes.

use std::sync::OnceLock;

/// Loads libtorch's CUDA backend so that `tch::Cuda` sees the GPUs. Harmless
/// when the library or the GPUs are absent: CUDA then simply stays unavailable.
pub fn load_cuda() {
    static LOADED: OnceLock<bool> = OnceLock::new();
    LOADED.get_or_init(|| {
        // SAFETY: libtorch_cuda.so only registers CUDA kernels and allocators
        // with the libtorch already loaded; the library is never unloaded.
        match unsafe { libloading::Library::new("libtorch_cuda.so") } {
            Ok(lib) => {
                std::mem::forget(lib);
                true
            }
            Err(e) => {
                tracing::debug!("libtorch_cuda.so not loaded: {e}");
                false
            }
        }
    });
}

/// The compute capability `(major, minor)` of CUDA device `i`, from the CUDA
/// runtime libtorch ships with; `None` when there is no such device.
pub fn cuda_capability(i: usize) -> Option<(i32, i32)> {
    load_cuda();
    if !tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize {
        return None;
    }
    type GetAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    // cudaDevAttrComputeCapabilityMajor / Minor
    const MAJOR: i32 = 75;
    const MINOR: i32 = 76;
    // SAFETY: libcudart is already loaded by libtorch_cuda; cudaDeviceGetAttribute
    // has this C signature and writes one int.
    unsafe {
        let lib = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
            .iter()
            .find_map(|name| libloading::Library::new(name).ok())?;
        let get: libloading::Symbol<GetAttribute> = lib.get(b"cudaDeviceGetAttribute\0").ok()?;
        let (mut major, mut minor) = (0, 0);
        if get(&mut major, MAJOR, i as i32) != 0 || get(&mut minor, MINOR, i as i32) != 0 {
            return None;
        }
        Some((major, minor))
    }
}

/// Sets libtorch's intra-op threads.
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads as i32);
}
