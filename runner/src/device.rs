//! Devices and threads. libtorch's CUDA backend lives in `libtorch_cuda.so`,
//! which the linker drops as unused (`--as-needed`); it is loaded here, once,
//! only when a recipe asks for CUDA, so CPU runs never pay for it.

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

/// Sets libtorch's intra-op threads.
pub fn set_threads(threads: usize) {
    tch::set_num_threads(threads as i32);
}
