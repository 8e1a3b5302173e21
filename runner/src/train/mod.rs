//! Training: [`run`] prepares data and components from a resolved recipe, then
//! [`Trainer::fit`] runs the loop. One step reads top to bottom in the order
//! things happen: lr for this step, micro-batches with accumulation, gradients
//! averaged over processes, unscale (fp16), clip, optimizer step (or a skip),
//! zero grads, log, eval, stop.
//!
//! Data parallel: with `W` processes of `A` micro-batches each, step `s` trains
//! on the global micro-batches `s*W*A .. (s+1)*W*A`; rank `r` takes
//! `(s*W + r)*A + j` for `j < A`. A micro-batch, and the dropout masks of its
//! forward pass (keyed by its global index), are the same whichever process
//! trains on it, so a run ends with the same parameters on 1, 2 or 4
//! processes for the same global batch.
//!
//! A [`Trainer`] is fixed [`Settings`], the components, and a [`State`]: what
//! changes as the run goes. A checkpoint is the state plus the parameters
//! ([`checkpoint`]), and `fit` starts at the state's step, so a resume
//! replays nothing.

pub mod checkpoint;
pub mod optimizer;
pub mod resume;
pub mod run_dir;
pub mod scaler;
pub mod schedule;
pub mod signals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use runner_api::{Metric, MlmModel, Mode, ModelSource};

use crate::data::examples::Examples;
use crate::data::{cache, tokenizer, BatchMaker, EvalSet};
use crate::error::user_msg;
use crate::autocast::Autocast;
use crate::eval::evaluate;
use crate::precision::ComputeKind;
use crate::dist::Collective;
use crate::recipe::raw::Precision;
use crate::recipe::{Recipe, TrainLength, Warmup};
use crate::registry::Registry;
use crate::report::{MetricsTable, Row, Summary};
use crate::{components, device, dist};
use checkpoint::{GlobalBatch, Progress, Window};
use optimizer::{AdamW, AdamWConfig};
pub use run_dir::Start;
use run_dir::RunDir;
use scaler::{LossScaler, ScalerConfig};
use schedule::LrSchedule;
use signals::{Interrupted, StopRequests};

/// Where a finished run left its results.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
    /// Whether this process wrote the results (the first of a data-parallel run).
    pub is_main: bool,
}

/// Runs a recipe end to end: data, model, training, eval, reports, checkpoint.
/// `start` says what to do with results already in the run folder.
pub fn run(recipe: &Recipe, registry: &Registry, start: Start) -> Result<RunOutcome> {
    let started = Instant::now();
    // This process's place in the job (one process unless torchrun, srun or `runner launch` started it).
    let (world, collective) = dist::join(recipe)?;
    let main = world.is_main();
    let device = dist::device_of(recipe.device, &world);
    if !recipe.precision_reason.is_empty() && main {
        tracing::info!("precision: {:?} ({})", recipe.precision, recipe.precision_reason);
    }
    if let Some(w) = crate::precision::cpu_warning(recipe.precision, device).filter(|_| main) {
        tracing::warn!("{w}");
    }
    // hf:// models and datasets: fetched into the Hugging Face cache before anything is written
    // (by the first process; the others then find them there).
    let sources = dist::first_then_others(collective.as_ref(), || crate::recipe::sources(recipe))?;
    let threads = dist::threads_of(recipe.threads, &world);
    device::set_threads(threads);
    tch::manual_seed(recipe.raw.run.seed as i64);
    let recipe_yaml = serde_yaml::to_string(&recipe.raw)?;
    let mut folder = if main { RunDir::open(&recipe.run_dir, start)? } else { RunDir::unlocked(&recipe.run_dir) };
    // The newest complete checkpoint to continue from (first process; the others get its state from it).
    let resume_from = match start {
        Start::Resume if main => resume_point(&mut folder, &recipe.raw)?,
        _ => None,
    };
    // Refused before anything is written when the recipe changed in a way that matters.
    if let Some(dir) = &resume_from {
        let (saved, saved_recipe) = checkpoint::read_progress(dir)?;
        let t = &recipe.raw.training;
        let now = GlobalBatch { micro_batch: t.batch_size, grad_accum: t.grad_accum_steps as u64, processes: world.world_size as u64 };
        for w in resume::check(&saved_recipe, &recipe_yaml, saved.global_batch, now, saved.step)? {
            tracing::warn!("{w}");
        }
    }
    if main {
        runner_recipe::fs::atomic_write_bytes(&recipe.run_dir.join("recipe.yaml"), recipe_yaml.as_bytes())?;
    }

    // Data: views over the token store, mapped from the token cache or built
    // there (by one process under the store's lock; the others wait and map it).
    let tok = tokenizer::load(&sources.tokenizer)?;
    let vocab = tokenizer::vocab_info(&tok, &sources.tokenizer)?;
    let (train, held_out) = cached_examples(recipe, &sources, registry, &tok, &vocab)?;
    if train.is_empty() {
        bail!(user_msg(format!(
            "data.train: {} gives no training example of {} tokens (lower data.max_seq_len or add text)",
            recipe.train_path.display(),
            recipe.max_seq_len
        )));
    }
    if held_out.is_empty() {
        bail!(user_msg("data.eval: the held-out text gives no eval example (lower data.max_seq_len or hold out more)"));
    }

    // Components.
    let masking = &recipe.raw.masking;
    let masker = components::masker(registry, &masking.strategy, &masking.options, recipe.masking_rates, &vocab)?;
    // Eval masks may use their own rate (eval.masking_rate), the other rates shared.
    let eval_masker = match recipe.raw.eval.masking_rate {
        Some(rate) if rate != recipe.masking_rates.rate => {
            let rates = runner_api::MaskingRates { rate, ..recipe.masking_rates };
            components::masker(registry, &masking.strategy, &masking.options, rates, &vocab)?
        }
        _ => masker.clone(),
    };
    let eval_set = EvalSet::new(
        &held_out,
        eval_masker.as_ref(),
        recipe.raw.eval.batch_size,
        recipe.raw.eval.max_sequences,
        recipe.raw.eval.seed,
        vocab.pad_id,
    )?;
    let model_section = &recipe.raw.model;
    let source = ModelSource {
        checkpoint: sources.checkpoint.as_deref(),
        options: &model_section.options,
        device,
        compute: recipe.precision.compute_kind(),
    };
    let model = components::model(registry, &model_section.name, &source)?;
    let info = model.info()?;
    if (vocab.vocab_size as i64) > info.vocab_size {
        bail!(user_msg(format!(
            "tokenizer.path: {} has {} tokens but the model's vocabulary has {}",
            sources.tokenizer.display(),
            vocab.vocab_size,
            info.vocab_size
        )));
    }
    if recipe.max_seq_len as i64 > info.max_positions {
        bail!(user_msg(format!(
            "data.max_seq_len: {} is longer than the model's {} positions",
            recipe.max_seq_len, info.max_positions
        )));
    }
    let metrics =
        components::metrics(registry, &recipe.raw.metrics, &tokenizer::Encoder(&tok), &vocab, info.max_positions as usize)?;

    // Length of the run.
    let t = &recipe.raw.training;
    let batches = Arc::new(BatchMaker {
        examples: Arc::new(train),
        masker,
        batch_size: t.batch_size,
        seed: recipe.raw.run.seed,
        pad_id: vocab.pad_id,
        group_by_length: recipe.raw.data.group_by_length,
    });
    let micro_per_step = (t.grad_accum_steps * world.world_size) as u64;
    let steps_per_epoch = (batches.batches_per_epoch() as f64 / micro_per_step as f64).max(1.0);
    let total_steps = match recipe.length {
        TrainLength::Steps(s) => s,
        TrainLength::Epochs(e) => ((e * steps_per_epoch).ceil() as u64).max(1),
    };
    let warmup = match recipe.warmup {
        Warmup::Steps(s) => s.min(total_steps),
        Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
    };
    if main {
        tracing::info!(
            "model: {} parameters on {:?}; {} steps of {} x {} x {} sequences (micro-batch x accumulation x processes), \
             warmup {}; eval on {} sequences ({} masked tokens)",
            info.num_parameters,
            info.device,
            total_steps,
            t.batch_size,
            t.grad_accum_steps,
            world.world_size,
            warmup,
            eval_set.sequences(),
            eval_set.masked_tokens()
        );
    }

    let optimizer = AdamW::new(
        model.parameters()?,
        AdamWConfig { beta1: t.adam_beta1, beta2: t.adam_beta2, eps: t.adam_eps, weight_decay: t.weight_decay },
    );
    let fp16 = recipe.precision == Precision::Fp16;
    let columns = metric_columns(&metrics)?;
    let global_batch = GlobalBatch { micro_batch: t.batch_size, grad_accum: t.grad_accum_steps as u64, processes: world.world_size as u64 };
    let mut trainer = Trainer {
        settings: Settings {
            seed: recipe.raw.run.seed,
            schedule: LrSchedule { kind: t.schedule, peak: t.lr, warmup, total: total_steps },
            total_steps,
            grad_accum: t.grad_accum_steps as u64,
            global_batch,
            max_grad_norm: t.max_grad_norm,
            log_every: t.log_every,
            eval_every: recipe.raw.eval.every,
            eval_at_start: recipe.raw.eval.at_start,
            checkpoint_every: t.checkpoint.every,
            checkpoint_keep: t.checkpoint.keep,
            recipe_yaml,
            resume_command: resume_command(&recipe.run_dir, &world),
        },
        compute: recipe.precision.compute_kind(),
        collective,
        device: info.device,
        vocab,
        model,
        batches,
        eval_set,
        metrics,
        folder,
        state: State {
            step: 0,
            optimizer,
            scaler: fp16.then(|| LossScaler::new(ScalerConfig::default(), info.device)),
            table: MetricsTable::new(columns).with_loss_scale(fp16),
            window: Window::default(),
            stats: FitStats::default(),
        },
        model_metric_seconds: 0.0,
    };
    if let Some(dir) = resume_from {
        trainer.restore(&checkpoint::load(&dir)?)?;
        tracing::info!("resuming after step {} from {}", trainer.state.step, dir.display());
    }
    // Every process starts from the first one's weights and state.
    if world.world_size > 1 {
        trainer.share_state()?;
    }
    if main {
        tracing::info!("ready to train {:.2}s after start", started.elapsed().as_secs_f64());
    }
    trainer.fit()?;
    let fit = &trainer.state.stats;
    let checkpoint = recipe.run_dir.join("checkpoint");
    if !main {
        let summary = Summary { run: recipe.raw.run.name.clone(), ..Default::default() };
        return Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: false });
    }

    // Checkpoint in Hugging Face layout, with the tokenizer beside it: written
    // into a temporary folder, then renamed over the previous one.
    let part = recipe.run_dir.join(".checkpoint.tmp");
    if part.exists() {
        std::fs::remove_dir_all(&part).with_context(|| format!("cannot remove {}", part.display()))?;
    }
    trainer.model.save_pretrained(&part)?;
    copy_tokenizer_files(&sources.tokenizer, &part)?;
    if checkpoint.exists() {
        std::fs::remove_dir_all(&checkpoint).with_context(|| format!("cannot replace {}", checkpoint.display()))?;
    }
    std::fs::rename(&part, &checkpoint).with_context(|| format!("cannot rename {} to {}", part.display(), checkpoint.display()))?;

    let table = &trainer.state.table;
    let evals: Vec<&Row> = table.rows.iter().filter(|r| r.eval.contains_key("eval_loss")).collect();
    let eval_loss = |r: &&Row| r.eval.get("eval_loss").copied();
    let summary = Summary {
        run: recipe.raw.run.name.clone(),
        steps: total_steps,
        epochs: total_steps as f64 / steps_per_epoch,
        train_tokens: fit.tokens,
        parameters: info.num_parameters,
        final_train_loss: table.rows.iter().rev().find_map(|r| r.train_loss),
        initial_eval_loss: evals.first().and_then(eval_loss),
        final_eval_loss: evals.last().and_then(eval_loss),
        best_eval_loss: evals.iter().filter_map(eval_loss).reduce(f64::min),
        final_perplexity: evals.last().and_then(|r| r.eval.get("perplexity").copied()),
        final_accuracy: evals.last().and_then(|r| r.eval.get("accuracy").copied()),
        tokens_per_s: fit.tokens as f64 / fit.train_seconds.max(1e-9),
        processes: world.world_size,
        allreduce_share: fit.allreduce_seconds / fit.train_seconds.max(1e-9),
        elapsed_s: started.elapsed().as_secs_f64(),
        checkpoint: checkpoint.display().to_string(),
    };
    summary.write(&recipe.run_dir)?;
    trainer.folder.discard_aside();
    Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: true })
}

/// The checkpoint a resume continues from: the newest complete one. With none,
/// the run starts over (what was in its folder is moved aside); a finished run
/// with none is refused.
fn resume_point(folder: &mut RunDir, raw: &crate::recipe::RawRecipe) -> Result<Option<PathBuf>> {
    let dir = &folder.path;
    if let Some(found) = checkpoint::newest_complete(dir)? {
        return Ok(Some(found));
    }
    let finished = std::fs::read_to_string(dir.join("summary.json")).is_ok_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok());
    if finished {
        bail!(user_msg(format!(
            "{}: the run has finished and has no checkpoint to continue from (training.checkpoint.every);              pass --overwrite to run it again",
            dir.display()
        )));
    }
    if dir.join("metrics.csv").exists() {
        tracing::warn!("{}: no complete checkpoint to resume from; starting `{}` over", dir.display(), raw.run.name);
        folder.start_over()?;
    }
    Ok(None)
}

/// The command that continues this run.
fn resume_command(run_dir: &Path, world: &dist::World) -> String {
    if world.world_size == 1 {
        format!("runner resume {}", run_dir.display())
    } else {
        let recipe = run_dir.join("recipe.yaml");
        let nodes = world.world_size / world.local_world_size.max(1);
        if nodes > 1 {
            format!("runner launch --nnodes {nodes} --nproc-per-node {} ... --resume {} (on every machine)", world.local_world_size, recipe.display())
        } else {
            format!("runner launch --nproc-per-node {} --resume {}", world.local_world_size, recipe.display())
        }
    }
}

/// Train and eval examples: views over the recipe's token store, mapped from
/// the token cache when it holds it, else built there first.
fn cached_examples(
    recipe: &Recipe,
    sources: &crate::recipe::Sources,
    registry: &Registry,
    tok: &tokenizers::Tokenizer,
    vocab: &runner_api::VocabInfo,
) -> Result<(Examples, Examples)> {
    let t0 = Instant::now();
    let store = cache::store(recipe, sources, registry, tok, vocab.vocab_size)?;
    let train = Examples::new(store.train.clone(), recipe.examples, recipe.max_seq_len, vocab);
    let eval = Examples::new(store.eval.clone(), recipe.examples, recipe.max_seq_len, vocab);
    tracing::info!(
        "data: {} train documents -> {} examples ({} tokens), {} eval documents -> {} examples; mapped from the token store {} in {:.2}s",
        store.train.documents(),
        train.len(),
        train.num_tokens(),
        store.eval.documents(),
        eval.len(),
        store.dir.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok((train, eval))
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

/// Names of the eval columns the metrics produce.
fn metric_columns(metrics: &[Box<dyn Metric>]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for m in metrics {
        names.extend(m.compute()?.into_keys());
    }
    Ok(names)
}

/// What the loop measured.
#[derive(Debug, Default, Clone)]
pub struct FitStats {
    /// Real (non-padding) training tokens seen.
    pub tokens: u64,
    /// Wall time in training steps (evals excluded).
    pub train_seconds: f64,
    /// Of that, time in the all-reduces of gradients and step figures
    /// (waiting for the slowest process included).
    pub allreduce_seconds: f64,
}

/// What the run was told: fixed from the first step to the last.
pub struct Settings {
    /// `run.seed`: with a micro-batch's global index, it keys the batch's dropout masks.
    pub seed: u64,
    pub schedule: LrSchedule,
    pub total_steps: u64,
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
    /// What to type to continue the run, shown when it is stopped.
    pub resume_command: String,
}

/// What changes as the run goes. With the model's parameters, it is what a
/// checkpoint holds.
pub struct State {
    /// Optimizer steps done (taken or skipped): the schedule's and the data's position.
    pub step: u64,
    /// AdamW's moments and step count.
    pub optimizer: AdamW,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<LossScaler>,
    /// Metric rows so far.
    pub table: MetricsTable,
    /// The log window not yet written as a row.
    pub window: Window,
    pub stats: FitStats,
}

/// The training loop and everything it owns.
pub struct Trainer {
    pub settings: Settings,
    pub model: Box<dyn MlmModel>,
    pub device: tch::Device,
    /// What forward passes compute in: float32, or bf16 / fp16 under autocast.
    pub compute: tch::Kind,
    /// The other processes of a data-parallel run (or [`dist::Single`]).
    pub collective: Box<dyn Collective>,
    pub vocab: runner_api::VocabInfo,
    pub batches: Arc<BatchMaker>,
    pub eval_set: EvalSet,
    pub metrics: Vec<Box<dyn Metric>>,
    /// The run folder (locked by the first process).
    pub folder: RunDir,
    pub state: State,
    /// Seconds this process spent in metrics that run the model themselves.
    pub model_metric_seconds: f64,
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

impl Trainer {
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
            self.device,
            self.compute,
            &self.eval_set,
            &self.vocab,
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
    /// run keeps every row it logged.
    fn push_row(&mut self, row: Row) -> Result<()> {
        self.state.table.push(row);
        if self.is_main() {
            self.state.table.write(&self.folder.path)?;
        }
        Ok(())
    }

    /// Trains from the state's step to the last one.
    pub fn fit(&mut self) -> Result<()> {
        let started = Instant::now();
        let device = self.device;
        let (rank, world, accum) = (self.collective.rank() as u64, self.world(), self.settings.grad_accum);
        let (first, total) = (self.state.step, self.settings.total_steps);
        let mine = (first..total).flat_map(move |s| (0..accum).map(move |j| (s * world + rank) * accum + j));
        let batches = self.batches.clone().prefetch(mine);
        let bar = if self.is_main() { ProgressBar::new(total) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]")
                .expect("valid template"),
        );
        bar.set_position(first);
        let stop = StopRequests::install()?;
        let mut eval_seconds = 0.0;
        if self.settings.eval_at_start && first == 0 {
            let t = Instant::now();
            let shown = self.eval_row(0, 0.0)?;
            eval_seconds += t.elapsed().as_secs_f64();
            bar.suspend(|| tracing::info!("step 0: {shown}"));
        }
        // Training time of the current log window; eval time is kept out of it.
        let (mut window_secs, mut window_start) = (0.0, Instant::now());
        for step in first..total {
            // 1. learning rate for this step
            let lr = self.settings.schedule.lr(step);
            // 2. this process's micro-batches, gradients accumulated; each weighs 1/accum
            let (mut step_loss, mut step_tokens) = (0.0, 0u64);
            for j in 0..accum {
                let batch = batches.recv().context("the batch thread stopped")??;
                step_tokens += batch.tokens as u64;
                let index = (step * world + rank) * accum + j;
                let out = {
                    let _autocast = Autocast::enter(device, self.compute); // forward only, as torch.autocast
                    let mode = Mode::Train { dropout_key: dropout_key(self.settings.seed, index) };
                    self.model.forward_mlm(&batch.to_device(device), mode)?
                };
                let loss = out.loss / accum as f64;
                match &self.state.scaler {
                    Some(scaler) => scaler.scale(&loss)?.f_backward()?,
                    None => loss.f_backward()?,
                }
                step_loss += loss.f_double_value(&[])?;
            }
            // 3. gradients averaged over processes, then unscaled (fp16)
            let grads = self.state.optimizer.grads();
            let comm = Instant::now();
            dist::buckets::all_reduce_mean(self.collective.as_ref(), &grads)?;
            self.state.stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let found_inf = match &self.state.scaler {
                Some(scaler) => scaler.unscale(&grads)?,
                None => 0.0,
            };
            // One small all-reduce: the step's loss and tokens over every process,
            // the inf flag, and whether any process was asked to stop.
            let comm = Instant::now();
            let asked = stop.received();
            let [loss_sum, tokens, inf_count, stops, interrupts] = self.sum_over_processes([
                step_loss,
                step_tokens as f64,
                found_inf,
                asked.is_some() as u8 as f64,
                (asked == Some(libc::SIGINT)) as u8 as f64,
            ])?;
            self.state.stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let step_loss = loss_sum / world as f64;
            self.state.window.tokens += tokens as u64;
            if self.state.scaler.is_none() && !step_loss.is_finite() {
                return Err(self.non_finite(step, step_loss));
            }
            // 4. clip, update (skipped on an inf/NaN gradient under fp16), clear
            let skip = inf_count > 0.0;
            if !skip {
                self.state.optimizer.clip_grad_norm(self.settings.max_grad_norm)?;
                self.state.optimizer.step(lr)?;
            }
            if let Some(scaler) = &mut self.state.scaler {
                scaler.update(skip)?;
            }
            self.state.optimizer.zero_grad();
            let done = step + 1;
            self.state.step = done;
            // 5. log
            if !skip {
                self.state.window.loss += step_loss;
                self.state.window.steps += 1;
            }
            bar.set_position(done);
            if done % self.settings.log_every == 0 || done == total {
                let secs = window_secs + window_start.elapsed().as_secs_f64();
                let Window { loss, steps, tokens } = std::mem::take(&mut self.state.window);
                let tps = tokens as f64 / secs.max(1e-9);
                let train_loss = (steps > 0).then(|| loss / steps as f64);
                self.state.stats.tokens += tokens;
                self.state.stats.train_seconds += secs;
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
                    ..Default::default()
                };
                self.push_row(row)?;
                window_secs = 0.0;
                window_start = Instant::now();
            }
            // 6. eval (always at the end)
            let due = self.settings.eval_every > 0 && done % self.settings.eval_every == 0;
            if due || done == total {
                window_secs += window_start.elapsed().as_secs_f64();
                let t = Instant::now();
                let shown = self.eval_row(done, started.elapsed().as_secs_f64())?;
                eval_seconds += t.elapsed().as_secs_f64();
                bar.suspend(|| tracing::info!("step {done}: {shown}"));
                window_start = Instant::now();
            }
            // 7. checkpoint: when due, or when a signal asked to stop
            let every = self.settings.checkpoint_every;
            if stops > 0.0 || (every > 0 && done % every == 0) {
                window_secs += window_start.elapsed().as_secs_f64();
                let saved = if self.is_main() { Some(bar.suspend(|| self.save_checkpoint())?) } else { None };
                window_start = Instant::now();
                if stops > 0.0 {
                    bar.abandon();
                    // The signal this process got; another process's when it got none.
                    let signal = asked.unwrap_or(if interrupts > 0.0 { libc::SIGINT } else { libc::SIGTERM });
                    return Err(anyhow::Error::new(Interrupted {
                        signal,
                        name: dist::launch::signal_name(signal),
                        step: done,
                        checkpoint: saved.map_or_else(|| "the run folder (by the first process)".to_string(), |d| d.display().to_string()),
                        command: self.settings.resume_command.clone(),
                    }));
                }
            }
        }
        drop(stop);
        bar.finish_and_clear();
        if self.is_main() {
            let stats = &self.state.stats;
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
        }
        Ok(())
    }

    /// Writes `checkpoints/step-N/` for the current state (first process only).
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let t = Instant::now();
        let model: Vec<(String, tch::Tensor)> = self.model.parameters()?.into_iter().map(|p| (p.name, p.tensor)).collect();
        let mut optimizer = self.state.optimizer.state();
        if let Some(scaler) = &self.state.scaler {
            optimizer.extend(scaler.state());
        }
        let s = &self.state;
        let progress = Progress {
            optimizer_steps: s.optimizer.steps,
            skipped_steps: s.scaler.as_ref().map_or(0, |x| x.skipped),
            window: s.window,
            tokens: s.stats.tokens,
            train_seconds: s.stats.train_seconds,
            allreduce_seconds: s.stats.allreduce_seconds,
            rows: s.table.rows.clone(),
            ..Progress::new(s.step, self.settings.global_batch)
        };
        let dir = checkpoint::save(&self.folder.path, &model, &optimizer, &progress, &self.settings.recipe_yaml, self.settings.checkpoint_keep)?;
        self.folder.discard_aside();
        tracing::info!("checkpoint after step {} written to {} in {:.1}s", s.step, dir.display(), t.elapsed().as_secs_f64());
        Ok(dir)
    }

    /// Takes the state of a checkpoint (whose recipe [`resume::check`] accepted).
    pub fn restore(&mut self, ck: &checkpoint::Checkpoint) -> Result<()> {
        let p = &ck.progress;
        if p.step > self.settings.total_steps {
            bail!(user_msg(format!("{}: the checkpoint is after step {}, beyond the run's {} steps", ck.dir.display(), p.step, self.settings.total_steps)));
        }
        let _guard = tch::no_grad_guard();
        let saved: std::collections::HashMap<&str, &tch::Tensor> = ck.model.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for mut param in self.model.parameters()? {
            let Some(t) = saved.get(param.name.as_str()) else {
                bail!("{}: the checkpoint has no parameter {}", ck.dir.display(), param.name)
            };
            if t.size() != param.tensor.size() {
                bail!("{}: {} has shape {:?} in the checkpoint, {:?} in the model", ck.dir.display(), param.name, t.size(), param.tensor.size());
            }
            param.tensor.f_copy_(t)?;
        }
        self.state.optimizer.load_state(&ck.optimizer, p.optimizer_steps).with_context(|| format!("{}", ck.dir.display()))?;
        if let Some(scaler) = &mut self.state.scaler {
            scaler.load_state(&ck.optimizer, p.skipped_steps).with_context(|| format!("{}", ck.dir.display()))?;
        }
        self.state.step = p.step;
        self.state.window = p.window;
        self.state.stats = FitStats { tokens: p.tokens, train_seconds: p.train_seconds, allreduce_seconds: p.allreduce_seconds };
        self.state.table.rows = p.rows.clone();
        Ok(())
    }

    /// Sends the first process's parameters and state to every other one.
    fn share_state(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut tensors: Vec<tch::Tensor> = self.model.parameters()?.into_iter().map(|p| p.tensor).collect();
        tensors.extend(self.state.optimizer.state().into_iter().map(|(_, t)| t));
        if let Some(scaler) = &self.state.scaler {
            tensors.extend(scaler.state().into_iter().map(|(_, t)| t));
        }
        let s = &self.state;
        let numbers = [s.step, s.optimizer.steps, s.scaler.as_ref().map_or(0, |x| x.skipped)];
        let counts = tch::Tensor::from_slice(&numbers.map(|n| n as i64)).to_device(self.device);
        tensors.push(counts.shallow_clone());
        self.collective.broadcast(&tensors, 0)?;
        let got = Vec::<i64>::try_from(&counts.to_device(tch::Device::Cpu))?;
        self.state.step = got[0] as u64;
        self.state.optimizer.steps = got[1] as u64;
        if let Some(scaler) = &mut self.state.scaler {
            scaler.skipped = got[2] as u64;
        }
        Ok(())
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
        anyhow::anyhow!(
            "training loss became {loss} at step {}; last good checkpoint: {}; the step's batches came from training documents {shown} \
             (counted from 0 in corpus order, held-out documents left out); lower training.lr, set training.max_grad_norm, or check that text",
            step + 1,
            last.map_or_else(|| "none (training.checkpoint.every)".to_string(), |d| d.display().to_string()),
        )
    }

    /// Sums a few numbers over every process (itself alone with one process).
    fn sum_over_processes<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        if self.world() == 1 {
            return Ok(values);
        }
        let t = tch::Tensor::from_slice(&values).to_device(self.device);
        self.collective.all_reduce_sum(std::slice::from_ref(&t))?;
        let summed = Vec::<f64>::try_from(&t.to_device(tch::Device::Cpu))?;
        Ok(summed.try_into().expect("same length"))
    }
}
