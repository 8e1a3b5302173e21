//! The checks of the files a recipe names, run by `validate` and before `run`
//! writes anything: corpora are files or folders that hold something (not a
//! FIFO, not empty), the results folder is a writable folder, a model folder
//! has a `config.json` that parses, a `model.safetensors` whose header fits the
//! file, and a tokenizer that loads and fits the model's vocabulary. A run's
//! folder is never a checkpoint, a model folder or inside another run's.

use std::path::{Path, PathBuf};

use super::check::Problems;

/// What a corpus path is.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// A local corpus: a regular file with some bytes, or a folder holding at
/// least one non-empty regular file (not hidden). Reading a FIFO would block
/// the run, so one is refused here.
pub fn local_corpus(p: &mut Problems, key: &str, path: &Path, what: &str) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return p.push(key, format!("{what} {} does not exist", path.display()));
        }
        Err(e) => return p.push(key, format!("cannot read {what} {}: {e}", path.display())),
    };
    if meta.is_file() {
        p.check(meta.len() > 0, key, || format!("{what} {} is empty", path.display()));
    } else if meta.is_dir() {
        if !holds_text(path, 0) {
            p.push(key, format!("{what} {} is a folder with no non-empty file in it", path.display()));
        }
    } else {
        p.push(key, format!("{what} {} is {}; give a file or a folder of files", path.display(), kind_of(&meta)));
    }
}

/// Whether a folder holds a non-empty regular file (not hidden), up to 16 levels down.
fn holds_text(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.filter_map(Result::ok).any(|e| {
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        match std::fs::metadata(e.path()) {
            Ok(m) if !hidden && m.is_file() => m.len() > 0,
            Ok(m) if !hidden && m.is_dir() && depth < 16 => holds_text(&e.path(), depth + 1),
            _ => false,
        }
    })
}

/// Whether this process may create files in `dir` (which exists).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// `run.output_dir` (and the run's folder in it, if there, and its
/// `tensorboard/` when the run writes event files) must be folders this
/// process can write to; a missing one is created by the run, so its nearest
/// existing parent must be.
pub fn output_dir(p: &mut Problems, dir: &Path, run_dir: &Path, tensorboard: bool) {
    if let Some(why) = foreign_run_dir(run_dir) {
        return p.push("run.name", why);
    }
    let events = run_dir.join("tensorboard");
    let mut folders = vec![("run.output_dir", dir), ("run.name", run_dir)];
    if tensorboard {
        folders.push(("run.tensorboard", &events));
    }
    for (key, path) in folders {
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => {
                return p.push(key, format!("{} is a file, not a folder; results need a folder there", path.display()));
            }
            Ok(_) if !writable(path) => {
                return p.push(key, format!("{} is not writable (a read-only folder or file system)", path.display()));
            }
            Ok(_) => {}
            Err(_) => {
                // Created by the run: the nearest existing parent must take it.
                let mut up = path.parent();
                while let Some(parent) = up {
                    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                    if let Ok(m) = std::fs::metadata(parent) {
                        if !m.is_dir() {
                            p.push(key, format!("{} cannot be created: {} is a file", path.display(), parent.display()));
                        } else if !writable(parent) {
                            p.push(key, format!("{} cannot be created: {} is not writable", path.display(), parent.display()));
                        }
                        return;
                    }
                    up = parent.parent();
                }
                return;
            }
        }
    }
}

/// Files that make a folder a checkpoint or a model, never a run's results.
const NOT_RUN_FILES: &[&str] = &["manifest.json", "state.json", "state.safetensors", "model.safetensors", "config.json"];

/// Whether `dir` is a run folder: it has the run's `recipe.yaml` and results
/// (a metrics table, a summary or checkpoints), and is no checkpoint. A
/// folder that merely holds a recipe named `recipe.yaml` is not one.
pub fn is_run_folder(dir: &Path) -> bool {
    let results = ["metrics.csv", "summary.json", "checkpoints"].iter().any(|f| dir.join(f).exists());
    dir.join("recipe.yaml").is_file() && results && !NOT_RUN_FILES.iter().any(|f| dir.join(f).exists())
}

/// Why a run may not use `run_dir` as its folder, if it may not: a checkpoint
/// or model folder (a run would rewrite its `recipe.yaml`, and the checkpoint
/// would no longer verify), or a folder inside another run's.
pub fn foreign_run_dir(run_dir: &Path) -> Option<String> {
    let up = |n: usize| {
        let mut d = Some(run_dir);
        for _ in 0..n {
            d = d.and_then(Path::parent).filter(|p| !p.as_os_str().is_empty());
        }
        d
    };
    let owner = up(1).filter(|d| is_run_folder(d)).or_else(|| up(2).filter(|d| is_run_folder(d)));
    if let Some(found) = NOT_RUN_FILES.iter().find(|f| run_dir.join(f).exists()) {
        return Some(match owner {
            Some(run) => format!(
                "{} is a checkpoint of the run {}, not a run folder; to continue that run pass its folder: runner resume {}",
                run_dir.display(),
                run.display(),
                run.display()
            ),
            None => format!(
                "{} holds {found}: it is a checkpoint or model folder, not a run folder; results go to another folder (run.output_dir/run.name)",
                run_dir.display()
            ),
        });
    }
    owner.map(|run| {
        format!(
            "{} is inside the run folder {}; a run's folder is never inside another's (to continue that run: runner resume {})",
            run_dir.display(),
            run.display(),
            run.display()
        )
    })
}

/// What a model folder's `config.json` says about sizes.
#[derive(Debug, Default, Clone, Copy)]
pub struct ModelLimits {
    pub vocab_size: Option<i64>,
    /// The longest sequence the model takes: `max_position_embeddings`, less
    /// `padding_idx + 1` for RoBERTa-style positions (which start after it).
    pub max_positions: Option<i64>,
    /// Whether positions start after `padding_idx` (RoBERTa, XLM-RoBERTa).
    pub positions_after_padding: bool,
}

/// `model_type`s whose positions start at `padding_idx + 1`.
const POSITIONS_AFTER_PADDING: &[&str] = &["roberta", "xlm-roberta"];

/// A `config.json`'s `model_type`: `bert` when it has none (older BERT
/// checkpoints), `None` when the file does not read as a JSON object (the
/// model folder's check reports that).
pub fn model_type(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let map = value.as_object()?;
    Some(map.get("model_type").and_then(serde_json::Value::as_str).unwrap_or("bert").to_string())
}

/// The model component for a checkpoint whose `config.json` is `config`: the
/// installed one that declares it reads its `model_type`
/// ([`runner_api::Registrar::reads_model_types`]). `Ok(None)` when the config
/// does not read (reported by [`model_folder`]).
pub fn model_for_checkpoint(config: &Path, registry: &crate::registry::Registry) -> Result<Option<String>, String> {
    let Some(model_type) = model_type(config) else { return Ok(None) };
    let models: Vec<&runner_api::guard::Registered> =
        registry.entries().iter().map(|e| &e.component).filter(|c| c.kind == runner_api::ComponentKind::Model).collect();
    if let Some(c) = models.iter().find(|c| c.model_types.contains(&model_type.as_str())) {
        return Ok(Some(c.name.to_string()));
    }
    let installed: Vec<String> = models
        .iter()
        .map(|c| if c.model_types.is_empty() { c.name.to_string() } else { format!("{} ({})", c.name, c.model_types.join(", ")) })
        .collect();
    Err(format!(
        "{}: model_type `{model_type}` is read by no installed model plugin (installed model plugins, with the types they \
         read: {}); install one, or name the model with model.name",
        config.display(),
        if installed.is_empty() { "none".to_string() } else { installed.join(", ") },
    ))
}

/// A local model folder: `config.json` parses as a JSON object, `model.safetensors`
/// is whole, and no pickle is ever needed. Returns the limits the config gives,
/// with `overrides` (the model's `options.config`) taking precedence.
pub fn model_folder(p: &mut Problems, dir: &Path, overrides: Option<&serde_yaml::Mapping>) -> ModelLimits {
    let key = "model.checkpoint";
    match std::fs::metadata(dir) {
        Err(_) => {
            p.push(key, format!("model folder {} does not exist", dir.display()));
            return ModelLimits::default();
        }
        Ok(m) if !m.is_dir() => {
            p.push(
                key,
                format!("{} is a file; give the model's folder (config.json, model.safetensors, tokenizer.json)", dir.display()),
            );
            return ModelLimits::default();
        }
        Ok(_) => {}
    }
    let mut limits = ModelLimits::default();
    let config = dir.join("config.json");
    if !config.is_file() {
        p.push(key, format!("{} has no config.json", dir.display()));
    } else {
        match std::fs::read_to_string(&config).map_err(|e| e.to_string()).and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("is not valid JSON: {e}"))
        }) {
            Err(e) => p.push(key, format!("{}: {e}", config.display())),
            Ok(serde_json::Value::Object(map)) => {
                let field = |name: &str| -> Option<i64> {
                    let over = overrides.and_then(|o| o.get(name)).and_then(serde_yaml::Value::as_i64);
                    over.or_else(|| map.get(name).and_then(serde_json::Value::as_i64))
                };
                let after_padding = map
                    .get("model_type")
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|t| POSITIONS_AFTER_PADDING.contains(&t));
                // RoBERTa's positions run from padding_idx + 1 (514 embeddings take 512 tokens).
                let max_positions = match field("max_position_embeddings") {
                    Some(n) if after_padding => Some(n - field("pad_token_id").unwrap_or(1) - 1),
                    n => n,
                };
                limits = ModelLimits {
                    vocab_size: field("vocab_size"),
                    max_positions,
                    positions_after_padding: after_padding,
                };
            }
            Ok(_) => p.push(key, format!("{}: is not a JSON object", config.display())),
        }
    }
    let weights = dir.join("model.safetensors");
    if weights.is_file() {
        if let Err(e) = safetensors_header(&weights) {
            p.push(key, format!("{}: {e}", weights.display()));
        }
    } else if dir.join("pytorch_model.bin").exists() {
        p.push(
            key,
            format!(
                "{} has only pytorch_model.bin (a pickle, never read); convert it to model.safetensors \
                 (transformers: save_pretrained(dir, safe_serialization=True))",
                dir.display()
            ),
        );
    } else {
        p.push(key, format!("{} has no model.safetensors", dir.display()));
    }
    limits
}

/// Reads a safetensors file's header and checks that every tensor's bytes lie
/// within the file: a file cut short (an interrupted copy) is caught here,
/// before anything maps it.
pub fn safetensors_header(path: &Path) -> Result<(), String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| format!("is not a safetensors file (only {size} bytes)"))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || 8 + n > size {
        return Err(format!("is not a whole safetensors file (its header claims {n} bytes, the file holds {size})"));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| format!("cannot read its header: {e}"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("is not a safetensors file (its header is not JSON: {e})"))?;
    let Some(map) = header.as_object() else { return Err("is not a safetensors file (its header is not a JSON object)".into()) };
    let data = size - 8 - n;
    let mut end = 0u64;
    for (name, t) in map.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let offsets = t.get("data_offsets").and_then(|o| o.as_array()).and_then(|o| Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?)));
        let Some((_, stop)) = offsets else { return Err(format!("tensor `{name}` has no data_offsets")) };
        end = end.max(stop);
    }
    if end > data {
        return Err(format!("is cut short: its tensors need {end} bytes of data, the file holds {data}"));
    }
    Ok(())
}

/// The tokenizer: it loads, has BERT's special tokens, and has no more tokens
/// than the model's vocabulary (ids beyond it would index past the embeddings).
pub fn tokenizer(p: &mut Problems, key: &str, path: &Path, model: ModelLimits, config: Option<PathBuf>) {
    let tok = match crate::data::tokenizer::load(path) {
        Ok(t) => t,
        Err(e) => return p.push(key, format!("{e:#}")),
    };
    let vocab = match crate::data::tokenizer::vocab_info(&tok, path) {
        Ok(v) => v,
        Err(e) => return p.push(key, format!("{e:#}")),
    };
    if let Some(model_vocab) = model.vocab_size {
        p.check(vocab.vocab_size as i64 <= model_vocab, key, || {
            format!(
                "{} has {} tokens but the model's vocabulary ({}) has {model_vocab}",
                path.display(),
                vocab.vocab_size,
                config.map_or("model.options.config.vocab_size".into(), |c| format!("vocab_size in {}", c.display()))
            )
        });
    }
}
