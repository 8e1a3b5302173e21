//! A full disk, on a small tmpfs mounted for the test (this needs root, or
//! the right to mount: without it each test says why it skips). Training
//! that runs out of space keeps its newest complete checkpoint, leaves no
//! temporary file or folder, and says which path it could not write, once;
//! a run with no checkpoints whose final export fails keeps its trained state
//! somewhere and says where, so the run is not lost.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::Digest;

use crate::common::{dropout_args, runner_command, stderr};

/// A tmpfs of `size` mounted at a new folder; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (and a printed reason) where this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path()).output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs here ({})", stderr(&o).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount ({e})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives it `size` (the files stay).
    fn resize(&self, size: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(self.path()).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).output();
    }
}

/// Every path under `dir` whose name marks a temporary (`.tmp`).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().contains(".tmp") {
                found.push(e.path());
            }
            if e.path().is_dir() {
                stack.push(e.path());
            }
        }
    }
    found
}

/// The run's newest checkpoint folder that has a manifest.
fn newest_complete(run: &Path) -> Option<PathBuf> {
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("manifest.json").is_file())
        .filter_map(|e| Some((e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok()?, e.path())))
        .collect();
    steps.sort();
    steps.pop().map(|(_, p)| p)
}

/// Asserts one clean message about the full disk that names a path under `under`.
fn assert_says_no_space_once(o: &Output, under: &Path) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "said once:\n{err}");
    assert!(!err.contains("IoError") && !err.contains("panicked"), "{err}");
    let line = err.lines().find(|l| l.contains("No space left on device")).unwrap();
    assert!(line.contains(&under.display().to_string()), "names the path it could not write: {line}");
}

#[test]
fn a_disk_that_fills_during_training_keeps_the_newest_checkpoint_and_no_temporaries() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let sets = ["training.max_steps=100000", "training.checkpoint.every=1", "training.checkpoint.keep=1", "eval.every=0"];
    let a = [vec!["run".to_string()], dropout_args(fs.path(), &sets)].concat();
    let mut child = runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = fs.path().join("tiny");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !run.join("checkpoints/step-3/manifest.json").exists() {
        assert!(child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline, "the run ended early");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // Fill what is left.
    let filler = fs.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[7u8; 4096]).is_ok() {}
    drop(f);
    let o = child.wait_with_output().unwrap();
    assert_says_no_space_once(&o, &run);
    assert_eq!(temporaries(fs.path()), Vec::<PathBuf>::new(), "no temporary left");
    let kept = newest_complete(&run).expect("the newest complete checkpoint is kept");
    assert!(stderr(&o).contains(&kept.display().to_string()), "names the checkpoint kept:\n{}", stderr(&o));

    // What it kept is whole: every file as its manifest says.
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(kept.join("manifest.json")).unwrap()).unwrap();
    for (name, entry) in manifest["files"].as_object().unwrap() {
        let bytes = std::fs::read(kept.join(name)).unwrap();
        let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Some(sha.as_str()), entry["sha256"].as_str(), "{name} in {}", kept.display());
    }
}

#[test]
fn a_final_export_that_finds_no_space_keeps_the_trained_state_and_says_where() {
    // Room for the tables, not for the exported weights (77 KB).
    let Some(fs) = Tmpfs::mount("80k") else { return };
    let sets = ["training.checkpoint.every=0", "run.tensorboard=false", "training.max_steps=6"];
    let a = [vec!["run".to_string()], dropout_args(fs.path(), &sets)].concat();
    let o = runner_command(&a.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap();
    let run = fs.path().join("tiny");
    assert_says_no_space_once(&o, &run);
    assert_eq!(temporaries(fs.path()), Vec::<PathBuf>::new(), "no temporary left");
    let err = stderr(&o);
    let kept: PathBuf = err
        .split("the trained state after step 6 is kept in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .map(|p| PathBuf::from(p.trim_end_matches([',', ';', ':'])))
        .unwrap_or_else(|| panic!("says where the trained state is:\n{err}"));
    assert!(kept.join("manifest.json").is_file(), "{}", kept.display());

    // With room again, and the state moved where the message says, the resume exports.
    fs.resize("4m");
    let into = run.join("checkpoints/step-6");
    if kept != into {
        assert!(err.contains(&format!("move it to {}", into.display())), "{err}");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let o = Command::new("mv").arg(&kept).arg(&into).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        // The spare folder it was kept in (`<temp>/runner-<name>-<pid>/checkpoints/step-6`).
        let _ = std::fs::remove_dir_all(kept.parent().and_then(Path::parent).unwrap());
    }
    let o = runner_command(&["resume", &run.display().to_string()]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run.join("checkpoint/model.safetensors").is_file() && run.join("summary.json").is_file());
}
