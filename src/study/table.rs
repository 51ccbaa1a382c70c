//! `dlpx table`: one row per report in the layout of the DLP paper's tables (model, method,
//! sparsity, perplexity, then the seven zero-shot tasks and their mean). [`rows`] is the data,
//! [`render`] the text in Markdown, LaTeX (booktabs) or CSV.

use std::fmt::Write as _;

use crate::prune::allocate::Allocation;
use crate::prune::mask::{Metric, Pattern};
use crate::prune::pipeline::Mode;
use crate::report::Report;
use crate::zeroshot::Task;

/// The output format of `dlpx table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Latex,
    Csv,
}

/// One report's row. `None` where the report has no such measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The model as the report's source names it (a file source by its file name).
    pub model: String,
    pub allocation: Allocation,
    /// The allocation's own parameters, e.g. `α=0.15, τ=∞` (empty for uniform).
    pub params: String,
    pub metric: Metric,
    pub mode: Mode,
    /// The global target sparsity p (N/M for an N:M pattern).
    pub sparsity: f64,
    /// `Some((n, m))` for an N:M pattern.
    pub n_of_m: Option<(usize, usize)>,
    pub dense_ppl: Option<f64>,
    /// The report's pruned perplexity, or with calibration draws their mean.
    pub pruned_ppl: Option<f64>,
    /// With calibration draws (two or more): their sample standard deviation
    /// and their number.
    pub pruned_ppl_sd: Option<(f64, usize)>,
    /// Pruned accuracy (0–1) of each of the seven tasks, in [`Task::ALL`]'s order.
    pub acc: [Option<f64>; 7],
    /// Mean accuracy over the tasks the report has, and how many they are.
    pub mean_acc: Option<(f64, usize)>,
}

/// The column headers of the seven tasks, as the DLP paper's tables name them.
pub fn task_header(t: Task) -> &'static str {
    match t {
        Task::BoolQ => "BoolQ",
        Task::Rte => "RTE",
        Task::HellaSwag => "HellaSwag",
        Task::WinoGrande => "WinoGrande",
        Task::ArcEasy => "ARC-e",
        Task::ArcChallenge => "ARC-c",
        Task::OpenBookQa => "OBQA",
    }
}

/// A file source by its file name; `demo` and Hub ids as they are.
fn model_name(source: &str) -> String {
    let is_path = source.starts_with('/')
        || source.starts_with('.')
        || source.ends_with(".gguf")
        || source.contains('\\');
    match is_path {
        true => std::path::Path::new(source)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| source.to_string()),
        false => source.to_string(),
    }
}

/// `{v}` without trailing noise: 0.15 stays 0.15, ∞ for τ = ∞.
fn num(v: f64) -> String {
    if v.is_infinite() {
        "∞".into()
    } else {
        format!("{v}")
    }
}

/// The allocation's parameters in the papers' symbols: DLP α and τ (DLP §4), OWL λ and M
/// (Yin et al., 2024), AlphaPruning ε (Lu et al., 2024); pins (README, "Pruning") counted.
fn params_of(r: &Report) -> String {
    let a = &r.params.alloc;
    let mut parts = match a.allocation {
        Allocation::Uniform => vec![],
        Allocation::Dlp => vec![
            format!("α={}", num(a.alpha)),
            format!("τ={}", num(a.tau.unwrap_or(f64::INFINITY))),
        ],
        Allocation::Owl => vec![
            format!("λ={}", num(a.owl_lambda)),
            format!("M={}", num(r.params.owl_m)),
        ],
        Allocation::Alpha => vec![format!("ε={}", num(a.alpha_eps))],
        Allocation::Depth => vec![format!("α={}", num(a.alpha))],
    };
    if !a.overrides.is_empty() {
        parts.push(format!("{} pinned", a.overrides.len()));
    }
    parts.join(", ")
}

/// The row of one report.
pub fn row(r: &Report) -> Row {
    let zs = r.zeroshot.as_ref().and_then(|z| z.pruned.as_ref());
    let acc = Task::ALL.map(|t| zs.and_then(|z| z.task(t.name())).map(|s| s.acc));
    let draws = r.calib_draws.as_ref().filter(|c| c.draws > 1);
    Row {
        model: model_name(&r.model.source),
        allocation: r.params.alloc.allocation,
        params: params_of(r),
        metric: r.params.metric,
        mode: r.params.mode,
        sparsity: r.params.effective_alloc().sparsity,
        n_of_m: match r.params.pattern {
            Pattern::NOfM { n, m } => Some((n, m)),
            Pattern::Unstructured => None,
        },
        dense_ppl: r.ppl.dense,
        pruned_ppl: draws.map(|c| c.ppl_mean).or(r.ppl.pruned),
        pruned_ppl_sd: draws.map(|c| (c.ppl_sd, c.draws)),
        acc,
        mean_acc: zs
            .filter(|z| !z.tasks.is_empty())
            .map(|z| (z.mean_acc, z.tasks.len())),
    }
}

/// One row per report, in the order given.
pub fn rows(reports: &[Report]) -> Vec<Row> {
    reports.iter().map(row).collect()
}

fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::Magnitude => "Magnitude",
        Metric::Wanda => "Wanda",
        Metric::SparseGpt => "SparseGPT",
    }
}

/// The metric, and `preview` when the masks came from the dense statistics only (not the
/// paper's sequential pass).
fn metric_cell(r: &Row) -> String {
    match r.mode {
        Mode::Faithful => metric_name(r.metric).to_string(),
        Mode::Preview => format!("{} (preview)", metric_name(r.metric)),
    }
}

fn sparsity_cell(r: &Row) -> String {
    match r.n_of_m {
        Some((n, m)) => format!("{n}:{m}"),
        None => num(r.sparsity),
    }
}

/// Text cells of a row (Markdown and LaTeX; `pm` is the ± sign and `dash` the empty cell).
fn cells(r: &Row, pm: &str, dash: &str) -> Vec<String> {
    let f2 = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| dash.into());
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:.2}", 100.0 * v))
            .unwrap_or_else(|| dash.into())
    };
    let pruned = match (r.pruned_ppl, r.pruned_ppl_sd) {
        (Some(p), Some((sd, _))) => format!("{p:.2}{pm}{sd:.2}"),
        (p, _) => f2(p),
    };
    let mut c = vec![
        r.model.clone(),
        r.allocation.label().to_string(),
        if r.params.is_empty() {
            dash.to_string()
        } else {
            r.params.clone()
        },
        metric_cell(r),
        sparsity_cell(r),
        f2(r.dense_ppl),
        pruned,
    ];
    c.extend(r.acc.iter().map(|a| pct(*a)));
    c.push(match r.mean_acc {
        Some((m, n)) if n == Task::ALL.len() => format!("{:.2}", 100.0 * m),
        // A mean over fewer tasks is not the papers' mean: say over how many.
        Some((m, n)) => format!("{:.2} ({n} tasks)", 100.0 * m),
        None => dash.into(),
    });
    c
}

const LEAD: [&str; 7] = [
    "Model",
    "Allocation",
    "Parameters",
    "Metric",
    "p",
    "Dense PPL",
    "Pruned PPL",
];

fn headers() -> Vec<String> {
    let mut h: Vec<String> = LEAD.iter().map(|s| s.to_string()).collect();
    h.extend(Task::ALL.iter().map(|t| task_header(*t).to_string()));
    h.push("Mean".into());
    h
}

/// The table as text.
pub fn render(rows: &[Row], format: Format) -> String {
    match format {
        Format::Markdown => markdown(rows),
        Format::Latex => latex(rows),
        Format::Csv => csv(rows),
    }
}

fn markdown(rows: &[Row]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = String::new();
    let h = headers();
    let _ = writeln!(out, "| {} |", h.join(" | "));
    // Text columns left, numbers right.
    let align: Vec<&str> = (0..h.len())
        .map(|i| if i < 4 { ":--" } else { "--:" })
        .collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in rows {
        let c: Vec<String> = cells(r, " ± ", "—").iter().map(|s| esc(s)).collect();
        let _ = writeln!(out, "| {} |", c.join(" | "));
    }
    out
}

/// LaTeX text: special characters escaped, the Greek parameters and ∞ in math mode.
fn tex(s: &str) -> String {
    let mut o = String::new();
    for ch in s.chars() {
        match ch {
            '\\' => o.push_str("\\textbackslash{}"),
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                o.push('\\');
                o.push(ch);
            }
            '~' => o.push_str("\\textasciitilde{}"),
            '^' => o.push_str("\\textasciicircum{}"),
            'α' => o.push_str("$\\alpha$"),
            'τ' => o.push_str("$\\tau$"),
            'λ' => o.push_str("$\\lambda$"),
            'ε' => o.push_str("$\\epsilon$"),
            '∞' => o.push_str("$\\infty$"),
            '—' => o.push_str("--"),
            _ => o.push(ch),
        }
    }
    o
}

fn latex(rows: &[Row]) -> String {
    let h = headers();
    let mut out = String::new();
    let spec = format!("{}{}", "l".repeat(4), "r".repeat(h.len() - 4));
    let _ = writeln!(out, "\\begin{{tabular}}{{{spec}}}");
    out.push_str("\\toprule\n");
    let hs: Vec<String> = h.iter().map(|s| tex(s)).collect();
    let _ = writeln!(out, "{} \\\\", hs.join(" & "));
    out.push_str("\\midrule\n");
    for r in rows {
        // `±` becomes `$\pm$` as one token; the other cells are escaped text.
        let c: Vec<String> = cells(r, "\u{0}", "—")
            .iter()
            .map(|s| tex(s).replace('\u{0}', " $\\pm$ "))
            .collect();
        let _ = writeln!(out, "{} \\\\", c.join(" & "));
    }
    out.push_str("\\bottomrule\n\\end{tabular}\n");
    out
}

/// CSV (RFC 4180 quoting), numbers unrounded, empty where there is no value; accuracies as
/// fractions as the reports hold them.
fn csv(rows: &[Row]) -> String {
    let q = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let o = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from(
        "model,allocation,params,metric,mode,p,n_of_m,dense_ppl,pruned_ppl,pruned_ppl_sd,draws",
    );
    for t in Task::ALL {
        let _ = write!(out, ",{}", t.name());
    }
    out.push_str(",mean_acc,tasks\n");
    for r in rows {
        let mut c = vec![
            q(&r.model),
            r.allocation.name().to_string(),
            q(&r.params),
            metric_name(r.metric).to_lowercase(),
            match r.mode {
                Mode::Faithful => "faithful".into(),
                Mode::Preview => "preview".into(),
            },
            r.sparsity.to_string(),
            r.n_of_m
                .map(|(n, m)| format!("{n}:{m}"))
                .unwrap_or_default(),
            o(r.dense_ppl),
            o(r.pruned_ppl),
            o(r.pruned_ppl_sd.map(|s| s.0)),
            r.pruned_ppl_sd.map(|s| s.1.to_string()).unwrap_or_default(),
        ];
        c.extend(r.acc.iter().map(|a| o(*a)));
        c.push(o(r.mean_acc.map(|m| m.0)));
        c.push(r.mean_acc.map(|m| m.1.to_string()).unwrap_or_default());
        let _ = writeln!(out, "{}", c.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{CalibDraws, ZeroShotPair};
    use crate::zeroshot::{TaskScore, ZeroShot};

    fn zs(accs: &[(&str, f64)]) -> ZeroShot {
        ZeroShot {
            source: "demo".into(),
            limit: None,
            tasks: accs
                .iter()
                .map(|(t, a)| TaskScore {
                    task: t.to_string(),
                    split: "validation".into(),
                    n: 10,
                    acc: *a,
                    acc_stderr: None,
                    acc_norm: None,
                    acc_norm_stderr: None,
                })
                .collect(),
            mean_acc: accs.iter().map(|a| a.1).sum::<f64>() / accs.len() as f64,
            requests: 0,
            tokens: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn a_dlp_report_with_draws_and_zero_shot_is_the_hand_built_row() {
        let mut r = crate::study::sample::report();
        r.model.source = "/models/tiny.gguf".into();
        r.calib_draws = Some(CalibDraws::new(
            vec![40.0, 42.0, 44.0],
            vec![vec![0.6, 0.8]; 3],
        ));
        let seven: Vec<(&str, f64)> = Task::ALL
            .iter()
            .zip([0.5, 0.25, 0.75, 0.5, 0.625, 0.125, 0.375])
            .map(|(t, a)| (t.name(), a))
            .collect();
        r.zeroshot = Some(ZeroShotPair {
            dense: zs(&seven),
            pruned: Some(zs(&seven)),
        });
        let want = Row {
            model: "tiny.gguf".into(),
            allocation: Allocation::Dlp,
            params: "α=0.15, τ=∞".into(),
            metric: Metric::Wanda,
            mode: Mode::Faithful,
            sparsity: 0.7,
            n_of_m: None,
            dense_ppl: Some(12.345),
            pruned_ppl: Some(42.0),
            pruned_ppl_sd: Some((2.0, 3)),
            acc: [
                Some(0.5),
                Some(0.25),
                Some(0.75),
                Some(0.5),
                Some(0.625),
                Some(0.125),
                Some(0.375),
            ],
            mean_acc: Some((3.125 / 7.0, 7)),
        };
        let got = rows(std::slice::from_ref(&r));
        assert_eq!(got, vec![want]);
        let md = render(&got, Format::Markdown);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "| Model | Allocation | Parameters | Metric | p | Dense PPL | Pruned PPL | BoolQ | RTE \
             | HellaSwag | WinoGrande | ARC-e | ARC-c | OBQA | Mean |"
        );
        assert_eq!(
            lines[2],
            "| tiny.gguf | DLP | α=0.15, τ=∞ | Wanda | 0.7 | 12.35 | 42.00 ± 2.00 | 50.00 | 25.00 \
             | 75.00 | 50.00 | 62.50 | 12.50 | 37.50 | 44.64 |"
        );
        let tex = render(&got, Format::Latex);
        assert!(tex.starts_with("\\begin{tabular}{llllrrrrrrrrrrr}\n\\toprule\n"));
        assert!(
            tex.contains(
                "tiny.gguf & DLP & $\\alpha$=0.15, $\\tau$=$\\infty$ & Wanda & 0.7 & 12.35 & \
                 42.00 $\\pm$ 2.00 & 50.00 & 25.00 & 75.00 & 50.00 & 62.50 & 12.50 & 37.50 & 44.64 \\\\\n"
            ),
            "{tex}"
        );
        assert!(tex.ends_with("\\bottomrule\n\\end{tabular}\n"));
        let csv = render(&got, Format::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "model,allocation,params,metric,mode,p,n_of_m,dense_ppl,pruned_ppl,pruned_ppl_sd,draws,\
             boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa,mean_acc,tasks"
        );
        assert_eq!(
            lines[1],
            "tiny.gguf,dlp,\"α=0.15, τ=∞\",wanda,faithful,0.7,,12.345,42,2,3,\
             0.5,0.25,0.75,0.5,0.625,0.125,0.375,0.44642857142857145,7"
        );
    }

    #[test]
    fn missing_measurements_are_dashes_and_parameters_follow_the_allocation() {
        let mut r = crate::study::sample::report();
        r.params.alloc.allocation = Allocation::Owl;
        r.params.mode = Mode::Preview;
        r.params.metric = Metric::SparseGpt;
        r.ppl.dense = None;
        // One draw is no spread; a subset of the tasks is a mean over fewer tasks.
        r.calib_draws = Some(CalibDraws::new(vec![40.0], vec![vec![0.6, 0.8]]));
        r.zeroshot = Some(ZeroShotPair {
            dense: zs(&[("rte", 0.5)]),
            pruned: Some(zs(&[("rte", 0.5), ("boolq", 0.25)])),
        });
        let md = render(&rows(&[r.clone()]), Format::Markdown);
        assert_eq!(
            md.lines().nth(2).unwrap(),
            "| demo | OWL | λ=0.08, M=5 | SparseGPT (preview) | 0.7 | — | 45.68 | 25.00 | 50.00 \
             | — | — | — | — | — | 37.50 (2 tasks) |"
        );
        r.params.alloc.allocation = Allocation::Uniform;
        r.params.pattern = Pattern::NOfM { n: 2, m: 4 };
        r.zeroshot = None;
        let csv = render(&rows(&[r.clone()]), Format::Csv);
        assert_eq!(
            csv.lines().nth(1).unwrap(),
            "demo,uniform,,sparsegpt,preview,0.5,2:4,,45.678,,,,,,,,,,,"
        );
        let md = render(&rows(&[r.clone()]), Format::Markdown);
        assert!(md.contains("| demo | uniform | — | SparseGPT (preview) | 2:4 | — | 45.68 |"));
        r.params.alloc.allocation = Allocation::Alpha;
        assert_eq!(row(&r).params, "ε=0.2");
    }

    #[test]
    fn latex_escapes_text() {
        assert_eq!(tex("a_b & 50%"), "a\\_b \\& 50\\%");
    }
}
