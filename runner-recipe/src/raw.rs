//! The recipe as written in YAML: serde types with `deny_unknown_fields` and
//! defaults. Nothing here checks meaning; `check.rs` and the runner's
//! `recipe/resolve.rs` do that.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `training.precision` (its names and CPU features are in `precision.rs`).
pub use crate::precision::Precision;

/// A whole recipe file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub run: RunSection,
    pub data: DataSection,
    #[serde(default)]
    pub tokenizer: TokenizerSection,
    #[serde(default)]
    pub masking: MaskingSection,
    pub model: ModelSection,
    #[serde(default)]
    pub training: TrainingSection,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default = "default_metrics")]
    pub metrics: Vec<MetricEntry>,
    /// Extra plugin libraries or folders of them, loaded before the recipe is checked.
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
}

/// One entry of `metrics:`: a bare name (`loss`), or a name with options
/// (`{name: probe, options: {...}}`). Written back as it was given.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetricEntry {
    Name(String),
    WithOptions(MetricWithOptions),
}

/// The long form of a metric entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricWithOptions {
    pub name: String,
    #[serde(default)]
    pub options: serde_yaml::Mapping,
}

impl MetricEntry {
    pub fn name(&self) -> &str {
        match self {
            MetricEntry::Name(n) => n,
            MetricEntry::WithOptions(m) => &m.name,
        }
    }

    pub fn options(&self) -> serde_yaml::Mapping {
        match self {
            MetricEntry::Name(_) => serde_yaml::Mapping::new(),
            MetricEntry::WithOptions(m) => m.options.clone(),
        }
    }
}

impl From<&str> for MetricEntry {
    fn from(name: &str) -> Self {
        MetricEntry::Name(name.to_string())
    }
}

/// A string, or a mapping read with `deny_unknown_fields` (an untagged enum
/// would only say that no variant matched).
impl<'de> Deserialize<'de> for MetricEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(MetricEntry::Name(s)),
            v @ serde_yaml::Value::Mapping(_) => {
                serde_yaml::from_value(v).map(MetricEntry::WithOptions).map_err(D::Error::custom)
            }
            other => Err(D::Error::custom(format!(
                "a metric is a name or {{name: ..., options: {{...}}}}, got {}",
                serde_yaml::to_string(&other).unwrap_or_default().trim()
            ))),
        }
    }
}

/// `run:` what the run is called, its seed and where results go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// Write TensorBoard event files into `<run>/tensorboard/` (first process only).
    #[serde(default = "default_true")]
    pub tensorboard: bool,
}

/// How a corpus becomes fixed-length examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExampleMode {
    /// Concatenate documents (separated by `[SEP]`) and cut into full blocks.
    Packed,
    /// One line, truncated, per example; batches padded to their longest line.
    LineByLine,
}

/// `data:` the corpus and how examples are made from it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Dataset component that reads the corpus.
    #[serde(default = "default_dataset")]
    pub dataset: String,
    /// Options for the dataset component.
    #[serde(default)]
    pub options: serde_yaml::Mapping,
    /// Training corpus: a file or a directory.
    pub train: PathBuf,
    /// Held-out corpus. Without it, `holdout` of the train documents are held out.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    #[serde(default = "default_examples")]
    pub examples: ExampleMode,
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Read at most this many training documents (after the holdout split).
    #[serde(default)]
    pub max_train_documents: Option<usize>,
    /// Keep the token store in the token cache (see `data/cache.rs`); false: a
    /// private store in the temporary folder, gone when the run ends.
    #[serde(default = "default_true")]
    pub cache: bool,
    /// Batch examples of similar length together (as transformers'
    /// `group_by_length`), so line-by-line batches carry little padding.
    #[serde(default)]
    pub group_by_length: bool,
    /// Keep attention within each document (packed) or line (line by line) of
    /// a row, positions counting from 0 in each: rows hold several, with no
    /// padding between them (see `data/examples.rs`). The model must support it.
    #[serde(default)]
    pub document_attention: bool,
}

/// `tokenizer:` the WordPiece tokenizer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSection {
    /// A `tokenizer.json`; defaults to the one in the model checkpoint directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// `masking:` the masking strategy and its rates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingSection {
    #[serde(default = "default_strategy")]
    pub strategy: String,
    #[serde(default = "default_mask_rate")]
    pub rate: f64,
    #[serde(default = "default_mask_token_rate")]
    pub mask_token_rate: f64,
    #[serde(default = "default_random_token_rate")]
    pub random_token_rate: f64,
    #[serde(default)]
    pub options: serde_yaml::Mapping,
}

impl Default for MaskingSection {
    fn default() -> Self {
        MaskingSection {
            strategy: default_strategy(),
            rate: default_mask_rate(),
            mask_token_rate: default_mask_token_rate(),
            random_token_rate: default_random_token_rate(),
            options: Default::default(),
        }
    }
}

/// `model:` which model component, and from which checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The model component. Without it: the one that reads the checkpoint's
    /// `config.json` `model_type` (`bert`; `roberta` for `roberta` and
    /// `xlm-roberta`; `distilbert`), or `bert` when there is no checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A Hugging Face model directory. Without it the model is randomly initialised.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    #[serde(default)]
    pub options: serde_yaml::Mapping,
}

/// Learning-rate decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
    /// Trapezoidal, as ModernBERT was trained: constant after warmup, then a
    /// 1 - sqrt decay to zero over the last `decay_ratio` of the steps.
    WarmupStableDecay,
}

/// `training:` optimizer, schedule, length and device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    /// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available).
    pub device: String,
    /// Intra-op threads; defaults to the number of cores.
    pub threads: Option<usize>,
    pub precision: Precision,
    pub batch_size: usize,
    pub grad_accum_steps: usize,
    /// Optimizer steps to run. Exclusive with `epochs`.
    pub max_steps: Option<u64>,
    /// Passes over the training examples (may be fractional). Exclusive with `max_steps`.
    pub epochs: Option<f64>,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub schedule: Schedule,
    pub warmup_steps: Option<u64>,
    pub warmup_ratio: f64,
    /// With `schedule: warmup_stable_decay`: the share of the steps, at the
    /// end, over which the learning rate decays to zero.
    pub decay_ratio: f64,
    /// Global gradient-norm clip; `null` turns clipping off.
    pub max_grad_norm: Option<f64>,
    /// Log a train-loss row every this many steps.
    pub log_every: u64,
    /// Data-parallel settings, used when several processes run the recipe.
    pub distributed: DistributedSection,
    /// Checkpoints to resume from, written during the run.
    pub checkpoint: CheckpointSection,
}

/// `training.checkpoint:` how often the run saves what a resume needs
/// (`checkpoints/step-N/`), and how many of those it keeps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many steps; 0 = only when stopped by a signal.
    pub every: u64,
    /// Keep the newest this many; older ones are deleted once a new one is complete.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection { every: 500, keep: 2 }
    }
}

/// `training.distributed:` how processes talk when `runner launch`, torchrun
/// or srun start several of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// `auto` (NCCL on CUDA, Gloo on the CPU), `gloo` or `nccl`.
    pub backend: DistBackend,
    /// Seconds a collective may wait for the other processes before the run fails.
    pub timeout_s: f64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection { backend: DistBackend::Auto, timeout_s: 300.0 }
    }
}

/// The c10d backend of the process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    Auto,
    Gloo,
    Nccl,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            device: "cpu".into(),
            threads: None,
            precision: Precision::Fp32,
            batch_size: 32,
            grad_accum_steps: 1,
            max_steps: None,
            epochs: None,
            lr: 5e-5,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            schedule: Schedule::Linear,
            warmup_steps: None,
            warmup_ratio: 0.0,
            decay_ratio: 0.1,
            max_grad_norm: Some(1.0),
            log_every: 10,
            distributed: DistributedSection::default(),
            checkpoint: CheckpointSection::default(),
        }
    }
}

/// `eval:` when and on how much held-out text to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate every this many steps (and always at the end); 0 = only at the end.
    pub every: u64,
    /// Also evaluate before the first step.
    pub at_start: bool,
    pub batch_size: usize,
    /// Evaluate on at most this many held-out sequences.
    pub max_sequences: Option<usize>,
    /// Seed of the holdout split and of the fixed eval masks; independent of
    /// `run.seed` so eval loss compares across runs.
    pub seed: u64,
    /// Masking rate of the eval masks; defaults to `masking.rate`. Fixing it (say at
    /// 0.15) makes eval loss comparable across runs trained at different rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub masking_rate: Option<f64>,
}

impl Default for EvalSection {
    fn default() -> Self {
        EvalSection { every: 0, at_start: true, batch_size: 32, max_sequences: Some(512), seed: 0, masking_rate: None }
    }
}

fn default_true() -> bool {
    true
}
fn default_output_dir() -> PathBuf {
    "results".into()
}
fn default_dataset() -> String {
    "text".into()
}
fn default_holdout() -> f64 {
    0.05
}
fn default_examples() -> ExampleMode {
    ExampleMode::Packed
}
fn default_max_seq_len() -> usize {
    128
}
fn default_strategy() -> String {
    "bert".into()
}
fn default_mask_rate() -> f64 {
    0.15
}
fn default_mask_token_rate() -> f64 {
    0.8
}
fn default_random_token_rate() -> f64 {
    0.1
}
fn default_metrics() -> Vec<MetricEntry> {
    vec!["loss".into(), "perplexity".into(), "accuracy".into()]
}
