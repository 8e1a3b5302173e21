//! Builds the recipe's components through the registry: the dataset, the
//! masker, the model and the metrics. The only place that calls factories.
//!
//! Every component is returned wrapped, keeping its plugin library loaded for
//! as long as the component lives and turning the plugin's errors into errors
//! owned by the runner (so they can outlive the library): a [`Wrapped`] with
//! the [`LibraryHook`], whose forwarding `runner_api::contract!` writes from
//! the trait itself, for all four kinds.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use libloading::Library;

use runner_api::guard::Builder;
use runner_api::wrap::{Hook, Stream, Wrapped};
use runner_api::{ComponentKind, Dataset, Masker, MaskingRates, Metric, MlmModel, ModelSource, Options, Tokenize, VocabInfo};

use crate::error::user_msg;
use crate::recipe::raw::MetricEntry;
use crate::registry::{Entry, Registry};

/// Re-creates a plugin's error as a runner-owned one.
fn rehome(e: anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

/// The runner-side hook around every component call: keeps the plugin
/// library loaded while the component lives (and while a stream it returned
/// is read), and re-creates its errors.
pub struct LibraryHook {
    _library: Option<Arc<Library>>,
}

impl Hook for LibraryHook {
    fn call<T>(&self, _method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        f().map_err(rehome)
    }

    fn stream<'a, T: 'a>(&'a self, _method: &'static str, items: Stream<'a, T>) -> Stream<'a, T> {
        Box::new(items.map(|item| item.map_err(rehome)))
    }
}

fn wrapped<T: ?Sized>(inner: Box<T>, e: &Entry) -> Wrapped<T, LibraryHook> {
    Wrapped { inner, hook: LibraryHook { _library: e.library.clone() } }
}

fn entry<'r>(registry: &'r Registry, kind: ComponentKind, name: &str, key: &str) -> Result<&'r Entry> {
    registry.get(kind, name).map_err(|e| user_msg(format!("{key}: {e}")))
}

pub fn dataset(registry: &Registry, name: &str, options: &Options) -> Result<Box<dyn Dataset>> {
    let e = entry(registry, ComponentKind::Dataset, name, "data.dataset")?;
    let Builder::Dataset(build) = &e.component.builder else { unreachable!("looked up by kind") };
    let inner = build(options).map_err(|err| user_msg(format!("data.options: {err:#}")))?;
    Ok(Box::new(wrapped(inner, e)))
}

pub fn masker(
    registry: &Registry,
    name: &str,
    options: &Options,
    rates: MaskingRates,
    vocab: &VocabInfo,
) -> Result<Arc<dyn Masker>> {
    let e = entry(registry, ComponentKind::Masker, name, "masking.strategy")?;
    let Builder::Masker(build) = &e.component.builder else { unreachable!("looked up by kind") };
    let inner = build(options, rates, vocab).map_err(|err| user_msg(format!("masking: {err:#}")))?;
    Ok(Arc::new(wrapped(inner, e)))
}

/// Builds the model. Failures here are the user's to fix (a bad checkpoint or
/// config), so they exit with code 2.
pub fn model(registry: &Registry, name: &str, source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    let e = entry(registry, ComponentKind::Model, name, "model.name")?;
    let Builder::Model(build) = &e.component.builder else { unreachable!("looked up by kind") };
    let inner = build(source).map_err(|err| match source.checkpoint {
        Some(dir) => user_msg(format!("model `{name}` from {}: {err:#}", dir.display())),
        None => user_msg(format!("model `{name}`: {err:#}")),
    })?;
    Ok(Box::new(wrapped(inner, e)))
}

/// Builds every metric of the recipe and prepares it with the run's tokenizer
/// (a probe tokenizes its labelled examples here, once). Two metrics that
/// report the same column are refused.
pub fn metrics(
    registry: &Registry,
    entries: &[MetricEntry],
    tokenizer: &dyn Tokenize,
    vocab: &VocabInfo,
    max_positions: usize,
) -> Result<Vec<Box<dyn Metric>>> {
    let mut built: Vec<Box<dyn Metric>> = Vec::with_capacity(entries.len());
    let mut columns: BTreeMap<String, usize> = BTreeMap::new();
    for (i, m) in entries.iter().enumerate() {
        let key = format!("metrics[{i}]");
        let e = entry(registry, ComponentKind::Metric, m.name(), &key)?;
        let Builder::Metric(build) = &e.component.builder else { unreachable!("looked up by kind") };
        let inner = build(&m.options()).map_err(|err| user_msg(format!("{key}.options: {err:#}")))?;
        let mut metric = Box::new(wrapped(inner, e)) as Box<dyn Metric>;
        metric.prepare(tokenizer, vocab, max_positions).map_err(|err| user_msg(format!("{key}.options: {err:#}")))?;
        for column in metric.compute()?.into_keys() {
            if let Some(j) = columns.insert(column.clone(), i) {
                return Err(user_msg(format!(
                    "{key}: reports `{column}`, as metrics[{j}] does (give each probe its own `name` option)"
                )));
            }
        }
        built.push(metric);
    }
    Ok(built)
}
