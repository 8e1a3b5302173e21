//! A YAML scalar as the runner shows it in messages, run names and reports:
//! `0.3`, `true`, `null`, text without quotes.

use serde_yaml::Value;

/// A scalar plainly (text as it is, numbers and booleans as written, `null`);
/// `None` for a list, a mapping or a tagged value, which each caller shows its own way.
pub fn show_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        Value::Sequence(_) | Value::Mapping(_) | Value::Tagged(_) => None,
    }
}
