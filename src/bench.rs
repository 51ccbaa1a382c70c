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
