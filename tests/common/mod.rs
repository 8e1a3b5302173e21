//! What the end-to-end tests share: the repository root, and the real `runner`
//! binary run from it with nothing from the outside environment steering it.

// Each test crate compiles this module and uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Variables that would point the binary at other plugins or another Hub.
const OUTSIDE: [&str; 9] = [
    "RUNNER_PLUGIN_PATH",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "HF_TOKEN_PATH",
];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// `runner args...` from the repository root, not yet started.
pub fn runner_command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_runner"));
    c.args(args).current_dir(root()).env("RUST_LOG", "warn");
    for v in OUTSIDE {
        c.env_remove(v);
    }
    c
}

/// Runs `runner args...` from the repository root with `envs` set.
pub fn runner_with(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = runner_command(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("the runner binary starts")
}

pub fn runner(args: &[&str]) -> Output {
    runner_with(args, &[])
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure: exit `code`, no panic, a message holding every needle.
pub fn assert_error(o: &Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "no panic:\n{err}");
    for n in needles {
        assert!(err.contains(n), "message should say `{n}`:\n{err}");
    }
}

/// Builds a plugin crate outside the workspace with cargo (into
/// target/plugin-tests, shared by every test that builds one); returns the
/// folder holding its library.
pub fn build_plugin(manifest_dir: &Path) -> PathBuf {
    let target = root().join("target/plugin-tests");
    let o = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--manifest-path"])
        .arg(manifest_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env("LIBTORCH", root().join(".venv/torch"))
        .env("LIBTORCH_CXX11_ABI", "1")
        .output()
        .expect("cargo runs");
    assert!(o.status.success(), "building {} failed:\n{}", manifest_dir.display(), stderr(&o));
    target.join("debug")
}

/// The library file a plugin crate builds.
pub fn library(dir: &Path, crate_name: &str) -> PathBuf {
    dir.join(format!("lib{}.so", crate_name.replace('-', "_")))
}
