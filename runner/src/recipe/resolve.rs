//! Raw recipe -> resolved [`Recipe`]: values checked, paths found, component
//! names and options checked against the registry. All problems are collected
//! and reported together, one per line, each naming its key.

use std::path::{Path, PathBuf};

use anyhow::Result;

use runner_api::{ComponentKind, MaskingRates, Options};

use super::raw::{ExampleMode, RawRecipe};
use crate::error::user_msg;
use crate::registry::Registry;

/// Where eval text comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalSource {
    /// A separate held-out corpus.
    Path(PathBuf),
    /// This fraction of the training documents, chosen with `eval.seed`.
    Holdout(f64),
}

/// How long training runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainLength {
    Steps(u64),
    Epochs(f64),
}

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
    /// until `hub::sources` finds it in the downloaded snapshot.
    pub tokenizer: PathBuf,
    pub masking_rates: MaskingRates,
    pub length: TrainLength,
    pub warmup: Warmup,
}

/// Warmup length, before the number of steps is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Steps(u64),
    Ratio(f64),
}

struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, key: &str, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{key}: {}", msg()));
        }
    }
    fn push(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }
}

fn probability(p: &mut Problems, key: &str, v: f64) {
    p.check((0.0..=1.0).contains(&v), key, || format!("must be in [0, 1], got {v}"));
}

fn existing(p: &mut Problems, key: &str, path: &Path, what: &str) {
    if !path.exists() {
        p.push(key, format!("{what} {} does not exist", path.display()));
    }
}

/// A corpus path: an `hf://` dataset is checked without downloading (see
/// `hub::check_recipe_path`); a local one must exist. True for `hf://`.
fn corpus(p: &mut Problems, key: &str, path: &Path, what: &str) -> bool {
    match crate::hub::check_recipe_path(path, crate::hub::RepoType::Dataset) {
        None => {
            existing(p, key, path, what);
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
    let mut p = Problems(Vec::new());

    // run
    let name = &raw.run.name;
    p.check(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && name != "." && name != "..",
        "run.name",
        || format!("`{name}` must be a non-empty name of letters, digits, '-', '_' or '.'"),
    );

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
    let eval_source = match &d.eval {
        Some(path) => {
            from_hub |= corpus(&mut p, "data.eval", path, "eval corpus");
            EvalSource::Path(path.clone())
        }
        None => {
            p.check(d.holdout > 0.0 && d.holdout < 1.0, "data.holdout", || {
                format!("must be in (0, 1) when data.eval is not given, got {}", d.holdout)
            });
            EvalSource::Holdout(d.holdout)
        }
    };
    p.check(!from_hub || d.dataset == "parquet", "data.dataset", || {
        format!("hf:// datasets are read as parquet files: set data.dataset: parquet (got `{}`)", d.dataset)
    });
    p.check(d.max_seq_len >= 8, "data.max_seq_len", || format!("must be at least 8, got {}", d.max_seq_len));
    if let Some(n) = d.max_train_documents {
        p.check(n > 0, "data.max_train_documents", || "must be positive".into());
    }

    // model and tokenizer
    let m = &raw.model;
    match registry.get(ComponentKind::Model, &m.name) {
        Err(e) => p.push("model.name", e),
        Ok(c) => {
            if let Err(e) = (c.component.check)(&m.options) {
                p.push("model.options", format!("{e:#}"));
            }
        }
    }
    if let Some(dir) = &m.checkpoint {
        if let Some(checked) = crate::hub::check_recipe_path(dir, crate::hub::RepoType::Model) {
            // Downloaded at the start of `run`; its tokenizer.json is looked for then.
            if let Err(e) = checked {
                p.push("model.checkpoint", e);
            }
        } else if !dir.is_dir() {
            p.push("model.checkpoint", format!("model directory {} does not exist", dir.display()));
        } else {
            for f in ["config.json", "model.safetensors"] {
                if !dir.join(f).is_file() {
                    p.push("model.checkpoint", format!("{} has no {f}", dir.display()));
                }
            }
        }
    }
    let tokenizer = match (&raw.tokenizer.path, &m.checkpoint) {
        (Some(t), _) => {
            existing(&mut p, "tokenizer.path", t, "tokenizer file");
            t.clone()
        }
        (None, Some(dir)) => {
            let t = dir.join("tokenizer.json");
            if dir.is_dir() && !t.is_file() {
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
    probability(&mut p, "masking.rate", mk.rate);
    probability(&mut p, "masking.mask_token_rate", mk.mask_token_rate);
    probability(&mut p, "masking.random_token_rate", mk.random_token_rate);
    p.check(mk.mask_token_rate + mk.random_token_rate <= 1.0 + 1e-9, "masking.random_token_rate", || {
        format!(
            "mask_token_rate + random_token_rate must be at most 1, got {} + {}",
            mk.mask_token_rate, mk.random_token_rate
        )
    });

    // training
    let t = &raw.training;
    p.check(t.batch_size > 0, "training.batch_size", || "must be positive".into());
    p.check(t.grad_accum_steps > 0, "training.grad_accum_steps", || "must be positive".into());
    let length = match (t.max_steps, t.epochs) {
        (Some(_), Some(_)) => {
            p.push("training.max_steps", "give max_steps or epochs, not both");
            TrainLength::Epochs(1.0)
        }
        (Some(s), None) => {
            p.check(s > 0, "training.max_steps", || "must be positive".into());
            TrainLength::Steps(s)
        }
        (None, Some(e)) => {
            p.check(e > 0.0, "training.epochs", || format!("must be positive, got {e}"));
            TrainLength::Epochs(e)
        }
        (None, None) => TrainLength::Epochs(1.0),
    };
    p.check(t.lr > 0.0 && t.lr.is_finite(), "training.lr", || format!("must be positive, got {}", t.lr));
    p.check(t.weight_decay >= 0.0, "training.weight_decay", || format!("must be >= 0, got {}", t.weight_decay));
    for (key, b) in [("training.adam_beta1", t.adam_beta1), ("training.adam_beta2", t.adam_beta2)] {
        p.check((0.0..1.0).contains(&b), key, || format!("must be in [0, 1), got {b}"));
    }
    p.check(t.adam_eps > 0.0, "training.adam_eps", || format!("must be positive, got {}", t.adam_eps));
    let warmup = match t.warmup_steps {
        Some(s) => Warmup::Steps(s),
        None => {
            probability(&mut p, "training.warmup_ratio", t.warmup_ratio);
            Warmup::Ratio(t.warmup_ratio)
        }
    };
    if let Some(c) = t.max_grad_norm {
        p.check(c > 0.0, "training.max_grad_norm", || format!("must be positive (or null for no clipping), got {c}"));
    }
    p.check(t.log_every > 0, "training.log_every", || "must be positive".into());
    p.check(t.checkpoint.keep > 0, "training.checkpoint.keep", || "must be at least 1 (set training.checkpoint.every: 0 to save only when stopped)".into());
    let threads = t.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    p.check(threads > 0, "training.threads", || "must be positive".into());
    let device = parse_device(&t.device).unwrap_or_else(|e| {
        p.push("training.device", e);
        tch::Device::Cpu
    });
    let (precision, precision_reason) = crate::precision::choose(t.precision, device);
    let d = &t.distributed;
    p.check(d.timeout_s > 0.0 && d.timeout_s.is_finite(), "training.distributed.timeout_s", || {
        format!("must be a positive number of seconds, got {}", d.timeout_s)
    });
    if d.backend == crate::recipe::raw::DistBackend::Nccl && !device.is_cuda() {
        p.push("training.distributed.backend", "nccl needs training.device: cuda (use gloo on the CPU)".to_string());
    }

    // eval and metrics
    p.check(raw.eval.batch_size > 0, "eval.batch_size", || "must be positive".into());
    if let Some(r) = raw.eval.masking_rate {
        probability(&mut p, "eval.masking_rate", r);
    }
    if let Some(n) = raw.eval.max_sequences {
        p.check(n > 0, "eval.max_sequences", || "must be positive".into());
    }
    p.check(!raw.metrics.is_empty(), "metrics", || "list at least one metric".into());
    for (i, m) in raw.metrics.iter().enumerate() {
        match registry.get(ComponentKind::Metric, m.name()) {
            Err(e) => p.push(&format!("metrics[{i}]"), e),
            Ok(c) => {
                if let Err(e) = (c.component.check)(&m.options()) {
                    p.push(&format!("metrics[{i}].options"), format!("{e:#}"));
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

    Ok(Recipe {
        run_dir: raw.run.output_dir.join(&raw.run.name),
        source: source.to_path_buf(),
        device,
        threads,
        precision,
        precision_reason,
        dataset: raw.data.dataset.clone(),
        dataset_options: raw.data.options.clone(),
        train_path: raw.data.train.clone(),
        eval_source,
        examples: raw.data.examples,
        max_seq_len: raw.data.max_seq_len,
        tokenizer,
        masking_rates: MaskingRates {
            rate: raw.masking.rate,
            mask_token: raw.masking.mask_token_rate,
            random_token: raw.masking.random_token_rate,
        },
        length,
        warmup,
        raw,
    })
}
