//! How the C allocator that libtorch's CPU tensors come from keeps freed memory.
//!
//! A training step allocates gigabytes of activations in the forward pass and
//! frees them in the backward pass. With glibc's defaults the freed top of the
//! heap goes back to the kernel after every step (trimmed past 2 × the dynamic
//! mmap threshold), and the next step faults every page in again and has it
//! zeroed: on a modernbert-base step of 16 × 128 tokens about a million page
//! faults, a tenth of the step's CPU time in the kernel. Here the trim
//! threshold is raised so that the heap keeps what one step freed for the
//! next, and the mmap threshold is fixed at glibc's largest (32 MiB on 64-bit),
//! where its dynamic rule ends up anyway. The price is a higher resident size
//! between steps, not a higher peak of live tensors.
//!
//! A user's own `MALLOC_TRIM_THRESHOLD_`, `MALLOC_MMAP_THRESHOLD_` or
//! `GLIBC_TUNABLES` setting is left as it is.

/// Keep freed heap memory for the next step (glibc only; elsewhere nothing).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_user = ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"]
            .iter()
            .any(|k| std::env::var_os(k).is_some());
        if set_by_user {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists. A value glibc refuses leaves its default.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
            libc::mallopt(libc::M_TOP_PAD, 1 << 30);
        }
    }
}
