//! `runner report --plot`: eval loss and perplexity (and a probe's accuracy, when
//! runs have one) against step, one line per run with a legend, side by side,
//! into `report.png` and `report.svg` (plotters).
//! Text is drawn with ab_glyph from a TrueType font file found on the system
//! (DejaVu Sans from Debian's fonts-dejavu-core, or `RUNNER_FONT=path.ttf`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use runner_recipe::fs::{atomic_write_bytes, atomic_write_with};
use runner_api::ColumnRole;

use super::table::Runs;
use crate::error::user_msg;

/// Size of the whole figure in pixels: two panels side by side.
pub const WIDTH: u32 = 1400;
pub const HEIGHT: u32 = 560;

/// Tableau's ten colours, then darker variants: distinct lines for up to 20 runs.
const COLOURS: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = COLOURS[i % COLOURS.len()];
    if (i / COLOURS.len()) % 2 == 1 {
        RGBColor(r / 2, g / 2, b / 2)
    } else {
        RGBColor(r, g, b)
    }
}

/// Font files tried in order, after `RUNNER_FONT`.
const FONTS: [&str; 5] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];

/// Registers a system TrueType font as plotters' `sans-serif`, once.
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> =
            std::env::var_os("RUNNER_FONT").map(PathBuf::from).into_iter().chain(FONTS.iter().map(PathBuf::from)).collect();
        for path in &candidates {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "--plot needs a TrueType font and found none of {}; install one (apt-get install fonts-dejavu-core) or set RUNNER_FONT=/path/to/font.ttf",
            FONTS.join(", ")
        ))
    })
    .clone()
    .map_err(user_msg)
}

/// One run's `(step, value)` points of a metrics column, nulls dropped.
fn series(df: &polars::prelude::DataFrame, column: &str) -> Vec<(f64, f64)> {
    use polars::prelude::*;
    let col = |name: &str| -> Vec<Option<f64>> {
        df.column(name)
            .ok()
            .and_then(|c| c.cast(&DataType::Float64).ok())
            .and_then(|c| c.f64().ok().map(|c| c.into_iter().collect()))
            .unwrap_or_default()
    };
    col("step").into_iter().zip(col(column)).filter_map(|(s, v)| Some((s?, v?))).filter(|(_, v)| v.is_finite()).collect()
}

/// Draws `report.png` and `report.svg` into `dir`; returns their paths.
pub fn plot(runs: &Runs, dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let png = dir.join("report.png");
    let svg = dir.join("report.svg");
    // plotters picks the image format by the extension, which the temporary name keeps.
    atomic_write_with(&png, |tmp| {
        let root = BitMapBackend::new(tmp, (WIDTH, HEIGHT)).into_drawing_area();
        draw(runs, &root)?;
        root.present().map_err(|e| anyhow!("{e}"))
    })?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (WIDTH, HEIGHT)).into_drawing_area();
        draw(runs, &root)?;
        root.present().map_err(|e| anyhow!("cannot draw {}: {e}", svg.display()))?;
    }
    atomic_write_bytes(&svg, text.as_bytes())?;
    Ok(vec![png, svg])
}

fn draw<DB: DrawingBackend>(runs: &Runs, root: &DrawingArea<DB, Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the plot: {e}");
    root.fill(&WHITE).map_err(err)?;
    // The eval loss, the first lower-is-better headline figure (perplexity),
    // and a third panel for the first downstream task (a probe), as declared.
    let declared = runs.columns();
    let loss_name = declared.iter().find(|c| c.role == ColumnRole::Loss).map_or("eval loss", |c| c.name.as_str());
    let lm = declared.iter().find(|c| c.role == ColumnRole::Headline && !c.higher_is_better).map_or("perplexity", |c| c.name.as_str());
    let probe = declared.iter().find(|c| c.role == ColumnRole::Task).map(|c| c.name.clone());
    let panels = root.split_evenly((1, if probe.is_some() { 3 } else { 2 }));
    let loss: Vec<Vec<(f64, f64)>> = runs.runs.iter().map(|r| series(&r.metrics, loss_name)).collect();
    let ppl: Vec<Vec<(f64, f64)>> = runs.runs.iter().map(|r| series(&r.metrics, lm)).collect();
    let names: Vec<&str> = runs.runs.iter().map(|r| r.name.as_str()).collect();
    // Axis labels in words: `eval_loss` reads "eval loss".
    let words = |column: &str| column.replace('_', " ");
    panel(&panels[0], &format!("{} vs step", words(loss_name)), &words(loss_name), &loss, &names, false)?;
    // Log scale only where perplexities span more than a decade (fresh heads start high).
    let (lo, hi) = ppl.iter().flatten().fold((f64::MAX, f64::MIN), |(lo, hi), &(_, y)| (lo.min(y), hi.max(y)));
    let log = lo > 0.0 && hi / lo > 10.0;
    let title = if log { format!("{} vs step (log scale)", words(lm)) } else { format!("{} vs step", words(lm)) };
    panel(&panels[1], &title, &words(lm), &ppl, &names, log)?;
    if let Some(column) = probe {
        let acc: Vec<Vec<(f64, f64)>> = runs.runs.iter().map(|r| series(&r.metrics, &column)).collect();
        panel(&panels[2], &format!("{} vs step", words(&column)), &words(&column), &acc, &names, false)?;
    }
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    lines: &[Vec<(f64, f64)>],
    names: &[&str],
    log_y: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("cannot draw the plot: {e}");
    let all = lines.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        // No eval values at all: an empty panel with unit axes.
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let mut builder = ChartBuilder::on(area);
    builder.caption(title, ("sans-serif", 22)).margin(12).margin_right(30).x_label_area_size(45).y_label_area_size(70);
    if log_y {
        let y0 = y0.max(1e-9);
        let chart = builder.build_cartesian_2d(x0..x1, (y0 / 1.1..y1 * 1.1).log_scale()).map_err(err)?;
        draw_lines(chart, y_label, lines, names).map_err(err)
    } else {
        let pad = (y1 - y0) * 0.05;
        let chart = builder.build_cartesian_2d(x0..x1, y0 - pad..y1 + pad).map_err(err)?;
        draw_lines(chart, y_label, lines, names).map_err(err)
    }
}

/// Axes, one line with dots per run, and the legend, on a linear or log y axis.
fn draw_lines<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>>(
    mut chart: ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    y_label: &str,
    lines: &[Vec<(f64, f64)>],
    names: &[&str],
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|x| step_label(*x))
        .y_label_formatter(&|y| short_number(*y))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (i, (pts, name)) in lines.iter().zip(names).enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    legend(&mut chart)
}

/// A step tick's label: the integer, or nothing between integers (a run of a
/// few steps, where the ticks fall on halves).
fn step_label(x: f64) -> String {
    if (x - x.round()).abs() < 1e-6 {
        short_number(x.round())
    } else {
        String::new()
    }
}

/// A number as a short label: `12`, `3.5`, `0.042`, `25k`, `1.2M`.
fn short_number(v: f64) -> String {
    let trim = |s: String| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    let a = v.abs();
    if a >= 1e9 {
        trim(format!("{:.1}", v / 1e9)) + "G"
    } else if a >= 1e6 {
        trim(format!("{:.1}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.1}", v / 1e3)) + "k"
    } else if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim(format!("{v:.2}"))
    } else if a < 1e-3 {
        format!("{v:.1e}")
    } else {
        trim(format!("{v:.3}"))
    }
}

fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_short() {
        assert_eq!(short_number(100000.0), "100k");
        assert_eq!(short_number(1_240_000.0), "1.2M");
        assert_eq!(short_number(25_000.0), "25k");
        assert_eq!(short_number(140.0), "140");
        assert_eq!(short_number(3.5), "3.5");
        assert_eq!(short_number(7.0), "7");
        assert_eq!(short_number(0.042), "0.042");
        assert_eq!(short_number(0.0), "0");
        assert_eq!(step_label(120.0), "120");
        assert_eq!(step_label(2.5), "");
    }
}
