//! `dlpx recover`: replay a pruning config, train LoRA adapters on the pruned model with the
//! masks fixed, save them in PEFT's format, and compare perplexity dense → pruned →
//! pruned+LoRA. The experiment runs it (one run spec with recovery); this checks the flags, writes
//! the files and prints.

use color_eyre::eyre::{bail, Result};

use crate::cli::commands::Ctx;
use crate::cli::RecoverArgs;
use crate::experiment::{DataSpec, Experiment, RecoverSpec, Recovered, RunSpec, Setup};
use crate::recover::{Adapters, LoraParams};
use crate::report::Report;

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
    let tasks = a.task.spec(a.tasks.as_deref())?;
    if a.holdout == 0 {
        bail!("--holdout must be at least 1 window (early stopping needs held-out text)");
    }
    crate::model::ensure_free_dir(&a.out)?;
    if let Some(dir) = &a.save {
        crate::model::ensure_free_dir(dir)?;
    }
    if let Some(f) = &a.report {
        crate::assets::ensure_parent_dir(f)?;
    }
    let setup = Setup {
        stats_cache: !a.no_stats_cache,
        metric: params.metric,
        recovery: Some((lora.rank, lora.batch)),
        ..ctx.setup(&a.model, DataSpec::of_report(&base.data))?
    };
    let obs = &mut ctx.progress;
    let mut x = Experiment::open(&setup, obs)?;
    // PEFT loads adapters onto their base model: the pruned folder when --save writes it, else
    // the source as `from_pretrained` takes it (a Hub id or a path; never a display name).
    let (base_name, revision) = match (&a.save, a.merge) {
        (Some(dir), false) => {
            let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            (abs.display().to_string(), None)
        }
        _ => x.model.source.peft_base(&x.model.path),
    };
    let out = a.out.clone();
    let on_best = {
        let (base_name, revision) = (base_name.clone(), revision.clone());
        Box::new(move |ad: &Adapters| ad.save_peft(&out, &base_name, revision.as_deref()))
    };
    let spec = RunSpec {
        tasks,
        quantize: a.quantize.map(Into::into),
        recover: Some(RecoverSpec {
            data: a.data.clone(),
            train_windows: a.train_windows,
            holdout: a.holdout,
            lora,
            merge: a.merge,
            on_best,
        }),
        ..RunSpec::new(params)
    };
    let run = x.run(spec, obs)?;
    let report = run.report;
    let Some(Recovered { llama, adapters }) = run.recovered else {
        bail!("the run recovered nothing");
    };
    // The best adapters are installed; written again in case none improved on the pruned model.
    adapters.save_peft(&a.out, &base_name, revision.as_deref())?;
    if let Some(r) = &report.recovered {
        obs.status(&format!(
            "adapters (PEFT) in {}: best held-out loss at step {}",
            a.out.display(),
            r.training.best_step
        ));
    }
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
