//! Data-parallel training over processes: who this process is ([`World`]),
//! and the collectives the trainer needs ([`Collective`]), served by c10d's
//! process groups (Gloo on the CPU, NCCL on CUDA) or, for one process, by
//! [`Single`], which does nothing.
//!
//! - [`env`]: [`World::from_env`] (torchrun's or SLURM's variables) and
//!   [`threads_per_rank`];
//! - [`c10d`]: [`ProcessGroup`], the [`Collective`] over libtorch's c10d
//!   (`cpp/c10d.cpp`; NCCL from `librunner_nccl.so`, `cpp/nccl.cpp`);
//! - [`launch`]: `runner launch`, one worker process per local rank;
//! - [`agree`]: at start-up, every rank's recipe, corpus and code compared.

pub mod agree;
pub mod c10d;
pub mod env;
pub mod launch;

pub use c10d::{Backend, ProcessGroup};
pub use env::threads_per_rank;

pub mod buckets;

use anyhow::Result;
use tch::Tensor;

/// This process's place in the job, as torchrun or SLURM describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_world_size: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl World {
    /// One process, alone.
    pub fn single() -> Self {
        World { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, master_addr: "127.0.0.1".into(), master_port: 0 }
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// The collectives data-parallel training uses. Every call is blocking and
/// collective: every rank makes the same calls, with tensors of the same
/// shapes and kinds, in the same order.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Sums each tensor over the ranks, in place.
    fn all_reduce_sum(&self, tensors: &[Tensor]) -> Result<()>;
    /// Overwrites each tensor with rank `root`'s.
    fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
}

/// One process: every collective is the identity.
#[derive(Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _: &[Tensor]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &[Tensor], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Joins the job this process belongs to: torchrun's or SLURM's variables
/// name it (`runner launch` sets torchrun's); without them, or with a world
/// of one, the process trains alone.
pub fn join(recipe: &crate::recipe::Recipe) -> Result<(World, Box<dyn Collective>)> {
    let d = &recipe.raw.training.distributed;
    // One launched process needs no group, unless the recipe names its backend:
    // then it gets a group of one, so that the backend really loads and runs
    // its all-reduces (bench/gpu.sh checks NCCL on one GPU this way).
    let named = d.backend != crate::recipe::raw::DistBackend::Auto;
    let world = match World::from_env().map_err(crate::error::user)? {
        Some(w) if w.world_size > 1 || named => w,
        _ => return Ok((World::single(), Box::new(Single))),
    };
    let backend = match d.backend {
        crate::recipe::raw::DistBackend::Gloo => Backend::Gloo,
        crate::recipe::raw::DistBackend::Nccl => Backend::Nccl,
        crate::recipe::raw::DistBackend::Auto if recipe.device.is_cuda() => Backend::Nccl,
        crate::recipe::raw::DistBackend::Auto => Backend::Gloo,
    };
    if backend == Backend::Nccl {
        crate::device::load_cuda();
    }
    let timeout = std::time::Duration::from_secs_f64(d.timeout_s);
    let group = ProcessGroup::new(&world, backend, timeout)?;
    if world.is_main() {
        tracing::info!("data parallel: {} processes over {backend}", world.world_size);
    }
    Ok((world, Box::new(group)))
}

/// The device this process trains on: on CUDA each process takes
/// `cuda:LOCAL_RANK` (a recipe's `cuda:N` is kept for a single process). With
/// more processes on a machine than GPUs, they share them in turn
/// (`LOCAL_RANK mod GPUs`): Gloo allows that, NCCL refuses two ranks on one GPU.
pub fn device_of(device: tch::Device, world: &World) -> tch::Device {
    match device {
        tch::Device::Cuda(_) if world.world_size > 1 => {
            let gpus = tch::Cuda::device_count().max(1) as usize;
            shared_gpu(world.local_rank, gpus)
        }
        other => other,
    }
}

/// `cuda:(local_rank mod gpus)`.
fn shared_gpu(local_rank: usize, gpus: usize) -> tch::Device {
    tch::Device::Cuda(local_rank % gpus.max(1))
}

/// Intra-op threads per process: the recipe's threads split between the
/// processes of this machine, at least one each.
pub fn threads_of(threads: usize, world: &World) -> usize {
    threads_per_rank(threads, world.local_world_size)
}

/// Runs `f` on the first process, then on the others once it has finished:
/// for work whose result the first one leaves on disk (downloads, the token
/// cache) so the others find it there instead of redoing it.
pub fn first_then_others<T>(c: &dyn Collective, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if c.world_size() == 1 {
        return f();
    }
    if c.rank() == 0 {
        let out = f();
        c.barrier()?;
        out
    } else {
        c.barrier()?;
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_beyond_the_gpus_share_them_in_turn() {
        let got: Vec<tch::Device> = (0..4).map(|r| shared_gpu(r, 2)).collect();
        assert_eq!(got, [tch::Device::Cuda(0), tch::Device::Cuda(1), tch::Device::Cuda(0), tch::Device::Cuda(1)]);
        assert_eq!(shared_gpu(1, 1), tch::Device::Cuda(0));
    }
}
