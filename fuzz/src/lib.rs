//! [`one_input`]: what the fuzz target checks on each input, against the
//! `runner-recipe` crate (the recipe code that needs neither libtorch nor polars).
//!
//! An input is a recipe's text, then any number of `--set` arguments, all
//! separated by NUL bytes. For every input:
//! - nothing panics: not parsing the overrides, applying them, deserializing, or
//!   checking the values;
//! - an error names the recipe file (or the `--set` argument);
//! - every problem the checks report starts with the key it is about;
//! - a recipe that parses is written back as YAML (as a run's `recipe.yaml`),
//!   reads back, and checks the same way: the run folder's copy is the recipe.

use runner_recipe::check::{self, Problems};
use runner_recipe::overrides::Override;
use runner_recipe::parse::parse;

/// The recipe sections, the only things a problem may start with.
const SECTIONS: &[&str] = &["run.", "data.", "tokenizer.", "masking.", "model.", "training.", "eval.", "metrics"];

/// Checks one fuzz input (see the module docs); panics on a broken property.
pub fn one_input(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let mut overrides = Vec::new();
    for arg in parts.take(8) {
        let arg = String::from_utf8_lossy(arg);
        match arg.parse::<Override>() {
            Ok(o) => overrides.push(o),
            Err(e) => assert!(format!("{e:#}").starts_with("--set "), "an override error names it: {e:#}"),
        }
    }
    let raw = match parse(&text, "fuzz.yaml", &overrides) {
        Ok(raw) => raw,
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.starts_with("fuzz.yaml") || msg.starts_with("--set "), "an error names the file: {msg}");
            return;
        }
    };
    let mut first = Problems::default();
    let checked = check::values(&raw, &mut first);
    for p in &first.0 {
        assert!(SECTIONS.iter().any(|s| p.starts_with(s)), "a problem starts with its key: {p}");
    }
    let yaml = serde_yaml::to_string(&raw).expect("a parsed recipe serializes");
    let again = parse(&yaml, "recipe.yaml", &[]).unwrap_or_else(|e| panic!("the written recipe reads back: {e:#}\n{yaml}"));
    assert_eq!(serde_yaml::to_string(&again).expect("serializes"), yaml, "the written recipe reads back the same");
    let mut second = Problems::default();
    // Debug text, not ==: NaN is a value a recipe may hold (and the checks refuse).
    assert_eq!(format!("{:?}", check::values(&again, &mut second)), format!("{checked:?}"));
    assert_eq!(first.0, second.0, "the written recipe checks the same");
}
