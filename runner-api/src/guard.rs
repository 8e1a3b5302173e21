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
use std::sync::Arc;

use anyhow::Result;

use crate::wrap::{Hook, Stream};
use crate::{Component, ComponentKind, Options, ParamDoc};

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

/// A plugin's stream: each `next` runs under the guard; after a panic the
/// stream ends.
struct GuardedStream<'a, T> {
    inner: Stream<'a, T>,
    who: &'a Who,
    call: &'static str,
    done: bool,
}

impl<T> Iterator for GuardedStream<'_, T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.done {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| self.inner.next())).unwrap_or_else(|payload| {
            self.done = true;
            Some(Err(panicked(self.who, &format!("{}: next item", self.call), payload)))
        })
    }
}

/// The plugin-side hook: every call into a component, and every item of a
/// stream it returns, runs in [`guard`].
pub struct GuardHook(pub Who);

impl Hook for GuardHook {
    fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guard(&self.0, method, f)
    }

    fn stream<'a, T: 'a>(&'a self, method: &'static str, items: Stream<'a, T>) -> Stream<'a, T> {
        Box::new(GuardedStream { inner: items, who: &self.0, call: method, done: false })
    }
}

pub type Check = Arc<dyn Fn(&Options) -> Result<()> + Send + Sync>;
/// A model's check of its options against a local checkpoint folder.
pub type CheckpointCheck = Arc<dyn Fn(&Options, &std::path::Path) -> Result<()> + Send + Sync>;
pub use crate::builder::Builder;

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
    /// For a model: the `config.json` `model_type`s it reads (see
    /// [`crate::Registrar::reads_model_types`]).
    pub model_types: Vec<&'static str>,
    /// For a model: its check of options against a checkpoint's `config.json`
    /// (see [`crate::Registrar::checks_checkpoint`]).
    pub checkpoint_check: Option<CheckpointCheck>,
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
        let builder = c.factory.guarded(who.clone());
        Registered { plugin: who.plugin, kind: who.kind, name: c.name, doc: c.doc, params: c.params, check, builder, model_types: vec![], checkpoint_check: None }
    }
}

impl Registered {
    /// Guards a model's checkpoint check as its other calls are guarded.
    pub fn set_checkpoint_check(&mut self, check: fn(&Options, &std::path::Path) -> Result<()>) {
        let w = Who { plugin: self.plugin.clone(), kind: self.kind, name: self.name };
        self.checkpoint_check = Some(Arc::new(move |o: &Options, dir: &std::path::Path| guard(&w, "check", || check(o, dir))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dataset, Document, Documents, Factory};
    use std::path::Path;

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
        assert!(err.contains("plugin `demo` failed in dataset `stream` (read: next item) with a panic: document 1 on fire"), "{err}");
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
