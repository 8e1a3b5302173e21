//! `runner launch`: starts one worker process per local rank with torchrun's
//! variables set, passes their output through, and watches them. When one
//! worker fails, the others are stopped (SIGTERM, then SIGKILL after a grace
//! period); SIGINT and SIGTERM sent to the launcher are forwarded to every
//! worker (which saves a checkpoint and stops; a second signal stops them at
//! once, and they are killed after the grace period); one that comes while
//! workers are being started stops those started and starts no more. No worker outlives the launcher: each is started with
//! `PR_SET_PDEATHSIG`, so even a SIGKILLed launcher takes its workers with it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::env::{DEFAULT_MASTER_ADDR, DEFAULT_MASTER_PORT};
use crate::error::user_msg;

/// How many of a worker's last stderr lines a failure report quotes.
const LAST_LINES: usize = 10;
/// How often the workers are polled.
const POLL: Duration = Duration::from_millis(50);

/// Where this machine's workers sit in the job.
#[derive(Debug, Clone)]
pub struct Launch {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    /// Default: 127.0.0.1 on one machine; required on several.
    pub master_addr: Option<String>,
    /// Default: a free port on one machine, 29500 on several.
    pub master_port: Option<u16>,
    /// How long stopped workers get between SIGTERM and SIGKILL.
    pub grace: Duration,
}

impl Launch {
    /// The flags, checked before anything else happens.
    pub fn check(&self) -> Result<()> {
        if self.nproc_per_node == 0 {
            return Err(user_msg("--nproc-per-node must be at least 1"));
        }
        if self.nnodes == 0 {
            return Err(user_msg("--nnodes must be at least 1"));
        }
        if self.node_rank >= self.nnodes {
            return Err(user_msg(format!("--node-rank {} must be below --nnodes {}", self.node_rank, self.nnodes)));
        }
        if self.master_addr.is_none() && self.nnodes > 1 {
            return Err(user_msg("--master-addr is required with --nnodes above 1: the address of node 0"));
        }
        if self.master_port == Some(0) {
            return Err(user_msg("--master-port must be a port number (1 to 65535)"));
        }
        Ok(())
    }
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

impl Ended {
    fn of(status: ExitStatus) -> Ended {
        match (status.code(), status.signal()) {
            (Some(code), _) => Ended::Code(code),
            (None, Some(sig)) => Ended::Signal(sig),
            (None, None) => Ended::Code(1),
        }
    }

    fn success(self) -> bool {
        self == Ended::Code(0)
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Ended::Code(code) => write!(f, "exited with code {code}"),
            Ended::Signal(sig) => write!(f, "was killed by signal {sig} ({})", signal_name(sig)),
        }
    }
}

/// What became of the job on this machine.
#[derive(Debug)]
pub enum Outcome {
    /// Every worker exited with code 0.
    Success,
    /// `rank` failed first (the others were stopped); its last stderr lines.
    Failed { rank: usize, ended: Ended, last_lines: Vec<String> },
    /// The launcher got `signal` and passed it on to every worker.
    Interrupted { signal: i32 },
    /// The launcher got `signal` while starting workers: `started` of `total`
    /// were started, and stopped.
    StoppedStarting { signal: i32, started: usize, total: usize },
}

impl Outcome {
    /// The launcher's exit code: the failing worker's own code if it exited
    /// with one, else 1; 128 + the signal when interrupted (130 for SIGINT).
    pub fn exit_code(&self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed { ended: Ended::Code(code), .. } => u8::try_from(*code).ok().filter(|c| *c != 0).unwrap_or(1),
            Outcome::Failed { .. } => 1,
            Outcome::Interrupted { signal } | Outcome::StoppedStarting { signal, .. } => u8::try_from(128 + signal).unwrap_or(1),
        }
    }

    /// One message for the user (empty on success).
    pub fn message(&self) -> String {
        match self {
            Outcome::Success => String::new(),
            Outcome::Failed { rank, ended, last_lines } => {
                let mut m = format!("rank {rank} {ended}; the other workers were stopped");
                if !last_lines.is_empty() {
                    m.push_str(&format!("\nlast lines of rank {rank}'s stderr:"));
                    for line in last_lines {
                        m.push_str("\n  ");
                        m.push_str(line);
                    }
                }
                m
            }
            Outcome::Interrupted { signal } => {
                format!("interrupted by {}: passed on to every worker, all stopped", signal_name(*signal))
            }
            Outcome::StoppedStarting { signal, started, total } => {
                format!("interrupted by {} while starting workers ({started} of {total} started): all stopped", signal_name(*signal))
            }
        }
    }
}

/// Starts `nproc_per_node` copies of `program args...` with torchrun's
/// variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
/// MASTER_PORT) and watches them until all have ended.
pub fn launch(plan: &Launch, program: &Path, args: &[OsString]) -> Result<Outcome> {
    plan.check()?;
    let master_addr = match (&plan.master_addr, plan.nnodes) {
        (Some(addr), _) => addr.clone(),
        _ => DEFAULT_MASTER_ADDR.to_string(),
    };
    let master_port = match (plan.master_port, plan.nnodes) {
        (Some(port), _) => port,
        (None, 1) => free_port()?,
        (None, _) => DEFAULT_MASTER_PORT,
    };
    let world_size = plan.nnodes * plan.nproc_per_node;

    // Before any worker exists, so none is missed: SIGINT/SIGTERM only set
    // this flag (to the signal's number) and the loop below passes them on.
    let received = Arc::new(AtomicUsize::new(0));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_hook::flag::register_usize(sig, Arc::clone(&received), sig as usize)
            .with_context(|| format!("installing a {} handler", signal_name(sig)))?;
    }

    tracing::info!("starting {} worker(s) of {world_size}", plan.nproc_per_node);
    let mut workers: Vec<Worker> = Vec::with_capacity(plan.nproc_per_node);
    for local_rank in 0..plan.nproc_per_node {
        // A signal while starting: stop those started, start no more.
        let sig = received.swap(0, Ordering::SeqCst) as i32;
        if sig != 0 {
            let started = workers.len();
            stop(&mut workers, plan.grace);
            return Ok(Outcome::StoppedStarting { signal: sig, started, total: plan.nproc_per_node });
        }
        let rank = plan.node_rank * plan.nproc_per_node + local_rank;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_RANK", local_rank.to_string())
            .env("LOCAL_WORLD_SIZE", plan.nproc_per_node.to_string())
            .env("MASTER_ADDR", &master_addr)
            .env("MASTER_PORT", master_port.to_string())
            .stdin(Stdio::null())
            .stdout(if rank == 0 { Stdio::inherit() } else { Stdio::piped() })
            .stderr(Stdio::piped());
        die_with_launcher(&mut cmd);
        match cmd.spawn() {
            Ok(child) => workers.push(Worker::watch(rank, child)),
            Err(e) => {
                stop(&mut workers, plan.grace);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", program.display()));
            }
        }
    }
    tracing::info!(
        "started ranks {}..{} of {world_size}; rendezvous at {master_addr}:{master_port}",
        workers[0].rank,
        workers[workers.len() - 1].rank
    );

    let mut failure: Option<(usize, Ended)> = None;
    let mut interrupted: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        let sig = received.swap(0, Ordering::SeqCst) as i32;
        if sig != 0 {
            // The first signal: workers finish their step, save a checkpoint and
            // exit. A second one: they exit at once, and are killed after the grace.
            if interrupted.is_some() {
                kill_at.get_or_insert(Instant::now() + plan.grace);
            }
            interrupted.get_or_insert(sig);
            for w in workers.iter().filter(|w| w.ended.is_none()) {
                w.signal(sig);
            }
        }
        for w in &mut workers {
            if w.ended.is_some() {
                continue;
            }
            if let Some(status) = w.child.try_wait().context("waiting for a worker")? {
                let ended = Ended::of(status);
                w.ended = Some(ended);
                if !ended.success() && failure.is_none() && interrupted.is_none() {
                    failure = Some((w.rank, ended));
                }
            }
        }
        if failure.is_some() && kill_at.is_none() {
            for w in workers.iter().filter(|w| w.ended.is_none()) {
                w.signal(libc::SIGTERM);
            }
            kill_at = Some(Instant::now() + plan.grace);
        }
        if workers.iter().all(|w| w.ended.is_some()) {
            break;
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            for w in workers.iter().filter(|w| w.ended.is_none()) {
                w.signal(libc::SIGKILL);
            }
        }
        std::thread::sleep(POLL);
    }

    let last_lines: Vec<(usize, Vec<String>)> = workers.into_iter().map(|w| (w.rank, w.finish())).collect();
    Ok(match (interrupted, failure) {
        (Some(signal), _) => Outcome::Interrupted { signal },
        (None, Some((rank, ended))) => Outcome::Failed {
            rank,
            ended,
            last_lines: last_lines.into_iter().find(|(r, _)| *r == rank).map(|(_, l)| l).unwrap_or_default(),
        },
        (None, None) => Outcome::Success,
    })
}

/// One worker process and the threads passing its output through.
struct Worker {
    rank: usize,
    child: Child,
    ended: Option<Ended>,
    readers: Vec<JoinHandle<()>>,
    last_lines: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn watch(rank: usize, mut child: Child) -> Worker {
        let last_lines = Arc::new(Mutex::new(VecDeque::with_capacity(LAST_LINES)));
        let mut readers = Vec::new();
        if let Some(err) = child.stderr.take() {
            let last = Arc::clone(&last_lines);
            readers.push(std::thread::spawn(move || {
                pass_through(err, rank, || std::io::stderr().lock(), Some(&last));
            }));
        }
        if let Some(out) = child.stdout.take() {
            readers.push(std::thread::spawn(move || pass_through(out, rank, || std::io::stdout().lock(), None)));
        }
        Worker { rank, child, ended: None, readers, last_lines }
    }

    fn signal(&self, sig: i32) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, which has not been reaped
            // yet (`ended` is None), so the pid is still its.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Waits for the output threads (the pipes close when the worker is
    /// gone) and returns the last stderr lines.
    fn finish(self) -> Vec<String> {
        for r in self.readers {
            let _ = r.join();
        }
        let last = self.last_lines.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
        last
    }
}

/// Copies a worker's output line by line, each prefixed with `[rank N]`,
/// keeping the last lines in `last`.
fn pass_through<W: Write>(from: impl Read, rank: usize, to: impl Fn() -> W, last: Option<&Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let _ = writeln!(to(), "[rank {rank}] {text}");
        if let Some(last) = last {
            if let Ok(mut l) = last.lock() {
                if l.len() == LAST_LINES {
                    l.pop_front();
                }
                l.push_back(text.to_string());
            }
        }
    }
}

/// The worker gets SIGKILL when the launcher dies, however it dies.
fn die_with_launcher(cmd: &mut Command) {
    // SAFETY: getpid is async-signal-safe; in the child, before exec, we
    // call only prctl and getppid (both async-signal-safe) and allocate nothing.
    let launcher = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher died between fork and prctl: do not start.
            if libc::getppid() != launcher {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Stops workers already started when a later one could not be.
fn stop(workers: &mut Vec<Worker>, grace: Duration) {
    for w in workers.iter() {
        w.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for w in workers.iter_mut() {
        while w.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                let _ = w.child.kill();
                let _ = w.child.wait();
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    workers.drain(..).for_each(|w| drop(w.finish()));
}

/// A port that was free a moment ago on this machine (the workers bind it
/// right after; one machine only).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port for the rendezvous")?;
    Ok(listener.local_addr()?.port())
}

/// The usual name of a signal number.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGXCPU => "SIGXCPU",
        _ => "unknown signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_while_starting_workers_stops_them_and_starts_no_more() {
        // The first worker sends SIGTERM to the launcher (this test process)
        // at once, long before a thousand are started.
        let plan = Launch {
            nproc_per_node: 1000,
            nnodes: 1,
            node_rank: 0,
            master_addr: None,
            master_port: Some(29999),
            grace: Duration::from_secs(5),
        };
        let args: Vec<OsString> = ["-c", "[ \"$LOCAL_RANK\" = 0 ] && kill -TERM $PPID; exec sleep 60"].iter().map(OsString::from).collect();
        let started = Instant::now();
        let outcome = launch(&plan, Path::new("/bin/sh"), &args).unwrap();
        match outcome {
            Outcome::StoppedStarting { signal, started, total } => {
                assert_eq!((signal, total), (libc::SIGTERM, 1000));
                assert!(started < 1000, "{started}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(outcome.exit_code(), 143);
        assert!(outcome.message().contains("while starting workers"), "{}", outcome.message());
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn exit_codes_and_messages() {
        let failed = |ended| Outcome::Failed { rank: 1, ended, last_lines: vec!["error: boom".into()] };
        assert_eq!(failed(Ended::Code(2)).exit_code(), 2);
        assert_eq!(failed(Ended::Signal(9)).exit_code(), 1);
        assert!(failed(Ended::Signal(9)).message().starts_with("rank 1 was killed by signal 9 (SIGKILL)"));
        assert!(failed(Ended::Code(2)).message().contains("rank 1 exited with code 2"));
        assert!(failed(Ended::Code(2)).message().contains("  error: boom"));
        assert_eq!(Outcome::Interrupted { signal: libc::SIGINT }.exit_code(), 130);
        assert_eq!(Outcome::Success.exit_code(), 0);
    }
}
