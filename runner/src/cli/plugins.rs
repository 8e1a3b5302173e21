//! `runner plugins`: every component found, its kind, its parameters with
//! defaults, and one line of docs.

use std::path::PathBuf;

use anyhow::Result;

use crate::registry::Registry;

pub fn list(extra: &[PathBuf]) -> Result<()> {
    let registry = Registry::discover(extra)?;
    let mut entries: Vec<_> = registry.entries().iter().collect();
    entries.sort_by_key(|e| (e.component.kind, e.component.name));
    for e in entries {
        let c = &e.component;
        let from = e.path.as_ref().map_or("built in".to_string(), |p| p.display().to_string());
        println!("{:<8} {:<20} {}", c.kind.as_str(), c.name, c.doc);
        println!("{:<8} {:<20} plugin `{}` ({from})", "", "", c.plugin);
        if !c.model_types.is_empty() {
            println!("{:<8} {:<20} reads checkpoints of model_type {}", "", "", c.model_types.join(", "));
        }
        for p in &c.params {
            println!("{:<8}   {:<18} = {:<12} {}", "", p.name, p.default, p.doc);
        }
    }
    Ok(())
}
