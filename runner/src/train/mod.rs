//! Training: [`run`] prepares data and components from a resolved recipe, then
//! [`Trainer::fit`] (`trainer.rs`) runs the loop.
//!
//! Data parallel: with `W` processes of `A` micro-batches each, step `s` trains
//! on the global micro-batches `s*W*A .. (s+1)*W*A`; rank `r` takes
//! `(s*W + r)*A + j` for `j < A`. A micro-batch, and the dropout masks of its
//! forward pass (keyed by its global index), are the same whichever process
//! trains on it, so a run ends with the same parameters on 1, 2 or 4
//! processes for the same global batch.
//!
//! [`run`] reads as build → fit → export: [`setup::build`] makes a [`Trainer`]
//! (fixed [`Settings`], the components, and a [`TrainState`]: what changes as
//! the run goes), [`Trainer::fit`] trains, and [`export`] writes the Hugging
//! Face checkpoint and the summary. A checkpoint to resume from is the state's
//! [`state_dict`](TrainState::state_dict) plus the parameters ([`checkpoint`]),
//! and `fit` starts at the state's step, so a resume replays nothing.

pub mod checkpoint;
pub mod events;
pub mod inputs;
pub mod optimizer;
pub mod resume;
pub mod run_dir;
pub mod scaler;
pub mod schedule;
pub mod setup;
pub mod signals;
pub mod state;
pub mod trainer;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::recipe::Recipe;
use crate::registry::Registry;
use crate::report::{Row, Summary};
pub use run_dir::Start;
pub use state::{FitStats, TrainState};
pub use trainer::{dropout_key, Settings, Trainer};

/// Where a finished run left its results.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
    /// Whether this process wrote the results (the first of a data-parallel run).
    pub is_main: bool,
}

/// Runs a recipe end to end: build the trainer, fit, export.
/// `start` says what to do with results already in the run folder.
pub fn run(recipe: &Recipe, registry: &Registry, start: Start) -> Result<RunOutcome> {
    let started = Instant::now();
    let mut built = setup::build(recipe, registry, start, started)?;
    built.trainer.fit()?;
    export(recipe, built, started)
}

/// After the last step (first process): the checkpoint in Hugging Face layout
/// with the tokenizer beside it, and the summary.
pub fn export(recipe: &Recipe, built: setup::Built, started: Instant) -> Result<RunOutcome> {
    let setup::Built { mut trainer, tokenizer, steps_per_epoch, parameters, columns } = built;
    let checkpoint = recipe.run_dir.join("checkpoint");
    if trainer.collective.rank() != 0 {
        let summary = Summary { run: recipe.raw.run.name.clone(), ..Default::default() };
        return Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: false });
    }

    // Checkpoint in Hugging Face layout, with the tokenizer beside it: written
    // into a temporary folder, then renamed over the previous one.
    let part = recipe.run_dir.join(".checkpoint.tmp");
    let written = write_export(&trainer, &tokenizer, &part, &checkpoint);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&part);
        return Err(keep_trained_state(&mut trainer, recipe, e));
    }

    let progress = &trainer.state.progress;
    let fit = &progress.stats;
    let loss = crate::report::loss_column(&columns).unwrap_or_default();
    let evals: Vec<&Row> = progress.rows.iter().filter(|r| !r.eval.is_empty()).collect();
    let eval_loss = |r: &&Row| r.eval.get(loss).copied();
    let finals = columns
        .iter()
        .filter(|c| c.role == runner_api::ColumnRole::Headline)
        .map(|c| (format!("final_{}", c.name), evals.last().and_then(|r| r.eval.get(&c.name).copied())))
        .collect();
    let summary = Summary {
        run: recipe.raw.run.name.clone(),
        steps: trainer.settings.schedule.total,
        epochs: trainer.settings.schedule.total as f64 / steps_per_epoch,
        train_tokens: fit.tokens,
        parameters,
        final_train_loss: progress.rows.iter().rev().find_map(|r| r.train_loss),
        initial_eval_loss: evals.first().and_then(eval_loss),
        final_eval_loss: evals.last().and_then(eval_loss),
        best_eval_loss: evals.iter().filter_map(eval_loss).reduce(f64::min),
        finals,
        tokens_per_s: fit.tokens as f64 / fit.train_seconds.max(1e-9),
        processes: trainer.collective.world_size(),
        allreduce_share: fit.allreduce_seconds / fit.train_seconds.max(1e-9),
        eval_s: fit.eval_seconds,
        elapsed_s: started.elapsed().as_secs_f64(),
        checkpoint: checkpoint.display().to_string(),
    };
    summary.write(&recipe.run_dir)?;
    trainer.folder.discard_aside();
    Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: true })
}

/// Writes the export into `part` and renames it to `checkpoint`.
fn write_export(trainer: &Trainer, tokenizer: &Path, part: &Path, checkpoint: &Path) -> Result<()> {
    if part.exists() {
        std::fs::remove_dir_all(part).with_context(|| format!("cannot remove {}", part.display()))?;
    }
    trainer.model.save_pretrained(part)?;
    copy_tokenizer_files(tokenizer, part)?;
    if checkpoint.exists() {
        std::fs::remove_dir_all(checkpoint).with_context(|| format!("cannot replace {}", checkpoint.display()))?;
    }
    std::fs::rename(part, checkpoint).with_context(|| format!("cannot rename {} to {}", part.display(), checkpoint.display()))
}

/// After a failed export, the trained state is kept where a resume finds it:
/// the last step's checkpoint in the run folder (written now unless it is
/// there, as with `training.checkpoint.every: 0`), else, when the run folder
/// has no room for it, a checkpoint in the system's temporary folder. `err`
/// gets where it is and how to go on, so a failed export never loses the run.
fn keep_trained_state(trainer: &mut Trainer, recipe: &Recipe, err: anyhow::Error) -> anyhow::Error {
    let step = trainer.state.progress.step;
    let in_run = checkpoint::step_dir(&recipe.run_dir, step);
    let resume = format!("runner resume {}", recipe.run_dir.display());
    let kept = if in_run.join("manifest.json").is_file() { Ok(in_run.clone()) } else { trainer.save_checkpoint() };
    if let Ok(dir) = kept {
        return err.context(format!("the export failed; the trained state after step {step} is kept in {} ({resume} exports it)", dir.display()));
    }
    let spare = std::env::temp_dir().join(format!("runner-{}-{}", recipe.raw.run.name, std::process::id()));
    match trainer.save_checkpoint_into(&spare) {
        Ok(dir) => err.context(format!(
            "the export failed, and the run folder has no room for a checkpoint either; the trained state after step {step} is kept in {}; \
             move it to {} and run {resume}",
            dir.display(),
            in_run.display()
        )),
        Err(e) => err.context(format!("the export failed, and the trained state after step {step} could not be kept ({e:#})")),
    }
}

/// Copies the tokenizer (and its companions, when present) next to the weights.
fn copy_tokenizer_files(tokenizer: &Path, dir: &Path) -> Result<()> {
    std::fs::copy(tokenizer, dir.join("tokenizer.json"))
        .with_context(|| format!("cannot copy {} into {}", tokenizer.display(), dir.display()))?;
    if let Some(src) = tokenizer.parent() {
        for f in ["vocab.txt", "tokenizer_config.json", "special_tokens_map.json"] {
            if src.join(f).is_file() {
                std::fs::copy(src.join(f), dir.join(f))?;
            }
        }
    }
    Ok(())
}

