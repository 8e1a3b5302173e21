//! `runner report DIR`: one table over every run under DIR (or DIR itself when
//! it is a run), printed and written as report.csv/.parquet/.md; `--plot` adds
//! report.png and report.svg.

use anyhow::Result;

use crate::report::{plot, table};

pub fn report(dir: &std::path::Path, plot_curves: bool) -> Result<()> {
    let runs = table::collect(dir)?;
    let rep = table::build(&runs)?;
    println!("{}", rep.markdown);
    let written = table::write(&rep, dir)?;
    for p in written {
        println!("wrote {}", p.display());
    }
    if plot_curves {
        for p in plot::plot(&runs, dir)? {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
