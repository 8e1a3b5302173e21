//! Sweeps: a recipe template rendered over a grid. [`plan`] renders and resolves
//! every grid point before anything runs and decides, from what is on disk, which
//! runs are finished (same resolved `recipe.yaml` and a readable `summary.json`);
//! [`execute`] runs the rest into `<output_dir>/<sweep>/<run>/`.
//!
//! A grid point reaches a recipe twice: as variables of the template (nested,
//! `masking.rate` is `{{ masking.rate }}`, plus `{{ sweep.name }}` and
//! `{{ sweep.run }}`), and as `--set`-style overrides applied to the rendered
//! recipe, so a swept key takes its value even where the template does not use it.

pub mod grid;
pub mod template;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_yaml::Value;

use crate::error::user_msg;
use crate::recipe::{self, overrides, Override, RawRecipe, Recipe};
use crate::registry::Registry;
use crate::train::{RunOutcome, Start};
use grid::{Axis, Origin, Point};
use template::{show_line, Template};

/// What `runner sweep` was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    pub template: PathBuf,
    /// `--grid` axes; they replace header axes of the same key.
    pub grid: Vec<Axis>,
    /// `--set` overrides applied to every run (before the grid point's values).
    pub overrides: Vec<Override>,
    /// Sweep name; defaults to the header's `name:`, then to the template's file stem.
    pub name: Option<String>,
}

/// Whether a run still has to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Nothing written yet.
    New,
    /// Started but without a readable `summary.json`: continued from its
    /// newest checkpoint, or redone from scratch when it has none.
    Unfinished,
    /// Finished with this same resolved recipe: skipped.
    Finished,
    /// Finished, but with a different recipe: redone only with `--overwrite`.
    Changed,
}

/// One run of a sweep.
#[derive(Debug)]
pub struct PlannedRun {
    pub point: Point,
    pub recipe: Recipe,
    pub state: State,
}

/// Every run of a sweep, resolved, with its state on disk.
#[derive(Debug)]
pub struct Plan {
    pub name: String,
    pub template: PathBuf,
    /// `<output_dir>/<sweep>`: where the runs go and `runner report` reads.
    pub dir: PathBuf,
    pub axes: Vec<Axis>,
    pub runs: Vec<PlannedRun>,
}

/// Renders and resolves every grid point; nothing is run or written.
pub fn plan(req: &Request, registry: &Registry) -> Result<Plan> {
    let t = Template::load(&req.template)?;
    let axes = grid::merge(t.header.grid.clone(), req.grid.clone());
    let name = match req.name.clone().or_else(|| t.header.name.clone()) {
        Some(n) => n,
        None => stem(&t.path),
    };
    if name.is_empty() || grid::sanitise(&name) != name || name == "." || name == ".." {
        return Err(user_msg(format!(
            "{}: sweep name `{name}` must be letters, digits, '-', '_' or '.' (give --name)",
            t.path.display()
        )));
    }
    let most = runner_recipe::check::NAME_MAX;
    if name.len() > most {
        return Err(user_msg(format!(
            "{}: sweep name is {} characters long; the file system takes at most {most} (give --name)",
            t.path.display(),
            name.len()
        )));
    }
    let points = grid::expand(&axes).map_err(|e| user_msg(format!("{}: {e:#}", t.path.display())))?;
    let mut runs = Vec::with_capacity(points.len());
    for point in points {
        let recipe = expand_one(&t, &axes, &point, &name, &req.overrides, registry)?;
        let state = state_of(&recipe)?;
        runs.push(PlannedRun { point, recipe, state });
    }
    let dir = runs
        .first()
        .and_then(|r| r.recipe.run_dir.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("results").join(&name));
    Ok(Plan { name, template: t.path, dir, axes, runs })
}

/// `mask-rate.yaml.j2` -> `mask-rate`: the file name without `.j2`/`.jinja`/`.yaml`/`.yml`.
fn stem(path: &Path) -> String {
    let mut s = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    for ext in [".j2", ".jinja", ".jinja2", ".yaml", ".yml"] {
        if let Some(x) = s.strip_suffix(ext) {
            s = x.to_string();
        }
    }
    s
}

/// Renders one grid point, applies the overrides and the sweep's run name and
/// directory, and resolves the recipe.
fn expand_one(
    t: &Template,
    axes: &[Axis],
    point: &Point,
    sweep: &str,
    sets: &[Override],
    registry: &Registry,
) -> Result<Recipe> {
    let shown = t.path.display();
    let mut vars = point.tree().map_err(|e| user_msg(format!("{shown}: {e:#}")))?;
    if let Value::Mapping(m) = &mut vars {
        let mut s = serde_yaml::Mapping::new();
        s.insert("name".into(), sweep.into());
        s.insert("run".into(), point.name.clone().into());
        m.insert("sweep".into(), Value::Mapping(s));
    }
    let text = t.render(&vars)?;
    let mut tree: Value = serde_yaml::from_str(&text).map_err(|e| {
        let at = e.location().map(|l| l.line());
        let line = at.map_or(String::new(), |l| format!(" at line {l}"));
        user_msg(format!(
            "{shown}: the recipe rendered for run `{}` is not valid YAML{line} (of the rendered text): {e}{}",
            point.name,
            at.map_or(String::new(), |l| show_line(&text, l))
        ))
    })?;
    if !tree.is_mapping() {
        return Err(user_msg(format!("{shown}: the rendered recipe is not a YAML mapping of sections")));
    }
    for o in sets {
        overrides::apply(&mut tree, o).map_err(|e| user_msg(format!("{shown}: {e:#}")))?;
    }
    for (o, axis) in point.overrides().iter().zip(axes) {
        overrides::apply(&mut tree, o)
            .map_err(|e| user_msg(format!("{}: grid key {}: {e:#}", where_(t, axis), axis.key)))?;
    }
    let out = tree.get("run").and_then(|r| r.get("output_dir")).and_then(Value::as_str).unwrap_or("results");
    let out = Path::new(out).join(sweep).display().to_string();
    for (k, v) in [("output_dir", out), ("name", point.name.clone())] {
        let o = Override { path: vec!["run".into(), k.into()], value: Value::String(v) };
        overrides::apply(&mut tree, &o).map_err(|e| user_msg(format!("{shown}: {e:#}")))?;
    }
    let raw: RawRecipe = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.inner().to_string();
        let hit = axes.iter().find(|a| key == a.key || key.starts_with(&format!("{}.", a.key)) || a.key.starts_with(&format!("{key}.")));
        match hit {
            Some(a) if inner.contains("unknown field") => {
                user_msg(format!("{}: grid key `{}` names no recipe field ({key}: {inner})", where_(t, a), a.key))
            }
            Some(a) => user_msg(format!("{}: grid key `{}`: {key}: {inner}", where_(t, a), a.key)),
            None => in_rendered(t, &text, &point.name, &key, &inner),
        }
    })?;
    recipe::resolve(raw, &t.path, registry)
        .map_err(|e| user_msg(format!("run `{}` of sweep `{sweep}`: {e:#}", point.name)))
}

/// `template:line` for a header key, `template (--grid key)` for a command-line one.
fn where_(t: &Template, a: &Axis) -> String {
    match a.origin {
        Origin::Header { line } => format!("{}:{line}", t.path.display()),
        Origin::CommandLine => format!("{} (--grid {})", t.path.display(), a.key),
    }
}

/// A recipe error not caused by a grid key: located in the rendered text when the
/// rendered text alone has it (then with its line), else it came from `--set`.
fn in_rendered(t: &Template, text: &str, run: &str, key: &str, inner: &str) -> anyhow::Error {
    let shown = t.path.display();
    let alone: Result<RawRecipe, _> = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text));
    match alone {
        Err(e) if e.path().to_string() == key => {
            let at = e.inner().location().map(|l| l.line());
            let line = at.map_or(String::new(), |l| format!(" at line {l}"));
            user_msg(format!(
                "{shown}: the recipe rendered for run `{run}`{line} (of the rendered text): {key}: {inner}{}",
                at.map_or(String::new(), |l| show_line(text, l))
            ))
        }
        _ => user_msg(format!("{shown} (with --set): {key}: {inner}")),
    }
}

/// Decides from the run directory whether a run is finished with this recipe.
fn state_of(recipe: &Recipe) -> Result<State> {
    let dir = &recipe.run_dir;
    if !dir.exists() {
        return Ok(State::New);
    }
    let summary_ok = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .is_some_and(|v| v.is_object());
    if !summary_ok {
        return Ok(State::Unfinished);
    }
    let want = serde_yaml::to_string(&recipe.raw)?;
    let have = std::fs::read_to_string(dir.join("recipe.yaml")).unwrap_or_default();
    Ok(if have == want { State::Finished } else { State::Changed })
}

/// What happened to one run.
#[derive(Debug)]
pub enum Done {
    Skipped(PathBuf),
    Ran(RunOutcome),
}

/// Runs every run that is not finished, in grid order. Runs finished with a
/// different recipe are refused (before anything runs) unless `overwrite`.
pub fn execute(plan: &Plan, registry: &Registry, overwrite: bool, mut on_done: impl FnMut(usize, &PlannedRun, &Done)) -> Result<Vec<Done>> {
    let changed: Vec<&str> = plan.runs.iter().filter(|r| r.state == State::Changed).map(|r| r.point.name.as_str()).collect();
    if !changed.is_empty() && !overwrite {
        return Err(user_msg(format!(
            "{}: {} finished run(s) were made from a different recipe ({}); pass --overwrite to redo them, or --name for a new sweep",
            plan.dir.display(),
            changed.len(),
            changed.join(", ")
        )));
    }
    std::fs::create_dir_all(&plan.dir).map_err(|e| user_msg(format!("cannot create {}: {e}", plan.dir.display())))?;
    write_manifest(plan)?;
    let mut done = Vec::with_capacity(plan.runs.len());
    for (i, run) in plan.runs.iter().enumerate() {
        let d = match run.state {
            State::Finished => Done::Skipped(run.recipe.run_dir.clone()),
            State::New => Done::Ran(crate::train::run(&run.recipe, registry, Start::New)?),
            // An interrupted run continues from its newest checkpoint (or starts over without one).
            State::Unfinished => Done::Ran(crate::train::run(&run.recipe, registry, if overwrite { Start::Overwrite } else { Start::Resume })?),
            State::Changed => Done::Ran(crate::train::run(&run.recipe, registry, Start::Overwrite)?),
        };
        on_done(i, run, &d);
        done.push(d);
        if i == 0 && run.recipe.raw.run.tensorboard {
            // Once the first run has declared its columns; the HParams tab uses it from then on.
            if let Err(e) = write_experiment(plan, &run.recipe) {
                tracing::warn!("the sweep's TensorBoard experiment was not written: {e:#}");
            }
        }
    }
    Ok(done)
}

/// `sweep.json` in the sweep directory: the template, the grid and each run's
/// swept values. `runner report` reads it to know which columns were swept.
fn write_manifest(plan: &Plan) -> Result<()> {
    let grid: Vec<serde_json::Value> = plan
        .axes
        .iter()
        .map(|a| serde_json::json!({"key": a.key, "values": a.values}))
        .collect();
    let runs: Vec<serde_json::Value> = plan
        .runs
        .iter()
        .map(|r| {
            let values: serde_json::Map<String, serde_json::Value> = r
                .point
                .values
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
                .collect();
            serde_json::json!({"run": r.point.name, "values": values})
        })
        .collect();
    let manifest = serde_json::json!({
        "sweep": plan.name,
        "template": plan.template.display().to_string(),
        "grid": grid,
        "runs": runs,
    });
    runner_recipe::fs::atomic_write(&plan.dir.join(MANIFEST), |f| {
        serde_json::to_writer_pretty(&mut *f, &manifest)?;
        Ok(())
    })
}

/// The common settings listed in TensorBoard's HParams tab beside the swept keys.
const COMMON_HPARAMS: [&str; 7] = ["model.name", "model.checkpoint", "training.lr", "masking.rate", "training.batch_size", "training.max_steps", "training.epochs"];

/// `tensorboard/` in the sweep directory: the hparams plugin's experiment (the
/// swept keys and the common settings, with the types `first`'s values have;
/// the training loss and every eval column `first` declared as metrics), so
/// that the runs compare side by side in the HParams tab.
fn write_experiment(plan: &Plan, first: &crate::recipe::Recipe) -> Result<()> {
    use crate::report::tensorboard::{flatten, EventWriter};
    let resolved = flatten(&serde_yaml::to_value(&first.raw)?);
    let mut keys: Vec<&str> = plan.axes.iter().map(|a| a.key.as_str()).collect();
    for k in COMMON_HPARAMS {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let swept = |key: &str| plan.axes.iter().any(|a| a.key == key && a.values.len() > 1);
    let hparams: Vec<_> = keys
        .iter()
        .filter_map(|k| resolved.iter().find(|(name, _)| name == k).map(|(name, v)| (name.clone(), v.clone(), swept(k))))
        .collect();
    let mut metrics: Vec<String> = vec!["train/loss".to_string()];
    let columns = crate::report::read_columns(&first.run_dir);
    metrics.extend(columns.iter().map(|c| format!("eval/{}", c.name)));
    let dir = plan.dir.join("tensorboard");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    let mut tb = EventWriter::create(&dir)?;
    tb.experiment(&hparams, &metrics)?;
    tb.flush()
}

/// The manifest's file name in a sweep directory (`runner report` reads it too).
pub use crate::report::table::SWEEP_MANIFEST as MANIFEST;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_names_come_from_the_file_stem() {
        assert_eq!(stem(Path::new("recipes/sweeps/mask-rate.yaml.j2")), "mask-rate");
        assert_eq!(stem(Path::new("a.yml")), "a");
        assert_eq!(stem(Path::new("b.jinja")), "b");
    }
}
