//! One place that declares a component trait and its forwarding.
//!
//! A call into a component passes through two wrappers: the plugin's panic
//! guard ([`crate::guard`]) and the runner's, which keeps the plugin library
//! loaded and re-creates its errors. Both are a [`Wrapped`] component with a
//! [`Hook`] around every call. [`contract!`](crate::contract) declares a trait
//! from a list of methods and, from the same list, implements the trait for
//! `Wrapped<dyn Trait, H>`: a method added to the contract is forwarded by both
//! wrappers with no other edit, and [`Methods::METHODS`] names every method,
//! so a test can check that each one reaches the hook.

use anyhow::Result;

/// What a wrapper does around each call into the wrapped component.
pub trait Hook: Send {
    fn call<T>(&self, method: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T>;
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

/// Declares `pub trait $Trait: Send { ... }` and its forwarding through
/// [`Wrapped`]. Methods take `&self` or `&mut self`, return `Result<_>`, and
/// may have a default body written `= { ... };`.
#[macro_export]
macro_rules! contract {
    ($(#[$doc:meta])* pub trait $Trait:ident: Send { $($body:tt)* }) => {
        $crate::contract!(@munch $Trait [$(#[$doc])*] [] [] [] $($body)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]) => {
        $($doc)*
        pub trait $Trait: Send { $($decl)* }
        impl<H: $crate::wrap::Hook> $Trait for $crate::wrap::Wrapped<dyn $Trait, H> { $($fwd)* }
        impl $crate::wrap::Methods for dyn $Trait {
            const METHODS: &'static [&'static str] = &[$($names)*];
        }
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*]
            [$($decl)* $(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret;]
            [$($fwd)* fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.hook.call(stringify!($name), || self.inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty = $default:block; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*]
            [$($decl)* $(#[$m])* fn $name(&self $(, $arg: $ty)*) -> $ret $default]
            [$($fwd)* fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.hook.call(stringify!($name), || self.inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*]
            [$($decl)* $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret;]
            [$($fwd)* fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                let inner = &mut self.inner;
                self.hook.call(stringify!($name), || inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
    (@munch $Trait:ident [$($doc:tt)*] [$($decl:tt)*] [$($fwd:tt)*] [$($names:tt)*]
        $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty = $default:block; $($rest:tt)*) => {
        $crate::contract!(@munch $Trait [$($doc)*]
            [$($decl)* $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret $default]
            [$($fwd)* fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                let inner = &mut self.inner;
                self.hook.call(stringify!($name), || inner.$name($($arg),*))
            }]
            [$($names)* stringify!($name),]
            $($rest)*);
    };
}
