//! One place that declares a component trait and its forwarding.
//!
//! A call into a component passes through two wrappers: the plugin's panic
//! guard ([`crate::guard`]) and the runner's, which keeps the plugin library
//! loaded and re-creates its errors. Both are a [`Wrapped`] component with a
//! [`Hook`] around every call. [`contract!`](crate::contract) declares a trait
//! from a list of methods and, from the same list, implements the trait for
//! `Wrapped<dyn Trait, H>`: a method added to the contract is forwarded by both
//! wrappers with no other edit, and [`Methods::METHODS`] names every method,
//! so a test can check that each one reaches the hook. All four component
//! contracts (`Dataset`, `Masker`, `MlmModel`, `Metric`) are declared this way.

use anyhow::Result;

/// Results one at a time, as a method declared `as stream` returns them (a
/// dataset's documents). An `Err` item ends the stream.
pub type Stream<'a, T> = Box<dyn Iterator<Item = Result<T>> + Send + 'a>;

/// What a wrapper does around each call into the wrapped component.
pub trait Hook: Send {
    fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T>;

    /// Around the items of a stream that `method` returned: each `next` is a
    /// call into the component too. The default passes them through.
    fn stream<'a, T: 'a>(&'a self, method: &'static str, items: Stream<'a, T>) -> Stream<'a, T> {
        let _ = method;
        items
    }
}

/// A component and the hook around its calls. Field order matters: the
/// component is dropped before the hook (which may hold its library).
pub struct Wrapped<T: ?Sized, H> {
    pub inner: Box<T>,
    pub hook: H,
}

/// The names of a contract's methods, in declaration order.
pub trait Methods {
    const METHODS: &'static [&'static str];
}

/// Declares `pub trait $Trait: Bounds { ... }` and its forwarding through
/// [`Wrapped`]. Methods take `&self` or `&mut self`, return `Result<_>`, and
/// may have a default body written `= { ... };`. A `&self` method that returns
/// `Result<Stream<'_, T>>` (or an alias of it) is written `... -> Result<...> as stream;`
/// so that each item also goes through the hook ([`Hook::stream`]).
#[macro_export]
macro_rules! contract {
    ($(#[$doc:meta])* pub trait $Trait:ident: $b0:ident $(+ $bn:ident)* { $($body:tt)* }) => {
        $crate::contract!(@munch $Trait [$(#[$doc])*] [$b0 $(+ $bn)*] [] [] [] $($body)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]) => {
        $($doc)*
        pub trait $Trait: $($bounds)* { $($decl)* }
        impl<H: $crate::wrap::Hook> $Trait for $crate::wrap::Wrapped<dyn $Trait, H> where Self: $($bounds)* { $($fwd)* }
        impl $crate::wrap::Methods for dyn $Trait {
            const METHODS: &'static [&'static str] = &[$($names)*];
        }
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty as stream; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*] [$($bounds)*]
            [$($decl)* $(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret;]
            [$($fwd)* fn $name(&self $(, $arg: $ty)*) -> $ret {
                let items = self.hook.call(stringify!($name), || self.inner.$name($($arg),*))?;
                Ok(self.hook.stream(stringify!($name), items))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*] [$($bounds)*]
            [$($decl)* $(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret;]
            [$($fwd)* fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.hook.call(stringify!($name), || self.inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty = $default:block; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*] [$($bounds)*]
            [$($decl)* $(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret $default]
            [$($fwd)* fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.hook.call(stringify!($name), || self.inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*] [$($bounds)*]
            [$($decl)* $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret;]
            [$($fwd)* fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                let inner = &mut self.inner;
                self.hook.call(stringify!($name), || inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($bounds:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty = $default:block; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*] [$($bounds)*]
            [$($decl)* $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret $default]
            [$($fwd)* fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                let inner = &mut self.inner;
                self.hook.call(stringify!($name), || inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use anyhow::Result;
    use tch::{Device, Kind, Tensor};

    use super::{Hook, Methods, Wrapped};
    use crate::{
        Dataset, Document, Documents, MaskedSequence, Masker, Metric, MlmBatch, MlmModel, MlmOutput, Mode, ModelInfo, Parameter, RngCore,
        Tokenize, VocabInfo,
    };

    /// Records which methods passed through it.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<BTreeSet<&'static str>>>);

    impl Hook for Recorder {
        fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
            self.0.lock().unwrap().insert(method);
            f()
        }
    }

    struct Model;

    impl MlmModel for Model {
        fn forward_mlm(&self, _: &MlmBatch, _: Mode) -> Result<MlmOutput> {
            let t = || Tensor::zeros([1], (Kind::Float, Device::Cpu));
            Ok(MlmOutput { loss: t(), logits: t(), labels: t() })
        }
        fn logits(&self, ids: &Tensor, _: &Tensor) -> Result<Tensor> {
            Ok(ids.shallow_clone())
        }
        fn parameters(&self) -> Result<Vec<Parameter>> {
            Ok(vec![])
        }
        fn save_pretrained(&self, _: &Path) -> Result<()> {
            Ok(())
        }
        fn info(&self) -> Result<ModelInfo> {
            Ok(ModelInfo { device: Device::Cpu, vocab_size: 1, max_positions: 1, num_parameters: 0, document_attention: false })
        }
        fn hidden_states(&self, ids: &Tensor, _: &Tensor) -> Result<Tensor> {
            Ok(ids.shallow_clone())
        }
    }

    /// One id per byte.
    struct Bytes;

    impl Tokenize for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<i64>> {
            Ok(text.bytes().map(i64::from).collect())
        }
    }

    /// A metric that tokenizes its own text in `prepare`.
    struct Prepared(usize);

    impl Metric for Prepared {
        fn reset(&mut self) -> Result<()> {
            Ok(())
        }
        fn update(&mut self, _: &MlmOutput) -> Result<()> {
            Ok(())
        }
        fn compute(&self) -> Result<BTreeMap<String, f64>> {
            Ok(BTreeMap::from([("tokens".to_string(), self.0 as f64)]))
        }
        fn prepare(&mut self, tokenizer: &dyn Tokenize, _: &VocabInfo, max_positions: usize) -> Result<()> {
            self.0 = tokenizer.encode("abc")?.len().min(max_positions);
            Ok(())
        }
    }

    /// A metric with the default `update_with_model`, `partial_sums` and `set_partial_sums`.
    struct Count(f64);

    impl Metric for Count {
        fn reset(&mut self) -> Result<()> {
            self.0 = 0.0;
            Ok(())
        }
        fn update(&mut self, _: &MlmOutput) -> Result<()> {
            self.0 += 1.0;
            Ok(())
        }
        fn compute(&self) -> Result<BTreeMap<String, f64>> {
            Ok(BTreeMap::from([("count".to_string(), self.0)]))
        }
    }

    fn batch() -> MlmBatch {
        let t = || Tensor::zeros([1, 1], (Kind::Int64, Device::Cpu));
        MlmBatch { input_ids: t(), attention_mask: t(), labels: t(), documents: None }
    }

    /// Calls every method of the model contract through a wrapper; every one
    /// must reach the hook, and the list of methods must be the contract's.
    #[test]
    fn every_model_method_is_forwarded() {
        let hook = Recorder::default();
        let w: Box<dyn MlmModel> = Box::new(Wrapped { inner: Box::new(Model) as Box<dyn MlmModel>, hook: hook.clone() });
        let ids = Tensor::zeros([1, 1], (Kind::Int64, Device::Cpu));
        w.forward_mlm(&batch(), Mode::Train { dropout_key: 3 }).unwrap();
        let _ = w.logits(&ids, &ids).unwrap();
        w.parameters().unwrap();
        w.save_pretrained(Path::new("/nonexistent")).unwrap();
        w.info().unwrap();
        assert_eq!(w.hidden_states(&ids, &ids).unwrap().size(), [1, 1]);
        let seen: Vec<&str> = hook.0.lock().unwrap().iter().copied().collect();
        let mut all: Vec<&str> = <dyn MlmModel as Methods>::METHODS.to_vec();
        all.sort();
        assert_eq!(seen, all, "a method of MlmModel was not called here or not forwarded");
    }

    /// A vocabulary with nothing in it: the calls below only pass it on.
    fn empty_vocab() -> VocabInfo {
        let special = crate::SpecialIds { mask: 0, pad: 0, cls: 0, sep: 0 };
        VocabInfo::new(vec![], special, &[], crate::WordMarks::EveryToken)
    }

    #[test]
    fn every_metric_method_is_forwarded_defaults_included() {
        let hook = Recorder::default();
        let mut w: Box<dyn Metric> = Box::new(Wrapped { inner: Box::new(Count(0.0)) as Box<dyn Metric>, hook: hook.clone() });
        let out = Model.forward_mlm(&batch(), Mode::Eval).unwrap();
        w.reset().unwrap();
        w.update(&out).unwrap();
        assert_eq!(w.compute().unwrap()["count"], 1.0);
        assert_eq!(w.columns().unwrap(), []);
        let vocab = empty_vocab();
        w.update_with_model(&Model, &[], &vocab).unwrap();
        w.prepare(&Bytes, &vocab, 8).unwrap();
        assert_eq!(w.partial_sums().unwrap(), None);
        assert!(w.set_partial_sums(&[1.0]).is_err());
        let seen: Vec<&str> = hook.0.lock().unwrap().iter().copied().collect();
        let mut all: Vec<&str> = <dyn Metric as Methods>::METHODS.to_vec();
        all.sort();
        assert_eq!(seen, all, "a method of Metric was not called here or not forwarded");
    }

    /// Passes one dataset through a wrapper whose hook counts stream items too.
    struct Lines;

    impl Dataset for Lines {
        fn read(&self, _: &Path) -> Result<Documents<'_>> {
            Ok(Box::new((0..3).map(|i| Ok(vec![format!("line {i}")]))))
        }
    }

    /// Records calls and tags every streamed item's first line with the method.
    #[derive(Clone, Default)]
    struct StreamRecorder(Recorder);

    impl Hook for StreamRecorder {
        fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
            self.0.call(method, f)
        }
        fn stream<'a, T: 'a>(&'a self, method: &'static str, items: super::Stream<'a, T>) -> super::Stream<'a, T> {
            let seen = self.0 .0.clone();
            Box::new(items.inspect(move |_| {
                seen.lock().unwrap().insert(if method == "read" { "read: item" } else { "other" });
            }))
        }
    }

    #[test]
    fn every_dataset_and_masker_method_is_forwarded_stream_items_included() {
        let hook = StreamRecorder::default();
        let d: Box<dyn Dataset> = Box::new(Wrapped { inner: Box::new(Lines) as Box<dyn Dataset>, hook: hook.clone() });
        let docs: Vec<Document> = d.read(Path::new("x")).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(docs.len(), 3);
        let seen: Vec<&str> = hook.0 .0.lock().unwrap().iter().copied().collect();
        assert_eq!(seen, ["read", "read: item"], "the call and its items reach the hook");
        assert_eq!(<dyn Dataset as Methods>::METHODS, ["read"]);

        struct Identity;
        impl Masker for Identity {
            fn mask(&self, ids: &[i64], _: &mut dyn RngCore) -> Result<MaskedSequence> {
                Ok(MaskedSequence { input_ids: ids.to_vec(), labels: vec![crate::IGNORE_INDEX; ids.len()] })
            }
        }
        let hook = Recorder::default();
        let m: std::sync::Arc<dyn Masker> = std::sync::Arc::new(Wrapped { inner: Box::new(Identity) as Box<dyn Masker>, hook: hook.clone() });
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
        assert_eq!(m.mask(&[5, 6], &mut rng).unwrap().input_ids, [5, 6]);
        let seen: Vec<&str> = hook.0.lock().unwrap().iter().copied().collect();
        let mut all: Vec<&str> = <dyn Masker as Methods>::METHODS.to_vec();
        all.sort();
        assert_eq!(seen, all, "a method of Masker was not called here or not forwarded");
    }

    /// `prepare` reaches the metric itself through a wrapper, tokenizer included;
    /// a model without `hidden_states` says so instead of panicking.
    #[test]
    fn prepare_hands_the_tokenizer_through_and_features_default_to_an_error() {
        let mut w: Box<dyn Metric> =
            Box::new(Wrapped { inner: Box::new(Prepared(0)) as Box<dyn Metric>, hook: Recorder::default() });
        let vocab = empty_vocab();
        w.prepare(&Bytes, &vocab, 2).unwrap();
        assert_eq!(w.compute().unwrap()["tokens"], 2.0);

        struct NoFeatures;
        impl MlmModel for NoFeatures {
            fn forward_mlm(&self, b: &MlmBatch, m: Mode) -> Result<MlmOutput> {
                Model.forward_mlm(b, m)
            }
            fn logits(&self, ids: &Tensor, m: &Tensor) -> Result<Tensor> {
                Model.logits(ids, m)
            }
            fn parameters(&self) -> Result<Vec<Parameter>> {
                Ok(vec![])
            }
            fn save_pretrained(&self, _: &Path) -> Result<()> {
                Ok(())
            }
            fn info(&self) -> Result<ModelInfo> {
                Model.info()
            }
        }
        let ids = Tensor::zeros([1, 1], (Kind::Int64, Device::Cpu));
        let e = NoFeatures.hidden_states(&ids, &ids).unwrap_err();
        assert!(e.to_string().contains("no hidden states"), "{e}");
    }
}
