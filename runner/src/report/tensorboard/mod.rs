//! TensorBoard event files: `events.out.tfevents.<secs>.<host>.<pid>` in a run's
//! `tensorboard/` folder, read by `tensorboard --logdir results` (and by W&B's
//! `wandb sync --sync-tensorboard`).
//!
//! Each record of a file is one `tensorflow.Event` message ([`encoding`]: the
//! framing and the field writer). The fields written are listed below once,
//! with their numbers from TensorBoard's `event.proto`, `summary.proto` and the
//! hparams plugin's `plugin_data.proto` / `api.proto`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

mod encoding;
use encoding::{record, Message};

// tensorflow.Event
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
const EVENT_SESSION_LOG: u32 = 7;
// tensorflow.SessionLog
const SESSION_LOG_STATUS: u32 = 1;
const SESSION_LOG_START: i64 = 1;
// tensorflow.Summary, Summary.Value, SummaryMetadata, SummaryMetadata.PluginData
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE_VALUE: u32 = 2;
const VALUE_METADATA: u32 = 9;
const METADATA_PLUGIN_DATA: u32 = 1;
const PLUGIN_DATA_NAME: u32 = 1;
const PLUGIN_DATA_CONTENT: u32 = 2;
// tensorboard.hparams.HParamsPluginData and what it holds
const HPARAMS_EXPERIMENT: u32 = 2;
const HPARAMS_SESSION_START_INFO: u32 = 3;
const HPARAMS_SESSION_END_INFO: u32 = 4;
const START_INFO_HPARAMS: u32 = 1;
// a map<string, Value> entry
const MAP_ENTRY_KEY: u32 = 1;
const MAP_ENTRY_VALUE: u32 = 2;
const START_INFO_START_TIME: u32 = 5;
const END_INFO_STATUS: u32 = 1;
const END_INFO_END_TIME: u32 = 2;
const STATUS_SUCCESS: i64 = 1;
const EXPERIMENT_HPARAM_INFOS: u32 = 4;
const EXPERIMENT_METRIC_INFOS: u32 = 5;
const EXPERIMENT_TIME_CREATED: u32 = 3;
const HPARAM_INFO_NAME: u32 = 1;
const HPARAM_INFO_TYPE: u32 = 4;
const HPARAM_INFO_DIFFERS: u32 = 7;
const METRIC_INFO_NAME: u32 = 1;
const METRIC_NAME_TAG: u32 = 2;
// google.protobuf.Value
const PB_VALUE_NUMBER: u32 = 2;
const PB_VALUE_STRING: u32 = 3;
const PB_VALUE_BOOL: u32 = 4;

/// A hyperparameter's value, as the HParams dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

impl HParam {
    fn encode(&self) -> Message {
        match self {
            HParam::Number(v) => Message::default().double(PB_VALUE_NUMBER, *v),
            HParam::Text(s) => Message::default().string(PB_VALUE_STRING, s),
            HParam::Bool(b) => Message::default().int(PB_VALUE_BOOL, *b as i64),
        }
    }
    /// `tensorboard.hparams.DataType`: STRING 1, BOOL 2, FLOAT64 3.
    fn data_type(&self) -> i64 {
        match self {
            HParam::Text(_) => 1,
            HParam::Bool(_) => 2,
            HParam::Number(_) => 3,
        }
    }
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn hparams_summary(tag: &str, data: &Message) -> Message {
    let plugin = Message::default().string(PLUGIN_DATA_NAME, "hparams").message(PLUGIN_DATA_CONTENT, data);
    let metadata = Message::default().message(METADATA_PLUGIN_DATA, &plugin);
    let value = Message::default().string(VALUE_TAG, tag).message(VALUE_METADATA, &metadata);
    Message::default().message(SUMMARY_VALUE, &value)
}

/// Appends events to one event file, flushed after each batch of writes so a
/// killed run keeps what it wrote.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (made if missing), opened by the
    /// `file_version` event every event file starts with.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let secs = now() as u64;
        let host = hostname();
        let pid = std::process::id();
        let mut n = 0;
        let (file, path) = loop {
            let name = if n == 0 {
                format!("events.out.tfevents.{secs:010}.{host}.{pid}")
            } else {
                format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}")
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        };
        EventWriter::start(file, path)
    }

    /// Writes the `file_version` event into a new file.
    fn start(file: File, path: PathBuf) -> Result<Self> {
        let mut w = EventWriter { file, path };
        let version = Message::default().double(EVENT_WALL_TIME, now()).int(EVENT_STEP, 0).string(EVENT_FILE_VERSION, "brain.Event:2");
        w.write_event(&version)?;
        w.flush()?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Message) -> Result<()> {
        self.file.write_all(&record(event.encoded())).with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn summary_event(&mut self, step: u64, wall_time: f64, summary: &Message) -> Result<()> {
        let event = Message::default().double(EVENT_WALL_TIME, wall_time).int(EVENT_STEP, step as i64).message(EVENT_SUMMARY, summary);
        self.write_event(&event)
    }

    /// Scalars `(tag, value)` at `step`, in one event stamped with the time now.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Message::default();
        for (tag, v) in values {
            let value = Message::default().string(VALUE_TAG, tag).float(VALUE_SIMPLE_VALUE, *v as f32);
            summary = summary.message(SUMMARY_VALUE, &value);
        }
        self.summary_event(step, now(), &summary)
    }

    /// A session start at `step`: TensorBoard drops the events of steps at or
    /// after it that earlier files hold (what a resume replays).
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        let log = Message::default().int(SESSION_LOG_STATUS, SESSION_LOG_START);
        let event = Message::default().double(EVENT_WALL_TIME, now()).int(EVENT_STEP, step as i64).message(EVENT_SESSION_LOG, &log);
        self.write_event(&event)
    }

    /// The run's hyperparameters (hparams plugin, `session_start_info`).
    pub fn hparams(&mut self, hparams: &[(String, HParam)]) -> Result<()> {
        let t = now();
        let mut info = Message::default().double(START_INFO_START_TIME, t);
        for (key, value) in hparams {
            let entry = Message::default().string(MAP_ENTRY_KEY, key).message(MAP_ENTRY_VALUE, &value.encode());
            info = info.message(START_INFO_HPARAMS, &entry);
        }
        let data = Message::default().message(HPARAMS_SESSION_START_INFO, &info);
        self.summary_event(0, t, &hparams_summary("_hparams_/session_start_info", &data))
    }

    /// The end of a run that finished (hparams plugin, `session_end_info`).
    pub fn session_end(&mut self, step: u64) -> Result<()> {
        let t = now();
        let info = Message::default().int(END_INFO_STATUS, STATUS_SUCCESS).double(END_INFO_END_TIME, t);
        let data = Message::default().message(HPARAMS_SESSION_END_INFO, &info);
        self.summary_event(step, t, &hparams_summary("_hparams_/session_end_info", &data))
    }

    /// The hparams and metrics a group of runs (a sweep) is compared by
    /// (hparams plugin, `experiment`), written at the group's folder. Each
    /// hparam comes with an example value (for its type) and whether its
    /// value differs between the runs (those the dashboard shows first).
    pub fn experiment(&mut self, hparams: &[(String, HParam, bool)], metrics: &[String]) -> Result<()> {
        let t = now();
        let mut exp = Message::default().double(EXPERIMENT_TIME_CREATED, t);
        for (name, example, differs) in hparams {
            let info = Message::default()
                .string(HPARAM_INFO_NAME, name)
                .int(HPARAM_INFO_TYPE, example.data_type())
                .int(HPARAM_INFO_DIFFERS, *differs as i64);
            exp = exp.message(EXPERIMENT_HPARAM_INFOS, &info);
        }
        for tag in metrics {
            let name = Message::default().string(METRIC_NAME_TAG, tag);
            exp = exp.message(EXPERIMENT_METRIC_INFOS, &Message::default().message(METRIC_INFO_NAME, &name));
        }
        let data = Message::default().message(HPARAMS_EXPERIMENT, &exp);
        self.summary_event(0, t, &hparams_summary("_hparams_/experiment", &data))
    }

    pub fn flush(&mut self) -> Result<()> {
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// The scalars of one metrics-table row, tagged as TensorBoard groups them:
/// `train/…` for a train-log row (the learning rate with it), `eval/<column>`
/// for each eval value.
pub fn row_scalars(row: &super::Row) -> Vec<(String, f64)> {
    let mut values: Vec<(String, f64)> = Vec::new();
    if row.train_loss.is_some() || row.tokens_per_s.is_some() {
        values.push(("train/lr".into(), row.lr));
    }
    let optional = [
        ("train/loss", row.train_loss),
        ("train/grad_norm", row.grad_norm),
        ("train/loss_scale", row.loss_scale),
        ("train/tokens_per_s", row.tokens_per_s),
    ];
    values.extend(optional.into_iter().filter_map(|(tag, v)| Some((tag.to_string(), v?))));
    values.extend(row.eval.iter().map(|(k, v)| (format!("eval/{k}"), *v)));
    values
}

/// A recipe's scalar settings as dotted keys (`training.lr`, `masking.rate`,
/// ...); lists and maps below them as their JSON text.
pub fn flatten(value: &serde_yaml::Value) -> Vec<(String, HParam)> {
    fn walk(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<(String, HParam)>) {
        use serde_yaml::Value as V;
        match v {
            V::Null => {}
            V::Bool(b) => out.push((prefix.to_string(), HParam::Bool(*b))),
            V::Number(n) => out.push((prefix.to_string(), HParam::Number(n.as_f64().unwrap_or(f64::NAN)))),
            V::String(s) => out.push((prefix.to_string(), HParam::Text(s.clone()))),
            V::Mapping(m) => {
                for (k, v) in m {
                    let key = match k {
                        V::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
                    };
                    let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                    walk(&path, v, out);
                }
            }
            V::Sequence(_) | V::Tagged(_) => {
                let text = serde_json::to_string(v).unwrap_or_default();
                out.push((prefix.to_string(), HParam::Text(text)));
            }
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// This machine's name, for the file name (TensorBoard's convention).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0;
    let name = if ok { String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned() } else { String::new() };
    let clean: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_an_error_naming_the_file() {
        // /dev/full takes no byte: every write fails as on a full disk.
        let full = File::options().write(true).open("/dev/full").unwrap();
        let err = EventWriter::start(full, PathBuf::from("/dev/full")).err().expect("the write fails");
        assert!(format!("{err:#}").contains("cannot write /dev/full"), "{err:#}");
    }

    #[test]
    fn a_row_becomes_train_and_eval_scalars() {
        let row = super::super::Row {
            step: 10,
            lr: 1e-3,
            train_loss: Some(2.5),
            grad_norm: Some(0.75),
            tokens_per_s: Some(900.0),
            eval: [("perplexity".to_string(), 12.0)].into(),
            ..Default::default()
        };
        let tags: Vec<(String, f64)> = row_scalars(&row);
        let want = [("train/lr", 1e-3), ("train/loss", 2.5), ("train/grad_norm", 0.75), ("train/tokens_per_s", 900.0), ("eval/perplexity", 12.0)];
        assert_eq!(tags, want.map(|(t, v)| (t.to_string(), v)).to_vec());
        // An eval row alone has no train scalar, not even the learning rate.
        let eval_only = super::super::Row { step: 10, lr: 1e-3, eval: row.eval.clone(), ..Default::default() };
        assert_eq!(row_scalars(&eval_only), vec![("eval/perplexity".to_string(), 12.0)]);
    }

    #[test]
    fn recipe_settings_flatten_to_dotted_keys() {
        let v: serde_yaml::Value = serde_yaml::from_str("training: {lr: 0.001, epochs: null}\nmodel: {name: bert}\nmetrics: [loss, accuracy]\nrun: {tensorboard: true}").unwrap();
        let flat = flatten(&v);
        assert!(flat.contains(&("training.lr".to_string(), HParam::Number(0.001))), "{flat:?}");
        assert!(flat.contains(&("model.name".to_string(), HParam::Text("bert".into()))), "{flat:?}");
        assert!(flat.contains(&("metrics".to_string(), HParam::Text("[\"loss\",\"accuracy\"]".into()))), "{flat:?}");
        assert!(flat.contains(&("run.tensorboard".to_string(), HParam::Bool(true))), "{flat:?}");
        assert!(!flat.iter().any(|(k, _)| k == "training.epochs"), "null settings are left out: {flat:?}");
    }
}
