//! `bench/gpu.sh --device cpu --quick`: the prepared GPU check runs on the CPU
//! in the suite, so that it cannot rot before a GPU comes. It writes its JSON
//! and Markdown, and its parity parts pass.

use crate::common::root;

#[test]
fn gpu_script_runs_on_the_cpu_and_its_parity_parts_pass() {
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(root().join("bench/gpu.sh"))
        .arg(out.path())
        .args(["--device", "cpu", "--quick", "--threads", "1", "--runner", env!("CARGO_BIN_EXE_runner")])
        .current_dir(root())
        .output()
        .expect("bench/gpu.sh starts");
    let report = std::fs::read_to_string(out.path().join("gpu.json")).unwrap_or_else(|e| {
        panic!("no gpu.json ({e}); stderr:\n{}", String::from_utf8_lossy(&o.stderr))
    });
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    let md = std::fs::read_to_string(out.path().join("gpu.md")).unwrap();
    assert!(md.contains("cuda available: False"), "{md}");
    let parts = &report["parts"];
    for part in ["environment", "parity", "grad_scaler", "dropout", "speed", "processes"] {
        assert_eq!(parts[part]["status"], "pass", "{part}: {}\n{md}", parts[part]);
    }
    assert_eq!(parts["nccl"]["status"], "skipped");
    assert_eq!(parts["parity"]["fixtures"].as_array().unwrap().len(), 5);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
