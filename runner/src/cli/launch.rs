//! `runner launch --nproc-per-node N RECIPE`: runs `runner run RECIPE` as N
//! data-parallel workers on this machine (one of `--nnodes` machines), the
//! way torchrun does; see `distributed/launch.rs`. The recipe is checked once
//! here, before any worker starts (one message, exit 2), and N is held to the
//! machine's CPU cores (CPU) or GPUs (CUDA) unless `--oversubscribe`.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use super::LaunchArgs;
use crate::distributed::launch::{launch as start, Launch};
use crate::error::user_msg;
use crate::recipe::{self, Override};
use crate::registry::Registry;

/// Seconds stopped workers get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

pub fn launch(args: &LaunchArgs, verbose: bool) -> Result<()> {
    let plan = Launch {
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr.clone(),
        master_port: args.master_port,
        grace: GRACE,
    };
    plan.check()?;
    let device = checked_device(args)?;
    check_count(args.nproc_per_node, device, args.oversubscribe)?;
    let mut worker: Vec<OsString> = Vec::new();
    if verbose {
        worker.push("--verbose".into());
    }
    worker.push("run".into());
    worker.push(args.recipe.clone().into_os_string());
    for o in &args.overrides {
        worker.push("--set".into());
        worker.push(o.into());
    }
    if args.overwrite {
        worker.push("--overwrite".into());
    }
    if args.resume {
        worker.push("--resume".into());
    }
    let program = std::env::current_exe().context("finding the runner executable to start workers")?;
    let outcome = start(&plan, &program, &worker)?;
    let code = outcome.exit_code();
    if code == 0 {
        return Ok(());
    }
    // The exit code is the failing worker's own (or 128 + the signal), which
    // an error returned from here could not carry: report and exit.
    let _ = std::io::stdout().flush();
    eprintln!("error: {}", outcome.message());
    std::process::exit(i32::from(code));
}

/// Checks the recipe (with the overrides) as every worker would, before any
/// starts; returns the device it trains on.
fn checked_device(args: &LaunchArgs) -> Result<tch::Device> {
    let overrides: Vec<Override> = args.overrides.iter().map(|o| o.parse()).collect::<Result<_>>()?;
    let raw = recipe::load(&args.recipe, &overrides)?;
    let registry = Registry::discover(&raw.plugins)?;
    Ok(recipe::resolve(raw, &args.recipe, &registry)?.device)
}

/// Workers on this machine: at most one per GPU on CUDA (each takes
/// `cuda:LOCAL_RANK`) and one per CPU core on the CPU, unless oversubscribed
/// (on CUDA more workers then share the GPUs in turn, which Gloo allows and
/// NCCL refuses).
fn check_count(n: usize, device: tch::Device, oversubscribe: bool) -> Result<()> {
    let (have, what) = if device.is_cuda() {
        (usize::try_from(tch::Cuda::device_count()).unwrap_or(0), "GPU(s)")
    } else {
        (std::thread::available_parallelism().map_or(1, |n| n.get()), "CPU core(s) available to it")
    };
    if n > have && !oversubscribe {
        let how = if device.is_cuda() {
            "each worker takes a GPU of its own (cuda:LOCAL_RANK); pass --oversubscribe to share them (Gloo only)"
        } else {
            "pass --oversubscribe to start them anyway"
        };
        return Err(user_msg(format!("--nproc-per-node {n}: this machine has {have} {what}; {how}")));
    }
    Ok(())
}
