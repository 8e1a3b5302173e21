//! The runner's build script: the rpath every libtorch-linking crate gets, and
//! the small C++ shim (`cpp/autocast.cpp`) that switches libtorch's autocast
//! on and off, compiled against the libtorch headers tch builds with.

#[path = "../build-support/rpath.rs"]
mod rpath;

use std::path::PathBuf;

fn main() {
    rpath::main();
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH is set by .cargo/config.toml"));
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("cpp/autocast.cpp")
        .include(libtorch.join("include"))
        .include(libtorch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .compile("runner_autocast");
    println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    println!("cargo:rerun-if-changed=cpp/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
