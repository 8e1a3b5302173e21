//! `runner validate RECIPE`: parse and check a recipe without training: keys,
//! types and ranges, the files it names (corpora, results folder, model folder,
//! tokenizer against the model's vocabulary and positions) and its components;
//! the same checks `run` makes before it writes anything (`recipe::resolve`).

use anyhow::Result;

use super::RecipeArgs;
use crate::recipe;
use crate::registry::Registry;

pub fn validate(args: &RecipeArgs) -> Result<()> {
    let raw = recipe::load(&args.recipe, &args.overrides)?;
    let registry = Registry::discover(&raw.plugins)?;
    let r = recipe::resolve(raw, &args.recipe, &registry)?;
    if let Some(w) = crate::precision::cpu_warning(r.precision, r.device) {
        tracing::warn!("{w}");
    }
    if !r.precision_reason.is_empty() {
        tracing::info!("precision: auto chooses {:?} ({})", r.precision, r.precision_reason);
    }
    println!(
        "{}: ok (run `{}`, model `{}`, dataset `{}`, masking `{}`, metrics {})",
        args.recipe.display(),
        r.raw.run.name,
        r.raw.model.name.as_deref().unwrap_or("(from the checkpoint's config.json once downloaded)"),
        r.dataset,
        r.raw.masking.strategy,
        r.raw.metrics.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
