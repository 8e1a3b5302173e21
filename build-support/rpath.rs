//! Lets binaries and test binaries find libtorch at run time without LD_LIBRARY_PATH:
//! an rpath to the project's `.venv/torch/lib`, relative to the binary
//! (target/{debug,release}/runner and target/*/deps test binaries).

pub fn main() {
    for up in ["../..", "../../.."] {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN/{up}/.venv/torch/lib");
    }
}
