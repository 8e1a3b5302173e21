//! The declaration every plugin library exports, and [`declare_plugin!`].
//!
//! The runner reads `RUNNER_PLUGIN_DECLARATION` from a library before calling
//! anything in it, and refuses the library if any field differs from its own:
//! Rust has no stable ABI, so a plugin must come from the same compiler, the
//! same API sources and the same tch/libtorch. The first two fields (magic and
//! ABI version) keep their place in every ABI version, so any runner can read
//! them safely.

/// "RUNNERPL" in ASCII.
pub const PLUGIN_MAGIC: u64 = 0x5255_4e4e_4552_504c;
/// Bumped whenever [`PluginDeclaration`]'s layout or meaning changes.
pub const ABI_VERSION: u32 = 1;
/// The name of the exported static.
pub const DECLARATION_SYMBOL: &[u8] = b"RUNNER_PLUGIN_DECLARATION\0";

/// The version of this API crate.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
/// `rustc -vV`'s first line for the compiler that built this crate.
pub const RUSTC_VERSION: &str = env!("RUNNER_API_RUSTC_VERSION");
/// The tch crate this API is pinned to (from the workspace's Cargo.lock).
pub const TCH_VERSION: &str = env!("RUNNER_API_TCH_VERSION");
/// The libtorch (torch wheel) version tch was built against.
pub const LIBTORCH_VERSION: &str = env!("RUNNER_API_LIBTORCH_VERSION");
/// A hash of this crate's sources, compiler and target.
pub const BUILD_FINGERPRINT: &str = env!("RUNNER_API_FINGERPRINT");

/// A `&'static str` with a C layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StrRef {
    ptr: *const u8,
    len: usize,
}

impl StrRef {
    pub const fn new(s: &'static str) -> Self {
        StrRef { ptr: s.as_ptr(), len: s.len() }
    }

    /// # Safety
    /// The pointer must come from [`StrRef::new`] in a library that is still loaded.
    pub unsafe fn as_str(&self) -> &str {
        // SAFETY: made from a &'static str by `new`; the caller keeps its library loaded.
        unsafe { std::str::from_utf8_unchecked(std::slice::from_raw_parts(self.ptr, self.len)) }
    }
}

/// What a plugin library exports under [`DECLARATION_SYMBOL`].
#[repr(C)]
pub struct PluginDeclaration {
    pub magic: u64,
    pub abi_version: u32,
    pub rustc_version: StrRef,
    pub api_version: StrRef,
    pub tch_version: StrRef,
    pub libtorch_version: StrRef,
    pub fingerprint: StrRef,
    /// The plugin's name.
    pub name: StrRef,
    /// Registers the plugin's components. Catches its own panics (returns false).
    pub register: fn(&mut crate::Registrar) -> bool,
}

// SAFETY: every field is immutable static data or a function pointer.
unsafe impl Sync for PluginDeclaration {}

impl PluginDeclaration {
    /// The declaration of a plugin built against this very API crate.
    pub const fn current(name: &'static str, register: fn(&mut crate::Registrar) -> bool) -> Self {
        PluginDeclaration {
            magic: PLUGIN_MAGIC,
            abi_version: ABI_VERSION,
            rustc_version: StrRef::new(RUSTC_VERSION),
            api_version: StrRef::new(API_VERSION),
            tch_version: StrRef::new(TCH_VERSION),
            libtorch_version: StrRef::new(LIBTORCH_VERSION),
            fingerprint: StrRef::new(BUILD_FINGERPRINT),
            name: StrRef::new(name),
            register,
        }
    }

    /// Fields that must match, as (what, plugin's value, runner's value).
    ///
    /// # Safety
    /// `self` must be a declaration with this ABI version from a loaded library.
    pub unsafe fn compare(&self) -> Vec<(&'static str, String, String)> {
        let mine = PluginDeclaration::current("", |_| true);
        // SAFETY: same ABI version (checked by the caller), library loaded.
        let pairs = unsafe {
            [
                ("rustc", self.rustc_version.as_str(), mine.rustc_version.as_str()),
                ("runner-api", self.api_version.as_str(), mine.api_version.as_str()),
                ("tch", self.tch_version.as_str(), mine.tch_version.as_str()),
                ("libtorch", self.libtorch_version.as_str(), mine.libtorch_version.as_str()),
                ("build fingerprint", self.fingerprint.as_str(), mine.fingerprint.as_str()),
            ]
        };
        pairs
            .into_iter()
            .filter(|(_, a, b)| a != b)
            .map(|(what, a, b)| (what, a.to_string(), b.to_string()))
            .collect()
    }
}

/// Runs a plugin's `register` function with panics caught and the plugin's
/// panic messages kept off stderr (they come back as errors instead).
pub fn run_register(register: fn(&mut crate::Registrar), registrar: &mut crate::Registrar) -> bool {
    std::panic::set_hook(Box::new(|_| {}));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| register(registrar))).is_ok()
}

/// Exports a plugin's declaration: `declare_plugin!("my-plugin", register);`
/// where `fn register(r: &mut runner_api::Registrar)` adds the components.
/// Build the crate as a `cdylib`.
#[macro_export]
macro_rules! declare_plugin {
    ($name:expr, $register:path) => {
        #[no_mangle]
        pub static RUNNER_PLUGIN_DECLARATION: $crate::PluginDeclaration =
            $crate::PluginDeclaration::current($name, |r| $crate::plugin::run_register($register, r));
    };
    // For tests of the loader: a declaration that claims another ABI or API version.
    ($name:expr, $register:path, abi_version = $abi:expr) => {
        #[no_mangle]
        pub static RUNNER_PLUGIN_DECLARATION: $crate::PluginDeclaration = $crate::PluginDeclaration {
            abi_version: $abi,
            ..$crate::PluginDeclaration::current($name, |r| $crate::plugin::run_register($register, r))
        };
    };
    ($name:expr, $register:path, api_version = $api:expr) => {
        #[no_mangle]
        pub static RUNNER_PLUGIN_DECLARATION: $crate::PluginDeclaration = $crate::PluginDeclaration {
            api_version: $crate::StrRef::new($api),
            ..$crate::PluginDeclaration::current($name, |r| $crate::plugin::run_register($register, r))
        };
    };
}
