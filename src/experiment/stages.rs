//! The paper protocol's pruning stages timed block by block (the dense ratio pass, the
//! allocation, the per-weight stages of block 0 on one thread and on all, the faithful pass), on
//! any model: the benchmark runs it on a random-weight model at a real checkpoint's shapes.

use std::time::Instant;

use candle_core::{DType, Device};
use color_eyre::eyre::Result;

use super::Observer;
use crate::model::config::LlamaConfig;
use crate::model::synthetic::random_model;
use crate::model::Llama;
use crate::prune::pipeline::{
    achieved, per_weight_stages, plan, prune_faithful_timed, PruneParams,
};
use crate::prune::stats::calibrate_timed;
use crate::prune::timing::StageTimes;

/// Seconds per block and stage of one protocol run.
#[derive(Debug, Clone)]
pub struct ProtocolTimes {
    /// The dense calibration pass, per block.
    pub dense: Vec<StageTimes>,
    /// The faithful pass, per block.
    pub faithful: Vec<StageTimes>,
    /// The allocation (seconds).
    pub allocate_s: f64,
    /// The per-weight stages of block 0 on one thread and on all of them.
    pub one_thread: StageTimes,
    pub all_threads: StageTimes,
    /// Largest |achieved − planned| sparsity over the blocks.
    pub sparsity_err: f64,
}

/// A random-weight model at a real checkpoint's shapes, built in memory (nothing downloaded:
/// the time of every stage depends on the shapes, not on the values).
pub struct RandomShape<'a> {
    pub config: &'a LlamaConfig,
    /// Blocks built (of the config's own count).
    pub blocks: usize,
    pub vocab: usize,
    pub device: &'a Device,
    pub dtype: DType,
}

impl RandomShape<'_> {
    /// The random-weight model (fixed seed) and the seconds its build took.
    fn build(&self) -> Result<(Llama, f64)> {
        let t = Instant::now();
        let model = random_model(
            self.config,
            self.blocks,
            self.vocab,
            0x5EED,
            self.device,
            self.dtype,
        )?;
        Ok((model, t.elapsed().as_secs_f64()))
    }
}

/// Build `shape`'s model, then [`time_protocol`] on it: the protocol's times and the seconds the
/// build took.
pub fn time_random_protocol(
    shape: &RandomShape<'_>,
    windows: &[Vec<u32>],
    params: &PruneParams,
    obs: &mut dyn Observer,
) -> Result<(ProtocolTimes, f64)> {
    let (mut model, build_s) = shape.build()?;
    Ok((time_protocol(&mut model, windows, params, obs)?, build_s))
}

/// Build `shape`'s model and time one LoRA training step (rank `rank`) on `windows`: the step's
/// figures and the seconds the build took.
pub fn time_random_recovery(
    shape: &RandomShape<'_>,
    windows: &[Vec<u32>],
    rank: usize,
) -> Result<(crate::recover::StepTime, f64)> {
    let (mut model, build_s) = shape.build()?;
    let adapters = crate::recover::Adapters::new(&model, rank, 2.0 * rank as f64, 1)?;
    let step = crate::recover::time_step(&mut model, &adapters, windows, 2e-4)?;
    Ok((step, build_s))
}

/// Calibrate `model` on `windows`, allocate, time block 0's per-weight stages (the dense
/// weights still) and prune `model` in place by the faithful pass, each stage timed.
pub fn time_protocol(
    model: &mut Llama,
    windows: &[Vec<u32>],
    params: &PruneParams,
    obs: &mut dyn Observer,
) -> Result<ProtocolTimes> {
    let mut dense = Vec::new();
    let cal = calibrate_timed(
        model,
        windows,
        params.owl_m,
        false,
        &mut |bp| {
            obs.status(&format!("dense pass: block {}/{}", bp.block, bp.blocks));
            true
        },
        &mut dense,
    )?;
    let t = Instant::now();
    let pl = plan(model, &cal, params)?;
    let allocate_s = t.elapsed().as_secs_f64();

    obs.status("per-weight stages of block 0 on one thread");
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()?
        .install(|| per_weight_stages(model, 0, &cal, &pl, params))?;
    obs.status(&format!(
        "per-weight stages of block 0 on {} threads",
        rayon::current_num_threads()
    ));
    let all_threads = per_weight_stages(model, 0, &cal, &pl, params)?;

    let mut faithful = Vec::new();
    prune_faithful_timed(
        model,
        windows,
        &pl,
        params,
        &mut |bp| {
            obs.status(&format!("faithful pass: block {}/{}", bp.block, bp.blocks));
            true
        },
        &mut faithful,
    )?;
    let got = achieved(model)?;
    let sparsity_err = got
        .iter()
        .zip(&pl.block)
        .map(|(g, w)| (g - w).abs())
        .fold(0f64, f64::max);
    Ok(ProtocolTimes {
        dense,
        faithful,
        allocate_s,
        one_thread,
        all_threads,
        sparsity_err,
    })
}
