//! Calibration: the dense "ratio pass" (the DLP paper's dense pass: each block's Wanda scores |W|·‖X‖ from its calibration inputs) and the block statistics it yields.
//!
//! Blocks run one at a time over all calibration windows; only one block's input activations are
//! held. Every linear's Wanda input statistic (`scaler_row`) is recorded, and from the dense
//! weights each block's Wanda-score statistics (median, mean, …) and OWL outlier ratio.

use std::time::Instant;

use candle_core::Tensor;
use color_eyre::eyre::{bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::esd::{alpha_hat, eigenvalues};
use super::mask::wanda_metric_into;
use super::select::{bucket_of, bucket_values, key_histogram};
use super::sparsegpt::Hessian;
use super::timing::{timed, StageTimes};
use crate::model::llama::Block;
use crate::model::{weights_f32, InputStats, LinearKind, Llama};

/// The block statistic F (the DLP paper uses the median of the block's Wanda scores; the others
/// are dlpx's variants, README "Pruning").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

impl Statistic {
    pub const ALL: [Statistic; 6] = [
        Statistic::Median,
        Statistic::Mean,
        Statistic::Sum,
        Statistic::Max,
        Statistic::Std,
        Statistic::Var,
    ];
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
    /// Statistics of one set of scores (the same as [`ScoreStats::of_parts`] of one part).
    pub fn of(values: &[f32]) -> Self {
        Self::of_parts(&[values])
    }

    /// The statistics of the concatenation of `parts`, without building it: sums in fixed
    /// chunks of the concatenation (so parts, and any number of threads, give the same bits),
    /// and the exact lower median by a radix select (a histogram of the top 16 bits of the
    /// order-preserving key of every value, then a selection inside the one bucket that holds
    /// the median). For a 7B block this saves a copy of its 200 M scores.
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
/// first pass sums and builds a histogram of the top 16 bits of each value's order-preserving
/// key; the second keeps the values of the one bucket that holds the lower median, which a
/// selection then finds exactly. Both passes use all cores.
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
            moments: Moments::default(),
            n: 0,
            hist: vec![0; 1 << 16],
            target: None,
            inside: Vec::new(),
        }
    }
}

impl RadixStats {
    pub fn first_pass(&mut self, part: &[f32]) {
        self.moments.add_part(part);
        let h = key_histogram(part);
        self.hist.iter_mut().zip(&h).for_each(|(x, y)| *x += y);
        self.n += part.len();
    }

    /// The first pass of `part` for `self` and for `part_stats` (the statistics of this part
    /// alone), with the histogram built once.
    pub fn first_pass_with(&mut self, part: &[f32], part_stats: &mut RadixStats) {
        self.moments.add_part(part);
        part_stats.moments.add_part(part);
        let h = key_histogram(part);
        for hist in [&mut self.hist, &mut part_stats.hist] {
            hist.iter_mut().zip(&h).for_each(|(x, y)| *x += y);
        }
        self.n += part.len();
        part_stats.n += part.len();
    }

    /// Mean of everything seen in the first pass.
    pub fn mean(&self) -> f64 {
        self.moments.total().0 / self.n as f64
    }

    pub fn second_pass(&mut self, part: &[f32]) {
        let (bucket, _) = *self
            .target
            .get_or_insert_with(|| bucket_of(&self.hist, self.n.saturating_sub(1) / 2));
        self.inside.extend(bucket_values(part, bucket));
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

/// Values per summation chunk. Sums (f64) run in order inside each chunk of the concatenated
/// values, and the chunk sums are added in order: the same bits whether the values arrive whole,
/// in parts, or are summed on any number of threads.
const SUM_CHUNK: usize = 1 << 14;

/// Sums, sums of squares and the maximum of a set of scores, chunked as [`SUM_CHUNK`] says.
#[derive(Default)]
struct Moments {
    sum: f64,
    sq: f64,
    max: Option<f32>,
    /// The open chunk: its sums and how many values it holds.
    open: (f64, f64, usize),
}

/// Sums of one run of values, in order, starting from `start`.
fn run_sums(start: (f64, f64), values: &[f32]) -> (f64, f64) {
    values.iter().fold(start, |(s, q), &v| {
        let v = v as f64;
        (s + v, q + v * v)
    })
}

impl Moments {
    fn add_part(&mut self, part: &[f32]) {
        let fold_max = |m: Option<f32>, v: Option<f32>| match (m, v) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let part_max = part.par_iter().copied().reduce_with(f32::max);
        self.max = fold_max(self.max, part_max);
        // Fill the open chunk first.
        let head = match self.open.2 {
            0 => 0,
            n => (SUM_CHUNK - n).min(part.len()),
        };
        self.extend_open(&part[..head]);
        let rest = &part[head..];
        // Whole chunks on all cores, their sums added in order; the tail opens a new chunk.
        let whole = if self.open.2 == 0 {
            rest.len() / SUM_CHUNK * SUM_CHUNK
        } else {
            0
        };
        let sums: Vec<(f64, f64)> = rest[..whole]
            .par_chunks(SUM_CHUNK)
            .map(|c| run_sums((0.0, 0.0), c))
            .collect();
        for (s, q) in sums {
            self.sum += s;
            self.sq += q;
        }
        self.extend_open(&rest[whole..]);
    }

    fn extend_open(&mut self, values: &[f32]) {
        let (s, q) = run_sums((self.open.0, self.open.1), values);
        self.open = (s, q, self.open.2 + values.len());
        if self.open.2 == SUM_CHUNK {
            self.sum += s;
            self.sq += q;
            self.open = (0.0, 0.0, 0);
        }
    }

    /// Sum and sum of squares, the open chunk added last.
    fn total(&self) -> (f64, f64) {
        (self.sum + self.open.0, self.sq + self.open.1)
    }

    /// Mean and unbiased variance of `n` values, with their lower median.
    fn finish(self, n: usize, median: f32) -> ScoreStats {
        let (sum, sq) = self.total();
        let mean = sum / n as f64;
        let var = if n > 1 {
            (sq - sum * mean).max(0.0) / (n - 1) as f64
        } else {
            0.0
        };
        ScoreStats {
            numel: n,
            median,
            mean,
            max: self.max.unwrap_or(f32::NEG_INFINITY),
            var,
        }
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
    observe_block_timed(
        model,
        blk,
        xs,
        propagate,
        hessians,
        &mut StageTimes::default(),
    )
}

/// [`observe_block_with`], adding the forward's, the statistics' and the Hessians' seconds to
/// `times`.
pub fn observe_block_timed(
    model: &Llama,
    blk: &Block,
    xs: &[Tensor],
    propagate: bool,
    hessians: bool,
    times: &mut StageTimes,
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
    let (mut stats_s, mut hess_s) = (0f64, 0f64);
    let started = Instant::now();
    for x in xs {
        // q/k/v share their input, and so do gate/up: record once, copy after.
        let mut obs = |k: LinearKind, inp: &Tensor| -> candle_core::Result<()> {
            match k {
                LinearKind::Q | LinearKind::O | LinearKind::Gate | LinearKind::Down => {
                    if let Some(h) = hess.as_mut() {
                        timed(&mut hess_s, || h[k.index()].add_batch(inp))
                            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    }
                    timed(&mut stats_s, || stats[k.index()].add_batch(inp))
                }
                _ => Ok(()),
            }
        };
        let y = model.forward_batch(blk, x, Some(&mut obs))?;
        if propagate {
            outs.push(y);
        }
    }
    times.forward += started.elapsed().as_secs_f64() - stats_s - hess_s;
    times.input_stats += stats_s;
    times.hessians += hess_s;
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

/// Run `f` on a matrix's weights as f32 row-major: borrowed in place when the tensor is a
/// contiguous f32 tensor in host memory, otherwise copied (another dtype, or on a GPU), the copy's
/// seconds added to `times.to_host`.
pub fn with_host_weights<R>(
    t: &Tensor,
    times: &mut StageTimes,
    f: impl FnOnce(&[f32], &mut StageTimes) -> R,
) -> Result<R> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) = &*storage {
            if let Some((a, b)) = layout.contiguous_offsets() {
                return Ok(f(&v[a..b], times));
            }
        }
    }
    let w = timed(&mut times.to_host, || weights_f32(t))?;
    Ok(f(&w, times))
}

/// Wanda scores of one linear of a block (dense weights, given input statistics), into `out`.
fn linear_scores(
    blk: &Block,
    k: LinearKind,
    inputs: &[InputStats],
    times: &mut StageTimes,
    out: &mut Vec<f32>,
) -> Result<()> {
    let l = blk.linear(k);
    with_host_weights(&l.weight()?, times, |w, _| {
        wanda_metric_into(w, l.in_features(), &inputs[k.index()].sq_norm, out)
    })
}

/// What calibration keeps of one block's Wanda scores.
pub(crate) struct BlockScores {
    block: ScoreStats,
    linears: Vec<ScoreStats>,
    owl: f64,
}

/// The block's score statistics and OWL ratio, holding one linear's scores at a time: a first
/// pass gives the sums, the per-linear statistics and the median's histogram; a second pass
/// recomputes the scores to count outliers and keep the median's bucket. Identical to the
/// statistics of the 7 linears' scores concatenated.
pub(crate) fn block_scores(
    blk: &Block,
    inputs: &[InputStats],
    owl_m: f64,
    times: &mut StageTimes,
) -> Result<BlockScores> {
    let started = Instant::now();
    let to_host = times.to_host;
    let mut r = RadixStats::default();
    let mut per_linear: Vec<RadixStats> = (0..7).map(|_| RadixStats::default()).collect();
    let mut s = Vec::new();
    for k in LinearKind::ALL {
        linear_scores(blk, k, inputs, times, &mut s)?;
        r.first_pass_with(&s, &mut per_linear[k.index()]);
    }
    let thresh = (owl_m * r.mean()) as f32;
    let mut above = 0usize;
    for k in LinearKind::ALL {
        linear_scores(blk, k, inputs, times, &mut s)?;
        above += count_above(&s, thresh);
        r.second_pass(&s);
        per_linear[k.index()].second_pass(&s);
    }
    let linears = per_linear.into_iter().map(RadixStats::finish).collect();
    let block = r.finish();
    times.block_statistic += started.elapsed().as_secs_f64() - (times.to_host - to_host);
    Ok(BlockScores {
        owl: 100.0 * above as f64 / block.numel as f64,
        block,
        linears,
    })
}

/// How many scores exceed `thresh` (on all cores).
fn count_above(scores: &[f32], thresh: f32) -> usize {
    scores.par_iter().filter(|&&v| v > thresh).count()
}

/// OWL's layerwise outlier density in percent: share of the block's scores above `m` × their
/// mean (two passes over the linears, one linear's scores at a time).
fn block_owl(blk: &Block, inputs: &[InputStats], m: f64) -> Result<f64> {
    let times = &mut StageTimes::default();
    let (mut sums, mut n, mut s) = (Moments::default(), 0usize, Vec::new());
    for k in LinearKind::ALL {
        linear_scores(blk, k, inputs, times, &mut s)?;
        // Summed as calibration's first pass sums, so equal M gives equal ratios.
        sums.add_part(&s);
        n += s.len();
    }
    let thresh = (m * sums.total().0 / n as f64) as f32;
    let mut above = 0usize;
    for k in LinearKind::ALL {
        linear_scores(blk, k, inputs, times, &mut s)?;
        above += count_above(&s, thresh);
    }
    Ok(100.0 * above as f64 / n as f64)
}

/// AlphaPruning's α̂ of a block's 7 linears.
fn block_alphas(blk: &Block) -> Result<[f64; 7]> {
    let mut out = [0f64; 7];
    for k in LinearKind::ALL {
        let l = blk.linear(k);
        let e = eigenvalues(
            &weights_f32(&l.weight()?)?,
            l.out_features(),
            l.in_features(),
        )?;
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
    calibrate_timed(model, windows, owl_m, spectra, progress, &mut Vec::new())
}

/// [`calibrate`], pushing each block's [`StageTimes`] onto `times`.
pub fn calibrate_timed(
    model: &Llama,
    windows: &[Vec<u32>],
    owl_m: f64,
    spectra: bool,
    progress: &mut dyn FnMut(BlockProgress) -> bool,
    times: &mut Vec<StageTimes>,
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
        let mut t = StageTimes::default();
        let blk = timed(&mut t.load, || model.block(i))?;
        let o = observe_block_timed(model, &blk, &xs, i + 1 < n, false, &mut t)?;
        xs = o.outputs;
        let s = block_scores(&blk, &o.stats, owl_m, &mut t)?;
        cal.owl.push(s.owl);
        cal.linears.push(s.linears);
        cal.blocks.push(s.block);
        cal.inputs.push(o.stats);
        if spectra {
            cal.esd.push(timed(&mut t.spectra, || block_alphas(&blk))?);
        }
        drop(blk);
        times.push(t);
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
        let v = vec![4.0f32, 1.0, 3.0, 2.0];
        let s = ScoreStats::of(&v);
        assert_eq!(s.median, 2.0, "lower median of an even count");
        assert_eq!(s.mean, 2.5);
        assert!((s.var - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.get(Statistic::Sum), 10.0);
        assert_eq!(s.get(Statistic::Max), 4.0);
    }

    #[test]
    fn block_scores_stream_equals_the_concatenation() -> Result<()> {
        use crate::model::PrunableLinear;
        use candle_core::{DType, Device};
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
            .map(|&k| {
                let mut s = Vec::new();
                linear_scores(&blk, k, &inputs, &mut StageTimes::default(), &mut s)?;
                Ok(s)
            })
            .collect::<Result<_>>()?;
        let flat: Vec<f32> = all.iter().flatten().copied().collect();
        let mean = flat.iter().map(|&v| v as f64).sum::<f64>() / flat.len() as f64;
        let above = flat.iter().filter(|&&v| v > (3.0 * mean) as f32).count();
        let s = block_scores(&blk, &inputs, 3.0, &mut StageTimes::default())?;
        assert_eq!(s.block, ScoreStats::of(&flat));
        assert_eq!(s.owl, 100.0 * above as f64 / flat.len() as f64);
        assert!(above > 0, "the toy block has outliers above 3× the mean");
        assert_eq!(block_owl(&blk, &inputs, 3.0)?, s.owl);
        for (k, v) in all.into_iter().enumerate() {
            assert_eq!(s.linears[k], ScoreStats::of(&v));
        }
        Ok(())
    }

    #[test]
    fn statistics_are_the_same_on_any_number_of_threads() {
        let mut x = 99u64;
        let vals: Vec<f32> = (0..300_001)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((x >> 40) as f32 / (1u64 << 24) as f32).powi(2) * 7.0
            })
            .collect();
        let parts: Vec<&[f32]> = vec![&vals[..70_000], &vals[70_000..70_001], &vals[70_001..]];
        let run = || {
            (
                ScoreStats::of_parts(&parts),
                super::super::select::kth_smallest(&vals, 123_456),
                count_above(&vals, 3.5),
            )
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        assert_eq!(one, pool(4).install(run));
        assert_eq!(one.0, ScoreStats::of(&vals), "parts equal the whole");
        let mut sorted = vals.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(one.1, sorted[123_456]);
        assert_eq!(one.0.median, sorted[150_000], "lower median");
        // The chunked sums agree with a plain sum to rounding.
        let plain = vals.iter().map(|&v| v as f64).sum::<f64>() / vals.len() as f64;
        assert!((one.0.mean - plain).abs() < 1e-12 * plain);
    }

    #[test]
    fn parts_equal_the_concatenation() {
        // Ties, zeros, tiny and large values, split unevenly.
        let mut x = 12345u64;
        let vals: Vec<f32> = (0..20_001)
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
        let c = ScoreStats::of(&vals);
        assert_eq!(p, c);
        let even = vec![3.0f32, 1.0, 2.0, 2.0];
        assert_eq!(
            ScoreStats::of_parts(&[&even[..1], &even[1..]]),
            ScoreStats::of(&even)
        );
    }
}
