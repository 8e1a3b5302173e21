//! The run's TensorBoard event file as training writes it (the first process
//! only, unless `run.tensorboard: false`): opened before the first step with
//! the run's hyperparameters, or on a resume with a session start at the first
//! step trained again; then each metrics row's scalars as the row is pushed,
//! and a session end when the run finishes.
//!
//! A write that fails during training (a full disk) ends the event file with a
//! warning, never the run: the tables and checkpoints do not depend on it.

use std::time::Instant;

use anyhow::Result;

use crate::error::user_msg;
use crate::recipe::Recipe;
use crate::report::tensorboard::{flatten, row_scalars, EventWriter};
use crate::report::Row;

/// The event file, while there is one, and what writing it has cost.
#[derive(Default)]
pub struct RunEvents {
    writer: Option<EventWriter>,
    /// Events written by this process, and the wall time spent writing them.
    pub written: u64,
    pub seconds: f64,
}

impl RunEvents {
    /// No event file (another process's, or `run.tensorboard: false`).
    pub fn off() -> Self {
        RunEvents::default()
    }

    /// A new event file in `<run>/tensorboard/`. A fresh run's (`step` 0)
    /// opens with its hyperparameters (the resolved recipe, flattened); a
    /// resumed run's with a session start at `step + 1`, the first step it
    /// trains, so TensorBoard drops what an earlier file holds for the steps
    /// trained again.
    pub fn open(recipe: &Recipe, step: u64) -> Result<Self> {
        let t = Instant::now();
        let dir = recipe.run_dir.join("tensorboard");
        let opened = (|| {
            let mut w = EventWriter::create(&dir)?;
            if step > 0 {
                w.session_start(step + 1)?;
            } else {
                w.hparams(&flatten(&serde_yaml::to_value(&recipe.raw)?))?;
            }
            w.flush()?;
            anyhow::Ok(w)
        })();
        let writer = opened.map_err(|e| user_msg(format!("run.tensorboard: {e:#} (`run.tensorboard: false` runs without event files)")))?;
        Ok(RunEvents { writer: Some(writer), written: 2, seconds: t.elapsed().as_secs_f64() })
    }

    /// The scalars `row` gives, or none when there is no event file.
    pub fn scalars_of(&self, row: &Row) -> Vec<(String, f64)> {
        if self.writer.is_some() {
            row_scalars(row)
        } else {
            Vec::new()
        }
    }

    /// Writes `scalars` at `step` and flushes them.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) {
        if !scalars.is_empty() {
            self.write("no longer written", |w| w.scalars(step, scalars));
        }
    }

    /// The session end of a run that finished its last step.
    pub fn finish(&mut self, step: u64) {
        self.write("not finished", |w| w.session_end(step));
    }

    fn write(&mut self, failed: &str, f: impl FnOnce(&mut EventWriter) -> Result<()>) {
        let Some(w) = &mut self.writer else { return };
        let t = Instant::now();
        let done = f(w).and_then(|_| w.flush());
        self.seconds += t.elapsed().as_secs_f64();
        match done {
            Ok(()) => self.written += 1,
            Err(e) => {
                tracing::warn!("TensorBoard events {failed}: {e:#}; the run, its tables and its checkpoints go on");
                self.writer = None;
            }
        }
    }
}
