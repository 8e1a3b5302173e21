//! `runner run RECIPE`: resolve the recipe, train, and say where results went
//! (and the command that shows its report).

use anyhow::Result;

use super::RecipeArgs;
use crate::recipe;
use crate::registry::Registry;

pub fn run(args: &RecipeArgs, overwrite: bool) -> Result<()> {
    let raw = recipe::load(&args.recipe, &args.overrides)?;
    let registry = Registry::discover(&raw.plugins)?;
    let r = recipe::resolve(raw, &args.recipe, &registry)?;
    let outcome = crate::train::run(&r, &registry, overwrite)?;
    if !outcome.is_main {
        return Ok(()); // the first process of a data-parallel run reports for all
    }
    let s = &outcome.summary;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!("run `{}` finished: {} steps in {:.1}s, {:.0} tokens/s", s.run, s.steps, s.elapsed_s, s.tokens_per_s);
    println!(
        "eval loss {} -> {} (perplexity {}), masked-token accuracy {}",
        fmt(s.initial_eval_loss),
        fmt(s.final_eval_loss),
        fmt(s.final_perplexity),
        fmt(s.final_accuracy)
    );
    println!("results:    {}", outcome.run_dir.display());
    println!("metrics:    {}", outcome.run_dir.join("metrics.csv").display());
    println!("checkpoint: {}", s.checkpoint);
    println!("report:     runner report {}", outcome.run_dir.display());
    Ok(())
}
