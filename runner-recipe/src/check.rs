//! The checks of a recipe that need nothing but the recipe: ranges, positive
//! sizes, exclusive keys, the run name. The runner's `recipe/resolve.rs` runs
//! them first, then the checks that look at files, the model's config and the
//! plugins.
//!
//! Nothing here touches the file system or libtorch: the recipe fuzz target
//! (`fuzz/`) checks it as it is.

use std::path::PathBuf;

use crate::raw::RawRecipe;

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

/// Warmup length, before the number of steps is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Steps(u64),
    Ratio(f64),
}

/// Problems found so far, each `key: what is wrong`.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn check(&mut self, ok: bool, key: &str, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{key}: {}", msg()));
        }
    }
    pub fn push(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.0.push(format!("{key}: {msg}"));
    }
}

/// The longest file name most Linux file systems take (`NAME_MAX`), in bytes.
pub const NAME_MAX: usize = 255;

/// The longest run name: the run's folder has `.NAME.replaced` (earlier
/// results moved aside by `--overwrite`) and `.NAME.lock` beside it.
pub const MAX_RUN_NAME: usize = NAME_MAX - ".".len() - ".replaced".len();

/// Upper bounds of values that become durations, counts and buffer sizes, so
/// that no recipe passing the checks overflows a conversion later (a
/// `Duration`, an `i64` of libtorch, a buffer's length). Each is far beyond any
/// run that could finish.
pub mod limits {
    /// `training.max_steps`, `training.warmup_steps`, and the steps `training.epochs` comes to.
    pub const MAX_STEPS: u64 = 1_000_000_000;
    /// `training.epochs`.
    pub const MAX_EPOCHS: f64 = 1e6;
    /// `training.distributed.timeout_s`: a week.
    pub const MAX_TIMEOUT_S: f64 = 604_800.0;
    /// `data.max_seq_len` (tokens per sequence).
    pub const MAX_SEQ_LEN: usize = 1 << 20;
    /// `training.batch_size`, `eval.batch_size`, `training.grad_accum_steps` (sequences).
    pub const MAX_BATCH: usize = 1 << 20;
    /// Tokens in one micro-batch (batch size x max_seq_len): libtorch's tensors
    /// of that many elements, and the buffers they are made from.
    pub const MAX_BATCH_TOKENS: usize = 1 << 31;
    /// `training.threads`.
    pub const MAX_THREADS: usize = 4096;
}

/// A count that must be in `1..=max`.
fn count(p: &mut Problems, key: &str, v: u64, max: u64) {
    p.check(v > 0 && v <= max, key, || {
        if v == 0 {
            "must be positive".to_string()
        } else {
            format!("must be at most {max}, got {v}")
        }
    });
}

fn probability(p: &mut Problems, key: &str, v: f64) {
    p.check((0.0..=1.0).contains(&v), key, || format!("must be in [0, 1], got {v}"));
}

/// A rate of tokens to mask: zero would train (or score) nothing.
fn masking_rate(p: &mut Problems, key: &str, v: f64) {
    p.check(v > 0.0 && v <= 1.0, key, || format!("must be in (0, 1] (0 masks nothing, so nothing is learned), got {v}"));
}

/// Why `name` cannot be a folder under `run.output_dir`, if it cannot: it must be
/// one plain file name (no separator, no `..`) that the file system takes.
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.contains('/') || name.contains('\\') || name == "." || name == ".." {
        return Some(format!("`{name}` must be a name, not a path: it may not contain '/' or be '.' or '..'"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Some(format!("`{name}` must be a name of letters, digits, '-', '_' or '.'"));
    }
    if name.len() > MAX_RUN_NAME {
        return Some(format!(
            "is {} characters long; at most {MAX_RUN_NAME}: the file system takes {NAME_MAX} bytes a name, and the \
             `.NAME.replaced` folder (and `.NAME.lock`) beside the run's folder add {}",
            name.len(),
            NAME_MAX - MAX_RUN_NAME
        ));
    }
    None
}

/// What the value checks work out on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub eval_source: EvalSource,
    pub length: TrainLength,
    pub warmup: Warmup,
}

/// Checks every value of `raw` that needs nothing else, adding to `p`.
pub fn values(raw: &RawRecipe, p: &mut Problems) -> Checked {
    // run
    if let Some(why) = name_problem(&raw.run.name) {
        p.push("run.name", why);
    }

    // data
    let d = &raw.data;
    let eval_source = match &d.eval {
        Some(path) => EvalSource::Path(path.clone()),
        None => {
            p.check(d.holdout > 0.0 && d.holdout < 1.0, "data.holdout", || {
                format!("must be in (0, 1) when data.eval is not given, got {}", d.holdout)
            });
            EvalSource::Holdout(d.holdout)
        }
    };
    p.check((8..=limits::MAX_SEQ_LEN).contains(&d.max_seq_len), "data.max_seq_len", || {
        format!("must be in [8, {}], got {}", limits::MAX_SEQ_LEN, d.max_seq_len)
    });
    if let Some(n) = d.max_train_documents {
        p.check(n > 0, "data.max_train_documents", || "must be positive".into());
    }
    p.check(!(d.document_attention && d.group_by_length), "data.document_attention", || {
        "packs whole lines into full rows, so there is no padding for data.group_by_length to save: \
         leave one of them out"
            .into()
    });

    // masking
    let mk = &raw.masking;
    masking_rate(p, "masking.rate", mk.rate);
    probability(p, "masking.mask_token_rate", mk.mask_token_rate);
    probability(p, "masking.random_token_rate", mk.random_token_rate);
    p.check(mk.mask_token_rate + mk.random_token_rate <= 1.0 + 1e-9, "masking.random_token_rate", || {
        format!(
            "mask_token_rate + random_token_rate must be at most 1, got {} + {}",
            mk.mask_token_rate, mk.random_token_rate
        )
    });

    // training
    let t = &raw.training;
    count(p, "training.batch_size", t.batch_size as u64, limits::MAX_BATCH as u64);
    count(p, "training.grad_accum_steps", t.grad_accum_steps as u64, limits::MAX_BATCH as u64);
    for (key, batch) in [("training.batch_size", t.batch_size), ("eval.batch_size", raw.eval.batch_size)] {
        let tokens = batch.saturating_mul(d.max_seq_len);
        let unchecked = batch > limits::MAX_BATCH || d.max_seq_len > limits::MAX_SEQ_LEN;
        p.check(unchecked || tokens <= limits::MAX_BATCH_TOKENS, key, || {
            format!(
                "{batch} sequences of data.max_seq_len {} tokens are {tokens} tokens in one batch, more than {}; lower one of them",
                d.max_seq_len,
                limits::MAX_BATCH_TOKENS
            )
        });
    }
    let length = match (t.max_steps, t.epochs) {
        (Some(_), Some(_)) => {
            p.push("training.max_steps", "give max_steps or epochs, not both");
            TrainLength::Epochs(1.0)
        }
        (Some(s), None) => {
            count(p, "training.max_steps", s, limits::MAX_STEPS);
            TrainLength::Steps(s)
        }
        (None, Some(e)) => {
            p.check(e > 0.0 && e <= limits::MAX_EPOCHS, "training.epochs", || {
                format!("must be a positive number at most {}, got {e}", limits::MAX_EPOCHS)
            });
            TrainLength::Epochs(e)
        }
        (None, None) => TrainLength::Epochs(1.0),
    };
    p.check(t.lr > 0.0 && t.lr.is_finite(), "training.lr", || format!("must be positive, got {}", t.lr));
    p.check(t.weight_decay >= 0.0 && t.weight_decay.is_finite(), "training.weight_decay", || {
        format!("must be >= 0, got {}", t.weight_decay)
    });
    for (key, b) in [("training.adam_beta1", t.adam_beta1), ("training.adam_beta2", t.adam_beta2)] {
        p.check((0.0..1.0).contains(&b), key, || format!("must be in [0, 1), got {b}"));
    }
    p.check(t.adam_eps > 0.0 && t.adam_eps.is_finite(), "training.adam_eps", || format!("must be positive, got {}", t.adam_eps));
    let warmup = match t.warmup_steps {
        Some(s) => {
            p.check(s <= limits::MAX_STEPS, "training.warmup_steps", || format!("must be at most {}, got {s}", limits::MAX_STEPS));
            Warmup::Steps(s)
        }
        None => {
            probability(p, "training.warmup_ratio", t.warmup_ratio);
            Warmup::Ratio(t.warmup_ratio)
        }
    };
    probability(p, "training.decay_ratio", t.decay_ratio);
    if let Some(c) = t.max_grad_norm {
        p.check(c > 0.0 && !c.is_nan(), "training.max_grad_norm", || {
            format!("must be positive (or null for no clipping), got {c}")
        });
    }
    p.check(t.log_every > 0, "training.log_every", || "must be positive".into());
    p.check(t.checkpoint.keep > 0, "training.checkpoint.keep", || "must be at least 1 (set training.checkpoint.every: 0 to save only when stopped)".into());
    if let Some(n) = t.threads {
        count(p, "training.threads", n as u64, limits::MAX_THREADS as u64);
    }
    let dist = &t.distributed;
    p.check(dist.timeout_s > 0.0 && dist.timeout_s <= limits::MAX_TIMEOUT_S, "training.distributed.timeout_s", || {
        format!("must be a positive number of seconds, at most {} (a week), got {}", limits::MAX_TIMEOUT_S, dist.timeout_s)
    });

    // eval and metrics
    count(p, "eval.batch_size", raw.eval.batch_size as u64, limits::MAX_BATCH as u64);
    if let Some(r) = raw.eval.masking_rate {
        masking_rate(p, "eval.masking_rate", r);
    }
    if let Some(n) = raw.eval.max_sequences {
        p.check(n > 0, "eval.max_sequences", || "must be positive".into());
    }
    p.check(!raw.metrics.is_empty(), "metrics", || "list at least one metric".into());

    Checked { eval_source, length, warmup }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(overrides: &[&str]) -> Vec<String> {
        let text = "run: {name: a}\ndata: {train: c.txt}\nmodel: {checkpoint: m}\n";
        let sets: Vec<_> = overrides.iter().map(|s| s.parse().unwrap()).collect();
        let raw = crate::parse::parse(text, "r.yaml", &sets).unwrap();
        let mut p = Problems::default();
        values(&raw, &mut p);
        p.0
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(problems(&[]), Vec::<String>::new());
    }

    #[test]
    fn a_zero_masking_rate_is_refused() {
        let p = problems(&["masking.rate=0"]);
        assert!(p.len() == 1 && p[0].starts_with("masking.rate: must be in (0, 1]"), "{p:?}");
        let p = problems(&["eval.masking_rate=0.0"]);
        assert!(p.len() == 1 && p[0].starts_with("eval.masking_rate:"), "{p:?}");
        assert!(problems(&["masking.rate=1.0"]).is_empty());
    }

    #[test]
    fn run_names_stay_inside_the_output_folder() {
        for bad in ["../x", "/abs", "a/b", "..", ".", "", "a\\b"] {
            let why = name_problem(bad);
            assert!(why.is_some(), "`{bad}` is refused");
        }
        assert!(name_problem(&"a".repeat(NAME_MAX + 1)).unwrap().contains("at most 245"));
        // The folder takes 255 bytes, but `.NAME.replaced` beside it would not.
        assert!(name_problem(&"a".repeat(NAME_MAX)).unwrap().contains(".NAME.replaced"));
        assert!(name_problem(&"a".repeat(MAX_RUN_NAME + 1)).is_some());
        assert!(name_problem(&"a".repeat(MAX_RUN_NAME)).is_none());
        assert!(name_problem("run-1_b.2").is_none());
    }

    #[test]
    fn values_that_would_overflow_a_conversion_are_refused() {
        for (set, key) in [
            ("training.max_steps=18446744073709551615", "training.max_steps"),
            ("training.warmup_steps=18446744073709551615", "training.warmup_steps"),
            ("data.max_seq_len=18446744073709551615", "data.max_seq_len"),
            ("training.batch_size=18446744073709551615", "training.batch_size"),
            ("training.grad_accum_steps=9223372036854775808", "training.grad_accum_steps"),
            ("eval.batch_size=4294967296", "eval.batch_size"),
            ("training.threads=4294967297", "training.threads"),
        ] {
            let p = problems(&[set]);
            assert!(p.len() == 1 && p[0].starts_with(key), "{set}: {p:?}");
        }
        let p = problems(&["training.batch_size=65536", "data.max_seq_len=65536"]);
        assert!(p.len() == 1 && p[0].contains("tokens in one batch"), "{p:?}");
        assert!(problems(&["training.max_steps=1000000000", "training.distributed.timeout_s=604800"]).is_empty());
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        for (set, key) in [
            ("training.epochs=.inf", "training.epochs"),
            ("training.weight_decay=.nan", "training.weight_decay"),
            ("training.adam_eps=.inf", "training.adam_eps"),
            ("training.max_grad_norm=.nan", "training.max_grad_norm"),
            ("masking.rate=.nan", "masking.rate"),
            ("training.distributed.timeout_s=1e20", "training.distributed.timeout_s"),
            ("training.distributed.timeout_s=.inf", "training.distributed.timeout_s"),
            ("training.epochs=1e300", "training.epochs"),
        ] {
            let p = problems(&[set]);
            assert!(p.len() == 1 && p[0].starts_with(key), "{set}: {p:?}");
        }
    }
}
