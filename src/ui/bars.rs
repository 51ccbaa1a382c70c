//! A bar chart with one bar per decoder block, drawn with eighth-block characters so that small
//! differences in sparsity stay visible, a horizontal target line, achieved-value ticks, and an
//! axis row marking the selected and pinned blocks. (ratatui's BarChart has integer values and
//! no reference line.)

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

impl Widget for Bars<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.height < 2 || area.width == 0 || self.values.is_empty() {
            return;
        }
        let t = self.theme;
        let plot_h = area.height - 1; // the last row is the axis
        let axis_y = area.y + plot_h;
        let (first, cw, margin) = self.columns(area.width);
        let bw = if cw >= 3 { cw - 1 } else { cw };
        let span = (self.hi - self.lo).max(1e-12);
        let eighths_of = |v: f64| -> usize {
            (((v - self.lo) / span).clamp(0.0, 1.0) * plot_h as f64 * 8.0).round() as usize
        };
        let line_row = self.line.map(|v| {
            let e = eighths_of(v);
            // The row (from the bottom) that holds the line's height.
            (e / 8).min(plot_h as usize - 1)
        });
        // The target line also runs through the margins.
        if let Some(r) = line_row {
            let y = axis_y - 1 - r as u16;
            for x in area.x..area.x + area.width {
                buf[(x, y)].set_symbol("─").set_fg(t.target);
            }
        }
        for (slot, i) in (first..self.values.len()).enumerate() {
            let x0 = area.x + margin + slot as u16 * cw;
            if x0 + bw > area.x + area.width {
                break;
            }
            let color = if Some(i) == self.selected {
                t.bar_selected
            } else if Some(i) == self.active {
                t.bar_active
            } else if self.pinned.contains(&i) {
                t.pinned
            } else {
                t.bar
            };
            let filled = self.values[i].map(eighths_of).unwrap_or(0);
            let tick_row = self
                .ticks
                .and_then(|a| a.get(i))
                .map(|&v| (eighths_of(v).saturating_sub(1) / 8).min(plot_h as usize - 1));
            for r in 0..plot_h as usize {
                let y = axis_y - 1 - r as u16;
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
            let mark = if Some(i) == self.selected {
                "▲"
            } else if self.pinned.contains(&i) {
                "p"
            } else if Some(i) == self.active {
                "•"
            } else {
                " "
            };
            buf[(x0, axis_y)]
                .set_symbol(mark)
                .set_fg(if Some(i) == self.selected {
                    t.bar_selected
                } else {
                    t.pinned
                });
        }
    }
}
