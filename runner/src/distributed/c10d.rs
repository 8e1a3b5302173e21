//! libtorch's c10d process groups through the C shim `cpp/c10d.cpp`: a
//! TCPStore rendezvous at `MASTER_ADDR:MASTER_PORT`, then a Gloo (CPU) or
//! NCCL (CUDA) backend on it. [`ProcessGroup`] implements [`Collective`]; it
//! is destroyed when dropped. NCCL's constructor lives in
//! `librunner_nccl.so` (built into the build script's `OUT_DIR`, or copied
//! next to the binary), loaded only when NCCL is asked for, since it pulls in
//! libtorch_cuda. While a group forms c10's logging is held back
//! (`c10_log::quiet`), so a failed rendezvous is the runner's one message.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tch::Tensor;

use super::{Collective, World};

/// Which c10d backend carries the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Gloo over TCP: CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors, each rank on `cuda:LOCAL_RANK`.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `c10d::Store*` and the shim's group; opaque on this side.
#[repr(C)]
struct StoreHandle {
    _private: [u8; 0],
}
#[repr(C)]
struct GroupHandle {
    _private: [u8; 0],
}

/// An `at::Tensor*`: what `tch::Tensor::as_ptr` returns (torch-sys's
/// `C_tensor` is libtch's `typedef torch::Tensor *tensor`).
type AtTensor = *const c_void;

extern "C" {
    fn runner_c10d_string_free(s: *mut c_char);
    fn runner_c10d_store_new(
        host: *const c_char,
        port: u16,
        world_size: c_int,
        is_master: c_int,
        timeout_ms: i64,
        out: *mut *mut StoreHandle,
        err: *mut *mut c_char,
    ) -> c_int;
    fn runner_c10d_store_free(store: *mut StoreHandle);
    fn runner_c10d_gloo_new(
        store: *mut StoreHandle,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut *mut GroupHandle,
        err: *mut *mut c_char,
    ) -> c_int;
    fn runner_c10d_group_from_backend(
        store: *mut StoreHandle,
        backend: *mut c_void,
        timeout_ms: i64,
        device: c_int,
        out: *mut *mut GroupHandle,
        err: *mut *mut c_char,
    ) -> c_int;
    fn runner_c10d_group_free(group: *mut GroupHandle);
    fn runner_c10d_all_reduce_sum(group: *mut GroupHandle, tensors: *const AtTensor, n: usize, err: *mut *mut c_char) -> c_int;
    fn runner_c10d_broadcast(
        group: *mut GroupHandle,
        tensors: *const AtTensor,
        n: usize,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn runner_c10d_barrier(group: *mut GroupHandle, err: *mut *mut c_char) -> c_int;
}

/// `runner_nccl_backend_new` in librunner_nccl.so (cpp/c10d.h).
type NcclBackendNew = unsafe extern "C" fn(
    store: *mut StoreHandle,
    rank: c_int,
    size: c_int,
    timeout_ms: i64,
    device: c_int,
    backend: *mut *mut c_void,
    err: *mut *mut c_char,
) -> c_int;

/// Calls a shim entry point and turns its error code and message into an error.
fn check(call: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<(), String> {
    let mut err: *mut c_char = ptr::null_mut();
    if call(&mut err) == 0 {
        return Ok(());
    }
    if err.is_null() {
        return Err("unknown error (no message)".into());
    }
    // SAFETY: on failure the shim stores a NUL-terminated malloc'd string,
    // released here through the shim's own free.
    let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().trim().to_string();
    unsafe { runner_c10d_string_free(err) };
    Err(msg)
}

/// A c10d process group: this process's connection to the other ranks.
/// Every rank creates one with the same world and backend, and then makes
/// the same collective calls in the same order.
pub struct ProcessGroup {
    group: *mut GroupHandle,
    store: *mut StoreHandle,
    rank: usize,
    world_size: usize,
    backend: Backend,
}

// SAFETY: c10d backends may be called from any thread (they run their own
// worker threads). ProcessGroup is not Sync, so calls never overlap.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    /// Meets the other ranks at `world.master_addr:world.master_port` (rank 0
    /// serves the store there) and connects them with `backend`. Waits at
    /// most `timeout` for the others to arrive; collectives fail after
    /// `timeout` too. NCCL takes this rank's GPU, `cuda:world.local_rank`.
    pub fn new(world: &World, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        let context = || {
            format!(
                "rank {} of {} could not form the {backend} process group at {}:{} (timeout {}s)",
                world.rank,
                world.world_size,
                world.master_addr,
                world.master_port,
                timeout.as_secs_f64()
            )
        };
        if world.world_size == 0 || world.rank >= world.world_size {
            bail!("rank {} is not below the world size {}", world.rank, world.world_size);
        }
        let size = c_int::try_from(world.world_size).context("world size too large")?;
        let rank = world.rank as c_int;
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        let host = CString::new(world.master_addr.as_str()).map_err(|_| anyhow!("MASTER_ADDR contains a NUL byte"))?;
        // c10d would retry a name that does not resolve until the timeout.
        if let Err(e) = (world.master_addr.as_str(), world.master_port).to_socket_addrs() {
            return Err(crate::error::user_msg(format!(
                "MASTER_ADDR {} does not resolve to an address ({e}); set it to the first node's address",
                world.master_addr
            )))
            .with_context(context);
        }
        // c10d logs every failed attempt (to stderr, before the runner's one message).
        let _quiet = crate::c10_log::quiet();
        // Load NCCL's library before anything connects, so that a missing
        // library fails fast on every rank.
        let nccl_new = match backend {
            Backend::Nccl => Some(nccl_backend_new().with_context(context)?),
            Backend::Gloo => None,
        };

        let mut store: *mut StoreHandle = ptr::null_mut();
        // SAFETY: the arguments are valid for the call; `store` is written on success.
        check(|err| unsafe {
            runner_c10d_store_new(host.as_ptr(), world.master_port, size, c_int::from(world.rank == 0), timeout_ms, &mut store, err)
        })
        .map_err(|e| anyhow!("TCPStore: {e}"))
        .with_context(context)?;

        let mut group: *mut GroupHandle = ptr::null_mut();
        let made = match nccl_new {
            None => check(|err| unsafe { runner_c10d_gloo_new(store, rank, size, timeout_ms, &mut group, err) }),
            Some(nccl_new) => {
                let device = world.local_rank as c_int;
                let mut raw: *mut c_void = ptr::null_mut();
                // SAFETY: `nccl_new` has the declared signature (cpp/c10d.h); on
                // success `raw` is a c10d::Backend* whose reference the next call takes over.
                check(|err| unsafe { nccl_new(store, rank, size, timeout_ms, device, &mut raw, err) }).and_then(|()| {
                    check(|err| unsafe { runner_c10d_group_from_backend(store, raw, timeout_ms, device, &mut group, err) })
                })
            }
        };
        if let Err(e) = made {
            // SAFETY: the store was created above and nothing else holds it.
            unsafe { runner_c10d_store_free(store) };
            return Err(anyhow!("{e}")).with_context(context);
        }
        Ok(ProcessGroup { group, store, rank: world.rank, world_size: world.world_size, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn call(&self, what: &str, f: impl FnOnce(*mut GroupHandle, *mut *mut c_char) -> c_int) -> Result<()> {
        check(|err| f(self.group, err)).map_err(|e| {
            anyhow!("{what} failed on rank {} of {} ({}): {e}", self.rank, self.world_size, self.backend)
        })
    }
}

/// The tensors as `at::Tensor*`s for the shim.
fn pointers(tensors: &[Tensor]) -> Vec<AtTensor> {
    tensors.iter().map(|t| t.as_ptr().cast::<c_void>()).collect()
}

impl Collective for ProcessGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()> {
        let ptrs = pointers(tensors);
        // SAFETY: each pointer is a live at::Tensor borrowed for the call.
        self.call("all_reduce_sum", |g, err| unsafe { runner_c10d_all_reduce_sum(g, ptrs.as_ptr(), ptrs.len(), err) })
    }

    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.world_size {
            bail!("broadcast from rank {root}, but the world has {} ranks", self.world_size);
        }
        let ptrs = pointers(tensors);
        // SAFETY: as in all_reduce_sum.
        self.call("broadcast", |g, err| unsafe { runner_c10d_broadcast(g, ptrs.as_ptr(), ptrs.len(), root as c_int, err) })
    }

    fn barrier(&self) -> Result<()> {
        // SAFETY: the group is live.
        self.call("barrier", |g, err| unsafe { runner_c10d_barrier(g, err) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: both were created in `new` and are released once; the
        // group holds its own reference to the store.
        unsafe {
            runner_c10d_group_free(self.group);
            runner_c10d_store_free(self.store);
        }
    }
}

/// The file name of the NCCL library, next to the runner binary.
pub const NCCL_LIBRARY: &str = "librunner_nccl.so";

/// Loads `librunner_nccl.so` (and with it libtorch_cuda) once, and returns its
/// constructor. Looked for next to the executable (where a copied installation
/// keeps it), then where the build script wrote it (its `OUT_DIR`).
fn nccl_backend_new() -> Result<NcclBackendNew> {
    static LOADED: OnceLock<Result<NcclBackendNew, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            crate::device::load_cuda();
            let exe = std::env::current_exe().map_err(|e| format!("where is this executable? {e}"))?;
            let mut candidates: Vec<PathBuf> = exe.parent().map(|d| d.join(NCCL_LIBRARY)).into_iter().collect();
            candidates.push(PathBuf::from(env!("RUNNER_NCCL_LIBRARY")));
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                return Err(format!(
                    "the NCCL backend needs {NCCL_LIBRARY}, which was not found next to the runner ({}); it is built only \
                     against a CUDA torch wheel (see the build warnings)",
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ));
            };
            // SAFETY: the library only defines runner_nccl_backend_new and
            // depends on the libtorch already loaded; it is never unloaded.
            let lib = unsafe { libloading::Library::new(path) }.map_err(|e| format!("{}: {e}", path.display()))?;
            // SAFETY: the symbol has the signature NcclBackendNew (cpp/c10d.h).
            let f = unsafe { lib.get::<NcclBackendNew>(b"runner_nccl_backend_new\0") }
                .map(|s| *s)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            std::mem::forget(lib);
            Ok(f)
        })
        .clone()
        .map_err(|e| anyhow!(e))
}
