//! Labelled examples for probes: a JSONL file, one object per line, with a
//! text field and a label field. Every problem names the file and the line.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The examples of one file, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labelled {
    pub texts: Vec<String>,
    /// Labels as written (integers and booleans become their text).
    pub labels: Vec<String>,
    /// 1-based line number of each example, for messages.
    pub lines: Vec<usize>,
}

impl Labelled {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// Reads every line of `path` (blank lines skipped) and keeps the first `max`
/// examples, if given. The whole file is checked either way.
pub fn read(path: &Path, text_field: &str, label_field: &str, max: Option<usize>) -> Result<Labelled> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Labelled::default();
    for (i, line) in raw.split(|&b| b == b'\n').enumerate() {
        let n = i + 1;
        let Ok(line) = std::str::from_utf8(line) else {
            bail!("{} line {n}: not valid UTF-8", path.display());
        };
        // A UTF-8 byte-order mark (as some editors write) before the first example.
        let line = if n == 1 { line.strip_prefix('\u{feff}').unwrap_or(line) } else { line };
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{} line {n}: not a JSON object ({e})", path.display()))?;
        let Value::Object(obj) = value else {
            bail!("{} line {n}: not a JSON object", path.display());
        };
        let field = |name: &str| {
            obj.get(name).ok_or_else(|| {
                let has: Vec<&str> = obj.keys().map(String::as_str).collect();
                anyhow::anyhow!("{} line {n}: no field `{name}` (this line has: {})", path.display(), has.join(", "))
            })
        };
        let text = match field(text_field)? {
            Value::String(s) => s.clone(),
            _ => bail!("{} line {n}: `{text_field}` must be a string", path.display()),
        };
        let label = match field(label_field)? {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(x) if x.is_i64() || x.is_u64() => x.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => bail!("{} line {n}: `{label_field}` must be a non-empty string or an integer", path.display()),
        };
        if max.is_none_or(|m| out.len() < m) {
            out.texts.push(text);
            out.labels.push(label);
            out.lines.push(n);
        }
    }
    if out.is_empty() {
        bail!("{}: no examples (one JSON object per line is expected)", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn reads_texts_and_labels_and_caps_them() {
        let f = file("{\"text\": \"a b\", \"label\": \"x\"}\n\n{\"text\": \"c\", \"label\": 3}\n{\"text\": \"d\", \"label\": \"x\"}\n");
        let l = read(f.path(), "text", "label", None).unwrap();
        assert_eq!(l.texts, ["a b", "c", "d"]);
        assert_eq!(l.labels, ["x", "3", "x"]);
        assert_eq!(l.lines, [1, 3, 4]);
        assert_eq!(read(f.path(), "text", "label", Some(2)).unwrap().len(), 2);
        // A UTF-8 byte-order mark before the first example is no text.
        let f = file("\u{feff}{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"y\"}\n");
        assert_eq!(read(f.path(), "text", "label", None).unwrap().texts, ["a", "b"]);
    }

    #[test]
    fn problems_name_the_file_and_the_line() {
        let cases = [
            ("{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\",\n", "line 2: not a JSON object"),
            ("{\"text\": \"a\", \"part\": \"x\"}\n", "line 1: no field `label` (this line has: part, text)"),
            ("[1, 2]\n", "line 1: not a JSON object"),
            ("{\"text\": 1, \"label\": \"x\"}\n", "line 1: `text` must be a string"),
            ("{\"text\": \"a\", \"label\": [1]}\n", "line 1: `label` must be"),
            ("\n\n", "no examples"),
        ];
        for (text, want) in cases {
            let f = file(text);
            let e = format!("{:#}", read(f.path(), "text", "label", None).unwrap_err());
            assert!(e.contains(&f.path().display().to_string()) && e.contains(want), "{e:?} lacks {want:?}");
        }
        let e = format!("{:#}", read(Path::new("/nonexistent/probe.jsonl"), "text", "label", None).unwrap_err());
        assert!(e.contains("/nonexistent/probe.jsonl: cannot read"), "{e}");
    }
}
