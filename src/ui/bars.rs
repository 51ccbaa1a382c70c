//! A bar chart with one bar per decoder block, drawn with eighth-block characters so that small
//! differences in sparsity stay visible, a horizontal target line, achieved-value ticks, an axis
//! row marking the selected and pinned blocks, block numbers under the bars (every bar when
//! they fit, else every 2nd, 5th, 10th, …) and a value scale on the left (top, middle and
//! bottom values, and the target line's). (ratatui's BarChart has integer values and no
//! reference line.)

use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::Widget;

use super::theme::Theme;

const EIGHTHS: [&str; 8] = [" ", "▁", "▂", "▃", "▄", "▅", "▆", "▇"];

pub struct Bars<'a> {
    /// One value per block; `None` = not known yet (calibration still running).
    pub values: &'a [Option<f64>],
    pub lo: f64,
    pub hi: f64,
    pub selected: Option<usize>,
    /// The block being worked on (highlighted while calibrating).
    pub active: Option<usize>,
    /// A horizontal reference line (the global target).
    pub line: Option<f64>,
    /// Achieved values, drawn as a tick in the achieved colour.
    pub ticks: Option<&'a [f64]>,
    /// Another allocation's values, drawn as `◆` over the bars.
    pub overlay: Option<&'a [f64]>,
    pub pinned: &'a [usize],
    pub theme: &'a Theme,
}

impl Bars<'_> {
    /// First visible block, the width of each block's column, and the left margin that
    /// centres the bars.
    fn columns(&self, width: u16) -> (usize, u16, u16) {
        let n = self.values.len().max(1);
        let cw = (width as usize / n).max(1) as u16;
        let visible = (width / cw) as usize;
        let sel = self.selected.unwrap_or(0);
        let first = if n > visible {
            sel.saturating_sub(visible / 2).min(n - visible)
        } else {
            0
        };
        let used = visible.min(n) as u16 * cw;
        (first, cw, (width - used) / 2)
    }
}

/// A scale value, as short as its range allows.
fn fmt_value(v: f64, range: f64) -> String {
    if range >= 0.1 || v == 0.0 {
        format!("{v:.2}")
    } else if range >= 0.001 {
        format!("{v:.4}")
    } else {
        format!("{v:.1e}")
    }
}

/// Label every `step`-th block, the smallest step of 1, 2, 5, 10, 20, … whose labels (the
/// widest number plus a space) fit in `step` columns of width `cw`.
fn label_step(n: usize, cw: u16) -> usize {
    let need = n.saturating_sub(1).to_string().len() + 1;
    [1usize, 2, 5, 10, 20, 50, 100, 200, 500]
        .into_iter()
        .find(|s| s * cw as usize >= need)
        .unwrap_or(1000)
}

/// The plotting area: where a value lands, in eighths of a row above the axis.
struct Plot {
    area: Rect,
    /// Rows above the axis row.
    plot_h: u16,
    axis_y: u16,
    lo: f64,
    span: f64,
    /// The target line's row (from the bottom), if any.
    line_row: Option<usize>,
}

impl Plot {
    fn eighths(&self, v: f64) -> usize {
        (((v - self.lo) / self.span).clamp(0.0, 1.0) * self.plot_h as f64 * 8.0).round() as usize
    }

    /// The row (from the bottom) of a mark at `v`: the row holding its top eighth.
    fn mark_row(&self, v: f64) -> usize {
        (self.eighths(v).saturating_sub(1) / 8).min(self.plot_h as usize - 1)
    }

    /// The screen row of row `r` from the bottom.
    fn y(&self, r: usize) -> u16 {
        self.axis_y - 1 - r as u16
    }
}

impl Widget for Bars<'_> {
    fn render(self, full: Rect, buf: &mut Buffer) {
        if full.height < 2 || full.width == 0 || self.values.is_empty() {
            return;
        }
        let t = self.theme;
        let range = self.hi - self.lo;
        // The value scale on the left, when there is room for it.
        let labels = [
            fmt_value(self.hi, range),
            fmt_value((self.lo + self.hi) / 2.0, range),
            fmt_value(self.lo, range),
        ];
        let line_label = self.line.map(|v| fmt_value(v, range));
        let aw = labels
            .iter()
            .chain(line_label.iter())
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0) as u16
            + 1;
        let scale = full.width >= aw + 20 && full.height >= 4;
        // Block numbers under the axis row, when there is height for them.
        let numbers = full.height >= 5;
        let area = Rect {
            x: full.x + if scale { aw } else { 0 },
            y: full.y,
            width: full.width - if scale { aw } else { 0 },
            height: full.height - u16::from(numbers),
        };
        let plot_h = area.height - 1; // the last row is the axis
        let mut plot = Plot {
            area,
            plot_h,
            axis_y: area.y + plot_h,
            lo: self.lo,
            span: (self.hi - self.lo).max(1e-12),
            line_row: None,
        };
        // The row (from the bottom) that holds the line's height.
        plot.line_row = self
            .line
            .map(|v| (plot.eighths(v) / 8).min(plot_h as usize - 1));
        let (first, cw, margin) = self.columns(area.width);
        // With a scale the bars start next to it; without, they are centred.
        let margin = if scale { 0 } else { margin };
        let bw = if cw >= 3 { cw - 1 } else { cw };
        let cols = Columns {
            first,
            cw,
            margin,
            bw,
        };
        // The target line also runs through the margins.
        if let Some(r) = plot.line_row {
            for x in area.x..area.x + area.width {
                buf[(x, plot.y(r))].set_symbol("─").set_fg(t.target);
            }
        }
        for (slot, i) in (first..self.values.len()).enumerate() {
            let x0 = area.x + margin + slot as u16 * cw;
            if x0 + bw > area.x + area.width {
                break;
            }
            self.draw_bar(buf, &plot, &cols, x0, i);
        }
        if numbers {
            self.draw_numbers(buf, area, cols, plot.axis_y + 1);
        }
        if scale {
            let x_end = full.x + aw - 1;
            self.draw_scale(buf, &plot, x_end, &labels, line_label.as_deref());
        }
    }
}

impl Bars<'_> {
    /// Block `i`'s column at `x0`: the bar in eighths, its achieved tick, the target line through
    /// it and the gap after it, the overlay's mark, and its axis mark.
    fn draw_bar(&self, buf: &mut Buffer, plot: &Plot, cols: &Columns, x0: u16, i: usize) {
        let t = self.theme;
        let (area, line_row) = (plot.area, plot.line_row);
        let (bw, cw) = (cols.bw, cols.cw);
        let color = if Some(i) == self.selected {
            t.bar_selected
        } else if Some(i) == self.active {
            t.bar_active
        } else if self.pinned.contains(&i) {
            t.pinned
        } else {
            t.bar
        };
        let filled = self.values[i].map(|v| plot.eighths(v)).unwrap_or(0);
        let tick_row = self.ticks.and_then(|a| a.get(i)).map(|&v| plot.mark_row(v));
        for r in 0..plot.plot_h as usize {
            let y = plot.y(r);
            let level = filled.saturating_sub(r * 8).min(8);
            let (sym, fg) = if level == 8 {
                ("█", color)
            } else if level > 0 {
                (EIGHTHS[level], color)
            } else if Some(r) == line_row {
                ("─", t.target)
            } else {
                (" ", t.text)
            };
            let fg = if level > 0 && Some(r) == tick_row {
                t.achieved
            } else {
                fg
            };
            for dx in 0..bw {
                buf[(x0 + dx, y)].set_symbol(sym).set_fg(fg);
            }
            // The target line continues through the gaps between bars.
            if bw < cw && Some(r) == line_row {
                for dx in bw..cw {
                    if x0 + dx < area.x + area.width {
                        buf[(x0 + dx, y)].set_symbol("─").set_fg(t.target);
                    }
                }
            }
        }
        if let Some(&v) = self.overlay.and_then(|o| o.get(i)) {
            let y = plot.y(plot.mark_row(v));
            for dx in 0..bw {
                buf[(x0 + dx, y)].set_symbol("◆").set_fg(t.accent);
            }
        }
        let (mark, fg) = self.mark(i);
        buf[(x0, plot.axis_y)].set_symbol(mark).set_fg(fg);
    }

    /// The value scale, right-aligned to column `x_end`: top, middle and bottom values, and
    /// the target line's on its row.
    fn draw_scale(
        &self,
        buf: &mut Buffer,
        plot: &Plot,
        x_end: u16,
        labels: &[String; 3],
        line_label: Option<&str>,
    ) {
        let t = self.theme;
        let put = |buf: &mut Buffer, row: u16, text: &str, fg| {
            let x = x_end - text.chars().count() as u16;
            buf.set_string(x, row, text, ratatui::style::Style::default().fg(fg));
        };
        let top = plot.area.y;
        let bottom = plot.axis_y - 1;
        let mid = (top + bottom) / 2;
        let line_y = plot.line_row.map(|r| plot.y(r));
        for (row, text) in [(top, &labels[0]), (mid, &labels[1]), (bottom, &labels[2])] {
            // The target's own label wins its row and the rows next to it.
            if line_y.is_some_and(|l| l.abs_diff(row) <= 1) {
                continue;
            }
            put(buf, row, text, t.dim);
        }
        if let (Some(y), Some(text)) = (line_y, line_label) {
            put(buf, y, text, t.target);
        }
    }
}

/// Where the bars stand: the first block shown, the column and bar widths and the left margin.
#[derive(Clone, Copy)]
struct Columns {
    first: usize,
    cw: u16,
    margin: u16,
    bw: u16,
}

impl Bars<'_> {
    /// The mark under block `i` on the axis row, and its colour.
    fn mark(&self, i: usize) -> (&'static str, ratatui::style::Color) {
        let t = self.theme;
        let mark = if Some(i) == self.selected {
            "▲"
        } else if self.pinned.contains(&i) {
            "p"
        } else if Some(i) == self.active {
            "•"
        } else {
            " "
        };
        let fg = match Some(i) == self.selected {
            true => t.bar_selected,
            false => t.pinned,
        };
        (mark, fg)
    }

    /// Block numbers on row `y` under the bars (every `step`-th and the selected one; labels never
    /// overlap).
    fn draw_numbers(&self, buf: &mut Buffer, area: Rect, c: Columns, y: u16) {
        let t = self.theme;
        let Columns {
            first,
            cw,
            margin,
            bw,
        } = c;
        let step = label_step(self.values.len(), cw);
        let mut free_from = area.x; // labels never overlap
        for (slot, i) in (first..self.values.len()).enumerate() {
            let x0 = area.x + margin + slot as u16 * cw;
            if x0 + bw > area.x + area.width {
                break;
            }
            if i % step != 0 && Some(i) != self.selected {
                continue;
            }
            let label = i.to_string();
            let end = x0 + label.len() as u16;
            if x0 < free_from || end > area.x + area.width {
                continue;
            }
            let fg = if Some(i) == self.selected {
                t.bar_selected
            } else {
                t.dim
            };
            buf.set_string(x0, y, &label, ratatui::style::Style::default().fg(fg));
            free_from = end + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_thin_out_and_values_fit_their_range() {
        // 30 blocks in 3-column bars: every bar ("29" needs 3 columns).
        assert_eq!(label_step(30, 3), 1);
        // 80 blocks in 1-column bars: every 5th ("79 " needs 3).
        assert_eq!(label_step(80, 1), 5);
        assert_eq!(label_step(30, 2), 2);
        assert_eq!(label_step(1000, 1), 5);
        assert_eq!(fmt_value(0.7, 1.0), "0.70");
        assert_eq!(fmt_value(0.1214, 0.12), "0.12");
        assert_eq!(fmt_value(0.0123, 0.02), "0.0123");
        assert_eq!(fmt_value(0.00012, 0.0002), "1.2e-4");
    }

    fn draw(n: usize, w: u16, h: u16) -> Vec<String> {
        let t = Theme::mono();
        let values: Vec<Option<f64>> = (0..n).map(|i| Some(0.5 + 0.004 * i as f64)).collect();
        let area = Rect::new(0, 0, w, h);
        let mut buf = Buffer::empty(area);
        Bars {
            values: &values,
            lo: 0.0,
            hi: 1.0,
            selected: Some(7),
            active: None,
            line: Some(0.7),
            ticks: None,
            overlay: None,
            pinned: &[],
            theme: &t,
        }
        .render(area, &mut buf);
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    #[test]
    fn block_numbers_and_scale_never_overlap() {
        // 30 blocks at 100 columns: every block number, the scale and the target's value.
        let rows = draw(30, 100, 10);
        let numbers = rows.last().unwrap();
        for i in 0..30 {
            assert!(
                numbers.contains(&format!(" {i} ")) || numbers.trim_end().ends_with(&i.to_string()),
                "{i}: {numbers}"
            );
        }
        assert!(rows[0].starts_with("1.00"), "{rows:?}");
        assert!(rows.iter().any(|r| r.starts_with("0.70 ─")), "{rows:?}");
        // 80 blocks in 60 columns: a window of bars, every 5th numbered (plus the selected),
        // each label apart from the next.
        let rows = draw(80, 60, 8);
        let numbers = rows.last().unwrap();
        let labels: Vec<usize> = numbers
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert!(labels.contains(&7), "{numbers}");
        assert!(labels.iter().all(|&l| l % 5 == 0 || l == 7), "{numbers}");
        assert!(labels.len() >= 5, "{numbers}");
    }
}
