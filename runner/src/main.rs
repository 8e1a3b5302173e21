//! The `runner` binary: parse the command line, dispatch, map errors to exit codes
//! (2 for a user's mistake, 1 for anything else), one clear message, no backtrace.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = runner::cli::Cli::parse();
    runner::cli::init_logging(cli.verbose);
    match runner::cli::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.downcast_ref::<runner::train::signals::Interrupted>().is_some() {
                eprintln!("{err}"); // not a failure: where the checkpoint is and how to go on
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::from(runner::error::exit_code(&err))
        }
    }
}
