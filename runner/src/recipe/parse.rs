//! A recipe's text -> [`RawRecipe`]: a UTF-8 byte-order mark is dropped, `--set`
//! overrides are applied to the YAML tree, and serde's errors become one message
//! naming the file, the key and (when the error is in the text itself) the line.
//! An unknown key or value gets the closest known one as a suggestion.
//!
//! Nothing here touches the file system or libtorch: the recipe fuzz target
//! (`fuzz/`) compiles this file as it is.

use anyhow::Result;

use super::overrides::{self, Override};
use super::raw::RawRecipe;
use crate::error::user_msg;

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
    if overrides.is_empty() {
        // Straight from the text, so errors carry line and column.
        return serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(|e| located(e, false));
    }
    let mut tree: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| user_msg(format!("{shown}: {e}")))?;
    for o in overrides {
        overrides::apply(&mut tree, o).map_err(|e| user_msg(format!("{e:#}")))?;
    }
    serde_path_to_error::deserialize(tree).map_err(|e| located(e, true))
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
    fn an_empty_recipe_says_so() {
        let err = parse("\u{feff}\n  \n", "r.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("r.yaml: the recipe is empty"), "{err}");
    }
}
