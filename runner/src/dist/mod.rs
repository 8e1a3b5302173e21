//! Data-parallel training over processes: who this process is ([`World`]),
//! and the collectives the trainer needs ([`Collective`]), served by c10d's
//! process groups (Gloo on the CPU, NCCL on CUDA) or, for one process, by
//! [`Single`], which does nothing.
//!
//! - [`env`]: [`World::from_env`] (torchrun's or SLURM's variables) and
//!   [`threads_per_rank`];
//! - [`c10d`]: [`ProcessGroup`], the [`Collective`] over libtorch's c10d
//!   (`cpp/c10d.cpp`; NCCL from `librunner_nccl.so`, `cpp/nccl.cpp`);
//! - [`launch`]: `runner launch`, one worker process per local rank.

pub mod c10d;
pub mod env;
pub mod launch;

pub use c10d::{Backend, ProcessGroup};
pub use env::threads_per_rank;

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
