//! Records what a plugin's declaration must match: the rustc that compiles
//! this crate (`rustc -vV`), the tch version Cargo.lock resolved, the libtorch
//! it builds against, and a fingerprint
//! of this crate's sources. Also gives test binaries an rpath to .venv's libtorch.

use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RUNNER_API_RUSTC_VERSION={version}");

    // libtorch's version, from the torch package tch builds against.
    let libtorch = std::env::var("LIBTORCH").ok().map(|l| Path::new(&l).join("version.py"));
    let torch_version = libtorch
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string())))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RUNNER_API_LIBTORCH_VERSION={torch_version}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");

    // The tch version: the one the workspace's Cargo.lock resolved (the
    // workspace pins it exactly), so it is written in one place.
    let lock = Path::new("../Cargo.lock");
    println!("cargo:rerun-if-changed=../Cargo.lock");
    let text = std::fs::read_to_string(lock).expect("runner-api is built inside the runner's workspace, beside its Cargo.lock");
    let mut packages = text.split("[[package]]");
    let tch = packages
        .find_map(|p| {
            let field = |key: &str| p.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().trim_matches('"').to_string()));
            (field("name = ").as_deref() == Some("tch")).then(|| field("version = ")).flatten()
        })
        .expect("Cargo.lock lists the tch package");
    println!("cargo:rustc-env=RUNNER_API_TCH_VERSION={tch}");

    // Fingerprint: the API's sources, the compiler and the target.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in ["src/lib.rs", "src/guard.rs", "src/plugin.rs", "src/wrap.rs"] {
        std::fs::read(f).unwrap_or_default().hash(&mut h);
        println!("cargo:rerun-if-changed={f}");
    }
    version.hash(&mut h);
    std::env::var("TARGET").unwrap_or_default().hash(&mut h);
    println!("cargo:rustc-env=RUNNER_API_FINGERPRINT={:016x}", h.finish());

    for up in ["../..", "../../.."] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/{up}/.venv/torch/lib");
    }
}
