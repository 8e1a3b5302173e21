//! `--set key.path=value` overrides, applied to the recipe's YAML tree before
//! it is deserialized, so an override is checked exactly like the file.

use anyhow::{bail, Context, Result};
use serde_yaml::{Mapping, Value};

/// One parsed `--set` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub value: Value,
}

impl std::str::FromStr for Override {
    type Err = anyhow::Error;

    /// Parses `a.b.c=value`; the value is read as YAML (`0.3`, `true`, `[a, b]`, `null`).
    fn from_str(s: &str) -> Result<Self> {
        let Some((key, value)) = s.split_once('=') else {
            bail!("--set {s}: expected key.path=value");
        };
        let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("--set {s}: `{key}` is not a key path like training.lr");
        }
        let value: Value = if value.trim().is_empty() {
            Value::String(String::new())
        } else {
            serde_yaml::from_str(value).with_context(|| format!("--set {s}: `{value}` is not a YAML value"))?
        };
        Ok(Override { path, value })
    }
}

/// Sets `o.path` in `tree`, creating mappings on the way.
pub fn apply(tree: &mut Value, o: &Override) -> Result<()> {
    let mut node = tree;
    for (i, key) in o.path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = node else {
            bail!("--set {}: `{}` is not a section", o.path.join("."), o.path[..i].join("."));
        };
        let k = Value::String(key.clone());
        if i + 1 == o.path.len() {
            map.insert(k, o.value.clone());
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    unreachable!("override paths are never empty")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_values_with_yaml_types() {
        let mut tree: Value = serde_yaml::from_str("training: {lr: 1.0}\nrun: {name: a}").unwrap();
        apply(&mut tree, &"training.lr=3e-4".parse().unwrap()).unwrap();
        apply(&mut tree, &"model.options.config.hidden_size=64".parse().unwrap()).unwrap();
        apply(&mut tree, &"run.name=b".parse().unwrap()).unwrap();
        assert_eq!(tree["training"]["lr"].as_f64(), Some(3e-4));
        assert_eq!(tree["model"]["options"]["config"]["hidden_size"].as_i64(), Some(64));
        assert_eq!(tree["run"]["name"].as_str(), Some("b"));
    }

    #[test]
    fn rejects_malformed_overrides() {
        assert!("training.lr".parse::<Override>().is_err());
        assert!("a..b=1".parse::<Override>().is_err());
        let mut tree: Value = serde_yaml::from_str("run: {name: a}").unwrap();
        let err = apply(&mut tree, &"run.name.x=1".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("`run.name` is not a section"), "{err}");
    }
}
