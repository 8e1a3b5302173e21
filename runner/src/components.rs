//! Builds the recipe's components through the registry: the dataset, the
//! masker, the model and the metrics. The only place that calls factories.

use std::sync::Arc;

use anyhow::{Context, Result};

use runner_api::{ComponentKind, Dataset, Factory, Masker, Metric, MlmModel, ModelSource, Options, VocabInfo};

use crate::error::user_msg;
use crate::registry::Registry;

fn factory(registry: &Registry, kind: ComponentKind, name: &str) -> Result<Factory> {
    registry.get(kind, name).map(|c| c.factory).map_err(user_msg)
}

pub fn dataset(registry: &Registry, name: &str, options: &Options) -> Result<Box<dyn Dataset>> {
    match factory(registry, ComponentKind::Dataset, name)? {
        Factory::Dataset(f) => f(options).map_err(|e| user_msg(format!("data.options: {e:#}"))),
        _ => unreachable!("looked up by kind"),
    }
}

pub fn masker(
    registry: &Registry,
    name: &str,
    options: &Options,
    rates: runner_api::MaskingRates,
    vocab: &VocabInfo,
) -> Result<Arc<dyn Masker>> {
    match factory(registry, ComponentKind::Masker, name)? {
        Factory::Masker(f) => f(options, rates, vocab).map(Arc::from).map_err(|e| user_msg(format!("masking: {e:#}"))),
        _ => unreachable!("looked up by kind"),
    }
}

pub fn model(registry: &Registry, name: &str, source: &ModelSource) -> Result<Box<dyn MlmModel>> {
    match factory(registry, ComponentKind::Model, name)? {
        Factory::Model(f) => f(source).with_context(|| match source.checkpoint {
            Some(dir) => format!("model `{name}` from {}", dir.display()),
            None => format!("model `{name}`"),
        }),
        _ => unreachable!("looked up by kind"),
    }
}

pub fn metrics(registry: &Registry, names: &[String]) -> Result<Vec<Box<dyn Metric>>> {
    names
        .iter()
        .map(|name| match factory(registry, ComponentKind::Metric, name)? {
            Factory::Metric(f) => f(&Options::new()),
            _ => unreachable!("looked up by kind"),
        })
        .collect()
}
