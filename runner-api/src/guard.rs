//! Panic guards at the plugin boundary.
//!
//! A panic must not unwind out of a plugin: the runner's standard library
//! cannot catch a panic raised by the plugin's copy of it. So every call into
//! a component goes through [`guard`], and the wrappers here are built inside
//! [`Registrar::add`](crate::Registrar::add), which runs in the plugin: the
//! `catch_unwind` happens on the plugin's side, and the runner receives an
//! error that names the plugin, the component and the call.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;

use crate::wrap::{Hook, Wrapped};
use crate::{
    Component, ComponentKind, Dataset, Document, Documents, Factory, MaskedSequence, Masker, MaskingRates, Metric,
    MlmModel, ModelSource, Options, ParamDoc, RngCore, VocabInfo,
};

/// Which component a call belongs to, for error messages.
#[derive(Debug, Clone)]
pub struct Who {
    pub plugin: String,
    pub kind: ComponentKind,
    pub name: &'static str,
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

fn panicked(who: &Who, call: &str, payload: Box<dyn Any + Send>) -> anyhow::Error {
    anyhow::anyhow!("plugin `{}` failed in {} `{}` ({call}) with a panic: {}", who.plugin, who.kind, who.name, panic_message(payload))
}

/// Runs `f`, turning a panic into an error naming the plugin and component.
pub fn guard<T>(who: &Who, call: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| Err(panicked(who, call, payload)))
}

struct GuardedDataset {
    inner: Box<dyn Dataset>,
    who: Who,
}

impl Dataset for GuardedDataset {
    fn read<'a>(&'a self, path: &Path) -> Result<Documents<'a>> {
        let inner = guard(&self.who, "read", || self.inner.read(path))?;
        Ok(Box::new(GuardedDocuments { inner, who: &self.who, done: false }))
    }
}

/// A plugin's document stream: each `next` runs under the guard; after a
/// panic the stream ends.
struct GuardedDocuments<'a> {
    inner: Documents<'a>,
    who: &'a Who,
    done: bool,
}

impl Iterator for GuardedDocuments<'_> {
    type Item = Result<Document>;
    fn next(&mut self) -> Option<Result<Document>> {
        if self.done {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| self.inner.next())).unwrap_or_else(|payload| {
            self.done = true;
            Some(Err(panicked(self.who, "read: next document", payload)))
        })
    }
}

struct GuardedMasker {
    inner: Box<dyn Masker>,
    who: Who,
}

impl Masker for GuardedMasker {
    fn mask(&self, ids: &[i64], rng: &mut dyn RngCore) -> Result<MaskedSequence> {
        guard(&self.who, "mask", || self.inner.mask(ids, rng))
    }
}

/// The plugin-side hook: every call into a model or metric runs in [`guard`].
pub struct GuardHook(pub Who);

impl Hook for GuardHook {
    fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guard(&self.0, method, f)
    }
}

pub type BuildDataset = Arc<dyn Fn(&Options) -> Result<Box<dyn Dataset>> + Send + Sync>;
pub type BuildMasker = Arc<dyn Fn(&Options, MaskingRates, &VocabInfo) -> Result<Box<dyn Masker>> + Send + Sync>;
pub type BuildModel = Arc<dyn Fn(&ModelSource) -> Result<Box<dyn MlmModel>> + Send + Sync>;
pub type BuildMetric = Arc<dyn Fn(&Options) -> Result<Box<dyn Metric>> + Send + Sync>;
pub type Check = Arc<dyn Fn(&Options) -> Result<()> + Send + Sync>;

/// A guarded factory, by kind.
#[derive(Clone)]
pub enum Builder {
    Dataset(BuildDataset),
    Masker(BuildMasker),
    Model(BuildModel),
    Metric(BuildMetric),
}

/// A component as the registry keeps it: its docs, and guarded calls.
#[derive(Clone)]
pub struct Registered {
    pub plugin: String,
    pub kind: ComponentKind,
    pub name: &'static str,
    pub doc: &'static str,
    pub params: Vec<ParamDoc>,
    pub check: Check,
    pub builder: Builder,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered").field("plugin", &self.plugin).field("kind", &self.kind).field("name", &self.name).finish()
    }
}

impl Registered {
    /// Wraps a plugin's component. Runs inside the plugin (see the module docs).
    pub fn new(plugin: &str, c: Component) -> Self {
        let who = Who { plugin: plugin.to_string(), kind: c.factory.kind(), name: c.name };
        let check_fn = c.check;
        let w = who.clone();
        let check: Check = Arc::new(move |o: &Options| guard(&w, "check", || check_fn(o)));
        let w = who.clone();
        let builder = match c.factory {
            Factory::Dataset(f) => Builder::Dataset(Arc::new(move |o: &Options| {
                let inner = guard(&w, "build", || f(o))?;
                Ok(Box::new(GuardedDataset { inner, who: w.clone() }) as Box<dyn Dataset>)
            })),
            Factory::Masker(f) => Builder::Masker(Arc::new(move |o: &Options, r: MaskingRates, v: &VocabInfo| {
                let inner = guard(&w, "build", || f(o, r, v))?;
                Ok(Box::new(GuardedMasker { inner, who: w.clone() }) as Box<dyn Masker>)
            })),
            Factory::Model(f) => Builder::Model(Arc::new(move |s: &ModelSource| {
                let inner = guard(&w, "build", || f(s))?;
                Ok(Box::new(Wrapped { inner, hook: GuardHook(w.clone()) }) as Box<dyn MlmModel>)
            })),
            Factory::Metric(f) => Builder::Metric(Arc::new(move |o: &Options| {
                let inner = guard(&w, "build", || f(o))?;
                Ok(Box::new(Wrapped { inner, hook: GuardHook(w.clone()) }) as Box<dyn Metric>)
            })),
        };
        Registered { plugin: who.plugin, kind: who.kind, name: c.name, doc: c.doc, params: c.params, check, builder }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicking_dataset(_: &Options) -> Result<Box<dyn Dataset>> {
        panic!("corpus on fire")
    }

    struct PanickingStream;
    impl Dataset for PanickingStream {
        fn read<'a>(&'a self, _: &Path) -> Result<Documents<'a>> {
            Ok(Box::new((0..3).map(|i| if i < 1 { Ok(vec!["fine".to_string()]) } else { panic!("document {i} on fire") })))
        }
    }

    #[test]
    fn a_panic_while_streaming_documents_ends_the_stream_with_an_error() {
        let r = Registered::new(
            "demo",
            Component { name: "stream", doc: "", params: vec![], check: crate::no_options, factory: Factory::Dataset(|_| Ok(Box::new(PanickingStream))) },
        );
        let Builder::Dataset(build) = &r.builder else { panic!("dataset builder expected") };
        let dataset = build(&Options::new()).unwrap();
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let items: Vec<Result<Document>> = dataset.read(Path::new("x")).unwrap().collect();
        std::panic::set_hook(prev);
        assert_eq!(items.len(), 2, "one document, then the error, then the end");
        let err = items[1].as_ref().err().expect("the panic is an error").to_string();
        assert!(err.contains("plugin `demo` failed in dataset `stream` (read: next document) with a panic: document 1 on fire"), "{err}");
    }

    #[test]
    fn a_panic_in_a_factory_becomes_an_error_naming_the_plugin() {
        let r = Registered::new(
            "demo",
            Component {
                name: "boom",
                doc: "",
                params: vec![],
                check: crate::no_options,
                factory: Factory::Dataset(panicking_dataset),
            },
        );
        let Builder::Dataset(build) = &r.builder else { panic!("dataset builder expected") };
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let err = build(&Options::new()).err().expect("the panic is an error").to_string();
        std::panic::set_hook(prev);
        assert!(err.contains("plugin `demo` failed in dataset `boom` (build) with a panic: corpus on fire"), "{err}");
    }
}
