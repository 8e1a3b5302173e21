//! Who this process is in a multi-process job, read from the environment the
//! way torchrun sets it (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//! `LOCAL_WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`; `runner launch` sets the
//! same) or, failing that, the way SLURM's `srun` does (`SLURM_PROCID`,
//! `SLURM_NTASKS`, `SLURM_LOCALID`, tasks per node, `SLURM_JOB_NODELIST`).
//! Also how many CPU threads each rank on a machine gets.

use anyhow::Result;

use super::World;
use crate::error::user_msg;

/// The rendezvous port when nothing names one (torch's default too).
pub const DEFAULT_MASTER_PORT: u16 = 29500;
/// The rendezvous address when nothing names one: this machine.
pub const DEFAULT_MASTER_ADDR: &str = "127.0.0.1";

impl World {
    /// This process's place in the job from torchrun's variables, else
    /// SLURM's; `None` when neither `RANK`/`WORLD_SIZE` nor `SLURM_PROCID` is
    /// set (a plain single-process run). A malformed or inconsistent value is
    /// a user error naming the variable.
    pub fn from_env() -> Result<Option<World>> {
        World::from_vars(|name| std::env::var(name).ok())
    }

    /// [`World::from_env`] over any source of variables (`var(name)` is the
    /// value of `name`, if set).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let var = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let world = if var("RANK").is_some() || var("WORLD_SIZE").is_some() {
            torchrun(&var)?
        } else if var("SLURM_PROCID").is_some() {
            slurm(&var)?
        } else {
            return Ok(None);
        };
        check(&world)?;
        Ok(Some(world))
    }
}

/// torchrun's variables. Only `RANK` and `WORLD_SIZE` are required; without
/// `LOCAL_RANK`/`LOCAL_WORLD_SIZE` every rank is taken to be on this machine.
fn torchrun(var: &impl Fn(&str) -> Option<String>) -> Result<World> {
    let rank = number(var, "RANK")?;
    let world_size = number(var, "WORLD_SIZE")?;
    let local_rank = optional_number(var, "LOCAL_RANK")?.unwrap_or(rank);
    let local_world_size = optional_number(var, "LOCAL_WORLD_SIZE")?.unwrap_or(world_size);
    Ok(World {
        rank,
        world_size,
        local_rank,
        local_world_size,
        master_addr: var("MASTER_ADDR").unwrap_or_else(|| DEFAULT_MASTER_ADDR.into()),
        master_port: port(var)?,
    })
}

/// SLURM's variables, as `srun` sets them for each task.
fn slurm(var: &impl Fn(&str) -> Option<String>) -> Result<World> {
    let rank = number(var, "SLURM_PROCID")?;
    let world_size = number(var, "SLURM_NTASKS")?;
    let local_rank = number(var, "SLURM_LOCALID")?;
    let local_world_size = match optional_number(var, "SLURM_NTASKS_PER_NODE")? {
        Some(n) => n,
        None => {
            let name = ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"]
                .into_iter()
                .find(|n| var(n).is_some())
                .ok_or_else(|| user_msg("SLURM_PROCID is set but SLURM_NTASKS_PER_NODE and SLURM_TASKS_PER_NODE are not"))?;
            let node = optional_number(var, "SLURM_NODEID")?;
            tasks_on_node(name, &var(name).unwrap_or_default(), node)?
        }
    };
    let master_addr = match var("MASTER_ADDR") {
        Some(addr) => addr,
        None => {
            let list = var("SLURM_JOB_NODELIST")
                .or_else(|| var("SLURM_NODELIST"))
                .ok_or_else(|| user_msg("SLURM_PROCID is set but neither MASTER_ADDR nor SLURM_JOB_NODELIST is"))?;
            first_host(&list).ok_or_else(|| {
                user_msg(format!(
                    "SLURM_JOB_NODELIST `{list}`: cannot tell its first host; set MASTER_ADDR to the first node's address"
                ))
            })?
        }
    };
    Ok(World { rank, world_size, local_rank, local_world_size, master_addr, master_port: port(var)? })
}

fn check(w: &World) -> Result<()> {
    let bad = |msg: String| Err(user_msg(msg));
    if w.world_size == 0 {
        return bad("the world size (WORLD_SIZE / SLURM_NTASKS) is 0".into());
    }
    if w.rank >= w.world_size {
        return bad(format!("rank {} (RANK / SLURM_PROCID) is not below the world size {}", w.rank, w.world_size));
    }
    if w.local_world_size == 0 || w.local_world_size > w.world_size {
        return bad(format!(
            "the local world size {} (LOCAL_WORLD_SIZE / SLURM tasks per node) must be between 1 and the world size {}",
            w.local_world_size, w.world_size
        ));
    }
    if w.local_rank >= w.local_world_size {
        return bad(format!(
            "local rank {} (LOCAL_RANK / SLURM_LOCALID) is not below the local world size {}",
            w.local_rank, w.local_world_size
        ));
    }
    Ok(())
}

fn optional_number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<usize>> {
    var(name)
        .map(|v| v.parse::<usize>().map_err(|_| user_msg(format!("{name}=`{v}` is not a non-negative whole number"))))
        .transpose()
}

fn number(var: &impl Fn(&str) -> Option<String>, name: &str) -> Result<usize> {
    optional_number(var, name)?.ok_or_else(|| user_msg(format!("{name} is not set (the other launcher variables are)")))
}

fn port(var: &impl Fn(&str) -> Option<String>) -> Result<u16> {
    match var("MASTER_PORT") {
        None => Ok(DEFAULT_MASTER_PORT),
        Some(v) => match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(user_msg(format!("MASTER_PORT=`{v}` is not a port number (1 to 65535)"))),
        },
    }
}

/// The number of tasks on node `node` from SLURM's compressed per-node list,
/// e.g. `2(x3),1`: two tasks on each of the first three nodes, one on the
/// fourth. Without `SLURM_NODEID` the list must give every node the same number.
fn tasks_on_node(name: &str, list: &str, node: Option<usize>) -> Result<usize> {
    let malformed = || user_msg(format!("{name}=`{list}` is not a SLURM tasks-per-node list such as `2(x3),1`"));
    let mut per_node = Vec::new();
    for item in list.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((count, rest)) => (count, rest.strip_suffix(')').ok_or_else(malformed)?.parse::<usize>().map_err(|_| malformed())?),
            None => (item, 1),
        };
        let count = count.parse::<usize>().map_err(|_| malformed())?;
        per_node.extend(std::iter::repeat_n(count, repeat));
    }
    match node {
        Some(n) => per_node.get(n).copied().ok_or_else(|| {
            user_msg(format!("SLURM_NODEID={n} but {name}=`{list}` describes only {} nodes", per_node.len()))
        }),
        None if per_node.windows(2).all(|w| w[0] == w[1]) => per_node.first().copied().ok_or_else(malformed),
        None => Err(user_msg(format!("{name}=`{list}` differs between nodes and SLURM_NODEID is not set"))),
    }
}

/// The first host of a SLURM node list, when the list is simple: `node7`,
/// `node7,node8`, or one bracketed range such as `gpu[03-06,09]` (→ `gpu03`).
/// `None` for anything else (e.g. two bracket groups in one name).
fn first_host(list: &str) -> Option<String> {
    // The first entry: up to the first comma outside brackets.
    let mut depth = 0usize;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let first = &list[..end];
    match first.split_once('[') {
        None => (!first.is_empty()).then(|| first.to_string()),
        Some((prefix, rest)) => {
            let (inside, suffix) = rest.split_once(']')?;
            if suffix.contains('[') || suffix.contains(']') {
                return None;
            }
            let start = inside.split(',').next()?.split('-').next()?;
            if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(format!("{prefix}{start}{suffix}"))
        }
    }
}

/// Intra-op threads for each of `local_world_size` ranks sharing a machine's
/// `total_cores`: an equal share, at least one.
pub fn threads_per_rank(total_cores: usize, local_world_size: usize) -> usize {
    (total_cores / local_world_size.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>> {
        World::from_vars(|name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string()))
    }

    fn error(vars: &[(&str, &str)]) -> String {
        let e = world(vars).expect_err("should be refused");
        assert_eq!(crate::error::exit_code(&e), 2, "a user error: {e:#}");
        format!("{e:#}")
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        assert_eq!(world(&[]).unwrap(), None);
        assert_eq!(world(&[("LOCAL_RANK", "0"), ("MASTER_PORT", "1234")]).unwrap(), None);
    }

    #[test]
    fn torchrun_variables() {
        let w = world(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            w,
            World { rank: 5, world_size: 8, local_rank: 1, local_world_size: 4, master_addr: "10.0.0.2".into(), master_port: 29400 }
        );
        assert!(!w.is_main());
        // Only the two required ones: one machine, torch's default rendezvous.
        let w = world(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap().unwrap();
        assert_eq!((w.local_rank, w.local_world_size), (0, 2));
        assert_eq!((w.master_addr.as_str(), w.master_port), ("127.0.0.1", 29500));
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let w = world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap().unwrap();
        assert_eq!((w.rank, w.world_size), (1, 2));
    }

    #[test]
    fn slurm_variables() {
        let w = world(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "2"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            w,
            World { rank: 3, world_size: 4, local_rank: 1, local_world_size: 2, master_addr: "gpu07".into(), master_port: 29500 }
        );
        // Uneven tasks per node: this node's share; MASTER_ADDR and MASTER_PORT win.
        let w = world(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "7"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "3"),
            ("SLURM_TASKS_PER_NODE", "2(x3),1"),
            ("SLURM_JOB_NODELIST", "a[1-4]"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "4000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.local_world_size, w.master_addr.as_str(), w.master_port), (1, "head", 4000));
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("node7").as_deref(), Some("node7"));
        assert_eq!(first_host("node7,node8").as_deref(), Some("node7"));
        assert_eq!(first_host("gpu[03-06,09],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_host("n[12]-ib").as_deref(), Some("n12-ib"));
        assert_eq!(first_host("rack[1-2]-n[1-4]"), None);
        assert_eq!(first_host("n[a-b]"), None);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        assert!(error(&[("RANK", "one"), ("WORLD_SIZE", "2")]).contains("RANK=`one`"));
        assert!(error(&[("RANK", "0")]).contains("WORLD_SIZE is not set"));
        assert!(error(&[("RANK", "-1"), ("WORLD_SIZE", "2")]).contains("RANK=`-1`"));
        assert!(error(&[("RANK", "2"), ("WORLD_SIZE", "2")]).contains("not below the world size 2"));
        assert!(error(&[("RANK", "0"), ("WORLD_SIZE", "0")]).contains("world size"));
        assert!(error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")]).contains("MASTER_PORT=`70000`"));
        assert!(error(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "2"), ("LOCAL_WORLD_SIZE", "2")])
            .contains("local rank 2"));
        let slurm = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "0"), ("SLURM_JOB_NODELIST", "n1")];
        assert!(error(&slurm).contains("SLURM_NTASKS_PER_NODE"));
        let with = |extra: (&'static str, &'static str)| {
            let mut v = slurm.to_vec();
            v.push(extra);
            error(&v)
        };
        assert!(with(("SLURM_TASKS_PER_NODE", "2(x")).contains("SLURM_TASKS_PER_NODE=`2(x`"));
        assert!(with(("SLURM_TASKS_PER_NODE", "2,1")).contains("SLURM_NODEID"));
        assert!(with(("SLURM_NTASKS_PER_NODE", "two")).contains("SLURM_NTASKS_PER_NODE=`two`"));
        let no_host = [("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1"), ("SLURM_LOCALID", "0"), ("SLURM_NTASKS_PER_NODE", "1")];
        assert!(error(&no_host).contains("MASTER_ADDR"));
    }

    #[test]
    fn cores_are_shared_between_local_ranks() {
        assert_eq!(threads_per_rank(16, 4), 4);
        assert_eq!(threads_per_rank(6, 4), 1);
        assert_eq!(threads_per_rank(2, 4), 1);
        assert_eq!(threads_per_rank(8, 0), 8);
    }
}
