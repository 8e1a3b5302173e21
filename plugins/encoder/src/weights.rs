//! Reading and writing Hugging Face `model.safetensors` for every encoder family.
//!
//! A family says how a checkpoint's names map onto its model's ([`Naming`]);
//! matching, the report of what is missing or unexpected, and writing with
//! transformers' metadata are the same for all.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, View};
use tch::{Kind, Tensor};

/// How a checkpoint's tensors matched the model, as transformers reports it.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Model tensors the checkpoint lacks: they keep their fresh initialisation.
    pub missing: Vec<String>,
    /// Checkpoint tensors with a place in the masked LM that this model
    /// (as its config describes it) has no variable for: a renamed tensor, or a
    /// layer beyond the config's number of layers.
    pub unexpected: Vec<String>,
    /// Checkpoint tensors the masked LM never uses (pooler, NSP head, the tied
    /// decoder weight, position ids).
    pub unused: Vec<String>,
}

/// How a family's checkpoints name their tensors.
#[derive(Clone, Copy)]
pub struct Naming {
    /// A checkpoint name mapped to the model's, or `None` when the tensor has
    /// no place in the masked LM (tied decoder, pooler, other heads).
    pub canonical: fn(&str) -> Option<String>,
    /// Checkpoint names that are tied twins of another tensor of the file
    /// mapped to the same model name: used only when the other is absent.
    pub twins: &'static [&'static str],
    /// The encoder's prefix (`bert.`): `allow_missing` entries may leave it out.
    pub base: &'static str,
    /// Prefixes of the MLM head, which may always start fresh (checkpoints of
    /// the bare encoder have none).
    pub head: &'static [&'static str],
}

/// Copies checkpoint tensors into the model's variables, by name. Every shape
/// that differs from the model's is listed in one error; names are matched as
/// [`LoadReport`] says.
pub fn load_into(vars: &HashMap<String, Tensor>, path: &Path, naming: &Naming) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut report = LoadReport::default();
    for (name, t) in tensors {
        match (naming.canonical)(&name) {
            Some(n) if vars.contains_key(&n) => {
                // Prefer a tensor over its tied twin (cls.predictions.bias over decoder.bias).
                if !naming.twins.contains(&name.as_str()) || !by_name.contains_key(&n) {
                    by_name.insert(n, t);
                }
            }
            Some(_) => report.unexpected.push(name),
            None => report.unused.push(name),
        }
    }
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut wrong_shape = Vec::new();
    for name in names {
        match by_name.get(name) {
            Some(src) if src.size() != vars[name].size() => {
                wrong_shape.push(format!("`{name}` has shape {:?}, the model config expects {:?}", src.size(), vars[name].size()));
            }
            Some(_) => {}
            None => report.missing.push(name.clone()),
        }
    }
    if !wrong_shape.is_empty() {
        bail!("{}: {} tensor(s) do not fit config.json:\n  {}", path.display(), wrong_shape.len(), wrong_shape.join("\n  "));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, src) in &by_name {
            let mut var = vars[name].shallow_clone();
            var.f_copy_(&src.f_to_kind(Kind::Float)?.f_to_device(var.device())?)?;
        }
        Ok(())
    })?;
    report.unexpected.sort();
    report.unused.sort();
    Ok(report)
}

/// Whether a missing tensor may start from its fresh initialisation: the MLM
/// head always may (checkpoints saved from the bare encoder have none);
/// anything else only when `allow` names it or a prefix of it (with or
/// without the encoder's prefix, such as `bert.`).
pub fn may_start_fresh(name: &str, allow: &[String], naming: &Naming) -> bool {
    let short = name.strip_prefix(naming.base).unwrap_or(name);
    naming.head.iter().any(|h| name.starts_with(h))
        || allow.iter().any(|a| !a.is_empty() && (name.starts_with(a.as_str()) || short.starts_with(a.as_str())))
}

/// A CPU float32 copy of a tensor, as safetensors wants it.
struct F32View {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl F32View {
    fn new(t: &Tensor) -> Result<Self> {
        let t = t.f_to_kind(Kind::Float)?.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let n = t.numel();
        let mut values = vec![0f32; n];
        t.f_copy_data(&mut values, n)?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(F32View { shape: t.size().iter().map(|&d| d as usize).collect(), bytes })
    }
}

impl View for &F32View {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes named tensors as float32 safetensors with transformers' `format: pt` metadata.
pub fn write(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let views: Vec<(String, F32View)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), F32View::new(t)?)))
        .collect::<Result<_>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), metadata, path)
        .map_err(|e| match e {
            // The I/O error alone: the wrapper's text repeats it.
            safetensors::SafeTensorError::IoError(io) => anyhow::Error::new(io),
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The first names of a long list, one per line, and how many more there are.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut out = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n    ");
    if names.len() > SHOWN {
        out.push_str(&format!("\n    ... and {} more", names.len() - SHOWN));
    }
    out
}

/// The encoder prefix the unexpected tensors share (`bert` in `bert.encoder...`)
/// when most of them have it and it is not this model's.
fn other_family(unexpected: &[String], naming: &Naming) -> Option<String> {
    let first = unexpected.first()?.split('.').next()?;
    let sharing = unexpected.iter().filter(|n| n.split('.').next() == Some(first)).count();
    let ours = naming.base.trim_end_matches('.');
    (sharing * 2 > unexpected.len() && first != ours && unexpected.len() >= 4).then(|| first.to_string())
}

/// Loads `dir/model.safetensors` into `vars` and reports as transformers
/// does: every missing and unexpected tensor is listed; unlike transformers, a
/// missing encoder tensor that `allow_missing` does not name is an error,
/// since a config that disagrees with its weights would otherwise train from
/// random layers without a word. `depth` is the config's key for its number
/// of layers and its value, for the messages (`num_hidden_layers`, 12).
pub fn load_checked(
    vars: &HashMap<String, Tensor>,
    dir: &Path,
    naming: &Naming,
    allow_missing: &[String],
    depth: (&str, i64),
) -> Result<LoadReport> {
    let (depth_key, layers) = depth;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        bail!("{}: no model.safetensors in this model directory", dir.display());
    }
    let report = load_into(vars, &weights, naming)?;
    let refused: Vec<&String> = report.missing.iter().filter(|n| !may_start_fresh(n, allow_missing, naming)).collect();
    if !refused.is_empty() {
        let unexpected = if report.unexpected.is_empty() {
            String::new()
        } else {
            format!(
                "\n  {} unexpected tensor(s) in the file (renamed, or layers the config lacks):\n    {}",
                report.unexpected.len(),
                listed(&report.unexpected)
            )
        };
        let hint = match other_family(&report.unexpected, naming) {
            Some(family) => format!(
                "\n  the file's encoder is named `{family}.`, not `{}`: these weights are another family's \
                 than config.json's model_type says; use the config.json that came with them",
                naming.base
            ),
            None => String::new(),
        };
        bail!(
            "{} does not match {} ({depth_key} {layers}):\n  {} model tensor(s) missing from the file, which would \
             start from random values:\n    {}{unexpected}{hint}\n  fix config.json, or let them start fresh with \
             model.options.allow_missing: [names or prefixes]",
            weights.display(),
            dir.join("config.json").display(),
            report.missing.len(),
            listed(&report.missing),
        );
    }
    // A plugin's `tracing` is its own copy, with no subscriber: these go to
    // stderr directly, so the user sees them as transformers users do.
    if !report.missing.is_empty() {
        eprintln!(
            "warning: {} tensors not in {} were newly initialised: {}",
            report.missing.len(),
            weights.display(),
            report.missing.join(", ")
        );
    }
    if !report.unexpected.is_empty() {
        eprintln!(
            "warning: {} tensors in {} have no place in this model (config.json: {layers} layers) and are ignored: {}",
            report.unexpected.len(),
            weights.display(),
            report.unexpected.join(", ")
        );
    }
    Ok(report)
}
