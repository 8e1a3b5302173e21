//! What a resume accepts: the recipe a checkpoint was saved with against the
//! one given now. Keys that cannot change the result may differ (how often to
//! log, eval and checkpoint, threads, how processes talk, where results go,
//! whether TensorBoard files are written);
//! `training.max_steps` may grow (the schedule is then stretched, so it is no
//! longer the same run, and a warning says so); `training.grad_accum_steps`
//! may change with the number of processes as long as the global batch stays
//! the same. Any other difference is refused, naming the keys.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_yaml::Value;

use super::checkpoint::GlobalBatch;
use crate::error::user_msg;

/// Keys whose value has no effect on parameters or metric values.
const FREE: &[&str] = &[
    "run.output_dir",
    "run.name",
    "run.tensorboard",
    "eval.every",
    "training.log_every",
    "training.threads",
    "training.checkpoint.every",
    "training.checkpoint.keep",
    "training.distributed.backend",
    "training.distributed.timeout_s",
];

/// Checks the recipe of a resume against the checkpoint's. `saved` and `now`
/// are resolved recipes as YAML; `saved_batch` the checkpoint's global batch
/// and `now_batch` this job's. Returns warnings to show.
pub fn check(saved: &str, now: &str, saved_batch: GlobalBatch, now_batch: GlobalBatch, step: u64) -> Result<Vec<String>> {
    let (old, new) = (flatten(saved)?, flatten(now)?);
    let mut refused = Vec::new();
    let mut warnings = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a == b || FREE.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "training.max_steps" => match (a.and_then(Value::as_u64), b.and_then(Value::as_u64)) {
                (Some(was), Some(is)) if is > was => warnings.push(format!(
                    "training.max_steps: {was} -> {is} stretches the learning-rate schedule: the run continues, but it is no longer the run of {was} steps"
                )),
                (Some(was), Some(is)) => refused.push(format!("training.max_steps ({was} -> {is}: it may only grow)")),
                _ => refused.push(shown(key, a, b)),
            },
            "training.grad_accum_steps" if saved_batch.sequences() == now_batch.sequences() && saved_batch.micro_batch == now_batch.micro_batch => {}
            _ => refused.push(shown(key, a, b)),
        }
    }
    if refused.is_empty() && saved_batch.sequences() != now_batch.sequences() {
        refused.push(format!(
            "the global batch ({} x {} x {} processes = {} sequences, now {} x {} x {} = {}; set training.grad_accum_steps so that it stays {})",
            saved_batch.micro_batch,
            saved_batch.grad_accum,
            saved_batch.processes,
            saved_batch.sequences(),
            now_batch.micro_batch,
            now_batch.grad_accum,
            now_batch.processes,
            now_batch.sequences(),
            saved_batch.sequences()
        ));
    }
    if !refused.is_empty() {
        return Err(user_msg(format!(
            "cannot resume from the checkpoint after step {step}: the recipe differs from the one it was saved with in {}. \
             Undo the change, or start a new run (another run.name, or --overwrite)",
            refused.join(", ")
        )));
    }
    Ok(warnings)
}

fn shown(key: &str, a: Option<&Value>, b: Option<&Value>) -> String {
    let v = |x: Option<&Value>| x.map_or("unset".to_string(), |x| serde_yaml::to_string(x).unwrap_or_default().trim().to_string());
    format!("{key} ({} -> {})", v(a), v(b))
}

/// Leaf values by dotted key; lists count as one value.
pub(crate) fn flatten(yaml: &str) -> Result<BTreeMap<String, Value>> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    let k = k.as_str().map_or_else(|| serde_yaml::to_string(k).unwrap_or_default().trim().to_string(), str::to_string);
                    walk(&if prefix.is_empty() { k } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            Value::Null => {}
            _ => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", &serde_yaml::from_str(yaml)?, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "run: {name: a, seed: 1}\ntraining: {lr: 0.001, max_steps: 10, log_every: 5, batch_size: 8, grad_accum_steps: 2}\neval: {every: 5}\n";

    fn batch(micro: usize, accum: u64, procs: u64) -> GlobalBatch {
        GlobalBatch { micro_batch: micro, grad_accum: accum, processes: procs }
    }

    #[test]
    fn keys_that_cannot_change_the_result_may_differ() {
        let now = SAVED.replace("log_every: 5", "log_every: 1").replace("every: 5}", "every: 2}").replace("name: a", "name: b");
        assert!(check(SAVED, &now, batch(8, 2, 1), batch(8, 2, 1), 4).unwrap().is_empty());
        // TensorBoard files switched off, or a checkpoint from before the switch existed.
        let off = SAVED.replace("seed: 1}", "seed: 1, tensorboard: false}");
        assert!(check(SAVED, &off, batch(8, 2, 1), batch(8, 2, 1), 4).unwrap().is_empty());
    }

    #[test]
    fn other_changes_are_refused_by_name() {
        let now = SAVED.replace("lr: 0.001", "lr: 0.002").replace("seed: 1", "seed: 2");
        let err = format!("{:#}", check(SAVED, &now, batch(8, 2, 1), batch(8, 2, 1), 4).unwrap_err());
        assert!(err.contains("training.lr (0.001 -> 0.002)") && err.contains("run.seed (1 -> 2)"), "{err}");
        assert!(err.contains("after step 4"), "{err}");
    }

    #[test]
    fn max_steps_may_only_grow_and_then_warns() {
        let up = SAVED.replace("max_steps: 10", "max_steps: 20");
        let warnings = check(SAVED, &up, batch(8, 2, 1), batch(8, 2, 1), 4).unwrap();
        assert!(warnings[0].contains("stretches the learning-rate schedule"), "{warnings:?}");
        let down = SAVED.replace("max_steps: 10", "max_steps: 8");
        assert!(format!("{:#}", check(SAVED, &down, batch(8, 2, 1), batch(8, 2, 1), 4).unwrap_err()).contains("may only grow"));
    }

    #[test]
    fn accumulation_may_trade_against_processes_when_the_global_batch_holds() {
        let now = SAVED.replace("grad_accum_steps: 2", "grad_accum_steps: 1");
        assert!(check(SAVED, &now, batch(8, 2, 1), batch(8, 1, 2), 4).is_ok());
        let err = format!("{:#}", check(SAVED, SAVED, batch(8, 2, 1), batch(8, 2, 2), 4).unwrap_err());
        assert!(err.contains("global batch"), "{err}");
        assert!(check(SAVED, &now, batch(8, 2, 1), batch(8, 1, 1), 4).is_err());
    }
}
