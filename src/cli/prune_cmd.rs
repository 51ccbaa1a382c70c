//! `dlpx prune`: the headless pruning pipeline. Flags and a replayed config become an
//! experiment's setup and a run spec; the experiment runs it; this writes and prints it.

use color_eyre::eyre::{bail, Result, WrapErr};

use crate::cli::commands::Ctx;
use crate::cli::{AlphaArg, PruneArgs, SaveFormat};
use crate::experiment::{DataSpec, Experiment, Observer, RunSpec, Setup};
use crate::export::compressed::Format;
use crate::prune::mask::Pattern;
use crate::prune::params::Param;
use crate::prune::pipeline::{Plan, PruneParams};
use crate::report::Report;

/// Merge a replayed config (if any) with the flags; flags win.
fn resolve(a: &PruneArgs) -> Result<(PruneParams, DataSpec, Option<Report>)> {
    let base = match &a.config {
        Some(p) => Some(Report::load(p)?),
        None => None,
    };
    let mut p = base.as_ref().map(|r| r.params.clone()).unwrap_or_default();
    let mut d = match &base {
        Some(r) => DataSpec::of_report(&r.data),
        None => DataSpec::default(),
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
    // The numbers through the parameter table's setters.
    let alpha = match a.alpha {
        Some(AlphaArg::Value(v)) => Some(v),
        _ => None,
    };
    for (param, v) in [
        (Param::Sparsity, a.sparsity),
        (Param::Alpha, alpha),
        (Param::Tau, a.tau),
        (Param::OwlM, a.owl_m),
        (Param::OwlLambda, a.owl_lambda),
        (Param::AlphaEps, a.alpha_eps),
    ] {
        if let Some(v) = v {
            param.set(&mut p, v);
        }
    }
    if let Some(v) = a.metric {
        p.metric = v.into();
    }
    if let Some(v) = a.allocation {
        p.alloc.allocation = v;
    }
    if let Some(v) = a.statistic {
        p.statistic = v.into();
    }
    if let Some(v) = a.clamp {
        p.alloc.clamp = v.into();
    }
    if let Some(v) = a.granularity {
        p.granularity = v.into();
    }
    if let Some(v) = a.pattern {
        p.pattern = v;
    }
    if let Some(v) = a.mode {
        p.mode = v.into();
    }
    if !a.pins.is_empty() {
        p.alloc.overrides = a.pins.clone();
    }
    // Everything that does not need the model is checked before any work or any write.
    d.sources()
        .wrap_err("--calib/--eval/--calib-samples/--seq-len")?;
    p.validate(usize::MAX)?;
    Ok((p, d, base))
}

pub fn run(ctx: &mut Ctx, a: &PruneArgs) -> Result<()> {
    let (params, data, base) = resolve(a)?;
    if a.alpha == Some(AlphaArg::Auto) && !Param::Alpha.applies_to(params.alloc.allocation) {
        bail!("--alpha auto searches DLP's range α: use it with --allocation dlp (the default)");
    }
    let compressed = check_outputs(a, &params)?;
    let setup = Setup {
        stats_cache: !(a.no_stats_cache || a.no_cache),
        dense_cache: !a.no_cache,
        metric: params.metric,
        ..ctx.setup(&a.model, data)?
    };
    let spec = run_spec(a, params, &setup)?;
    let obs = &mut ctx.progress;
    let mut x = Experiment::open(&setup, obs)?;
    let run = x.run(spec, obs)?;
    if let Some(b) = &base {
        let same = b.blocks.len() == run.plan.block.len()
            && b.blocks
                .iter()
                .zip(&run.plan.block)
                .all(|(x, y)| x.target_sparsity.to_bits() == y.to_bits());
        if !same {
            obs.status("warning: the replayed config's per-block sparsities differ from this run's (different model or data?)");
        }
    }
    let report = run.report;
    write_outputs(a, &report, &x, compressed, obs)?;
    if a.json {
        println!("{}", report.to_json()?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// The run's options from the flags, checked before any work (a misspelt task should not cost
/// a calibration).
fn run_spec(a: &PruneArgs, params: PruneParams, setup: &Setup) -> Result<RunSpec<'static>> {
    let tasks = a.task.spec(a.tasks.as_deref())?;
    if a.calib_draws == 0 {
        bail!("--calib-draws must be at least 1 (1: no extra draws)");
    }
    if a.calib_draws > 1 && setup.data.eval.is_none() {
        bail!("--calib-draws compares pruned perplexities: it needs evaluation data (not --eval none)");
    }
    if a.task.limit == Some(0) {
        bail!(
            "--task-limit 0 leaves no example to score; give at least 1 (or leave it out for all)"
        );
    }
    let check_recipe: fn(&PruneParams, &Plan) -> Result<()> = |p, pl| {
        crate::export::recipe::check_expressible(p, pl.n_of_m.as_deref()).wrap_err("--recipe-out")
    };
    Ok(RunSpec {
        alpha_auto: (a.alpha == Some(AlphaArg::Auto)).then_some(a.alpha_holdout),
        calib_draws: a.calib_draws,
        tasks,
        quantize: a.quantize.map(Into::into),
        prompts: a.prompt.clone(),
        max_new_tokens: a.max_new_tokens,
        speed: true,
        // Before pruning: an allocation the recipe cannot state costs no work.
        check_plan: a.recipe_out.is_some().then_some(check_recipe),
        ..RunSpec::new(params)
    })
}

/// Check every output path and format before any work; the compressed format `--save` writes.
fn check_outputs(a: &PruneArgs, params: &PruneParams) -> Result<Option<Format>> {
    if let Some(dir) = &a.save {
        match a.format {
            SaveFormat::Gguf => crate::export::gguf::check_target(dir)?,
            _ => crate::model::ensure_free_dir(dir)?,
        }
    }
    let compressed = match (a.format, params.pattern) {
        (SaveFormat::Dense | SaveFormat::Gguf, _) => None,
        (SaveFormat::Compressed, Pattern::Unstructured) => Some(Format::SparseBitmask),
        (SaveFormat::Compressed, Pattern::NOfM { m: 4, .. }) => Some(Format::Sparse24Bitmask),
        (SaveFormat::Compressed, p) => bail!(
            "--format compressed writes unstructured or 2:4 sparsity (compressed-tensors has no \
             format for {p}); use --format dense"
        ),
    };
    if a.recipe_out.is_some() {
        crate::export::recipe::check_expressible(params, None).wrap_err("--recipe-out")?;
    }
    for f in [&a.report, &a.ratios_out, &a.recipe_out]
        .into_iter()
        .flatten()
    {
        crate::assets::ensure_parent_dir(f)?;
    }
    Ok(compressed)
}

/// Write the report, the ratios, the recipe and the pruned model where the flags ask.
fn write_outputs(
    a: &PruneArgs,
    report: &Report,
    x: &Experiment,
    compressed: Option<Format>,
    obs: &mut dyn Observer,
) -> Result<()> {
    if let Some(path) = &a.report {
        report.save(path)?;
    }
    if let Some(path) = &a.ratios_out {
        crate::assets::write_atomic(
            path,
            serde_json::to_string(&report.keep_ratios())?.as_bytes(),
        )?;
    }
    if let Some(path) = &a.recipe_out {
        let yaml = crate::export::recipe::llm_compressor_recipe(report)?;
        crate::assets::write_atomic(path, yaml.as_bytes())?;
    }
    let Some(dir) = &a.save else {
        return Ok(());
    };
    obs.status(&format!("saving the pruned model to {}", dir.display()));
    let quantize = a.quantize.map(Into::into);
    match compressed {
        None if a.format == SaveFormat::Gguf => {
            // GGUF quantizes the pruned weights again, with the function the run measured.
            let s = crate::export::gguf::save_gguf(&x.model, dir, quantize)?;
            obs.status(&format!(
                "GGUF: {} tensors, {:.1} MB, linears in {}",
                s.tensors,
                s.bytes as f64 / 1e6,
                quantize.map(|f| f.name()).unwrap_or("f32")
            ));
        }
        None => crate::model::save_folder(&x.model, dir)?,
        Some(format) => {
            let s = crate::export::save_compressed(&x.model, dir, format)?;
            obs.status(&format!(
                "{}: {} linears compressed, {} left dense; {:.1} MB of tensor data, {:.0} % of the dense export's {:.1} MB",
                format.name(),
                s.compressed,
                s.dense,
                s.bytes as f64 / 1e6,
                100.0 * s.bytes as f64 / s.dense_bytes as f64,
                s.dense_bytes as f64 / 1e6
            ));
        }
    }
    Ok(())
}

/// One line: decode and evaluation speed and the linears' bytes, dense → pruned.
pub fn speed_line(s: &crate::report::SpeedReport) -> String {
    let eval = match (s.dense.eval_tok_s, s.pruned.eval_tok_s) {
        (Some(d), Some(p)) => format!(" · evaluation {d:.0} → {p:.0} tok/s ({:.2}×)", p / d),
        (None, Some(p)) => format!(" · evaluation pruned {p:.0} tok/s (dense from the cache)"),
        _ => String::new(),
    };
    format!(
        "speed (--sparse {}, {} of the linears sparse, {} threads): decode {:.1} → {:.1} tok/s ({:.2}×){eval} · linears {:.0} → {:.0} MB ({:.2}×)",
        s.sparse_mode,
        s.sparse_linears,
        s.threads,
        s.dense.decode_tok_s,
        s.pruned.decode_tok_s,
        s.pruned.decode_tok_s / s.dense.decode_tok_s,
        s.dense.linear_bytes as f64 / 1e6,
        s.pruned.linear_bytes as f64 / 1e6,
        s.pruned.linear_bytes as f64 / s.dense.linear_bytes as f64
    )
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
    if let Some(s) = &r.alpha_search {
        println!(
            "--alpha auto chose α = {} on {} held-out calibration windows (offset {}); held-out perplexity: {}",
            s.chosen,
            s.heldout.windows,
            s.heldout.offset,
            s.trace
                .iter()
                .map(|t| format!("{}→{:.2}", t.alpha, t.ppl))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(c) = &r.calib_draws {
        let (worst, sd) =
            c.block_sd
                .iter()
                .enumerate()
                .fold((0, 0.0), |b, (i, &s)| if s > b.1 { (i, s) } else { b });
        println!(
            "calibration draws: {} disjoint subsets → pruned perplexity {:.3} ± {:.3} (mean ± sd; {}); allocated sparsity sd per block ≤ {:.4} (block {worst})",
            c.draws,
            c.ppl_mean,
            c.ppl_sd,
            c.ppl
                .iter()
                .map(|p| format!("{p:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            sd
        );
    }
    if let Some(z) = &r.zeroshot {
        print!(
            "{}",
            crate::cli::commands::zeroshot_table(&z.dense, z.pruned.as_ref())
        );
    }
    if r.quantized.is_some() {
        print!("{}", crate::cli::commands::stages_table(r));
    }
    if let Some(s) = &r.speed {
        println!("{}", speed_line(s));
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
