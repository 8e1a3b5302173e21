//! The run folder (`run.output_dir/run.name`) while a run uses it: locked, so
//! a second `runner run` of the same name is refused instead of replacing the
//! first one's files; with `--overwrite`, earlier results are moved aside and
//! deleted only once the new run has written its first checkpoint or finished
//! (a new run that fails before that puts them back). The lock file goes with
//! the run.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::user_msg;

/// How a run treats its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run; refused if the folder already holds results.
    New,
    /// Replaces earlier results.
    Overwrite,
    /// Continues from the newest complete checkpoint (or starts over if there is none).
    Resume,
}

/// The folder of a run, held by this process.
pub struct RunDir {
    pub path: PathBuf,
    /// The lock (`.NAME.lock` beside the folder); removed and released when dropped.
    lock: Option<(File, PathBuf)>,
    /// Earlier results moved aside by `--overwrite`, until they can go.
    aside: Option<PathBuf>,
}

impl RunDir {
    /// Locks the folder and prepares it for `start`.
    pub fn open(path: &Path, start: Start) -> Result<RunDir> {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| user_msg(format!("run.output_dir: cannot create {}: {e}", parent.display())))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let lock_path = parent.join(format!(".{name}.lock"));
        let lock = lock(&lock_path, path)?;
        let mut dir = RunDir { path: path.to_path_buf(), lock: Some((lock, lock_path)), aside: None };
        let has_results = ["summary.json", "metrics.csv", super::checkpoint::DIR].iter().any(|f| path.join(f).exists());
        match start {
            Start::New if has_results => {
                return Err(user_msg(format!(
                    "run.name: {} already holds results; pick another name (--set run.name=...), continue it with --resume, or pass --overwrite",
                    path.display()
                )))
            }
            Start::Overwrite if path.exists() => dir.move_aside(parent, &name)?,
            _ => {}
        }
        std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(dir)
    }

    /// A folder this process only reads (the other processes of a data-parallel run).
    pub fn unlocked(path: &Path) -> RunDir {
        RunDir { path: path.to_path_buf(), lock: None, aside: None }
    }

    /// Moves the current contents aside, for a run that starts over.
    pub fn start_over(&mut self) -> Result<()> {
        if self.aside.is_none() && self.path.exists() {
            let parent = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            self.move_aside(&parent, &name)?;
            std::fs::create_dir_all(&self.path).with_context(|| format!("cannot create {}", self.path.display()))?;
        }
        Ok(())
    }

    /// Deletes the results moved aside: the new run has a checkpoint or has finished.
    pub fn discard_aside(&mut self) {
        if let Some(aside) = self.aside.take() {
            if let Err(e) = std::fs::remove_dir_all(&aside) {
                tracing::warn!("cannot delete the replaced results in {}: {e}", aside.display());
            }
        }
    }

    fn move_aside(&mut self, parent: &Path, name: &str) -> Result<()> {
        let aside = parent.join(format!(".{name}.replaced"));
        if aside.exists() {
            std::fs::remove_dir_all(&aside).with_context(|| format!("cannot delete {}", aside.display()))?;
        }
        std::fs::rename(&self.path, &aside)
            .with_context(|| format!("cannot move {} aside to {}", self.path.display(), aside.display()))?;
        self.aside = Some(aside);
        Ok(())
    }
}

impl Drop for RunDir {
    /// A run that ends before replacing what it moved aside (an error) puts it back.
    fn drop(&mut self) {
        if let Some(aside) = self.aside.take() {
            let _ = std::fs::remove_dir_all(&self.path);
            if let Err(e) = std::fs::rename(&aside, &self.path) {
                tracing::warn!("the earlier results are in {} (cannot move them back: {e})", aside.display());
            }
        }
        // Removed while still held, then released: a run leaves no lock file behind.
        // (Another process that opened it meanwhile fails to lock it and says
        // the name is in use, as it would have a moment earlier.)
        if let Some((file, path)) = self.lock.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// Takes the lock file of `dir` or says which process holds it.
fn lock(path: &Path, dir: &Path) -> Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| user_msg(format!("run.output_dir: cannot create {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(path).unwrap_or_default();
        let holder = holder.trim();
        return Err(user_msg(format!(
            "run.name: {} is in use by another runner process{}; wait for it to end or pick another name (--set run.name=...)",
            dir.display(),
            if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
        )));
    }
    f.set_len(0).ok();
    write!(f, "{}", std::process::id()).ok();
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_overwrite_restores_on_failure() {
        let out = tempfile::tempdir().unwrap();
        let run = out.path().join("r");
        let first = RunDir::open(&run, Start::New).unwrap();
        std::fs::write(run.join("metrics.csv"), "old").unwrap();
        // flock locks are per open file description: a second open in this process conflicts too.
        let err = RunDir::open(&run, Start::Overwrite).err().unwrap();
        assert!(format!("{err:#}").contains("in use by another runner process"), "{err:#}");
        drop(first);
        assert!(RunDir::open(&run, Start::New).is_err(), "results are not replaced without --overwrite");
        {
            let dir = RunDir::open(&run, Start::Overwrite).unwrap();
            assert!(!dir.path.join("metrics.csv").exists());
            std::fs::write(run.join("metrics.csv"), "new, unfinished").unwrap();
            // dropped without discard_aside: the run failed
        }
        assert_eq!(std::fs::read_to_string(run.join("metrics.csv")).unwrap(), "old");
        let mut dir = RunDir::open(&run, Start::Overwrite).unwrap();
        std::fs::write(run.join("metrics.csv"), "new").unwrap();
        dir.discard_aside();
        drop(dir);
        assert_eq!(std::fs::read_to_string(run.join("metrics.csv")).unwrap(), "new");
        assert!(!out.path().join(".r.replaced").exists());
        assert!(!out.path().join(".r.lock").exists(), "no lock file left behind");
    }
}
