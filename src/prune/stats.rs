//! Calibration: the dense "ratio pass" (dlp-spec.md §2.1) and the block statistics it yields.
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
use crate::model::{InputStats, LinearKind, Llama};

/// The block statistic F of dlp-spec.md §2.2 / §10.1.
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
        let n: usize = parts.iter().map(|p| p.len()).sum();
        if n == 0 {
            return Self::default();
        }
        let mut hist = vec![0usize; 1 << 16];
        let all = parts.iter().flat_map(|p| p.iter().copied());
        let m = Moments::of(all.inspect(|&v| hist[(order_key(v) >> 16) as usize] += 1));
        let k = (n - 1) / 2;
        let (mut below, mut bucket) = (0usize, 0usize);
        for (b, &c) in hist.iter().enumerate() {
            if below + c > k {
                bucket = b;
                break;
            }
            below += c;
        }
        let mut inside: Vec<f32> = parts
            .iter()
            .flat_map(|p| p.iter().copied())
            .filter(|&v| (order_key(v) >> 16) as usize == bucket)
            .collect();
        let (_, &mut median, _) = inside.select_nth_unstable_by(k - below, |a, b| a.total_cmp(b));
        m.finish(n, median)
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

/// Sums (f64, in the values' order) and the maximum of a set of scores.
struct Moments {
    sum: f64,
    sq: f64,
    max: f32,
}

impl Moments {
    fn of(values: impl Iterator<Item = f32>) -> Self {
        let mut m = Self {
            sum: 0.0,
            sq: 0.0,
            max: f32::NEG_INFINITY,
        };
        for v in values {
            m.sum += v as f64;
            m.sq += (v as f64) * (v as f64);
            m.max = m.max.max(v);
        }
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
    /// AlphaPruning's α̂ per block and linear (weights only, §4.7).
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

/// Embed all windows: one `[b, t, hidden]` tensor per batch.
pub fn embed_windows(model: &Llama, windows: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let t = windows.first().map(|w| w.len()).unwrap_or(0);
    if t == 0 || windows.iter().any(|w| w.len() != t) {
        bail!("calibration windows must be non-empty and of equal length");
    }
    windows
        .chunks(batch_for(t))
        .map(|c| {
            let flat: Vec<u32> = c.iter().flatten().copied().collect();
            Ok(model.embed(&Tensor::from_vec(flat, (c.len(), t), &model.device)?)?)
        })
        .collect()
}

/// Forward block `i` over every batch, recording its linears' input statistics. Returns the
/// statistics and (when `propagate`) the block outputs.
pub fn observe_block(
    model: &Llama,
    i: usize,
    xs: &[Tensor],
    propagate: bool,
) -> Result<(Vec<InputStats>, Vec<Tensor>)> {
    let o = observe_block_with(model, i, xs, propagate, false)?;
    Ok((o.stats, o.outputs))
}

/// What one pass through a block recorded.
pub struct Observed {
    pub stats: Vec<InputStats>,
    /// The block's outputs, when asked to propagate.
    pub outputs: Vec<Tensor>,
    /// Per linear, when asked for SparseGPT.
    pub hessians: Option<Vec<Hessian>>,
}

/// As `observe_block`, also accumulating each linear's input Hessian (SparseGPT) when asked.
pub fn observe_block_with(
    model: &Llama,
    i: usize,
    xs: &[Tensor],
    propagate: bool,
    hessians: bool,
) -> Result<Observed> {
    let blk = &model.blocks[i];
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
        let y = model.forward_block(i, x, 0, None, Some(&mut obs))?;
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

/// Wanda scores of block `i`'s 7 linears (dense weights, given input statistics).
fn block_scores(model: &Llama, i: usize, inputs: &[InputStats]) -> Result<Vec<Vec<f32>>> {
    let blk = &model.blocks[i];
    LinearKind::ALL
        .iter()
        .map(|&k| {
            let l = blk.linear(k);
            Ok(wanda_metric(
                &weights_f32(&l.weight)?,
                l.in_features(),
                &inputs[k.index()].sq_norm,
            ))
        })
        .collect()
}

/// AlphaPruning's α̂ of block `i`'s 7 linears.
fn block_alphas(model: &Llama, i: usize) -> Result<[f64; 7]> {
    let blk = &model.blocks[i];
    let mut out = [0f64; 7];
    for k in LinearKind::ALL {
        let l = blk.linear(k);
        let e = eigenvalues(&weights_f32(&l.weight)?, l.out_features(), l.in_features())?;
        out[k.index()] = alpha_hat(&e);
    }
    Ok(out)
}

/// OWL's layerwise outlier density in percent: share of scores above `m` × their mean.
pub fn outlier_ratio(scores: &[Vec<f32>], m: f64) -> f64 {
    let n: usize = scores.iter().map(|s| s.len()).sum();
    let mean = scores.iter().flatten().map(|&v| v as f64).sum::<f64>() / n as f64;
    let thresh = (m * mean) as f32;
    let count = scores.iter().flatten().filter(|&&v| v > thresh).count();
    100.0 * count as f64 / n as f64
}

/// The dense ratio pass: block by block, dense activations propagated (§2.1, §8.7). Each block is
/// forwarded once (the reference code forwards twice with identical results). `progress` may
/// return `false` to cancel.
pub fn calibrate(
    model: &Llama,
    windows: &[Vec<u32>],
    owl_m: f64,
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
        let (stats, outs) = observe_block(model, i, &xs, i + 1 < n)?;
        xs = outs;
        let mut scores = block_scores(model, i, &stats)?;
        cal.owl.push(outlier_ratio(&scores, owl_m));
        cal.linears
            .push(scores.iter_mut().map(|s| ScoreStats::of(s)).collect());
        let parts: Vec<&[f32]> = scores.iter().map(|s| s.as_slice()).collect();
        cal.blocks.push(ScoreStats::of_parts(&parts));
        cal.inputs.push(stats);
        cal.esd.push(block_alphas(model, i)?);
        if !progress(BlockProgress {
            block: i + 1,
            blocks: n,
            tokens,
            started,
            stats: cal.blocks.last().copied(),
        }) {
            bail!("cancelled");
        }
    }
    cal.seconds = started.elapsed().as_secs_f64();
    Ok(cal)
}

/// Recompute OWL ratios for another M from the dense weights and cached input statistics.
pub fn owl_ratios(model: &Llama, cal: &Calibration, m: f64) -> Result<Vec<f64>> {
    (0..model.blocks.len())
        .map(|i| Ok(outlier_ratio(&block_scores(model, i, &cal.inputs[i])?, m)))
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

    #[test]
    fn outlier_ratio_counts_above_m_times_mean() {
        let s = vec![
            vec![1.0f32, 1.0, 1.0, 1.0],
            vec![1.0, 1.0, 1.0, 1.0, 1.0, 11.0],
        ];
        // mean = 2.0; M = 5 → threshold 10 → one of ten
        assert!((outlier_ratio(&s, 5.0) - 10.0).abs() < 1e-12);
    }
}
