//! `dlpx bench --prune --shape`: the paper protocol's stages timed block by block on a
//! random-weight model at the shapes of a real checkpoint (README "Benchmarks"). Nothing is
//! downloaded: the model is built in memory, the calibration windows are random token ids (the
//! time of every stage depends on the shapes, not on the values). The figures: seconds per block
//! and stage for the dense ratio pass and the faithful pass, the per-weight stages on one thread
//! against all, and the whole model projected to its real block count and to the paper's
//! 128 calibration windows.

use color_eyre::eyre::{bail, Result};

use crate::cli::commands::Ctx;
use crate::cli::BenchArgs;
use crate::experiment::stages::{time_random_protocol, RandomShape};
use crate::model::synthetic::{random_windows, Shape};
use crate::model::Placement;
use crate::prune::pipeline::{Mode, PruneParams};
use crate::prune::timing::StageTimes;

/// The paper's calibration: 128 windows (of 2048 tokens).
const PAPER_WINDOWS: usize = 128;

/// A pass's mean time per block.
fn per_block(times: &[StageTimes]) -> StageTimes {
    times
        .iter()
        .fold(StageTimes::default(), |acc, t| acc.plus(t))
        .scaled(1.0 / times.len().max(1) as f64)
}

/// A block's time with the token-proportional stages (forwards, input statistics, Hessians)
/// scaled by `f`: the projection to more calibration windows.
fn scale_tokens(t: &StageTimes, f: f64) -> StageTimes {
    StageTimes {
        forward: t.forward * f,
        input_stats: t.input_stats * f,
        hessians: t.hessians * f,
        ..*t
    }
}

/// The named shape, after the checks both shape benchmarks need: the model is built in memory
/// and needs at least one window.
fn checked_shape(ctx: &Ctx, a: &BenchArgs, shape: &str) -> Result<Shape> {
    if ctx.place == Placement::Offload {
        bail!("--shape builds its model in memory; drop --offload (it offloads a model file)");
    }
    if a.calib_samples == 0 {
        bail!("--calib-samples must be at least 1");
    }
    Shape::parse(shape)
}

pub fn run(ctx: &mut Ctx, a: &BenchArgs, shape: &str) -> Result<()> {
    let shape = checked_shape(ctx, a, shape)?;
    let seq_len = a.seq_len.unwrap_or(2048);
    let p = &mut ctx.progress;
    p.status(&format!(
        "building {} random blocks at {} shapes",
        a.blocks, shape.label
    ));
    let windows = random_windows(a.calib_samples, seq_len, a.shape_vocab, 17);
    let params = PruneParams {
        metric: a.metric.into(),
        mode: Mode::Faithful,
        ..PruneParams::default()
    };
    let random = RandomShape {
        config: &shape.config,
        blocks: a.blocks,
        vocab: a.shape_vocab,
        device: &ctx.device,
        dtype: ctx.dtype,
    };
    let (pt, build_s) = time_random_protocol(&random, &windows, &params, p)?;
    let (d, f) = (per_block(&pt.dense), per_block(&pt.faithful));
    let block = d.plus(&f);
    let scale = PAPER_WINDOWS as f64 / a.calib_samples as f64;
    let fig = Figures {
        shape: &shape,
        seq_len,
        real_blocks: shape.config.num_hidden_layers,
        threads: rayon::current_num_threads(),
        build_s,
        allocate_s: pt.allocate_s,
        sparsity_err: pt.sparsity_err,
        one: &pt.one_thread,
        all: &pt.all_threads,
        paper: scale_tokens(&block, scale),
        d,
        f,
        block,
        scale,
        peak_mib: crate::prune::memory::peak_rss_kib().map(|k| k as f64 / 1024.0),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&fig.json(ctx, a))?);
    } else {
        fig.print(ctx, a);
    }
    Ok(())
}

/// One thread's time over all threads' (NaN when the latter is zero).
fn speedup(s1: f64, sn: f64) -> f64 {
    if sn > 0.0 {
        s1 / sn
    } else {
        f64::NAN
    }
}

fn stage_json(t: &StageTimes) -> serde_json::Value {
    serde_json::Value::Object(
        t.stages()
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect(),
    )
}

/// The protocol's timings and what they project to.
struct Figures<'a> {
    shape: &'a Shape,
    seq_len: usize,
    real_blocks: usize,
    threads: usize,
    build_s: f64,
    allocate_s: f64,
    sparsity_err: f64,
    /// Block 0's per-weight stages on one thread and on all.
    one: &'a StageTimes,
    all: &'a StageTimes,
    /// Per block: the dense pass, the faithful pass, both, and both at the paper's windows.
    d: StageTimes,
    f: StageTimes,
    block: StageTimes,
    paper: StageTimes,
    scale: f64,
    peak_mib: Option<f64>,
}

impl Figures<'_> {
    fn whole_s(&self) -> f64 {
        self.block.total() * self.real_blocks as f64
    }

    fn whole_paper_s(&self) -> f64 {
        self.paper.total() * self.real_blocks as f64
    }

    fn json(&self, ctx: &Ctx, a: &BenchArgs) -> serde_json::Value {
        let (one, all, block, paper) = (self.one, self.all, &self.block, &self.paper);
        serde_json::json!({
            "shape": self.shape.label,
            "device": crate::device::describe(&ctx.device),
            "dtype": format!("{:?}", ctx.dtype).to_lowercase(),
            "threads": self.threads,
            "blocks": a.blocks,
            "real_blocks": self.real_blocks,
            "vocab": a.shape_vocab,
            "calib_windows": a.calib_samples,
            "seq_len": self.seq_len,
            "metric": crate::prune::mask::Metric::from(a.metric),
            "block_linear_params": self.shape.config.block_linear_params(),
            "build_s": self.build_s,
            "allocate_s": self.allocate_s,
            "per_block": {"dense_pass": stage_json(&self.d), "faithful_pass": stage_json(&self.f), "both": stage_json(block),
                "total_s": block.total(), "per_weight_s": block.per_weight(),
                "per_weight_share": block.per_weight() / block.total()},
            "per_weight_block0": {"one_thread": stage_json(one), "all_threads": stage_json(all),
                "speedup_block_statistic": speedup(one.block_statistic, all.block_statistic),
                "speedup_masks": speedup(one.masks, all.masks),
                "speedup_per_weight": speedup(one.per_weight(), all.per_weight())},
            "projected": {"whole_model_s": self.whole_s(),
                "whole_model_paper_windows_s": self.whole_paper_s(), "paper_windows": PAPER_WINDOWS,
                "per_weight_share_paper_windows": paper.per_weight() / paper.total()},
            "achieved_vs_planned_max_abs": self.sparsity_err,
            "peak_rss_mib": self.peak_mib,
        })
    }

    fn print(&self, ctx: &Ctx, a: &BenchArgs) {
        let (one, all, d, f, block) = (self.one, self.all, &self.d, &self.f, &self.block);
        let (seq_len, real_blocks, threads) = (self.seq_len, self.real_blocks, self.threads);
        let (build_s, sparsity_err, scale) = (self.build_s, self.sparsity_err, self.scale);
        println!(
            "paper protocol at {} ({} of {real_blocks} blocks, {} linear weights per block, vocabulary reduced to {}), {} × {seq_len} random-token windows, {:?} faithful DLP p 0.7, {}",
            self.shape.label,
            a.blocks,
            self.shape.config.block_linear_params(),
            a.shape_vocab,
            a.calib_samples,
            crate::prune::mask::Metric::from(a.metric),
            crate::device::describe(&ctx.device)
        );
        println!(
            "{:<16} {:>11} {:>11} {:>11} {:>7}",
            "stage (s/block)", "dense pass", "faithful", "both", "share"
        );
        for ((name, dv), ((_, fv), (_, bv))) in d
            .stages()
            .iter()
            .zip(f.stages().iter().zip(block.stages().iter()))
        {
            println!(
                "{name:<16} {dv:>11.3} {fv:>11.3} {bv:>11.3} {:>6.1}%",
                100.0 * bv / block.total()
            );
        }
        println!(
            "{:<16} {:>11.3} {:>11.3} {:>11.3}",
            "total",
            d.total(),
            f.total(),
            block.total()
        );
        println!(
            "per-weight stages of block 0 (statistic + masks): {:.3}s on 1 thread, {:.3}s on {threads} → {:.2}× (statistic {:.2}×, masks {:.2}×)",
            one.per_weight(),
            all.per_weight(),
            speedup(one.per_weight(), all.per_weight()),
            speedup(one.block_statistic, all.block_statistic),
            speedup(one.masks, all.masks)
        );
        println!(
            "projected whole model ({real_blocks} blocks): {:.1} min at {} windows; {:.1} min at the paper's {PAPER_WINDOWS} × {seq_len} (forwards and statistics scaled by {scale:.0}×; per-weight stages {:.1}% of it)",
            self.whole_s() / 60.0,
            a.calib_samples,
            self.whole_paper_s() / 60.0,
            100.0 * self.paper.per_weight() / self.paper.total()
        );
        println!(
            "allocation {:.1} ms · model built in {build_s:.1}s · achieved sparsity within {sparsity_err:.1e} of the plan · peak RSS {}",
            self.allocate_s * 1e3,
            self.peak_mib
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "unknown".into())
        );
    }
}

/// LoRA rank of `dlpx bench --recover --shape` (`dlpx recover`'s default).
const RECOVER_RANK: usize = 8;

/// `dlpx bench --recover --shape`: one LoRA training step (checkpointed forward, backward, AdamW)
/// on a random-weight model at a real checkpoint's shapes; its peak RSS and tokens/s, and the
/// whole model projected: the step time scaled to the real block count, the memory by the
/// recovery estimate (resident and offloaded), which is also printed for the model built here.
pub fn recover(ctx: &mut Ctx, a: &BenchArgs, shape: &str) -> Result<()> {
    use crate::experiment::stages::time_random_recovery;
    use crate::prune::memory::gib;
    use crate::recover::memory::RecoveryEstimate;
    let shape = checked_shape(ctx, a, shape)?;
    let seq_len = a.seq_len.unwrap_or(256);
    let real_blocks = shape.config.num_hidden_layers;
    let p = &mut ctx.progress;
    p.status(&format!(
        "building {} random blocks at {} shapes, one LoRA step on {} × {seq_len} tokens",
        a.blocks, shape.label, a.calib_samples
    ));
    let windows = random_windows(a.calib_samples, seq_len, a.shape_vocab, 17);
    let random = RandomShape {
        config: &shape.config,
        blocks: a.blocks,
        vocab: a.shape_vocab,
        device: &ctx.device,
        dtype: ctx.dtype,
    };
    let (step, build_s) = time_random_recovery(&random, &windows, RECOVER_RANK)?;
    let peak_mib = crate::prune::memory::peak_rss_kib().map(|k| k as f64 / 1024.0);
    let step_s = step.forward_backward_s + step.optimizer_s;
    let tok_s = step.tokens as f64 / step_s;
    // The blocks dominate a step at these shapes; the head's share is left out of the scaling.
    let whole_s = step_s * real_blocks as f64 / a.blocks as f64;
    let db = ctx.dtype.size_in_bytes();
    let mut built = shape.config.clone();
    built.num_hidden_layers = a.blocks;
    built.vocab_size = a.shape_vocab;
    let est = |c: &crate::model::LlamaConfig, offload| {
        RecoveryEstimate::new(c, db, RECOVER_RANK, a.calib_samples, seq_len, offload)
    };
    let (here, whole, whole_off) = (
        est(&built, false),
        est(&shape.config, false),
        est(&shape.config, true),
    );
    if a.json {
        let v = serde_json::json!({
            "shape": shape.label,
            "device": crate::device::describe(&ctx.device),
            "dtype": format!("{:?}", ctx.dtype).to_lowercase(),
            "threads": rayon::current_num_threads(),
            "blocks": a.blocks,
            "real_blocks": real_blocks,
            "vocab": a.shape_vocab,
            "rank": RECOVER_RANK,
            "windows": a.calib_samples,
            "seq_len": seq_len,
            "build_s": build_s,
            "step": {"loss": step.loss, "forward_backward_s": step.forward_backward_s,
                "optimizer_s": step.optimizer_s, "tokens": step.tokens, "tokens_per_s": tok_s},
            "peak_rss_mib": peak_mib,
            "estimate_here": here,
            "projected": {"step_s": whole_s, "tokens_per_s": step.tokens as f64 / whole_s,
                "memory": whole, "memory_offload": whole_off},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "one LoRA step (rank {RECOVER_RANK}, checkpointed forward + backward + AdamW) at {} ({} of {real_blocks} blocks, vocabulary reduced to {}), {} × {seq_len} random-token windows, {:?}, {}",
        shape.label,
        a.blocks,
        a.shape_vocab,
        a.calib_samples,
        ctx.dtype,
        crate::device::describe(&ctx.device)
    );
    println!(
        "step {step_s:.2}s (forward + backward {:.2}s, AdamW {:.3}s): {tok_s:.0} tokens/s · peak RSS {} (estimate for the model built here {:.2} GiB) · built in {build_s:.1}s",
        step.forward_backward_s,
        step.optimizer_s,
        peak_mib
            .map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "unknown".into()),
        gib(here.total)
    );
    println!(
        "projected whole model ({real_blocks} blocks): {whole_s:.1}s per step, {:.1} tokens/s; memory {:.1} GiB resident, {:.1} GiB with --offload ({:?})",
        step.tokens as f64 / whole_s,
        gib(whole.total),
        gib(whole_off.total),
        ctx.dtype
    );
    Ok(())
}
