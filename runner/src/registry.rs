//! Where components are found by name. Every plugin registers its components
//! through `runner_api::Registrar`; the registry rejects duplicate names and
//! answers lookups with close matches when a name is unknown.
//!
//! The shipped plugins are linked into the binary and registered here.

use anyhow::Result;

use runner_api::{Component, ComponentKind, Registrar};

/// A component together with the plugin that offered it.
pub struct Entry {
    pub plugin: String,
    pub component: Component,
}

/// All components known to this run.
pub struct Registry {
    entries: Vec<Entry>,
}

impl Registry {
    /// The components of the plugins shipped with the runner.
    pub fn builtin() -> Result<Self> {
        let mut registry = Registry { entries: Vec::new() };
        let plugins: [(&str, fn(&mut Registrar)); 4] = [
            ("text", runner_plugin_text::register),
            ("masking", runner_plugin_masking::register),
            ("bert", runner_plugin_bert::register),
            ("metrics", runner_plugin_metrics::register),
        ];
        for (name, register) in plugins {
            let mut r = Registrar::new(name);
            register(&mut r);
            registry.add(r)?;
        }
        Ok(registry)
    }

    /// Adds a plugin's components; a name already taken for the same kind is an error.
    pub fn add(&mut self, registrar: Registrar) -> Result<()> {
        for component in registrar.components {
            let kind = component.factory.kind();
            if let Some(prev) = self.entries.iter().find(|e| e.component.factory.kind() == kind && e.component.name == component.name) {
                anyhow::bail!(
                    "{kind} component `{}` is offered by both plugin `{}` and plugin `{}`",
                    component.name,
                    prev.plugin,
                    registrar.plugin
                );
            }
            self.entries.push(Entry { plugin: registrar.plugin.clone(), component });
        }
        Ok(())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Looks up a component; the error lists close matches, or all names of that kind.
    pub fn get(&self, kind: ComponentKind, name: &str) -> Result<&Component, String> {
        let of_kind: Vec<&Component> =
            self.entries.iter().map(|e| &e.component).filter(|c| c.factory.kind() == kind).collect();
        if let Some(c) = of_kind.iter().find(|c| c.name == name) {
            return Ok(c);
        }
        let mut close: Vec<&str> = of_kind
            .iter()
            .map(|c| c.name)
            .filter(|n| strsim::normalized_damerau_levenshtein(n, name) >= 0.5 || n.contains(name) || name.contains(n))
            .collect();
        let known: Vec<&str> = of_kind.iter().map(|c| c.name).collect();
        if close.is_empty() {
            close = known.clone();
            return Err(format!("unknown {kind} `{name}` (known: {})", close.join(", ")));
        }
        Err(format!("unknown {kind} `{name}`; did you mean {}? (known: {})", close.join(" or "), known.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_suggest_close_matches() {
        let r = Registry::builtin().unwrap();
        assert!(r.get(ComponentKind::Metric, "perplexity").is_ok());
        let err = r.get(ComponentKind::Metric, "perplexty").unwrap_err();
        assert!(err.contains("did you mean perplexity"), "{err}");
        let err = r.get(ComponentKind::Dataset, "zzz").unwrap_err();
        assert!(err.contains("known: text"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut r = Registry::builtin().unwrap();
        let mut again = Registrar::new("copy");
        runner_plugin_text::register(&mut again);
        let err = r.add(again).unwrap_err().to_string();
        assert!(err.contains("both plugin `text` and plugin `copy`"), "{err}");
    }
}
