//! The component contract shared by the runner and every plugin.
//!
//! A recipe composes four kinds of components, each looked up by name in a
//! [`Registrar`]: a [`Dataset`] reads documents, a [`Masker`] chooses what the
//! model must predict, an [`MlmModel`] predicts it, and a [`Metric`] scores the
//! predictions at eval time. Plugins see only this crate; the runner's internals
//! stay private to it.
//!
//! Component parameters arrive as the YAML mapping found under `options:` in
//! the recipe; [`parse_options`] turns them into a plugin's own typed struct and
//! names the offending key on error.
//!
//! A plugin is a `cdylib` that calls [`declare_plugin!`]; the runner loads it
//! by path and checks its [`PluginDeclaration`] before calling into it. Every
//! call into a component goes through the guards in [`guard`], compiled into
//! the plugin itself, so a panic inside a plugin comes back as an error.

pub mod guard;
pub mod plugin;
pub mod text;
pub mod words;
pub mod wrap;

pub use plugin::{PluginDeclaration, StrRef, ABI_VERSION, PLUGIN_MAGIC};
pub use words::{PieceEdges, WordMarks};

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::de::DeserializeOwned;

pub use rand::RngCore;
pub use tch;

/// Label value for positions that carry no loss (the PyTorch/transformers convention).
pub const IGNORE_INDEX: i64 = -100;

impl std::fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One documented parameter of a component, shown by `runner plugins` and
/// used by `runner validate`.
#[derive(Debug, Clone)]
pub struct ParamDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Component parameters as written in the recipe (`options:` mapping).
pub type Options = serde_yaml::Mapping;

/// Deserializes a component's options into its typed parameter struct.
///
/// The error names the key path inside `options`, e.g. `span.max_len: invalid type`.
pub fn parse_options<T: DeserializeOwned>(options: &Options) -> Result<T> {
    let value = serde_yaml::Value::Mapping(options.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            anyhow::anyhow!("{}", e.inner())
        } else {
            anyhow::anyhow!("{path}: {}", e.inner())
        }
    })
}

// ---------------------------------------------------------------------------
// Datasets
// ---------------------------------------------------------------------------

/// A document: its non-empty lines of text, in order. Packing never lets one
/// document run into the next without a separator.
pub type Document = Vec<String>;

/// Documents one at a time, in a stable order. An `Err` item ends the stream.
pub type Documents<'a> = wrap::Stream<'a, Document>;

crate::contract! {
    /// Streams a corpus from a path as documents.
    pub trait Dataset: Send + Sync {
        /// Every document under `path` (a file or a directory, as the dataset
        /// defines), in a stable order. Corpora may be larger than memory: the
        /// iterator should hold no more than it needs for its next document (a
        /// line, a file, a parquet row group), never the whole corpus. Problems
        /// found before reading (no such path) are the outer `Err`.
        fn read(&self, path: &Path) -> Result<Documents<'_>> as stream;
    }
}

// ---------------------------------------------------------------------------
// Masking
// ---------------------------------------------------------------------------

/// What a masker needs to know about the vocabulary. The runner reads it from
/// the tokenizer's own files: the special tokens from `tokenizer_config.json`
/// (or `special_tokens_map.json`, or the post-processor's template), the word
/// marks from the tokenizer's model and pre-tokenizer.
#[derive(Debug, Clone)]
pub struct VocabInfo {
    pub vocab_size: usize,
    /// The mask token (`[MASK]`, `<mask>`).
    pub mask_id: i64,
    pub pad_id: i64,
    /// The token that opens every example (`[CLS]`, `<s>`).
    pub cls_id: i64,
    /// The token that closes every example and follows each packed document (`[SEP]`, `</s>`).
    pub sep_id: i64,
    /// `is_special[id]`: never masked, never drawn as a random replacement.
    pub is_special: Vec<bool>,
    /// `tokens[id]`: the token's string in the vocabulary.
    pub tokens: Vec<String>,
    /// How the tokenizer marks where words begin.
    pub word_marks: WordMarks,
    /// `edges[id]`: what a word boundary needs to know about token `id`.
    pub edges: Vec<PieceEdges>,
}

/// The special tokens of a vocabulary, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub mask: i64,
    pub pad: i64,
    pub cls: i64,
    pub sep: i64,
}

impl VocabInfo {
    /// A vocabulary of `tokens` (by id) with these special tokens; `also_special`
    /// names more ids that are never masked (`[UNK]`, added special tokens).
    pub fn new(tokens: Vec<String>, special: SpecialIds, also_special: &[i64], word_marks: WordMarks) -> Self {
        let vocab_size = tokens.len();
        let mut is_special = vec![false; vocab_size];
        for id in [special.mask, special.pad, special.cls, special.sep].iter().chain(also_special) {
            if let Some(s) = is_special.get_mut(*id as usize) {
                *s = true;
            }
        }
        let edges = word_marks.edges(&tokens);
        VocabInfo {
            vocab_size,
            mask_id: special.mask,
            pad_id: special.pad,
            cls_id: special.cls,
            sep_id: special.sep,
            is_special,
            tokens,
            word_marks,
            edges,
        }
    }

    /// Ids a random replacement may draw from: every non-special token.
    pub fn replacement_ids(&self) -> Vec<i64> {
        (0..self.vocab_size as i64).filter(|&i| !self.is_special[i as usize]).collect()
    }

    /// Whether `id` is a special token (or outside the vocabulary).
    pub fn is_special(&self, id: i64) -> bool {
        self.is_special.get(id as usize).copied().unwrap_or(true)
    }

    /// Token ranges `start..end` of the words in `ids`; special tokens belong to
    /// none and end the word before them.
    pub fn words(&self, ids: &[i64]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        let mut prev: Option<usize> = None;
        for (i, &id) in ids.iter().enumerate() {
            if self.is_special(id) {
                prev = None;
                continue;
            }
            let id = id as usize;
            let begins = prev.is_none_or(|p| self.word_marks.begins_word(&self.edges[p], &self.edges[id]));
            match out.last_mut() {
                Some(last) if !begins && last.1 == i => last.1 = i + 1,
                _ => out.push((i, i + 1)),
            }
            prev = Some(id);
        }
        out
    }
}

/// How chosen tokens are corrupted: `[MASK]`, a random token, or left as is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaskingRates {
    /// Probability that a (non-special) token is chosen for prediction.
    pub rate: f64,
    /// Of the chosen tokens: fraction replaced by `[MASK]`.
    pub mask_token: f64,
    /// Of the chosen tokens: fraction replaced by a random token. The rest stay unchanged.
    pub random_token: f64,
}

/// One masked sequence: model input and labels (`IGNORE_INDEX` where not chosen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedSequence {
    pub input_ids: Vec<i64>,
    pub labels: Vec<i64>,
}

crate::contract! {
    /// Chooses which tokens of a sequence the model must predict and corrupts them.
    pub trait Masker: Send + Sync {
        /// Masks one sequence. `ids` holds real tokens only (no padding); special
        /// tokens must never be chosen. All randomness comes from `rng`.
        fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence>;
    }
}

// ---------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------

/// A padded batch on the model's device.
#[derive(Debug)]
pub struct MlmBatch {
    /// (B, T) int64
    pub input_ids: tch::Tensor,
    /// (B, T) int64, 1 for real tokens, 0 for padding
    pub attention_mask: tch::Tensor,
    /// (B, T) int64, `IGNORE_INDEX` where no prediction is scored
    pub labels: tch::Tensor,
    /// (B, T) int64 with `data.document_attention`: the number (from 0) of
    /// the document each token belongs to within its row, -1 at padding.
    /// Attention stays within a document and positions restart at each one.
    /// `None`: every row is one sequence.
    pub documents: Option<tch::Tensor>,
}

/// The model's predictions at the labelled positions only.
#[derive(Debug)]
pub struct MlmOutput {
    /// Scalar: mean cross-entropy over labelled positions.
    pub loss: tch::Tensor,
    /// (N, V) logits at the N labelled positions, in row-major batch order.
    pub logits: tch::Tensor,
    /// (N,) the labels at those positions.
    pub labels: tch::Tensor,
}

/// A trainable parameter handed to the optimizer.
#[derive(Debug)]
pub struct Parameter {
    pub name: String,
    pub tensor: tch::Tensor,
    /// False for biases and LayerNorm weights, which take no weight decay.
    pub decay: bool,
}

/// Facts about a built model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInfo {
    /// The device the weights live on.
    pub device: tch::Device,
    /// Size of the output vocabulary.
    pub vocab_size: i64,
    /// Longest sequence the model takes (position embeddings).
    pub max_positions: i64,
    /// Number of trainable parameter elements.
    pub num_parameters: i64,
    /// Whether the model reads `MlmBatch::documents` (`data.document_attention`).
    pub document_attention: bool,
}

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Dropout off.
    Eval,
    /// Dropout on. Every dropout mask of the pass must be a pure function of
    /// `dropout_key` and the mask's place in the pass: the runner derives the
    /// key from the run seed and the micro-batch's global index, so a model
    /// keeps no random state of its own, a resumed run redraws the same masks,
    /// and a micro-batch gets the same masks whichever process trains on it.
    Train { dropout_key: u64 },
}

impl Mode {
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}

crate::contract! {
    /// A masked language model.
    pub trait MlmModel: Send {
        /// Forward pass that scores only labelled positions (the MLM head runs on
        /// those alone).
        fn forward_mlm(&self, batch: &MlmBatch, mode: Mode) -> Result<MlmOutput>;
        /// Full logits (B, T, V) in eval mode, for fill-mask and checks.
        fn logits(&self, input_ids: &tch::Tensor, attention_mask: &tch::Tensor) -> Result<tch::Tensor>;
        /// Trainable parameters with their weight-decay group, in a stable order.
        fn parameters(&self) -> Result<Vec<Parameter>>;
        /// Writes `config.json` and `model.safetensors` that Hugging Face `transformers` loads.
        fn save_pretrained(&self, dir: &Path) -> Result<()>;
        fn info(&self) -> Result<ModelInfo>;
        /// The encoder's last hidden states (B, T, H) in eval mode, for probes
        /// and other consumers of features. Rows at padded positions are
        /// whatever the model computes there; pooling must mask them out.
        fn hidden_states(&self, input_ids: &tch::Tensor, attention_mask: &tch::Tensor) -> Result<tch::Tensor> = {
            let _ = (input_ids, attention_mask);
            anyhow::bail!("this model gives no hidden states")
        };
    }
}

/// What a model needs to be built.
#[derive(Debug, Clone)]
pub struct ModelSource<'a> {
    /// A Hugging Face model directory (`config.json` + `model.safetensors`), if any.
    pub checkpoint: Option<&'a Path>,
    /// Options from the recipe (architecture overrides for random init, etc.).
    pub options: &'a Options,
    pub device: tch::Device,
    /// What forward passes compute in: `Float`, or `BFloat16` under autocast,
    /// which the runner switches on around every forward pass. Weights stay
    /// float32; a model need not cast anything itself.
    pub compute: tch::Kind,
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// What a metric's column means to summaries and reports. The runner knows
/// metrics by these declarations, never by their column names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    /// Higher values are better (an accuracy); otherwise lower (a loss).
    pub higher_is_better: bool,
    pub role: ColumnRole,
}

/// See [`ColumnSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnRole {
    /// The held-out masked-LM loss: a summary's initial, final and best eval loss.
    Loss,
    /// A headline figure (perplexity, accuracy): its final value in summaries,
    /// its best and final values in reports.
    Headline,
    /// A downstream task's score (a probe's accuracy): reports rank runs by it,
    /// and by the first lower-is-better headline figure beside it.
    Task,
    /// In the metrics table only.
    Detail,
}

impl ColumnSpec {
    pub fn new(name: impl Into<String>, role: ColumnRole, higher_is_better: bool) -> Self {
        ColumnSpec { name: name.into(), higher_is_better, role }
    }
}

/// The run's tokenizer, as the runner hands it to metrics.
pub trait Tokenize {
    /// The token ids of `text`, without special tokens and untruncated.
    fn encode(&self, text: &str) -> Result<Vec<i64>>;
}

crate::contract! {
    /// Accumulates predictions over an eval pass, then reports named values.
    ///
    /// With several processes each one sees a share of the eval batches; a
    /// metric whose state is sums (of losses, hits, counts) reports them with
    /// [`partial_sums`](Metric::partial_sums), the runner adds them over the
    /// processes and hands the totals back through
    /// [`set_partial_sums`](Metric::set_partial_sums), so the figures equal a
    /// single process's. A metric that cannot be split keeps the defaults, and
    /// every process then evaluates every batch.
    pub trait Metric: Send {
        fn reset(&mut self) -> Result<()>;
        /// Adds one batch: `out.logits` (N, V) and `out.labels` (N,).
        fn update(&mut self, out: &MlmOutput) -> Result<()>;
        /// Named values, e.g. `{"eval_loss": 2.1}`.
        fn compute(&self) -> Result<BTreeMap<String, f64>>;
        /// What each column [`compute`](Metric::compute) reports means to
        /// summaries and reports. Undeclared columns (the default declares
        /// none) are details, lower is better.
        fn columns(&self) -> Result<Vec<ColumnSpec>> = { Ok(Vec::new()) };
        /// Scores that need the model itself rather than one forward pass over
        /// the eval batches (e.g. pseudo-perplexity). Called once per eval, after
        /// the batches, with the eval sequences (unmasked, no padding).
        fn update_with_model(&mut self, model: &dyn MlmModel, sequences: &[Vec<i64>], vocab: &VocabInfo) -> Result<()> = {
            let _ = (model, sequences, vocab);
            Ok(())
        };
        /// Called once before the first eval, for metrics that read text of
        /// their own (e.g. a probe's labelled examples): `tokenizer` is the
        /// run's, `max_positions` the longest sequence the model takes.
        fn prepare(&mut self, tokenizer: &dyn Tokenize, vocab: &VocabInfo, max_positions: usize) -> Result<()> = {
            let _ = (tokenizer, vocab, max_positions);
            Ok(())
        };
        /// The state as numbers that add up over shards of the eval batches,
        /// or `None` if the metric cannot be split.
        fn partial_sums(&self) -> Result<Option<Vec<f64>>> = { Ok(None) };
        /// Replaces the state with `sums`: what [`partial_sums`](Metric::partial_sums)
        /// gave, added over every shard.
        fn set_partial_sums(&mut self, sums: &[f64]) -> Result<()> = {
            let _ = sums;
            anyhow::bail!("this metric cannot be split over processes")
        };
    }
}

// ---------------------------------------------------------------------------
// Registrar
// ---------------------------------------------------------------------------

/// The four kinds of components a recipe composes, listed once: each kind's
/// name in recipes and messages, its contract, and its factory's arguments.
/// From this list come [`ComponentKind`], the plugins' [`Factory`] (plain
/// functions), and the registry's [`guard::Builder`] (the same factories with
/// every call into what they build guarded, see [`Factory::guarded`]).
macro_rules! component_kinds {
    ($($(#[$doc:meta])* $Kind:ident = $label:literal: fn($($arg:ident: $ty:ty),*) -> $Trait:ident;)*) => {
        /// The kinds of components a recipe composes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ComponentKind {
            $($(#[$doc])* $Kind,)*
        }

        impl ComponentKind {
            pub const ALL: &'static [ComponentKind] = &[$(ComponentKind::$Kind),*];

            /// The kind's name in recipes and messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ComponentKind::$Kind => $label,)*
                }
            }
        }

        /// A component's factory, by kind: plain functions, as plugins write them.
        #[derive(Clone, Copy)]
        pub enum Factory {
            $($Kind(fn($($ty),*) -> Result<Box<dyn $Trait>>),)*
        }

        impl Factory {
            pub fn kind(&self) -> ComponentKind {
                match self {
                    $(Factory::$Kind(_) => ComponentKind::$Kind,)*
                }
            }

            /// The factory with its call, and every call into what it builds,
            /// run in [`guard::guard`] for `who`. Runs inside the plugin.
            pub fn guarded(self, who: guard::Who) -> guard::Builder {
                match self {
                    $(Factory::$Kind(f) => guard::Builder::$Kind(std::sync::Arc::new(move |$($arg: $ty),*| {
                        let inner = guard::guard(&who, "build", || f($($arg),*))?;
                        Ok(Box::new(wrap::Wrapped { inner, hook: guard::GuardHook(who.clone()) }) as Box<dyn $Trait>)
                    })),)*
                }
            }
        }

        pub mod builder {
            //! [`Builder`]: a guarded factory, by kind, as the registry keeps it.
            use super::*;

            /// A guarded factory, by kind (see [`Factory::guarded`]).
            #[derive(Clone)]
            pub enum Builder {
                $($Kind(std::sync::Arc<dyn Fn($($ty),*) -> Result<Box<dyn $Trait>> + Send + Sync>),)*
            }
        }
    };
}

component_kinds! {
    Dataset = "dataset": fn(options: &Options) -> Dataset;
    Masker = "masking": fn(options: &Options, rates: MaskingRates, vocab: &VocabInfo) -> Masker;
    Model = "model": fn(source: &ModelSource) -> MlmModel;
    Metric = "metric": fn(options: &Options) -> Metric;
}

/// One component a plugin offers.
#[derive(Clone)]
pub struct Component {
    pub name: &'static str,
    pub doc: &'static str,
    pub params: Vec<ParamDoc>,
    /// Checks recipe options without building anything (for `runner validate`).
    pub check: fn(&Options) -> Result<()>,
    pub factory: Factory,
}

/// A `check` for components that take no options.
pub fn no_options(options: &Options) -> Result<()> {
    match options.keys().next() {
        None => Ok(()),
        Some(k) => anyhow::bail!("unknown option `{}`: this component takes none", k.as_str().unwrap_or("?")),
    }
}

/// Collects the components a plugin offers, each wrapped in panic guards
/// (see [`guard`]). The runner owns the lookup.
pub struct Registrar {
    pub plugin: String,
    pub components: Vec<guard::Registered>,
}

impl Registrar {
    pub fn new(plugin: impl Into<String>) -> Self {
        Registrar { plugin: plugin.into(), components: Vec::new() }
    }

    pub fn add(&mut self, component: Component) {
        self.components.push(guard::Registered::new(&self.plugin, component));
    }

    /// Declares the `config.json` `model_type`s that the model `name` (added
    /// before) reads, so a recipe whose checkpoint has one of them gets it
    /// without naming `model.name`, as `AutoModel` picks a class.
    pub fn reads_model_types(&mut self, name: &str, model_types: &[&'static str]) {
        match self.components.iter_mut().find(|c| c.kind == ComponentKind::Model && c.name == name) {
            Some(c) => c.model_types.extend_from_slice(model_types),
            None => panic!("reads_model_types: no model `{name}` was added before"),
        }
    }

    /// Gives the model `name` (added before) a check of its options against
    /// a local checkpoint's files, which `runner validate` runs: a window or a
    /// size that only the checkpoint's `config.json` makes wrong is found
    /// before a run starts.
    pub fn checks_checkpoint(&mut self, name: &str, check: fn(&Options, &Path) -> Result<()>) {
        match self.components.iter_mut().find(|c| c.kind == ComponentKind::Model && c.name == name) {
            Some(c) => c.set_checkpoint_check(check),
            None => panic!("checks_checkpoint: no model `{name}` was added before"),
        }
    }
}
