//! Raw recipe -> resolved [`Recipe`]: values checked (`check.rs`), files checked
//! (`files.rs`: corpora, the results folder, the model folder and tokenizer
//! against each other), component names and options checked against the
//! registry. All problems are collected and reported together, one per line,
//! each naming its key; `run` calls this before it writes anything.

use std::path::{Path, PathBuf};

use anyhow::Result;

use runner_api::{ComponentKind, MaskingRates, Options};

use super::check::{self, EvalSource, Problems, TrainLength, Warmup};
use super::files;
use super::raw::{ExampleMode, RawRecipe};
use crate::error::user_msg;
use crate::registry::Registry;

/// A checked recipe: the only form the engine reads.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe after overrides, defaults filled in (written to the run directory).
    pub raw: RawRecipe,
    pub source: PathBuf,
    pub run_dir: PathBuf,
    pub device: tch::Device,
    pub threads: usize,
    /// `training.precision`, with `auto` resolved for this machine.
    pub precision: crate::recipe::raw::Precision,
    /// Why `auto` chose what it did (empty when the recipe named a precision).
    pub precision_reason: String,
    pub dataset: String,
    pub dataset_options: Options,
    pub train_path: PathBuf,
    pub eval_source: EvalSource,
    pub examples: ExampleMode,
    pub max_seq_len: usize,
    /// For an `hf://` checkpoint without `tokenizer.path`, `<hf://...>/tokenizer.json`
    /// until `recipe::sources` finds it in the downloaded snapshot.
    pub tokenizer: PathBuf,
    pub masking_rates: MaskingRates,
    pub length: TrainLength,
    pub warmup: Warmup,
}

/// A corpus path: an `hf://` dataset is checked without downloading (see
/// `hub::check_recipe_path`); a local one must be a file or folder that holds
/// text (see `files::local_corpus`). True for `hf://`.
fn corpus(p: &mut Problems, key: &str, path: &Path, what: &str) -> bool {
    match crate::hub::check_recipe_path(path, crate::hub::RepoType::Dataset) {
        None => {
            files::local_corpus(p, key, path, what);
            false
        }
        Some(checked) => {
            if let Err(e) = checked {
                p.push(key, e);
            }
            true
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
pub fn parse_device(s: &str) -> Result<tch::Device, String> {
    let cuda = |i: usize| {
        crate::device::load_cuda();
        if tch::Cuda::is_available() && i < tch::Cuda::device_count() as usize {
            Ok(tch::Device::Cuda(i))
        } else {
            Err(format!("`{s}` asked for, but this machine has {} CUDA device(s) usable by libtorch", tch::Cuda::device_count()))
        }
    };
    match s {
        "cpu" => Ok(tch::Device::Cpu),
        "auto" => Ok(cuda(0).unwrap_or(tch::Device::Cpu)),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => cuda(i),
            None => Err(format!("unknown device `{other}` (cpu, cuda, cuda:N or auto)")),
        },
    }
}

/// Checks a raw recipe and resolves it. `source` is the recipe file, for messages.
pub fn resolve(raw: RawRecipe, source: &Path, registry: &Registry) -> Result<Recipe> {
    let mut p = Problems::default();
    let checked = check::values(&raw, &mut p);
    let run_dir = raw.run.output_dir.join(&raw.run.name);
    if p.0.iter().all(|e| !e.starts_with("run.name")) {
        files::output_dir(&mut p, &raw.run.output_dir, &run_dir, raw.run.tensorboard);
    }

    // data
    let d = &raw.data;
    match registry.get(ComponentKind::Dataset, &d.dataset) {
        Err(e) => p.push("data.dataset", e),
        Ok(c) => {
            if let Err(e) = (c.component.check)(&d.options) {
                p.push("data.options", format!("{e:#}"));
            }
        }
    }
    let mut from_hub = corpus(&mut p, "data.train", &d.train, "training corpus");
    if let Some(path) = &d.eval {
        from_hub |= corpus(&mut p, "data.eval", path, "eval corpus");
    }
    p.check(!from_hub || d.dataset == "parquet", "data.dataset", || {
        format!("hf:// datasets are read as parquet files: set data.dataset: parquet (got `{}`)", d.dataset)
    });

    // model and tokenizer
    let m = &raw.model;
    let hub_model = m.checkpoint.as_deref().is_some_and(|c| crate::hub::as_hub(c).is_some());
    // The model component: the one named, else the one that reads the local
    // checkpoint's model_type (an hf:// checkpoint's once it is downloaded), else bert.
    let model_name = match (&m.name, &m.checkpoint) {
        (Some(name), _) => Some(name.clone()),
        (None, Some(_)) if hub_model => None,
        (None, Some(dir)) => files::model_for_checkpoint(&dir.join("config.json"), registry).unwrap_or_else(|e| {
            p.push("model.name", e);
            None
        }),
        (None, None) => Some("bert".to_string()),
    };
    let mut model_options_ok = true;
    if let Some(name) = &model_name {
        match registry.get(ComponentKind::Model, name) {
            Err(e) => p.push("model.name", e),
            Ok(c) => {
                if let Err(e) = (c.component.check)(&m.options) {
                    p.push("model.options", format!("{e:#}"));
                    model_options_ok = false;
                }
            }
        }
    }
    let config_overrides = m.options.get("config").and_then(serde_yaml::Value::as_mapping);
    let mut limits = files::ModelLimits::default();
    let mut local_model = None;
    if let Some(dir) = &m.checkpoint {
        if let Some(checked) = crate::hub::check_recipe_path(dir, crate::hub::RepoType::Model) {
            // Downloaded at the start of `run`; its files are checked then.
            if let Err(e) = checked {
                p.push("model.checkpoint", e);
            }
        } else {
            limits = files::model_folder(&mut p, dir, config_overrides);
            local_model = Some(dir.join("config.json"));
            let check = model_name.as_deref().and_then(|n| registry.get(ComponentKind::Model, n).ok()).and_then(|c| c.component.checkpoint_check.clone());
            if let (Some(check), true) = (check, model_options_ok && dir.join("config.json").is_file()) {
                if let Err(e) = check(&m.options, dir) {
                    p.push("model.options", format!("{e:#}"));
                }
            }
        }
    }
    if let Some(positions) = limits.max_positions {
        p.check(d.max_seq_len as i64 <= positions, "data.max_seq_len", || {
            let from = if limits.positions_after_padding {
                "max_position_embeddings less padding_idx + 1, where positions start"
            } else {
                "max_position_embeddings"
            };
            format!("{} is longer than the model's {positions} positions ({from})", d.max_seq_len)
        });
    }
    let tokenizer = match (&raw.tokenizer.path, &m.checkpoint) {
        (Some(t), _) => {
            if t.is_file() {
                files::tokenizer(&mut p, "tokenizer.path", t, limits, local_model.clone());
            } else {
                p.push("tokenizer.path", format!("tokenizer file {} does not exist", t.display()));
            }
            t.clone()
        }
        (None, Some(dir)) => {
            let t = dir.join("tokenizer.json");
            if t.is_file() {
                files::tokenizer(&mut p, "tokenizer.path", &t, limits, local_model.clone());
            } else if !hub_model && dir.is_dir() {
                p.push("tokenizer.path", format!("not given, and {} has no tokenizer.json", dir.display()));
            }
            t
        }
        (None, None) => {
            p.push("tokenizer.path", "required when model.checkpoint is not given");
            PathBuf::new()
        }
    };

    // masking
    let mk = &raw.masking;
    match registry.get(ComponentKind::Masker, &mk.strategy) {
        Err(e) => p.push("masking.strategy", e),
        Ok(c) => {
            if let Err(e) = (c.component.check)(&mk.options) {
                p.push("masking.options", format!("{e:#}"));
            }
        }
    }

    // training
    let t = &raw.training;
    let threads = t.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let device = parse_device(&t.device).unwrap_or_else(|e| {
        p.push("training.device", e);
        tch::Device::Cpu
    });
    let (precision, precision_reason) = crate::precision::choose(t.precision, device);
    if t.distributed.backend == crate::recipe::raw::DistBackend::Nccl && !device.is_cuda() {
        p.push("training.distributed.backend", "nccl needs training.device: cuda (use gloo on the CPU)".to_string());
    }

    // metrics
    for (i, m) in raw.metrics.iter().enumerate() {
        match registry.get(ComponentKind::Metric, m.name()) {
            Err(e) => p.push(&format!("metrics[{i}]"), e),
            Ok(c) => {
                if let Err(e) = (c.component.check)(&m.options()) {
                    p.push(&format!("metrics[{i}].options"), format!("{e:#}"));
                }
                // A metric's `max_seq_len` option is tokens per sequence of its own
                // text (a probe's): the model takes no more than its positions.
                let own = m.options().get("max_seq_len").and_then(serde_yaml::Value::as_u64);
                if let (Some(n), Some(positions)) = (own, limits.max_positions) {
                    p.check(n as i64 <= positions && n <= i64::MAX as u64, &format!("metrics[{i}].options.max_seq_len"), || {
                        format!("{n} is longer than the model's {positions} positions")
                    });
                }
            }
        }
    }

    if !p.0.is_empty() {
        let n = p.0.len();
        let list = p.0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n");
        return Err(user_msg(format!(
            "{}: {n} problem{} in this recipe:\n{list}",
            source.display(),
            if n == 1 { "" } else { "s" }
        )));
    }

    let mut raw = raw;
    // Written to the run folder as chosen, so a resume builds the same model.
    raw.model.name = model_name;
    Ok(Recipe {
        run_dir,
        source: source.to_path_buf(),
        device,
        threads,
        precision,
        precision_reason,
        dataset: raw.data.dataset.clone(),
        dataset_options: raw.data.options.clone(),
        train_path: raw.data.train.clone(),
        eval_source: checked.eval_source,
        examples: raw.data.examples,
        max_seq_len: raw.data.max_seq_len,
        tokenizer,
        masking_rates: MaskingRates {
            rate: raw.masking.rate,
            mask_token: raw.masking.mask_token_rate,
            random_token: raw.masking.random_token_rate,
        },
        length: checked.length,
        warmup: checked.warmup,
        raw,
    })
}
