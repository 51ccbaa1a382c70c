//! `dlpx bench`: dense forward throughput on the demo protocol and tokenizer speed.

use std::time::Instant;

use candle_core::Tensor;
use color_eyre::eyre::Result;

use crate::cli::BenchArgs;
use crate::commands::Ctx;
use crate::data::{DemoSplit, TextSource};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(ctx: &mut Ctx, a: &BenchArgs) -> Result<()> {
    let m = ctx.load_model(&a.model)?;
    let repeat = a.repeat.max(1);
    let p = &mut ctx.progress;
    let text = TextSource::Demo(DemoSplit::Calib).load(&mut |s| p.status(s))?;

    // Tokenizer: whole calib.txt in one call.
    let mut tok_secs = Vec::new();
    let mut n_ids = 0;
    for _ in 0..repeat {
        let t = Instant::now();
        n_ids = m.encode(&text)?.len();
        tok_secs.push(t.elapsed().as_secs_f64());
    }
    let tok_s = median(tok_secs);
    let ids = m.encode(&text)?;
    let wins = crate::data::windows(&ids, a.seq_len, a.windows, "calib")?;
    let flat: Vec<u32> = wins.iter().flatten().copied().collect();
    let input = Tensor::from_vec(flat, (a.windows, a.seq_len), &m.llama.device)?;

    // Dense forward with all-position logits, as perplexity needs; one warm-up pass.
    m.llama.forward(&input, 0, None)?;
    let mut fwd = Vec::new();
    for i in 0..repeat {
        ctx.progress.status(&format!("forward {}/{repeat}", i + 1));
        let t = Instant::now();
        let out = m.llama.forward(&input, 0, None)?;
        out.device().synchronize()?;
        fwd.push(t.elapsed().as_secs_f64());
    }
    let fwd_s = median(fwd);
    let c = &m.llama.config;
    let tokens = (a.windows * a.seq_len) as f64;
    // Linear layers + head, plus attention scores and values (2·2·t·d per head per token, causal half).
    let attn = 2.0
        * 2.0
        * (a.seq_len as f64 / 2.0)
        * (c.num_attention_heads * c.head_dim) as f64
        * c.num_hidden_layers as f64;
    let gflops = tokens * (c.flops_per_token() + attn) / fwd_s / 1e9;
    let v = serde_json::json!({
        "model": m.source.label(),
        "threads": candle_core::utils::get_num_threads(),
        "forward": {"windows": a.windows, "seq_len": a.seq_len, "median_s": fwd_s, "tokens_per_s": tokens / fwd_s, "gflops": gflops},
        "tokenizer": {"bytes": text.len(), "ids": n_ids, "median_s": tok_s, "mb_per_s": text.len() as f64 / 1e6 / tok_s},
    });
    let v = if a.prune {
        with_prune_stages(ctx, &m, &ids, v, a.json)?
    } else {
        v
    };
    let v = if a.tui {
        with_tui_latency(ctx, &m, &text, &ids, v, a.json)?
    } else {
        v
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "forward    {} × {} tokens: median {:.2}s over {repeat}  →  {:.0} tokens/s, {:.1} GFLOP/s ({} threads)",
            a.windows,
            a.seq_len,
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

/// Time each pruning stage on the demo protocol (32 × 256 calibration, 64 × 256 evaluation).
fn with_prune_stages(
    ctx: &mut Ctx,
    m: &crate::model::LoadedModel,
    calib_ids: &[u32],
    mut v: serde_json::Value,
    json: bool,
) -> Result<serde_json::Value> {
    use crate::prune::pipeline::{plan, prune_faithful, prune_preview, PruneParams};
    let calib = crate::data::windows(calib_ids, 256, 32, "calib")?;
    let p = &mut ctx.progress;
    let eval_text = TextSource::Demo(DemoSplit::Eval).load(&mut |s| p.status(s))?;
    let eval = crate::data::windows(&m.encode(&eval_text)?, 256, 64, "eval")?;
    ctx.progress.status("timing: dense calibration pass");
    let t = Instant::now();
    let cal = crate::prune::stats::calibrate(&m.llama, &calib, 5.0, true, &mut |_| true)?;
    let dense_s = t.elapsed().as_secs_f64();
    let params = PruneParams::default();
    let mut us = Vec::new();
    for _ in 0..1000 {
        us.push(plan(&m.llama, &cal, &params)?.allocate_us);
    }
    let alloc_us = median(us);
    let pl = plan(&m.llama, &cal, &params)?;
    ctx.progress.status("timing: preview masks");
    let mut pruned = m.llama.clone();
    let t = Instant::now();
    prune_preview(&mut pruned, &cal, &pl, &params)?;
    let masks_s = t.elapsed().as_secs_f64();
    ctx.progress.status("timing: faithful pass");
    let mut faithful = m.llama.clone();
    let t = Instant::now();
    prune_faithful(&mut faithful, &calib, &pl, &params, &mut |_| true)?;
    let faithful_s = t.elapsed().as_secs_f64();
    ctx.progress.status("timing: evaluation");
    let t = Instant::now();
    crate::eval::perplexity::perplexity(&faithful, &eval, &mut |_, _| true)?;
    let eval_s = t.elapsed().as_secs_f64();
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
    m: &crate::model::LoadedModel,
    calib_text: &str,
    calib_ids: &[u32],
    mut v: serde_json::Value,
    json: bool,
) -> Result<serde_json::Value> {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    use crate::app::{ModelSummary, Msg, State};
    use crate::prune::cache::{calibrate_cached, StatsKey};
    use crate::prune::pipeline::{linear_numel, PruneParams};
    use crate::report::DataInfo;

    let calib = crate::data::windows(calib_ids, 256, 32, "calib")?;
    let data = crate::prune_cmd::dataset(
        crate::data::demo::sha256_bytes(calib_text.as_bytes()),
        32,
        256,
        "demo",
        None,
    );
    let key = StatsKey::new(m, &data.sha256, 32, 256, ctx.dtype)?;
    ctx.progress
        .status("calibration statistics for the explorer latency");
    let (cal, _) = calibrate_cached(m, &calib, Some(&key), 5.0, true, &mut |_| true, &mut |_| {})?;
    let theme = crate::ui::theme::Theme::load("dark")?;
    let mut out = serde_json::Map::new();
    for (w, h) in [(80u16, 24u16), (200, 60)] {
        let mut s = State::new(
            PruneParams::default(),
            vec!["The capital of France is".into()],
        );
        s.on_msg(Msg::Loaded(Box::new(ModelSummary {
            info: crate::prune_cmd::model_info(m, ctx.dtype)?,
            data: DataInfo {
                calib: data.clone(),
                eval: None,
            },
            numel: linear_numel(&m.llama),
            device: crate::device::describe(&ctx.device),
            protocol: String::new(),
            memory_gib: 0.0,
        })));
        s.on_msg(Msg::Calibrated {
            cal: std::sync::Arc::new(cal.clone()),
            cache_hit: true,
        });
        s.on_msg(Msg::Idle);
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
        let max = ms.iter().cloned().fold(0f64, f64::max);
        let med = median(ms);
        out.insert(
            format!("{w}x{h}"),
            serde_json::json!({"median_ms": med, "max_ms": max, "presses": 400}),
        );
        if !json {
            println!(
                "explorer   key → reallocation → frame at {w}×{h}: median {med:.3} ms, max {max:.3} ms over 400 presses (budget 16 ms)"
            );
        }
    }
    v["tui_latency"] = serde_json::Value::Object(out);
    Ok(v)
}
