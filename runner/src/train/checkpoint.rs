//! Checkpoints to resume from: `checkpoints/step-N/` in the run folder holds
//! everything a resume needs, and nothing is replayed:
//!
//! - `model.safetensors`: every trainable parameter, by name, as it is (float32
//!   master weights);
//! - `state.safetensors` and `state.json`: the training state's
//!   [`StateDict`](super::state::StateDict), its tensors (AdamW's `exp_avg.<name>`
//!   and `exp_avg_sq.<name>`; under fp16 `scaler.scale` and
//!   `scaler.growth_tracker`) and its values by part (the step, which is also the
//!   schedule's position and the data's: batches are a pure function of
//!   `(seed, index)`; the half-filled log window; the metric rows so far; AdamW's
//!   step count; the steps skipped under fp16), with the global batch's shape
//!   (micro-batch x accumulation x processes);
//!   and what the run read besides its recipe ([`Inputs`]: the token store, the
//!   tokenizer files, the model's `config.json`), compared on resume;
//! - `recipe.yaml`: the resolved recipe the run was started with;
//! - `manifest.json`: each file's size and SHA-256, written last.
//!
//! No random generator state is saved because none is left: dropout masks are
//! keyed by the micro-batch's global index, training masks by `(seed, index)`.
//!
//! A checkpoint is written into a temporary folder, its files and the folder
//! fsynced, renamed to `step-N`, and only then given its manifest; a folder
//! without a manifest that verifies is never loaded. Older checkpoints beyond
//! `keep` are deleted only after the new one is complete.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tch::Tensor;

use super::inputs::Inputs;
use super::state::StateDict;

/// The folder of a run that holds its checkpoints.
pub const DIR: &str = "checkpoints";
const MODEL: &str = "model.safetensors";
const TENSORS: &str = "state.safetensors";
const STATE: &str = "state.json";
const RECIPE: &str = "recipe.yaml";
const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 2;

/// How the global batch was made: a resume on another number of processes
/// must make the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalBatch {
    pub micro_batch: usize,
    pub grad_accum: u64,
    pub processes: u64,
}

impl GlobalBatch {
    pub fn sequences(&self) -> u64 {
        self.micro_batch as u64 * self.grad_accum * self.processes
    }
}

/// `state.json`: the training state's values, and the global batch they were made with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedState {
    pub format: u32,
    pub global_batch: GlobalBatch,
    /// [`StateDict::values`]: one entry per part of the state.
    pub state: Map<String, Value>,
    /// What the run read besides its recipe (none in checkpoints written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Inputs>,
}

impl SavedState {
    /// Optimizer steps done when it was saved.
    pub fn step(&self) -> u64 {
        self.state.get("progress").and_then(|p| p.get("step")).and_then(Value::as_u64).unwrap_or(0)
    }
}

/// What a checkpoint holds, read back.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub model: Vec<(String, Tensor)>,
    pub state: StateDict,
    pub global_batch: GlobalBatch,
    pub recipe: String,
}

/// `manifest.json`: the files of a complete checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: u64,
    files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

/// The folder of the checkpoint after `step`.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    run_dir.join(DIR).join(format!("step-{step}"))
}

/// Writes the checkpoint of `model` and `state` (after the state's step), with
/// the run's recipe and inputs, and prunes older ones beyond `keep`. Returns its folder.
pub fn save(
    run_dir: &Path,
    model: &[(String, Tensor)],
    state: &StateDict,
    global_batch: GlobalBatch,
    recipe: &str,
    inputs: Option<&Inputs>,
    keep: usize,
) -> Result<PathBuf> {
    let root = run_dir.join(DIR);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let saved = SavedState { format: FORMAT, global_batch, state: state.values.clone(), inputs: inputs.cloned() };
    let step = saved.step();
    let tmp = root.join(format!(".step-{step}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    let dir = step_dir(run_dir, step);
    // A checkpoint that cannot be completed (a full disk) leaves nothing behind:
    // neither its temporary folder nor a step folder without a manifest.
    let written = write_folder(&root, &tmp, &dir, step, model, state, &saved, recipe);
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(MANIFEST).is_file() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    written?;
    prune(&root, keep)?;
    Ok(dir)
}

/// Writes the checkpoint's files into `tmp`, renames it to `dir` and completes it.
#[allow(clippy::too_many_arguments)]
fn write_folder(
    root: &Path,
    tmp: &Path,
    dir: &Path,
    step: u64,
    model: &[(String, Tensor)],
    state: &StateDict,
    saved: &SavedState,
    recipe: &str,
) -> Result<()> {
    std::fs::create_dir(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write_tensors(model, &tmp.join(MODEL))?;
    write_tensors(&state.tensors, &tmp.join(TENSORS))?;
    write_file(&tmp.join(STATE), serde_json::to_string_pretty(saved)?.as_bytes())?;
    write_file(&tmp.join(RECIPE), recipe.as_bytes())?;
    sync_dir(tmp)?;

    if dir.exists() {
        // The same step saved before (a resumed run stopped again at once).
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("cannot rename {} to {}", tmp.display(), dir.display()))?;
    sync_dir(root)?;

    // Complete only now: the manifest, through its own temporary name.
    let mut files = BTreeMap::new();
    for name in [MODEL, TENSORS, STATE, RECIPE] {
        files.insert(name.to_string(), entry_of(&dir.join(name))?);
    }
    let manifest = serde_json::to_string_pretty(&Manifest { step, files })?;
    runner_recipe::fs::atomic_write_bytes(&dir.join(MANIFEST), manifest.as_bytes())
        .with_context(|| format!("cannot complete {}", dir.display()))?;
    sync_dir(dir)
}

/// The newest checkpoint of the run whose manifest verifies; each one that
/// does not is skipped with a warning naming it.
pub fn newest_complete(run_dir: &Path) -> Result<Option<PathBuf>> {
    for (_, dir) in listed(&run_dir.join(DIR))?.into_iter().rev() {
        match verify(&dir) {
            Ok(()) => return Ok(Some(dir)),
            Err(e) => tracing::warn!("skipping checkpoint {}: {e:#}", dir.display()),
        }
    }
    Ok(None)
}

/// The checkpoints that were completed (they have a manifest) but no longer
/// verify, newest first, each with why: damage, not an interrupted write.
pub fn damaged(run_dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    Ok(listed(&run_dir.join(DIR))?
        .into_iter()
        .rev()
        .filter(|(_, d)| d.join(MANIFEST).is_file())
        .filter_map(|(_, d)| verify(&d).err().map(|e| (d, format!("{e:#}"))))
        .collect())
}

/// The saved state's values and the recipe of a checkpoint, without its tensors.
pub fn read_state(dir: &Path) -> Result<(SavedState, String)> {
    let state = dir.join(STATE);
    let text = std::fs::read_to_string(&state).with_context(|| format!("cannot read {}", state.display()))?;
    let format = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.get("format").and_then(Value::as_u64));
    if format != Some(FORMAT as u64) {
        let found = format.map_or_else(|| "no format".to_string(), |f| format!("format {f}"));
        bail!("{}: checkpoint {found} (this runner reads format {FORMAT})", state.display());
    }
    let saved: SavedState = serde_json::from_str(&text).with_context(|| format!("{}: not a checkpoint state", state.display()))?;
    let recipe = std::fs::read_to_string(dir.join(RECIPE)).with_context(|| format!("cannot read {}", dir.join(RECIPE).display()))?;
    Ok((saved, recipe))
}

/// Reads a checkpoint folder (verify it first with [`newest_complete`]).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let read = |name: &str| {
        Tensor::read_safetensors(dir.join(name)).with_context(|| format!("cannot read {}", dir.join(name).display()))
    };
    let (saved, recipe) = read_state(dir)?;
    let state = StateDict { tensors: read(TENSORS)?, values: saved.state };
    Ok(Checkpoint { dir: dir.to_path_buf(), model: read(MODEL)?, state, global_batch: saved.global_batch, recipe })
}

/// Checks that `dir` has a manifest and that every file in it has the size
/// and SHA-256 the manifest says.
fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|_| anyhow::anyhow!("no {MANIFEST} (the checkpoint was not completed)"))?;
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| format!("{MANIFEST} does not parse"))?;
    for name in [MODEL, TENSORS, STATE, RECIPE] {
        let Some(want) = manifest.files.get(name) else { bail!("{MANIFEST} does not list {name}") };
        let got = entry_of(&dir.join(name)).with_context(|| format!("cannot read {name}"))?;
        if got.bytes != want.bytes {
            bail!("{name} holds {} bytes, the manifest says {}", got.bytes, want.bytes);
        }
        if got.sha256 != want.sha256 {
            bail!("{name} does not match its SHA-256 in the manifest");
        }
    }
    Ok(())
}

/// The `step-N` folders under `root`, oldest first.
fn listed(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("cannot list {}", root.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<u64>().ok()) {
            found.push((step, e.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Deletes complete checkpoints beyond the newest `keep`, then leftovers of
/// interrupted writes (temporary folders, folders without a manifest) older
/// than the newest complete one.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = listed(root)?;
    let complete: Vec<&(u64, PathBuf)> = all.iter().filter(|(_, d)| d.join(MANIFEST).is_file()).collect();
    let Some(&&(newest, _)) = complete.last() else { return Ok(()) };
    let kept: Vec<u64> = complete.iter().rev().take(keep.max(1)).map(|(s, _)| *s).collect();
    for (step, dir) in &all {
        if !kept.contains(step) && *step <= newest {
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot delete old checkpoint {}", dir.display()))?;
        }
    }
    for e in std::fs::read_dir(root)?.flatten() {
        if e.file_name().to_string_lossy().starts_with(".step-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Writes `tensors` as safetensors (read back by `Tensor::read_safetensors`)
/// with the `safetensors` crate, not tch's writer, whose error for a failed
/// write is one string holding the path twice and the I/O error's debug form.
fn write_tensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_detach()?.f_to_device(tch::Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    let views = cpu
        .iter()
        .map(|(n, t)| Ok((n.as_str(), view_of(t).with_context(|| format!("tensor {n}"))?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, None, path)
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => anyhow::Error::new(io),
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_file(path)
}

/// The bytes of a contiguous CPU tensor as a safetensors view (borrowed from it).
fn view_of(t: &Tensor) -> Result<safetensors::tensor::TensorView<'_>> {
    use safetensors::Dtype;
    let dtype = match t.kind() {
        tch::Kind::Float => Dtype::F32,
        tch::Kind::Double => Dtype::F64,
        tch::Kind::Half => Dtype::F16,
        tch::Kind::BFloat16 => Dtype::BF16,
        tch::Kind::Int64 => Dtype::I64,
        tch::Kind::Int => Dtype::I32,
        tch::Kind::Int16 => Dtype::I16,
        tch::Kind::Int8 => Dtype::I8,
        tch::Kind::Uint8 => Dtype::U8,
        tch::Kind::Bool => Dtype::BOOL,
        other => bail!("{other:?} tensors are not saved in checkpoints"),
    };
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let len = t.numel() * t.kind().elt_size_in_bytes();
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: `t` is a contiguous CPU tensor of `len` bytes that outlives the view.
        unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) }
    };
    Ok(safetensors::tensor::TensorView::new(dtype, shape, data)?)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    sync_file(path)
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", path.display()))
}

/// Makes a folder's entries (new names, renames) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync folder {}", dir.display()))
}

fn entry_of(path: &Path) -> Result<FileEntry> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileEntry { bytes, sha256: format!("{:x}", hasher.finalize()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: GlobalBatch = GlobalBatch { micro_batch: 2, grad_accum: 1, processes: 1 };

    fn state(step: u64) -> StateDict {
        let values = serde_json::json!({ "progress": { "step": step }, "optimizer": { "steps": step } });
        StateDict { tensors: tensors(), values: values.as_object().unwrap().clone() }
    }

    fn tensors() -> Vec<(String, Tensor)> {
        vec![("w".to_string(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))]
    }

    #[test]
    fn saves_verifies_loads_and_prunes() {
        let run = tempfile::tempdir().unwrap();
        for step in [2, 4, 6] {
            save(run.path(), &tensors(), &state(step), BATCH, "run: {}\n", None, 2).unwrap();
        }
        let steps: Vec<u64> = listed(&run.path().join(DIR)).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![4, 6], "only the newest two are kept");
        let newest = newest_complete(run.path()).unwrap().unwrap();
        assert_eq!(newest, step_dir(run.path(), 6));
        let ck = load(&newest).unwrap();
        assert_eq!(serde_json::Value::Object(ck.state.values.clone())["progress"]["step"], 6);
        assert_eq!(ck.global_batch, BATCH);
        assert_eq!(Vec::<f32>::try_from(&ck.state.tensors[0].1).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(ck.recipe, "run: {}\n");
        assert_eq!(Vec::<f32>::try_from(&ck.model[0].1).unwrap(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn tensors_of_every_saved_kind_read_back_as_written() {
        let run = tempfile::tempdir().unwrap();
        let base = Tensor::from_slice(&[1.5f64, -2.0, 0.0, 3.25]).reshape([2, 2]);
        let kinds = [tch::Kind::Float, tch::Kind::Double, tch::Kind::Half, tch::Kind::BFloat16, tch::Kind::Int64, tch::Kind::Int, tch::Kind::Uint8, tch::Kind::Bool];
        let written: Vec<(String, Tensor)> = kinds.iter().map(|k| (format!("{k:?}"), base.to_kind(*k))).chain([("empty".to_string(), Tensor::zeros([0], (tch::Kind::Float, tch::Device::Cpu)))]).collect();
        let state = StateDict { tensors: written.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(), values: state(1).values };
        let dir = save(run.path(), &tensors(), &state, BATCH, "a\n", None, 1).unwrap();
        let read = load(&dir).unwrap().state.tensors;
        for (name, t) in &written {
            let (_, back) = read.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!((back.kind(), back.size()), (t.kind(), t.size()), "{name}");
            assert!(back.equal(t), "{name}");
        }
        assert!(std::fs::read_dir(run.path().join(DIR)).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp")));
    }

    #[test]
    fn a_damaged_or_incomplete_checkpoint_is_skipped() {
        let run = tempfile::tempdir().unwrap();
        save(run.path(), &tensors(), &state(1), BATCH, "a\n", None, 3).unwrap();
        save(run.path(), &tensors(), &state(2), BATCH, "a\n", None, 3).unwrap();
        // Step 2's weights lose a byte: step 1 is the newest complete one.
        let model = step_dir(run.path(), 2).join(MODEL);
        let bytes = std::fs::read(&model).unwrap();
        std::fs::write(&model, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(newest_complete(run.path()).unwrap().unwrap(), step_dir(run.path(), 1));
        // A step-3 folder without a manifest (killed before completion) is skipped too.
        std::fs::create_dir_all(step_dir(run.path(), 3)).unwrap();
        assert_eq!(newest_complete(run.path()).unwrap().unwrap(), step_dir(run.path(), 1));
        // Same-length corruption is caught by the hash.
        let state = step_dir(run.path(), 1).join(STATE);
        let mut text = std::fs::read(&state).unwrap();
        text[0] = b' ';
        std::fs::write(&state, text).unwrap();
        assert!(newest_complete(run.path()).unwrap().is_none());
    }
}
