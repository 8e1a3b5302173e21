//! Ranks that disagree: every process of a job must train the same run. At
//! start-up each rank makes a fingerprint (its resolved recipe by key, the
//! token store's corpus key, and a SHA-256 of the runner binary and of each
//! plugin library it loaded), the ranks all-gather a hash of it, and when
//! the hashes differ they all-gather the fingerprints themselves, so that
//! every rank refuses with the same message naming the keys that differ
//! (and on which ranks) before anything is written or trained.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::Collective;
use crate::error::user_msg;

/// What must be the same on every rank, by key.
pub type Fingerprint = BTreeMap<String, String>;

/// The fingerprint of this process: `recipe_yaml` (the resolved recipe)
/// flattened to its leaves, the corpus key and the code that runs.
pub fn fingerprint(recipe_yaml: &str, corpus_key: &str, libraries: &[&Path]) -> Result<Fingerprint> {
    let mut f: Fingerprint = crate::train::resume::flatten(recipe_yaml)?
        .into_iter()
        .map(|(k, v)| (k, serde_yaml::to_string(&v).unwrap_or_default().trim().to_string()))
        .collect();
    f.insert("corpus (token store key)".into(), corpus_key.into());
    f.insert("runner version".into(), env!("CARGO_PKG_VERSION").into());
    if let Ok(exe) = std::env::current_exe() {
        f.insert("runner binary (SHA-256)".into(), file_sha256(&exe)?);
    }
    for lib in libraries {
        let name = lib.file_name().map_or_else(|| lib.display().to_string(), |n| n.to_string_lossy().into_owned());
        f.insert(format!("plugin {name} (SHA-256)"), file_sha256(lib)?);
    }
    Ok(f)
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Refuses, on every rank, a job whose ranks' fingerprints differ.
pub fn check(c: &dyn Collective, device: Device, mine: &Fingerprint) -> Result<()> {
    if c.world_size() == 1 {
        return Ok(());
    }
    let bytes = serde_json::to_vec(mine)?;
    let digest = Sha256::digest(&bytes);
    let hash = i64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let hashes = gather_values(c, device, &[hash])?;
    if hashes.iter().all(|h| h == &hashes[0]) {
        return Ok(());
    }
    let all: Vec<Fingerprint> = gather_bytes(c, device, &bytes)?
        .iter()
        .map(|b| serde_json::from_slice(b).context("a rank's fingerprint does not parse"))
        .collect::<Result<_>>()?;
    Err(user_msg(describe(&all)))
}

/// The message: each rank that differs from rank 0, with its keys.
pub fn describe(all: &[Fingerprint]) -> String {
    let mut lines = Vec::new();
    let mut keys_differing = std::collections::BTreeSet::new();
    for (rank, f) in all.iter().enumerate().skip(1) {
        let keys: std::collections::BTreeSet<&String> = all[0].keys().chain(f.keys()).collect();
        let differ: Vec<String> = keys
            .into_iter()
            .filter(|k| all[0].get(*k) != f.get(*k))
            .map(|k| {
                keys_differing.insert(k.clone());
                let v = |x: Option<&String>| x.map_or("unset".to_string(), |s| shorten(s));
                format!("{k} ({} on rank 0, {} on rank {rank})", v(all[0].get(k)), v(f.get(k)))
            })
            .collect();
        if !differ.is_empty() {
            lines.push(format!("  rank {rank}: {}", differ.join(", ")));
        }
    }
    format!(
        "the ranks of this job disagree in {}; every rank must run the same recipe (and --set overrides) on the same corpus with the same runner and plugins:\n{}",
        keys_differing.into_iter().collect::<Vec<_>>().join(", "),
        lines.join("\n")
    )
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 80 {
        format!("{}...", s.chars().take(77).collect::<String>())
    } else {
        s.to_string()
    }
}

/// Every rank's `values` (the same length on each), by rank.
fn gather_values(c: &dyn Collective, device: Device, values: &[i64]) -> Result<Vec<Vec<i64>>> {
    let (world, n) = (c.world_size(), values.len());
    let mut rows = vec![0i64; world * n];
    rows[c.rank() * n..(c.rank() + 1) * n].copy_from_slice(values);
    let t = Tensor::from_slice(&rows).to_device(device);
    c.all_reduce_sum(std::slice::from_ref(&t))?;
    let back: Vec<i64> = Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64))?;
    Ok(back.chunks(n).map(<[i64]>::to_vec).collect())
}

/// Every rank's `bytes`, by rank.
fn gather_bytes(c: &dyn Collective, device: Device, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    let lengths: Vec<usize> = gather_values(c, device, &[bytes.len() as i64])?.iter().map(|l| l[0] as usize).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let mut padded: Vec<i64> = bytes.iter().map(|&b| i64::from(b)).collect();
    padded.resize(longest, 0);
    let rows = gather_values(c, device, &padded)?;
    Ok(rows.into_iter().zip(lengths).map(|(r, len)| r[..len].iter().map(|&b| b as u8).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_keys_that_differ_and_where() {
        let base: Fingerprint = [("training.lr", "0.001"), ("training.max_steps", "10"), ("corpus (token store key)", "abc")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut other = base.clone();
        other.insert("training.lr".into(), "0.002".into());
        let m = describe(&[base.clone(), base.clone(), other]);
        assert!(m.contains("disagree in training.lr;"), "{m}");
        assert!(m.contains("rank 2: training.lr (0.001 on rank 0, 0.002 on rank 2)"), "{m}");
        assert!(!m.contains("rank 1:") && !m.contains("max_steps"), "{m}");
    }

    #[test]
    fn one_process_agrees_with_itself() {
        let f = fingerprint("run: {name: a}\ntraining: {lr: 0.1}\n", "k", &[]).unwrap();
        assert_eq!(f.get("training.lr").map(String::as_str), Some("0.1"));
        assert!(f.contains_key("runner binary (SHA-256)"));
        assert!(check(&super::super::Single, Device::Cpu, &f).is_ok());
    }
}
