//! Where components are found by name, and the only place that touches
//! `libloading`.
//!
//! Plugin libraries are looked for in, in order:
//! 1. the folder of the `runner` binary (`librunner_plugin_*.so`, the shipped plugins)
//!    and its `plugins/` subfolder;
//! 2. the `plugins:` entries of the recipe (files or folders);
//! 3. `RUNNER_PLUGIN_PATH` (`:`-separated files or folders).
//!
//! Each file is checked to be a whole ELF shared library (`elf.rs`) before
//! `dlopen` maps it, and opened by its absolute path, so no other folder is searched.
//! Each library's [`PluginDeclaration`] is checked before anything in it runs;
//! a library built by another compiler, API or libtorch is refused with a
//! message naming both sides' versions. Two components of the same kind and
//! name are refused. A library stays loaded as long as the registry or any
//! component made from it lives (see `components.rs`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use libloading::Library;

use runner_api::guard::Registered;
use runner_api::plugin::DECLARATION_SYMBOL;
use runner_api::{ComponentKind, PluginDeclaration, Registrar, ABI_VERSION, PLUGIN_MAGIC};

use crate::error::user_msg;

/// A component and where it came from.
pub struct Entry {
    pub component: Registered,
    /// The library file, or `None` for components registered in-process.
    pub path: Option<PathBuf>,
    /// Keeps the library loaded while this entry lives.
    pub library: Option<Arc<Library>>,
}

/// All components known to this process.
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    loaded: Vec<PathBuf>,
}

/// Shared-library file name suffix on this platform.
const DYLIB_SUFFIX: &str = std::env::consts::DLL_SUFFIX;

impl Registry {
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Loads the shipped plugins, then those in `extra` (recipe `plugins:`),
    /// then those in `RUNNER_PLUGIN_PATH`.
    pub fn discover(extra: &[PathBuf]) -> Result<Self> {
        let mut registry = Registry::empty();
        if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
            let shipped = |p: &Path| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("librunner_plugin_") && n.ends_with(DYLIB_SUFFIX))
            };
            for lib in files_in(&dir, shipped)? {
                registry.load(&lib)?;
            }
            if dir.join("plugins").is_dir() {
                for lib in files_in(&dir.join("plugins"), is_dylib)? {
                    registry.load(&lib)?;
                }
            }
        }
        let from_env: Vec<PathBuf> = std::env::var_os("RUNNER_PLUGIN_PATH")
            .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
            .unwrap_or_default();
        for (origin, path) in extra.iter().map(|p| ("recipe `plugins`", p)).chain(from_env.iter().map(|p| ("RUNNER_PLUGIN_PATH", p))) {
            if path.is_dir() {
                for lib in files_in(path, is_dylib)? {
                    registry.load(&lib)?;
                }
            } else if path.is_file() {
                registry.load(path)?;
            } else {
                return Err(user_msg(format!("{origin}: {} is neither a plugin library nor a folder", path.display())));
            }
        }
        Ok(registry)
    }

    /// Loads one plugin library, checks its declaration and registers its components.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let shown = path.display();
        // dlopen gets the absolute path: a bare file name would make it search the
        // system's library folders instead of the one named.
        let canonical = path.canonicalize().map_err(|e| user_msg(format!("{shown}: cannot load plugin library: {e}")))?;
        if self.loaded.contains(&canonical) {
            return Ok(());
        }
        // A library cut short would be mapped past its end (SIGBUS); refuse it first.
        crate::elf::check_shared_library(&canonical)
            .map_err(|e| user_msg(format!("{shown}: cannot load plugin library: {e}")))?;
        // SAFETY: loading runs the library's initialisers. Plugin libraries are
        // Rust cdylibs, whose initialisers do nothing beyond the standard library's.
        let library =
            unsafe { Library::new(&canonical) }.map_err(|e| user_msg(format!("{shown}: cannot load plugin library: {e}")))?;
        // SAFETY: the symbol is a static `PluginDeclaration`; we only read its
        // magic and ABI version (fixed in every ABI version) before trusting the rest.
        let decl: &PluginDeclaration = unsafe {
            let symbol = library
                .get::<*const PluginDeclaration>(DECLARATION_SYMBOL)
                .map_err(|_| user_msg(format!("{shown}: not a runner plugin (no RUNNER_PLUGIN_DECLARATION; use runner_api::declare_plugin!)")))?;
            &**symbol
        };
        if decl.magic != PLUGIN_MAGIC {
            return Err(user_msg(format!("{shown}: RUNNER_PLUGIN_DECLARATION has the wrong magic number; not a runner plugin")));
        }
        if decl.abi_version != ABI_VERSION {
            return Err(user_msg(format!(
                "{shown}: plugin ABI version {} but this runner speaks ABI version {ABI_VERSION}; rebuild the plugin against this runner's runner-api",
                decl.abi_version
            )));
        }
        // SAFETY: same ABI version, so the layout is ours; the library is loaded.
        let name = unsafe { decl.name.as_str() }.to_string();
        let mismatches = unsafe { decl.compare() };
        if !mismatches.is_empty() {
            let list = mismatches
                .iter()
                .map(|(what, plugin, ours)| format!("  {what}: plugin built with {plugin}, this runner with {ours}"))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(user_msg(format!(
                "{shown}: plugin `{name}` was built for another runner; rebuild it against this one (cargo build in its folder):\n{list}"
            )));
        }
        let mut registrar = Registrar::new(name.clone());
        if !(decl.register)(&mut registrar) {
            return Err(user_msg(format!("{shown}: plugin `{name}` failed (a Rust panic) while registering its components")));
        }
        let library = Arc::new(library);
        tracing::debug!("plugin `{name}` from {shown}: {} components", registrar.components.len());
        self.add_from(registrar, Some(canonical.clone()), Some(library))?;
        self.loaded.push(canonical);
        Ok(())
    }

    /// Registers in-process components (tests, embedding the runner as a library).
    pub fn add(&mut self, registrar: Registrar) -> Result<()> {
        self.add_from(registrar, None, None)
    }

    fn add_from(&mut self, registrar: Registrar, path: Option<PathBuf>, library: Option<Arc<Library>>) -> Result<()> {
        for component in registrar.components {
            if let Some(prev) = self.entries.iter().find(|e| e.component.kind == component.kind && e.component.name == component.name) {
                return Err(user_msg(format!(
                    "{} component `{}` is offered by both plugin `{}`{} and plugin `{}`{}",
                    component.kind,
                    component.name,
                    prev.component.plugin,
                    where_(&prev.path),
                    component.plugin,
                    where_(&path)
                )));
            }
            self.entries.push(Entry { component, path: path.clone(), library: library.clone() });
        }
        Ok(())
    }

    /// The plugin libraries loaded, by canonical path.
    pub fn libraries(&self) -> &[PathBuf] {
        &self.loaded
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Looks up a component; the error lists close matches, or all names of that kind.
    pub fn get(&self, kind: ComponentKind, name: &str) -> Result<&Entry, String> {
        let of_kind: Vec<&Entry> = self.entries.iter().filter(|e| e.component.kind == kind).collect();
        if let Some(e) = of_kind.iter().find(|e| e.component.name == name) {
            return Ok(e);
        }
        let known: Vec<&str> = of_kind.iter().map(|e| e.component.name).collect();
        if known.is_empty() {
            return Err(format!("unknown {kind} `{name}`: no {kind} component is loaded (are the plugins next to the runner binary?)"));
        }
        let close: Vec<&str> = known
            .iter()
            .copied()
            .filter(|n| strsim::normalized_damerau_levenshtein(n, name) >= 0.5 || n.contains(name) || name.contains(n))
            .collect();
        if close.is_empty() {
            Err(format!("unknown {kind} `{name}` (known: {})", known.join(", ")))
        } else {
            Err(format!("unknown {kind} `{name}`; did you mean {}? (known: {})", close.join(" or "), known.join(", ")))
        }
    }
}

fn where_(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default()
}

fn is_dylib(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(DYLIB_SUFFIX))
}

/// Files in `dir` (not recursive) that satisfy `keep`, sorted.
fn files_in(dir: &Path, keep: impl Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| user_msg(format!("{}: cannot list plugin folder: {e}", dir.display())))?;
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && keep(p)).collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_api::{no_options, Component, Factory, Metric, Options};

    fn metric(_: &Options) -> Result<Box<dyn Metric>> {
        anyhow::bail!("not built in this test")
    }

    fn registrar(plugin: &str, names: &[&'static str]) -> Registrar {
        let mut r = Registrar::new(plugin);
        for &name in names {
            r.add(Component { name, doc: "", params: vec![], check: no_options, factory: Factory::Metric(metric) });
        }
        r
    }

    #[test]
    fn unknown_names_suggest_close_matches() {
        let mut r = Registry::empty();
        r.add(registrar("m", &["loss", "perplexity"])).unwrap();
        assert!(r.get(ComponentKind::Metric, "perplexity").is_ok());
        let err = r.get(ComponentKind::Metric, "perplexty").err().unwrap();
        assert!(err.contains("did you mean perplexity"), "{err}");
        let err = r.get(ComponentKind::Metric, "zzz").err().unwrap();
        assert!(err.contains("known: loss, perplexity"), "{err}");
        let err = r.get(ComponentKind::Dataset, "text").err().unwrap();
        assert!(err.contains("no dataset component is loaded"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let mut r = Registry::empty();
        r.add(registrar("first", &["loss"])).unwrap();
        let err = r.add(registrar("second", &["loss"])).unwrap_err().to_string();
        assert!(err.contains("both plugin `first` and plugin `second`"), "{err}");
    }

    #[test]
    fn a_library_without_a_declaration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("libfake.so");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let err = Registry::empty().load(&fake).unwrap_err().to_string();
        assert!(err.contains("cannot load plugin library"), "{err}");
    }
}
