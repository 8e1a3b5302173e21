//! `runner report DIR`: one table over every run under DIR (or DIR itself when
//! it is a run), printed and written as report.csv/.parquet/.md; `--plot` adds
//! report.png and report.svg.

use std::io::Write;

use anyhow::Result;

use crate::report::{plot, table};

pub fn report(dir: &std::path::Path, plot_curves: bool) -> Result<()> {
    let runs = table::collect(dir)?;
    let rep = table::build(&runs)?;
    let mut written = table::write(&rep, dir)?;
    if plot_curves {
        written.extend(plot::plot(&runs, dir)?);
    }
    // Everything is written before printing, and a closed pipe (`| head`) is not an error.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", rep.markdown);
    for p in written {
        let _ = writeln!(out, "wrote {}", p.display());
    }
    Ok(())
}
