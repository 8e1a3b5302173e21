//! Error kinds that decide the exit code: a [`UserError`] (bad recipe, missing
//! file, bad flag) exits with 2, anything else with 1.

/// A mistake in what the user gave us. Its message names the file, key or line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Wraps any error as a user error, keeping its context chain in the message.
pub fn user(err: impl Into<anyhow::Error>) -> anyhow::Error {
    let err = err.into();
    anyhow::Error::new(UserError(format!("{err:#}")))
}

/// Makes a user error from a message.
pub fn user_msg(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UserError(msg.into()))
}

/// Exit code for an error: 128 + the signal for a run stopped by one, 2 for
/// user mistakes, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(stopped) = err.downcast_ref::<crate::train::signals::Interrupted>() {
        return (128 + stopped.signal) as u8;
    }
    if err.chain().any(|e| e.downcast_ref::<UserError>().is_some()) {
        2
    } else {
        1
    }
}
