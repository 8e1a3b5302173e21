//! A recipe's text -> [`RawRecipe`]: a UTF-8 byte-order mark is dropped, `--set`
//! overrides are applied to the YAML tree, and serde's errors become one message
//! naming the file, the key and (when the error is in the text itself) the line.
//! An unknown key or value gets the closest known one as a suggestion.
//!
//! Nothing here touches the file system or libtorch: the recipe fuzz target
//! (`fuzz/`) checks it as it is.

use anyhow::Result;
use serde_yaml::Value;

use crate::error::user_msg;
use crate::overrides::{self, Override};
use crate::raw::RawRecipe;
use crate::show::show_scalar;

/// Parses a recipe's text; `shown` names it in messages (the file's path).
pub fn parse(text: &str, shown: &str, overrides: &[Override]) -> Result<RawRecipe> {
    // Editors on some systems start UTF-8 files with a byte-order mark; YAML
    // would read it as part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() && overrides.is_empty() {
        return Err(user_msg(format!("{shown}: the recipe is empty (it needs at least run, data and model)")));
    }
    let located = |e: serde_path_to_error::Error<serde_yaml::Error>, with_set: bool| {
        let key = e.path().to_string();
        let what = with_suggestion(&e.inner().to_string());
        let file = if with_set { format!("{shown} (with --set)") } else { shown.to_string() };
        if key == "." {
            user_msg(format!("{file}: {what}"))
        } else {
            user_msg(format!("{file}: {key}: {what}"))
        }
    };
    let raw: RawRecipe = if overrides.is_empty() {
        // Straight from the text, so errors carry line and column.
        serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| located(e, false))?
    } else {
        let mut tree: Value = serde_yaml::from_str(text).map_err(|e| user_msg(format!("{shown}: {e}")))?;
        for o in overrides {
            overrides::apply(&mut tree, o).map_err(|e| user_msg(format!("{e:#}")))?;
        }
        serde_path_to_error::deserialize(tree).map_err(|e| located(e, true))?
    };
    // Open mappings (`options:`) take any YAML, but a run keeps its recipe as
    // YAML, and serde_yaml reads keys it cannot write back (`{a: 1}: 2`, `!t x: 2`).
    let tree = serde_yaml::to_value(&raw).map_err(|e| user_msg(format!("{shown}: {e}")))?;
    if let Some((key, kind)) = complex_key(&tree, "") {
        let file = if overrides.is_empty() { shown.to_string() } else { format!("{shown} (with --set)") };
        return Err(user_msg(format!(
            "{file}: {key}: a key must be text, a number, true/false or null, not {kind}"
        )));
    }
    Ok(raw)
}

/// The first mapping key under `v` that is not a plain scalar: where it is
/// (the dotted path of the mapping holding it) and what it is.
fn complex_key(v: &Value, at: &str) -> Option<(String, &'static str)> {
    let child = |k: &str| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") };
    match v {
        Value::Mapping(m) => m.iter().find_map(|(k, v)| {
            let kind = match k {
                Value::Mapping(_) => Some("a mapping"),
                Value::Sequence(_) => Some("a list"),
                Value::Tagged(_) => Some("a tagged value"),
                _ => None,
            };
            let here = if at.is_empty() { "(top level)".to_string() } else { at.to_string() };
            match kind {
                Some(kind) => Some((here, kind)),
                // Only scalars are left here.
                None => complex_key(v, &child(&show_scalar(k).unwrap_or_default())),
            }
        }),
        Value::Sequence(s) => s.iter().enumerate().find_map(|(i, v)| complex_key(v, &child(&i.to_string()))),
        Value::Tagged(t) => complex_key(&t.value, at),
        _ => None,
    }
}

/// serde's "unknown field `lrr`, expected one of `lr`, ..." (or "unknown
/// variant") with "; did you mean `lr`?" added when one known name is close.
pub fn with_suggestion(msg: &str) -> String {
    // serde_yaml puts the key path (and the line) around serde's message.
    let at = ["unknown field `", "unknown variant `"].iter().find_map(|m| msg.find(m).map(|i| i + m.len()));
    let Some(rest) = at.map(|i| &msg[i..]) else {
        return msg.to_string();
    };
    let Some((given, known)) = rest.split_once('`') else {
        return msg.to_string();
    };
    let best = known
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| (strsim::normalized_damerau_levenshtein(k, given), k))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((_, k)) => format!("{msg} (did you mean `{k}`?)"),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "run: {name: a}\ndata: {train: c.txt}\nmodel: {checkpoint: m}\n";

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let with_bom = format!("\u{feff}{MINIMAL}");
        assert_eq!(parse(&with_bom, "r.yaml", &[]).unwrap().run.name, "a");
        let set: Override = "run.name=b".parse().unwrap();
        assert_eq!(parse(&with_bom, "r.yaml", &[set]).unwrap().run.name, "b");
    }

    #[test]
    fn unknown_keys_and_values_get_the_closest_known_name() {
        let err = parse(&format!("{MINIMAL}training: {{lrr: 1.0}}\n"), "r.yaml", &[]).unwrap_err().to_string();
        assert!(err.starts_with("r.yaml: training.lrr: ") && err.contains("unknown field `lrr`"), "{err}");
        assert!(err.ends_with("(did you mean `lr`?)"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        let err = parse(&format!("{MINIMAL}training: {{schedule: cosin}}\n"), "r.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("did you mean `cosine`?"), "{err}");
        let far = parse(&format!("{MINIMAL}training: {{zzzzzz: 1}}\n"), "r.yaml", &[]).unwrap_err().to_string();
        assert!(!far.contains("did you mean"), "{far}");
    }

    #[test]
    fn keys_that_cannot_be_written_back_are_refused_with_their_place() {
        for (options, kind) in [("{{a: 1}: 2}", "a mapping"), ("{!t x: 1}", "a tagged value"), ("{[a]: 1}", "a list")] {
            let text = MINIMAL.replace("{checkpoint: m}", &format!("{{checkpoint: m, options: {{config: {options}}}}}"));
            let err = parse(&text, "r.yaml", &[]).unwrap_err().to_string();
            assert_eq!(err, format!("r.yaml: model.options.config: a key must be text, a number, true/false or null, not {kind}"));
        }
        let set: Override = "model.options.x={{a: 1}: 2}".parse().unwrap();
        let err = parse(MINIMAL, "r.yaml", &[set]).unwrap_err().to_string();
        assert!(err.starts_with("r.yaml (with --set): model.options.x: a key must be"), "{err}");
        // Plain keys of every scalar kind stay allowed.
        let text = MINIMAL.replace("{checkpoint: m}", "{checkpoint: m, options: {1: a, true: b, ~: c, x: [{y: 1}]}}");
        assert!(parse(&text, "r.yaml", &[]).is_ok());
    }

    #[test]
    fn an_empty_recipe_says_so() {
        let err = parse("\u{feff}\n  \n", "r.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("r.yaml: the recipe is empty"), "{err}");
    }
}
