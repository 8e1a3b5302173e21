//! `runner launch --nproc-per-node N RECIPE`: runs `runner run RECIPE` as N
//! data-parallel workers on this machine (one of `--nnodes` machines), the
//! way torchrun does; see `distributed/launch.rs`.

use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};

use super::LaunchArgs;
use crate::distributed::launch::{launch as start, Launch};

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
