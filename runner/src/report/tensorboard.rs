//! TensorBoard event files: `events.out.tfevents.<secs>.<host>.<pid>` in a run's
//! `tensorboard/` folder, read by `tensorboard --logdir results` (and by W&B's
//! `wandb sync --sync-tensorboard`).
//!
//! A file is a sequence of TFRecords (little-endian u64 length, masked CRC-32C of
//! the length, the payload, masked CRC-32C of the payload), each payload one
//! `tensorflow.Event` protobuf message. The few messages and fields written here
//! are encoded by hand (field numbers from TensorBoard's `event.proto`,
//! `summary.proto` and the hparams plugin's `plugin_data.proto` / `api.proto`),
//! which needs neither `protoc` nor a protobuf crate.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one table lookup per byte.
pub fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The CRC as TFRecord stores it: rotated and offset, so that a CRC of data
/// holding CRCs stays well distributed.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xA282_EAD8)
}

/// One TFRecord around `payload`.
pub fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
    out
}

/// A protobuf message being encoded: fields appended in any order.
#[derive(Default, Clone)]
pub struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    /// An int32/int64/enum/bool field (wire type 0).
    pub fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }
    /// A double field (wire type 1).
    pub fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A float field (wire type 5).
    pub fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A string, bytes or embedded-message field (wire type 2).
    pub fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    pub fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }
    pub fn message(self, field: u32, m: &Message) -> Self {
        self.bytes(field, &m.0)
    }
    pub fn encoded(&self) -> &[u8] {
        &self.0
    }
}

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
const START_INFO_START_TIME: u32 = 5;
const END_INFO_STATUS: u32 = 1;
const END_INFO_END_TIME: u32 = 2;
const STATUS_SUCCESS: i64 = 1;
const EXPERIMENT_HPARAM_INFOS: u32 = 4;
const EXPERIMENT_METRIC_INFOS: u32 = 5;
const EXPERIMENT_TIME_CREATED: u32 = 3;
const HPARAM_INFO_NAME: u32 = 1;
const HPARAM_INFO_TYPE: u32 = 4;
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

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: u64, wall_time: f64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Message::default();
        for (tag, v) in values {
            let value = Message::default().string(VALUE_TAG, tag).float(VALUE_SIMPLE_VALUE, *v as f32);
            summary = summary.message(SUMMARY_VALUE, &value);
        }
        self.summary_event(step, wall_time, &summary)
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
            let entry = Message::default().string(1, key).message(2, &value.encode());
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
    /// (hparams plugin, `experiment`), written at the group's folder.
    pub fn experiment(&mut self, hparams: &[(String, HParam)], metrics: &[String]) -> Result<()> {
        let t = now();
        let mut exp = Message::default().double(EXPERIMENT_TIME_CREATED, t);
        for (name, example) in hparams {
            let info = Message::default().string(HPARAM_INFO_NAME, name).int(HPARAM_INFO_TYPE, example.data_type());
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

/// The scalars of one metrics-table row, at its step: `train/…` for a
/// train-log row, `eval/<column>` for each eval value. Flushed at once.
pub fn write_row(w: &mut EventWriter, row: &super::Row) -> Result<()> {
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
    w.scalars(row.step, now(), &values)?;
    w.flush()
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
    fn crc32c_known_vectors() {
        // RFC 3720 (iSCSI), appendix B.4, and the classic check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn record_framing() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
    }

    #[test]
    fn protobuf_encoding() {
        // field 2 varint 300 (the protobuf guide's example), then a length-delimited field 1.
        let m = Message::default().int(2, 300).string(1, "hi");
        assert_eq!(m.encoded(), &[0x10, 0xAC, 0x02, 0x0A, 0x02, b'h', b'i']);
        let d = Message::default().double(1, 1.0);
        assert_eq!(d.encoded()[0], 0x09);
        assert_eq!(&d.encoded()[1..], &1.0f64.to_le_bytes());
    }
}
