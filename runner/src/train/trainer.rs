//! The training loop: [`Trainer::fit`] runs one step after another, top to
//! bottom in the order things happen: lr for this step, micro-batches with
//! accumulation, gradients averaged over processes, unscale (fp16), clip,
//! optimizer step (or a skip), zero grads, log, eval, checkpoint, stop.
//!
//! A step reads nothing back from the device unless it must (each read stalls
//! a GPU until its queue drains): the micro-batches' losses stay on the device
//! and are read together at the next log row, eval or checkpoint, where the
//! non-finite loss check happens too. A step reads them at once only when it
//! reads something anyway: fp16's inf flag (whether to skip the update is
//! decided on the host, as `GradScaler.step` does), or the small all-reduce of
//! a data-parallel run (every process must learn each step whether to stop).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use runner_api::{Metric, MlmModel, Mode};

use super::checkpoint::{self, GlobalBatch};
use super::events::RunEvents;
use super::run_dir::RunDir;
use super::schedule::LrSchedule;
use super::signals::{Interrupted, StopRequests};
use super::state::{copy_named, TrainState, Window};
use crate::autocast::Autocast;
use crate::data::{BatchMaker, EvalSet};
use crate::distributed::{self, Collective};
use crate::error::user_msg;
use crate::eval::evaluate;
use crate::report::{MetricsTable, Row};

/// What the run was told: fixed from the first step to the last.
pub struct Settings {
    /// `run.seed`: with a micro-batch's global index, it keys the batch's dropout masks.
    pub seed: u64,
    /// The learning rate at each step; its `total` is the run's length in steps.
    pub schedule: LrSchedule,
    pub grad_accum: u64,
    pub global_batch: GlobalBatch,
    pub max_grad_norm: Option<f64>,
    pub log_every: u64,
    pub eval_every: u64,
    pub eval_at_start: bool,
    /// Save a checkpoint every this many steps (0: only when stopped by a signal).
    pub checkpoint_every: u64,
    pub checkpoint_keep: usize,
    /// The resolved recipe, saved with each checkpoint.
    pub recipe_yaml: String,
    /// What the run read besides the recipe, saved with each checkpoint.
    pub inputs: super::inputs::Inputs,
    /// What to type to continue the run, shown when it is stopped.
    pub resume_command: String,
    pub device: tch::Device,
    /// What forward passes compute in: float32, or bf16 / fp16 under autocast.
    pub compute: tch::Kind,
    pub vocab: runner_api::VocabInfo,
}

/// The training loop and everything it owns.
pub struct Trainer {
    pub settings: Settings,
    pub model: Box<dyn MlmModel>,
    /// The other processes of a data-parallel run (or [`distributed::Single`]).
    pub collective: Box<dyn Collective>,
    pub batches: Arc<BatchMaker>,
    pub eval_set: EvalSet,
    pub metrics: Vec<Box<dyn Metric>>,
    /// The columns of `metrics.csv` (the rows are the state's).
    pub table: MetricsTable,
    /// The run folder (locked by the first process).
    pub folder: RunDir,
    pub state: TrainState,
    /// Seconds this process spent in metrics that run the model themselves.
    pub model_metric_seconds: f64,
    /// The TensorBoard event file (first process, unless `run.tensorboard: false`).
    pub events: RunEvents,
}

/// The dropout key of global micro-batch `index` in a run seeded with `seed`.
pub fn dropout_key(seed: u64, index: u64) -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    mix(mix(seed ^ 0x6472_6f70_6f75_7421).wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The global index of micro-batch `j` of process `rank` at `step`: the
/// step's `world * accum` micro-batches are numbered rank by rank, so a global
/// batch covers the same indices (the same data and dropout keys) whatever the
/// split between processes and accumulation.
pub fn micro_batch_index(step: u64, world: u64, rank: u64, accum: u64, j: u64) -> u64 {
    (step * world + rank) * accum + j
}

/// The losses of steps not yet read back: each step's micro-batch losses
/// (0-dim, already divided by the accumulation), on the device.
type Unread = Vec<(u64, Vec<tch::Tensor>)>;

/// Reads the losses of `micro` and, when given, an inf flag, in one transfer:
/// (the step's loss summed in float64 in micro-batch order, the flag).
fn read_step(micro: &[tch::Tensor], found_inf: Option<&tch::Tensor>) -> Result<(f64, f64)> {
    let mut parts: Vec<tch::Tensor> = micro.iter().map(|l| l.f_to_kind(tch::Kind::Float)).collect::<Result<_, _>>()?;
    if let Some(flag) = found_inf {
        parts.push(flag.f_to_kind(tch::Kind::Float)?);
    }
    let values = Vec::<f32>::try_from(&tch::Tensor::f_stack(&parts, 0)?.f_to_device(tch::Device::Cpu)?)?;
    let loss = values[..micro.len()].iter().fold(0.0, |sum, &l| sum + l as f64);
    Ok((loss, values.get(micro.len()).map_or(0.0, |&f| f as f64)))
}

impl Trainer {
    /// Reads the losses of the steps in `unread` (one transfer) into the log
    /// window, in step order; a loss that is not a number stops the run.
    fn settle(&mut self, unread: &mut Unread) -> Result<()> {
        if unread.is_empty() {
            return Ok(());
        }
        let steps = std::mem::take(unread);
        let flat: Vec<tch::Tensor> = steps.iter().flat_map(|(_, micro)| micro.iter().map(|l| l.shallow_clone())).collect();
        let values = Vec::<f32>::try_from(&tch::Tensor::f_stack(&flat, 0)?.f_to_kind(tch::Kind::Float)?.f_to_device(tch::Device::Cpu)?)?;
        let mut at = 0;
        for (step, micro) in &steps {
            let step_loss = values[at..at + micro.len()].iter().fold(0.0, |sum, &l| sum + l as f64);
            at += micro.len();
            if !step_loss.is_finite() {
                return Err(self.non_finite(*step, step_loss));
            }
            self.state.progress.window.loss += step_loss;
            self.state.progress.window.steps += 1;
        }
        Ok(())
    }

    fn world(&self) -> u64 {
        self.collective.world_size() as u64
    }

    fn is_main(&self) -> bool {
        self.collective.rank() == 0
    }

    fn epoch_at(&self, step: u64) -> f64 {
        (step * self.settings.grad_accum * self.world()) as f64 / self.batches.batches_per_epoch() as f64
    }

    /// Evaluates, adds the row, and (first process) rewrites the metrics tables.
    fn eval_row(&mut self, step: u64, elapsed: f64) -> Result<String> {
        let crate::eval::Evaluation { values, model_metric_seconds } = evaluate(
            self.model.as_ref(),
            self.settings.device,
            self.settings.compute,
            &self.eval_set,
            &self.settings.vocab,
            &mut self.metrics,
            self.collective.as_ref(),
        )?;
        self.model_metric_seconds += model_metric_seconds;
        let shown = values.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ");
        let row = Row { step, epoch: self.epoch_at(step), lr: self.settings.schedule.lr(step), elapsed_s: elapsed, eval: values, ..Default::default() };
        self.push_row(row)?;
        Ok(shown)
    }

    /// Adds a row; the first process writes the tables at once, so a killed
    /// run keeps every row it logged, and then the row's TensorBoard scalars.
    fn push_row(&mut self, row: Row) -> Result<()> {
        let (step, scalars) = (row.step, self.events.scalars_of(&row));
        self.table.push(&mut self.state.progress.rows, row);
        if self.is_main() {
            self.table.write(&self.state.progress.rows, &self.folder.path)?;
        }
        self.events.scalars(step, &scalars);
        Ok(())
    }

    /// Trains from the state's step to the last one. An error that stops it
    /// (a full disk, a lost peer) says which checkpoint the run keeps.
    pub fn fit(&mut self) -> Result<()> {
        self.fit_steps().map_err(|e| {
            let said = e.downcast_ref::<Interrupted>().is_some() || e.downcast_ref::<NonFinite>().is_some();
            if said || !self.is_main() {
                return e;
            }
            let step = self.state.progress.step;
            match checkpoint::newest_complete(&self.folder.path).ok().flatten() {
                Some(dir) => e.context(format!(
                    "the run stopped after step {step}; its newest complete checkpoint, {}, is kept ({} continues from it)",
                    dir.display(),
                    self.settings.resume_command
                )),
                None => e.context(format!("the run stopped after step {step}, with no complete checkpoint")),
            }
        })
    }

    fn fit_steps(&mut self) -> Result<()> {
        let started = Instant::now();
        let device = self.settings.device;
        let (rank, world, accum) = (self.collective.rank() as u64, self.world(), self.settings.grad_accum);
        let (first, total) = (self.state.progress.step, self.settings.schedule.total);
        let mine = (first..total).flat_map(move |s| (0..accum).map(move |j| micro_batch_index(s, world, rank, accum, j)));
        let batches = self.batches.clone().prefetch(mine);
        let bar = if self.is_main() { ProgressBar::new(total) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]")
                .expect("valid template"),
        );
        bar.set_position(first);
        let stop = StopRequests::install()?;
        let mut eval_seconds = 0.0;
        // The eval at step 0, or the one a run stopped at the end of step `first`
        // (before its eval) still owes: done now, as the uninterrupted run did it then.
        let owed = first > 0 && (first == total || (self.settings.eval_every > 0 && first % self.settings.eval_every == 0));
        let owed = owed && !self.state.progress.rows.last().is_some_and(|r| r.step == first && !r.eval.is_empty());
        if (self.settings.eval_at_start && first == 0) || owed {
            let t = Instant::now();
            let shown = self.eval_row(first, 0.0)?;
            eval_seconds += t.elapsed().as_secs_f64();
            self.state.progress.stats.eval_seconds += t.elapsed().as_secs_f64();
            bar.suspend(|| tracing::info!("step {first}: {shown}"));
        }
        // Training time of the current log window; eval time is kept out of it.
        let (mut window_secs, mut window_start) = (0.0, Instant::now());
        let mut unread: Unread = Vec::new();
        for step in first..total {
            // 1. learning rate for this step
            let lr = self.settings.schedule.lr(step);
            // 2. this process's micro-batches, gradients accumulated; each weighs 1/accum
            let (mut micro_losses, mut step_tokens) = (Vec::with_capacity(accum as usize), 0u64);
            for j in 0..accum {
                let batch = batches.recv().context("the batch thread stopped")??;
                step_tokens += batch.tokens as u64;
                let index = micro_batch_index(step, world, rank, accum, j);
                let out = {
                    let _autocast = Autocast::enter(device, self.settings.compute); // forward only, as torch.autocast
                    let mode = Mode::Train { dropout_key: dropout_key(self.settings.seed, index) };
                    self.model.forward_mlm(&batch.to_device(device), mode)?
                };
                let loss = out.loss / accum as f64;
                match &self.state.scaler {
                    Some(scaler) => scaler.scale(&loss)?.f_backward()?,
                    None => loss.f_backward()?,
                }
                micro_losses.push(loss.f_detach()?);
            }
            // 3. gradients averaged over processes, then unscaled (fp16)
            let grads = self.state.optimizer.grads();
            let comm = Instant::now();
            distributed::buckets::all_reduce_mean(self.collective.as_ref(), &grads)?;
            self.state.progress.stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let found_inf = match &self.state.scaler {
                Some(scaler) => Some(scaler.unscale_on_device(&grads)?),
                None => None,
            };
            // The step's losses are read now only with a read this step needs
            // anyway (fp16's inf flag, the processes' all-reduce); else later.
            let read_now = world > 1 || found_inf.is_some();
            let (local_loss, found_inf) = if read_now {
                read_step(&micro_losses, found_inf.as_ref())?
            } else {
                unread.push((step, micro_losses));
                (0.0, 0.0)
            };
            // One small all-reduce: the step's loss and tokens over every process,
            // the inf flag, and whether any process was asked to stop.
            let comm = Instant::now();
            let asked = stop.received();
            let [loss_sum, tokens, inf_count, stops, interrupts] = self.sum_over_processes([
                local_loss,
                step_tokens as f64,
                found_inf,
                asked.is_some() as u8 as f64,
                (asked == Some(libc::SIGINT)) as u8 as f64,
            ])?;
            self.state.progress.stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let step_loss = loss_sum / world as f64;
            self.state.progress.window.tokens += tokens as u64;
            if read_now && self.state.scaler.is_none() && !step_loss.is_finite() {
                return Err(self.non_finite(step, step_loss));
            }
            // 4. clip, update (skipped on an inf/NaN gradient under fp16), clear
            let skip = inf_count > 0.0;
            // The norm stays on the device; it is read only when a row is logged.
            let mut grad_norm: Option<tch::Tensor> = None;
            if !skip {
                grad_norm = Some(self.state.optimizer.clip_grad_norm(self.settings.max_grad_norm)?);
                self.state.optimizer.step(lr)?;
            }
            if let Some(scaler) = &mut self.state.scaler {
                scaler.update(skip)?;
            }
            self.state.optimizer.zero_grad();
            let done = step + 1;
            self.state.progress.step = done;
            // 5. log (losses not yet read are read here, at the latest)
            if read_now && !skip {
                self.state.progress.window.loss += step_loss;
                self.state.progress.window.steps += 1;
            }
            bar.set_position(done);
            // A stop asked for during this step ends the run after it, before its eval.
            // Several processes decide it together, in the step's all-reduce (a signal
            // that comes after it is seen at the next step); one process also sees a
            // signal that came after that point, up to now.
            let asked = if world == 1 { asked.or(stop.received()) } else { asked };
            let stopping = stops > 0.0 || asked.is_some();
            let due = self.settings.eval_every > 0 && done % self.settings.eval_every == 0;
            let checkpoint_due = stopping || (self.settings.checkpoint_every > 0 && done % self.settings.checkpoint_every == 0);
            if done % self.settings.log_every == 0 || done == total || due || checkpoint_due {
                self.settle(&mut unread)?;
            }
            if done % self.settings.log_every == 0 || done == total {
                let secs = window_secs + window_start.elapsed().as_secs_f64();
                let Window { loss, steps, tokens } = std::mem::take(&mut self.state.progress.window);
                let tps = tokens as f64 / secs.max(1e-9);
                let train_loss = (steps > 0).then(|| loss / steps as f64);
                self.state.progress.stats.tokens += tokens;
                self.state.progress.stats.train_seconds += secs;
                bar.set_message(match train_loss {
                    Some(l) => format!("loss {l:.4}, {tps:.0} tok/s"),
                    None => format!("{tps:.0} tok/s"),
                });
                let row = Row {
                    step: done,
                    epoch: self.epoch_at(done),
                    lr,
                    train_loss,
                    tokens_per_s: Some(tps),
                    elapsed_s: started.elapsed().as_secs_f64(),
                    loss_scale: self.state.scaler.as_ref().map(|s| s.value()),
                    skipped_steps: self.state.scaler.as_ref().map(|s| s.skipped),
                    grad_norm: grad_norm.as_ref().map(|n| n.f_double_value(&[])).transpose()?,
                    ..Default::default()
                };
                self.push_row(row)?;
                window_secs = 0.0;
                window_start = Instant::now();
            }
            // 6. eval (always at the end), unless stopping: a resume does it first
            if (due || done == total) && !stopping {
                window_secs += window_start.elapsed().as_secs_f64();
                let t = Instant::now();
                let shown = self.eval_row(done, started.elapsed().as_secs_f64())?;
                eval_seconds += t.elapsed().as_secs_f64();
                self.state.progress.stats.eval_seconds += t.elapsed().as_secs_f64();
                bar.suspend(|| tracing::info!("step {done}: {shown}"));
                window_start = Instant::now();
            }
            // A signal during this step's eval stops the run after it (one process).
            let asked = if world == 1 { asked.or(stop.received()) } else { asked };
            let stopping = stopping || asked.is_some();
            // 7. checkpoint: when due, or when a signal asked to stop
            if checkpoint_due || stopping {
                self.settle(&mut unread)?;
                window_secs += window_start.elapsed().as_secs_f64();
                let saved = if self.is_main() { Some(bar.suspend(|| self.save_checkpoint())?) } else { None };
                window_start = Instant::now();
                if stopping {
                    bar.abandon();
                    // The signal this process got; another process's when it got none.
                    let signal = asked.unwrap_or(if interrupts > 0.0 { libc::SIGINT } else { libc::SIGTERM });
                    return Err(anyhow::Error::new(Interrupted {
                        signal,
                        name: distributed::launch::signal_name(signal),
                        step: done,
                        checkpoint: saved.map_or_else(|| "the run folder (by the first process)".to_string(), |d| d.display().to_string()),
                        command: self.settings.resume_command.clone(),
                    }));
                }
            }
        }
        drop(stop);
        bar.finish_and_clear();
        self.events.finish(total);
        if self.is_main() {
            let stats = &self.state.progress.stats;
            tracing::info!(
                "trained {} steps in {:.1}s ({:.1}s in eval{}), {:.0} tokens/s{}{}",
                total - first,
                started.elapsed().as_secs_f64(),
                eval_seconds,
                if self.model_metric_seconds > 0.0 {
                    format!(", {:.1}s of it in metrics that run the model, as a probe", self.model_metric_seconds)
                } else {
                    String::new()
                },
                stats.tokens as f64 / stats.train_seconds.max(1e-9),
                if world > 1 {
                    format!(" on {world} processes, {:.1}% of training time in all-reduce", 100.0 * stats.allreduce_seconds / stats.train_seconds.max(1e-9))
                } else {
                    String::new()
                },
                match &self.state.scaler {
                    Some(s) => format!(", {} steps skipped for inf/NaN gradients, loss scale {}", s.skipped, s.value()),
                    None => String::new(),
                }
            );
            let events = &self.events;
            if events.written > 0 {
                tracing::debug!(
                    "TensorBoard: {} events written in {:.1} ms, {:.4}% of the training loop's wall time",
                    events.written,
                    1e3 * events.seconds,
                    100.0 * events.seconds / started.elapsed().as_secs_f64().max(1e-9)
                );
            }
        }
        Ok(())
    }

    /// Writes `checkpoints/step-N/` for the current state (first process only).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let t = Instant::now();
        let dir = self.save_checkpoint_into(&self.folder.path.clone())?;
        self.folder.discard_aside();
        tracing::info!("checkpoint after step {} written to {} in {:.1}s", self.state.progress.step, dir.display(), t.elapsed().as_secs_f64());
        Ok(dir)
    }

    /// Writes `<root>/checkpoints/step-N/` for the current state: the run
    /// folder's, or a spare one when that has no room ([`super::export`]).
    pub fn save_checkpoint_into(&self, root: &Path) -> Result<PathBuf> {
        let model: Vec<(String, tch::Tensor)> = self.model.parameters()?.into_iter().map(|p| (p.name, p.tensor)).collect();
        let state = self.state.state_dict()?;
        let s = &self.settings;
        checkpoint::save(root, &model, &state, s.global_batch, &s.recipe_yaml, Some(&s.inputs), s.checkpoint_keep)
    }

    /// Takes the parameters and state of a checkpoint (whose recipe [`resume::check`] accepted).
    pub fn restore(&mut self, ck: &checkpoint::Checkpoint) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let saved: HashMap<&str, &tch::Tensor> = ck.model.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for mut param in self.model.parameters()? {
            copy_named(&saved, &param.name, &mut param.tensor).with_context(|| format!("{}: model.safetensors", ck.dir.display()))?;
        }
        self.state.load_state_dict(&ck.state).with_context(|| format!("{}", ck.dir.display()))?;
        let step = self.state.progress.step;
        if step > self.settings.schedule.total {
            bail!(user_msg(format!("{}: the checkpoint is after step {step}, beyond the run's {} steps", ck.dir.display(), self.settings.schedule.total)));
        }
        Ok(())
    }

    /// Sends the first process's parameters and state to every other one:
    /// tensors in place, the state's values as JSON bytes.
    pub fn share_state(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let device = self.settings.device;
        let state = self.state.state_dict()?;
        let mut tensors: Vec<tch::Tensor> = self.model.parameters()?.into_iter().map(|p| p.tensor).collect();
        tensors.extend(state.tensors.into_iter().map(|(_, t)| t));
        self.collective.broadcast(&tensors, 0)?;
        let json = serde_json::to_vec(&state.values)?;
        let len = tch::Tensor::from_slice(&[json.len() as i64]).to_device(device);
        self.collective.broadcast(std::slice::from_ref(&len), 0)?;
        let len = len.int64_value(&[]) as usize;
        let bytes = if self.is_main() {
            tch::Tensor::from_slice(&json).to_device(device)
        } else {
            tch::Tensor::zeros([len as i64], (tch::Kind::Uint8, device))
        };
        self.collective.broadcast(std::slice::from_ref(&bytes), 0)?;
        let bytes = Vec::<u8>::try_from(&bytes.to_device(tch::Device::Cpu))?;
        let values = serde_json::from_slice(&bytes).context("the first process's training state")?;
        self.state.load_values(&values)
    }

    /// The error for a loss that is not a number: the step, the checkpoint to
    /// go back to, and the documents the step's micro-batches came from.
    fn non_finite(&self, step: u64, loss: f64) -> anyhow::Error {
        let per_step = self.world() * self.settings.grad_accum;
        let mut docs: Vec<usize> = (step * per_step..(step + 1) * per_step).flat_map(|i| self.batches.documents(i)).collect();
        docs.sort();
        docs.dedup();
        const SHOWN: usize = 20;
        let mut shown = docs.iter().take(SHOWN).map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        if docs.len() > SHOWN {
            shown += &format!(" and {} more", docs.len() - SHOWN);
        }
        let last = checkpoint::newest_complete(&self.folder.path).ok().flatten();
        NonFinite::error(format!(
            "training loss became {loss} at step {}; last good checkpoint: {}; the step's batches came from training documents {shown} \
             (counted from 0 in corpus order, held-out documents left out); lower training.lr, set training.max_grad_norm, or check that text",
            step + 1,
            last.map_or_else(|| "none (training.checkpoint.every)".to_string(), |d| d.display().to_string()),
        ))
    }

    /// Sums a few numbers over every process (itself alone with one process).
    fn sum_over_processes<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        if self.world() == 1 {
            return Ok(values);
        }
        let t = tch::Tensor::from_slice(&values).to_device(self.settings.device);
        self.collective.all_reduce_sum(std::slice::from_ref(&t))?;
        let summed = Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu))?;
        Ok(summed.try_into().expect("same length"))
    }
}

/// A loss that is not a number: its message already names the checkpoint kept.
#[derive(Debug)]
struct NonFinite(String);

impl NonFinite {
    fn error(message: String) -> anyhow::Error {
        anyhow::Error::new(NonFinite(message))
    }
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NonFinite {}
