//! What sparse execution buys, measured for the sparse bench (README, "Sparse
//! execution"): decode and evaluation speed, bytes and perplexity of a model, magnitude masks
//! for a random-weight model, and the kernel table whose crossover `auto` uses. Each figure is timed here; the bench only renders them.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::Result;
use serde::Serialize;

use super::{Experiment, Observer, Silent, Stage};
use crate::eval::generate::{generate, GenParams};
use crate::model::{KvCache, Llama, LoadedModel};
use crate::sparse::{SparseMatmul, SparseMatrix};

/// The greedy prompt timed for decode.
const PROMPT: &str = "The history of the city begins";

/// Decodes per measurement; the median is reported (one run of 128 tokens wobbles by ±15 % on
/// a busy machine).
const DECODE_RUNS: usize = 3;

/// Decode and evaluation speed of one model, its linears' bytes and its perplexity.
#[derive(Debug, Clone, Copy)]
pub struct Speed {
    pub decode_tok_s: f64,
    pub eval_tok_s: f64,
    /// NaN without evaluation data (or on a random-weight model).
    pub ppl: f64,
    pub linear_bytes: usize,
    pub sparse_linears: usize,
}

/// Evaluation windows per turn when several models alternate (two batches of the demo's three).
const EVAL_CHUNK: usize = 6;

impl Experiment {
    /// The speed of each of `models` (the dense-with-zeros model and its sparse twin, or one
    /// model) with this experiment's tokenizer and evaluation windows: the median of three greedy
    /// decodes of `new_tokens` (and the tokens of that decode), and the perplexity over the
    /// windows. The models take turns: decode runs alternate model by model and the windows go
    /// through each model in chunks of [`EVAL_CHUNK`], so a machine that slows down or speeds up
    /// during the run (a shared host does, by ±15 %) affects them alike. `what` names the
    /// measurement in the status lines.
    pub fn time_speed(
        &self,
        models: &[&Llama],
        new_tokens: usize,
        what: &str,
        obs: &mut dyn Observer,
    ) -> Result<Vec<(Speed, Vec<u32>)>> {
        let loaded: Vec<LoadedModel> = models
            .iter()
            .map(|&llama| LoadedModel {
                llama: llama.clone(),
                ..self.model.clone()
            })
            .collect();
        obs.status(&format!("{what}: decode {new_tokens} tokens"));
        let params = GenParams {
            max_new_tokens: new_tokens,
            ..GenParams::default()
        };
        let mut runs: Vec<Vec<_>> = vec![Vec::with_capacity(DECODE_RUNS); models.len()];
        for _ in 0..DECODE_RUNS {
            for (m, r) in loaded.iter().zip(&mut runs) {
                r.push(generate(m, PROMPT, &params, &mut |_| true)?);
            }
        }
        obs.status(&format!("{what}: evaluation"));
        let windows = self.eval.as_ref().map_or(0, |w| w.len());
        let mut secs = vec![0f64; models.len()];
        let mut nll = vec![(0f64, 0usize); models.len()];
        for start in (0..windows.max(1)).step_by(EVAL_CHUNK) {
            for (i, llama) in models.iter().enumerate() {
                let t = Instant::now();
                let range = start..start + EVAL_CHUNK;
                let p = self.perplexity_range(llama, range, Stage::PrunedEval, &mut Silent)?;
                secs[i] += t.elapsed().as_secs_f64();
                if let Some(p) = p {
                    nll[i].0 += p.nll_sum;
                    nll[i].1 += p.tokens;
                }
            }
        }
        let speeds = runs
            .into_iter()
            .zip(models)
            .zip(secs.iter().zip(&nll))
            .map(|((mut r, llama), (&secs, &(nll_sum, predicted)))| {
                r.sort_by(|a, b| a.tokens_per_s.total_cmp(&b.tokens_per_s));
                let g = r.swap_remove(DECODE_RUNS / 2);
                let speed = Speed {
                    decode_tok_s: g.tokens_per_s,
                    eval_tok_s: self.eval_tokens() as f64 / secs.max(1e-9),
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
}

/// Decode (KV-cached steps from random ids, batch 1) and evaluation speed of a bare model on
/// the CPU: no tokenizer, so no perplexity.
pub fn bare_speed(m: &Llama, windows: &[Vec<u32>], steps: usize) -> Result<Speed> {
    let mut cache = KvCache::new(m.blocks.len());
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

/// A copy of `dense` with every block linear pruned to `p` by magnitude per row (a
/// random-weight model has no calibration to score by).
pub fn magnitude_pruned(dense: &Llama, p: f64) -> Result<Llama> {
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
    Ok(zeros)
}

/// Sparse over dense time at one sparsity, summed over the shapes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelRow {
    pub p: f64,
    /// One input (decode).
    pub gemv_ratio: f64,
    /// 256 inputs (evaluation windows).
    pub gemm_ratio: f64,
}

/// The kernel table and the first sparsity at which sparse is faster.
#[derive(Debug, Clone, Serialize)]
pub struct KernelTable {
    pub shapes: Vec<(usize, usize)>,
    pub rows: Vec<KernelRow>,
    pub gemv_crossover: Option<f64>,
    pub gemm_crossover: Option<f64>,
}

/// Sparse over dense time of the demo's three linear shapes (q/o, gate/up, down) of `m`,
/// summed, at several sparsities: one input (gemv) and 256 (gemm). Random values, random
/// positions.
pub fn kernel_table(m: &Llama, obs: &mut dyn Observer) -> Result<KernelTable> {
    obs.status("kernels: sparse vs dense per shape");
    let b = &m.blocks[0];
    let shapes: Vec<(usize, usize)> = [0usize, 4, 6]
        .iter()
        .map(|&k| (b.linears[k].out_features(), b.linears[k].in_features()))
        .collect();
    let mut rows = Vec::new();
    let (mut gemv_crossover, mut gemm_crossover) = (None, None);
    for p in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] {
        let (mut dv, mut sv, mut dm, mut sm) = (0.0, 0.0, 0.0, 0.0);
        for (si, &(rows_, cols)) in shapes.iter().enumerate() {
            let w = random_weights(si as u64 * 31 + (p * 10.0) as u64, rows_ * cols, p);
            let s = Arc::new(SparseMatrix::from_dense(&w, rows_, cols)?);
            let wt = Tensor::from_vec(w, (rows_, cols), &Device::Cpu)?;
            for (n, reps, d_acc, s_acc) in [(1, 400, &mut dv, &mut sv), (256, 6, &mut dm, &mut sm)]
            {
                let x = Tensor::ones((n, cols), DType::F32, &Device::Cpu)?;
                let wtt = wt.t()?;
                let dense = || x.matmul(&wtt).map(|_| ());
                let sparse = || SparseMatmul::apply(&s, &x).map(|_| ());
                *d_acc += time_median(reps, dense)?;
                *s_acc += time_median(reps, sparse)?;
            }
        }
        let (gemv_ratio, gemm_ratio) = (sv / dv, sm / dm);
        if gemv_ratio < 1.0 && gemv_crossover.is_none() {
            gemv_crossover = Some(p);
        }
        if gemm_ratio < 1.0 && gemm_crossover.is_none() {
            gemm_crossover = Some(p);
        }
        rows.push(KernelRow {
            p,
            gemv_ratio,
            gemm_ratio,
        });
    }
    Ok(KernelTable {
        shapes,
        rows,
        gemv_crossover,
        gemm_crossover,
    })
}

/// `n` weights, a fraction `p` of them zero, the others uniform in [−0.5, 0.5).
fn random_weights(seed: u64, n: usize, p: f64) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if u < p {
                0.0
            } else {
                (u - 0.5) as f32
            }
        })
        .collect()
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
