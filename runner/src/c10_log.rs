//! What libtorch itself writes to stderr (through the shim `cpp/c10_log.cpp`).
//!
//! - [`init`]: libtorch's errors carry no C++ stack (`frame #N` lines), so no
//!   text that reaches a user, an error or a log line of c10's, holds one. Set
//!   `TORCH_SHOW_CPP_STACKTRACES=1` to keep them (torch's own name for it).
//! - [`quiet`]: while a process group forms, c10's log level is raised to
//!   FATAL: c10d logs each failed connection and retry of its rendezvous
//!   (with the exception's text) before it gives up, and the runner's error
//!   then says the same thing once. A `TORCH_CPP_LOG_LEVEL` the user sets is
//!   read instead and left alone.

use std::os::raw::c_int;
use std::sync::Once;

unsafe extern "C" {
    fn runner_c10_hide_stack_traces();
    fn runner_c10_log_level_from_env();
    fn runner_c10_log_level() -> c_int;
    fn runner_c10_set_log_level(level: c_int);
}

/// c10's FATAL level: only messages that abort the process are written.
const FATAL: c_int = 3;

/// Whether the variable is set to something other than "" or "0".
fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Hides libtorch's C++ stacks from every error made from now on and reads a
/// `TORCH_CPP_LOG_LEVEL` the user set; once per process, before libtorch's
/// first error.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain calls into libc10 with no arguments.
        unsafe {
            if !set("TORCH_SHOW_CPP_STACKTRACES") {
                runner_c10_hide_stack_traces();
            }
            if std::env::var_os("TORCH_CPP_LOG_LEVEL").is_some() {
                runner_c10_log_level_from_env();
            }
        }
    });
}

/// c10's log level held at FATAL until dropped (unless the user chose one).
#[must_use = "the log level goes back when the guard is dropped"]
pub struct Quiet {
    was: Option<c_int>,
}

/// Holds back c10's (and so c10d's) log lines below FATAL until the guard is
/// dropped. The level is one global of libc10: a warning another thread logs
/// meanwhile is held back too.
pub fn quiet() -> Quiet {
    init();
    if std::env::var_os("TORCH_CPP_LOG_LEVEL").is_some() {
        return Quiet { was: None };
    }
    // SAFETY: reads and writes one int of libc10.
    let was = unsafe { runner_c10_log_level() };
    unsafe { runner_c10_set_log_level(was.max(FATAL)) };
    Quiet { was: Some(was) }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        if let Some(was) = self.was {
            // SAFETY: as in `quiet`.
            unsafe { runner_c10_set_log_level(was) };
        }
    }
}
