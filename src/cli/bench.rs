//! `dlpx bench`: dense forward throughput and tokenizer speed; with `--prune` the pruning
//! stages, with `--tui` the explorer's key-to-frame latency, with `--job` the whole `dlpx prune`
//! job (wall time and peak memory). The experiment layer does and times the work; this renders
//! the figures (only the explorer's latency is timed here: it is this front end's own loop).

use std::time::Instant;

use color_eyre::eyre::Result;

use crate::cli::commands::Ctx;
use crate::cli::BenchArgs;
use crate::data::{DemoSplit, TextSource};
use crate::experiment::bench::{median, time_forward};
use crate::experiment::{DataSpec, Experiment, Setup, Silent};
use crate::model::LoadedModel;

pub fn run(ctx: &mut Ctx, a: &BenchArgs, sparse: bool) -> Result<()> {
    if sparse {
        let setup = demo_setup(ctx, a, true, true)?;
        return crate::cli::bench_sparse::run(ctx, a, setup);
    }
    if a.job {
        return job(ctx, a);
    }
    if let Some(shape) = &a.shape {
        if a.recover {
            return crate::cli::bench_shape::recover(ctx, a, shape);
        }
        if !a.prune {
            color_eyre::eyre::bail!(
                "--shape times --prune, --recover or --sparse: add one of them"
            );
        }
        return crate::cli::bench_shape::run(ctx, a, shape);
    }
    let seq_len = a.seq_len.unwrap_or(256);
    let m = ctx.load_model(&a.model)?;
    let repeat = a.repeat.max(1);
    let p = &mut ctx.progress;
    let text = TextSource::Demo(DemoSplit::Calib).load(&mut |s| p.status(s))?;
    // The tokenizer on the whole calib.txt in one call; the dense forward with all-position
    // logits, as perplexity needs.
    let fb = time_forward(&m, &text, a.windows, seq_len, repeat, &mut ctx.progress)?;
    let (tok_s, n_ids, fwd_s) = (fb.tokenizer_s, fb.ids, fb.forward_s);
    let c = &m.llama.config;
    let tokens = (a.windows * seq_len) as f64;
    // Linear layers + head, plus attention scores and values (2·2·t·d per head per token, causal half).
    let attn = 2.0
        * 2.0
        * (seq_len as f64 / 2.0)
        * (c.num_attention_heads * c.head_dim) as f64
        * c.num_hidden_layers as f64;
    let gflops = tokens * (c.flops_per_token() + attn) / fwd_s / 1e9;
    let v = serde_json::json!({
        "model": m.source.label(),
        "threads": candle_core::utils::get_num_threads(),
        "forward": {"windows": a.windows, "seq_len": seq_len, "median_s": fwd_s, "tokens_per_s": tokens / fwd_s, "gflops": gflops},
        "tokenizer": {"bytes": text.len(), "ids": n_ids, "median_s": tok_s, "mb_per_s": text.len() as f64 / 1e6 / tok_s},
    });
    let demo = (a.prune || a.tui)
        .then(|| demo_experiment(ctx, m, a))
        .transpose()?;
    let v = match (&demo, a.prune) {
        (Some(x), true) => with_prune_stages(ctx, x, v, a.json)?,
        _ => v,
    };
    let v = match (&demo, a.tui) {
        (Some(x), true) => with_tui_latency(ctx, x, v, a.json)?,
        _ => v,
    };
    drop(demo);
    let v = match a.zeroshot {
        true => with_zeroshot(ctx, a, v, tokens / fwd_s)?,
        false => v,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "forward    {} × {} tokens: median {:.2}s over {repeat}  →  {:.0} tokens/s, {:.1} GFLOP/s ({} threads)",
            a.windows,
            seq_len,
            fwd_s,
            tokens / fwd_s,
            gflops,
            candle_core::utils::get_num_threads()
        );
        println!(
            "tokenizer  calib.txt {:.2} MB → {} ids: median {:.2}s  →  {:.1} MB/s",
            text.len() as f64 / 1e6,
            n_ids,
            tok_s,
            text.len() as f64 / 1e6 / tok_s
        );
    }
    Ok(())
}

/// Zero-shot scoring speed: the seven demo tasks' first examples, scored as `dlpx zeroshot`
/// does (contexts shared, packed) and with every choice on its own (each request its own
/// sequence, still packed), against the dense forward's tokens/s.
fn with_zeroshot(
    ctx: &mut Ctx,
    a: &BenchArgs,
    mut v: serde_json::Value,
    forward_tokens_per_s: f64,
) -> Result<serde_json::Value> {
    let setup = demo_setup(ctx, a, false, false)?;
    let x = Experiment::open_for_scoring(&setup, &mut ctx.progress)?;
    let zb = x.time_zeroshot(a.zeroshot_limit.max(1), &mut ctx.progress)?;
    let (shared_s, alone_s, w, w_alone) = (zb.shared_s, zb.alone_s, zb.shared, zb.alone);
    let z = serde_json::json!({
        "examples_per_task": a.zeroshot_limit, "requests": w.requests,
        "shared": {"seconds": shared_s, "tokens": w.tokens, "requests_per_s": w.requests as f64 / shared_s,
            "tokens_per_s": w.tokens as f64 / shared_s},
        "alone": {"seconds": alone_s, "tokens": w_alone.tokens, "requests_per_s": w.requests as f64 / alone_s,
            "tokens_per_s": w_alone.tokens as f64 / alone_s},
        "speedup_from_sharing": alone_s / shared_s,
        "tokens_per_s_vs_dense_forward": w.tokens as f64 / shared_s / forward_tokens_per_s,
    });
    if !a.json {
        println!(
            "zeroshot   {} requests ({} per task × 7): shared contexts {:.1}s, {:.1} req/s, {:.0} tok/s ({:.0} % of the dense forward's tokens/s); each choice alone {:.1}s, {:.1} req/s ({:.0} tokens): sharing {:.2}× faster",
            w.requests,
            a.zeroshot_limit,
            shared_s,
            w.requests as f64 / shared_s,
            w.tokens as f64 / shared_s,
            100.0 * w.tokens as f64 / shared_s / forward_tokens_per_s,
            alone_s,
            w.requests as f64 / alone_s,
            w_alone.tokens,
            alone_s / shared_s
        );
    }
    v["zeroshot"] = z;
    Ok(v)
}

/// The demo protocol's setup (32 × 256 calibration, 64 × 256 evaluation windows, Wanda) for the
/// benchmarked model; the dense results cache is always used.
fn demo_setup(
    ctx: &Ctx,
    a: &BenchArgs,
    stats_cache: bool,
    keeps_pruned_copy: bool,
) -> Result<Setup> {
    Ok(Setup {
        stats_cache,
        keeps_pruned_copy,
        ..ctx.setup(&a.model, DataSpec::default())?
    })
}

/// The demo protocol on the benchmarked model, through the experiment layer as `dlpx prune`
/// opens it.
fn demo_experiment(ctx: &mut Ctx, m: LoadedModel, a: &BenchArgs) -> Result<Experiment> {
    let setup = demo_setup(ctx, a, true, true)?;
    drop(m); // the experiment loads its own copy
    Experiment::open(&setup, &mut ctx.progress)
}

/// Each pruning stage on the demo protocol, timed by the experiment.
fn with_prune_stages(
    ctx: &mut Ctx,
    x: &Experiment,
    mut v: serde_json::Value,
    json: bool,
) -> Result<serde_json::Value> {
    let st = x.time_prune_stages(&mut ctx.progress)?;
    let (dense_s, alloc_us, masks_s, faithful_s, eval_s) = (
        st.dense_pass_s,
        st.allocate_median_us,
        st.preview_masks_s,
        st.faithful_pass_s,
        st.eval_s,
    );
    v["prune"] = serde_json::json!({
        "dense_pass_s": dense_s, "allocate_median_us": alloc_us, "preview_masks_s": masks_s,
        "faithful_pass_s": faithful_s, "eval_s": eval_s,
    });
    if !json {
        println!(
            "prune stages (32×256 calib, 64×256 eval): dense pass {dense_s:.1}s · allocation {alloc_us:.1} µs (median of 1000) · preview masks {masks_s:.2}s · faithful pass {faithful_s:.1}s · eval {eval_s:.1}s"
        );
    }
    Ok(v)
}

/// Key press → reallocation → full frame drawn off-screen, on the real demo statistics (32 × 256
/// calibration, from the statistics cache when present). The figure the explorer must keep
/// under 16 ms.
fn with_tui_latency(
    ctx: &mut Ctx,
    x: &Experiment,
    mut v: serde_json::Value,
    json: bool,
) -> Result<serde_json::Value> {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use crate::app::{Msg, State};
    use crate::prune::pipeline::PruneParams;

    ctx.progress
        .status("calibration statistics for the explorer latency");
    let (cal, _) = x.calibrate(5.0, true, &mut Silent)?;
    let theme = crate::ui::theme::Theme::load("dark")?;
    let mut out = serde_json::Map::new();
    // 400 presses alternating →/← on α, each timed to a whole frame drawn off-screen.
    let presses = |w: u16, h: u16, overlay: bool| -> Vec<f64> {
        let mut s = State::new(
            PruneParams::default(),
            vec!["The capital of France is".into()],
        );
        s.on_msg(Msg::Loaded(Box::new(x.summary.clone())));
        s.on_msg(Msg::Calibrated {
            cal: std::sync::Arc::new(cal.clone()),
            cache_hit: true,
        });
        s.on_msg(Msg::Idle);
        if overlay {
            // v twice: OWL's allocation, recomputed at every press too.
            s.on_key(KeyEvent::new(KeyCode::Char('v'), KeyModifiers::NONE));
            s.on_key(KeyEvent::new(KeyCode::Char('v'), KeyModifiers::NONE));
        }
        s.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE)); // focus α
        let mut ms = Vec::new();
        for i in 0..400 {
            let code = if i % 2 == 0 {
                KeyCode::Right
            } else {
                KeyCode::Left
            };
            let t = Instant::now();
            s.on_key(KeyEvent::new(code, KeyModifiers::NONE));
            let frame = crate::ui::render_to_string(&s, &theme, w, h);
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(frame);
        }
        ms
    };
    let mut record = |key: String, what: &str, ms: Vec<f64>| {
        let max = ms.iter().cloned().fold(0f64, f64::max);
        let med = median(ms);
        if !json {
            println!(
                "explorer   key → reallocation → frame {what}: median {med:.3} ms, max {max:.3} ms over 400 presses (budget 16 ms)"
            );
        }
        out.insert(
            key,
            serde_json::json!({"median_ms": med, "max_ms": max, "presses": 400}),
        );
    };
    for (w, h) in [(80u16, 24u16), (200, 60), (240, 70)] {
        record(
            format!("{w}x{h}"),
            &format!("at {w}×{h}"),
            presses(w, h, false),
        );
    }
    record(
        "240x70_overlay".into(),
        "at 240×70 with the OWL overlay",
        presses(240, 70, true),
    );
    // The same while the worker-side zero-shot scoring runs on another thread (the explorer's
    // accuracy job): the event loop must stay within budget with every core busy.
    ctx.progress
        .status("zero-shot examples for the latency under load");
    use crate::zeroshot::{Task, TaskSource};
    let set = x.task_set(
        &[Task::HellaSwag, Task::ArcEasy],
        &TaskSource::Demo,
        Some(100),
        &mut Silent,
    )?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ms = std::thread::scope(|sc| {
        sc.spawn(|| {
            crate::zeroshot::evaluate(&x.model.llama, &set, &mut |_, _, _| {
                !stop.load(std::sync::atomic::Ordering::Relaxed)
            })
        });
        std::thread::sleep(std::time::Duration::from_secs(2));
        let ms = presses(200, 60, false);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        ms
    });
    record(
        "200x60_during_zeroshot".into(),
        "at 200×60 while zero-shot scoring runs",
        ms,
    );
    v["tui_latency"] = serde_json::Value::Object(out);
    Ok(v)
}

/// The whole demo job as `dlpx prune --no-stats-cache` runs it, in this process: wall time from
/// the start of loading and the peak resident memory (VmHWM, Linux).
fn job(ctx: &mut Ctx, a: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let setup = demo_setup(ctx, a, false, false)?;
    let obs = &mut ctx.progress;
    let mut x = Experiment::open(&setup, obs)?;
    let spec = crate::experiment::RunSpec::new(crate::prune::pipeline::PruneParams::default());
    let run = x.run(spec, obs)?;
    let wall_s = started.elapsed().as_secs_f64();
    let (dense_cached, dense_s) = (run.dense_from_cache, run.dense_eval_s);
    let peak_mib = crate::prune::memory::peak_rss_kib().map(|k| k as f64 / 1024.0);
    let v = serde_json::json!({
        "job": "demo, Wanda, DLP median, p 0.7, faithful, 32×256 calibration, 64×256 evaluation",
        "wall_s": wall_s,
        "peak_rss_mib": peak_mib,
        "dense_ppl": run.report.ppl.dense,
        "dense_from_cache": dense_cached,
        "dense_eval_s": dense_s,
        "pruned_ppl": run.report.ppl.pruned,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "job        demo Wanda-DLP p 0.7 faithful, 64-window eval: {wall_s:.1}s wall, peak RSS {}, dense perplexity {} ({:.1}s)",
            peak_mib.map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "unknown".into()),
            if dense_cached { "from the cache" } else { "measured" },
            dense_s
        );
    }
    Ok(())
}
