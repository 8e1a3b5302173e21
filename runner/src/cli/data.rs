//! `runner data prepare RECIPE`: build the recipe's token store ahead of a run
//! (on a CPU machine before the GPU job); `runner data stats RECIPE`: what the
//! store holds (building it first if needed).

use anyhow::Result;

use super::RecipeArgs;
use crate::data::{cache, stats, tokenizer, Examples};
use crate::recipe::{self, raw::ExampleMode};
use crate::registry::Registry;

/// Maps (or builds) the recipe's store; returns it with the recipe and vocabulary.
fn store(args: &RecipeArgs) -> Result<(recipe::Recipe, crate::data::store::Store, runner_api::VocabInfo)> {
    let raw = recipe::load(&args.recipe, &args.overrides)?;
    let registry = Registry::discover(&raw.plugins)?;
    let r = recipe::resolve(raw, &args.recipe, &registry)?;
    let sources = crate::recipe::sources(&r)?;
    let tok = tokenizer::load(&sources.tokenizer)?;
    let vocab = tokenizer::vocab_info(&tok, &sources.tokenizer)?;
    let store = cache::store(&r, &sources, &registry, &tok, vocab.vocab_size)?;
    Ok((r, store, vocab))
}

pub fn prepare(args: &RecipeArgs) -> Result<()> {
    let (r, store, _) = store(args)?;
    if !r.raw.data.cache {
        tracing::warn!("data.cache is false: the store was built for nothing; a run builds its own");
    }
    let m = &store.manifest;
    println!("token store: {} ({:.1} MB)", store.dir.display(), m.size() as f64 / 1e6);
    println!(
        "train: {} documents, {} tokens; eval: {} documents, {} tokens (from {:.1} MB of text)",
        m.train.documents,
        m.train.tokens,
        m.eval.documents,
        m.eval.tokens,
        m.text_bytes as f64 / 1e6
    );
    println!("stats: runner data stats {}", args.recipe.display());
    Ok(())
}

pub fn stats(args: &RecipeArgs) -> Result<()> {
    let (r, store, vocab) = store(args)?;
    let train = Examples::new(store.train.clone(), r.examples, r.max_seq_len, r.raw.data.document_attention, &vocab);
    let eval = Examples::new(store.eval.clone(), r.examples, r.max_seq_len, r.raw.data.document_attention, &vocab);
    let what = match (r.examples, r.raw.data.document_attention) {
        (ExampleMode::Packed, false) => format!("packed blocks of {} tokens", r.max_seq_len),
        (ExampleMode::LineByLine, false) => format!("line examples of at most {} tokens", r.max_seq_len),
        (ExampleMode::Packed, true) => format!("rows of {} tokens of framed documents, attention within each", r.max_seq_len),
        (ExampleMode::LineByLine, true) => format!("rows of at most {} tokens of whole framed lines, attention within each", r.max_seq_len),
    };
    print!("{}", stats::report(&store, &train, &eval, &what));
    Ok(())
}
