//! The `runner` binary: parse the command line, dispatch, map errors to exit codes
//! (2 for a user's mistake, 1 for anything else), one clear message, no backtrace.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A bug that panics still gets one line naming where, not Rust's panic report
    // or libtorch's C++ frames (a panic inside a plugin never gets here: its
    // guards turn it into an error).
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let what = runner::error::render(&anyhow::anyhow!(what));
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("error: internal error{at}: {what}");
    }));
    // No C++ stack in libtorch's error texts, before anything can make one.
    runner::c10_log::init();
    // Freed tensor memory stays in the heap for the next step (see the module).
    runner::allocator::keep_freed_memory();
    let cli = runner::cli::Cli::parse();
    runner::cli::init_logging(cli.verbose);
    match runner::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.downcast_ref::<runner::train::signals::Interrupted>().is_some() {
                eprintln!("{err}"); // not a failure: where the checkpoint is and how to go on
            } else {
                eprintln!("error: {}", runner::error::render(&err));
            }
            ExitCode::from(runner::error::exit_code(&err))
        }
    }
}
