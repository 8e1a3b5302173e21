//! `runner new-plugin NAME`: scaffolds a plugin crate outside the workspace.
//!
//! The crate depends on this source tree's `runner-api` by path, carries this
//! workspace's `Cargo.lock` (so every crate whose types cross the plugin
//! boundary resolves to the same version), and a `.cargo/config.toml` that
//! points tch at the same libtorch, so a plain `cargo build` makes a library
//! this runner loads.

use std::path::Path;

use anyhow::{Context, Result};

use crate::error::user_msg;

const CARGO_TOML: &str = include_str!("templates/plugin_Cargo.toml");
const LIB_RS: &str = include_str!("templates/plugin_lib.rs");
const README: &str = include_str!("templates/plugin_README.md");
const CARGO_LOCK: &str = include_str!("../../../Cargo.lock");

/// The `runner-api` crate of this source tree.
fn api_path() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runner-api").canonicalize().map_or_else(
        |_| format!("{}/../runner-api", env!("CARGO_MANIFEST_DIR")),
        |p| p.display().to_string(),
    )
}

pub fn create(name: &str, parent: &Path) -> Result<()> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if !valid {
        return Err(user_msg(format!("plugin name `{name}`: use letters, digits, '-' and '_', starting with a letter")));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(user_msg(format!("{} already exists; pick another name or folder", dir.display())));
    }
    let crate_name = name.replace('-', "_");
    let fill = |t: &str| t.replace("{{name}}", name).replace("{{crate_name}}", &crate_name).replace("{{api_path}}", &api_path());
    let libtorch = option_env!("LIBTORCH").unwrap_or("");
    let config = format!(
        "# Build against the same libtorch as the runner.\n[env]\nLIBTORCH = \"{libtorch}\"\nLIBTORCH_CXX11_ABI = \"1\"\n"
    );
    let files: [(&str, String); 5] = [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("README.md", fill(README)),
        ("Cargo.lock", CARGO_LOCK.to_string()),
        (".cargo/config.toml", config),
    ];
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("files live in folders"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("created plugin `{name}` in {}", dir.display());
    println!("build it:  cd {} && cargo build --release", dir.display());
    println!("use it:    plugins: [{}/target/release] in a recipe, or RUNNER_PLUGIN_PATH", dir.display());
    println!("check it:  runner plugins --plugin {}/target/release", dir.display());
    Ok(())
}
