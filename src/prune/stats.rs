//! Calibration: the dense "ratio pass" (the DLP paper's dense pass: each block's Wanda scores |W|·‖X‖ from its calibration inputs) and the block statistics it yields.
//!
//! Blocks run one at a time over all calibration windows; only one block's input activations are
//! held. Every linear's Wanda input statistic (`scaler_row`) is recorded, and from the dense
//! weights each block's Wanda-score statistics (median, mean, …) and OWL outlier ratio.

use std::time::Instant;

use candle_core::{DType, Tensor};
use color_eyre::eyre::{bail, Result};
use serde::{Deserialize, Serialize};

use super::esd::{alpha_hat, eigenvalues};
use super::mask::wanda_metric;
use super::sparsegpt::Hessian;
use crate::model::llama::Block;
use crate::model::{InputStats, LinearKind, Llama};

/// The block statistic F (the DLP paper uses the median of the block's Wanda scores; the others
/// are dlpx's variants, README "Pruning").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Statistic {
    /// Lower median (rank (n−1)/2), by selection.
    Median,
    Mean,
    Sum,
    Max,
    /// Unbiased standard deviation.
    Std,
    /// Unbiased variance.
    Var,
}

/// Summary of a set of Wanda scores (one linear, or one block's 7 linears concatenated).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct ScoreStats {
    pub numel: usize,
    pub median: f32,
    pub mean: f64,
    pub max: f32,
    pub var: f64,
}

impl ScoreStats {
    pub fn of(values: &mut [f32]) -> Self {
        let n = values.len();
        if n == 0 {
            return Self::default();
        }
        let m = Moments::of(values.iter().copied());
        let k = (n - 1) / 2;
        let (_, &mut median, _) = values.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
        m.finish(n, median)
    }

    /// The statistics of the concatenation of `parts`, without building it: sums in the same
    /// order as over the concatenation, and the exact lower median by a radix select (a histogram
    /// of the top 16 bits of the order-preserving key of every value, then a selection inside
    /// the one bucket that holds the median). For a 7B block this saves a copy of its 200 M scores.
    pub fn of_parts(parts: &[&[f32]]) -> Self {
        let mut r = RadixStats::default();
        parts.iter().for_each(|p| r.first_pass(p));
        parts.iter().for_each(|p| r.second_pass(p));
        r.finish()
    }

    pub fn get(&self, f: Statistic) -> f64 {
        match f {
            Statistic::Median => self.median as f64,
            Statistic::Mean => self.mean,
            Statistic::Sum => self.mean * self.numel as f64,
            Statistic::Max => self.max as f64,
            Statistic::Std => self.var.sqrt(),
            Statistic::Var => self.var,
        }
    }
}

/// [`ScoreStats`] of a sequence of parts seen twice, so that only one part needs to exist at a
/// time (a 7B block's scores are recomputed linear by linear rather than held together). The
/// first pass sums in order and builds a histogram of the top 16 bits of each value's
/// order-preserving key; the second keeps the values of the one bucket that holds the lower
/// median, which a selection then finds exactly.
pub struct RadixStats {
    moments: Moments,
    n: usize,
    hist: Vec<usize>,
    /// After the first pass: the median's bucket and the count of values below it.
    target: Option<(usize, usize)>,
    inside: Vec<f32>,
}

impl Default for RadixStats {
    fn default() -> Self {
        Self {
            moments: Moments::new(),
            n: 0,
            hist: vec![0; 1 << 16],
            target: None,
            inside: Vec::new(),
        }
    }
}

impl RadixStats {
    pub fn first_pass(&mut self, part: &[f32]) {
        for &v in part {
            self.moments.add(v);
            self.hist[(order_key(v) >> 16) as usize] += 1;
        }
        self.n += part.len();
    }

    /// Mean of everything seen in the first pass.
    pub fn mean(&self) -> f64 {
        self.moments.sum / self.n as f64
    }

    pub fn second_pass(&mut self, part: &[f32]) {
        let (bucket, _) = *self.target.get_or_insert_with(|| {
            let k = self.n.saturating_sub(1) / 2;
            let mut below = 0;
            for (b, &c) in self.hist.iter().enumerate() {
                if below + c > k {
                    return (b, below);
                }
                below += c;
            }
            (0, 0)
        });
        self.inside.extend(
            part.iter()
                .copied()
                .filter(|&v| (order_key(v) >> 16) as usize == bucket),
        );
    }

    pub fn finish(mut self) -> ScoreStats {
        if self.n == 0 {
            return ScoreStats::default();
        }
        let (_, below) = self.target.unwrap_or((0, 0));
        let k = (self.n - 1) / 2 - below;
        let (_, &mut median, _) = self.inside.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
        self.moments.finish(self.n, median)
    }
}

/// Sums (f64, in the values' order) and the maximum of a set of scores.
struct Moments {
    sum: f64,
    sq: f64,
    max: f32,
}

impl Moments {
    fn new() -> Self {
        Self {
            sum: 0.0,
            sq: 0.0,
            max: f32::NEG_INFINITY,
        }
    }

    fn add(&mut self, v: f32) {
        self.sum += v as f64;
        self.sq += (v as f64) * (v as f64);
        self.max = self.max.max(v);
    }

    fn of(values: impl Iterator<Item = f32>) -> Self {
        let mut m = Self::new();
        values.for_each(|v| m.add(v));
        m
    }

    /// Mean and unbiased variance of `n` values, with their lower median.
    fn finish(self, n: usize, median: f32) -> ScoreStats {
        let mean = self.sum / n as f64;
        let var = if n > 1 {
            (self.sq - self.sum * mean).max(0.0) / (n - 1) as f64
        } else {
            0.0
        };
        ScoreStats {
            numel: n,
            median,
            mean,
            max: self.max,
            var,
        }
    }
}

/// A u32 whose unsigned order is `f32::total_cmp`'s order.
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Everything the dense pass produced (what the statistics cache stores).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Calibration {
    /// `inputs[block][linear]`: Wanda input statistics of the dense pass.
    pub inputs: Vec<Vec<InputStats>>,
    /// Per block: statistics of the concatenated Wanda scores of its 7 linears.
    pub blocks: Vec<ScoreStats>,
    /// Per block and linear: the same, per matrix (for `linear` granularity).
    pub linears: Vec<Vec<ScoreStats>>,
    /// OWL outlier ratio (percent of scores > M · mean) per block, for `owl_m`.
    pub owl: Vec<f64>,
    pub owl_m: f64,
    /// AlphaPruning's α̂ per block and linear (weights only, §4.7). Empty when calibration was
    /// asked to skip the spectra (one eigenvalue problem per linear: minutes per block at 7B).
    pub esd: Vec<[f64; 7]>,
    pub seconds: f64,
}

/// Progress of a block-by-block pass.
#[derive(Debug, Clone, Copy)]
pub struct BlockProgress {
    pub block: usize,
    pub blocks: usize,
    pub tokens: usize,
    pub started: Instant,
    /// The finished block's score statistics (calibration only), so a UI can draw bars as
    /// they arrive.
    pub stats: Option<ScoreStats>,
}

/// Windows forwarded together through one block.
pub fn batch_for(seq_len: usize) -> usize {
    // 8 × 256 tokens per batch; long windows go alone, so the attention scores of one batch
    // (batch × heads × len² f32) stay near 1 GiB for a 32-head model at 2048 tokens.
    (2048 / seq_len.max(1)).clamp(1, 8)
}

/// Embed all windows: one `[b, t, hidden]` tensor per batch, at [`Llama::activations_home`].
pub fn embed_windows(model: &Llama, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let t = windows.first().map(|w| w.len()).unwrap_or(0);
    if t == 0 || windows.iter().any(|w| w.len() != t) {
        bail!("calibration windows must be non-empty and of equal length");
    }
    windows
        .chunks(batch_for(t))
        .map(|c| {
            let flat: Vec<u32> = c.iter().flatten().copied().collect();
            let x = model.embed(&Tensor::from_vec(flat, (c.len(), t), &model.device)?)?;
            Ok(x.to_device(&model.activations_home())?)
        })
        .collect()
}

/// What one pass through a block recorded.
pub struct Observed {
    pub stats: Vec<InputStats>,
    /// The block's outputs, when asked to propagate.
    pub outputs: Vec<Tensor>,
    /// Per linear, when asked for SparseGPT.
    pub hessians: Option<Vec<Hessian>>,
}

/// Forward one block (taken with [`Llama::block`]) over every batch, recording its linears'
/// input statistics, and when asked the block outputs and each linear's input Hessian
/// (SparseGPT).
pub fn observe_block_with(
    model: &Llama,
    blk: &Block,
    xs: &[Tensor],
    propagate: bool,
    hessians: bool,
) -> Result<Observed> {
    let mut stats: Vec<InputStats> = LinearKind::ALL
        .iter()
        .map(|&k| InputStats::new(blk.linear(k).in_features()))
        .collect();
    let mut hess: Option<Vec<Hessian>> = match hessians {
        true => Some(
            LinearKind::ALL
                .iter()
                .map(|&k| Hessian::new(blk.linear(k).in_features(), &model.device))
                .collect::<Result<_>>()?,
        ),
        false => None,
    };
    let mut outs = Vec::with_capacity(xs.len());
    for x in xs {
        // q/k/v share their input, and so do gate/up: record once, copy after.
        let mut obs = |k: LinearKind, inp: &Tensor| -> candle_core::Result<()> {
            match k {
                LinearKind::Q | LinearKind::O | LinearKind::Gate | LinearKind::Down => {
                    if let Some(h) = hess.as_mut() {
                        h[k.index()]
                            .add_batch(inp)
                            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    }
                    stats[k.index()].add_batch(inp)
                }
                _ => Ok(()),
            }
        };
        let y = model.forward_batch(blk, x, Some(&mut obs))?;
        if propagate {
            outs.push(y);
        }
    }
    for (dst, src) in [
        (LinearKind::K, LinearKind::Q),
        (LinearKind::V, LinearKind::Q),
        (LinearKind::Up, LinearKind::Gate),
    ] {
        stats[dst.index()] = stats[src.index()].clone();
        if let Some(h) = hess.as_mut() {
            h[dst.index()] = h[src.index()].clone();
        }
    }
    Ok(Observed {
        stats,
        outputs: outs,
        hessians: hess,
    })
}

/// A matrix's weights as f32 row-major.
pub fn weights_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Wanda scores of one linear of a block (dense weights, given input statistics).
fn linear_scores(blk: &Block, k: LinearKind, inputs: &[InputStats]) -> Result<Vec<f32>> {
    let l = blk.linear(k);
    Ok(wanda_metric(
        &weights_f32(&l.weight)?,
        l.in_features(),
        &inputs[k.index()].sq_norm,
    ))
}

/// What calibration keeps of one block's Wanda scores.
struct BlockScores {
    block: ScoreStats,
    linears: Vec<ScoreStats>,
    owl: f64,
}

/// The block's score statistics and OWL ratio, holding one linear's scores at a time: a first
/// pass gives the sums, the per-linear statistics and the median's histogram; a second pass
/// recomputes the scores to count outliers and keep the median's bucket. Identical to the
/// statistics of the 7 linears' scores concatenated.
fn block_scores(blk: &Block, inputs: &[InputStats], owl_m: f64) -> Result<BlockScores> {
    let mut r = RadixStats::default();
    let mut linears = Vec::with_capacity(7);
    for k in LinearKind::ALL {
        let mut s = linear_scores(blk, k, inputs)?;
        r.first_pass(&s);
        linears.push(ScoreStats::of(&mut s));
    }
    let thresh = (owl_m * r.mean()) as f32;
    let mut above = 0usize;
    for k in LinearKind::ALL {
        let s = linear_scores(blk, k, inputs)?;
        above += s.iter().filter(|&&v| v > thresh).count();
        r.second_pass(&s);
    }
    let block = r.finish();
    Ok(BlockScores {
        owl: 100.0 * above as f64 / block.numel as f64,
        block,
        linears,
    })
}

/// OWL's layerwise outlier density in percent: share of the block's scores above `m` × their
/// mean (two passes over the linears, one linear's scores at a time).
fn block_owl(blk: &Block, inputs: &[InputStats], m: f64) -> Result<f64> {
    let (mut sum, mut n) = (0f64, 0usize);
    for k in LinearKind::ALL {
        let s = linear_scores(blk, k, inputs)?;
        // Summed in the same order as calibration's first pass, so equal M gives equal ratios.
        s.iter().for_each(|&v| sum += v as f64);
        n += s.len();
    }
    let thresh = (m * sum / n as f64) as f32;
    let mut above = 0usize;
    for k in LinearKind::ALL {
        above += linear_scores(blk, k, inputs)?
            .iter()
            .filter(|&&v| v > thresh)
            .count();
    }
    Ok(100.0 * above as f64 / n as f64)
}

/// AlphaPruning's α̂ of a block's 7 linears.
fn block_alphas(blk: &Block) -> Result<[f64; 7]> {
    let mut out = [0f64; 7];
    for k in LinearKind::ALL {
        let l = blk.linear(k);
        let e = eigenvalues(&weights_f32(&l.weight)?, l.out_features(), l.in_features())?;
        out[k.index()] = alpha_hat(&e);
    }
    Ok(out)
}

/// The dense ratio pass: block by block, dense activations propagated (§2.1, §8.7). Each block is
/// forwarded once (the reference code forwards twice with identical results). With `spectra`,
/// AlphaPruning's α̂ of every linear too. `progress` may return `false` to cancel.
pub fn calibrate(
    model: &Llama,
    windows: &[Vec<u32>],
    owl_m: f64,
    spectra: bool,
    progress: &mut dyn FnMut(BlockProgress) -> bool,
) -> Result<Calibration> {
    let started = Instant::now();
    let n = model.blocks.len();
    let tokens = windows.len() * windows.first().map(|w| w.len()).unwrap_or(0);
    let mut xs = embed_windows(model, windows)?;
    let mut cal = Calibration {
        inputs: vec![],
        blocks: vec![],
        linears: vec![],
        owl: vec![],
        owl_m,
        esd: vec![],
        seconds: 0.0,
    };
    for i in 0..n {
        // One block's weights at a time (read now when the model is offloaded).
        let blk = model.block(i)?;
        let o = observe_block_with(model, &blk, &xs, i + 1 < n, false)?;
        xs = o.outputs;
        let s = block_scores(&blk, &o.stats, owl_m)?;
        cal.owl.push(s.owl);
        cal.linears.push(s.linears);
        cal.blocks.push(s.block);
        cal.inputs.push(o.stats);
        if spectra {
            cal.esd.push(block_alphas(&blk)?);
        }
        drop(blk);
        crate::error::check(progress(BlockProgress {
            block: i + 1,
            blocks: n,
            tokens,
            started,
            stats: cal.blocks.last().copied(),
        }))?;
    }
    cal.seconds = started.elapsed().as_secs_f64();
    Ok(cal)
}

/// AlphaPruning's α̂ of every linear, from the weights alone (for a calibration made without).
pub fn spectra(model: &Llama) -> Result<Vec<[f64; 7]>> {
    (0..model.blocks.len())
        .map(|i| block_alphas(&*model.block(i)?))
        .collect()
}

/// Recompute OWL ratios for another M from the dense weights and cached input statistics.
pub fn owl_ratios(model: &Llama, cal: &Calibration, m: f64) -> Result<Vec<f64>> {
    (0..model.blocks.len())
        .map(|i| block_owl(&*model.block(i)?, &cal.inputs[i], m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_stats_lower_median_and_unbiased_var() {
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0];
        let s = ScoreStats::of(&mut v);
        assert_eq!(s.median, 2.0, "lower median of an even count");
        assert_eq!(s.mean, 2.5);
        assert!((s.var - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.get(Statistic::Sum), 10.0);
        assert_eq!(s.get(Statistic::Max), 4.0);
    }

    #[test]
    fn block_scores_stream_equals_the_concatenation() -> Result<()> {
        use crate::model::PrunableLinear;
        use candle_core::Device;
        let dev = Device::Cpu;
        // q, k, v, o, gate, up, down of a toy block (hidden 8, kv 4, ffn 12).
        let shapes = [(8, 8), (4, 8), (4, 8), (8, 8), (12, 8), (12, 8), (8, 12)];
        let linears: Vec<PrunableLinear> = shapes
            .iter()
            .enumerate()
            .map(|(k, &(r, c))| {
                let w = Tensor::randn(0f32, 1.0, (r, c), &dev)?;
                Ok(PrunableLinear::new(format!("l{k}"), w, None))
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<InputStats> = shapes
            .iter()
            .map(|&(_, c)| InputStats {
                sq_norm: (0..c).map(|j| 0.5 + j as f32).collect(),
                n: 1,
            })
            .collect();
        let blk = Block {
            input_layernorm: Tensor::ones(8, DType::F32, &dev)?,
            post_attention_layernorm: Tensor::ones(8, DType::F32, &dev)?,
            linears: linears.try_into().unwrap(),
            resident: true,
        };
        let all: Vec<Vec<f32>> = LinearKind::ALL
            .iter()
            .map(|&k| linear_scores(&blk, k, &inputs))
            .collect::<Result<_>>()?;
        let mut flat: Vec<f32> = all.iter().flatten().copied().collect();
        let mean = flat.iter().map(|&v| v as f64).sum::<f64>() / flat.len() as f64;
        let above = flat.iter().filter(|&&v| v > (3.0 * mean) as f32).count();
        let s = block_scores(&blk, &inputs, 3.0)?;
        assert_eq!(s.block, ScoreStats::of(&mut flat));
        assert_eq!(s.owl, 100.0 * above as f64 / flat.len() as f64);
        assert!(above > 0, "the toy block has outliers above 3× the mean");
        assert_eq!(block_owl(&blk, &inputs, 3.0)?, s.owl);
        for (k, mut v) in all.into_iter().enumerate() {
            assert_eq!(s.linears[k], ScoreStats::of(&mut v));
        }
        Ok(())
    }

    #[test]
    fn parts_equal_the_concatenation() {
        // Ties, zeros, tiny and large values, split unevenly.
        let mut x = 12345u64;
        let mut vals: Vec<f32> = (0..20_001)
            .map(|i| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                match i % 7 {
                    0 => 0.0,
                    1 => 0.25,
                    _ => ((x >> 40) as f32 / (1u64 << 24) as f32).powi(3) * 1e3,
                }
            })
            .collect();
        let parts: Vec<&[f32]> = vec![&vals[..5], &vals[5..12_000], &vals[12_000..]];
        let p = ScoreStats::of_parts(&parts);
        let c = ScoreStats::of(&mut vals);
        assert_eq!(p, c);
        let mut even = vec![3.0f32, 1.0, 2.0, 2.0];
        assert_eq!(
            ScoreStats::of_parts(&[&even[..1], &even[1..]]),
            ScoreStats::of(&mut even)
        );
    }
}
