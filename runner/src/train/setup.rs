//! Setting a run up: [`build`] turns a resolved recipe into a [`Trainer`] ready
//! to fit: the process's place in the job, `hf://` sources, the run folder and
//! the checkpoint to resume from (its recipe and inputs compared with this
//! run's), the token store's examples, the components,
//! the length of the run, and the state (restored and shared among processes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use runner_api::{ColumnSpec, Metric, ModelSource};

use super::checkpoint::{self, GlobalBatch};
use super::events::RunEvents;
use super::optimizer::{AdamW, AdamWConfig};
use super::inputs::{self, Inputs};
use super::resume;
use super::run_dir::{RunDir, Start};
use super::scaler::{LossScaler, ScalerConfig};
use super::schedule::LrSchedule;
use super::state::{Progress, TrainState};
use super::trainer::{Settings, Trainer};
use crate::data::examples::Examples;
use crate::data::store::Manifest;
use crate::data::{cache, tokenizer, BatchMaker, EvalSet};
use crate::error::user_msg;
use crate::precision::ComputeKind;
use crate::recipe::raw::Precision;
use crate::recipe::{Recipe, TrainLength, Warmup};
use crate::registry::Registry;
use crate::report::MetricsTable;
use crate::{components, device, distributed};

/// A trainer ready to fit, and what the export after it needs.
pub struct Built {
    pub trainer: Trainer,
    /// The run's `tokenizer.json`, copied beside the exported weights.
    pub tokenizer: PathBuf,
    pub steps_per_epoch: f64,
    pub parameters: i64,
    /// What each eval column means, as the metrics declared it.
    pub columns: Vec<ColumnSpec>,
}

/// Builds the trainer for `recipe`; `start` says what to do with results
/// already in the run folder.
pub fn build(recipe: &Recipe, registry: &Registry, start: Start, started: Instant) -> Result<Built> {
    // This process's place in the job (one process unless torchrun, srun or `runner launch` started it).
    let (world, collective) = distributed::join(recipe)?;
    let main = world.is_main();
    let device = distributed::device_of(recipe.device, &world);
    if !recipe.precision_reason.is_empty() && main {
        tracing::info!("precision: {:?} ({})", recipe.precision, recipe.precision_reason);
    }
    if let Some(w) = crate::precision::cpu_warning(recipe.precision, device).filter(|_| main) {
        tracing::warn!("{w}");
    }
    // hf:// models and datasets: fetched into the Hugging Face cache before anything is written
    // (by the first process; the others then find them there).
    let sources = distributed::first_then_others(collective.as_ref(), || crate::recipe::sources(recipe))?;
    let threads = distributed::threads_of(recipe.threads, &world);
    device::set_threads(threads);
    tch::manual_seed(recipe.raw.run.seed as i64);
    let recipe_yaml = serde_yaml::to_string(&recipe.raw)?;
    let t = &recipe.raw.training;
    let global_batch = GlobalBatch { micro_batch: t.batch_size, grad_accum: t.grad_accum_steps as u64, processes: world.world_size as u64 };
    // Every rank must train the same run: refused on all of them, naming the keys, if not.
    let libraries: Vec<&Path> = registry.libraries().iter().map(PathBuf::as_path).collect();
    if world.world_size > 1 {
        let mine = distributed::agree::fingerprint(&recipe_yaml, &cache::key(recipe, &sources)?, &libraries)?;
        distributed::agree::check(collective.as_ref(), device, &mine)?;
    }
    let mut folder = if main { RunDir::open(&recipe.run_dir, start)? } else { RunDir::unlocked(&recipe.run_dir) };
    // The newest complete checkpoint to continue from (first process; the others get its state from it).
    let resume_from = match start {
        Start::Resume if main => resume_point(&mut folder, &recipe.raw)?,
        _ => None,
    };
    // Refused before anything is written when the recipe changed in a way that matters.
    let saved = resume_from.as_deref().map(checkpoint::read_state).transpose()?;
    if let Some((saved, saved_recipe)) = &saved {
        for w in resume::check(saved_recipe, &recipe_yaml, saved.global_batch, global_batch, saved.step())? {
            tracing::warn!("{w}");
        }
    }

    // Data: views over the token store, mapped from the token cache or built
    // there (by one process under the store's lock; the others wait and map it).
    let tok = tokenizer::load(&sources.tokenizer)?;
    let vocab = tokenizer::vocab_info(&tok, &sources.tokenizer)?;
    let (train, held_out, store) = cached_examples(recipe, &sources, registry, &tok, &vocab)?;
    // What the run reads besides its recipe: on resume, compared with what it read
    // when it started, still before anything is written.
    let inputs = Inputs::read(&store, &sources.tokenizer, sources.checkpoint.as_deref())?;
    if let Some((saved, _)) = &saved {
        for w in inputs::check(saved.inputs.as_ref(), &inputs, saved.step())? {
            tracing::warn!("{w}");
        }
    }
    if main {
        runner_recipe::fs::atomic_write_bytes(&recipe.run_dir.join("recipe.yaml"), recipe_yaml.as_bytes())?;
    }
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
    // An hf:// checkpoint's model component is known once its config.json is here.
    let name = match (&model_section.name, &sources.checkpoint) {
        (Some(name), _) => name.clone(),
        (None, Some(dir)) => crate::recipe::files::model_for_checkpoint(&dir.join("config.json"), registry)
            .map_err(|e| user_msg(format!("model.name: {e}")))?
            .ok_or_else(|| user_msg(format!("model.checkpoint: {} has no readable config.json", dir.display())))?,
        (None, None) => "bert".to_string(),
    };
    let model = components::model(registry, &name, &source)?;
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
    if recipe.raw.data.document_attention && !info.document_attention {
        bail!(user_msg(format!(
            "data.document_attention: the `{name}` model does not keep attention within documents \
             (modernbert does); leave data.document_attention out for this model"
        )));
    }
    let metrics =
        components::metrics(registry, &recipe.raw.metrics, &tokenizer::Encoder(&tok), &vocab, info.max_positions as usize)?;

    // Length of the run.
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
        TrainLength::Epochs(e) => {
            let steps = (e * steps_per_epoch).ceil();
            let max = runner_recipe::check::limits::MAX_STEPS;
            if steps > max as f64 {
                bail!(user_msg(format!(
                    "training.epochs: {e} epochs of {steps_per_epoch} steps are {steps} steps, more than {max}; train fewer epochs"
                )));
            }
            (steps as u64).max(1)
        }
    };
    let warmup = match recipe.warmup {
        Warmup::Steps(s) => s.min(total_steps),
        Warmup::Ratio(r) => (r * total_steps as f64).ceil() as u64,
    };
    if main {
        tracing::info!(
            "model `{name}`: {} parameters on {:?}; {} steps of {} x {} x {} sequences (micro-batch x accumulation x processes), \
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
    if main {
        crate::report::write_columns(&recipe.run_dir, &columns)?;
    }
    let mut trainer = Trainer {
        settings: Settings {
            seed: recipe.raw.run.seed,
            schedule: LrSchedule {
                kind: t.schedule,
                peak: t.lr,
                warmup,
                total: total_steps,
                decay: (t.decay_ratio * total_steps as f64).round() as u64,
            },
            grad_accum: t.grad_accum_steps as u64,
            global_batch,
            max_grad_norm: t.max_grad_norm,
            log_every: t.log_every,
            eval_every: recipe.raw.eval.every,
            eval_at_start: recipe.raw.eval.at_start,
            checkpoint_every: t.checkpoint.every,
            checkpoint_keep: t.checkpoint.keep,
            recipe_yaml,
            inputs,
            resume_command: resume_command(&recipe.run_dir, &world),
            device: info.device,
            compute: recipe.precision.compute_kind(),
            vocab,
        },
        collective,
        model,
        batches,
        eval_set,
        metrics,
        table: MetricsTable::new(columns.iter().map(|c| c.name.clone()).collect()).with_loss_scale(fp16),
        folder,
        state: TrainState {
            progress: Progress::default(),
            optimizer,
            scaler: fp16.then(|| LossScaler::new(ScalerConfig::default(), info.device)),
        },
        model_metric_seconds: 0.0,
        events: RunEvents::off(),
    };
    if let Some(dir) = resume_from {
        trainer.restore(&checkpoint::load(&dir)?)?;
        tracing::info!("resuming after step {} from {}", trainer.state.progress.step, dir.display());
    }
    // Every process starts from the first one's weights and state.
    if world.world_size > 1 {
        trainer.share_state()?;
    }
    if main && recipe.raw.run.tensorboard {
        trainer.events = RunEvents::open(recipe, trainer.state.progress.step)?;
    }
    if main {
        tracing::info!("ready to train {:.2}s after start", started.elapsed().as_secs_f64());
    }
    Ok(Built { trainer, tokenizer: sources.tokenizer, steps_per_epoch, parameters: info.num_parameters, columns })
}

/// The checkpoint a resume continues from: the newest complete one. With none,
/// the run starts over (what was in its folder is moved aside); a finished run
/// with none, or one whose every completed checkpoint fails verification, is
/// refused (starting over would replace what may be put back).
fn resume_point(folder: &mut RunDir, raw: &crate::recipe::RawRecipe) -> Result<Option<PathBuf>> {
    let dir = &folder.path;
    if let Some(found) = checkpoint::newest_complete(dir)? {
        return Ok(Some(found));
    }
    let again = format!("runner run {} --overwrite", dir.join("recipe.yaml").display());
    let damaged = checkpoint::damaged(dir)?;
    if !damaged.is_empty() {
        let each: Vec<String> = damaged.iter().map(|(d, why)| format!("{}: {why}", d.display())).collect();
        bail!(user_msg(format!(
            "{}: no checkpoint to continue from: every completed one fails verification (changed or damaged since it was written):\n  {}\n\
             put back an intact copy, or run it again from the start: {again}",
            dir.display(),
            each.join("\n  ")
        )));
    }
    let finished = std::fs::read_to_string(dir.join("summary.json")).is_ok_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok());
    if finished {
        bail!(user_msg(format!(
            "{}: the run has finished and saved no checkpoint to continue from (training.checkpoint.every: {}); to run it again from the start: {again}",
            dir.display(),
            raw.training.checkpoint.every
        )));
    }
    if dir.join("metrics.csv").exists() {
        tracing::warn!("{}: no complete checkpoint to resume from; starting `{}` over", dir.display(), raw.run.name);
        folder.start_over()?;
    }
    Ok(None)
}

/// The command that continues this run.
fn resume_command(run_dir: &Path, world: &distributed::World) -> String {
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
/// the token cache when it holds it, else built there first; and the store's manifest.
fn cached_examples(
    recipe: &Recipe,
    sources: &crate::recipe::Sources,
    registry: &Registry,
    tok: &tokenizers::Tokenizer,
    vocab: &runner_api::VocabInfo,
) -> Result<(Examples, Examples, Manifest)> {
    let t0 = Instant::now();
    let store = cache::store(recipe, sources, registry, tok, vocab.vocab_size)?;
    let train = Examples::new(store.train.clone(), recipe.examples, recipe.max_seq_len, recipe.raw.data.document_attention, vocab);
    let eval = Examples::new(store.eval.clone(), recipe.examples, recipe.max_seq_len, recipe.raw.data.document_attention, vocab);
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
    Ok((train, eval, store.manifest.clone()))
}

/// The eval columns the metrics produce, with what each means.
fn metric_columns(metrics: &[Box<dyn Metric>]) -> Result<Vec<ColumnSpec>> {
    let mut columns = Vec::new();
    for m in metrics {
        let declared = m.columns()?;
        for name in m.compute()?.into_keys() {
            let spec = declared.iter().find(|c| c.name == name).cloned();
            columns.push(spec.unwrap_or_else(|| ColumnSpec::new(name, runner_api::ColumnRole::Detail, false)));
        }
    }
    Ok(columns)
}
