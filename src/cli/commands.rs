//! The headless commands: each loads what it needs, prints results on stdout and progress on
//! stderr, and returns an error (printed once by `main`) on bad input.

use std::io::Write;
use std::time::Instant;

use candle_core::{DType, Device};
use color_eyre::eyre::Result;

use super::progress::Progress;
use crate::cli::{DemoArgs, EvalArgs, ExportArgs, GenerateArgs, GlobalArgs, ModelArgs};
use crate::data::{DemoSplit, TextSource};
use crate::eval::generate::{generate, GenParams};
use crate::eval::perplexity::{perplexity, Perplexity};
use crate::experiment::{DataSpec, Setup, Stage, Step};
use crate::model::{self, LoadedModel, ModelSource, Placement};
use crate::sparse::SparseMode;

pub struct Ctx {
    pub device: Device,
    pub dtype: DType,
    pub place: Placement,
    pub sparse: SparseMode,
    pub progress: Progress,
}

impl Ctx {
    pub fn new(g: &GlobalArgs) -> Result<Self> {
        let device = crate::device::parse_device(&g.device)?;
        let dtype = crate::device::parse_dtype(&g.dtype, &device)?;
        Ok(Self {
            device,
            dtype,
            place: match g.offload {
                true => Placement::Offload,
                false => Placement::Resident,
            },
            sparse: g.sparse.unwrap_or_default(),
            progress: Progress::new(g.quiet),
        })
    }

    /// The one setup of an experiment on this machine: `model` on the device, dtype, placement
    /// and sparse mode of the flags, with both caches on, the memory estimate planned for Wanda,
    /// and no pruned copy (each command overrides what it needs).
    pub fn setup(&self, model: &ModelArgs, data: DataSpec) -> Result<Setup> {
        Ok(Setup {
            source: ModelSource::parse(model.model.as_deref(), model.revision.as_deref())?,
            device: self.device.clone(),
            dtype: self.dtype,
            place: self.place,
            sparse: self.sparse,
            data,
            stats_cache: true,
            dense_cache: true,
            metric: crate::prune::mask::Metric::Wanda,
            keeps_pruned_copy: false,
            recovery: None,
        })
    }

    pub fn load_model(&mut self, args: &ModelArgs) -> Result<LoadedModel> {
        let source = ModelSource::parse(args.model.as_deref(), args.revision.as_deref())?;
        let t = Instant::now();
        let p = &mut self.progress;
        let mut m = model::load_placed(&source, &self.device, self.dtype, self.place, &mut |s| {
            p.status(s)
        })?;
        m.llama.set_sparse(self.sparse)?;
        self.progress.status(&model::loaded_line(
            &m,
            &self.device,
            self.dtype,
            t.elapsed().as_secs_f64(),
        ));
        Ok(m)
    }

    /// Tokenize an evaluation source and cut the protocol windows (`n = 0`: all), exactly as
    /// `dlpx prune --eval` does (BOS for the paper's presets).
    pub fn windows(
        &mut self,
        m: &LoadedModel,
        src: &TextSource,
        seq_len: usize,
        n: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let p = &mut self.progress;
        Ok(crate::data::source_windows(src, m, n, seq_len, false, 0, &mut |s| p.status(s))?.0)
    }

    pub fn perplexity(&mut self, m: &LoadedModel, wins: &[Vec<u32>]) -> Result<Perplexity> {
        let started = Instant::now();
        let seq = wins.first().map(|w| w.len()).unwrap_or(0);
        let p = &mut self.progress;
        perplexity(&m.llama, wins, &mut |done, total| {
            p.step(&Step {
                stage: Stage::DenseEval,
                done,
                total,
                tokens_per_step: seq,
                started,
            });
            true
        })
    }
}

pub fn eval(ctx: &mut Ctx, a: &EvalArgs) -> Result<()> {
    let src = TextSource::parse(&a.data, DemoSplit::Eval)?;
    let m = ctx.load_model(&a.model)?;
    let wins = ctx.windows(&m, &src, a.seq_len, a.windows)?;
    let t = Instant::now();
    let r = ctx.perplexity(&m, &wins)?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "ppl": r.ppl,
            "tokens": r.tokens,
            "nll_sum": r.nll_sum,
            "windows": r.windows,
            "seq_len": r.seq_len,
            "window_nll": r.window_nll,
            "model": m.source.label(),
            "data": src.label(),
            "seconds": secs,
            "tokens_per_s": (r.windows * r.seq_len) as f64 / secs.max(1e-9),
            "sparse": ctx.sparse.name(),
            "sparse_linears": m.llama.sparse_linears(),
            "linear_bytes": m.llama.linear_bytes(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "perplexity {:.4}  ({} predictions, {} windows × {} tokens, {}, {:.1}s, {:.0} tok/s)",
            r.ppl,
            r.tokens,
            r.windows,
            r.seq_len,
            src.label(),
            secs,
            (r.windows * r.seq_len) as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

pub fn gen_params(a: &GenerateArgs) -> GenParams {
    GenParams {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    }
}

pub fn generate_cmd(ctx: &mut Ctx, a: &GenerateArgs) -> Result<()> {
    let params = gen_params(a);
    params.validate()?;
    let m = ctx.load_model(&a.model)?;
    let mut out = std::io::stdout();
    if a.json {
        let g = generate(&m, &a.prompt, &params, &mut |_| true)?;
        let mut v = serde_json::to_value(&g)?;
        v["sparse"] = ctx.sparse.name().into();
        v["sparse_linears"] = m.llama.sparse_linears().into();
        v["linear_bytes"] = m.llama.linear_bytes().into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", a.prompt);
    out.flush()?;
    let g = generate(&m, &a.prompt, &params, &mut |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
        true
    })?;
    println!();
    ctx.progress.status(&format!(
        "{} tokens, {:.1} tok/s decode{}",
        g.tokens.len(),
        g.tokens_per_s,
        if g.stopped_at_eos {
            ", stopped at end-of-sequence"
        } else {
            ""
        }
    ));
    Ok(())
}

pub fn export_model(ctx: &mut Ctx, a: &ExportArgs) -> Result<()> {
    model::ensure_free_dir(&a.out)?;
    let m = ctx.load_model(&a.model)?;
    ctx.progress.status(&format!("writing {}", a.out.display()));
    model::save_folder(&m, &a.out)?;
    println!("saved {} to {}", m.source.label(), a.out.display());
    Ok(())
}

pub fn demo(ctx: &mut Ctx, a: &DemoArgs) -> Result<()> {
    let m = ctx.load_model(&a.model)?;
    let src = TextSource::Demo(DemoSplit::Eval);
    let wins = ctx.windows(&m, &src, 256, a.windows)?;
    let r = ctx.perplexity(&m, &wins)?;
    println!("model       {}", m.source.label());
    println!(
        "perplexity  {:.4} on {} ({} windows × 256)",
        r.ppl,
        src.label(),
        r.windows
    );
    let g = generate(&m, &a.prompt, &GenParams::default(), &mut |_| true)?;
    println!("generation  {}{}", a.prompt, g.text);
    Ok(())
}

pub fn fetch_demo(ctx: &mut Ctx) -> Result<()> {
    let p = &mut ctx.progress;
    let gguf = crate::assets::demo::ensure_model(&mut |s| p.status(s))?;
    let (calib, eval) = crate::assets::demo::ensure_corpus(&mut |s| p.status(s))?;
    for f in [gguf, calib, eval] {
        println!("{}", f.display());
    }
    Ok(())
}

/// `dlpx estimate`: the preflight memory estimate from a config.json.
pub fn estimate(ctx: &Ctx, a: &crate::cli::EstimateArgs) -> Result<()> {
    use color_eyre::eyre::WrapErr;
    let text = std::fs::read_to_string(&a.config_json)
        .wrap_err_with(|| format!("cannot read `{}`", a.config_json.display()))?;
    let c = crate::model::LlamaConfig::from_hf_json(&text)
        .wrap_err_with(|| format!("`{}`", a.config_json.display()))?;
    let e = crate::prune::memory::Estimate::new(
        &c,
        ctx.dtype.size_in_bytes(),
        a.calib_samples,
        a.seq_len,
        crate::prune::mask::Metric::from(a.metric),
        ctx.place == Placement::Offload,
    );
    let rec = crate::recover::memory::RecoveryEstimate::new(
        &c,
        ctx.dtype.size_in_bytes(),
        a.rank,
        a.batch,
        a.seq_len,
        ctx.place == Placement::Offload,
    );
    if a.json {
        let mut v = serde_json::to_value(&e)?;
        v["recover"] = serde_json::to_value(&rec)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{} blocks, {:.2} B parameters, {:?}, {} × {} calibration tokens, {:?}",
            c.num_hidden_layers,
            c.param_count() as f64 / 1e9,
            ctx.dtype,
            a.calib_samples,
            a.seq_len,
            crate::prune::mask::Metric::from(a.metric)
        );
        println!("{}", e.describe());
        println!(
            "{} (rank {}, {} × {} tokens per step)",
            rec.describe(),
            a.rank,
            a.batch,
            a.seq_len
        );
        if let Some(avail) = crate::prune::memory::available_bytes() {
            let fits = |total: u64| match total <= avail {
                true => "fits",
                false => "does not fit",
            };
            println!(
                "available here: {:.1} GiB (pruning {}, recovery {})",
                crate::prune::memory::gib(avail),
                fits(e.total),
                fits(rec.total)
            );
        }
    }
    Ok(())
}

/// `dlpx tokenize`: the ids (and pieces) of a text under a model's or a file's tokenizer.
pub fn tokenize(ctx: &mut Ctx, a: &crate::cli::TokenizeArgs) -> Result<()> {
    use color_eyre::eyre::{eyre, WrapErr};
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .wrap_err_with(|| format!("cannot read the text file `{}`", f.display()))?,
        (None, None) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .wrap_err("cannot read the text from stdin")?;
            s
        }
    };
    let tok = match &a.tokenizer {
        Some(p) => model::tokenizer_file(p)?,
        None => {
            let source = ModelSource::parse(a.model.model.as_deref(), a.model.revision.as_deref())?;
            let p = &mut ctx.progress;
            model::load_tokenizer(&source, &mut |s| p.status(s))?
        }
    };
    let enc = tok
        .encode_fast(text.as_str(), !a.no_special)
        .map_err(|e| eyre!("tokenizer: {e}"))?;
    let ids = enc.get_ids();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.id_to_token(i).unwrap_or_default())
        .collect();
    if a.json {
        let mut v = serde_json::json!({ "ids": ids });
        if a.pieces {
            v["pieces"] = serde_json::json!(pieces);
        }
        println!("{v}");
    } else if a.pieces {
        for (i, p) in ids.iter().zip(&pieces) {
            println!("{i}\t{p:?}");
        }
    } else {
        let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{}", s.join(" "));
    }
    Ok(())
}

/// `dlpx compare A B`: B's perplexity over A's with a paired bootstrap interval.
pub fn compare(a: &crate::cli::CompareArgs) -> Result<()> {
    use crate::cli::Side;
    use crate::report::Report;
    use color_eyre::eyre::bail;
    let (ra, rb) = (Report::load(&a.a)?, Report::load(&a.b)?);
    let (Some(ea), Some(eb)) = (&ra.data.eval, &rb.data.eval) else {
        bail!("both reports need a perplexity measurement (they were made with --eval none)");
    };
    if (&ea.sha256, ea.windows, ea.seq_len) != (&eb.sha256, eb.windows, eb.seq_len) {
        bail!(
            "`{}` and `{}` were evaluated on different windows ({} × {} of {} vs {} × {} of {}): \
             a paired comparison needs the same evaluation data",
            a.a.display(),
            a.b.display(),
            ea.windows,
            ea.seq_len,
            ea.source,
            eb.windows,
            eb.seq_len,
            eb.source
        );
    }
    let windows = |r: &Report, side: Side, path: &std::path::Path| -> Result<Vec<f64>> {
        let w = match side {
            Side::Dense => r.ppl.dense_window_nll.clone(),
            Side::Pruned => r.ppl.pruned_window_nll.clone(),
        };
        w.ok_or_else(|| {
            color_eyre::eyre::eyre!(
                "`{}` has no per-window NLL of its {side:?} model (written before schema 2, or not \
                 measured): run it again with this dlpx",
                path.display()
            )
        })
    };
    let wa = windows(&ra, a.side_a, &a.a)?;
    let wb = windows(&rb, a.side_b, &a.b)?;
    let r = crate::eval::compare::paired_bootstrap(
        &wa,
        &wb,
        ea.seq_len - 1,
        a.resamples,
        a.level,
        a.seed,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let verdict = match (r.excludes_one(), r.ratio < 1.0) {
        (false, _) => "not distinguishable from A on these windows",
        (true, true) => "better than A (lower perplexity), beyond the windows' noise",
        (true, false) => "worse than A (higher perplexity), beyond the windows' noise",
    };
    println!(
        "B/A perplexity ratio {:.4}  ({:.0} % interval {:.4} … {:.4}; paired bootstrap over {} windows, {} resamples, seed {})",
        r.ratio,
        100.0 * r.level,
        r.lo,
        r.hi,
        r.windows,
        r.resamples,
        r.seed
    );
    println!("B is {verdict}");
    Ok(())
}

/// `dlpx zeroshot`: zero-shot accuracy of one model on the harness's tasks.
pub fn zeroshot(ctx: &mut Ctx, a: &crate::cli::ZeroshotArgs) -> Result<()> {
    use crate::experiment::{DataSpec, Experiment, Setup};
    use crate::zeroshot::{parse_tasks, TaskSource};
    // Every argument is checked before the model is loaded.
    let tasks = parse_tasks(&a.tasks)?;
    if a.limit == Some(0) {
        color_eyre::eyre::bail!(
            "--limit 0 leaves no example to score; give at least 1 (or leave it out for all)"
        );
    }
    let source = TaskSource::parse(&a.source);
    let setup = Setup {
        stats_cache: false,
        dense_cache: !a.no_cache,
        ..ctx.setup(&a.model, DataSpec::default())?
    };
    let obs = &mut ctx.progress;
    let x = Experiment::open_for_scoring(&setup, obs)?;
    let set = x.task_set(&tasks, &source, a.limit, obs)?;
    let (z, lls, hit) = x.dense_zeroshot(&set, a.log_samples.is_some(), obs)?;
    if hit {
        obs.status("zero-shot scores from the cache (--no-cache scores again)");
    }
    if let (Some(path), Some(lls)) = (&a.log_samples, &lls) {
        crate::assets::write_atomic(path, crate::zeroshot::samples_jsonl(&set, lls)?.as_bytes())?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&z)?);
    } else {
        print!("{}", zeroshot_table(&z, None));
    }
    Ok(())
}

/// The per-task table of one or two measurements (dense, and pruned beside it), the mean in
/// the paper's convention, and what the splits are.
pub fn zeroshot_table(
    dense: &crate::zeroshot::ZeroShot,
    pruned: Option<&crate::zeroshot::ZeroShot>,
) -> String {
    use std::fmt::Write as _;
    let cell = |v: Option<f64>, se: Option<f64>| match (v, se) {
        (Some(v), Some(se)) => format!("{:.4} ± {:.4}", v, se),
        (Some(v), None) => format!("{v:.4}"),
        _ => "—".to_string(),
    };
    let mut out = String::new();
    let head = match pruned {
        Some(_) => format!(
            "{:<14} {:<10} {:>5}  {:<17} {:<17} {:<17} {:<17}",
            "task", "split", "n", "dense acc", "dense acc_norm", "pruned acc", "pruned acc_norm"
        ),
        None => format!(
            "{:<14} {:<10} {:>5}  {:<17} {:<17}",
            "task", "split", "n", "acc", "acc_norm"
        ),
    };
    let _ = writeln!(out, "{head}");
    for t in &dense.tasks {
        let mut line = format!(
            "{:<14} {:<10} {:>5}  {:<17} {:<17}",
            t.task,
            t.split,
            t.n,
            cell(Some(t.acc), t.acc_stderr),
            cell(t.acc_norm, t.acc_norm_stderr)
        );
        if let Some(p) = pruned.and_then(|p| p.task(&t.task)) {
            let _ = write!(
                line,
                " {:<17} {:<17}",
                cell(Some(p.acc), p.acc_stderr),
                cell(p.acc_norm, p.acc_norm_stderr)
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let n = dense.tasks.len();
    match pruned {
        Some(p) => {
            let _ = writeln!(
                out,
                "mean acc over {n} tasks (the paper's convention): dense {:.4}, pruned {:.4}",
                dense.mean_acc, p.mean_acc
            );
        }
        None => {
            let _ = writeln!(
                out,
                "mean acc over {n} tasks (the paper's convention): {:.4}",
                dense.mean_acc
            );
        }
    }
    let off_split: Vec<&str> = dense
        .tasks
        .iter()
        .filter_map(|t| {
            crate::zeroshot::Task::from_name(&t.task)
                .filter(|task| task.dataset().split != t.split)
                .map(|_| t.task.as_str())
        })
        .collect();
    if !off_split.is_empty() {
        let _ = writeln!(
            out,
            "note: {} scored on another split than the harness's test split; not comparable with published test figures",
            off_split.join(", ")
        );
    }
    let rate = |z: &crate::zeroshot::ZeroShot| {
        format!(
            "{} requests, {} tokens in {:.1} s ({:.1} req/s, {:.0} tok/s)",
            z.requests,
            z.tokens,
            z.seconds,
            z.requests as f64 / z.seconds.max(1e-9),
            z.tokens as f64 / z.seconds.max(1e-9)
        )
    };
    let _ = writeln!(
        out,
        "examples: {}{}; {}",
        dense.source,
        dense
            .limit
            .map(|l| format!(", first {l} per task"))
            .unwrap_or_default(),
        rate(pruned.unwrap_or(dense))
    );
    out
}

/// Dense → pruned → pruned+quantized → pruned+LoRA, as far as the report has them: perplexity,
/// zero-shot mean accuracy and the linears' size; then what quantization and recovery did.
pub fn stages_table(r: &crate::report::Report) -> String {
    let zs = |z: Option<&crate::zeroshot::ZeroShot>| {
        z.map(|z| format!("{:.4}", z.mean_acc))
            .unwrap_or_else(|| "-".into())
    };
    let ppl = |p: Option<f64>| p.map(|p| format!("{p:.4}")).unwrap_or_else(|| "-".into());
    let z = r.zeroshot.as_ref();
    let mut rows = vec![
        (
            "dense".to_string(),
            r.ppl.dense,
            zs(z.map(|z| &z.dense)),
            String::new(),
        ),
        (
            "pruned".into(),
            r.ppl.pruned,
            zs(z.and_then(|z| z.pruned.as_ref())),
            String::new(),
        ),
    ];
    if let Some(q) = &r.quantized {
        let s = &q.quantization;
        let f16 = format!("{:.1} (f16)", s.f16_bytes as f64 / 1e6);
        rows[0].3 = f16.clone();
        rows[1].3 = f16;
        rows.push((
            format!("pruned + {}", s.format.name()),
            q.ppl,
            zs(q.zeroshot.as_ref()),
            format!("{:.1}", s.bytes as f64 / 1e6),
        ));
    }
    if let Some(l) = &r.recovered {
        rows.push((
            format!(
                "pruned + LoRA r{}{}",
                l.lora.rank,
                if l.merged { " (merged)" } else { "" }
            ),
            l.ppl,
            zs(l.zeroshot.as_ref()),
            String::new(),
        ));
    }
    let mut out = format!(
        "{:<24} {:>12} {:>12} {:>14}\n",
        "model", "perplexity", "zero-shot", "linears (MB)"
    );
    for (name, p, z, mb) in rows {
        out += &format!("{name:<24} {:>12} {z:>12} {mb:>14}\n", ppl(p));
    }
    if let (Some(q), Some(p)) = (&r.quantized, r.ppl.pruned) {
        let s = &q.quantization;
        out += &format!(
            "{} on top of pruning: perplexity {}; {} of {} pruned zeros stayed zero; kept weights' relative RMS error {:.4}; types {}\n",
            s.format.name(),
            q.ppl
                .map(|qp| format!("{:+.2} %", 100.0 * (qp / p - 1.0)))
                .unwrap_or_else(|| "-".into()),
            s.pruned_zeros - s.zeros_lost,
            s.pruned_zeros,
            s.kept_rel_rms_error,
            s.types
                .iter()
                .map(|(t, n)| format!("{t}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if let Some(l) = &r.recovered {
        let t = &l.training;
        out += &format!(
            "LoRA: {} steps of {} windows ({} tokens, {:.0} s, {:.0} tok/s; median step {:.1} tok/s, {:.3}× the run's held-out forward at {:.0} tok/s), stopped by {:?}; best held-out loss {:.4} at step {} (pruned: {:.4}); {} adapter parameters\n",
            t.steps_run,
            l.lora.batch,
            t.tokens,
            t.seconds,
            t.tokens as f64 / t.seconds.max(1e-9),
            t.train_tokens_per_s(),
            t.throughput_ratio(),
            t.forward_tokens_per_s,
            t.stop,
            t.heldout
                .iter()
                .map(|h| h.1)
                .fold(f64::INFINITY, f64::min),
            t.best_step,
            t.heldout.first().map(|h| h.1).unwrap_or(f64::NAN),
            l.adapter_params
        );
        if let (Some(e), Some(r)) = (l.eval_tokens_per_s, l.train_over_eval()) {
            out += &format!(
                "LoRA throughput: training steps {:.1} tok/s = {r:.3}× this run's pruned evaluation forward ({e:.0} tok/s)\n",
                t.train_tokens_per_s()
            );
        }
    }
    out
}
