//! Error kinds that decide the exit code: an [`Interrupted`] run exits with
//! 128 + its signal, a [`UserError`] (bad recipe, missing file, bad flag) with
//! 2, anything else with 1.

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

/// A run stopped by a signal after writing a checkpoint; exits 128 + signal.
/// Made by the training loop (`train/signals.rs` catches the signal); here so
/// that the exit code needs nothing above this crate.
#[derive(Debug, thiserror::Error)]
#[error("stopped by {name} after step {step}; checkpoint written to {checkpoint}\nresume with: {command}")]
pub struct Interrupted {
    pub signal: i32,
    pub name: &'static str,
    pub step: u64,
    pub checkpoint: String,
    pub command: String,
}

/// Exit code for an error: 128 + the signal for a run stopped by one, 2 for
/// user mistakes, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if let Some(stopped) = err.downcast_ref::<Interrupted>() {
        return (128 + stopped.signal) as u8;
    }
    if err.chain().any(|e| e.downcast_ref::<UserError>().is_some()) {
        2
    } else {
        1
    }
}

/// The one message printed for an error: its context chain, without the C++
/// stack frames libtorch appends to its exceptions ("Exception raised from ...",
/// "frame #0: ..."), which say nothing to a user, and without a cause that
/// only repeats the message before it (an I/O error wrapped by a library that
/// prints its source: "I/O error: No space left on device (os error 28): No
/// space left on device (os error 28)").
pub fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if parts.last().is_some_and(|p| p.contains(text.trim())) {
            continue;
        }
        parts.push(text);
    }
    let full = parts.join(": ");
    let mut out: Vec<&str> = Vec::new();
    for line in full.lines() {
        let t = line.trim_start();
        if t.starts_with("frame #") || t.starts_with("Exception raised from ") {
            continue;
        }
        out.push(line.trim_end());
    }
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_frames_do_not_reach_the_user() {
        let e = anyhow::anyhow!(
            "index out of range in self\nException raised from operator() at aten/src/ATen/native/TensorAdvancedIndexing.cpp:1:\n\
             frame #0: c10::Error::Error(c10::SourceLocation) + 0x52 (0x7f in libc10.so)\nframe #1: <unknown function> + 0x1 (0x2 in libtorch_cpu.so)\n"
        )
        .context("model `bert`: logits");
        let shown = render(&e);
        assert_eq!(shown, "model `bert`: logits: index out of range in self");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("I/O error: {0}")]
    struct Wrapping(#[source] std::io::Error);

    #[test]
    fn a_cause_that_repeats_its_wrapper_is_said_once() {
        let full = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(Wrapping(full)).context("cannot write /data/run/model.safetensors");
        assert_eq!(format!("{e:#}").matches("No space left on device").count(), 2);
        let shown = render(&e);
        assert_eq!(shown, "cannot write /data/run/model.safetensors: I/O error: No space left on device (os error 28)");
    }
}
