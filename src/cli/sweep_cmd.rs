//! `dlpx sweep`: perplexity over a grid of allocation parameters. The experiment layer measures
//! each point ([`Experiment::sweep_point`]); this front end keeps the files: one JSON line per
//! finished point, appended as it finishes (so an interrupted sweep keeps its points and resumes
//! from the file), a CSV beside it, `--shard i/n` for one process per GPU or machine, and
//! `--merge` to join the shards. It prints a table (each point against the best one, with the
//! paired bootstrap interval over the evaluation windows) and a chart of perplexity against
//! the swept parameter.

use std::io::Write;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};

use crate::cli::commands::Ctx;
use crate::cli::SweepArgs;
use crate::eval::compare::paired_bootstrap;
use crate::experiment::sweep::{
    read_sweep as read_file, Axis, Grid, Shard, SweepHeader as Header, SweepLine as Line, SweepRow,
    SWEEP_FORMAT,
};
use crate::experiment::{Experiment, Setup};
use crate::prune::allocate::Allocation;
use crate::prune::pipeline::PruneParams;
use crate::report::Report;

fn axes_of(grid: &Grid) -> Vec<(String, Vec<Option<f64>>)> {
    grid.axes
        .iter()
        .map(|a| {
            (
                a.param.sweep_name().to_string(),
                a.values
                    .iter()
                    .map(|v| v.is_finite().then_some(*v))
                    .collect(),
            )
        })
        .collect()
}

/// `--out`: a prefix, or a folder (an existing one, or a name ending in `/`) for
/// `FOLDER/dlpx-sweep.*`.
fn prefix_of(out: &str) -> String {
    if out.ends_with('/') || Path::new(out).is_dir() {
        format!("{}/dlpx-sweep", out.trim_end_matches('/'))
    } else {
        out.to_string()
    }
}

fn paths(out: &str, shard: Option<Shard>) -> (PathBuf, PathBuf) {
    let prefix = prefix_of(out);
    let stem = match shard {
        Some(s) => format!("{prefix}.{}of{}", s.index, s.count),
        None => prefix,
    };
    (
        PathBuf::from(format!("{stem}.jsonl")),
        PathBuf::from(format!("{stem}.csv")),
    )
}

/// The prefix and shard of a shard file's name (`PREFIX.iofn.jsonl`).
fn shard_of_name(path: &Path) -> Option<(String, Shard)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".jsonl")?;
    let (prefix, tag) = stem.rsplit_once('.')?;
    let (i, n) = tag.split_once("of")?;
    let (index, count) = (i.parse().ok()?, n.parse().ok()?);
    (index < count && !prefix.is_empty()).then_some((prefix.to_string(), Shard { index, count }))
}

/// `--merge` inputs: files as given; a folder stands for every shard file in it.
fn merge_inputs(given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in given {
        if !p.is_dir() {
            out.push(p.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(p)
            .wrap_err_with(|| format!("cannot list `{}`", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && shard_of_name(f).is_some())
            .collect();
        if found.is_empty() {
            bail!(
                "--merge `{}`: no shard files (PREFIX.iofn.jsonl, as `dlpx sweep --shard` writes them) in it",
                p.display()
            );
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// Shard files must make up one whole sweep: one prefix, one shard count, every shard there,
/// each with all of its points and only its own. Lists every problem found.
fn check_shards(header: &Header, files: &[(PathBuf, Vec<SweepRow>)]) -> Result<()> {
    let named: Vec<(&Path, String, Shard, &[SweepRow])> = files
        .iter()
        .filter_map(|(p, r)| shard_of_name(p).map(|(pre, s)| (p.as_path(), pre, s, r.as_slice())))
        .collect();
    if named.len() != files.len() {
        // Files named by hand: joined as they are.
        return Ok(());
    }
    let mut prefixes: Vec<&str> = named.iter().map(|n| n.1.as_str()).collect();
    prefixes.sort();
    prefixes.dedup();
    if prefixes.len() > 1 {
        bail!(
            "--merge: shard files of {} sweeps ({}); merge one sweep's files at a time",
            prefixes.len(),
            prefixes
                .iter()
                .map(|p| format!("{p}.*"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let mut counts: Vec<usize> = named.iter().map(|n| n.2.count).collect();
    counts.sort();
    counts.dedup();
    if counts.len() > 1 {
        bail!(
            "--merge: shards of different splits ({}); merge the files of one split",
            counts
                .iter()
                .map(|c| format!("of {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let n = counts[0];
    let prefix = prefixes[0];
    let total = header.points();
    let mut problems = Vec::new();
    let missing: Vec<usize> = (0..n)
        .filter(|i| !named.iter().any(|f| f.2.index == *i))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "missing shard{} {} (run {} with --shard i/{n} or as those array tasks)",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|i| format!("{i}/{n} ({prefix}.{i}of{n}.jsonl)"))
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() > 1 { "them" } else { "it" }
        ));
    }
    for (path, _, s, rows) in &named {
        if let Some(r) = rows.iter().find(|r| r.index % n != s.index) {
            problems.push(format!(
                "`{}` holds point {} ({}), which is not shard {}/{n}'s",
                path.display(),
                r.index,
                r.key,
                s.index
            ));
            continue;
        }
        let owned = (0..total).filter(|k| k % n == s.index).count();
        let mut keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
        keys.sort();
        keys.dedup();
        if keys.len() < owned {
            problems.push(format!(
                "shard {}/{n} (`{}`) has {} of its {owned} points: it has not finished (run it again: it resumes from its file)",
                s.index,
                path.display(),
                keys.len()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        bail!("--merge: {}", problems.join("; "))
    }
}

pub fn run(ctx: &mut Ctx, a: &SweepArgs) -> Result<()> {
    if !a.merge.is_empty() {
        return merge(a);
    }
    // Everything that needs no model is checked first.
    let grid = grid_of(a)?;
    let shard = shard_of(ctx, a)?;
    let mut base = match &a.config {
        Some(p) => Report::load(p)?.params,
        None => PruneParams::default(),
    };
    base.mode = a.mode.into();
    base.metric = a.metric.into();
    let points = grid.points();
    for p in &points {
        p.params(&base)
            .validate(usize::MAX)
            .wrap_err_with(|| format!("grid point {}", p.key()))?;
    }
    let data = a.data.spec();
    data.sources()?;
    let (jsonl, csv) = paths(&a.out, shard);
    if a.out.ends_with('/') {
        // A folder named with its slash is made (a fresh shared folder on a cluster).
        std::fs::create_dir_all(&a.out).wrap_err_with(|| format!("cannot create `{}`", a.out))?;
    }

    let setup = Setup {
        stats_cache: !(a.no_stats_cache || a.no_cache),
        dense_cache: !a.no_cache,
        metric: a.metric.into(),
        keeps_pruned_copy: true,
        ..ctx.setup(&a.model, data)?
    };
    let obs = &mut ctx.progress;
    let x = Experiment::open(&setup, obs)?;
    let header = Header {
        dlpx_sweep: SWEEP_FORMAT,
        model: x.summary.info.clone(),
        data: x.summary.data.clone(),
        base: base.clone(),
        allocations: grid.allocations.clone(),
        axes: axes_of(&grid),
    };
    let mut rows = resume(&jsonl, &header, a.fresh)?;
    let todo: Vec<_> = points
        .iter()
        .filter(|p| shard.is_none_or(|s| s.owns(p)))
        .filter(|p| !rows.iter().any(|r| r.key == p.key()))
        .collect();
    let owned = points
        .iter()
        .filter(|p| shard.is_none_or(|s| s.owns(p)))
        .count();
    obs.status(&format!(
        "{} grid points{}: {} done, {} to run → {}",
        points.len(),
        shard
            .map(|s| format!(" ({} in shard {}/{})", owned, s.index, s.count))
            .unwrap_or_default(),
        owned - todo.len(),
        todo.len(),
        jsonl.display()
    ));
    let spectra = grid.allocations.iter().any(|a| a.needs_spectra());
    let (cal, _) = x.calibrate(base.owl_m, spectra, obs)?;
    let (dense, _) = x.dense_perplexity(obs)?;
    let started = std::time::Instant::now();
    for (i, p) in todo.iter().enumerate() {
        obs.status(&format!(
            "point {}/{} {}{}",
            i + 1,
            todo.len(),
            p.key(),
            eta(started, i, todo.len())
        ));
        let row = x.sweep_point(&cal, &base, p, None, obs)?;
        append(&jsonl, &row)?;
        rows.push(row);
    }
    rows.sort_by_key(|r| r.index);
    write_csv(&csv, &grid_names(&header), &rows)?;
    show(a.json, &header, &rows, dense.map(|d| d.ppl), &jsonl, &csv)
}

/// The grid of `--allocation` and `--param`.
fn grid_of(a: &SweepArgs) -> Result<Grid> {
    let allocations = a
        .allocation
        .split(',')
        .map(|s| {
            Allocation::from_name(s).ok_or_else(|| {
                eyre!(
                    "--allocation: `{}` is not one of {}",
                    s.trim(),
                    Allocation::names()
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let axes = a
        .params
        .iter()
        .map(|s| Axis::parse(s))
        .collect::<Result<Vec<_>>>()?;
    Grid::new(allocations, axes)
}

/// This process's shard: `--shard i/n`, or `--shard auto` from the scheduler's environment.
fn shard_of(ctx: &mut Ctx, a: &SweepArgs) -> Result<Option<Shard>> {
    Ok(match a.shard.as_deref().map(str::trim) {
        Some("auto") => {
            // The environment is read here, once; the resolution is a pure function of it.
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let auto = crate::experiment::scheduler::resolve(&env, a.shards)?;
            ctx.progress.status(&auto.render(super::setting_flag));
            Some(auto.shard)
        }
        Some(s) => {
            if a.shards.is_some() {
                bail!("--shards N is the shard count for --shard auto; with --shard i/n the count is n");
            }
            Some(Shard::parse(s)?)
        }
        None => None,
    })
}

/// The rows already in the sweep file when it is this sweep's (else refused), or a fresh file
/// with only the header (`--fresh`, or no file yet).
fn resume(jsonl: &Path, header: &Header, fresh: bool) -> Result<Vec<SweepRow>> {
    let rows = match (fresh, jsonl.exists()) {
        (false, true) => {
            let (h, rows) = read_file(jsonl)?;
            if h != *header {
                bail!(
                    "`{}` is a sweep of another model, data, grid or base parameters: use --fresh \
                     to replace it or another --out",
                    jsonl.display()
                );
            }
            rows
        }
        _ => {
            crate::assets::write_atomic(
                jsonl,
                format!(
                    "{}\n",
                    serde_json::to_string(&Line::Header(Box::new(header.clone())))?
                )
                .as_bytes(),
            )?;
            Vec::new()
        }
    };
    // A truncated last line was dropped: rewrite the file so appends start on a fresh line.
    rewrite(jsonl, header, &rows)?;
    Ok(rows)
}

/// The time left after `i` of `n` points, from the time so far (nothing before the first ends).
fn eta(started: std::time::Instant, i: usize, n: usize) -> String {
    match i {
        0 => String::new(),
        _ => format!(
            "  (ETA {:.0}s)",
            started.elapsed().as_secs_f64() / i as f64 * (n - i) as f64
        ),
    }
}

/// Rewrite a sweep file from its header and rows (atomically).
fn rewrite(path: &Path, header: &Header, rows: &[SweepRow]) -> Result<()> {
    let mut text = serde_json::to_string(&Line::Header(Box::new(header.clone())))? + "\n";
    for r in rows {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    crate::assets::write_atomic(path, text.as_bytes())
}

/// Append one finished point as one write of one line, flushed to the disk.
fn append(path: &Path, row: &SweepRow) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .wrap_err_with(|| format!("cannot append to `{}`", path.display()))?;
    f.write_all(format!("{}\n", serde_json::to_string(row)?).as_bytes())?;
    f.sync_data()?;
    Ok(())
}

fn grid_names(h: &Header) -> Vec<String> {
    h.axes.iter().map(|(n, _)| n.clone()).collect()
}

fn write_csv(path: &Path, names: &[String], rows: &[SweepRow]) -> Result<()> {
    let mut s = format!(
        "index,allocation,{}target_sparsity,achieved_sparsity,ppl,seconds\n",
        names.iter().map(|n| format!("{n},")).collect::<String>()
    );
    for r in rows {
        let vals: String = r
            .values
            .iter()
            .map(|(_, v)| match v {
                Some(v) => format!("{v},"),
                None => "inf,".into(),
            })
            .collect();
        s.push_str(&format!(
            "{},{},{vals}{},{},{},{:.3}\n",
            r.index,
            r.allocation.name(),
            r.target_sparsity,
            r.achieved_sparsity,
            r.ppl.map(|p| p.to_string()).unwrap_or_default(),
            r.seconds
        ));
    }
    crate::assets::write_atomic(path, s.as_bytes())
}

/// `--merge`: join shard files with equal headers.
fn merge(a: &SweepArgs) -> Result<()> {
    let inputs = merge_inputs(&a.merge)?;
    let mut header: Option<Header> = None;
    let mut rows: Vec<SweepRow> = Vec::new();
    let mut files = Vec::new();
    for f in &inputs {
        let (h, r) = read_file(f)?;
        match &header {
            None => header = Some(h),
            Some(first) if *first != h => bail!(
                "`{}` is a sweep of another model, data, grid or base parameters than `{}`",
                f.display(),
                inputs[0].display()
            ),
            Some(_) => {}
        }
        for row in &r {
            if !rows.iter().any(|x| x.key == row.key) {
                rows.push(row.clone());
            }
        }
        files.push((f.clone(), r));
    }
    let header = header.ok_or_else(|| eyre!("--merge needs at least one file"))?;
    check_shards(&header, &files)?;
    rows.sort_by_key(|r| r.index);
    let (jsonl, csv) = paths(&a.out, None);
    if inputs.iter().any(|f| f == &jsonl) {
        bail!(
            "--out `{}` would overwrite an input of --merge; choose another --out",
            a.out
        );
    }
    rewrite(&jsonl, &header, &rows)?;
    write_csv(&csv, &grid_names(&header), &rows)?;
    show(a.json, &header, &rows, None, &jsonl, &csv)
}

/// The table (and chart) on stdout, or the rows as JSON.
fn show(
    json: bool,
    header: &Header,
    rows: &[SweepRow],
    dense: Option<f64>,
    jsonl: &Path,
    csv: &Path,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let predictions = header.data.predictions_per_window();
    let best = rows.iter().filter(|r| r.ppl.is_some()).min_by(|a, b| {
        a.ppl
            .unwrap_or(f64::MAX)
            .total_cmp(&b.ppl.unwrap_or(f64::MAX))
    });
    let names = grid_names(header);
    let mut head = format!("{:>5}  {:<9}", "point", "alloc");
    for n in &names {
        head.push_str(&format!(" {n:>10}"));
    }
    head.push_str("  achieved        ppl  vs best (95 % paired bootstrap over windows)");
    println!("{head}");
    for r in rows {
        let mut line = format!("{:>5}  {:<9}", r.index, r.allocation.name());
        for (_, v) in &r.values {
            line.push_str(&match v {
                Some(v) => format!(" {v:>10.4}"),
                None => format!(" {:>10}", "inf"),
            });
        }
        let vs = match (best, &r.window_nll) {
            (Some(b), _) if b.key == r.key => "best".to_string(),
            (Some(b), Some(w)) if predictions > 0 => match &b.window_nll {
                Some(bw) => paired_bootstrap(bw, w, predictions, 1000, 0.95, 0)
                    .map(|c| {
                        let star = if c.excludes_one() { "*" } else { "" };
                        format!("×{:.3} [{:.3}–{:.3}]{star}", c.ratio, c.lo, c.hi)
                    })
                    .unwrap_or_default(),
                None => String::new(),
            },
            _ => String::new(),
        };
        line.push_str(&format!(
            "  {:>8.4}  {:>9}  {vs}",
            r.achieved_sparsity,
            r.ppl.map(|p| format!("{p:.3}")).unwrap_or("—".into())
        ));
        println!("{line}");
    }
    if let Some(d) = dense {
        println!("dense perplexity {d:.3}");
    }
    println!("*: the interval excludes 1 (a difference larger than the evaluation windows' noise; calibration noise not included)");
    if let Some(chart) = chart(header, rows, 76, 20) {
        print!("{chart}");
    }
    println!(
        "{} points in {} and {}",
        rows.len(),
        jsonl.display(),
        csv.display()
    );
    Ok(())
}

/// Perplexity (log scale) against the first axis with several values, one line per allocation
/// and combination of the other axes' values; drawn with ratatui's chart off-screen.
fn chart(header: &Header, rows: &[SweepRow], w: u16, h: u16) -> Option<String> {
    use ratatui::style::Style;
    use ratatui::symbols::Marker;
    use ratatui::text::Span;
    use ratatui::widgets::{Axis as ChartAxis, Chart, Dataset, GraphType};

    let x_axis = header
        .axes
        .iter()
        .position(|(_, v)| v.len() > 1 && v.iter().all(Option::is_some))?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in rows {
        let (Some(ppl), Some(Some(x))) = (r.ppl, r.values.get(x_axis).map(|v| v.1)) else {
            continue;
        };
        let mut name = r.allocation.name().to_string();
        for (i, (n, v)) in r.values.iter().enumerate() {
            if i != x_axis {
                name.push_str(&format!(
                    " {n}={}",
                    v.map(|v| v.to_string()).unwrap_or("inf".into())
                ));
            }
        }
        match series.iter_mut().find(|s| s.0 == name) {
            Some(s) => s.1.push((x, ppl.ln())),
            None => series.push((name, vec![(x, ppl.ln())])),
        }
    }
    if series.is_empty() {
        return None;
    }
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (x0, x1, y0, y1) = pts.fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    let (y0, y1) = if y1 - y0 < 1e-6 {
        (y0 - 0.05, y1 + 0.05)
    } else {
        (y0, y1)
    };
    // Lines in braille dots; each series' points in its own marker (the output has no colours),
    // which the legend names.
    let markers = [(Marker::Dot, '•'), (Marker::Block, '█'), (Marker::Bar, '▄')];
    let mut datasets: Vec<Dataset> = Vec::new();
    for (i, (name, data)) in series.iter().enumerate() {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::default())
                .data(data),
        );
        let (marker, glyph) = markers[i % markers.len()];
        datasets.push(
            Dataset::default()
                .name(format!("{glyph} {name}"))
                .marker(marker)
                .graph_type(GraphType::Scatter)
                .style(Style::default())
                .data(data),
        );
    }
    let label = |v: f64| Span::raw(format!("{:.1}", v.exp()));
    let x_name = &header.axes[x_axis].0;
    let chart = Chart::new(datasets)
        .x_axis(
            ChartAxis::default()
                .title(format!("{x_name}  (perplexity on a log scale)"))
                .bounds([x0, x1])
                .labels(vec![
                    Span::raw(format!("{x0}")),
                    Span::raw(format!("{}", (x0 + x1) / 2.0)),
                    Span::raw(format!("{x1}")),
                ]),
        )
        .y_axis(ChartAxis::default().bounds([y0, y1]).labels(vec![
            label(y0),
            label((y0 + y1) / 2.0),
            label(y1),
        ]));
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).ok()?;
    term.draw(|f| f.render_widget(chart, f.area())).ok()?;
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let line: String = (0..w).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Some(out)
}
