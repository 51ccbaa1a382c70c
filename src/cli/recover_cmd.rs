//! `dlpx recover`: replay a pruning config, train LoRA adapters on the pruned model with the
//! masks fixed, save them in PEFT's format, and compare perplexity dense → pruned →
//! pruned+LoRA. The experiment does the work; this checks the flags, writes the files and prints.

use std::time::Instant;

use color_eyre::eyre::{bail, Result};

use crate::cli::commands::Ctx;
use crate::cli::RecoverArgs;
use crate::experiment::{build_report, DataSpec, Experiment, Measured, Setup, Stage};
use crate::model::{ModelSource, Placement};
use crate::prune::pipeline::plan;
use crate::recover::{Adapters, LoraParams};
use crate::report::{RecoveredReport, Report, Timings, ZeroShotPair};

pub fn run(ctx: &mut Ctx, a: &RecoverArgs) -> Result<()> {
    let base = Report::load(&a.config)?;
    let params = base.params.clone();
    let lora = LoraParams {
        rank: a.rank,
        alpha: a.alpha,
        lr: a.lr,
        steps: a.steps,
        batch: a.batch,
        eval_every: a.eval_every,
        patience: a.patience,
        seed: a.seed,
    };
    // Everything that does not need the model is checked before any work.
    lora.validate()?;
    let tasks = a
        .tasks
        .as_deref()
        .map(crate::zeroshot::parse_tasks)
        .transpose()?;
    if tasks.is_none() && (a.task.limit.is_some() || a.task.source != "demo") {
        bail!("--task-limit and --task-source need --tasks (e.g. --tasks all)");
    }
    if a.holdout == 0 {
        bail!("--holdout must be at least 1 window (early stopping needs held-out text)");
    }
    if ctx.place == Placement::Offload {
        bail!("dlpx recover trains on a resident model: drop --offload");
    }
    crate::model::ensure_free_dir(&a.out)?;
    if let Some(dir) = &a.save {
        crate::model::ensure_free_dir(dir)?;
    }
    if let Some(f) = &a.report {
        crate::assets::ensure_parent_dir(f)?;
    }
    let setup = Setup {
        source: ModelSource::parse(a.model.model.as_deref(), a.model.revision.as_deref())?,
        device: ctx.device.clone(),
        dtype: ctx.dtype,
        place: ctx.place,
        sparse: ctx.sparse,
        data: DataSpec::of_report(&base.data),
        stats_cache: !a.no_stats_cache,
        dense_cache: true,
        metric: params.metric,
        keeps_pruned_copy: false,
    };
    let obs = &mut ctx.progress;
    let mut x = Experiment::open(&setup, obs)?;
    params.validate(x.model.llama.blocks.len())?;
    let mut timings = Timings {
        load_s: x.load_s,
        ..Timings::default()
    };
    let t = Instant::now();
    let (dense_ppl, _) = x.dense_perplexity(obs)?;
    timings.eval_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let task_set = match &tasks {
        Some(tasks) => {
            let source = crate::zeroshot::TaskSource::parse(&a.task.source);
            Some(x.task_set(tasks, &source, a.task.limit, obs)?)
        }
        None => None,
    };
    let dense_z = match &task_set {
        Some(set) => Some(x.dense_zeroshot(set, false, obs)?.0),
        None => None,
    };
    timings.zeroshot_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let spectra = params.alloc.allocation.needs_spectra();
    let (cal, hit) = x.calibrate(params.owl_m, spectra, obs)?;
    timings.calibrate_s = t.elapsed().as_secs_f64();
    timings.stats_cache_hit = hit;
    let pl = plan(&x.model.llama, &cal, &params)?;
    timings.allocate_us = pl.allocate_us;
    let t = Instant::now();
    let got = x.prune_in_place(&cal, &pl, &params, obs)?;
    timings.prune_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let pruned_ppl = x.perplexity(&x.model.llama, Stage::PrunedEval, obs)?;
    timings.eval_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let zeroshot = match (&task_set, dense_z) {
        (Some(set), Some(dense)) => Some(ZeroShotPair {
            dense,
            pruned: Some(x.zeroshot(&x.model.llama, set, obs)?),
        }),
        _ => None,
    };
    timings.zeroshot_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let quantized = match a.quantize.map(Into::into) {
        Some(f) => Some(x.measure_quantized(&x.model.llama, f, task_set.as_ref(), obs)?),
        None => None,
    };
    timings.quantize_s = t.elapsed().as_secs_f64();

    let ((train, train_set), (heldout, heldout_set)) =
        x.recovery_windows(&a.data, a.train_windows, a.holdout, obs)?;
    // PEFT loads adapters onto their base model: the pruned folder when --save writes it.
    let base_name = match (&a.save, a.merge) {
        (Some(dir), false) => dir.display().to_string(),
        _ => x.model.source.label(),
    };
    let adapters = Adapters::new(&x.model.llama, a.rank, a.alpha, a.seed)?;
    let mut llama = x.model.llama.clone();
    let out = a.out.clone();
    let trained = x.recover(
        &mut llama,
        &adapters,
        (&train, &heldout),
        &lora,
        &mut |ad| ad.save_peft(&out, &base_name),
        obs,
    )?;
    // The best adapters are installed; written again in case none improved on the pruned model.
    adapters.save_peft(&a.out, &base_name)?;
    obs.status(&format!(
        "adapters (PEFT) in {}: best held-out loss at step {}",
        a.out.display(),
        trained.best_step
    ));
    if a.merge {
        adapters.merge(&mut llama)?;
    }
    let t = Instant::now();
    let recovered_ppl = x.perplexity(&llama, Stage::RecoveredEval, obs)?;
    timings.eval_s += t.elapsed().as_secs_f64();
    let recovered_z = match &task_set {
        Some(set) => Some(x.zeroshot(&llama, set, obs)?),
        None => None,
    };
    if let Some(dir) = &a.save {
        match a.merge {
            true => crate::model::save_folder(&x.with_weights(llama), dir)?,
            false => crate::model::save_folder(&x.model, dir)?,
        }
        obs.status(&format!(
            "{} model saved to {}",
            if a.merge { "merged" } else { "pruned base" },
            dir.display()
        ));
    }

    let mut report = build_report(
        &x.summary,
        &params,
        &cal,
        &pl,
        Measured {
            achieved: Some(got),
            dense_ppl: dense_ppl.as_ref().map(|p| p.ppl),
            pruned_ppl: pruned_ppl.as_ref().map(|p| p.ppl),
            dense_window_nll: dense_ppl.map(|p| p.window_nll),
            pruned_window_nll: pruned_ppl.map(|p| p.window_nll),
            generations: vec![],
            zeroshot,
            calib_draws: None,
            alpha_search: None,
            timings,
        },
    );
    report.recovered = Some(RecoveredReport {
        lora,
        training: trained,
        train_data: train_set,
        heldout_data: heldout_set,
        merged: a.merge,
        adapter_params: adapters.params(),
        ppl: recovered_ppl.as_ref().map(|p| p.ppl),
        window_nll: recovered_ppl.map(|p| p.window_nll),
        zeroshot: recovered_z,
    });
    report.quantized = quantized;
    if let Some(path) = &a.report {
        report.save(path)?;
    }
    if a.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{}", crate::cli::commands::stages_table(&report));
    }
    Ok(())
}
