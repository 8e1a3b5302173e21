//! Plugins through the real binary: the shipped ones are listed; plugins built
//! outside the workspace (the example domain plugin, a scaffold from
//! `runner new-plugin`) load and train; a plugin built for another ABI or API
//! is refused with exit code 2; a panic inside a plugin becomes an error.
//!
//! Out-of-tree plugins are built here with cargo into target/plugin-tests,
//! against the same runner-api sources and libtorch as the runner.

use std::process::Output;

use crate::common::{build_plugin, library, root, runner, stderr, stdout};

fn text(o: &Output) -> (String, String) {
    (stdout(o), stderr(o))
}

#[test]
fn runner_plugins_lists_every_shipped_component() {
    let o = runner(&["plugins"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for (kind, name) in [
        ("dataset", "text"),
        ("masking", "bert"),
        ("model", "bert"),
        ("model", "roberta"),
        ("model", "distilbert"),
        ("model", "modernbert"),
        ("metric", "loss"),
        ("metric", "perplexity"),
        ("metric", "accuracy"),
        ("metric", "top5_accuracy"),
    ] {
        let found = out.lines().any(|l| l.split_whitespace().take(2).eq([kind, name]));
        assert!(found, "`runner plugins` lacks {kind} {name}:\n{out}");
    }
    // Parameters with defaults and the library each component came from.
    assert!(out.contains("documents") && out.contains("blank_line"), "{out}");
    assert!(out.contains("preset") && out.contains("librunner_plugin_bert.so"), "{out}");
}

#[test]
fn the_example_domain_plugin_builds_loads_and_trains() {
    let lib_dir = build_plugin(&root().join("examples/plugins/rst-domain"));
    let lib = library(&lib_dir, "rst-domain");
    let o = runner(&["plugins", "--plugin", lib.to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("rst-literal") && out.contains("literal_boost"), "{out}");

    let results = tempfile::tempdir().unwrap();
    // The library itself: its folder also holds the test plugins that must be refused.
    let plugins = format!("plugins=[{}]", lib.display());
    let output = format!("run.output_dir={}", results.path().display());
    let o = runner(&[
        "run",
        "examples/plugins/rst-domain/recipe.yaml",
        "--set",
        &plugins,
        "--set",
        &output,
        "--set",
        "data.max_seq_len=64",
        "--set",
        "training.batch_size=4",
        "--set",
        "training.max_steps=3",
        "--set",
        "eval.every=0",
        "--set",
        "eval.max_sequences=8",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "the example recipe failed:\n{err}");
    let metrics = std::fs::read_to_string(results.path().join("rst-domain/metrics.csv")).unwrap();
    assert!(metrics.lines().count() >= 3, "{metrics}");
}

#[test]
fn a_scaffolded_plugin_builds_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let o = runner(&["new-plugin", "legal-domain", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o).1);
    let again = runner(&["new-plugin", "legal-domain", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "an existing folder is not overwritten");
    let lib_dir = build_plugin(&dir.path().join("legal-domain"));
    let o = runner(&["plugins", "--plugin", library(&lib_dir, "legal-domain").to_str().unwrap()]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("legal-domain-long-words") && out.contains("min_chars"), "{out}");
    assert!(out.contains("legal-domain-records"), "the scaffold has a streamed dataset: {out}");
}

#[test]
fn plugins_built_for_another_abi_or_api_are_refused() {
    let lib_dir = build_plugin(&root().join("tests/plugins/bad-abi"));
    let o = runner(&["plugins", "--plugin", library(&lib_dir, "bad-abi").to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("plugin ABI version 999") && err.contains("speaks ABI version 1"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let lib_dir = build_plugin(&root().join("tests/plugins/bad-api"));
    let o = runner(&["plugins", "--plugin", library(&lib_dir, "bad-api").to_str().unwrap()]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("runner-api: plugin built with 0.0.0-other, this runner with"),
        "the message names both versions:\n{err}"
    );
}

#[test]
fn a_panic_inside_a_plugin_becomes_an_error_naming_it() {
    let lib_dir = build_plugin(&root().join("tests/plugins/panicky"));
    let results = tempfile::tempdir().unwrap();
    let plugins = format!("plugins=[{}]", library(&lib_dir, "panicky").display());
    let output = format!("run.output_dir={}", results.path().display());
    let o = runner(&["run", "tests/recipes/tiny.yaml", "--set", &plugins, "--set", &output, "--set", "masking.strategy=panicky"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("plugin `panicky` failed in masking `panicky` (mask) with a panic: this masker always panics"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE") && !err.contains("panicked"), "no panic report on stderr:\n{err}");
}

#[test]
fn unknown_plugin_paths_are_clear_errors() {
    let o = runner(&["plugins", "--plugin", "no/such/plugin.so"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no/such/plugin.so"), "{err}");
}
