//! `runner sweep TEMPLATE`: render a recipe template over a grid, check every
//! run, run those not finished yet, and say where results went.

use anyhow::Result;

use super::SweepArgs;
use crate::registry::Registry;
use crate::sweep::{self, Done, State};

pub fn sweep(args: &SweepArgs) -> Result<()> {
    // Shipped plugins and RUNNER_PLUGIN_PATH; a template's own `plugins:` entries are not read.
    let registry = Registry::discover(&[])?;
    let req = sweep::Request {
        template: args.template.clone(),
        grid: args.grid.iter().map(|g| g.0.clone()).collect(),
        overrides: args.overrides.clone(),
        name: args.name.clone(),
    };
    let plan = sweep::plan(&req, &registry)?;
    let todo = plan.runs.iter().filter(|r| r.state != State::Finished).count();
    println!(
        "sweep `{}`: {} run(s) from {}, {} to do, {} already finished",
        plan.name,
        plan.runs.len(),
        plan.template.display(),
        todo,
        plan.runs.len() - todo
    );
    if args.dry_run {
        for r in &plan.runs {
            println!("  {:<40} {:?}  {}", r.point.name, r.state, r.recipe.run_dir.display());
        }
        println!("all {} recipe(s) are valid (dry run: nothing was run)", plan.runs.len());
        return Ok(());
    }
    let n = plan.runs.len();
    sweep::execute(&plan, &registry, args.overwrite, |i, run, done| match done {
        Done::Skipped(dir) => println!("[{}/{n}] {}: already finished, skipped ({})", i + 1, run.point.name, dir.display()),
        Done::Ran(o) => println!(
            "[{}/{n}] {}: eval loss {} -> {} in {:.1}s",
            i + 1,
            run.point.name,
            o.summary.initial_eval_loss.map_or("-".into(), |v| format!("{v:.4}")),
            o.summary.final_eval_loss.map_or("-".into(), |v| format!("{v:.4}")),
            o.summary.elapsed_s
        ),
    })?;
    println!("results: {}", plan.dir.display());
    println!("report:  runner report {}", plan.dir.display());
    Ok(())
}
