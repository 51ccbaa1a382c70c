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
    let cal = crate::prune::stats::calibrate(&m.llama, &calib, 5.0, &mut |_| true)?;
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
