//! `dlpx prune`: the headless pruning pipeline (also what the TUI will drive).

use std::time::Instant;

use color_eyre::eyre::{bail, Result};

use crate::cli::PruneArgs;
use crate::commands::Ctx;
use crate::data::{source_windows, DemoSplit, TextSource};
use crate::eval::generate::{generate, GenParams};
use crate::model::{LoadedModel, ModelSource};
use crate::prune::cache::{calibrate_cached, StatsKey};
use crate::prune::pipeline::{achieved, plan, prune_faithful, prune_preview, Mode, PruneParams};
use crate::report::{
    BlockReport, DataInfo, DataSet, GenerationPair, ModelInfo, Overall, PplInfo, Report, Timings,
    Tool, SCHEMA_VERSION,
};

/// Data settings of a run (from flags, or from a replayed config).
struct DataArgs {
    calib: String,
    eval: Option<String>,
    calib_samples: usize,
    seq_len: usize,
    eval_windows: usize,
    seed: u64,
}

/// Merge a replayed config (if any) with the flags; flags win.
fn resolve(a: &PruneArgs) -> Result<(PruneParams, DataArgs, Option<Report>)> {
    let base = match &a.config {
        Some(p) => Some(Report::load(p)?),
        None => None,
    };
    let mut p = base.as_ref().map(|r| r.params.clone()).unwrap_or_default();
    let mut d = match &base {
        Some(r) => DataArgs {
            calib: r.data.calib.source.clone(),
            eval: r.data.eval.as_ref().map(|e| e.source.clone()),
            calib_samples: r.data.calib.windows,
            seq_len: r.data.calib.seq_len,
            eval_windows: r.data.eval.as_ref().map(|e| e.windows).unwrap_or(64),
            seed: r.data.calib.seed.unwrap_or(0),
        },
        None => DataArgs {
            calib: "demo".into(),
            eval: Some("demo".into()),
            calib_samples: 32,
            seq_len: 256,
            eval_windows: 64,
            seed: 0,
        },
    };
    if let Some(v) = &a.calib {
        d.calib = v.clone();
    }
    if let Some(v) = &a.eval {
        d.eval = (v != "none").then(|| v.clone());
    }
    if let Some(v) = a.calib_samples {
        d.calib_samples = v;
    }
    if let Some(v) = a.seq_len {
        d.seq_len = v;
    }
    if let Some(v) = a.eval_windows {
        d.eval_windows = v;
    }
    if let Some(v) = a.seed {
        d.seed = v;
    }
    if let Some(v) = a.metric {
        p.metric = v;
    }
    if let Some(v) = a.allocation {
        p.alloc.allocation = v;
    }
    if let Some(v) = a.sparsity {
        p.alloc.sparsity = v;
    }
    if let Some(v) = a.alpha {
        p.alloc.alpha = v;
    }
    if let Some(v) = a.tau {
        p.alloc.tau = v.is_finite().then_some(v);
    }
    if let Some(v) = a.statistic {
        p.statistic = v;
    }
    if let Some(v) = a.clamp {
        p.alloc.clamp = v;
    }
    if let Some(v) = a.granularity {
        p.granularity = v;
    }
    if let Some(v) = a.owl_m {
        p.owl_m = v;
    }
    if let Some(v) = a.owl_lambda {
        p.alloc.owl_lambda = v;
    }
    if let Some(v) = a.alpha_eps {
        p.alloc.alpha_eps = v;
    }
    if let Some(v) = a.pattern {
        p.pattern = v;
    }
    if let Some(v) = a.mode {
        p.mode = v;
    }
    if !a.pins.is_empty() {
        p.alloc.overrides = a.pins.clone();
    }
    if d.calib_samples == 0 {
        bail!("--calib-samples must be at least 1");
    }
    // Everything that does not need the model is checked before any work or any write.
    p.validate(usize::MAX)?;
    Ok((p, d, base))
}

/// The report's description of a text set.
pub fn dataset(
    sha256: String,
    windows: usize,
    seq_len: usize,
    arg: &str,
    seed: Option<u64>,
) -> DataSet {
    DataSet {
        source: arg.to_string(),
        sha256,
        windows,
        seq_len,
        seed,
    }
}

/// What the calibration statistics depend on besides model, windows and length: the text, and
/// the sampler's seed for document sources.
pub fn stats_data_key(set: &DataSet) -> String {
    match set.seed {
        Some(s) => format!("{}+seed{s}", set.sha256),
        None => set.sha256.clone(),
    }
}

pub fn model_info(m: &LoadedModel, dtype: candle_core::DType) -> Result<ModelInfo> {
    let (source, sha256, revision) = match &m.source {
        ModelSource::Demo => (
            "demo".to_string(),
            Some(crate::data::demo::GGUF_SHA256.to_string()),
            None,
        ),
        ModelSource::Gguf(p) => (
            p.display().to_string(),
            Some(crate::data::demo::sha256_file(p)?),
            None,
        ),
        ModelSource::Folder(p) => (p.display().to_string(), None, None),
        ModelSource::Hub { id, revision } => (id.clone(), None, Some(revision.clone())),
    };
    let c = &m.llama.config;
    Ok(ModelInfo {
        source,
        sha256,
        revision,
        architecture: c.arch.model_type().to_string(),
        blocks: c.num_hidden_layers,
        parameters: c.param_count(),
        dtype: format!("{dtype:?}").to_lowercase(),
    })
}

/// How the perplexity was measured, so numbers are never compared across protocols.
pub fn protocol_text(windows: usize, seq_len: usize, label: &str) -> String {
    format!(
        "{windows} windows × {seq_len} tokens of {label}, each its own sequence; ppl = exp(mean NLL over {} predictions)",
        windows * (seq_len - 1)
    )
}

fn gens(m: &LoadedModel, prompts: &[String], max_new: usize) -> Result<Vec<String>> {
    let params = GenParams {
        max_new_tokens: max_new,
        ..GenParams::default()
    };
    prompts
        .iter()
        .map(|p| Ok(generate(m, p, &params, &mut |_| true)?.text))
        .collect()
}

pub fn run(ctx: &mut Ctx, a: &PruneArgs) -> Result<()> {
    let (params, d, base) = resolve(a)?;
    let calib_src = TextSource::parse(&d.calib, DemoSplit::Calib)?;
    let eval_src = d
        .eval
        .as_deref()
        .map(|e| TextSource::parse(e, DemoSplit::Eval))
        .transpose()?;
    if let Some(dir) = &a.save {
        crate::model::ensure_free_dir(dir)?;
    }
    for f in [&a.report, &a.ratios_out].into_iter().flatten() {
        let parent = f
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        if !parent.is_dir() {
            bail!(
                "cannot write `{}`: folder `{}` does not exist",
                f.display(),
                parent.display()
            );
        }
    }
    let mut timings = Timings::default();
    // Measured before the weights are loaded, so the estimate (weights included) compares with it.
    let available = match ctx.device {
        candle_core::Device::Cpu => crate::prune::memory::available_bytes(),
        _ => None,
    };
    let t = Instant::now();
    let mut m = ctx.load_model(&a.model)?;
    timings.load_s = t.elapsed().as_secs_f64();
    let n_blocks = m.llama.blocks.len();
    params.validate(n_blocks)?;
    let est = crate::prune::memory::Estimate::new(
        &m.llama.config,
        ctx.dtype.size_in_bytes(),
        d.calib_samples,
        d.seq_len,
        params.metric,
        m.llama.offload.is_some(),
    );
    ctx.progress.status(&est.describe());
    est.check(available, d.calib_samples)?;

    let p = &mut ctx.progress;
    let (calib_windows, calib_sha) = source_windows(
        &calib_src,
        &m,
        d.calib_samples,
        d.seq_len,
        true,
        d.seed,
        &mut |s| p.status(s),
    )?;
    let calib_set = dataset(
        calib_sha,
        d.calib_samples,
        d.seq_len,
        &d.calib,
        calib_src.is_sampled().then_some(d.seed),
    );
    let (eval_windows, eval_set) = match &eval_src {
        Some(src) => {
            let (w, sha) =
                source_windows(src, &m, d.eval_windows, d.seq_len, false, 0, &mut |s| {
                    p.status(s)
                })?;
            let set = dataset(
                sha,
                w.len(),
                d.seq_len,
                d.eval.as_deref().unwrap_or("demo"),
                None,
            );
            (Some(w), Some(set))
        }
        None => (None, None),
    };

    let t = Instant::now();
    let dense_ppl = match &eval_windows {
        Some(w) => Some(ctx.perplexity(&m, w)?.ppl),
        None => None,
    };
    timings.eval_s += t.elapsed().as_secs_f64();
    let dense_gens = gens(&m, &a.prompt, a.max_new_tokens)?;

    let t = Instant::now();
    let key = match a.no_stats_cache {
        true => None,
        false => Some(StatsKey::new(
            &m,
            &stats_data_key(&calib_set),
            d.calib_samples,
            d.seq_len,
            ctx.dtype,
        )?),
    };
    let p = &mut ctx.progress;
    let (cal, hit) = calibrate_cached(
        &m,
        &calib_windows,
        key.as_ref(),
        params.owl_m,
        // The spectra cost an eigenvalue problem per linear: only AlphaPruning needs them.
        params.alloc.allocation == crate::prune::allocate::Allocation::Alpha,
        &mut |bp| {
            p.step(
                "calibrate block",
                bp.block,
                bp.blocks,
                "tok",
                bp.tokens / bp.blocks.max(1),
                bp.started,
            );
            true
        },
        &mut |w| eprintln!("{w}"),
    )?;
    timings.calibrate_s = t.elapsed().as_secs_f64();
    timings.stats_cache_hit = hit;
    if hit {
        ctx.progress
            .status("calibration statistics from the cache (--no-stats-cache recomputes them)");
    }

    let pl = plan(&m.llama, &cal, &params)?;
    timings.allocate_us = pl.allocate_us;
    if let Some(b) = &base {
        let same = b.blocks.len() == pl.block.len()
            && b.blocks
                .iter()
                .zip(&pl.block)
                .all(|(x, y)| x.target_sparsity.to_bits() == y.to_bits());
        if !same {
            ctx.progress.status("warning: the replayed config's per-block sparsities differ from this run's (different model or data?)");
        }
    }

    let t = Instant::now();
    match params.mode {
        Mode::Preview => prune_preview(&mut m.llama, &cal, &pl, &params)?,
        Mode::Faithful => {
            let p = &mut ctx.progress;
            prune_faithful(&mut m.llama, &calib_windows, &pl, &params, &mut |bp| {
                p.step(
                    "prune block",
                    bp.block,
                    bp.blocks,
                    "tok",
                    bp.tokens / bp.blocks.max(1),
                    bp.started,
                );
                true
            })?
        }
    }
    timings.prune_s = t.elapsed().as_secs_f64();
    let got = achieved(&m.llama)?;

    let t = Instant::now();
    let pruned_ppl = match &eval_windows {
        Some(w) => Some(ctx.perplexity(&m, w)?.ppl),
        None => None,
    };
    timings.eval_s += t.elapsed().as_secs_f64();
    let pruned_gens = gens(&m, &a.prompt, a.max_new_tokens)?;

    let numel = m.llama.config.block_linear_params() as f64;
    let blocks: Vec<BlockReport> = (0..n_blocks)
        .map(|i| BlockReport {
            index: i,
            score: pl.scores[i],
            outlier_ratio: cal.owl[i],
            esd_alpha: cal.esd.get(i).map(|a| a.iter().sum::<f64>() / 7.0),
            target_sparsity: pl.block[i],
            achieved_sparsity: Some(got[i]),
            n_of_m: pl.n_of_m.as_ref().map(|v| v[i]),
        })
        .collect();
    let mean = |v: &[f64]| v.iter().map(|x| x * numel).sum::<f64>() / (numel * v.len() as f64);
    let report = Report {
        schema_version: SCHEMA_VERSION,
        tool: Tool::default(),
        model: model_info(&m, ctx.dtype)?,
        data: DataInfo {
            calib: calib_set,
            eval: eval_set.clone(),
        },
        params: params.clone(),
        blocks,
        overall: Overall {
            target_sparsity: mean(&pl.block),
            achieved_sparsity: Some(mean(&got)),
        },
        ppl: PplInfo {
            dense: dense_ppl,
            pruned: pruned_ppl,
            protocol: protocol_text(
                eval_set.as_ref().map(|e| e.windows).unwrap_or(0),
                d.seq_len,
                &eval_src
                    .as_ref()
                    .map(|s| s.label())
                    .unwrap_or_else(|| "none".into()),
            ),
        },
        generations: a
            .prompt
            .iter()
            .zip(dense_gens.into_iter().zip(pruned_gens))
            .map(|(p, (dn, pr))| GenerationPair {
                prompt: p.clone(),
                dense: dn,
                pruned: pr,
            })
            .collect(),
        timings,
    };

    if let Some(path) = &a.report {
        report.save(path)?;
    }
    if let Some(path) = &a.ratios_out {
        crate::report::write_atomic(
            path,
            serde_json::to_string(&report.keep_ratios())?.as_bytes(),
        )?;
    }
    if let Some(dir) = &a.save {
        ctx.progress
            .status(&format!("saving the pruned model to {}", dir.display()));
        crate::model::save_folder(&m, dir)?;
    }
    if a.json {
        println!("{}", report.to_json()?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    let p = &r.params;
    println!(
        "{} · metric {:?} · allocation {:?} · p {} · α {} · τ {} · F {:?} · clamp {:?} · pattern {} · mode {:?}",
        r.model.source,
        p.metric,
        p.alloc.allocation,
        p.effective_alloc().sparsity,
        p.alloc.alpha,
        p.alloc.tau.map(|t| t.to_string()).unwrap_or("∞".into()),
        p.statistic,
        p.alloc.clamp,
        p.pattern,
        p.mode
    );
    println!(
        "{:>5} {:>12} {:>9} {:>7} {:>8} {:>9}{}",
        "block",
        "score",
        "outl.%",
        "α̂",
        "target",
        "achieved",
        if r.blocks.iter().any(|b| b.n_of_m.is_some()) {
            "    N"
        } else {
            ""
        }
    );
    for b in &r.blocks {
        let n = b.n_of_m.map(|n| format!(" {n:>4}")).unwrap_or_default();
        println!(
            "{:>5} {:>12.6} {:>9.3} {:>7} {:>8.4} {:>9.4}{n}",
            b.index,
            b.score,
            b.outlier_ratio,
            b.esd_alpha
                .map(|a| format!("{a:.3}"))
                .unwrap_or_else(|| "-".into()),
            b.target_sparsity,
            b.achieved_sparsity.unwrap_or(f64::NAN)
        );
    }
    println!(
        "overall target {:.4}, achieved {:.4}",
        r.overall.target_sparsity,
        r.overall.achieved_sparsity.unwrap_or(f64::NAN)
    );
    if let (Some(d), Some(p)) = (r.ppl.dense, r.ppl.pruned) {
        println!(
            "perplexity dense {d:.4} → pruned {p:.4}   ({})",
            r.ppl.protocol
        );
    }
    for g in &r.generations {
        println!(
            "prompt  {}\n  dense   {}\n  pruned  {}",
            g.prompt,
            g.dense.replace('\n', " "),
            g.pruned.replace('\n', " ")
        );
    }
}
