//! `dlpx bench --sparse`: what sparse execution buys, dense against sparse in one run.
//!
//! On the demo protocol (Wanda masks from the dense calibration statistics, DLP median at
//! p 0.3 … 0.9, and uniform 2:4) it measures decode tokens/s (batch 1, KV-cached, greedy),
//! evaluation tokens/s (the protocol's windows), the linears' resident bytes and perplexity,
//! with the pruned linears dense-with-zeros (`--sparse off`) and as `--sparse` says (default
//! auto). A kernel table over the demo's linear shapes gives the crossover that `auto` uses.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::Result;
use serde_json::json;

use crate::cli::commands::Ctx;
use crate::cli::BenchArgs;
use crate::eval::generate::{generate, GenParams};
use crate::experiment::{Experiment, Silent, Stage};
use crate::model::{Llama, LoadedModel};
use crate::prune::allocate::Allocation;
use crate::prune::mask::Pattern;
use crate::prune::pipeline::{plan, Mode, PruneParams};
use crate::sparse::{SparseMatrix, SparseMode};

/// The greedy prompt timed for decode.
const PROMPT: &str = "The history of the city begins";

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

/// Decode and evaluation speed of one model.
#[derive(Debug, Clone, Copy)]
struct Speed {
    decode_tok_s: f64,
    eval_tok_s: f64,
    ppl: f64,
    linear_bytes: usize,
    sparse_linears: usize,
}

/// Decodes per configuration and mode; the median is reported.
const DECODE_RUNS: usize = 3;

/// Evaluation windows per turn when two models alternate (two batches of the demo's three).
const EVAL_CHUNK: usize = 6;

/// Decode and evaluation speed of `models` (the dense-with-zeros model and its sparse twin, or
/// the dense model alone), measured in alternation: decode runs take turns model by model, and
/// the evaluation windows go chunk by chunk through each model in turn, so a machine that
/// slows down or speeds up during the run (a shared host does, by ±15 %) affects both alike.
fn measure(
    ctx: &mut Ctx,
    x: &Experiment,
    m: &LoadedModel,
    models: &[&Llama],
    new_tokens: usize,
    what: &str,
) -> Result<Vec<(Speed, Vec<u32>)>> {
    let loaded: Vec<LoadedModel> = models
        .iter()
        .map(|&llama| LoadedModel {
            llama: llama.clone(),
            ..m.clone()
        })
        .collect();
    ctx.progress
        .status(&format!("{what}: decode {new_tokens} tokens"));
    let params = GenParams {
        max_new_tokens: new_tokens,
        ..GenParams::default()
    };
    let mut runs: Vec<Vec<_>> = vec![Vec::with_capacity(DECODE_RUNS); models.len()];
    for _ in 0..DECODE_RUNS {
        for (lm, r) in loaded.iter().zip(&mut runs) {
            r.push(generate(lm, PROMPT, &params, &mut |_| true)?);
        }
    }
    ctx.progress.status(&format!("{what}: evaluation"));
    let windows = x.eval.as_ref().map_or(0, |w| w.len());
    let mut secs = vec![0f64; models.len()];
    let mut nll = vec![(0f64, 0usize); models.len()];
    for start in (0..windows.max(1)).step_by(EVAL_CHUNK) {
        for (i, llama) in models.iter().enumerate() {
            let t = Instant::now();
            let p = x.perplexity_range(
                llama,
                start..start + EVAL_CHUNK,
                Stage::PrunedEval,
                &mut Silent,
            )?;
            secs[i] += t.elapsed().as_secs_f64();
            if let Some(p) = p {
                nll[i].0 += p.nll_sum;
                nll[i].1 += p.tokens;
            }
        }
    }
    let tokens: usize = x.eval.iter().flatten().map(|w| w.len()).sum();
    let speeds = runs
        .into_iter()
        .zip(models)
        .zip(secs.iter().zip(&nll))
        .map(|((mut r, llama), (&secs, &(nll_sum, predicted)))| {
            r.sort_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s));
            let g = r.swap_remove(DECODE_RUNS / 2);
            let speed = Speed {
                decode_tok_s: g.tokens_per_s,
                eval_tok_s: tokens as f64 / secs.max(1e-9),
                ppl: match predicted {
                    0 => f64::NAN,
                    n => (nll_sum / n as f64).exp(),
                },
                linear_bytes: llama.linear_bytes(),
                sparse_linears: llama.sparse_linears(),
            };
            (speed, g.tokens)
        })
        .collect();
    Ok(speeds)
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
    let kernels = kernel_table(&x.model.llama, ctx)?;
    let (cal, _) = x.calibrate(5.0, false, &mut ctx.progress)?;
    let new_tokens = a.decode_tokens;
    let (dense, dense_ids) =
        measure(ctx, &x, &x.model, &[&x.model.llama], new_tokens, "dense")?.remove(0);
    let mut rows = Vec::new();
    for c in configs() {
        ctx.progress.status(&format!("{}: masks", c.label));
        let pl = plan(&x.model.llama, &cal, &c.params)?;
        let mut zeros = x.model.llama.clone();
        zeros.sparse = SparseMode::Off;
        x.prune(&mut zeros, &cal, &pl, &c.params, &mut Silent)?;
        let sparsity = zeros.linear_sparsity()?;
        let mut sparse = zeros.clone();
        sparse.set_sparse(sparse_mode)?;
        let mut both = measure(ctx, &x, &x.model, &[&zeros, &sparse], new_tokens, &c.label)?;
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
        "kernels": kernels,
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
    if let Some(rows) = v["kernels"]["rows"].as_array() {
        for r in rows {
            println!(
                "  p {:.1}  gemv {:.2}  gemm(256 tokens) {:.2}",
                r["p"].as_f64().unwrap_or(0.0),
                r["gemv_ratio"].as_f64().unwrap_or(0.0),
                r["gemm_ratio"].as_f64().unwrap_or(0.0)
            );
        }
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
    let base = shape_speed(&dense, &ids, a.decode_tokens)?;
    let mut rows = Vec::new();
    for p in [0.5, 0.7, 0.9] {
        ctx.progress.status(&format!("p {p}: magnitude masks"));
        let mut zeros = dense.clone();
        for b in zeros.blocks.iter_mut() {
            for l in b.linears.iter_mut() {
                let (r, c) = (l.out_features(), l.in_features());
                let w = l.weight()?.flatten_all()?.to_vec1::<f32>()?;
                let abs: Vec<f32> = w.iter().map(|x| x.abs()).collect();
                let keep = crate::prune::mask::per_row(&abs, c, p);
                l.set_mask(Tensor::from_vec(keep, (r, c), &Device::Cpu)?)?;
            }
        }
        ctx.progress.status(&format!("p {p}: dense with zeros"));
        let z = shape_speed(&zeros, &ids, a.decode_tokens)?;
        let mut sparse = zeros;
        sparse.set_sparse(ctx.sparse)?;
        ctx.progress.status(&format!("p {p}: sparse"));
        let s = shape_speed(&sparse, &ids, a.decode_tokens)?;
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

/// Decode (KV-cached steps from random ids, batch 1) and evaluation speed of a bare model.
fn shape_speed(m: &Llama, windows: &[Vec<u32>], steps: usize) -> Result<Speed> {
    let mut cache = crate::model::KvCache::new(m.blocks.len());
    let mut id = windows[0][0];
    let t = Instant::now();
    for pos in 0..steps.max(1) {
        let x = Tensor::new(&[[id]], &Device::Cpu)?;
        let logits = m.forward_last(&x, pos, Some(&mut cache))?;
        id = logits.argmax(1)?.to_vec1::<u32>()?[0];
    }
    let decode = steps.max(1) as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for w in windows {
        let x = Tensor::new(w.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        m.forward(&x, 0, None)?;
    }
    let tokens: usize = windows.iter().map(|w| w.len()).sum();
    Ok(Speed {
        decode_tok_s: decode,
        eval_tok_s: tokens as f64 / t.elapsed().as_secs_f64(),
        ppl: f64::NAN,
        linear_bytes: m.linear_bytes(),
        sparse_linears: m.sparse_linears(),
    })
}

fn speed_json(s: &Speed) -> serde_json::Value {
    json!({
        "decode_tok_s": s.decode_tok_s, "eval_tok_s": s.eval_tok_s, "ppl": s.ppl,
        "linear_bytes": s.linear_bytes, "sparse_linears": s.sparse_linears,
    })
}

/// Sparse over dense time of the demo's three linear shapes (q/o, gate/up, down), summed, at
/// several sparsities: one input (gemv) and 256 (gemm). Random values, random positions.
fn kernel_table(m: &Llama, ctx: &mut Ctx) -> Result<serde_json::Value> {
    ctx.progress.status("kernels: sparse vs dense per shape");
    let b = &m.blocks[0];
    let shapes: Vec<(usize, usize)> = [0usize, 4, 6]
        .iter()
        .map(|&k| (b.linears[k].out_features(), b.linears[k].in_features()))
        .collect();
    let mut rows = Vec::new();
    let (mut gemv_x, mut gemm_x) = (None, None);
    for p in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
        let (mut dv, mut sv, mut dm, mut sm) = (0.0, 0.0, 0.0, 0.0);
        for (si, &(rows_, cols)) in shapes.iter().enumerate() {
            let mut rng = crate::rng::SplitMix64::new(si as u64 * 31 + (p * 10.0) as u64);
            let w: Vec<f32> = (0..rows_ * cols)
                .map(|_| {
                    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    if u < p {
                        0.0
                    } else {
                        (u - 0.5) as f32
                    }
                })
                .collect();
            let s = std::sync::Arc::new(SparseMatrix::from_dense(&w, rows_, cols)?);
            let wt = Tensor::from_vec(w, (rows_, cols), &Device::Cpu)?;
            for (n, reps, d_acc, s_acc) in [(1, 400, &mut dv, &mut sv), (256, 6, &mut dm, &mut sm)]
            {
                let x = Tensor::ones((n, cols), DType::F32, &Device::Cpu)?;
                let wtt = wt.t()?;
                let dense = || x.matmul(&wtt).map(|_| ());
                let sparse = || crate::sparse::SparseMatmul::apply(&s, &x).map(|_| ());
                *d_acc += time_median(reps, dense)?;
                *s_acc += time_median(reps, sparse)?;
            }
        }
        let (gv, gm) = (sv / dv, sm / dm);
        if gv < 1.0 && gemv_x.is_none() {
            gemv_x = Some(p);
        }
        if gm < 1.0 && gemm_x.is_none() {
            gemm_x = Some(p);
        }
        rows.push(json!({"p": p, "gemv_ratio": gv, "gemm_ratio": gm}));
    }
    Ok(json!({
        "shapes": shapes, "rows": rows,
        "gemv_crossover": gemv_x, "gemm_crossover": gemm_x,
    }))
}

/// Median seconds of `reps` calls (after one warm-up), timed in groups to beat timer noise.
fn time_median(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    f()?;
    let group = (reps / 5).max(1);
    let mut v = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..group {
            f()?;
        }
        v.push(t.elapsed().as_secs_f64() / group as f64);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[2])
}
