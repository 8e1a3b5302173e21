//! A model's variables as the runner sees them: parameters with their decay
//! group, and the export as `config.json` + `model.safetensors`.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::VarStore;
use tch::Tensor;

use runner_api::Parameter;

use crate::layers::NO_DECAY;

/// Trainable parameters sorted by name, with their weight-decay group.
pub fn parameters(vs: &VarStore) -> Vec<Parameter> {
    let named = vs.variables();
    let no_decay = no_decay_set(vs);
    let mut names: Vec<&String> = named.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| Parameter {
            name: name.clone(),
            tensor: named[name].shallow_clone(),
            decay: !no_decay.contains(name.as_str()),
        })
        .collect()
}

/// Names of the variables created in the no-decay group.
fn no_decay_set(vs: &VarStore) -> HashSet<String> {
    // tch records the group of each trainable variable; names come from the
    // variable map. Both refer to the same storage, so match on data pointers.
    let named = vs.variables();
    let inner = vs.variables_.lock().expect("var store lock");
    let no_decay_ptrs: HashSet<usize> = inner
        .trainable_variables
        .iter()
        .filter(|v| v.group == NO_DECAY)
        .map(|v| v.tensor.data_ptr() as usize)
        .collect();
    named
        .iter()
        .filter(|(_, t)| no_decay_ptrs.contains(&(t.data_ptr() as usize)))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Number of trainable parameter elements.
pub fn num_parameters(vs: &VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

/// Writes every variable to `dir/model.safetensors` and `config` to `dir/config.json`.
pub fn save_pretrained(vs: &VarStore, config: &serde_json::Value, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(n, t)| (n, t.detach())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    crate::weights::write(&tensors, &dir.join("model.safetensors"))?;
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config)? + "\n")
        .with_context(|| format!("cannot write {}", dir.join("config.json").display()))?;
    Ok(())
}
