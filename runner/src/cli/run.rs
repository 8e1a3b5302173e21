//! `runner run RECIPE` and `runner resume RUN_DIR`: resolve the recipe, train
//! (or continue training), and say where results went (and the command that
//! shows its report).

use std::path::Path;

use anyhow::Result;

use super::RecipeArgs;
use crate::error::user_msg;
use crate::recipe::{self, Override};
use crate::registry::Registry;
use crate::train::Start;

/// What `--overwrite` and `--resume` ask of the run folder.
pub fn start_of(overwrite: bool, resume: bool) -> Start {
    match (overwrite, resume) {
        (_, true) => Start::Resume,
        (true, false) => Start::Overwrite,
        (false, false) => Start::New,
    }
}

pub fn run(args: &RecipeArgs, start: Start) -> Result<()> {
    train(&args.recipe, &args.overrides, start)
}

/// Continues the run in `run_dir` with the recipe it saved; the folder is
/// the run's wherever it now lies.
pub fn resume(run_dir: &Path, overrides: Vec<Override>) -> Result<()> {
    let recipe = run_dir.join("recipe.yaml");
    // A checkpoint also has a recipe.yaml: a resume never writes into one.
    if let Some(why) = crate::recipe::files::foreign_run_dir(run_dir) {
        return Err(user_msg(why));
    }
    if !recipe.is_file() {
        return Err(user_msg(format!("{}: not a run folder (it has no recipe.yaml)", run_dir.display())));
    }
    let parent = run_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let set = |key: &str, value: String| Override {
        path: key.split('.').map(str::to_string).collect(),
        value: serde_yaml::Value::String(value),
    };
    let mut all = vec![set("run.output_dir", parent.display().to_string()), set("run.name", name)];
    all.extend(overrides);
    train(&recipe, &all, Start::Resume)
}

fn train(path: &Path, overrides: &[Override], start: Start) -> Result<()> {
    let raw = recipe::load(path, overrides)?;
    let registry = Registry::discover(&raw.plugins)?;
    let r = recipe::resolve(raw, path, &registry)?;
    let outcome = crate::train::run(&r, &registry, start)?;
    if !outcome.is_main {
        return Ok(()); // the first process of a data-parallel run reports for all
    }
    let s = &outcome.summary;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
    println!("run `{}` finished: {} steps in {:.1}s, {:.0} tokens/s", s.run, s.steps, s.elapsed_s, s.tokens_per_s);
    let finals: Vec<String> =
        s.finals.iter().map(|(k, v)| format!("{} {}", k.strip_prefix("final_").unwrap_or(k), fmt(*v))).collect();
    let finals = if finals.is_empty() { String::new() } else { format!("; final {}", finals.join(", ")) };
    println!("eval loss {} -> {}{finals}", fmt(s.initial_eval_loss), fmt(s.final_eval_loss));
    println!("results:    {}", outcome.run_dir.display());
    println!("metrics:    {}", outcome.run_dir.join("metrics.csv").display());
    println!("checkpoint: {}", s.checkpoint);
    println!("report:     runner report {}", outcome.run_dir.display());
    Ok(())
}
