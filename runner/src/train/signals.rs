//! SIGINT and SIGTERM while training: the first asks the loop to finish the
//! step it is in, write a checkpoint and stop (exit 130 / 143), with no further
//! step and without the step's eval if that has not begun (the resume does it
//! first; `Trainer::fit`); a second one exits at
//! once, with one line saying so (files stay whole: every file is written under a temporary name and
//! renamed). The handlers exist only while [`StopRequests`] lives: before
//! training (tokenizing, loading) a signal acts as usual, and after it
//! (the final export) it ends the process at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::SigId;

/// A run stopped by a signal after writing a checkpoint; exits 128 + signal
/// (defined with the exit codes, in `runner_recipe::error`).
pub use crate::error::Interrupted;

/// Signals caught during training, and the handlers catching them.
pub struct StopRequests {
    requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
    handlers: Vec<SigId>,
}

impl StopRequests {
    pub fn install() -> Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        let mut handlers = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // Registered first, so it sees the flag as the previous signal left it:
            // set means this is the second signal, and the process exits now,
            // saying so.
            let first = Arc::clone(&requested);
            let message = second_signal_message(sig);
            // SAFETY: the action only loads an atomic, then calls write(2) and
            // _exit(2), which are async-signal-safe; it allocates nothing.
            let id = unsafe {
                signal_hook::low_level::register(sig, move || {
                    if first.load(Ordering::SeqCst) {
                        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
                        libc::_exit(128 + sig);
                    }
                })
            }
            .context("installing a signal handler")?;
            handlers.push(id);
            handlers.push(signal_hook::flag::register_usize(sig, Arc::clone(&signal), sig as usize).context("installing a signal handler")?);
            handlers.push(signal_hook::flag::register(sig, Arc::clone(&requested)).context("installing a signal handler")?);
        }
        Ok(StopRequests { requested, signal, handlers })
    }

    /// The signal that asked to stop, if one did.
    pub fn received(&self) -> Option<i32> {
        self.requested.load(Ordering::SeqCst).then(|| self.signal.load(Ordering::SeqCst) as i32)
    }
}

/// What a second signal prints before the process exits (static: the
/// handler may not allocate).
fn second_signal_message(sig: i32) -> &'static [u8] {
    if sig == libc::SIGINT {
        b"\nerror: a second SIGINT: stopped at once, without a new checkpoint; the newest complete one is kept (runner resume continues from it)\n"
    } else {
        b"\nerror: a second SIGTERM: stopped at once, without a new checkpoint; the newest complete one is kept (runner resume continues from it)\n"
    }
}

impl Drop for StopRequests {
    fn drop(&mut self) {
        for id in self.handlers.drain(..) {
            signal_hook::low_level::unregister(id);
        }
        // A signal with no action left would be ignored: terminate on it, as by default.
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::new(AtomicBool::new(true)));
        }
    }
}
