//! Data-parallel plumbing: two processes form a Gloo process group over a
//! TCPStore on 127.0.0.1 and all-reduce, broadcast and meet at a barrier; a
//! rank whose peer never comes (or goes away) fails within its timeout with a
//! clear message; `runner launch` reports a failing or killed worker by rank,
//! passes Ctrl-C on, and never leaves a worker behind.
//!
//! The two-process tests start this test binary again, running only the
//! ignored test `collectives::peer`, with `DIST_TEST_ROLE` saying what it does.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use runner::distributed::{Backend, Collective, ProcessGroup, World};
use tch::{Kind, Tensor};

use crate::common::{assert_error, assert_no_cpp_frames, free_port, runner, runner_command, signal, stderr, stdout};

const ROLE: &str = "DIST_TEST_ROLE";

/// The name libtest gives the test `peer` below: its module path without the
/// crate (`collectives::peer`), which `--exact` must be given.
fn peer_test() -> String {
    match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::peer"),
        None => "peer".to_string(),
    }
}

/// Starts this test binary as rank `rank` of two, playing `role`.
fn start_peer(role: &str, rank: usize, port: u16) -> Child {
    peer_command(role, rank, port).spawn().unwrap()
}

/// This test binary as rank `rank` of two, playing `role`, not yet started.
fn peer_command(role: &str, rank: usize, port: u16) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c
        .arg(peer_test())
        .args(["--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn both(out: &Output) -> String {
    format!("{}{}", stdout(out), stderr(out))
}

/// One side of the two-process tests; does nothing unless started by them.
#[test]
#[ignore = "started by the two-process tests with DIST_TEST_ROLE set"]
fn peer() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let world = World::from_env().unwrap().expect("started with torchrun's variables");
    if role == "alone" {
        // No peer comes: the error and how long forming the group took, on stdout.
        let timeout = Duration::from_millis(std::env::var("DIST_TEST_TIMEOUT_MS").unwrap().parse().unwrap());
        let start = Instant::now();
        let err = ProcessGroup::new(&world, Backend::Gloo, timeout).err().expect("no peer: no group");
        println!("took_ms={}\n{err:#}", start.elapsed().as_millis());
        return;
    }
    let group = ProcessGroup::new(&world, Backend::Gloo, Duration::from_secs(30)).unwrap();
    let rank = group.rank() as f64;
    assert_eq!((group.rank(), group.world_size()), (world.rank, 2));
    match role.as_str() {
        "collectives" => {
            // Several tensors, shapes and kinds in one call: each is summed on its own.
            let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (rank + 1.0);
            let b = Tensor::full([2, 2], world.rank as i64 + 10, (Kind::Int64, tch::Device::Cpu));
            let c = Tensor::from_slice(&[0.5f64]) * rank;
            group.all_reduce_sum(&[a.shallow_clone(), b.shallow_clone(), c.shallow_clone()]).unwrap();
            assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![3.0, 6.0, 9.0]);
            assert_eq!(Vec::<i64>::try_from(&b.view(-1)).unwrap(), vec![21; 4]);
            assert_eq!(Vec::<f64>::try_from(&c).unwrap(), vec![0.5]);

            // Rank 1's values reach rank 0, in place.
            let d = Tensor::full([3], rank * 10.0 + 1.0, (Kind::Float, tch::Device::Cpu));
            let e = Tensor::from_slice(&[world.rank as i32 - 7]);
            group.broadcast(&[d.shallow_clone(), e.shallow_clone()], 1).unwrap();
            assert_eq!(Vec::<f32>::try_from(&d).unwrap(), vec![11.0; 3]);
            assert_eq!(Vec::<i32>::try_from(&e).unwrap(), vec![-6]);

            // The barrier holds rank 0 until rank 1, which comes late, arrives.
            if world.rank == 1 {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let start = Instant::now();
            group.barrier().unwrap();
            if world.rank == 0 {
                let waited = start.elapsed();
                assert!(waited >= Duration::from_millis(1000), "the barrier returned after {waited:?}");
            }
            // Gloo on the CPU never loads CUDA.
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            assert!(!maps.contains("libtorch_cuda") && !maps.contains("librunner_nccl"), "a Gloo run loaded CUDA");
            println!("rank {} done", world.rank);
        }
        "vanish" => {
            // Rank 1 joins, then dies before the first collective.
            if world.rank == 1 {
                std::process::exit(0);
            }
            let start = Instant::now();
            let t = Tensor::ones([4], (Kind::Float, tch::Device::Cpu));
            let err = group.all_reduce_sum(&[t]).expect_err("the peer is gone");
            println!("rank 0 error after {:.1}s: {err:#}", start.elapsed().as_secs_f64());
        }
        other => panic!("unknown role {other}"),
    }
}

/// The two-process tests start `peer` by the name this binary lists it under.
#[test]
fn the_peer_test_is_listed_under_the_name_the_pairs_start() {
    let o = Command::new(std::env::current_exe().unwrap()).args(["--list", "--ignored"]).output().unwrap();
    assert!(o.status.success(), "{}", both(&o));
    let listed = stdout(&o);
    let name = format!("{}: test", peer_test());
    assert!(listed.lines().any(|l| l == name), "`{name}` is not in:\n{listed}");
}

/// Runs both ranks of `role` and returns their outputs (rank 0, rank 1).
fn run_pair(role: &str) -> (Output, Output) {
    let port = free_port();
    let r0 = start_peer(role, 0, port);
    let r1 = start_peer(role, 1, port);
    (r0.wait_with_output().unwrap(), r1.wait_with_output().unwrap())
}

#[test]
fn two_processes_all_reduce_broadcast_and_barrier_over_gloo() {
    let (r0, r1) = run_pair("collectives");
    assert!(r0.status.success(), "rank 0:\n{}", both(&r0));
    assert!(r1.status.success(), "rank 1:\n{}", both(&r1));
    assert!(stdout(&r0).contains("rank 0 done") && stdout(&r1).contains("rank 1 done"), "{}\n{}", both(&r0), both(&r1));
}

#[test]
fn a_vanished_peer_is_an_error_not_a_hang() {
    let start = Instant::now();
    let (r0, r1) = run_pair("vanish");
    assert!(r1.status.success(), "rank 1:\n{}", both(&r1));
    assert!(r0.status.success(), "rank 0:\n{}", both(&r0));
    let out = stdout(&r0);
    assert!(out.contains("all_reduce_sum failed on rank 0 of 2 (gloo)"), "{out}");
    assert_no_cpp_frames(&both(&r0));
    assert_no_cpp_frames(&both(&r1));
    assert!(start.elapsed() < Duration::from_secs(40), "took {:?}", start.elapsed());
}

/// Rank `rank` of two, alone in a process of its own: its peer never comes.
/// Returns the error, how long forming the group took and the process's stderr.
fn alone(rank: usize, timeout: Duration) -> (String, Duration, String) {
    let o = peer_command("alone", rank, free_port())
        .env("DIST_TEST_TIMEOUT_MS", timeout.as_millis().to_string())
        .output()
        .unwrap();
    assert!(o.status.success(), "rank {rank}:\n{}", both(&o));
    let out = stdout(&o);
    let took = out.split("took_ms=").nth(1).and_then(|t| t.lines().next()?.parse().ok()).unwrap_or_else(|| panic!("{out}"));
    (out, Duration::from_millis(took), stderr(&o))
}

#[test]
fn a_rank_whose_peer_never_comes_fails_within_its_timeout() {
    let timeout = Duration::from_secs(3);
    // Rank 0 serves the store and waits for rank 1; rank 1 finds no store.
    for rank in [0, 1] {
        let (err, took, log) = alone(rank, timeout);
        assert!(took >= Duration::from_millis(2500), "rank {rank} gave up after {took:?}: {err}");
        assert!(took < timeout + Duration::from_secs(15), "rank {rank} took {took:?}: {err}");
        let expected = format!("rank {rank} of 2 could not form the gloo process group at 127.0.0.1:");
        assert!(err.contains(&expected) && err.contains("timeout 3s") && err.contains("TCPStore"), "{err}");
        // c10d's own retry and timeout lines (each with libtorch's C++ stack)
        // say what the error says: nothing of them reaches stderr.
        assert_no_cpp_frames(&log);
        assert!(!log.contains("[c10d]"), "rank {rank}: {log}");
    }
}

#[test]
fn nccl_comes_from_its_own_library_and_needs_a_gpu() {
    let world =
        World { rank: 0, world_size: 1, local_rank: 0, local_world_size: 1, master_addr: "127.0.0.1".into(), master_port: free_port() };
    // Built into the build script's folder when the torch wheel has CUDA.
    let lib = Path::new(env!("RUNNER_NCCL_LIBRARY"));
    match ProcessGroup::new(&world, Backend::Nccl, Duration::from_secs(20)) {
        Ok(group) => {
            // A machine with a GPU: one rank's sum is its own tensor.
            let t = Tensor::from_slice(&[1.5f32, -2.0]).to_device(tch::Device::Cuda(0));
            group.all_reduce_sum(&[t.shallow_clone()]).unwrap();
            group.barrier().unwrap();
            assert_eq!(Vec::<f32>::try_from(&t.to_device(tch::Device::Cpu)).unwrap(), vec![1.5, -2.0]);
        }
        Err(e) => {
            let e = format!("{e:#}");
            assert!(e.contains("rank 0 of 1 could not form the nccl process group"), "{e}");
            if lib.is_file() {
                // Built (a CUDA wheel), loaded, called: no GPU here.
                assert!(e.contains("NCCL needs a CUDA device, and none is visible"), "{e}");
            } else {
                assert!(e.contains("librunner_nccl.so, which was not found"), "{e}");
            }
        }
    }
}

// ---- runner launch ----

/// Pids of the live (not zombie) processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect::<Vec<_>>()) else { continue };
        if rest.len() > 1 && rest[1] == parent.to_string() && rest[0] != "Z" {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `pid` is still running (a zombie is not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

/// The RANK a process was started with.
fn rank_of(pid: u32) -> Option<usize> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(b"RANK=").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()))
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `runner launch --nproc-per-node 2` on the tiny recipe, training far longer
/// than any test waits; started, with its two workers running.
fn start_long_launch(out: &Path) -> (Child, Vec<u32>) {
    let dir = format!("run.output_dir={}", out.display());
    let mut launcher = runner_command(&[
        "launch",
        "--nproc-per-node",
        "2",
        "tests/recipes/tiny.yaml",
        "--set",
        &dir,
        "--set",
        "training.max_steps=1000000",
        "--set",
        "eval.every=1000000",
        // Nothing written while the test waits: both ranks share the output folder.
        "--set",
        "eval.at_start=false",
        "--overwrite",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = launcher.id();
    let mut workers = Vec::new();
    wait_until("two workers", Duration::from_secs(30), || {
        workers = children(pid);
        workers.len() == 2 || launcher.try_wait().unwrap().is_some()
    });
    assert_eq!(workers.len(), 2, "the launcher ended early: {:?}", launcher.try_wait());
    // Let them get into training.
    std::thread::sleep(Duration::from_secs(2));
    (launcher, workers)
}

fn wait_with_limit(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        signal(pid, libc::SIGKILL);
        panic!("the launcher did not end within {limit:?}")
    })
}

/// Starts a long launch, sends `sig` to the process `pick` names (given the
/// launcher's pid and the workers'), and returns the launcher's output once it
/// has ended. No worker outlives it: a launcher that ends by itself has stopped
/// them first; one that was SIGKILLed leaves them to die on their own, soon.
fn launch_after_signal(sig: i32, pick: impl FnOnce(u32, &[u32]) -> u32) -> Output {
    let out = tempfile::tempdir().unwrap();
    let (launcher, workers) = start_long_launch(out.path());
    let launcher_pid = launcher.id();
    let target = pick(launcher_pid, &workers);
    signal(target, sig);
    let o = wait_with_limit(launcher, Duration::from_secs(30));
    if target == launcher_pid && sig == libc::SIGKILL {
        wait_until("the workers to die with the launcher", Duration::from_secs(10), || workers.iter().all(|w| !alive(*w)));
    } else {
        for w in workers {
            assert!(!alive(w), "worker {w} outlived the launcher");
        }
    }
    o
}

#[test]
fn launch_names_the_rank_whose_worker_was_killed_and_stops_the_others() {
    let o = launch_after_signal(libc::SIGKILL, |_, workers| {
        *workers.iter().find(|p| rank_of(**p) == Some(1)).expect("a worker with RANK=1")
    });
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error: rank 1 was killed by signal 9 (SIGKILL); the other workers were stopped"), "{err}");
    assert_no_cpp_frames(&err);
}

#[test]
fn launch_passes_on_the_failing_workers_exit_code() {
    // Rank 0 finds earlier results (the launcher's own check cannot see that).
    let out = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(out.path().join("tiny")).unwrap();
    std::fs::write(out.path().join("tiny/metrics.csv"), "step\n").unwrap();
    let dir = format!("run.output_dir={}", out.path().display());
    let o = runner(&["launch", "--nproc-per-node", "2", "tests/recipes/tiny.yaml", "--set", &dir]);
    let err = stderr(&o);
    // Rank 1 then loses its peer and fails too; whichever the launcher sees
    // end first is reported, and its exit code is the launcher's.
    let code = ["0", "1"]
        .iter()
        .find_map(|r| err.split(&format!("error: rank {r} exited with code ")).nth(1).and_then(|t| t.split(';').next()?.parse::<i32>().ok()))
        .unwrap_or_else(|| panic!("no failing rank named: {err}"));
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains("; the other workers were stopped"), "{err}");
    // Rank 0's own message, passed through with its rank; the failing rank's quoted in the report.
    assert!(err.contains("[rank 0] error:") && err.contains("already holds results"), "{err}");
    assert!(err.contains("stderr:\n  error:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_no_cpp_frames(&err);
}

#[test]
fn launch_checks_the_recipe_once_before_starting_any_worker() {
    for (args, needle) in [
        (vec!["tests/recipes/no-such-recipe.yaml"], "no-such-recipe.yaml"),
        (vec!["tests/recipes/tiny.yaml", "--set", "training.lr=-1"], "training.lr: must be positive"),
        (vec!["tests/recipes/tiny.yaml", "--set", "training.distributed.timeout_s=1e20"], "training.distributed.timeout_s"),
    ] {
        let mut all = vec!["launch", "--nproc-per-node", "2"];
        all.extend(args);
        let o = runner(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "one message: {err}");
        assert!(err.contains(needle) && !err.contains("[rank"), "no worker started: {err}");
    }
}

#[test]
fn launch_holds_the_worker_count_to_the_machine() {
    let o = runner(&["launch", "--nproc-per-node", "1000", "tests/recipes/tiny.yaml"]);
    assert_error(&o, 2, &["--nproc-per-node 1000: this machine has", "CPU core(s)", "--oversubscribe"]);
    assert!(!stderr(&o).contains("[rank"), "{}", stderr(&o));
}

#[test]
fn launch_forwards_ctrl_c_and_exits_130() {
    let o = launch_after_signal(libc::SIGINT, |launcher, _| launcher);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_no_cpp_frames(&err);
}

#[test]
fn workers_die_with_a_killed_launcher() {
    // The helper's own check is the test: the workers end with the launcher.
    launch_after_signal(libc::SIGKILL, |launcher, _| launcher);
}

#[test]
fn launch_runs_every_worker_to_the_end() {
    let out = tempfile::tempdir().unwrap();
    let dir = format!("run.output_dir={}", out.path().display());
    let o = runner(&[
        "launch",
        "--nproc-per-node",
        "2",
        "tests/recipes/tiny.yaml",
        "--set",
        &dir,
        "--set",
        "training.max_steps=2",
        "--set",
        "eval.every=1000",
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Rank 0's stdout is passed through as is.
    let s = stdout(&o);
    assert!(s.lines().any(|l| l.starts_with("run `tiny` finished: 2 steps")), "{s}");
}

#[test]
fn launch_flags_are_checked() {
    let o = runner(&["launch", "--nproc-per-node", "2", "--nnodes", "2", "tests/recipes/tiny.yaml"]);
    assert_error(&o, 2, &["--master-addr is required"]);
    let o = runner(&["launch", "--nproc-per-node", "0", "tests/recipes/tiny.yaml"]);
    assert_error(&o, 2, &["--nproc-per-node must be at least 1"]);
    let o = runner(&["launch", "--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h", "x.yaml"]);
    assert_error(&o, 2, &["--node-rank 2 must be below --nnodes 2"]);
}
