//! `dlpx bench --sparse`: what sparse execution buys, dense against sparse in one run.
//!
//! On the demo protocol (Wanda masks from the dense calibration statistics, DLP median at
//! p 0.3 … 0.9, and uniform 2:4) it measures decode tokens/s (batch 1, KV-cached, greedy),
//! evaluation tokens/s (the protocol's windows), the linears' resident bytes and perplexity,
//! with the pruned linears dense-with-zeros (`--sparse off`) and as `--sparse` says (default
//! auto). A kernel table over the demo's linear shapes gives the crossover that `auto` uses.

use candle_core::{DType, Device};
use color_eyre::eyre::Result;
use serde_json::json;

use crate::cli::commands::Ctx;
use crate::cli::BenchArgs;
use crate::experiment::sparse_speed::{bare_speed, kernel_table, magnitude_pruned, Speed};
use crate::experiment::{Experiment, Silent};
use crate::prune::allocate::Allocation;
use crate::prune::mask::Pattern;
use crate::prune::pipeline::{Mode, PruneParams};
use crate::sparse::SparseMode;

/// One pruning configuration of the table.
struct Config {
    label: String,
    params: PruneParams,
}

fn configs() -> Vec<Config> {
    let mut out: Vec<Config> = [0.3, 0.5, 0.6, 0.7, 0.8, 0.9]
        .into_iter()
        .map(|p| {
            let mut params = PruneParams {
                mode: Mode::Preview,
                ..PruneParams::default()
            };
            params.alloc.sparsity = p;
            Config {
                label: format!("DLP p {p:.1}"),
                params,
            }
        })
        .collect();
    let mut params = PruneParams {
        mode: Mode::Preview,
        pattern: Pattern::NOfM { n: 2, m: 4 },
        ..PruneParams::default()
    };
    params.alloc.allocation = Allocation::Uniform;
    params.alloc.sparsity = 0.5;
    out.push(Config {
        label: "uniform 2:4".into(),
        params,
    });
    out
}

/// `setup`: the demo protocol's (from `dlpx bench`), for the demo comparison.
pub fn run(ctx: &mut Ctx, a: &BenchArgs, mut setup: crate::experiment::Setup) -> Result<()> {
    if let Some(shape) = &a.shape {
        return shape_run(ctx, a, shape);
    }
    setup.data.eval_windows = a.sparse_eval_windows;
    setup.sparse = SparseMode::Off;
    let x = Experiment::open(&setup, &mut ctx.progress)?;
    let sparse_mode = ctx.sparse;
    let kernels = kernel_table(&x.model.llama, &mut ctx.progress)?;
    let (cal, _) = x.calibrate(5.0, false, &mut ctx.progress)?;
    let new_tokens = a.decode_tokens;
    let obs = &mut ctx.progress;
    let (dense, dense_ids) = x
        .time_speed(&[&x.model.llama], new_tokens, "dense", obs)?
        .remove(0);
    let mut rows = Vec::new();
    for c in configs() {
        obs.status(&format!("{}: masks", c.label));
        // Opened with `--sparse off`: the pruned copy keeps its zeros dense.
        let (_, zeros) = x.pruned_copy(&cal, &c.params, &mut Silent)?;
        let sparsity = zeros.linear_sparsity()?;
        let mut sparse = zeros.clone();
        sparse.set_sparse(sparse_mode)?;
        let mut both = x.time_speed(&[&zeros, &sparse], new_tokens, &c.label, obs)?;
        let (sp, ids_sparse) = both.remove(1);
        let (with_zeros, ids_zeros) = both.remove(0);
        rows.push((c.label, sparsity, with_zeros, sp, ids_zeros == ids_sparse));
    }
    let mut v = json!({
        "model": x.summary.info.source,
        "threads": rayon::current_num_threads(),
        "isa": crate::sparse::kernels::Isa::detect().name(),
        "sparse_mode": sparse_mode.name(),
        "auto_min_sparsity": crate::sparse::AUTO_MIN_SPARSITY,
        "decode_new_tokens": new_tokens,
        "eval_windows": x.eval.as_ref().map(|e| e.len()).unwrap_or(0),
        "dense": speed_json(&dense),
        "dense_generated_tokens": dense_ids.len(),
        "kernels": serde_json::to_value(&kernels)?,
    });
    v["configs"] = rows
        .iter()
        .map(|(label, s, z, sp, same)| {
            json!({
                "config": label, "sparsity": s,
                "dense_with_zeros": speed_json(z), "sparse": speed_json(sp),
                "decode_ratio": sp.decode_tok_s / z.decode_tok_s,
                "eval_ratio": sp.eval_tok_s / z.eval_tok_s,
                "bytes_ratio": sp.linear_bytes as f64 / z.linear_bytes as f64,
                "ppl_rel_diff": (sp.ppl - z.ppl).abs() / z.ppl,
                "same_greedy_tokens": same,
            })
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "sparse execution on {} ({} threads, {} kernels, --sparse {}): decode {} new tokens (median of 3, dense and sparse in turn), evaluation {} × 256 (in turns of 6 windows)",
        x.summary.info.source,
        rayon::current_num_threads(),
        crate::sparse::kernels::Isa::detect().name(),
        sparse_mode.name(),
        new_tokens,
        x.eval.as_ref().map(|e| e.len()).unwrap_or(0)
    );
    println!(
        "dense model: decode {:.1} tok/s · evaluation {:.0} tok/s · linears {:.0} MB · perplexity {:.4}",
        dense.decode_tok_s,
        dense.eval_tok_s,
        dense.linear_bytes as f64 / 1e6,
        dense.ppl
    );
    println!(
        "{:<12} {:>8} {:>22} {:>22} {:>20} {:>14} {:>6}",
        "config",
        "zeros",
        "decode tok/s z→s",
        "eval tok/s z→s",
        "linear MB z→s",
        "ppl Δrel",
        "greedy"
    );
    for (label, s, z, sp, same) in &rows {
        println!(
            "{:<12} {:>7.1}% {:>8.1}→{:>6.1} {:>5.2}× {:>7.0}→{:>6.0} {:>5.2}× {:>6.0}→{:>5.0} {:>5.2}× {:>14.1e} {:>6}",
            label,
            s * 100.0,
            z.decode_tok_s,
            sp.decode_tok_s,
            sp.decode_tok_s / z.decode_tok_s,
            z.eval_tok_s,
            sp.eval_tok_s,
            sp.eval_tok_s / z.eval_tok_s,
            z.linear_bytes as f64 / 1e6,
            sp.linear_bytes as f64 / 1e6,
            sp.linear_bytes as f64 / z.linear_bytes as f64,
            (sp.ppl - z.ppl).abs() / z.ppl,
            if *same { "same" } else { "DIFF" }
        );
    }
    println!("kernels (one linear of each demo shape, sparse time / dense time; < 1 is faster):");
    for r in &kernels.rows {
        println!(
            "  p {:.1}  gemv {:.2}  gemm(256 tokens) {:.2}",
            r.p, r.gemv_ratio, r.gemm_ratio
        );
    }
    println!(
        "crossover: gemv from p {} · gemm from p {} (auto switches at p {})",
        v["kernels"]["gemv_crossover"],
        v["kernels"]["gemm_crossover"],
        crate::sparse::AUTO_MIN_SPARSITY
    );
    Ok(())
}

/// The same comparison on a random-weight model of a real model's shapes (`--shape`), pruned
/// by magnitude per row: decode steps from random ids (no tokenizer), evaluation windows of
/// random ids.
fn shape_run(ctx: &mut Ctx, a: &BenchArgs, shape: &str) -> Result<()> {
    use crate::model::synthetic::{random_model, random_windows, Shape};
    let shape = Shape::parse(shape)?;
    let seq_len = a.seq_len.unwrap_or(256);
    let windows = a.sparse_eval_windows.clamp(1, 8);
    ctx.progress.status(&format!(
        "building {} random blocks at {} shapes",
        a.blocks, shape.label
    ));
    let mut dense = random_model(
        &shape.config,
        a.blocks,
        a.shape_vocab,
        0x5EED,
        &Device::Cpu,
        DType::F32,
    )?;
    dense.set_sparse(SparseMode::Off)?;
    let ids = random_windows(windows, seq_len, a.shape_vocab, 17);
    let base = bare_speed(&dense, &ids, a.decode_tokens)?;
    let mut rows = Vec::new();
    for p in [0.5, 0.7, 0.9] {
        ctx.progress.status(&format!("p {p}: magnitude masks"));
        let zeros = magnitude_pruned(&dense, p)?;
        ctx.progress.status(&format!("p {p}: dense with zeros"));
        let z = bare_speed(&zeros, &ids, a.decode_tokens)?;
        let mut sparse = zeros;
        sparse.set_sparse(ctx.sparse)?;
        ctx.progress.status(&format!("p {p}: sparse"));
        let s = bare_speed(&sparse, &ids, a.decode_tokens)?;
        rows.push((p, z, s));
    }
    let v = json!({
        "shape": shape.label, "blocks": a.blocks, "vocab": a.shape_vocab,
        "threads": rayon::current_num_threads(), "sparse_mode": ctx.sparse.name(),
        "decode_steps": a.decode_tokens, "eval_tokens": windows * seq_len,
        "dense": speed_json(&base),
        "configs": rows.iter().map(|(p, z, s)| json!({
            "p": p, "dense_with_zeros": speed_json(z), "sparse": speed_json(s),
            "decode_ratio": s.decode_tok_s / z.decode_tok_s,
            "eval_ratio": s.eval_tok_s / z.eval_tok_s,
            "bytes_ratio": s.linear_bytes as f64 / z.linear_bytes as f64,
        })).collect::<Vec<_>>(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "sparse execution at {} shapes ({} blocks, vocabulary {}, {} threads): {} decode steps, evaluation {} × {seq_len}",
        shape.label,
        a.blocks,
        a.shape_vocab,
        rayon::current_num_threads(),
        a.decode_tokens,
        windows
    );
    println!(
        "dense: decode {:.2} tok/s · evaluation {:.0} tok/s · linears {:.0} MB",
        base.decode_tok_s,
        base.eval_tok_s,
        base.linear_bytes as f64 / 1e6
    );
    for (p, z, s) in &rows {
        println!(
            "p {p:.1}: decode {:.2}→{:.2} tok/s ({:.2}×) · evaluation {:.0}→{:.0} tok/s ({:.2}×) · linears {:.0}→{:.0} MB ({:.2}×)",
            z.decode_tok_s,
            s.decode_tok_s,
            s.decode_tok_s / z.decode_tok_s,
            z.eval_tok_s,
            s.eval_tok_s,
            s.eval_tok_s / z.eval_tok_s,
            z.linear_bytes as f64 / 1e6,
            s.linear_bytes as f64 / 1e6,
            s.linear_bytes as f64 / z.linear_bytes as f64
        );
    }
    Ok(())
}

fn speed_json(s: &Speed) -> serde_json::Value {
    json!({
        "decode_tok_s": s.decode_tok_s, "eval_tok_s": s.eval_tok_s, "ppl": s.ppl,
        "linear_bytes": s.linear_bytes, "sparse_linears": s.sparse_linears,
    })
}
