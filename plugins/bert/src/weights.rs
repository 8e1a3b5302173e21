//! Reading and writing Hugging Face `model.safetensors` for BERT.
//!
//! Reading accepts checkpoints saved from `BertModel` (no `bert.` prefix, no MLM
//! head), `BertForMaskedLM` and `BertForPreTraining`, and old TF-style
//! `LayerNorm.gamma/beta` names. Writing uses transformers' names and metadata.

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
    /// Checkpoint tensors with a place in `BertForMaskedLM` that this model
    /// (as its config describes it) has no variable for: a renamed tensor, or a
    /// layer beyond `num_hidden_layers`.
    pub unexpected: Vec<String>,
    /// Checkpoint tensors that `BertForMaskedLM` never uses (pooler, NSP head,
    /// the tied decoder weight, position ids).
    pub unused: Vec<String>,
}

/// Maps a checkpoint tensor name to this model's name, or `None` when the
/// tensor has no place in `BertForMaskedLM` (tied decoder, pooler, NSP head).
fn canonical_name(name: &str) -> Option<String> {
    let mut name = name.to_string();
    if name.starts_with("embeddings.") || name.starts_with("encoder.") || name.starts_with("pooler.") {
        name = format!("bert.{name}");
    }
    name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias");
    if name == "cls.predictions.decoder.bias" {
        // transformers ties decoder.bias to cls.predictions.bias.
        return Some("cls.predictions.bias".into());
    }
    let ignored = name.starts_with("bert.pooler.")
        || name.starts_with("cls.seq_relationship.")
        || name.ends_with("position_ids")
        || name == "cls.predictions.decoder.weight"; // tied to the word embeddings
    (!ignored).then_some(name)
}

/// Copies checkpoint tensors into the model's variables, by name. Every shape
/// that differs from the model's is listed in one error; names are matched as
/// [`LoadReport`] says.
pub fn load_into(vars: &HashMap<String, Tensor>, path: &Path) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(path)
        .with_context(|| format!("cannot read safetensors file {}", path.display()))?;
    let mut by_name: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut report = LoadReport::default();
    for (name, t) in tensors {
        match canonical_name(&name) {
            Some(n) if vars.contains_key(&n) => {
                // Prefer cls.predictions.bias over its tied decoder.bias twin.
                if name != "cls.predictions.decoder.bias" || !by_name.contains_key(&n) {
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
/// head (`cls.`) always may (checkpoints saved from `BertModel` have none);
/// anything else only when `allow` names it or a prefix of it (with or
/// without the leading `bert.`).
pub fn may_start_fresh(name: &str, allow: &[String]) -> bool {
    let short = name.strip_prefix("bert.").unwrap_or(name);
    name.starts_with("cls.") || allow.iter().any(|a| !a.is_empty() && (name.starts_with(a.as_str()) || short.starts_with(a.as_str())))
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
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{canonical_name, may_start_fresh};

    #[test]
    fn only_the_head_or_allowed_names_may_start_fresh() {
        let allow = vec!["encoder.layer.2.".to_string(), "bert.embeddings.token_type_embeddings.weight".to_string()];
        assert!(may_start_fresh("cls.predictions.transform.dense.weight", &[]));
        assert!(!may_start_fresh("bert.encoder.layer.2.output.dense.weight", &[]));
        assert!(may_start_fresh("bert.encoder.layer.2.output.dense.weight", &allow));
        assert!(!may_start_fresh("bert.encoder.layer.1.output.dense.weight", &allow));
        assert!(may_start_fresh("bert.embeddings.token_type_embeddings.weight", &allow));
        assert!(!may_start_fresh("bert.embeddings.word_embeddings.weight", &[String::new()]));
    }

    #[test]
    fn names_map_to_masked_lm_layout() {
        assert_eq!(canonical_name("embeddings.word_embeddings.weight").unwrap(), "bert.embeddings.word_embeddings.weight");
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma").unwrap(),
            "bert.encoder.layer.0.output.LayerNorm.weight"
        );
        assert_eq!(canonical_name("cls.predictions.decoder.bias").unwrap(), "cls.predictions.bias");
        assert!(canonical_name("pooler.dense.weight").is_none());
        assert!(canonical_name("cls.predictions.decoder.weight").is_none());
        assert!(canonical_name("bert.embeddings.position_ids").is_none());
    }
}
