//! From calibration statistics and parameters to a pruned model: plan the allocation, then apply
//! masks in `preview` (dense statistics, no further forward) or `faithful` mode (the paper's
//! sequential pass: each block's masks from the outputs of the already-pruned earlier blocks).

use std::time::Instant;

use candle_core::Tensor;
use color_eyre::eyre::{bail, Result};
use rayon::prelude::*;

use super::allocate::{allocate, n_of_m, AllocInput};
use super::mask::{n_of_m as n_of_m_mask, per_matrix, per_row, wanda_metric_into, Metric, Pattern};
use super::params::{invalid, Param};
/// The parameter set lives with the table that describes it; re-exported here for callers that
/// name it beside [`plan`].
pub use super::params::{Granularity, Mode, PruneParams};
use super::sparsegpt::{fasterprune, Hessian, Target};
use super::stats::{
    block_scores, embed_windows, observe_block_timed, with_host_weights, BlockProgress, Calibration,
};
use super::timing::{timed, StageTimes};
use crate::model::llama::Block;
use crate::model::{InputStats, LinearKind, Llama};

/// The allocation of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Block score under the chosen statistic.
    pub scores: Vec<f64>,
    /// Requested sparsity per block and linear.
    pub linear: Vec<[f64; 7]>,
    /// Requested sparsity per block (parameter-weighted over its linears).
    pub block: Vec<f64>,
    /// N per block for N:M patterns.
    pub n_of_m: Option<Vec<usize>>,
    pub allocate_us: f64,
}

/// Parameter count of every linear, `[block][LinearKind::index]`: all that allocation needs to
/// know about the model.
pub fn linear_numel(model: &Llama) -> Vec<[f64; 7]> {
    model
        .blocks
        .iter()
        .map(|b| std::array::from_fn(|k| b.linears[k].elem_count() as f64))
        .collect()
}

/// Pure allocation from cached statistics.
pub fn plan(model: &Llama, cal: &Calibration, p: &PruneParams) -> Result<Plan> {
    plan_for(&linear_numel(model), cal, p)
}

/// Pure allocation from cached statistics and the linears' sizes (what the TUI calls per key).
pub fn plan_for(numel: &[[f64; 7]], cal: &Calibration, p: &PruneParams) -> Result<Plan> {
    let n = numel.len();
    p.validate(n)?;
    if cal.blocks.len() != n {
        bail!("statistics for {} of {n} blocks", cal.blocks.len());
    }
    if p.alloc.allocation.needs_spectra() && cal.esd.len() != n {
        return Err(invalid(
            Param::Allocation,
            "alpha needs the spectra (α̂) of the weights, which this calibration skipped: \
             calibrate again with it",
        ));
    }
    let started = Instant::now();
    let alloc = p.effective_alloc();
    let scores: Vec<f64> = cal.blocks.iter().map(|s| s.get(p.statistic)).collect();
    let linear: Vec<[f64; 7]> = match p.granularity {
        Granularity::Block => {
            let s32: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
            let w: Vec<f64> = numel.iter().map(|x| x.iter().sum()).collect();
            // AlphaPruning's `block_wise` mapping: the mean α̂ of the block's linears.
            let esd: Vec<f64> = cal
                .esd
                .iter()
                .map(|a| a.iter().sum::<f64>() / 7.0)
                .collect();
            let inp = AllocInput {
                scores: &scores,
                scores_f32: &s32,
                outliers: &cal.owl,
                esd: &esd,
                weights: &w,
            };
            allocate(&inp, &alloc).into_iter().map(|s| [s; 7]).collect()
        }
        Granularity::Linear => {
            let ls: Vec<f64> = cal
                .linears
                .iter()
                .flat_map(|b| b.iter().map(|s| s.get(p.statistic)))
                .collect();
            let s32: Vec<f32> = ls.iter().map(|&x| x as f32).collect();
            let w: Vec<f64> = numel.iter().flatten().copied().collect();
            let owl: Vec<f64> = cal.owl.iter().flat_map(|&o| [o; 7]).collect();
            let esd: Vec<f64> = cal.esd.iter().flatten().copied().collect();
            let inp = AllocInput {
                scores: &ls,
                scores_f32: &s32,
                outliers: &owl,
                esd: &esd,
                weights: &w,
            };
            allocate(&inp, &alloc)
                .chunks(7)
                .map(|c| std::array::from_fn(|k| c[k]))
                .collect()
        }
    };
    let block: Vec<f64> = linear
        .iter()
        .zip(numel)
        .map(|(s, w)| s.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / w.iter().sum::<f64>())
        .collect();
    let n_of_m = match p.pattern {
        Pattern::NOfM { m, .. } => Some(n_of_m(&block, m)),
        Pattern::Unstructured => None,
    };
    Ok(Plan {
        scores,
        linear,
        block,
        n_of_m,
        allocate_us: started.elapsed().as_secs_f64() * 1e6,
    })
}

/// Mask the 7 linears of block `i` from its input statistics (and, for SparseGPT, their
/// Hessians).
pub fn prune_block(
    model: &mut Llama,
    i: usize,
    stats: &[InputStats],
    hessians: Option<&[Hessian]>,
    plan: &Plan,
    p: &PruneParams,
) -> Result<()> {
    let mut blk = model.block(i)?.into_owned();
    prune_linears(
        &mut blk,
        i,
        stats,
        hessians,
        plan,
        p,
        &mut StageTimes::default(),
    )?;
    model.store_block(i, blk)?;
    Ok(())
}

/// Mask the 7 linears of `blk`, which is block `i` of the model, adding each stage's seconds to
/// `times`.
fn prune_linears(
    blk: &mut Block,
    i: usize,
    stats: &[InputStats],
    hessians: Option<&[Hessian]>,
    plan: &Plan,
    p: &PruneParams,
    times: &mut StageTimes,
) -> Result<()> {
    let device = blk.input_layernorm.device().clone();
    let on_host = device.is_cpu();
    // One metric buffer for the 7 linears (a 7B MLP's is 180 MB).
    let mut metric = Vec::new();
    for k in LinearKind::ALL {
        let l = blk.linear_mut(k);
        let (rows, cols) = (l.out_features(), l.in_features());
        let s = plan.linear[i][k.index()];
        let n_of_m = match p.pattern {
            Pattern::NOfM { m, .. } => {
                if cols % m != 0 {
                    bail!(
                        "{}: {cols} input columns are not a multiple of M = {m}",
                        l.name
                    );
                }
                Some((plan.n_of_m.as_ref().map(|v| v[i]).unwrap_or(0), m))
            }
            Pattern::Unstructured => None,
        };
        if p.metric == Metric::SparseGpt {
            let h = hessians
                .ok_or_else(|| color_eyre::eyre::eyre!("SparseGPT needs the layer Hessians"))?;
            let target = match n_of_m {
                Some((n, m)) => Target::NOfM { n, m },
                None => Target::Ratio(s),
            };
            let mut w64 = with_host_weights(&l.weight()?, times, |w, _| {
                w.iter().map(|&x| x as f64).collect::<Vec<f64>>()
            })?;
            let (w32, mask) = timed(&mut times.solve, || -> Result<_> {
                let mask = fasterprune(&mut w64, rows, cols, &h[k.index()].matrix()?, target)?;
                Ok((w64.iter().map(|&x| x as f32).collect::<Vec<f32>>(), mask))
            })?;
            timed(&mut times.apply, || {
                l.set_weight_and_mask(
                    Tensor::from_vec(w32, (rows, cols), &device)?,
                    Tensor::from_vec(mask, (rows, cols), &device)?,
                )
            })?;
            continue;
        }
        let masked = with_host_weights(&l.weight()?, times, |w, times| {
            let mask = timed(&mut times.masks, || {
                match p.metric {
                    Metric::Wanda => {
                        wanda_metric_into(w, cols, &stats[k.index()].sq_norm, &mut metric)
                    }
                    _ => {
                        metric.resize(w.len(), 0.0);
                        metric
                            .par_iter_mut()
                            .zip(w.par_iter())
                            .for_each(|(m, x)| *m = x.abs());
                    }
                }
                match (n_of_m, p.metric) {
                    (Some((n, m)), _) => n_of_m_mask(&metric, cols, n, m),
                    (None, Metric::Wanda) => per_row(&metric, cols, s),
                    (None, _) => per_matrix(&metric, s),
                }
            });
            // In host memory the masked weights are made here on all cores (w · keep, the same
            // product the device does); a device gets the byte mask, a quarter of the bytes.
            let weights = on_host.then(|| {
                timed(&mut times.apply, || {
                    w.par_iter()
                        .zip(mask.par_iter())
                        .map(|(&x, &m)| x * m as f32)
                        .collect::<Vec<f32>>()
                })
            });
            (mask, weights)
        })?;
        timed(&mut times.apply, || match masked {
            (_, Some(w)) => l.set_weight(Tensor::from_vec(w, (rows, cols), &device)?),
            (mask, None) => l.set_mask(Tensor::from_vec(mask, (rows, cols), &device)?),
        })?;
    }
    Ok(())
}

/// The per-weight stages of block `i` alone, on a copy of its (dense) weights: the block
/// statistic from `cal`'s input statistics, then the masks of the planned sparsities. For timing
/// them on different thread pools (the pruning benchmark on a named shape).
pub fn per_weight_stages(
    model: &Llama,
    i: usize,
    cal: &Calibration,
    plan: &Plan,
    p: &PruneParams,
) -> Result<StageTimes> {
    let mut times = StageTimes::default();
    let mut blk = model.block(i)?.into_owned();
    block_scores(&blk, &cal.inputs[i], cal.owl_m, &mut times)?;
    let p = PruneParams {
        metric: match p.metric {
            Metric::SparseGpt => Metric::Wanda,
            m => m,
        },
        ..p.clone()
    };
    prune_linears(&mut blk, i, &cal.inputs[i], None, plan, &p, &mut times)?;
    Ok(times)
}

/// Preview: every block's masks from the dense statistics.
pub fn prune_preview(
    model: &mut Llama,
    cal: &Calibration,
    plan: &Plan,
    p: &PruneParams,
) -> Result<()> {
    for i in 0..model.blocks.len() {
        prune_block(model, i, &cal.inputs[i], None, plan, p)?;
    }
    Ok(())
}

/// Faithful: block by block, statistics from the outputs of the already-pruned earlier blocks
/// (all 7 linears observed in one pass of the still-dense block), then the pruned block's
/// outputs feed the next (the paper's sequential pass: each block calibrated on the pruned blocks before it).
pub fn prune_faithful(
    model: &mut Llama,
    windows: &[Vec<u32>],
    plan: &Plan,
    p: &PruneParams,
    progress: &mut dyn FnMut(BlockProgress) -> bool,
) -> Result<()> {
    prune_faithful_timed(model, windows, plan, p, progress, &mut Vec::new())
}

/// [`prune_faithful`], pushing each block's [`StageTimes`] onto `times`.
pub fn prune_faithful_timed(
    model: &mut Llama,
    windows: &[Vec<u32>],
    plan: &Plan,
    p: &PruneParams,
    progress: &mut dyn FnMut(BlockProgress) -> bool,
    times: &mut Vec<StageTimes>,
) -> Result<()> {
    let started = Instant::now();
    let n = model.blocks.len();
    let tokens = windows.len() * windows.first().map(|w| w.len()).unwrap_or(0);
    let mut xs = embed_windows(model, windows)?;
    for i in 0..n {
        let mut t = StageTimes::default();
        // One block's weights at a time (read now when the model is offloaded).
        let mut blk = timed(&mut t.load, || model.block(i))?.into_owned();
        let sparsegpt = p.metric == Metric::SparseGpt;
        let o = observe_block_timed(model, &blk, &xs, false, sparsegpt, &mut t)?;
        prune_linears(
            &mut blk,
            i,
            &o.stats,
            o.hessians.as_deref(),
            plan,
            p,
            &mut t,
        )?;
        // The pruned block feeds the next one in its sparse form (where that is faster).
        timed(&mut t.apply, || blk.compact(model.sparse))?;
        if i + 1 < n {
            xs = timed(&mut t.forward, || {
                xs.iter()
                    .map(|x| model.forward_batch(&blk, x, None))
                    .collect::<candle_core::Result<_>>()
            })?;
        }
        model.store_block(i, blk)?;
        times.push(t);
        crate::error::check(progress(BlockProgress {
            block: i + 1,
            blocks: n,
            tokens,
            started,
            stats: None,
        }))?;
    }
    Ok(())
}

/// Achieved sparsity (exact zeros) per block over its 7 linears.
pub fn achieved(model: &Llama) -> Result<Vec<f64>> {
    (0..model.blocks.len())
        .map(|i| {
            let (mut z, mut t) = (0f64, 0f64);
            for l in &model.block(i)?.linears {
                let n = l.elem_count() as f64;
                z += l.sparsity()? * n;
                t += n;
            }
            Ok(z / t)
        })
        .collect()
}
