//! End-to-end tests of `runner sweep` and `runner report` through the real
//! binary: a 3 x 2 sweep of the tiny recipe runs, resumes after a simulated kill
//! without touching finished runs, and reports one row per run with a plot;
//! broken templates fail with one message naming the template line, exit code 2.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::SystemTime;

use polars::prelude::*;

use crate::common::{assert_error, column, read_csv, root, runner, stderr, stdout};

const TEMPLATE: &str = "tests/recipes/sweep-tiny.yaml.j2";

/// The six run names the grid in sweep-tiny.yaml.j2 gives, in grid order.
const RUNS: [(&str, f64, f64); 6] = [
    ("rate-0.15_lr-0.001", 0.15, 1e-3),
    ("rate-0.15_lr-0.003", 0.15, 3e-3),
    ("rate-0.3_lr-0.001", 0.3, 1e-3),
    ("rate-0.3_lr-0.003", 0.3, 3e-3),
    ("rate-0.4_lr-0.001", 0.4, 1e-3),
    ("rate-0.4_lr-0.003", 0.4, 3e-3),
];

fn sweep(out: &Path, extra: &[&str]) -> Output {
    let dir = format!("run.output_dir={}", out.display());
    let mut args = vec!["sweep", TEMPLATE, "--set", &dir];
    args.extend(extra);
    runner(&args)
}

/// Contents and modification time of each results file of a run.
fn snapshot(run: &Path) -> Vec<(String, Vec<u8>, SystemTime)> {
    ["recipe.yaml", "metrics.csv", "metrics.parquet", "summary.json", "summary.csv", "checkpoint/model.safetensors"]
        .iter()
        .map(|f| {
            let p = run.join(f);
            (f.to_string(), std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().modified().unwrap())
        })
        .collect()
}

fn strings(df: &DataFrame, name: &str) -> Vec<String> {
    df.column(name).unwrap().str().unwrap().into_iter().map(|s| s.unwrap().to_string()).collect()
}

#[test]
fn sweep_runs_resumes_and_reports() {
    let out = tempfile::tempdir().unwrap();
    let sweep_dir = out.path().join("sweep-tiny");

    // A first pass runs all six grid points into <output_dir>/<sweep>/<run>/.
    let o = sweep(out.path(), &[]);
    assert!(o.status.success(), "sweep failed:\n{}", stderr(&o));
    let said = stdout(&o);
    assert!(said.contains("6 to do, 0 already finished"), "{said}");
    assert!(said.contains(&format!("runner report {}", sweep_dir.display())), "sweep names the report command: {said}");
    for (name, rate, lr) in RUNS {
        let run = sweep_dir.join(name);
        assert!(run.join("summary.json").is_file(), "{name} did not finish:\n{said}");
        let recipe: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(run.join("recipe.yaml")).unwrap()).unwrap();
        assert_eq!(recipe["run"]["name"].as_str(), Some(name));
        assert_eq!(recipe["masking"]["rate"].as_f64(), Some(rate), "{name}");
        assert_eq!(recipe["training"]["lr"].as_f64(), Some(lr), "{name}");
        assert_eq!(recipe["eval"]["masking_rate"].as_f64(), Some(0.15), "{name}");
    }
    let dirs: BTreeSet<String> = std::fs::read_dir(&sweep_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // The runs' folders, and the sweep's TensorBoard experiment (what its HParams tab compares).
    let expected: BTreeSet<String> = RUNS.iter().map(|r| r.0).chain(["tensorboard"]).map(str::to_string).collect();
    assert_eq!(dirs, expected);

    // Eval masks are fixed at 15% (eval.masking_rate) for every training rate, so
    // the eval before the first step scores the same tokens in every run.
    let initial: Vec<f64> = RUNS
        .iter()
        .map(|(name, ..)| {
            let s: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(sweep_dir.join(name).join("summary.json")).unwrap()).unwrap();
            s["initial_eval_loss"].as_f64().unwrap()
        })
        .collect();
    for l in &initial {
        assert!((l - initial[0]).abs() < 1e-9, "initial eval losses differ: {initial:?}");
    }

    // Simulate a kill: one run lost its summary, another has a truncated one.
    let before: Vec<_> = RUNS.iter().map(|(n, ..)| snapshot(&sweep_dir.join(n))).collect();
    std::fs::remove_file(sweep_dir.join(RUNS[1].0).join("summary.json")).unwrap();
    let s4 = sweep_dir.join(RUNS[4].0).join("summary.json");
    let text = std::fs::read(&s4).unwrap();
    std::fs::write(&s4, &text[..text.len() / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));

    let o = sweep(out.path(), &[]);
    assert!(o.status.success(), "second sweep failed:\n{}", stderr(&o));
    let said = stdout(&o);
    assert!(said.contains("2 to do, 4 already finished"), "{said}");
    for (i, (name, ..)) in RUNS.iter().enumerate() {
        let run = sweep_dir.join(name);
        let now = snapshot(&run);
        if i == 1 || i == 4 {
            let summary: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
            assert_eq!(summary["steps"], 12, "{name} was redone");
            for ((f, _, t0), (_, _, t1)) in before[i].iter().zip(&now) {
                assert!(t1 > t0, "{name}/{f} was not rewritten");
            }
            assert!(said.contains(&format!("{name}: eval loss")), "{said}");
        } else {
            assert_eq!(before[i], now, "{name} was finished and must be left alone");
            assert!(said.contains(&format!("{name}: already finished")), "{said}");
        }
    }

    // A third pass has nothing to do.
    let o = sweep(out.path(), &[]);
    assert!(stdout(&o).contains("0 to do, 6 already finished"), "{}", stdout(&o));

    // The report: one row per run, the swept values from each run's recipe.
    let o = runner(&["report", sweep_dir.to_str().unwrap(), "--plot"]);
    assert!(o.status.success(), "report failed:\n{}", stderr(&o));
    let printed = stdout(&o);
    let csv = read_csv(&sweep_dir.join("report.csv"));
    let parquet = ParquetReader::new(std::fs::File::open(sweep_dir.join("report.parquet")).unwrap()).finish().unwrap();
    assert_eq!(csv.shape(), parquet.shape());
    assert_eq!(csv.height(), 6, "{csv}");
    let names = strings(&csv, "run");
    assert_eq!(names, RUNS.iter().map(|r| r.0.to_string()).collect::<Vec<_>>());
    let rates = column(&csv, "masking.rate");
    let lrs = column(&csv, "training.lr");
    for (i, (name, rate, lr)) in RUNS.iter().enumerate() {
        assert_eq!(rates[i], Some(*rate), "{name}");
        assert_eq!(lrs[i], Some(*lr), "{name}");
        assert!(printed.lines().any(|l| l.contains(name)), "the printed table lacks {name}:\n{printed}");
    }
    for c in ["best_eval_loss", "final_eval_loss", "best_perplexity", "final_perplexity", "final_accuracy", "tokens_per_s", "wall_s"] {
        assert!(column(&csv, c).iter().all(|v| v.is_some_and(f64::is_finite)), "{c} missing: {csv}");
    }
    let (best, last) = (column(&csv, "best_eval_loss"), column(&csv, "final_eval_loss"));
    for (i, (name, ..)) in RUNS.iter().enumerate() {
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(sweep_dir.join(name).join("summary.json")).unwrap()).unwrap();
        assert!((last[i].unwrap() - summary["final_eval_loss"].as_f64().unwrap()).abs() < 1e-9, "{name}");
        assert!((best[i].unwrap() - summary["best_eval_loss"].as_f64().unwrap()).abs() < 1e-9, "{name}");
        assert!(best[i] <= last[i]);
    }
    let md = std::fs::read_to_string(sweep_dir.join("report.md")).unwrap();
    assert_eq!(md.lines().count(), 2 + 6, "{md}");
    assert!(md.starts_with("| run ") && md.contains("masking.rate") && md.contains("training.lr"), "{md}");

    check_png(&sweep_dir.join("report.png"), 6);
    let svg = std::fs::read_to_string(sweep_dir.join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("eval loss") && svg.contains(RUNS[5].0), "svg lacks labels");

    // A changed recipe is not mixed with finished results: refused before anything runs.
    let kept = snapshot(&sweep_dir.join(RUNS[0].0));
    let o = sweep(out.path(), &["--set", "training.warmup_steps=3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("6 finished run(s)") && stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(kept, snapshot(&sweep_dir.join(RUNS[0].0)));
}

/// The plot has the promised size, is not blank, and shows a line colour per run.
fn check_png(path: &Path, runs: usize) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    assert_eq!(img.dimensions(), (1400, 560));
    let colours: BTreeSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 50, "only {} colours: blank?", colours.len());
    let ink = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let share = ink as f64 / (1400.0 * 560.0);
    assert!(share > 0.01 && share < 0.6, "{share:.3} of the pixels are not background");
    // The first colours of the palette the lines are drawn with (tableau 10).
    let palette = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75]];
    for c in &palette[..runs] {
        let n = img.pixels().filter(|p| p.0 == *c).count();
        assert!(n > 50, "line colour {c:?} drawn on only {n} pixels");
    }
    // Text is drawn: dark grey/black pixels in the caption band of the left panel.
    let dark = (0..700).flat_map(|x| (0..40).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&v| v < 100)).count();
    assert!(dark > 50, "no caption text ({dark} dark pixels at the top)");
}

/// Writes a template into `dir` and sweeps it with --dry-run.
fn sweep_template(dir: &Path, name: &str, text: &str, extra: &[&str]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = format!("run.output_dir={}", dir.join("out").display());
    let mut args = vec!["sweep", path.to_str().unwrap(), "--dry-run", "--set", &out];
    args.extend(extra);
    runner(&args)
}

/// A template like sweep-tiny.yaml.j2 with `body` as its recipe sections.
fn template(header: &str, body: &str) -> String {
    format!(
        "# broken on purpose\n{header}\nrun: {{name: x, seed: 7}}\n{{% include \"parts/tiny-data.yaml\" %}}\n{body}\ntraining: {{threads: 1, batch_size: 8, max_steps: 2}}\n"
    )
}

fn assert_one_clear_error(o: &Output, must: &[&str]) {
    assert_error(o, 2, must);
    let err = stderr(o);
    assert_eq!(err.matches("error:").count(), 1, "one error:\n{err}");
}

fn copy_parts(dir: &Path) {
    std::fs::create_dir_all(dir.join("parts")).unwrap();
    std::fs::copy(root().join("tests/recipes/parts/tiny-data.yaml"), dir.join("parts/tiny-data.yaml")).unwrap();
}

#[test]
fn undefined_template_variable_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_parts(dir.path());
    // Line 6: the header is 2 lines, the run and include lines follow.
    let text = template("{#\ngrid: {masking.rate: [0.15, 0.3]}\n#}", "masking: {rate: {{ masking.rate }}, mask_token_rate: {{ masking.token_rate }}}");
    assert_eq!(text.lines().nth(6), Some("masking: {rate: {{ masking.rate }}, mask_token_rate: {{ masking.token_rate }}}"));
    let o = sweep_template(dir.path(), "undefined.yaml.j2", &text, &[]);
    assert_one_clear_error(&o, &["undefined.yaml.j2:7", "undefined", "masking.token_rate"]);
}

#[test]
fn grid_key_that_names_no_recipe_field_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_parts(dir.path());
    let text = template("{#\ngrid:\n  masking.rate: [0.15]\n  training.learning_rate: [1e-3, 2e-3]\n#}", "");
    let o = sweep_template(dir.path(), "badkey.yaml.j2", &text, &[]);
    assert_one_clear_error(&o, &["badkey.yaml.j2:5", "training.learning_rate", "names no recipe field"]);
    // The same key given on the command line.
    let text = template("", "");
    let o = sweep_template(dir.path(), "badkey2.yaml.j2", &text, &["--grid", "trainer.lr=1e-3,2e-3"]);
    assert_one_clear_error(&o, &["badkey2.yaml.j2", "--grid trainer.lr", "names no recipe field"]);
}

#[test]
fn rendered_yaml_that_is_invalid_shows_the_line() {
    let dir = tempfile::tempdir().unwrap();
    copy_parts(dir.path());
    // A bracket where the brace should close the mapping.
    let text = template("{#\ngrid: {masking.rate: [0.3]}\n#}", "masking: {rate: {{ masking.rate }}]");
    let o = sweep_template(dir.path(), "badyaml.yaml.j2", &text, &[]);
    assert_one_clear_error(&o, &["badyaml.yaml.j2", "not valid YAML", "at line ", "masking: {rate: 0.3]"]);
}

#[test]
fn valid_sweep_dry_run_and_single_run_report() {
    // --dry-run checks all six recipes and runs nothing.
    let out = tempfile::tempdir().unwrap();
    let o = sweep(out.path(), &["--dry-run", "--grid", "training.lr=5e-4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = stdout(&o);
    assert!(said.contains("3 run(s)") && said.contains("rate-0.4_lr-0.0005"), "{said}");
    assert!(!out.path().join("sweep-tiny").exists(), "a dry run writes nothing");

    // `runner run` names the report command, and a run directory reports alone.
    let dir = format!("run.output_dir={}", out.path().display());
    let o = runner(&["run", "tests/recipes/tiny.yaml", "--set", &dir, "--set", "training.max_steps=4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = out.path().join("tiny");
    assert!(stdout(&o).contains(&format!("runner report {}", run.display())), "{}", stdout(&o));
    let o = runner(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = read_csv(&run.join("report.csv"));
    assert_eq!(strings(&csv, "run"), vec!["tiny".to_string()]);
    assert_eq!(column(&csv, "steps"), vec![Some(4.0)]);

    // A directory without runs is a clear user error.
    let empty = tempfile::tempdir().unwrap();
    let o = runner(&["report", empty.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no runs"), "{}", stderr(&o));
}

#[test]
fn templates_compose_with_extends_and_import() {
    let dir = tempfile::tempdir().unwrap();
    copy_parts(dir.path());
    std::fs::write(
        dir.path().join("parts/base.yaml.j2"),
        "run: {name: x, seed: 7}\n{% include \"parts/tiny-data.yaml\" %}\n{% block masking %}masking: {rate: 0.15}{% endblock %}\ntraining: {threads: 1, batch_size: 8, max_steps: 2}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("parts/macros.j2"), "{% macro half(x) %}{{ x / 2 }}{% endmacro %}").unwrap();
    let text = "{#\ngrid: {masking.rate: [0.3, 0.5]}\n#}\n{% extends \"parts/base.yaml.j2\" %}\n{% import \"parts/macros.j2\" as m %}\n{% block masking %}masking: {rate: {{ masking.rate }}, mask_token_rate: {{ m.half(masking.rate) }}}{% endblock %}\n";
    let o = sweep_template(dir.path(), "composed.yaml.j2", text, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("2 run(s)"), "{}", stdout(&o));
    // Run one point for real and read what the blocks and the macro made of it.
    let out = format!("run.output_dir={}", dir.path().join("out").display());
    let path = dir.path().join("composed.yaml.j2");
    let o = runner(&["sweep", path.to_str().unwrap(), "--set", &out, "--grid", "masking.rate=0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recipe: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.path().join("out/composed/rate-0.5/recipe.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(recipe["masking"]["rate"].as_f64(), Some(0.5));
    assert_eq!(recipe["masking"]["mask_token_rate"].as_f64(), Some(0.25));
    assert_eq!(recipe["training"]["max_steps"].as_u64(), Some(2));
}
