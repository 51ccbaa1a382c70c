//! Drawing: a pure function of the state (and the theme). Nothing here changes state or does
//! work, so a frame can be snapshotted with ratatui's TestBackend.

pub mod bars;
pub mod theme;

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::app::keys::{help_rows, Scope};
use crate::app::{Overlay, Stage, State, Tone, View};
use crate::prune::params::Param;
use crate::prune::pipeline::Plan;
use bars::Bars;
use theme::Theme;

/// Below this the layout cannot show the charts and the panel; a notice is shown instead.
pub const MIN_W: u16 = 60;
pub const MIN_H: u16 = 16;

pub fn draw(f: &mut Frame, s: &State, t: &Theme) {
    let area = f.area();
    if area.width < MIN_W || area.height < MIN_H {
        let msg = format!(
            "dlpx needs at least {MIN_W}×{MIN_H} (this terminal is {}×{}); q quits",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(msg)
                .wrap(Wrap { trim: true })
                .style(t.fg(t.text)),
            area,
        );
        return;
    }
    let [header, body, status, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, s, t, header);
    match s.view {
        View::Main => draw_main(f, s, t, body),
        View::Compare => draw_compare(f, s, t, body),
        View::Sweep => draw_sweep(f, s, t, body),
    }
    draw_status(f, s, t, status);
    draw_keys(f, s, t, keys);
    match &s.overlay {
        Some(Overlay::Help) => draw_help(f, t, area),
        Some(Overlay::Input { purpose, text, .. }) => {
            draw_input(f, t, area, &purpose.title(), text)
        }
        Some(Overlay::ConfirmQuit) => draw_confirm(f, t, area),
        None => {}
    }
}

fn block<'a>(title: impl Into<Line<'a>>, t: &Theme) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(t.fg(t.border))
        .title(title.into())
        .title_style(t.fg(t.text).add_modifier(Modifier::BOLD))
}

fn draw_header(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let mut spans = vec![Span::styled(
        " dlpx ",
        t.fg(t.accent).add_modifier(Modifier::BOLD),
    )];
    match &s.summary {
        Some(m) => {
            let i = &m.info;
            let d = &m.data;
            let eval = d
                .eval
                .as_ref()
                .map(|e| format!("{}×{} {}", e.windows, e.seq_len, e.source))
                .unwrap_or_else(|| "none".into());
            let long = format!(
                "{} · {} · {} blocks · {:.1}M params │ {} · {} │ calib {}×{} {} · eval {eval}",
                i.source,
                i.architecture,
                i.blocks,
                i.parameters as f64 / 1e6,
                m.device,
                i.dtype,
                d.calib.windows,
                d.calib.seq_len,
                d.calib.source,
            );
            // Narrow terminals get the same facts, abbreviated.
            let short = format!(
                "{} · {} blk · {:.0}M │ {} {} │ cal {}×{} · ev {}",
                i.source,
                i.blocks,
                i.parameters as f64 / 1e6,
                m.device.split(' ').next().unwrap_or(""),
                match m.device.ends_with("offload") {
                    true => format!("{} offload", i.dtype),
                    false => i.dtype.clone(),
                },
                d.calib.windows,
                d.calib.seq_len,
                d.eval
                    .as_ref()
                    .map(|e| format!("{}×{}", e.windows, e.seq_len))
                    .unwrap_or("none".into()),
            );
            let room = (area.width as usize).saturating_sub(6);
            let text = if long.chars().count() <= room {
                long
            } else {
                short
            };
            spans.push(Span::styled(text, t.fg(t.text)));
        }
        None => spans.push(Span::styled("loading the model…", t.fg(t.dim))),
    }
    f.render_widget(Line::from(spans), area);
}

fn stat_name(s: &State) -> String {
    format!("{:?}", s.params.statistic).to_lowercase()
}

fn draw_main(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let panel_w = if area.width >= 120 { 38 } else { 28 };
    let [charts, panel] =
        Layout::horizontal([Constraint::Min(30), Constraint::Length(panel_w)]).areas(area);
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    let n = s.n_blocks();
    let sel = (n > 0).then_some(s.block);
    let pinned: Vec<usize> = s.params.alloc.overrides.iter().map(|o| o.0).collect();
    draw_importance(f, s, t, top, sel, &pinned);
    draw_allocation(f, s, t, bottom, sel, &pinned);
    draw_panel(f, s, t, panel);
}

/// Importance: the chosen statistic of each block as bars arrive, or (key i) OWL's outlier
/// ratio or AlphaPruning's α̂ from the finished calibration.
fn draw_importance(
    f: &mut Frame,
    s: &State,
    t: &Theme,
    area: Rect,
    sel: Option<usize>,
    pinned: &[usize],
) {
    let n = s.n_blocks();
    let active = match &s.job {
        Some(j) if j.stage == Stage::Calibrate && s.cal.is_none() => Some(j.done),
        _ => None,
    };
    let from_cal = |f: &dyn Fn(&crate::prune::stats::Calibration, usize) -> Option<f64>| {
        (0..n)
            .map(|i| s.cal.as_ref().and_then(|c| f(c, i)))
            .collect::<Vec<Option<f64>>>()
    };
    let (scores, what): (Vec<Option<f64>>, String) = match s.importance {
        crate::app::Importance::Statistic => (
            (0..n)
                .map(|i| s.block_stats.get(i).map(|b| b.get(s.params.statistic)))
                .collect(),
            format!("{} Wanda score", stat_name(s)),
        ),
        crate::app::Importance::OwlRatio => (
            from_cal(&|c, i| c.owl.get(i).copied()),
            "OWL outlier ratio, %".into(),
        ),
        crate::app::Importance::AlphaHat => (
            from_cal(&|c, i| c.esd.get(i).map(|a| a.iter().sum::<f64>() / 7.0)),
            "AlphaPruning α̂ (mean of 7 linears)".into(),
        ),
    };
    let hi = scores.iter().flatten().cloned().fold(0f64, f64::max);
    let sel_score = sel
        .and_then(|i| scores.get(i).copied().flatten())
        .map(|v| format!(" block {}: {v:.4} ", s.block))
        .unwrap_or_default();
    let b = block(format!(" importance · {what} · i switches "), t)
        .title(Line::from(sel_score).alignment(Alignment::Right));
    let inner = b.inner(area);
    f.render_widget(b, area);
    if n == 0 {
        f.render_widget(
            Paragraph::new("waiting for the model…").style(t.fg(t.dim)),
            inner,
        );
    } else {
        f.render_widget(
            Bars {
                values: &scores,
                lo: 0.0,
                hi: if hi > 0.0 { hi } else { 1.0 },
                selected: sel,
                active,
                line: None,
                ticks: None,
                overlay: None,
                pinned,
                theme: t,
            },
            inner,
        );
    }
}

/// Allocation: target sparsity per block (0..1), the global target, achieved ticks.
fn draw_allocation(
    f: &mut Frame,
    s: &State,
    t: &Theme,
    area: Rect,
    sel: Option<usize>,
    pinned: &[usize],
) {
    let applied = s.current_applied();
    let targets: Vec<Option<f64>> = match &s.plan {
        Some(p) => p.block.iter().map(|&v| Some(v)).collect(),
        None => vec![None; s.n_blocks()],
    };
    let p_eff = s.params.effective_alloc().sparsity;
    let b = block(allocation_title(s, p_eff), t)
        .title(Line::from(selected_allocation(s, sel, pinned)).alignment(Alignment::Right));
    let inner = b.inner(area);
    f.render_widget(b, area);
    if s.plan.is_some() {
        f.render_widget(
            Bars {
                values: &targets,
                lo: 0.0,
                hi: 1.0,
                selected: sel,
                active: None,
                line: Some(p_eff),
                ticks: applied.and_then(|a| a.achieved.as_deref()),
                overlay: s.overlay_plan.as_deref(),
                pinned,
                theme: t,
            },
            inner,
        );
    } else {
        f.render_widget(
            Paragraph::new("the allocation appears when calibration has finished")
                .style(t.fg(t.dim))
                .wrap(Wrap { trim: true }),
            inner,
        );
    }
}

/// The selected block's target (→ achieved, N of M, pinned), for the allocation's title.
fn selected_allocation(s: &State, sel: Option<usize>, pinned: &[usize]) -> String {
    let applied = s.current_applied();
    match (sel, &s.plan) {
        (Some(i), Some(p)) if i < p.block.len() => {
            let mut x = format!(" block {i}: {:.3}", p.block[i]);
            if let Some(a) = applied.and_then(|a| a.achieved.as_ref()) {
                x.push_str(&format!(" → {:.3}", a[i]));
            }
            if let Some(nm) = &p.n_of_m {
                x.push_str(&format!(" N={}", nm[i]));
            }
            if pinned.contains(&i) {
                x.push_str(" pinned");
            }
            x + " "
        }
        _ => String::new(),
    }
}

/// The allocation chart's title: p, the overlay, the draws' spread, target or achieved.
fn allocation_title(s: &State, p_eff: f64) -> String {
    // Most important first: the right-aligned title may cover the end of this one.
    let mut label = format!(" sparsity · p {p_eff:.2}");
    if let (None, Some(id)) = (s.overlay_alloc, s.overlay_entry) {
        label.push_str(&format!(" · ◆ applied #{id}"));
    }
    if let Some(a) = s.overlay_alloc {
        label.push_str(&format!(" · ◆ {}", a.label()));
    }
    if let Some(d) = s.draw_spread() {
        let widest = d
            .block_range
            .iter()
            .map(|(lo, hi)| hi - lo)
            .fold(0.0, f64::max);
        label.push_str(&format!(" · {} draws Δ≤{widest:.3}", d.draws));
    }
    match s.current_applied() {
        Some(a) if a.achieved.is_some() => label.push_str(&format!(
            " · achieved ticks ({}) ",
            format!("{:?}", a.params.mode).to_lowercase()
        )),
        _ => label.push_str(" · target "),
    }
    label
}

fn draw_panel(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let b = block(" parameters ", t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let w = inner.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    for field in Param::panel() {
        let relevant = field.applies_to(s.params.alloc.allocation);
        let v = field.show(&s.params);
        let focus = field == s.field;
        let label = format!("{}{}", if focus { "▸ " } else { "  " }, field.label());
        let pad = w
            .saturating_sub(label.chars().count() + v.chars().count())
            .max(1);
        let style = if focus {
            t.highlight()
        } else if relevant {
            t.fg(t.text)
        } else {
            t.fg(t.dim)
        };
        lines.push(Line::styled(
            format!("{label}{}{v}", " ".repeat(pad)),
            style,
        ));
    }
    lines.push(Line::raw(""));
    let kv = |k: &str, v: String, st: Style| kv_line(k, v, w, st);
    lines.push(kv(
        "dense ppl",
        s.dense_ppl.map(|p| format!("{p:.2}")).unwrap_or("…".into()),
        t.fg(t.text),
    ));
    if let Some(h) = s.history.last() {
        let mode = format!("{:?}", h.params.mode).to_lowercase();
        lines.push(kv(
            &format!("#{} {mode}", h.id),
            h.ppl.map(|p| format!("{p:.2}")).unwrap_or("…".into()),
            t.fg(if s.current_applied().is_some() {
                t.good
            } else {
                t.dim
            }),
        ));
        if let Some(fp) = &h.footprint {
            lines.extend(footprint_lines(h.id, fp, w, t));
        }
    }
    if !s.params.alloc.overrides.is_empty() {
        let pins: Vec<String> = s
            .params
            .alloc
            .overrides
            .iter()
            .map(|(b, v)| format!("{b}={v:.2}"))
            .collect();
        lines.push(Line::styled(
            format!("pins {}", pins.join(" ")),
            t.fg(t.pinned),
        ));
    }
    if let Some(d) = s.draw_spread() {
        lines.push(kv(
            &format!("{} draws", d.draws),
            format!("{:.1} ± {:.1}", d.ppl_mean, d.ppl_sd),
            t.fg(t.text),
        ));
    }
    if let Some(m) = &s.summary {
        lines.push(kv(
            "memory est.",
            format!("{:.1} GiB", m.memory_gib),
            t.fg(t.dim),
        ));
    }
    if s.plan.is_some() {
        lines.push(kv(
            "reallocation",
            format!("{:.0} µs", s.last_allocate_us),
            t.fg(t.dim),
        ));
    }
    // Tall panels: the per-block table around the selected block, then the history.
    let avail = (inner.height as usize).saturating_sub(lines.len());
    if let (Some(plan), true) = (&s.plan, avail >= 8) {
        lines.extend(block_table(s, t, plan, avail));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

/// The panel's rows on applied entry `id`'s linears: how they run, their bytes, the dense bytes.
fn footprint_lines(
    id: usize,
    fp: &crate::app::Footprint,
    w: usize,
    t: &Theme,
) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    let kv = |k: &str, v: String, st: Style| kv_line(k, v, w, st);
    let mode = fp.mode.name();
    let full = format!("{mode}, {}/{}", fp.sparse_linears, fp.linears);
    let k = "sparse exec. (X)";
    let v = match k.chars().count() + full.chars().count() < w {
        true => full,
        false => mode.to_string(),
    };
    lines.push(kv(k, v, t.fg(t.text)));
    let mb = |b: u64| b as f64 / 1e6;
    let ratio = match fp.dense_bytes {
        0 => String::new(),
        _ => format!(" {:.2}×", fp.ratio()),
    };
    lines.push(kv(
        &format!("linears #{id}"),
        format!("{:.0} MB{ratio}", mb(fp.bytes)),
        t.fg(t.text),
    ));
    lines.push(kv(
        "linears dense",
        format!("{:.0} MB", mb(fp.dense_bytes)),
        t.fg(t.dim),
    ));
    lines
}

/// A panel row of width `w`: `k` on the left, `v` on the right.
fn kv_line(k: &str, v: String, w: usize, st: Style) -> Line<'static> {
    let pad = w
        .saturating_sub(k.chars().count() + v.chars().count())
        .max(1);
    Line::styled(format!("{k}{}{v}", " ".repeat(pad)), st)
}

/// The panel's per-block table around the selected block, then the history, in `avail` rows.
fn block_table(s: &State, t: &Theme, plan: &Plan, avail: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    // The history's header stays even while it is empty (it says how to fill it).
    let hist_rows = match s.history.len() {
        n if avail >= 16 => n.clamp(1, 6) + 2,
        _ => 0,
    };
    let rows = avail - hist_rows - 2;
    let n = plan.block.len();
    let first = s.block.saturating_sub(rows / 2).min(n.saturating_sub(rows));
    let applied = s.current_applied().and_then(|a| a.achieved.as_ref());
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!("{:>3} {:>7} {:>6} {:>6}", "blk", "score", "target", "ach."),
        t.fg(t.accent).add_modifier(Modifier::BOLD),
    ));
    let pinned: Vec<usize> = s.params.alloc.overrides.iter().map(|o| o.0).collect();
    for i in first..n.min(first + rows) {
        let score = s
            .block_stats
            .get(i)
            .map(|b| format!("{:>7.4}", b.get(s.params.statistic)))
            .unwrap_or_else(|| format!("{:>7}", "…"));
        let ach = applied
            .and_then(|a| a.get(i))
            .map(|v| format!("{v:>6.3}"))
            .unwrap_or_else(|| format!("{:>6}", "—"));
        let pin = if pinned.contains(&i) { " p" } else { "" };
        lines.push(Line::styled(
            format!("{i:>3} {score} {:>6.3} {ach}{pin}", plan.block[i]),
            if i == s.block {
                t.highlight()
            } else {
                t.fg(t.text)
            },
        ));
    }
    if hist_rows > 0 {
        lines.push(Line::raw(""));
        lines.push(Line::styled(
            "history      ppl   zs",
            t.fg(t.accent).add_modifier(Modifier::BOLD),
        ));
        if s.history.is_empty() {
            lines.push(Line::styled("none yet: a applies", t.fg(t.dim)));
        }
        for h in s.history.iter().rev().take(hist_rows - 2) {
            lines.push(Line::styled(
                format!(
                    "#{:<3} {:<5} {:>8} {}",
                    h.id,
                    format!("{:?}", h.params.mode)
                        .to_lowercase()
                        .chars()
                        .take(5)
                        .collect::<String>(),
                    h.ppl.map(|p| format!("{p:.2}")).unwrap_or("…".into()),
                    h.zeroshot
                        .as_ref()
                        .map(|z| format!("{:.3}", z.mean_acc))
                        .unwrap_or_default()
                ),
                t.fg(t.text),
            ));
        }
    }
    lines
}

/// Wrapped lines of `text` in `width` columns (chars), for sizing rows.
fn wrapped_rows(text: &str, width: usize) -> usize {
    let w = width.max(1);
    text.split('\n')
        .map(|l| l.chars().count().div_ceil(w).max(1))
        .sum()
}

/// One row per prompt: the prompt with token counts and speeds, then the dense and pruned
/// continuations side by side; the pruned text from its first departure from the dense text on
/// is reversed (and in the error colour). Rows scroll so the selected prompt stays in view.
fn draw_generations(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let title = match s.history.last() {
        Some(h) => format!(
            " generations · dense │ pruned #{} ({}) · ↑↓ select ",
            h.id,
            format!("{:?}", h.params.mode).to_lowercase()
        ),
        None => " generations · dense │ pruned (press a to apply) ".into(),
    };
    let b = block(title, t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if inner.height == 0 || inner.width < 10 {
        return;
    }
    let half = (inner.width.saturating_sub(1)) / 2;
    // The worker's decode speed once a continuation is finished (for a cached dense one, as
    // measured when it was generated); while it streams, pieces over the seconds so far.
    let rate = |n: usize, tok_s: Option<f64>, secs: Option<f64>| match (tok_s, secs) {
        (Some(r), _) => format!("{n} tok · {r:.0} tok/s"),
        (None, Some(x)) if x > 0.0 && n > 1 => format!("{n} tok · {:.0} tok/s", n as f64 / x),
        _ => format!("{n} tok"),
    };
    // Row heights: the header line plus the taller of the two texts (at most a third of the
    // pane, so several rows stay visible).
    let cap = (inner.height / 3).max(2) as usize;
    let heights: Vec<usize> = s
        .prompts
        .iter()
        .map(|p| {
            let text = |x: &str| {
                if x.is_empty() {
                    1
                } else {
                    wrapped_rows(x, half as usize)
                }
            };
            1 + text(&p.dense).max(text(&p.pruned)).min(cap)
        })
        .collect();
    // First row shown: the selected one must fit.
    let mut first = 0;
    while first < s.prompt_sel
        && heights[first..=s.prompt_sel].iter().sum::<usize>() > inner.height as usize
    {
        first += 1;
    }
    let mut y = inner.y;
    for (i, p) in s.prompts.iter().enumerate().skip(first) {
        let h = heights[i] as u16;
        if y >= inner.y + inner.height {
            break;
        }
        let h = h.min(inner.y + inner.height - y);
        let sel = i == s.prompt_sel;
        let header = format!(
            "{}{}  ·  dense {}  │  pruned {}",
            if sel { "▸ " } else { "  " },
            p.prompt.replace('\n', " ⏎ "),
            rate(p.dense_tokens, p.dense_tok_s, p.dense_secs),
            rate(p.pruned_tokens, p.pruned_tok_s, p.pruned_secs)
        );
        f.render_widget(
            Paragraph::new(Line::styled(
                header,
                if sel {
                    t.highlight()
                } else {
                    t.fg(t.accent).add_modifier(Modifier::BOLD)
                },
            )),
            Rect::new(inner.x, y, inner.width, 1),
        );
        if h > 1 {
            let body = Rect::new(inner.x, y + 1, inner.width, h - 1);
            draw_continuations(f, p, t, body, half);
        }
        y += h;
    }
}

/// A prompt's two continuations side by side in `body` (dense `half` wide), the pruned one
/// marked from where it departs from the dense one.
fn draw_continuations(f: &mut Frame, p: &crate::app::PromptGen, t: &Theme, body: Rect, half: u16) {
    let [l, _, r] = Layout::horizontal([
        Constraint::Length(half),
        Constraint::Length(1),
        Constraint::Min(1),
    ])
    .areas(body);
    let show = |x: &str| {
        if x.is_empty() {
            "…".to_string()
        } else {
            x.replace('\n', " ⏎ ")
        }
    };
    f.render_widget(
        Paragraph::new(show(&p.dense))
            .style(t.fg(t.text))
            .wrap(Wrap { trim: false }),
        l,
    );
    let pruned = show(&p.pruned);
    let line = match crate::app::first_difference(&show(&p.dense), &pruned) {
        Some(at) => {
            let cut = pruned
                .char_indices()
                .nth(at)
                .map(|(b, _)| b)
                .unwrap_or(pruned.len());
            Line::from(vec![
                Span::styled(pruned[..cut].to_string(), t.fg(t.text)),
                Span::styled(
                    pruned[cut..].to_string(),
                    t.fg(t.error).add_modifier(Modifier::REVERSED),
                ),
            ])
        }
        None => Line::styled(pruned, t.fg(t.text)),
    };
    f.render_widget(Paragraph::new(line).wrap(Wrap { trim: false }), r);
}

fn draw_compare(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let [gens, tables] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Percentage(45)]).areas(area);
    draw_generations(f, s, t, gens);
    let [hist, blocks] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(tables);
    let lines = history_lines(s, t);
    f.render_widget(
        Paragraph::new(lines).block(block(" perplexity (history) ", t)),
        hist,
    );
    // With zero-shot scores, their table takes the top of the right pane (all of it when the
    // pane is too short for both).
    let blocks = match &s.dense_zeroshot {
        Some(d) => {
            let want = d.tasks.len() as u16 + 4;
            let both = blocks.height >= want + 6;
            let [top, rest] = Layout::vertical([
                Constraint::Length(if both { want } else { blocks.height }),
                Constraint::Min(0),
            ])
            .areas(blocks);
            draw_zeroshot(f, s, d, t, top);
            if !both {
                return;
            }
            rest
        }
        None => blocks,
    };
    draw_block_targets(f, s, t, blocks);
}

/// The compare view's history: the dense model, the last footprint, and each applied entry
/// with its perplexity relative to the highlighted one.
fn history_lines(s: &State, t: &Theme) -> Vec<Line<'static>> {
    let zs = |z: &Option<crate::zeroshot::ZeroShot>| {
        z.as_ref()
            .map(|z| format!(" zs {:.3}", z.mean_acc))
            .unwrap_or_default()
    };
    let mut lines = vec![Line::styled(
        format!(
            "dense{}{}{}",
            " ".repeat(8),
            s.dense_ppl.map(|p| format!("{p:.2}")).unwrap_or("…".into()),
            zs(&s.dense_zeroshot)
        ),
        t.fg(t.text),
    )];
    if let Some((id, fp)) = s
        .history
        .iter()
        .rev()
        .find_map(|h| h.footprint.map(|f| (h.id, f)))
    {
        let ratio = match fp.dense_bytes {
            0 => String::new(),
            _ => format!(" ({:.2}×)", fp.ratio()),
        };
        lines.push(Line::styled(
            format!(
                "linears #{id} {:.0} MB{ratio} · dense {:.0} MB · sparse {} ({} of {}, X)",
                fp.bytes as f64 / 1e6,
                fp.dense_bytes as f64 / 1e6,
                fp.mode.name(),
                fp.sparse_linears,
                fp.linears
            ),
            t.fg(t.dim),
        ));
    }
    // Each other entry's perplexity relative to the highlighted one, with the paired bootstrap
    // interval over the evaluation windows (`*`: beyond the windows' noise).
    let reference = s.current_applied().or(s.history.last());
    let predictions = s
        .summary
        .as_ref()
        .map_or(0, |x| x.data.predictions_per_window());
    for h in s.history.iter().rev() {
        let ach = h
            .achieved
            .as_ref()
            .map(|v| format!(" ach {:.3}", v.iter().sum::<f64>() / v.len().max(1) as f64))
            .unwrap_or_default();
        let vs = match (reference, &h.window_nll) {
            (Some(r), Some(w)) if r.id != h.id && predictions > 0 => r
                .window_nll
                .as_ref()
                .and_then(|rw| {
                    crate::eval::compare::paired_bootstrap(rw, w, predictions, 400, 0.95, 0).ok()
                })
                .map(|c| {
                    let star = if c.excludes_one() { "*" } else { "" };
                    format!(" ×{:.3} [{:.3}–{:.3}]{star}", c.ratio, c.lo, c.hi)
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        let quant: String = h
            .quantized
            .iter()
            .map(|(f, p)| format!(" {} {p:.1}", f.name()))
            .collect();
        let lora = h
            .recovered
            .map(|(p, steps)| format!(" LoRA({steps}) {p:.1}"))
            .unwrap_or_default();
        lines.push(Line::styled(
            format!(
                "#{:<3} {:>8}  {}{ach}{vs}{}{quant}{lora}",
                h.id,
                h.ppl.map(|p| format!("{p:.2}")).unwrap_or("…".into()),
                crate::app::params::describe(&h.params),
                zs(&h.zeroshot),
            ),
            t.fg(if Some(h.id) == s.current_applied().map(|c| c.id) {
                t.good
            } else {
                t.text
            }),
        ));
    }
    lines
}

/// Requested vs achieved per block for the last applied configuration, around the selection.
fn draw_block_targets(f: &mut Frame, s: &State, t: &Theme, blocks: Rect) {
    let b = block(" block  requested  achieved ", t);
    let inner = b.inner(blocks);
    f.render_widget(b, blocks);
    if let Some(h) = s.history.last() {
        let rows = inner.height as usize;
        let n = h.target.len();
        let first = s.block.saturating_sub(rows / 2).min(n.saturating_sub(rows));
        let lines: Vec<Line> = (first..n.min(first + rows))
            .map(|i| {
                let ach = h
                    .achieved
                    .as_ref()
                    .map(|a| format!("{:.4}", a[i]))
                    .unwrap_or("…".into());
                let nm = h
                    .n_of_m
                    .as_ref()
                    .map(|v| format!("  N={}", v[i]))
                    .unwrap_or_default();
                Line::styled(
                    format!("{i:>5}  {:>9.4}  {ach:>8}{nm}", h.target[i]),
                    if i == s.block {
                        t.highlight()
                    } else {
                        t.fg(t.text)
                    },
                )
            })
            .collect();
        f.render_widget(Paragraph::new(lines), inner);
    }
}

/// The sweep view: preview perplexity (log scale) against the swept parameter as the points
/// arrive, the current setting as a vertical line, the selected point marked; a table of the
/// points beside it.
fn draw_sweep(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    use ratatui::symbols::Marker;
    use ratatui::widgets::{Axis, Chart, Dataset, GraphType};
    let Some(sw) = &s.sweep else {
        f.render_widget(
            Paragraph::new("w starts a sweep once calibration has finished")
                .block(block(" sweep ", t)),
            area,
        );
        return;
    };
    let table_w = 30.min(area.width / 3);
    let [chart_area, table_area] =
        Layout::horizontal([Constraint::Min(20), Constraint::Length(table_w)]).areas(area);
    let done = sw.ppl.iter().filter(|p| p.is_some()).count();
    let pts: Vec<(f64, f64)> = sw
        .values
        .iter()
        .zip(&sw.ppl)
        .filter_map(|(v, p)| p.map(|p| (*v, p.ln())))
        .collect();
    let (x0, x1) = (
        sw.values.first().copied().unwrap_or(0.0),
        sw.values.last().copied().unwrap_or(1.0),
    );
    let (mut y0, mut y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if pts.is_empty() {
        (y0, y1) = (0.0, 1.0);
    } else if y1 - y0 < 1e-6 {
        (y0, y1) = (y0 - 0.05, y1 + 0.05);
    }
    let current = sw.param.get(&s.params);
    let now_line = [(current, y0), (current, y1)];
    let sel = sw.ppl[sw.sel].map(|p| [(sw.values[sw.sel], p.ln())]);
    let mut sets = vec![
        Dataset::default()
            .name("now")
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(t.fg(t.dim))
            .data(&now_line),
        Dataset::default()
            .marker(Marker::Braille)
            .graph_type(GraphType::Line)
            .style(t.fg(t.bar))
            .data(&pts),
        Dataset::default()
            .marker(Marker::Dot)
            .graph_type(GraphType::Scatter)
            .style(t.fg(t.text))
            .data(&pts),
    ];
    if let Some(sel) = &sel {
        sets.push(
            Dataset::default()
                .name("selected")
                .marker(Marker::Block)
                .graph_type(GraphType::Scatter)
                .style(t.fg(t.good))
                .data(sel),
        );
    }
    let label = |v: f64| Span::raw(format!("{:.0}", v.exp()));
    let chart = Chart::new(sets)
        .block(block(
            format!(
                " sweep {} · preview on {} {} windows · {done}/{} ",
                sw.param.sweep_name(),
                sw.windows,
                if sw.heldout {
                    "held-out calibration"
                } else {
                    "eval"
                },
                sw.values.len()
            ),
            t,
        ))
        .x_axis(
            Axis::default()
                .title(format!("{} (│ now)", sw.param.sweep_name()))
                .style(t.fg(t.dim))
                .bounds([x0, x1])
                .labels(vec![
                    Span::raw(format!("{x0}")),
                    Span::raw(format!("{}", (x0 + x1) / 2.0)),
                    Span::raw(format!("{x1}")),
                ]),
        )
        .y_axis(
            Axis::default()
                .title("ppl, log")
                .style(t.fg(t.dim))
                .bounds([y0, y1])
                .labels(vec![label(y0), label((y0 + y1) / 2.0), label(y1)]),
        );
    f.render_widget(chart, chart_area);
    draw_sweep_table(f, sw, t, table_area);
}

/// The sweep's points as a table: the selected (▸) and the best (★).
fn draw_sweep_table(f: &mut Frame, sw: &crate::app::SweepView, t: &Theme, area: Rect) {
    let best = sw.best();
    let lines: Vec<Line> = sw
        .values
        .iter()
        .zip(&sw.ppl)
        .enumerate()
        .map(|(i, (v, p))| {
            let mark = match (i == sw.sel, Some(i) == best) {
                (true, true) => "▸★",
                (true, false) => "▸ ",
                (false, true) => " ★",
                _ => "  ",
            };
            let ppl = p.map(|p| format!("{p:>9.2}")).unwrap_or("        …".into());
            Line::styled(
                format!("{mark}{v:>6.3}{ppl}"),
                if i == sw.sel {
                    t.highlight()
                } else {
                    t.fg(t.text)
                },
            )
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(block(" value  ppl (★ best) ", t)),
        area,
    );
}

/// Zero-shot accuracy per task, dense against the highlighted applied entry, with the harness's
/// standard errors where there is room.
fn draw_zeroshot(
    f: &mut Frame,
    s: &State,
    dense: &crate::zeroshot::ZeroShot,
    t: &Theme,
    area: Rect,
) {
    let reference = s.current_applied().or(s.history.last());
    let pruned = reference.and_then(|h| h.zeroshot.as_ref().map(|z| (h.id, z)));
    let title = match pruned {
        Some((id, _)) => format!(" zero-shot acc: dense │ #{id} "),
        None => " zero-shot acc: dense (a, then z: pruned) ".to_string(),
    };
    let b = block(title, t);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let wide = inner.width >= 42;
    let cell = |v: f64, se: Option<f64>| match (wide, se) {
        (true, Some(se)) => format!("{v:.3}±{se:.3}"),
        _ => format!("{v:.3}"),
    };
    let name = |n: &str| -> String {
        if wide {
            return n.to_string();
        }
        match n {
            "hellaswag" => "hswag",
            "winogrande" => "wino",
            "arc_easy" => "arc-e",
            "arc_challenge" => "arc-c",
            "openbookqa" => "obqa",
            other => other,
        }
        .to_string()
    };
    let w = if wide { 13 } else { 6 };
    // The mean first: on a short pane it is the line that must stay visible.
    let mut lines = vec![Line::styled(
        format!(
            "{:<w$} {:<11} {}",
            "mean",
            format!("{:.3}", dense.mean_acc),
            pruned
                .map(|(_, z)| format!("{:.3}", z.mean_acc))
                .unwrap_or_default()
        ),
        t.fg(t.accent).add_modifier(Modifier::BOLD),
    )];
    lines.extend(dense.tasks.iter().map(|d| {
        let p = pruned
            .and_then(|(_, z)| z.task(&d.task))
            .map(|p| cell(p.acc, p.acc_stderr))
            .unwrap_or_default();
        Line::styled(
            format!(
                "{:<w$} {:<11} {p}",
                name(&d.task),
                cell(d.acc, d.acc_stderr)
            ),
            t.fg(t.text),
        )
    }));
    if let Some(d) = dense.tasks.first() {
        let mut splits: Vec<&str> = dense.tasks.iter().map(|x| x.split.as_str()).collect();
        splits.dedup();
        lines.push(Line::styled(
            format!("{} per task · {}", d.n, splits.join("/")),
            t.fg(t.dim),
        ));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_status(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    if let (Some(j), true) = (&s.job, s.busy) {
        if j.total == 0 {
            // Loading has no step count: the last status message instead of an empty bar.
            f.render_widget(
                Line::from(vec![
                    Span::styled(format!(" {} ", j.stage.label()), t.fg(t.accent)),
                    Span::styled(s.status.0.clone(), t.fg(t.dim)),
                ]),
                area,
            );
            return;
        }
        let label = if j.total > 0 {
            format!(" {} {}/{} ", j.stage.label(), j.done, j.total)
        } else {
            format!(" {} ", j.stage.label())
        };
        let rate = if j.tokens_per_s > 0.0 {
            format!(
                " {:.0} tok/s · ETA {:.0}s · Esc cancels ",
                j.tokens_per_s, j.eta_s
            )
        } else {
            " Esc cancels ".to_string()
        };
        let bar_w =
            (area.width as usize).saturating_sub(label.chars().count() + rate.chars().count() + 2);
        // total > 0 here (the no-step case returned above).
        let filled = (bar_w * j.done.min(j.total))
            .checked_div(j.total)
            .unwrap_or(0);
        let line = Line::from(vec![
            Span::styled(label, t.fg(t.accent).add_modifier(Modifier::BOLD)),
            Span::styled("━".repeat(filled), t.fg(t.good)),
            Span::styled("─".repeat(bar_w - filled), t.fg(t.border)),
            Span::styled(rate, t.fg(t.dim)),
        ]);
        f.render_widget(line, area);
        return;
    }
    let color = match s.status.1 {
        Tone::Info => t.text,
        Tone::Good => t.good,
        Tone::Error => t.error,
    };
    let mut st = t.fg(color);
    if s.status.1 == Tone::Error && t.mono {
        st = st.add_modifier(Modifier::BOLD);
    }
    f.render_widget(Line::styled(format!(" {}", s.status.0), st), area);
}

fn draw_keys(f: &mut Frame, s: &State, t: &Theme, area: Rect) {
    let hints = crate::app::keys::footer(s.view.scope());
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1;
    for (k, h) in hints {
        // Only whole hints, in order of importance.
        let w = k.chars().count() + h.chars().count() + 3;
        if used + w > area.width as usize {
            break;
        }
        used += w;
        spans.push(Span::styled(
            k.clone(),
            t.fg(t.accent).add_modifier(Modifier::BOLD),
        ));
        spans.push(Span::styled(format!(" {h}  "), t.fg(t.dim)));
    }
    f.render_widget(Line::from(spans), area);
}

fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_help(f: &mut Frame, t: &Theme, area: Rect) {
    let rows = help_rows();
    let section = |scope: Scope, title: &str| {
        let mut v = vec![Line::styled(
            title.to_string(),
            t.fg(t.accent).add_modifier(Modifier::BOLD),
        )];
        for (k, h, sc) in &rows {
            if *sc == scope {
                v.push(Line::from(vec![
                    Span::styled(format!("{k:<10}"), t.fg(t.bar_selected)),
                    Span::styled(h.to_string(), t.fg(t.text)),
                ]));
            }
        }
        v
    };
    let mut left = section(Scope::Main, "charts view");
    left.push(Line::raw(""));
    left.extend(section(Scope::Compare, "compare view"));
    let mut right = section(Scope::Any, "everywhere");
    right.push(Line::raw(""));
    right.extend(section(Scope::Sweep, "sweep view (w)"));
    let popup = centered(area, area.width.saturating_sub(2), area.height);
    f.render_widget(Clear, popup);
    let b = block(" keys · any key closes ", t);
    let inner = b.inner(popup);
    f.render_widget(b, popup);
    let [l, r] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    f.render_widget(Paragraph::new(left).wrap(Wrap { trim: false }), l);
    f.render_widget(Paragraph::new(right).wrap(Wrap { trim: false }), r);
}

fn draw_input(f: &mut Frame, t: &Theme, area: Rect, title: &str, text: &str) {
    let popup = centered(area, area.width.saturating_sub(8).min(70), 4);
    f.render_widget(Clear, popup);
    let b = block(format!(" {title} "), t);
    let inner = b.inner(popup);
    f.render_widget(b, popup);
    let [line, hint] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    // Show the end of long text, where the cursor is.
    let room = inner.width.saturating_sub(1) as usize;
    let n = text.chars().count();
    let shown: String = text.chars().skip(n.saturating_sub(room)).collect();
    f.render_widget(
        Line::from(vec![
            Span::styled(shown, t.fg(t.text)),
            Span::styled("▏", t.fg(t.accent)),
        ]),
        line,
    );
    f.render_widget(
        Line::styled("Enter accepts · Esc cancels", t.fg(t.dim)),
        hint,
    );
}

fn draw_confirm(f: &mut Frame, t: &Theme, area: Rect) {
    let popup = centered(area, 44, 3);
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new("A job is running. Quit anyway? y / n")
            .alignment(Alignment::Center)
            .style(t.fg(t.text))
            .block(block(" quit ", t)),
        popup,
    );
}

/// Draw one frame into an off-screen buffer and return its text, one line per row (snapshot
/// tests and the latency benchmark use this).
// The in-memory backend cannot fail (its error type is uninhabited in practice).
#[allow(clippy::expect_used)]
pub fn render_to_string(s: &State, t: &Theme, w: u16, h: u16) -> String {
    let mut term =
        ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).expect("test backend");
    term.draw(|f| draw(f, s, t)).expect("draw");
    let buf = term.backend().buffer();
    let mut out = String::with_capacity((w as usize + 1) * h as usize);
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}
