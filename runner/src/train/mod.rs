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

pub mod optimizer;
pub mod scaler;
pub mod schedule;

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
use crate::dist::Collective;
use crate::recipe::raw::Precision;
use crate::recipe::{Recipe, TrainLength, Warmup};
use crate::registry::Registry;
use crate::report::{MetricsTable, Row, Summary};
use crate::{components, device, dist};
use optimizer::{AdamW, AdamWConfig};
use scaler::{LossScaler, ScalerConfig};
use schedule::LrSchedule;

/// Where a finished run left its results.
#[derive(Debug)]
pub struct RunOutcome {
    pub run_dir: PathBuf,
    pub summary: Summary,
    /// Whether this process wrote the results (the first of a data-parallel run).
    pub is_main: bool,
}

/// Runs a recipe end to end: data, model, training, eval, reports, checkpoint.
pub fn run(recipe: &Recipe, registry: &Registry, overwrite: bool) -> Result<RunOutcome> {
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
    let sources = dist::first_then_others(collective.as_ref(), || crate::hub::sources(recipe))?;
    let threads = dist::threads_of(recipe.threads, &world);
    device::set_threads(threads);
    tch::manual_seed(recipe.raw.run.seed as i64);
    if main {
        prepare_run_dir(&recipe.run_dir, overwrite)?;
        std::fs::write(recipe.run_dir.join("recipe.yaml"), serde_yaml::to_string(&recipe.raw)?)
            .with_context(|| format!("cannot write {}", recipe.run_dir.join("recipe.yaml").display()))?;
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
    // Every process starts from the first one's weights.
    if world.world_size > 1 {
        let _guard = tch::no_grad_guard();
        let tensors: Vec<tch::Tensor> = model.parameters()?.into_iter().map(|p| p.tensor).collect();
        collective.broadcast(&tensors, 0)?;
    }
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
    if main {
        tracing::info!("ready to train {:.2}s after start", started.elapsed().as_secs_f64());
    }
    let fp16 = recipe.precision == Precision::Fp16;
    let mut trainer = Trainer {
        compute: recipe.precision.compute_kind(),
        scaler: fp16.then(|| LossScaler::new(ScalerConfig::default(), info.device)),
        collective,
        seed: recipe.raw.run.seed,
        schedule: LrSchedule { kind: t.schedule, peak: t.lr, warmup, total: total_steps },
        total_steps,
        grad_accum: t.grad_accum_steps as u64,
        max_grad_norm: t.max_grad_norm,
        log_every: t.log_every,
        eval_every: recipe.raw.eval.every,
        eval_at_start: recipe.raw.eval.at_start,
        table: MetricsTable::new(metric_columns(&metrics)?).with_loss_scale(fp16),
        device: info.device,
        vocab,
        model,
        optimizer,
        batches,
        eval_set,
        metrics,
        run_dir: recipe.run_dir.clone(),
    };
    let fit = trainer.fit()?;
    let checkpoint = recipe.run_dir.join("checkpoint");
    if !main {
        let summary = Summary { run: recipe.raw.run.name.clone(), ..Default::default() };
        return Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: false });
    }

    // Checkpoint in Hugging Face layout, with the tokenizer beside it.
    trainer.model.save_pretrained(&checkpoint)?;
    copy_tokenizer_files(&sources.tokenizer, &checkpoint)?;

    let table = &trainer.table;
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
    Ok(RunOutcome { run_dir: recipe.run_dir.clone(), summary, is_main: true })
}

/// Train and eval examples: views over the recipe's token store, mapped from
/// the token cache when it holds it, else built there first.
fn cached_examples(
    recipe: &Recipe,
    sources: &crate::hub::Sources,
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

/// Creates the run directory. An existing one with results is kept unless
/// `overwrite` is given: nothing already written is lost by accident.
fn prepare_run_dir(dir: &Path, overwrite: bool) -> Result<()> {
    let has_results = dir.join("summary.json").exists() || dir.join("metrics.csv").exists();
    if has_results && !overwrite {
        bail!(user_msg(format!(
            "run.name: {} already holds results; pick another name (--set run.name=...) or pass --overwrite",
            dir.display()
        )));
    }
    if dir.exists() && overwrite {
        for f in ["metrics.csv", "metrics.parquet", "summary.csv", "summary.json", "recipe.yaml"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let _ = std::fs::remove_dir_all(dir.join("checkpoint"));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
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
#[derive(Debug, Default)]
pub struct FitStats {
    /// Real (non-padding) training tokens seen.
    pub tokens: u64,
    /// Wall time in training steps (evals excluded).
    pub train_seconds: f64,
    /// Of that, time in the all-reduces of gradients and step figures
    /// (waiting for the slowest process included).
    pub allreduce_seconds: f64,
}

/// The training loop and everything it owns.
pub struct Trainer {
    pub model: Box<dyn MlmModel>,
    pub device: tch::Device,
    /// What forward passes compute in: float32, or bf16 / fp16 under autocast.
    pub compute: tch::Kind,
    /// Dynamic loss scaling, for fp16.
    pub scaler: Option<LossScaler>,
    /// The other processes of a data-parallel run (or [`dist::Single`]).
    pub collective: Box<dyn Collective>,
    /// `run.seed`: with a micro-batch's global index, it keys the batch's dropout masks.
    pub seed: u64,
    pub vocab: runner_api::VocabInfo,
    pub optimizer: AdamW,
    pub schedule: LrSchedule,
    pub batches: Arc<BatchMaker>,
    pub eval_set: EvalSet,
    pub metrics: Vec<Box<dyn Metric>>,
    pub table: MetricsTable,
    pub run_dir: PathBuf,
    pub total_steps: u64,
    pub grad_accum: u64,
    pub max_grad_norm: Option<f64>,
    pub log_every: u64,
    pub eval_every: u64,
    pub eval_at_start: bool,
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
        (step * self.grad_accum * self.world()) as f64 / self.batches.batches_per_epoch() as f64
    }

    /// Evaluates, adds the row, and (first process) rewrites the metrics tables.
    fn eval_row(&mut self, step: u64, elapsed: f64) -> Result<String> {
        let values = evaluate(
            self.model.as_ref(),
            self.device,
            self.compute,
            &self.eval_set,
            &self.vocab,
            &mut self.metrics,
            self.collective.as_ref(),
        )?;
        let shown = values.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ");
        let row = Row { step, epoch: self.epoch_at(step), lr: self.schedule.lr(step), elapsed_s: elapsed, eval: values, ..Default::default() };
        self.table.push(row);
        if self.is_main() {
            self.table.write(&self.run_dir)?;
        }
        Ok(shown)
    }

    pub fn fit(&mut self) -> Result<FitStats> {
        let started = Instant::now();
        let device = self.device;
        let (rank, world, accum) = (self.collective.rank() as u64, self.world(), self.grad_accum);
        let mine = (0..self.total_steps).flat_map(move |s| (0..accum).map(move |j| (s * world + rank) * accum + j));
        let batches = self.batches.clone().prefetch(mine);
        let bar = if self.is_main() { ProgressBar::new(self.total_steps) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} [{elapsed_precise} < {eta_precise}]")
                .expect("valid template"),
        );
        let mut stats = FitStats::default();
        let mut eval_seconds = 0.0;
        if self.eval_at_start {
            let t = Instant::now();
            let shown = self.eval_row(0, 0.0)?;
            eval_seconds += t.elapsed().as_secs_f64();
            bar.suspend(|| tracing::info!("step 0: {shown}"));
        }
        let (mut window_loss, mut window_steps, mut window_tokens) = (0.0, 0u64, 0u64);
        // Training time of the current log window; eval time is kept out of it.
        let (mut window_secs, mut window_start) = (0.0, Instant::now());
        for step in 0..self.total_steps {
            // 1. learning rate for this step
            let lr = self.schedule.lr(step);
            // 2. this process's micro-batches, gradients accumulated; each weighs 1/accum
            let (mut step_loss, mut step_tokens) = (0.0, 0u64);
            for j in 0..accum {
                let batch = batches.recv().context("the batch thread stopped")??;
                step_tokens += batch.tokens as u64;
                let index = (step * world + rank) * accum + j;
                let out = {
                    let _autocast = Autocast::enter(device, self.compute); // forward only, as torch.autocast
                    let mode = Mode::Train { dropout_key: dropout_key(self.seed, index) };
                    self.model.forward_mlm(&batch.to_device(device), mode)?
                };
                let loss = out.loss / accum as f64;
                match &self.scaler {
                    Some(scaler) => scaler.scale(&loss)?.f_backward()?,
                    None => loss.f_backward()?,
                }
                step_loss += loss.f_double_value(&[])?;
            }
            // 3. gradients averaged over processes, then unscaled (fp16)
            let grads = self.optimizer.grads();
            let comm = Instant::now();
            dist::buckets::all_reduce_mean(self.collective.as_ref(), &grads)?;
            stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let found_inf = match &self.scaler {
                Some(scaler) => scaler.unscale(&grads)?,
                None => 0.0,
            };
            // One small all-reduce: the step's loss and tokens over every process, and the inf flag.
            let comm = Instant::now();
            let [loss_sum, tokens, inf_count] = self.sum_over_processes([step_loss, step_tokens as f64, found_inf])?;
            stats.allreduce_seconds += comm.elapsed().as_secs_f64();
            let step_loss = loss_sum / world as f64;
            window_tokens += tokens as u64;
            if self.scaler.is_none() && !step_loss.is_finite() {
                bail!("training loss became {step_loss} at step {}: lower training.lr or set training.max_grad_norm", step + 1);
            }
            // 4. clip, update (skipped on an inf/NaN gradient under fp16), clear
            let skip = inf_count > 0.0;
            if !skip {
                self.optimizer.clip_grad_norm(self.max_grad_norm)?;
                self.optimizer.step(lr)?;
            }
            if let Some(scaler) = &mut self.scaler {
                scaler.update(skip)?;
            }
            self.optimizer.zero_grad();
            // 5. log
            let done = step + 1;
            if !skip {
                window_loss += step_loss;
                window_steps += 1;
            }
            bar.set_position(done);
            if done % self.log_every == 0 || done == self.total_steps {
                let secs = window_secs + window_start.elapsed().as_secs_f64();
                let tps = window_tokens as f64 / secs.max(1e-9);
                let train_loss = (window_steps > 0).then(|| window_loss / window_steps as f64);
                stats.tokens += window_tokens;
                stats.train_seconds += secs;
                bar.set_message(match train_loss {
                    Some(l) => format!("loss {l:.4}, {tps:.0} tok/s"),
                    None => format!("{tps:.0} tok/s"),
                });
                self.table.push(Row {
                    step: done,
                    epoch: self.epoch_at(done),
                    lr,
                    train_loss,
                    tokens_per_s: Some(tps),
                    elapsed_s: started.elapsed().as_secs_f64(),
                    loss_scale: self.scaler.as_ref().map(|s| s.value()),
                    skipped_steps: self.scaler.as_ref().map(|s| s.skipped),
                    ..Default::default()
                });
                (window_loss, window_steps, window_tokens, window_secs) = (0.0, 0, 0, 0.0);
                window_start = Instant::now();
            }
            // 6. eval (always at the end)
            let due = self.eval_every > 0 && done % self.eval_every == 0;
            if due || done == self.total_steps {
                window_secs += window_start.elapsed().as_secs_f64();
                let t = Instant::now();
                let shown = self.eval_row(done, started.elapsed().as_secs_f64())?;
                eval_seconds += t.elapsed().as_secs_f64();
                bar.suspend(|| tracing::info!("step {done}: {shown}"));
                window_start = Instant::now();
            }
        }
        bar.finish_and_clear();
        if self.is_main() {
            tracing::info!(
                "trained {} steps in {:.1}s ({:.1}s in eval), {:.0} tokens/s{}{}",
                self.total_steps,
                started.elapsed().as_secs_f64(),
                eval_seconds,
                stats.tokens as f64 / stats.train_seconds.max(1e-9),
                if world > 1 {
                    format!(" on {world} processes, {:.1}% of training time in all-reduce", 100.0 * stats.allreduce_seconds / stats.train_seconds.max(1e-9))
                } else {
                    String::new()
                },
                match &self.scaler {
                    Some(s) => format!(", {} steps skipped for inf/NaN gradients, loss scale {}", s.skipped, s.value()),
                    None => String::new(),
                }
            );
        }
        Ok(stats)
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
