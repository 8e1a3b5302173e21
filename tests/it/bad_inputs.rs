//! Bad input, one table: each row is a command the real binary runs on a bad
//! recipe, override, template, corpus, checkpoint, token store or plugin, with
//! the exit code and a piece of the message it must give. Every row also checks
//! that no panic report, backtrace or C++ frame reaches the user and that
//! nothing partial is left behind: the files under the row's folder after the
//! command are those before it (plus, where a row says so, whole token stores
//! or a run folder holding only its `recipe.yaml`; never a lock file), and
//! no file of earlier results (a finished run and its checkpoint) changed.
//!
//! Most rows use `runner validate`, which catches them without loading a model.
//! Then the defects found by using the runner as a newcomer would, each as its
//! own test: a BOM recipe, a config.json that disagrees with its weights, a
//! truncated plugin library, fill-mask with a tokenizer larger than the model.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::common::{beside_runner, build_plugin, library, root, runner, runner_command, stderr, tiny_bert, tiny_recipe};

/// What a row may leave behind.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Leaves {
    /// Nothing new (no lock file either).
    Nothing,
    /// Whole token stores in the cache (a failure after the store was built, or a rebuild).
    Stores,
    /// Also a run folder holding only `recipe.yaml` (a failure inside training).
    RunRecipe,
}

struct Row {
    what: &'static str,
    args: Vec<String>,
    code: i32,
    needle: String,
    leaves: Leaves,
    /// Run as an unprivileged user (for the read-only folder when the tests run as root).
    unprivileged: bool,
}

fn row(what: &'static str, args: &[&str], needle: &str) -> Row {
    Row {
        what,
        args: args.iter().map(|s| s.to_string()).collect(),
        code: 2,
        needle: needle.to_string(),
        leaves: Leaves::Nothing,
        unprivileged: false,
    }
}

impl Row {
    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
    fn leaves(mut self, leaves: Leaves) -> Self {
        self.leaves = leaves;
        self
    }
}

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out
}

/// Whether `new` (a path that appeared) is something `leaves` allows.
fn allowed(new: &Path, leaves: Leaves) -> bool {
    let s = new.to_string_lossy();
    let lock = s.ends_with(".lock");
    let store = s.starts_with("cache/") && !s.contains(".tmp-") && !lock;
    let run = s.starts_with("out/") && !lock && (s.matches('/').count() == 1 || s.ends_with("/recipe.yaml"));
    match leaves {
        Leaves::Nothing => false,
        Leaves::Stores => store,
        Leaves::RunRecipe => store || run,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// The fixture model under `w/name`, with `edit` applied to the folder.
fn model(w: &Path, name: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = w.join(name);
    copy_dir(&tiny_bert(), &dir);
    edit(&dir);
    dir.display().to_string()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The fixture tokenizer with 8 more WordPiece tokens than the model's 42.
fn grow_tokenizer(dir: &Path) {
    edit_json(&dir.join("tokenizer.json"), |t| {
        let vocab = t["model"]["vocab"].as_object_mut().unwrap();
        let n = vocab.len();
        for i in 0..8 {
            vocab.insert(format!("extra{i}"), serde_json::json!(n + i));
        }
    });
}

/// Replaces `from` by `to` (same length) in a file's bytes: renames a tensor in
/// a safetensors header without moving any offset.
fn replace_bytes(path: &Path, from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("the name is in the file");
    bytes[at..at + from.len()].copy_from_slice(to.as_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// The tiny recipe with results under `w/out`, `edit` applied to its text.
fn recipe(w: &Path, name: &str, edit: impl FnOnce(String) -> String) -> String {
    let out = format!("output_dir: {}", w.join("out").display());
    tiny_recipe(w, name, |text| edit(text.replace("output_dir: results", &out))).display().to_string()
}

fn runs(row: &Row, w: &Path) -> std::process::Output {
    let args: Vec<&str> = row.args.iter().map(String::as_str).collect();
    let mut c = runner_command(&args);
    c.env("RUNNER_CACHE_DIR", w.join("cache"));
    if row.unprivileged {
        c.uid(65534).gid(65534);
    }
    c.output().expect("the runner binary starts")
}

/// The bytes of every file under `dir` (results that a row must not change).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    tree(dir).into_iter().filter_map(|p| std::fs::read(dir.join(&p)).ok().map(|b| (p, b))).collect()
}

fn check(row: &Row, w: &Path) -> Result<(), String> {
    let before = tree(w);
    let results = contents(&w.join("out"));
    let o = runs(row, w);
    let err = stderr(&o);
    let mut wrong = Vec::new();
    if o.status.code() != Some(row.code) {
        wrong.push(format!("exit code {:?}, expected {}", o.status.code(), row.code));
    }
    if !err.contains(&row.needle) {
        wrong.push(format!("the message lacks `{}`", row.needle));
    }
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace", "frame #", "internal error", "truncate_ragged_lines"] {
        if err.contains(bad) {
            wrong.push(format!("the message shows `{bad}`"));
        }
    }
    let left: Vec<PathBuf> = tree(w).difference(&before).filter(|p| !allowed(p, row.leaves)).cloned().collect();
    if !left.is_empty() {
        wrong.push(format!("left behind: {left:?}"));
    }
    let changed: Vec<&PathBuf> =
        results.iter().filter(|(p, b)| std::fs::read(w.join("out").join(p)).ok().as_ref() != Some(b)).map(|(p, _)| p).collect();
    if !changed.is_empty() {
        wrong.push(format!("changed or removed earlier results: {changed:?}"));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: runner {}\n  {}\n  stderr:\n{err}", row.what, row.args.join(" "), wrong.join("\n  ")))
    }
}

#[test]
fn bad_inputs_give_one_clear_message_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    // Readable by the unprivileged user of the read-only row.
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws = |rel: &str| w.join(rel).display().to_string();
    let tiny = recipe(w, "tiny.yaml", |t| t);
    let set_recipe = |name: &str, from: &str, to: &str| {
        let (from, to) = (from.to_string(), to.to_string());
        recipe(w, name, move |t| {
            assert!(t.contains(&from), "tiny.yaml has `{from}`");
            t.replace(&from, &to)
        })
    };

    // Files the rows point at.
    std::fs::create_dir(w.join("cache")).unwrap();
    std::fs::create_dir(w.join("out")).unwrap();
    std::fs::write(w.join("empty.txt"), "").unwrap();
    std::fs::create_dir(w.join("no-files")).unwrap();
    std::fs::create_dir(w.join("only-md")).unwrap();
    std::fs::write(w.join("only-md/notes.md"), "the big cat sat .\n").unwrap();
    std::fs::write(w.join("latin1.txt"), b"the big cat sat .\nthe caf\xe9 is old .\n").unwrap();
    let fifo = w.join("corpus.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    std::fs::write(w.join("a-file"), "not a folder\n").unwrap();
    std::fs::create_dir_all(w.join("events-file/tiny")).unwrap();
    std::fs::write(w.join("events-file/tiny/tensorboard"), "not a folder\n").unwrap();
    let ro = w.join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    std::fs::create_dir(w.join("templates")).unwrap();
    std::fs::write(w.join("outside.yaml"), "run: {name: x}\n").unwrap();
    let tmpl = |name: &str, text: String| {
        let p = w.join("templates").join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let tiny_text = std::fs::read_to_string(&tiny).unwrap();
    let unclosed = tmpl("unclosed.yaml.j2", format!("{{# grid: {{masking.rate: [0.15]}} #}}\n{{% if true %}}\n{tiny_text}"));
    let escape = tmpl("escape.yaml.j2", format!("{{# grid: {{masking.rate: [0.15]}} #}}\n{{% include '../outside.yaml' %}}\n{tiny_text}"));
    let undefined = tmpl("undefined.yaml.j2", format!("{{# grid: {{masking.rate: [0.15]}} #}}\n{tiny_text}seed_of: {{{{ nope }}}}\n"));

    let big_tok = model(w, "big-tokenizer", grow_tokenizer);
    let bad_config = model(w, "bad-config", |d| std::fs::write(d.join("config.json"), "{\"hidden_size\": 32,\n").unwrap());
    let no_config = model(w, "no-config", |d| std::fs::remove_file(d.join("config.json")).unwrap());
    let cut_weights = model(w, "cut-weights", |d| {
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    let no_tokenizer = model(w, "no-tokenizer", |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    let bad_tokenizer = model(w, "bad-tokenizer", |d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap());
    let pickle = model(w, "pickle", |d| {
        std::fs::rename(d.join("model.safetensors"), d.join("pytorch_model.bin")).unwrap();
    });
    let wrong_shape = model(w, "wrong-shape", |d| edit_json(&d.join("config.json"), |c| c["intermediate_size"] = 40.into()));
    let three_layers = model(w, "three-layers", |d| edit_json(&d.join("config.json"), |c| c["num_hidden_layers"] = 3.into()));
    let renamed = model(w, "renamed", |d| {
        replace_bytes(&d.join("model.safetensors"), "bert.encoder.layer.0.output.dense.weight", "bert.encoder.layer.0.output.dense.wexght");
    });
    let roberta_over_bert =
        model(w, "roberta-over-bert", |d| std::fs::copy(root().join("tests/fixtures/tiny-roberta/config.json"), d.join("config.json")).map(drop).unwrap());
    let gpt2 = model(w, "gpt2", |d| edit_json(&d.join("config.json"), |c| c["model_type"] = "gpt2".into()));
    let no_mask = model(w, "no-mask", |d| {
        edit_json(&d.join("tokenizer.json"), |t| {
            t["added_tokens"].as_array_mut().unwrap().retain(|a| a["content"] != "[MASK]");
            t["model"]["vocab"].as_object_mut().unwrap().remove("[MASK]");
        });
        edit_json(&d.join("tokenizer_config.json"), |c| drop(c.as_object_mut().unwrap().remove("mask_token")));
    });
    let model_file = ws("tiny-bert-file");
    std::fs::copy(tiny_bert().join("model.safetensors"), &model_file).unwrap();

    // Plugins: a library cut short, a text file named .so, one built for another ABI, one that panics.
    let plugins = w.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let shipped = beside_runner("librunner_plugin_text.so");
    let cut = std::fs::read(&shipped).unwrap();
    std::fs::write(plugins.join("libcut.so"), &cut[..100_000]).unwrap();
    std::fs::write(plugins.join("libtext.so"), "not a library\n").unwrap();
    let bad_abi = library(&build_plugin(&root().join("tests/plugins/bad-abi")), "bad-abi").display().to_string();
    let panicky = library(&build_plugin(&root().join("tests/plugins/panicky")), "panicky").display().to_string();

    let fill = |model: &str| vec!["fill-mask".to_string(), "--model".into(), model.to_string(), "the big [MASK] sat .".into()];
    let fill_row = |what, model: &str, needle: &str| {
        let mut r = row(what, &[], needle);
        r.args = fill(model);
        r
    };
    let v = |what, recipe: &str, sets: &[&str], needle: &str| {
        let mut args = vec!["validate", recipe];
        for s in sets {
            args.extend(["--set", s]);
        }
        row(what, &args, needle)
    };
    let set = |what, sets: &[&str], needle: &str| v(what, &tiny, sets, needle);
    let out_file = format!("run.output_dir={}", ws("a-file"));
    let out_ro = format!("run.output_dir={}", ro.display());
    let out_events_file = format!("run.output_dir={}", ws("events-file"));
    let events_file_message = format!("run.tensorboard: {} is a file, not a folder", ws("events-file/tiny/tensorboard"));
    let long_name = format!("run.name={}", "n".repeat(300));
    let train = |p: &str| format!("data.train={p}");
    let ckpt = |p: &str| format!("model.checkpoint={p}");
    let tokenizer = |p: &str| format!("tokenizer.path={p}/tokenizer.json");
    let plugin = |p: &str| format!("plugins=[{p}]");
    let modernbert = root().join("tests/fixtures/tiny-modernbert").display().to_string();
    let cache_dir = w.join("cache");
    // A finished run with one checkpoint (keep: 1), for the rows that point into it.
    let done = runs(
        &row("a run", &["run", &tiny, "--set", "run.name=done", "--set", "training.max_steps=2", "--set", "training.checkpoint.every=2", "--set", "training.checkpoint.keep=1"], ""),
        w,
    );
    assert!(done.status.success(), "{}", stderr(&done));
    let done_ckpt = ws("out/done/checkpoints/step-2");
    let into = |dir: &str, name: &str| [format!("run.output_dir={}", ws(dir)), format!("run.name={name}")];
    let [into_ckpts, step2] = into("out/done/checkpoints", "step-2");
    let [into_run, inner] = into("out/done", "inner");
    // A project folder that holds a recipe named recipe.yaml, and no results.
    std::fs::create_dir(w.join("project")).unwrap();
    std::fs::copy(&tiny, w.join("project/recipe.yaml")).unwrap();
    let into_project = format!("run.output_dir={}", ws("project"));
    // A finished run that saved no checkpoint; a copy of `done` whose only checkpoint is damaged.
    let nockpt = runs(
        &row("a run", &["run", &tiny, "--set", "run.name=nockpt", "--set", "training.max_steps=2", "--set", "training.checkpoint.every=0"], ""),
        w,
    );
    assert!(nockpt.status.success(), "{}", stderr(&nockpt));
    let cp = std::process::Command::new("cp").arg("-a").arg(w.join("out/done")).arg(w.join("out/damaged")).status().unwrap();
    assert!(cp.success());
    let weights = w.join("out/damaged/checkpoints/step-2/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    // Probe files (two classes), and JSONL files that start with a UTF-8 byte-order mark.
    let probe_text = "{\"text\": \"the big cat sat .\", \"label\": \"a\"}\n{\"text\": \"the cat is old .\", \"label\": \"b\"}\n";
    std::fs::write(w.join("probe.jsonl"), probe_text).unwrap();
    std::fs::write(w.join("probe-bom.jsonl"), format!("\u{feff}{probe_text}")).unwrap();
    let corpus = std::fs::read_to_string(root().join("tests/fixtures/toy-corpus.txt")).unwrap();
    let records: String = corpus.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{}\n", serde_json::json!({"text": l}))).collect();
    std::fs::write(w.join("corpus-bom.jsonl"), format!("\u{feff}{records}")).unwrap();
    let probe = |file: &str, extra: &str| format!("metrics=[loss, {{name: probe, options: {{train: {}, eval: {}{extra}}}}}]", ws(file), ws(file));
    // A run folder whose metrics table is not a table.
    std::fs::create_dir_all(w.join("reports/bad-csv")).unwrap();
    std::fs::write(w.join("reports/bad-csv/metrics.csv"), "step,train_loss\n1,2.5\n2,2.4,9,9,9\n\"unclosed,1\n").unwrap();
    let name_250 = format!("run.name={}", "n".repeat(250));

    let mut rows = vec![
        // Recipes: keys, types, ranges.
        v("unknown key", &set_recipe("lrr.yaml", "lr: 2.0e-3", "lrr: 2.0e-3"), &[], "unknown field `lrr`"),
        v("unknown key: suggestion", &set_recipe("lrr2.yaml", "lr: 2.0e-3", "lrr: 2.0e-3"), &[], "did you mean `lr`?"),
        v("unknown section", &set_recipe("section.yaml", "training:", "trainig:"), &[], "did you mean `training`?"),
        v("wrong type", &set_recipe("type.yaml", "batch_size: 8", "batch_size: eight"), &[], "training.batch_size: invalid type"),
        v("unknown value", &set_recipe("variant.yaml", "examples: packed", "examples: packd"), &[], "did you mean `packed`?"),
        set("masking rate above 1", &["masking.rate=1.5"], "masking.rate: must be in (0, 1]"),
        set("masking rate 0", &["masking.rate=0"], "masking.rate: must be in (0, 1]"),
        set("negative rate", &["masking.mask_token_rate=-0.1"], "masking.mask_token_rate: must be in [0, 1]"),
        set("rates above 1 together", &["masking.random_token_rate=0.5"], "mask_token_rate + random_token_rate must be at most 1"),
        set("zero batch", &["training.batch_size=0"], "training.batch_size: must be positive"),
        set("negative lr", &["training.lr=-1e-4"], "training.lr: must be positive"),
        set("holdout of everything", &["data.holdout=1.0"], "data.holdout: must be in (0, 1)"),
        set("steps and epochs", &["training.epochs=2"], "give max_steps or epochs, not both"),
        set("sequence beyond the model's positions", &["data.max_seq_len=128"], "data.max_seq_len: 128 is longer than the model's 64 positions"),
        set("tokenizer larger than the vocabulary", &[&tokenizer(&big_tok)], "has 50 tokens but the model's vocabulary"),
        set("unknown metric", &["metrics=[loss, perplexty]"], "did you mean perplexity"),
        set("unknown device", &["training.device=tpu"], "training.device: unknown device `tpu`"),
        // Values that pass a type check but would overflow a conversion later.
        set("timeout beyond a Duration", &["training.distributed.timeout_s=1e20"], "training.distributed.timeout_s: must be a positive number of seconds, at most"),
        set("infinite timeout", &["training.distributed.timeout_s=.inf"], "training.distributed.timeout_s: must be a positive number"),
        set("steps beyond any run", &["training.max_steps=18446744073709551615"], "training.max_steps: must be at most"),
        set("warmup beyond any run", &["training.warmup_steps=18446744073709551615"], "training.warmup_steps: must be at most"),
        set("epochs beyond any run", &["training.max_steps=null", "training.epochs=1e300"], "training.epochs: must be a positive number at most"),
        set("sequence length beyond an i64", &["data.max_seq_len=18446744073709551615"], "data.max_seq_len: must be in [8,"),
        set("batch beyond memory", &["training.batch_size=18446744073709551615"], "training.batch_size: must be at most"),
        set("batch tokens beyond a tensor", &["training.batch_size=1000000", "data.max_seq_len=1000000"], "tokens in one batch"),
        set("eval batch beyond memory", &["eval.batch_size=4294967296"], "eval.batch_size: must be at most"),
        set("threads beyond an i32", &["training.threads=4294967297"], "training.threads: must be at most"),
        set("accumulation beyond any run", &["training.grad_accum_steps=9223372036854775808"], "training.grad_accum_steps: must be at most"),
        set("model config: negative size", &["model.options={config: {intermediate_size: -1}}"], "intermediate_size must be in [1,"),
        set("model config: huge model", &["model.checkpoint=null", "model.options={preset: bert-base, config: {num_hidden_layers: 1000000}}"], "parameters, more than 1e11"),
        // Recipe files.
        row("empty recipe", &["validate", &ws("empty.txt")], "the recipe is empty"),
        row("recipe not UTF-8", &["validate", &ws("latin1.txt")], "latin1.txt:2: not UTF-8"),
        row("recipe is a folder", &["validate", &ws("no-files")], "is a folder, not a recipe file"),
        row("missing recipe", &["validate", &ws("nope.yaml")], "cannot read recipe"),
        // Names and the results folder.
        set("run name with ../", &["run.name=../escape"], "run.name: `../escape` must be a name, not a path"),
        set("absolute run name", &["run.name=/tmp/x"], "run.name: `/tmp/x` must be a name, not a path"),
        set("run name too long", &[&long_name], "the file system takes 255 bytes a name"),
        set("run name too long for `.NAME.replaced` beside it", &[&name_250], "is 250 characters long; at most 245"),
        set("output_dir is a file", &[&out_file], "is a file, not a folder"),
        row("tensorboard/ is a file", &["run", &tiny, "--set", &out_events_file], &events_file_message),
        // A run never writes into a checkpoint, a model folder or another run's folder.
        row("resume a checkpoint folder", &["resume", &done_ckpt], "is a checkpoint of the run"),
        row("resume a checkpoint folder: what to pass", &["resume", &done_ckpt], &format!("runner resume {}", ws("out/done"))),
        row("resume the checkpoints folder", &["resume", &ws("out/done/checkpoints")], "is inside the run folder"),
        row("resume the exported model", &["resume", &ws("out/done/checkpoint")], "is a checkpoint of the run"),
        row("resume a model folder", &["resume", &big_tok], "it is a checkpoint or model folder, not a run folder"),
        row("run --resume into a checkpoint", &["run", &tiny, "--resume", "--set", &into_ckpts, "--set", &step2], "is a checkpoint of the run"),
        row("run --overwrite of a checkpoint", &["run", &tiny, "--overwrite", "--set", &into_ckpts, "--set", &step2], "is a checkpoint of the run"),
        set("run folder inside a run", &[&into_run, &inner], "is inside the run folder"),
        set("a folder holding a recipe.yaml is no run folder", &[&into_project], "").code(0),
        // Resume with nothing to continue from: what to do, in a command that takes it.
        row("resume a finished run without checkpoints", &["resume", &ws("out/nockpt")], &format!("to run it again from the start: runner run {}/recipe.yaml --overwrite", ws("out/nockpt"))),
        row("resume when every checkpoint is damaged", &["resume", &ws("out/damaged")], "every completed one fails verification"),
        row("resume when every checkpoint is damaged: which", &["resume", &ws("out/damaged")], "model.safetensors does not match its SHA-256"),
        // The probe's own sequences against the model's positions.
        set("probe sequence beyond the model's positions", &[&probe("probe.jsonl", ", max_seq_len: 100000")], "metrics[1].options.max_seq_len: 100000 is longer than the model's 64 positions"),
        // Files that start with a UTF-8 byte-order mark are read as without it.
        set("probe file with a byte-order mark", &[&probe("probe-bom.jsonl", "")], "").code(0),
        row("JSONL corpus with a byte-order mark", &["data", "prepare", &tiny, "--set", "data.dataset=jsonl", "--set", &train(&ws("corpus-bom.jsonl"))], "")
            .code(0)
            .leaves(Leaves::Stores),
        // ModernBERT's layout and document attention.
        set("window wider than the context", &[&ckpt(&modernbert), "model.options.config.local_attention=128"], "model.options: local_attention (128) is larger than the context, max_position_embeddings (64)"),
        set("no global layer", &[&ckpt(&modernbert), "model.options.config.global_attn_every_n_layers=0"], "model.options: global_attn_every_n_layers must be at least 1"),
        set("window of an odd size", &[&ckpt(&modernbert), "model.options.config.local_attention=7"], "model.options: local_attention must be an even window"),
        set("document attention with grouping by length", &["data.document_attention=true", "data.examples=line_by_line", "data.group_by_length=true"], "data.document_attention: packs whole lines into full rows"),
        // Reports.
        row("report of a damaged metrics table", &["report", &ws("reports/bad-csv")], "bad-csv/metrics.csv: cannot read the metrics table"),
        // --set itself.
        set("--set unknown key", &["masking.rat=0.3"], "did you mean `rate`?"),
        set("--set without =", &["training.lr"], "expected key.path=value"),
        set("--set into a value", &["run.name.x=1"], "`run.name` is not a section"),
        set("--set bad YAML", &["training.lr=[1"], "is not a YAML value"),
        set("--set a key YAML cannot write back", &["model.options.config={{a: 1}: 2}"], "model.options.config: a key must be text"),
        // Corpora.
        set("missing corpus", &[&train(&ws("nope.txt"))], "does not exist"),
        set("empty corpus", &[&train(&ws("empty.txt"))], "empty.txt is empty"),
        set("folder with no file", &[&train(&ws("no-files"))], "is a folder with no non-empty file"),
        set("FIFO as corpus", &[&train(&fifo.display().to_string())], "is a FIFO"),
        row(
            "no matching file",
            &["data", "prepare", &tiny, "--set", &train(&ws("only-md")), "--set", "data.options={suffix: .txt}"],
            "no text files found ending with `.txt`",
        ),
        row("corpus not UTF-8", &["data", "prepare", &tiny, "--set", &train(&ws("latin1.txt"))], "latin1.txt:2: not UTF-8"),
        // Checkpoints.
        set("checkpoint is a file", &[&ckpt(&model_file)], "is a file; give the model's folder"),
        set("malformed config.json", &[&ckpt(&bad_config)], "config.json: is not valid JSON"),
        set("missing config.json", &[&ckpt(&no_config)], "has no config.json"),
        set("truncated safetensors", &[&ckpt(&cut_weights)], "model.safetensors: is cut short"),
        set("tokenizer missing", &[&ckpt(&no_tokenizer)], "has no tokenizer.json"),
        set("malformed tokenizer", &[&ckpt(&bad_tokenizer)], "cannot load tokenizer"),
        set("pickle weights only", &[&ckpt(&pickle)], "pytorch_model.bin (a pickle, never read)"),
        fill_row("wrong-shape weights", &wrong_shape, "do not fit config.json"),
        fill_row("config with more layers than the weights", &three_layers, "bert.encoder.layer.2.output.dense.weight"),
        fill_row("renamed encoder tensor", &renamed, "unexpected tensor(s) in the file"),
        fill_row("RoBERTa config over BERT weights", &roberta_over_bert, "another family's than config.json's model_type says"),
        set("model_type no plugin reads", &[&ckpt(&gpt2)], "model_type `gpt2` is read by no installed model plugin"),
        set("tokenizer without a mask token", &[&ckpt(&no_mask)], "the tokenizer has no mask token"),
        fill_row("fill-mask: tokenizer larger than the vocabulary", &big_tok, "has 50 tokens but the model's vocabulary"),
        row("fill-mask --top-k 0", &["fill-mask", "--model", "tests/fixtures/tiny-bert", "a [MASK] .", "--top-k", "0"], "--top-k"),
        fill_row("fill-mask: model is a file", &model_file, "is a file"),
        // Templates.
        row("unclosed if", &["sweep", &unclosed, "--dry-run"], "unclosed.yaml.j2:2: syntax error"),
        row("include outside the folder", &["sweep", &escape, "--dry-run"], "outside the template's folder"),
        row("undefined variable", &["sweep", &undefined, "--dry-run"], "undefined"),
        row("sweep name with ../", &["sweep", &undefined, "--dry-run", "--name", "../x"], "sweep name `../x`"),
        row("sweep name too long", &["sweep", &undefined, "--dry-run", "--name", &"s".repeat(256)], "sweep name is 256 characters long"),
        // Plugins.
        set("missing plugin", &[&plugin(&ws("nope.so"))], "is neither a plugin library nor a folder"),
        set("truncated plugin", &[&plugin(&ws("plugins/libcut.so"))], "cut short"),
        set("not a library", &[&plugin(&ws("plugins/libtext.so"))], "not a shared library"),
        set("plugin for another ABI", &[&plugin(&bad_abi)], "plugin ABI version 999"),
        row("panicking plugin", &["run", &tiny, "--set", &plugin(&panicky), "--set", "masking.strategy=panicky"], "with a panic: this masker always panics")
            .code(1)
            .leaves(Leaves::RunRecipe),
    ];
    let mut ro_row = set("read-only results folder", &[&out_ro], "is not writable");
    ro_row.unprivileged = root_user;
    rows.push(ro_row);
    assert!(rows.len() >= 40, "{} rows", rows.len());

    let failures: Vec<String> = rows.iter().filter_map(|r| check(r, w).err()).collect();
    // The token store rows: a store cut short or with a garbled manifest is
    // detected, rebuilt and reported; the command succeeds.
    let prepare = row("token store", &["data", "prepare", &tiny], "").code(0).leaves(Leaves::Stores);
    let mut store_failures = Vec::new();
    let o = runs(&prepare, w);
    assert!(o.status.success(), "{}", stderr(&o));
    // The tiny recipe's store (other rows built stores of their own).
    let store = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && std::fs::read_to_string(p.join("manifest.json")).is_ok_and(|m| m.contains("toy-corpus.txt")))
        .expect("a token store");
    for (what, file, bytes) in [("cut short", "train.tokens", &b""[..]), ("garbled manifest", "manifest.json", &b"{not json"[..])] {
        std::fs::write(store.join(file), bytes).unwrap();
        let mut r = row(what, &["data", "prepare", &tiny], "is broken and will be rebuilt").code(0).leaves(Leaves::Stores);
        r.what = what;
        if let Err(e) = check(&r, w) {
            store_failures.push(e);
        }
        let rebuilt = std::fs::read(store.join(file)).unwrap();
        if rebuilt == bytes {
            store_failures.push(format!("{what}: {file} was not rebuilt"));
        }
    }
    // Damage that keeps each file's size, at its start, middle and end, and
    // whole files of one value: found when the store is opened, the file
    // named, and the store rebuilt.
    let mut damaged = 0;
    for split in ["train", "eval"] {
        for ext in ["tokens", "lines", "docs"] {
            let file = format!("{split}.{ext}");
            for at in ["start", "middle", "end", "all"] {
                let before = std::fs::read(store.join(&file)).unwrap();
                let mut bytes = before.clone();
                let n = bytes.len();
                match at {
                    "start" => bytes[0] ^= 0x10,
                    "middle" => bytes[n / 2] ^= 0x01,
                    "end" => bytes[n - 1] ^= 0x80,
                    // Every token the same id; every offset the same value.
                    _ => bytes.iter_mut().enumerate().for_each(|(i, b)| *b = if i % 2 == 0 { 5 } else { 0 }),
                }
                std::fs::write(store.join(&file), &bytes).unwrap();
                let mut r = row("damaged store", &["data", "stats", &tiny], &format!("{file}")).code(0).leaves(Leaves::Stores);
                r.needle = format!("is broken and will be rebuilt: {}", store.join(&file).display());
                if let Err(e) = check(&r, w) {
                    store_failures.push(format!("{file}, damaged at {at}: {e}"));
                }
                if std::fs::read(store.join(&file)).unwrap() != before {
                    store_failures.push(format!("{file}, damaged at {at}: not rebuilt as it was"));
                }
                damaged += 1;
            }
        }
    }
    let all: Vec<String> = failures.into_iter().chain(store_failures).collect();
    assert!(all.is_empty(), "{} of {} rows failed:\n\n{}", all.len(), rows.len() + 2 + damaged, all.join("\n\n"));
}

/// A store damaged without changing any size is found before a step trains:
/// the run warns, naming the file, rebuilds the store and trains on it.
#[test]
fn a_run_on_a_damaged_store_rebuilds_it_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = format!("run.output_dir={}", tmp.path().join("out").display());
    let with_cache = |args: &[&str]| runner_command(args).env("RUNNER_CACHE_DIR", &cache).output().unwrap();
    let o = with_cache(&["data", "prepare", "tests/recipes/tiny.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let store = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).find(|p| p.is_dir()).unwrap();
    // Every token the same id: the worst case, silent training on garbage.
    let tokens = store.join("train.tokens");
    let n = std::fs::metadata(&tokens).unwrap().len() as usize;
    std::fs::write(&tokens, [5u8, 0].repeat(n / 2)).unwrap();
    let o = with_cache(&["run", "tests/recipes/tiny.yaml", "--set", &out, "--set", "training.max_steps=2", "--set", "eval.at_start=false"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let warned = err.find(&format!("is broken and will be rebuilt: {}", tokens.display())).expect("a warning naming the file");
    let first_step = err.find("step").unwrap_or(usize::MAX);
    assert!(warned < first_step, "the warning comes before any step: {err}");
    assert_ne!(std::fs::read(&tokens).unwrap(), [5u8, 0].repeat(n / 2), "rebuilt");
}

/// The longest name `validate` takes is one `run` can use, `--overwrite`
/// included (`.NAME.replaced` beside the folder), and a run leaves no lock file.
#[test]
fn the_longest_run_name_runs_and_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("run.output_dir={}", tmp.path().display());
    let name = "n".repeat(245);
    let set_name = format!("run.name={name}");
    let args = ["run", "tests/recipes/tiny.yaml", "--set", &out, "--set", &set_name, "--set", "training.max_steps=1", "--set", "eval.at_start=false"];
    for overwrite in [false, true] {
        let mut a = args.to_vec();
        if overwrite {
            a.push("--overwrite");
        }
        let o = runner(&a);
        assert!(o.status.success(), "overwrite {overwrite}: {}", stderr(&o));
    }
    let left: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec![name], "only the run's folder: no lock file, nothing moved aside");
}

/// `runner report` over runs one of which has a damaged `recipe.yaml`: the
/// report is made, that recipe's text never becomes a column, and a warning
/// names the file.
#[test]
fn a_report_over_a_run_with_a_damaged_recipe_leaves_that_recipe_out() {
    let tmp = tempfile::tempdir().unwrap();
    let out = format!("run.output_dir={}", tmp.path().join("runs").display());
    for (name, lr) in [("a", "2.0e-3"), ("b", "1.0e-3"), ("c", "3.0e-3")] {
        let (name, lr) = (format!("run.name={name}"), format!("training.lr={lr}"));
        let o = runner(&["run", "tests/recipes/tiny.yaml", "--set", &out, "--set", &name, "--set", &lr, "--set", "training.max_steps=2"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let damaged = tmp.path().join("runs/c/recipe.yaml");
    std::fs::write(&damaged, ":::\n").unwrap();
    let o = runner(&["report", tmp.path().join("runs").to_str().unwrap()]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("{}: ", damaged.display())) && err.contains("recipe keys are left out"), "{err}");
    let header = std::fs::read_to_string(tmp.path().join("runs/report.csv")).unwrap().lines().next().unwrap().to_string();
    assert!(!header.contains(":::"), "{header}");
    assert!(header.contains("training.lr"), "the other runs' differing key stays: {header}");
}

#[test]
fn a_recipe_with_a_byte_order_mark_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_recipe(dir.path(), "bom.yaml", |text| format!("\u{feff}{text}"));
    let o = runner(&["validate", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn weights_that_disagree_with_config_json_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let three = model(tmp.path(), "three", |d| edit_json(&d.join("config.json"), |c| c["num_hidden_layers"] = 3.into()));
    let o = runner(&["fill-mask", "--model", &three, "the big [MASK] sat ."]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    // Every tensor of the third layer is listed (16 of them), and no head tensor.
    assert!(err.contains("16 model tensor(s) missing"), "{err}");
    assert_eq!(err.matches("bert.encoder.layer.2.").count(), 16, "{err}");
    assert!(err.contains("model.options.allow_missing"), "{err}");

    // A run refuses it before training; allowing the layer by prefix lets it start fresh.
    let out = tmp.path().join("out");
    let dir = format!("run.output_dir={}", out.display());
    let ck = format!("model.checkpoint={three}");
    let base = ["run", "tests/recipes/tiny.yaml", "--set", &dir, "--set", &ck, "--set", "training.max_steps=1"];
    let o = runner(&base);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("bert.encoder.layer.2.attention.self.query.weight"), "{}", stderr(&o));
    let mut allowed = base.to_vec();
    allowed.extend(["--set", "model.options.allow_missing=[encoder.layer.2.]", "--set", "run.name=allowed"]);
    let o = runner(&allowed);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("newly initialised"), "{}", stderr(&o));
}

#[test]
fn a_truncated_plugin_library_is_refused_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = beside_runner("librunner_plugin_bert.so");
    let bytes = std::fs::read(&shipped).unwrap();
    let cut = tmp.path().join("librunner_cut.so");
    std::fs::write(&cut, &bytes[..100_000]).unwrap();
    let o = runner(&["plugins", "--plugin", cut.to_str().unwrap()]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "no SIGBUS: {err}");
    assert!(err.contains("librunner_cut.so: cannot load plugin library: cut short"), "{err}");
}
