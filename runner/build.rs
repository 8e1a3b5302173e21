//! The runner's build script: the rpath every libtorch-linking crate gets; the
//! small C++ shims compiled against the libtorch headers tch builds with
//! (`cpp/autocast.cpp`: libtorch's autocast; `cpp/c10_log.cpp`: c10's log level and
//! stack traces; `cpp/c10d.cpp`: c10d's TCPStore,
//! Gloo and the collectives); and, when the torch wheel has CUDA,
//! `librunner_nccl.so` in `OUT_DIR` (`cpp/nccl.cpp`: the NCCL process group,
//! kept out of the binary so CPU runs never load libtorch_cuda.so), whose path
//! the runner gets as `RUNNER_NCCL_LIBRARY`.

#[path = "../build-support/rpath.rs"]
mod rpath;

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    rpath::main();
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH is set by .cargo/config.toml"));
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let shim = |name: &str, file: &str| {
        cc::Build::new()
            .cpp(true)
            .file(file)
            .include(libtorch.join("include"))
            .include(libtorch.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
            .warnings(false)
            .compile(name);
    };
    shim("runner_autocast", "cpp/autocast.cpp");
    shim("runner_c10_log", "cpp/c10_log.cpp");
    // Gloo's headers (Debian libgloo-dev) are in the compiler's default path.
    shim("runner_c10d", "cpp/c10d.cpp");
    // The test binary links plugin crates as rlibs (parity and probe tests call them
    // directly), and every plugin defines the one exported `RUNNER_PLUGIN_DECLARATION`
    // the loader looks up in its cdylib. Inside the test binary nothing reads it.
    println!("cargo:rustc-link-arg-tests=-Wl,--allow-multiple-definition");
    println!("cargo:rustc-link-search=native={}", libtorch.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    for f in ["cpp/autocast.cpp", "cpp/c10_log.cpp", "cpp/c10d.cpp", "cpp/c10d.h", "cpp/nccl.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=RUNNER_NO_NCCL");

    let nccl = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("librunner_nccl.so");
    println!("cargo:rustc-env=RUNNER_NCCL_LIBRARY={}", nccl.display());
    if std::env::var_os("RUNNER_NO_NCCL").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    if let Err(why) = build_nccl(&libtorch, &abi, &nccl) {
        println!("cargo:warning=librunner_nccl.so not built (NCCL process groups unavailable):");
        for line in why.lines() {
            println!("cargo:warning=  {line}");
        }
    }
}

/// Compiles `cpp/nccl.cpp` into `target`, linked against libtorch_cuda with
/// the wheel's `lib/` as its rpath. The headers come
/// from the wheels torch installs into site-packages: `nvidia/nccl/include`
/// (nvidia-nccl) and `nvidia/<cuda>/include` (the CUDA runtime, with its
/// `crt/` and CCCL parts from cuda-toolkit's `crt` and `cccl` extras).
fn build_nccl(libtorch: &Path, abi: &str, target: &Path) -> Result<(), String> {
    let torch_lib = libtorch.join("lib");
    if !torch_lib.join("libtorch_cuda.so").is_file() {
        return Err(format!("{} has no libtorch_cuda.so (a CPU-only torch)", torch_lib.display()));
    }
    let torch_dir = libtorch.canonicalize().map_err(|e| format!("{}: {e}", libtorch.display()))?;
    let nvidia = torch_dir.parent().map(|p| p.join("nvidia")).ok_or("libtorch has no parent folder")?;
    let mut includes: Vec<PathBuf> = std::fs::read_dir(&nvidia)
        .map_err(|e| format!("{}: {e}", nvidia.display()))?
        .filter_map(|e| Some(e.ok()?.path().join("include")))
        .filter(|p| p.is_dir())
        .collect();
    includes.sort();
    for header in ["nccl.h", "cuda_runtime_api.h", "crt/host_config.h", "nv/target"] {
        if !includes.iter().any(|dir| dir.join(header).is_file()) {
            return Err(format!(
                "no {header} under {}/*/include (scripts/setup.sh installs the CUDA headers: cuda-toolkit[crt,cccl])",
                nvidia.display()
            ));
        }
    }

    let sources = [Path::new("cpp/nccl.cpp"), Path::new("cpp/c10d.h")];
    // Compiling against the CUDA headers takes a while: skip it when nothing changed.
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if let Some(built) = modified(target) {
        if sources.iter().all(|s| modified(s).is_some_and(|m| m <= built)) {
            return Ok(());
        }
    }

    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = Command::new(compiler.path());
    cmd.args(["-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-w"])
        .arg(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .arg("-I")
        .arg(libtorch.join("include"))
        .arg("-I")
        .arg(libtorch.join("include/torch/csrc/api/include"));
    for dir in &includes {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("cpp/nccl.cpp").arg("-o").arg(target).arg(format!("-L{}", torch_lib.display()));
    cmd.args(["-Wl,--no-as-needed", "-ltorch_cuda", "-ltorch_cpu", "-lc10_cuda", "-lc10"]);
    // The wheel's libraries, where the build found them (LD_LIBRARY_PATH, as a
    // copied installation sets it, comes first).
    cmd.arg(format!("-Wl,-rpath,{}", torch_lib.display()));
    let out = cmd.output().map_err(|e| format!("{}: {e}", compiler.path().display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(target);
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(15).collect();
        return Err(format!("{cmd:?} failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    Ok(())
}
