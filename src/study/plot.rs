//! `dlpx plot`: SVG figures of reports and sweep files, drawn with `plotters`' SVG backend only
//! (text is left to the SVG viewer's fonts, so nothing here needs a font file or a C library).
//!
//! The figures are those of the DLP paper: per-block sparsity of the allocations side by side
//! with the block importance they come from, perplexity (log scale) against a swept parameter per
//! allocation, the spread of the allocation over calibration draws, and zero-shot accuracy per
//! task dense against pruned (README, "Figures").

use std::fmt;

use plotters::chart::MeshStyle;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
/// Space around a panel, and under and left of its plotting area for the axes' numbers and
/// names.
const MARGIN: u32 = 10;
const X_AXIS: u32 = 40;
const Y_AXIS: u32 = 60;
/// Legend text size, row height, and the width of an entry's sample mark with its gap.
const LEGEND_FONT: u32 = LABEL - 2;
const LEGEND_ROW: u32 = 18;
const SAMPLE: u32 = 26;

type Area<'o> = DrawingArea<SVGBackend<'o>, Shift>;
/// A panel drawn on an `Area`, with its coordinates.
type Panel<'o, X, Y> = ChartContext<'o, SVGBackend<'o>, Cartesian2d<X, Y>>;

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
    draw: impl FnOnce(&Area) -> Result<(), PlotError>,
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

/// A panel on `area`: its caption above, the axes' label areas, the coordinates `x` × `y`.
fn panel<'a, X: AsRangedCoord, Y: AsRangedCoord>(
    area: &Area<'a>,
    caption: &str,
    caption_style: TextStyle,
    x: X,
    y: Y,
) -> Result<Panel<'a, X::CoordDescType, Y::CoordDescType>, PlotError> {
    ChartBuilder::on(area)
        .caption(caption, caption_style)
        .margin(MARGIN)
        .x_label_area_size(X_AXIS)
        .y_label_area_size(Y_AXIS)
        .build_cartesian_2d(x, y)
        .map_err(draw_err)
}

/// Every panel's axes: their names, the palette's grid without minor lines, the labels' size.
/// The caller adds the tick labels' format and draws.
fn mesh<'a, 'b, X, Y, XT, YT>(
    chart: &'b mut Panel<'a, X, Y>,
    c: &Colors,
    (x, y): (&str, &str),
) -> MeshStyle<'a, 'b, X, Y, SVGBackend<'a>>
where
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
    Y: Ranged<ValueType = YT> + ValueFormatter<YT>,
{
    let mut m = chart.configure_mesh();
    m.x_desc(x)
        .y_desc(y)
        .axis_style(c.text)
        .bold_line_style(c.grid)
        .light_line_style(TRANSPARENT)
        .label_style(text_style(c, LABEL))
        .axis_desc_style(text_style(c, LABEL));
    m
}

/// A block axis' tick label: the block's index.
fn block_label(v: &f64) -> String {
    format!("{}", v.round() as i64)
}

/// The mark a legend entry shows for its series, in the series' colour.
#[derive(Debug, Clone, Copy)]
enum Key {
    Line(RGBColor),
    Dot(RGBColor, i32),
    Triangle(RGBColor),
    Ring(RGBColor),
    Swatch(RGBColor),
}

type Entry = (String, Key);

/// Estimated width of a legend label in pixels: 0.55 em a character, a quarter more than DejaVu
/// Sans (the widest common sans-serif) averages on these labels, so that columns never run into
/// each other whatever font the viewer picks.
fn label_width(s: &str) -> u32 {
    (s.chars().count() as f64 * LEGEND_FONT as f64 * 0.55).ceil() as u32
}

/// Columns and rows of a legend under a panel, aligned with its plotting area: as many columns
/// as the longest label leaves room for, filled row by row.
fn legend_grid(entries: &[Entry]) -> (usize, usize) {
    let room = WIDTH - 2 * MARGIN - Y_AXIS;
    let column = SAMPLE + entries.iter().map(|e| label_width(&e.0)).max().unwrap_or(0) + 12;
    let cols = ((room / column) as usize).clamp(1, entries.len().max(1));
    (cols, entries.len().div_ceil(cols))
}

/// The height of the strip a legend takes under its panel: the legend is drawn outside the
/// plotting area, so that no series is ever covered.
fn legend_height(entries: &[Entry]) -> u32 {
    legend_grid(entries).1 as u32 * LEGEND_ROW + MARGIN
}

/// `entries` in the strip `area` (of `legend_height`), left-aligned with the panel above.
fn legend(area: &Area, c: &Colors, entries: &[Entry]) -> Result<(), PlotError> {
    let (cols, _) = legend_grid(entries);
    let column = (WIDTH - 2 * MARGIN - Y_AXIS) / cols as u32;
    let style = text_style(c, LEGEND_FONT).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, (label, key)) in entries.iter().enumerate() {
        let x = (MARGIN + Y_AXIS + (i % cols) as u32 * column) as i32;
        let y = ((i / cols) as u32 * LEGEND_ROW + LEGEND_ROW / 2) as i32;
        sample(area, *key, (x, y))?;
        area.draw(&Text::new(label.as_str(), (x + SAMPLE as i32, y), &style))
            .map_err(draw_err)?;
    }
    Ok(())
}

/// A legend entry's mark, 18 px wide from `(x, y)` (its vertical middle).
fn sample(area: &Area, key: Key, (x, y): (i32, i32)) -> Result<(), PlotError> {
    match key {
        Key::Line(col) => area.draw(&PathElement::new(
            vec![(x, y), (x + 18, y)],
            col.stroke_width(2),
        )),
        Key::Dot(col, r) => area.draw(&Circle::new((x + 9, y), r, col.filled())),
        Key::Triangle(col) => area.draw(&TriangleMarker::new((x + 9, y), 5, col.filled())),
        Key::Ring(col) => area.draw(&Circle::new((x + 9, y), 5, col.stroke_width(2))),
        Key::Swatch(col) => area.draw(&Rectangle::new(
            [(x + 3, y - 5), (x + 15, y + 5)],
            col.filled(),
        )),
    }
    .map_err(draw_err)
}

/// The allocation figure: each report's per-block target sparsity (line and dots) and achieved
/// sparsity (triangles) on the top panel, its block scores (the importance statistic the
/// allocation maps to sparsity, DLP §4) on the bottom panel. One colour per report; the legend
/// between the panels.
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
    let mut entries: Vec<Entry> = Vec::new();
    for (i, (r, name)) in reports.iter().zip(&names).enumerate() {
        entries.push((format!("{name} target"), Key::Line(c.series(i))));
        if r.blocks.iter().any(|b| b.achieved_sparsity.is_some()) {
            entries.push((format!("{name} achieved"), Key::Triangle(c.series(i))));
        }
    }
    let x = -0.5..(blocks as f64 - 0.5);
    let (top_h, strip_h) = (400, legend_height(&entries));
    svg((WIDTH, top_h + strip_h + 240), &c, |root| {
        let (top, rest) = root.split_vertically(top_h);
        let (strip, bottom) = rest.split_vertically(strip_h);
        let title = text_style(&c, LABEL + 4);
        let mut chart = panel(&top, "Per-block sparsity", title, x.clone(), s0..s1)?;
        mesh(&mut chart, &c, ("block", "sparsity"))
            .x_labels(blocks.min(16))
            .x_label_formatter(&block_label)
            .y_label_formatter(&|v| format!("{v:.2}"))
            .draw()
            .map_err(draw_err)?;
        for (i, r) in reports.iter().enumerate() {
            let col = c.series(i);
            let target: Vec<(f64, f64)> = r
                .blocks
                .iter()
                .map(|b| (b.index as f64, b.target_sparsity))
                .collect();
            chart
                .draw_series(LineSeries::new(target.clone(), col.stroke_width(2)))
                .map_err(draw_err)?;
            chart
                .draw_series(target.iter().map(|p| Circle::new(*p, 3, col.filled())))
                .map_err(draw_err)?;
            let achieved = r
                .blocks
                .iter()
                .filter_map(|b| b.achieved_sparsity.map(|a| (b.index as f64, a)));
            chart
                .draw_series(achieved.map(|p| TriangleMarker::new(p, 5, col.filled())))
                .map_err(draw_err)?;
        }
        legend(&strip, &c, &entries)?;

        let caption = format!("Block importance (score, statistic {statistic})");
        let mut chart = panel(&bottom, &caption, text_style(&c, LABEL + 2), x, f0..f1)?;
        mesh(&mut chart, &c, ("block", "score"))
            .x_labels(blocks.min(16))
            .x_label_formatter(&block_label)
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(draw_err)?;
        for (i, r) in reports.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    r.blocks.iter().map(|b| (b.index as f64, b.score)),
                    c.series(i).stroke_width(2),
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
    let predictions = header.data.predictions_per_window();
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

/// The sweep figure: perplexity on a log axis against the swept parameter, one line per
/// allocation (and per value of the other axes), each point's bootstrap interval as an error
/// bar, the best point ringed and named.
pub fn sweep(
    header: &SweepHeader,
    rows: &[SweepRow],
    palette: Palette,
) -> Result<String, PlotError> {
    let (x_name, lines) = sweep_lines(header, rows)?;
    sweep_figure(
        &format!("Perplexity against {x_name}"),
        &x_name,
        &lines,
        palette,
    )
}

/// The sweep figure of `lines` against the parameter `x_name`, titled `title`: what
/// The sweep figure of a sweep file (dlpx plot), and the explorer (key P) of its sweep view.
pub fn sweep_figure(
    title: &str,
    x_name: &str,
    lines: &[SweepLine],
    palette: Palette,
) -> Result<String, PlotError> {
    let c = palette.colors();
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let best = pts()
        .min_by(|a, b| a.ppl.total_cmp(&b.ppl))
        .cloned()
        .ok_or(PlotError::NoData(Missing::SweepPoints))?;
    let (x0, x1) = pad(span(pts().map(|p| p.x)).unwrap_or((0.0, 1.0)));
    let lo = span(pts().flat_map(|p| [p.ppl, p.interval.map_or(p.ppl, |i| i.0)]));
    let hi = span(pts().flat_map(|p| [p.ppl, p.interval.map_or(p.ppl, |i| i.1)]));
    let (y0, y1) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo.0 / 1.05, hi.1 * 1.05),
        _ => (1.0, 10.0),
    };
    let mut entries: Vec<Entry> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.clone(), Key::Line(c.series(i))))
        .collect();
    entries.push((
        format!("best: {} ({:.2})", best.key, best.ppl),
        Key::Ring(c.text),
    ));
    let (chart_h, strip_h) = (420, legend_height(&entries));
    svg((WIDTH, chart_h + strip_h), &c, |root| {
        let (top, strip) = root.split_vertically(chart_h);
        let y = (y0..y1).log_scale().with_key_points(log_ticks(y0, y1));
        let mut chart = panel(&top, title, text_style(&c, LABEL + 4), x0..x1, y)?;
        mesh(&mut chart, &c, (x_name, "perplexity (log scale)"))
            .y_label_formatter(&|v| match *v >= 100.0 {
                true => format!("{v:.0}"),
                false => format!("{v:.1}"),
            })
            .draw()
            .map_err(draw_err)?;
        for (i, l) in lines.iter().enumerate() {
            let col = c.series(i);
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().map(|p| (p.x, p.ppl)),
                    col.stroke_width(2),
                ))
                .map_err(draw_err)?;
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
        // The best point: a ring, named in the legend.
        chart
            .draw_series([Circle::new((best.x, best.ppl), 8, c.text.stroke_width(2))])
            .map_err(draw_err)?;
        legend(&strip, &c, &entries)
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
    let (col, dots) = (c.series(0), c.series(1));
    let entries: Vec<Entry> = vec![
        ("mean ± sd over the draws".into(), Key::Line(col)),
        ("each draw".into(), Key::Dot(dots, 3)),
    ];
    let caption = format!(
        "{}: allocation over {} calibration draws (pruned PPL {:.2} ± {:.2})",
        report_label(report),
        d.draws,
        d.ppl_mean,
        d.ppl_sd
    );
    let (chart_h, strip_h) = (420, legend_height(&entries));
    svg((WIDTH, chart_h + strip_h), &c, |root| {
        let (top, strip) = root.split_vertically(chart_h);
        let x = -0.5..(blocks as f64 - 0.5);
        let mut chart = panel(&top, &caption, text_style(&c, LABEL + 1), x, y0..y1)?;
        mesh(&mut chart, &c, ("block", "allocated sparsity"))
            .x_labels(blocks.min(16))
            .x_label_formatter(&block_label)
            .y_label_formatter(&|v| format!("{v:.3}"))
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                mean.iter().enumerate().map(|(b, m)| (b as f64, *m)),
                col.stroke_width(2),
            ))
            .map_err(draw_err)?;
        chart
            .draw_series(
                mean.iter()
                    .zip(&d.block_sd)
                    .enumerate()
                    .map(|(b, (m, s))| ErrorBar::new_vertical(b as f64, m - s, *m, m + s, col, 6)),
            )
            .map_err(draw_err)?;
        chart
            .draw_series(d.block_sparsity.iter().flat_map(|s| {
                s.iter()
                    .enumerate()
                    .map(move |(b, v)| Circle::new((b as f64, *v), 2, dots.filled()))
            }))
            .map_err(draw_err)?;
        legend(&strip, &c, &entries)
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
    let entries: Vec<Entry> = sides
        .iter()
        .enumerate()
        .map(|(k, (side, zs))| {
            let label = format!("{side} (mean {:.1})", 100.0 * zs.mean_acc);
            (label, Key::Swatch(c.series(k)))
        })
        .collect();
    let names: Vec<&str> = tasks
        .iter()
        .map(|t| super::table::task_header(*t))
        .collect();
    let caption = format!("Zero-shot accuracy, {}", report_label(report));
    let (chart_h, strip_h) = (420, legend_height(&entries));
    svg((WIDTH, chart_h + strip_h), &c, |root| {
        let (top, strip) = root.split_vertically(chart_h);
        let x = -0.5..(n as f64 - 0.5);
        let mut chart = panel(&top, &caption, text_style(&c, LABEL + 2), x, 0.0..100.0)?;
        mesh(&mut chart, &c, ("task", "accuracy (%)"))
            .x_labels(n)
            .x_label_formatter(&|v| {
                let i = v.round();
                match (i - v).abs() < 1e-6 && i >= 0.0 {
                    true => names.get(i as usize).copied().unwrap_or("").to_string(),
                    false => String::new(),
                }
            })
            .disable_x_mesh()
            .label_style(text_style(&c, LABEL - 1))
            .draw()
            .map_err(draw_err)?;
        for (k, (_, zs)) in sides.iter().enumerate() {
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
                .map_err(draw_err)?;
            chart
                .draw_series(bars.iter().filter_map(|(i, a, e)| {
                    e.map(|e| {
                        ErrorBar::new_vertical(left(*i) + width / 2.0, a - e, *a, a + e, c.text, 6)
                    })
                }))
                .map_err(draw_err)?;
        }
        legend(&strip, &c, &entries)
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

    /// Every text of a figure as `(x, y, text)`.
    fn texts(svg: &str) -> Vec<(f64, f64, String)> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        let at = |n: &roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| {
                (
                    at(&n, "x"),
                    at(&n, "y"),
                    n.text().unwrap_or("").trim().to_string(),
                )
            })
            .collect()
    }

    /// Every mark (dot, triangle) of a figure: its centre's height.
    fn mark_heights(svg: &str) -> Vec<f64> {
        let doc = roxmltree::Document::parse(svg).unwrap();
        doc.descendants()
            .filter_map(|n| match n.tag_name().name() {
                "circle" => n.attribute("cy")?.parse().ok(),
                "polygon" => {
                    let ys: Vec<f64> = n
                        .attribute("points")?
                        .split_whitespace()
                        .filter_map(|p| p.split(',').nth(1)?.parse().ok())
                        .collect();
                    Some(ys.iter().sum::<f64>() / ys.len() as f64)
                }
                _ => None,
            })
            .collect()
    }

    /// Legend entries fit the figure, and none runs into the next one on its row.
    fn entries_apart(legend: &[(f64, f64, String)]) {
        for a in legend {
            let end = a.0 + label_width(&a.2) as f64;
            assert!(end <= WIDTH as f64, "{a:?} runs off the figure");
            for b in legend.iter().filter(|b| b.1 == a.1 && b.0 > a.0) {
                assert!(end <= b.0 - SAMPLE as f64, "{a:?} runs into {b:?}");
            }
        }
    }

    #[test]
    fn the_legend_is_outside_the_plotting_area_for_one_to_four_series() {
        use crate::prune::allocate::Allocation;
        let kinds = [
            Allocation::Dlp,
            Allocation::Owl,
            Allocation::Alpha,
            Allocation::Uniform,
        ];
        for n in 1..=4 {
            let reports: Vec<Report> = kinds[..n]
                .iter()
                .map(|a| {
                    let mut r = crate::study::sample::report();
                    r.params.alloc.allocation = *a;
                    r
                })
                .collect();
            let svg = allocation(&reports, Palette::Print).unwrap();
            let all = texts(&svg);
            // Each report's target and achieved entry, between the 400 px sparsity panel and
            // the score panel's caption.
            let caption = all
                .iter()
                .find(|t| t.2.starts_with("Block importance"))
                .unwrap();
            let legend: Vec<(f64, f64, String)> = all
                .iter()
                .filter(|t| t.2.ends_with(" target") || t.2.ends_with(" achieved"))
                .cloned()
                .collect();
            assert_eq!(legend.len(), 2 * n, "{legend:?}");
            assert!(legend.iter().all(|t| t.1 > 400.0 && t.1 < caption.1));
            entries_apart(&legend);
            // The sparsity panel's dots and triangles lie above its x axis; below it are only
            // the legend's triangles (one per report; the target's sample is a line).
            let below = mark_heights(&svg)
                .into_iter()
                .filter(|y| *y > (400 - X_AXIS) as f64)
                .count();
            assert_eq!(below, n, "n={n}");
        }
        // The sweep figure: one to four lines and the best point's entry under its 420 px panel.
        for n in 1..=4 {
            let lines: Vec<SweepLine> = (0..n)
                .map(|i| SweepLine {
                    name: format!("line {i} with a long name"),
                    points: (0..5)
                        .map(|k| SweepPoint {
                            x: k as f64 * 0.05,
                            ppl: 300.0 + 10.0 * (i * k) as f64,
                            interval: Some((280.0, 340.0 + 10.0 * (i * k) as f64)),
                            key: format!("alpha={}", k as f64 * 0.05),
                        })
                        .collect(),
                })
                .collect();
            let svg = sweep_figure("t", "alpha", &lines, Palette::Dark).unwrap();
            let legend: Vec<(f64, f64, String)> =
                texts(&svg).into_iter().filter(|t| t.1 > 420.0).collect();
            assert_eq!(legend.len(), n + 1, "{legend:?}");
            entries_apart(&legend);
            assert!(mark_heights(&svg)
                .iter()
                .all(|y| *y < (420 - X_AXIS) as f64 || *y > 420.0));
        }
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
