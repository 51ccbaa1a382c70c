//! `dlpx plot`: SVG figures of reports and sweep files, drawn with `plotters`' SVG backend only
//! (text is left to the SVG viewer's fonts, so nothing here needs a font file or a C library).
//!
//! The figures are those of the DLP paper: per-block sparsity of the allocations side by side
//! with the block importance they come from, perplexity (log scale) against a swept parameter per
//! allocation, the spread of the allocation over calibration draws, and zero-shot accuracy per
//! task dense against pruned (README, "Figures").

use std::fmt;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::eval::compare::paired_bootstrap;
use crate::experiment::sweep::{SweepHeader, SweepRow};
use crate::report::Report;
use crate::zeroshot::Task;

/// The colours of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Palette {
    /// The explorer's dark theme (its text, border and series colours).
    Dark,
    /// Black on white, with the Okabe–Ito colours (distinguishable with colour-blindness and in
    /// greyscale print by their markers).
    Print,
}

/// What a figure is drawn in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colors {
    pub background: RGBColor,
    pub text: RGBColor,
    pub grid: RGBColor,
    /// One per series, in order (repeated past the end).
    pub series: Vec<RGBColor>,
}

impl Palette {
    pub fn colors(self) -> Colors {
        match self {
            // The dark theme's text, dim (grid), and series from accent, bar_selected,
            // bar_active, achieved, target, pinned (checked against the theme by a test).
            Palette::Dark => Colors {
                background: RGBColor(0x12, 0x12, 0x12),
                text: RGBColor(0xd0, 0xd0, 0xd0),
                grid: RGBColor(0x4e, 0x4e, 0x4e),
                series: vec![
                    RGBColor(0x5f, 0xaf, 0xff),
                    RGBColor(0xff, 0xd7, 0x5f),
                    RGBColor(0xd7, 0x87, 0xff),
                    RGBColor(0x87, 0xd7, 0x87),
                    RGBColor(0xff, 0x5f, 0x5f),
                    RGBColor(0xff, 0x87, 0xd7),
                ],
            },
            Palette::Print => Colors {
                background: RGBColor(0xff, 0xff, 0xff),
                text: RGBColor(0, 0, 0),
                grid: RGBColor(0xdd, 0xdd, 0xdd),
                series: vec![
                    RGBColor(0x00, 0x72, 0xb2),
                    RGBColor(0xd5, 0x5e, 0x00),
                    RGBColor(0x00, 0x9e, 0x73),
                    RGBColor(0xcc, 0x79, 0xa7),
                    RGBColor(0xe6, 0x9f, 0x00),
                    RGBColor(0x56, 0xb4, 0xe9),
                ],
            },
        }
    }
}

impl Colors {
    pub fn series(&self, i: usize) -> RGBColor {
        self.series[i % self.series.len()]
    }
}

/// Why a figure could not be drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum PlotError {
    /// The input has nothing this kind of figure shows (the front end says how to get it).
    NoData(Missing),
    /// The drawing backend failed.
    Draw(String),
}

/// What a figure's input lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No report to draw an allocation from.
    Reports,
    /// Reports without blocks.
    Blocks,
    /// A sweep without an axis of two or more values.
    SweepAxis,
    /// A sweep whose points have no perplexity (run without evaluation).
    SweepPerplexity,
    /// A sweep without points.
    SweepPoints,
    /// A report without calibration draws (two or more).
    Draws,
    /// A report without zero-shot scores.
    ZeroShot,
    /// Zero-shot scores without any known task.
    TaskScores,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Missing::Reports => "give one or more reports",
            Missing::Blocks => "the reports have no blocks",
            Missing::SweepAxis => "the sweep has no axis with two or more values to draw against",
            Missing::SweepPerplexity => "no point of the sweep has a perplexity",
            Missing::SweepPoints => "no points",
            Missing::Draws => "the report has no calibration draws",
            Missing::ZeroShot => "the report has no zero-shot scores",
            Missing::TaskScores => "no task scores",
        })
    }
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::NoData(why) => write!(f, "{why}"),
            PlotError::Draw(e) => write!(f, "drawing the figure failed: {e}"),
        }
    }
}

impl std::error::Error for PlotError {}

fn draw_err<E: fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Width of a figure in SVG pixels: at one paper column (about 3.3 in) the 14 px labels print
/// at about 7 pt.
pub const WIDTH: u32 = 640;
const FONT: &str = "sans-serif";
const LABEL: u32 = 14;

/// A report's name in a legend: allocation, its parameters and p (`DLP α=0.15, τ=∞, p=0.7`).
pub fn report_label(r: &Report) -> String {
    let row = super::table::row(r);
    let p = match row.n_of_m {
        Some((n, m)) => format!("{n}:{m}"),
        None => format!("p={}", row.sparsity),
    };
    match row.params.is_empty() {
        true => format!("{} {p}", row.allocation.label()),
        false => format!("{} {}, {p}", row.allocation.label(), row.params),
    }
}

/// Names made unique by a `#n` suffix where two reports would read the same.
fn unique(mut names: Vec<String>) -> Vec<String> {
    for i in 0..names.len() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            let base = names[i].clone();
            for (k, n) in (1..).zip(names.iter_mut().filter(|n| **n == base)) {
                *n = format!("{base} #{k}");
            }
        }
    }
    names
}

fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((a, b)) => Some((a.min(v), b.max(v))),
        })
}

/// `(lo, hi)` widened by 5 % each side (a flat series by ±0.05·|v| or 0.05).
fn pad((lo, hi): (f64, f64)) -> (f64, f64) {
    let d = if hi > lo {
        (hi - lo) * 0.05
    } else {
        (lo.abs() * 0.05).max(0.05)
    };
    (lo - d, hi + d)
}

fn text_style(c: &Colors, size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().color(&c.text)
}

/// Draw into an SVG string.
fn svg(
    (w, h): (u32, u32),
    c: &Colors,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), PlotError>,
) -> Result<String, PlotError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&c.background).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    c: &Colors,
    pos: SeriesLabelPosition,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(pos)
        .background_style(c.background.mix(0.85))
        .border_style(c.grid)
        .label_font(text_style(c, LABEL - 2))
        .draw()
        .map_err(draw_err)
}

/// The allocation figure: each report's per-block target sparsity (line and dots) and achieved
/// sparsity (triangles) on the top panel, its block scores (the importance statistic the
/// allocation maps to sparsity, DLP §4) on the bottom panel. One colour per report.
pub fn allocation(reports: &[Report], palette: Palette) -> Result<String, PlotError> {
    if reports.is_empty() {
        return Err(PlotError::NoData(Missing::Reports));
    }
    let blocks = reports.iter().map(|r| r.blocks.len()).max().unwrap_or(0);
    if blocks == 0 {
        return Err(PlotError::NoData(Missing::Blocks));
    }
    let c = palette.colors();
    let names = unique(reports.iter().map(report_label).collect());
    let sparsities = reports.iter().flat_map(|r| {
        r.blocks
            .iter()
            .flat_map(|b| [Some(b.target_sparsity), b.achieved_sparsity])
            .flatten()
    });
    let (s0, s1) = pad(span(sparsities).unwrap_or((0.0, 1.0)));
    let (f0, f1) = pad(span(
        reports
            .iter()
            .flat_map(|r| r.blocks.iter().map(|b| b.score)),
    )
    .unwrap_or((0.0, 1.0)));
    let statistic = format!("{:?}", reports[0].params.statistic).to_lowercase();
    let x = -0.5..(blocks as f64 - 0.5);
    svg((WIDTH, 640), &c, |root| {
        let (top, bottom) = root.split_vertically(400);
        let mut chart = ChartBuilder::on(&top)
            .caption("Per-block sparsity", text_style(&c, LABEL + 4))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x.clone(), s0..s1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("block")
            .y_desc("sparsity")
            .x_labels(blocks.min(16))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .axis_style(c.text)
            .bold_line_style(c.grid)
            .light_line_style(TRANSPARENT)
            .label_style(text_style(&c, LABEL))
            .axis_desc_style(text_style(&c, LABEL))
            .draw()
            .map_err(draw_err)?;
        for (i, (r, name)) in reports.iter().zip(&names).enumerate() {
            let col = c.series(i);
            let target: Vec<(f64, f64)> = r
                .blocks
                .iter()
                .map(|b| (b.index as f64, b.target_sparsity))
                .collect();
            chart
                .draw_series(LineSeries::new(target.clone(), col.stroke_width(2)))
                .map_err(draw_err)?
                .label(format!("{name} target"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
            chart
                .draw_series(target.iter().map(|p| Circle::new(*p, 3, col.filled())))
                .map_err(draw_err)?;
            let achieved: Vec<(f64, f64)> = r
                .blocks
                .iter()
                .filter_map(|b| b.achieved_sparsity.map(|a| (b.index as f64, a)))
                .collect();
            if !achieved.is_empty() {
                chart
                    .draw_series(
                        achieved
                            .iter()
                            .map(|p| TriangleMarker::new(*p, 5, col.filled())),
                    )
                    .map_err(draw_err)?
                    .label(format!("{name} achieved"))
                    .legend(move |(x, y)| TriangleMarker::new((x + 9, y), 5, col.filled()));
            }
        }
        legend(&mut chart, &c, SeriesLabelPosition::UpperLeft)?;

        let mut chart = ChartBuilder::on(&bottom)
            .caption(
                format!("Block importance (score, statistic {statistic})"),
                text_style(&c, LABEL + 2),
            )
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x, f0..f1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("block")
            .y_desc("score")
            .x_labels(blocks.min(16))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .axis_style(c.text)
            .bold_line_style(c.grid)
            .light_line_style(TRANSPARENT)
            .label_style(text_style(&c, LABEL))
            .axis_desc_style(text_style(&c, LABEL))
            .draw()
            .map_err(draw_err)?;
        for (i, r) in reports.iter().enumerate() {
            let col = c.series(i);
            chart
                .draw_series(LineSeries::new(
                    r.blocks.iter().map(|b| (b.index as f64, b.score)),
                    col.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        Ok(())
    })
}

/// One line of a sweep figure: its name and its points `(x, ppl, interval)`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepLine {
    pub name: String,
    pub points: Vec<SweepPoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    pub x: f64,
    pub ppl: f64,
    /// The 95 % bootstrap interval of this point's perplexity over the evaluation windows.
    pub interval: Option<(f64, f64)>,
    pub key: String,
}

/// Bootstrap resamples and level of the sweep figure's intervals (as `dlpx sweep`'s table).
const RESAMPLES: usize = 1000;
const LEVEL: f64 = 0.95;

/// The lines of a sweep figure: perplexity against the first axis with more than one value,
/// one line per allocation and per value of every other axis (each point's interval is the
/// percentile bootstrap of its own perplexity over the evaluation windows). Also the name of the
/// x axis.
pub fn sweep_lines(
    header: &SweepHeader,
    rows: &[SweepRow],
) -> Result<(String, Vec<SweepLine>), PlotError> {
    let x_axis = header
        .axes
        .iter()
        .position(|a| a.1.len() > 1)
        .ok_or(PlotError::NoData(Missing::SweepAxis))?;
    let predictions = header
        .data
        .eval
        .as_ref()
        .map(|e| e.seq_len.saturating_sub(1))
        .unwrap_or(0);
    let mut lines: Vec<SweepLine> = Vec::new();
    for r in rows {
        let (Some(ppl), Some(x)) = (r.ppl, r.values.get(x_axis).and_then(|v| v.1)) else {
            continue;
        };
        let mut name = r.allocation.label().to_string();
        for (i, (n, v)) in r.values.iter().enumerate() {
            if i != x_axis && header.axes[i].1.len() > 1 {
                name.push_str(&format!(
                    " {n}={}",
                    v.map(|v| v.to_string()).unwrap_or("∞".into())
                ));
            }
        }
        let interval = match &r.window_nll {
            Some(w) if predictions > 0 && w.len() > 1 => {
                // Against zero NLL, the paired ratio is the point's own perplexity.
                paired_bootstrap(&vec![0.0; w.len()], w, predictions, RESAMPLES, LEVEL, 0)
                    .ok()
                    .map(|c| (c.lo, c.hi))
            }
            _ => None,
        };
        let p = SweepPoint {
            x,
            ppl,
            interval,
            key: r.key.clone(),
        };
        match lines.iter_mut().find(|l| l.name == name) {
            Some(l) => l.points.push(p),
            None => lines.push(SweepLine {
                name,
                points: vec![p],
            }),
        }
    }
    if lines.is_empty() {
        return Err(PlotError::NoData(Missing::SweepPerplexity));
    }
    for l in &mut lines {
        l.points.sort_by(|a, b| a.x.total_cmp(&b.x));
    }
    Ok((header.axes[x_axis].0.clone(), lines))
}

/// The sweep figure: perplexity on a log axis against the swept parameter, one line per
/// allocation (and per value of the other axes), each point's bootstrap interval as an error
/// bar, the best point ringed and named.
/// Labelled values of a log axis from `lo` to `hi`: 1, 2, 5 × 10^k, or every m × 10^k when
/// fewer than three of those fall inside (a perplexity axis spans less than a decade); a log
/// axis' own key points are the powers of ten only, which leaves such an axis unlabelled.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let inside = |ms: &[f64]| -> Vec<f64> {
        let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (k0..=k1)
            .flat_map(|k| ms.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| *v >= lo && *v <= hi)
            .collect()
    };
    let coarse = inside(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        return coarse;
    }
    let fine = inside(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    match fine.len() >= 2 {
        true => fine,
        false => vec![lo, hi],
    }
}

pub fn sweep(
    header: &SweepHeader,
    rows: &[SweepRow],
    palette: Palette,
) -> Result<String, PlotError> {
    let (x_name, lines) = sweep_lines(header, rows)?;
    let c = palette.colors();
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let (x0, x1) = pad(span(pts().map(|p| p.x)).unwrap_or((0.0, 1.0)));
    let lo = span(pts().flat_map(|p| [p.ppl, p.interval.map_or(p.ppl, |i| i.0)]));
    let hi = span(pts().flat_map(|p| [p.ppl, p.interval.map_or(p.ppl, |i| i.1)]));
    let (y0, y1) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo.0 / 1.05, hi.1 * 1.05),
        _ => (1.0, 10.0),
    };
    let best = pts()
        .min_by(|a, b| a.ppl.total_cmp(&b.ppl))
        .cloned()
        .ok_or(PlotError::NoData(Missing::SweepPoints))?;
    svg((WIDTH, 420), &c, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Perplexity against {x_name}"),
                text_style(&c, LABEL + 4),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                x0..x1,
                (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
            )
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc(x_name.as_str())
            .y_desc("perplexity (log scale)")
            .y_label_formatter(&|v| match *v >= 100.0 {
                true => format!("{v:.0}"),
                false => format!("{v:.1}"),
            })
            .axis_style(c.text)
            .bold_line_style(c.grid)
            .light_line_style(TRANSPARENT)
            .label_style(text_style(&c, LABEL))
            .axis_desc_style(text_style(&c, LABEL))
            .draw()
            .map_err(draw_err)?;
        for (i, l) in lines.iter().enumerate() {
            let col = c.series(i);
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().map(|p| (p.x, p.ppl)),
                    col.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(l.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
            chart
                .draw_series(
                    l.points
                        .iter()
                        .map(|p| Circle::new((p.x, p.ppl), 3, col.filled())),
                )
                .map_err(draw_err)?;
            chart
                .draw_series(l.points.iter().filter_map(|p| {
                    p.interval
                        .map(|(lo, hi)| ErrorBar::new_vertical(p.x, lo, p.ppl, hi, col, 6))
                }))
                .map_err(draw_err)?;
        }
        // The best point: a ring and its name.
        chart
            .draw_series([Circle::new((best.x, best.ppl), 8, c.text.stroke_width(2))])
            .map_err(draw_err)?
            .label(format!("best: {} ({:.2})", best.key, best.ppl))
            .legend({
                let t = c.text;
                move |(x, y)| Circle::new((x + 9, y), 5, t.stroke_width(2))
            });
        legend(&mut chart, &c, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

/// The draws figure: the allocation's spread over calibration draws (the report's `calib_draws`): per
/// block the mean allocated sparsity ± one standard deviation, and each draw's value.
pub fn draws(report: &Report, palette: Palette) -> Result<String, PlotError> {
    let d = report
        .calib_draws
        .as_ref()
        .filter(|d| d.draws > 1 && !d.block_sparsity.is_empty())
        .ok_or(PlotError::NoData(Missing::Draws))?;
    let c = palette.colors();
    let blocks = d.block_sparsity[0].len();
    let mean: Vec<f64> = (0..blocks)
        .map(|b| d.block_sparsity.iter().map(|s| s[b]).sum::<f64>() / d.draws as f64)
        .collect();
    let (y0, y1) = pad(span(
        d.block_sparsity.iter().flatten().copied().chain(
            mean.iter()
                .zip(&d.block_sd)
                .flat_map(|(m, s)| [m - s, m + s]),
        ),
    )
    .unwrap_or((0.0, 1.0)));
    svg((WIDTH, 420), &c, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "{}: allocation over {} calibration draws (pruned PPL {:.2} ± {:.2})",
                    report_label(report),
                    d.draws,
                    d.ppl_mean,
                    d.ppl_sd
                ),
                text_style(&c, LABEL + 1),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..(blocks as f64 - 0.5), y0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("block")
            .y_desc("allocated sparsity")
            .x_labels(blocks.min(16))
            .x_label_formatter(&|v| format!("{}", v.round() as i64))
            .y_label_formatter(&|v| format!("{v:.3}"))
            .axis_style(c.text)
            .bold_line_style(c.grid)
            .light_line_style(TRANSPARENT)
            .label_style(text_style(&c, LABEL))
            .axis_desc_style(text_style(&c, LABEL))
            .draw()
            .map_err(draw_err)?;
        let col = c.series(0);
        chart
            .draw_series(LineSeries::new(
                mean.iter().enumerate().map(|(b, m)| (b as f64, *m)),
                col.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label("mean ± sd over the draws")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        chart
            .draw_series(
                mean.iter()
                    .zip(&d.block_sd)
                    .enumerate()
                    .map(|(b, (m, s))| ErrorBar::new_vertical(b as f64, m - s, *m, m + s, col, 6)),
            )
            .map_err(draw_err)?;
        let dots = c.series(1);
        chart
            .draw_series(d.block_sparsity.iter().flat_map(|s| {
                s.iter()
                    .enumerate()
                    .map(move |(b, v)| Circle::new((b as f64, *v), 2, dots.filled()))
            }))
            .map_err(draw_err)?
            .label("each draw")
            .legend(move |(x, y)| Circle::new((x + 9, y), 3, dots.filled()));
        legend(&mut chart, &c, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    })
}

/// The zero-shot figure: accuracy per task, dense and pruned side by side, each with its standard
/// error, tasks in the DLP paper's order.
pub fn zeroshot(report: &Report, palette: Palette) -> Result<String, PlotError> {
    let z = report
        .zeroshot
        .as_ref()
        .ok_or(PlotError::NoData(Missing::ZeroShot))?;
    let tasks: Vec<Task> = Task::ALL
        .into_iter()
        .filter(|t| z.dense.task(t.name()).is_some())
        .collect();
    if tasks.is_empty() {
        return Err(PlotError::NoData(Missing::TaskScores));
    }
    let mut sides = vec![("dense", &z.dense)];
    if let Some(p) = &z.pruned {
        sides.push(("pruned", p));
    }
    let c = palette.colors();
    let n = tasks.len();
    let width = 0.8 / sides.len() as f64;
    svg((WIDTH, 420), &c, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Zero-shot accuracy, {}", report_label(report)),
                text_style(&c, LABEL + 2),
            )
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..100.0)
            .map_err(draw_err)?;
        let names: Vec<&str> = tasks
            .iter()
            .map(|t| super::table::task_header(*t))
            .collect();
        chart
            .configure_mesh()
            .x_desc("task")
            .y_desc("accuracy (%)")
            .x_labels(n)
            .x_label_formatter(&|v| {
                let i = v.round();
                match (i - v).abs() < 1e-6 && i >= 0.0 {
                    true => names.get(i as usize).copied().unwrap_or("").to_string(),
                    false => String::new(),
                }
            })
            .disable_x_mesh()
            .axis_style(c.text)
            .bold_line_style(c.grid)
            .light_line_style(TRANSPARENT)
            .label_style(text_style(&c, LABEL - 1))
            .axis_desc_style(text_style(&c, LABEL))
            .draw()
            .map_err(draw_err)?;
        for (k, (side, zs)) in sides.iter().enumerate() {
            let col = c.series(k);
            let left = |i: usize| i as f64 - 0.4 + k as f64 * width;
            let bars: Vec<(usize, f64, Option<f64>)> = tasks
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    zs.task(t.name())
                        .map(|s| (i, 100.0 * s.acc, s.acc_stderr.map(|e| 100.0 * e)))
                })
                .collect();
            chart
                .draw_series(bars.iter().map(|(i, a, _)| {
                    Rectangle::new([(left(*i), 0.0), (left(*i) + width, *a)], col.filled())
                }))
                .map_err(draw_err)?
                .label(format!("{side} (mean {:.1})", 100.0 * zs.mean_acc))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
            chart
                .draw_series(bars.iter().filter_map(|(i, a, e)| {
                    e.map(|e| {
                        ErrorBar::new_vertical(left(*i) + width / 2.0, a - e, *a, a + e, c.text, 6)
                    })
                }))
                .map_err(draw_err)?;
        }
        legend(&mut chart, &c, SeriesLabelPosition::UpperRight)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_ticks_label_a_span_shorter_than_a_decade() {
        assert_eq!(
            super::log_ticks(330.0, 730.0),
            vec![400.0, 500.0, 600.0, 700.0]
        );
        assert_eq!(
            super::log_ticks(8.0, 600.0),
            vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        assert_eq!(super::log_ticks(52.0, 58.0), vec![52.0, 58.0]);
    }

    use super::*;

    #[test]
    fn the_dark_palette_is_the_explorers_dark_theme() {
        use ratatui::style::Color;
        let t = crate::ui::theme::Theme::load("dark").unwrap();
        let rgb = |c: Color| match c {
            Color::Rgb(r, g, b) => RGBColor(r, g, b),
            c => panic!("{c:?}"),
        };
        let c = Palette::Dark.colors();
        assert_eq!(c.text, rgb(t.text));
        assert_eq!(c.grid, rgb(t.border));
        assert_eq!(
            c.series,
            [
                t.accent,
                t.bar_selected,
                t.bar_active,
                t.achieved,
                t.target,
                t.pinned
            ]
            .map(rgb)
            .to_vec()
        );
    }

    #[test]
    fn labels_name_the_allocation_and_repeat_names_are_numbered() {
        let r = crate::study::sample::report();
        assert_eq!(report_label(&r), "DLP α=0.15, τ=∞, p=0.7");
        assert_eq!(
            unique(vec!["a".into(), "b".into(), "a".into()]),
            vec!["a #1", "b", "a #2"]
        );
    }

    #[test]
    fn missing_data_is_a_typed_error() {
        let r = crate::study::sample::report();
        let e = draws(&r, Palette::Print).unwrap_err();
        assert_eq!(e, PlotError::NoData(Missing::Draws));
        let e = zeroshot(&r, Palette::Print).unwrap_err();
        assert_eq!(e, PlotError::NoData(Missing::ZeroShot));
        assert_eq!(
            allocation(&[], Palette::Dark),
            Err(PlotError::NoData(Missing::Reports))
        );
    }
}
