//! The benchmarks' measurements (README, "Benchmarks"): the dense forward and the tokenizer,
//! the pruning stages of the demo protocol, and zero-shot scoring, each timed here and handed
//! back as figures; `dlpx bench` only renders them.

use std::time::Instant;

use candle_core::Tensor;
use color_eyre::eyre::Result;

use super::{Experiment, Observer, Silent, Stage};
use crate::model::LoadedModel;
use crate::prune::pipeline::{plan, Mode, PruneParams};
use crate::zeroshot::score::{loglikelihoods, EncodedDoc, Work};
use crate::zeroshot::{Task, TaskSource};

/// The middle value (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds since `t`.
fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The tokenizer on a whole text and the dense forward on its first windows (medians).
#[derive(Debug, Clone, Copy)]
pub struct ForwardBench {
    /// Token ids of the whole text.
    pub ids: usize,
    pub tokenizer_s: f64,
    /// One forward of every window with all-position logits, as perplexity needs.
    pub forward_s: f64,
}

/// Time the tokenizer on `text` and the dense forward on `windows` × `seq_len` of it, each the
/// median of `repeat` runs (the forward after one warm-up pass).
pub fn time_forward(
    m: &LoadedModel,
    text: &str,
    windows: usize,
    seq_len: usize,
    repeat: usize,
    obs: &mut dyn Observer,
) -> Result<ForwardBench> {
    let mut tok_secs = Vec::new();
    let mut ids = 0;
    for _ in 0..repeat {
        let t = Instant::now();
        ids = m.encode(text)?.len();
        tok_secs.push(since(t));
    }
    let encoded = m.encode(text)?;
    let wins = crate::data::windows(&encoded, seq_len, windows, "calib")?;
    let flat: Vec<u32> = wins.iter().flatten().copied().collect();
    let input = Tensor::from_vec(flat, (windows, seq_len), &m.llama.device)?;
    m.llama.forward(&input, 0, None)?;
    let mut fwd = Vec::new();
    for i in 0..repeat {
        obs.status(&format!("forward {}/{repeat}", i + 1));
        let t = Instant::now();
        let out = m.llama.forward(&input, 0, None)?;
        out.device().synchronize()?;
        fwd.push(since(t));
    }
    Ok(ForwardBench {
        ids,
        tokenizer_s: median(tok_secs),
        forward_s: median(fwd),
    })
}

/// The pruning stages of one run of the default parameters, each alone.
#[derive(Debug, Clone, Copy)]
pub struct PruneStages {
    /// The engine's dense calibration pass (never the statistics cache).
    pub dense_pass_s: f64,
    /// The allocation, median of 1000 (microseconds).
    pub allocate_median_us: f64,
    /// Preview masks (from the dense statistics).
    pub preview_masks_s: f64,
    /// The faithful pass.
    pub faithful_pass_s: f64,
    /// The faithfully pruned model's perplexity.
    pub eval_s: f64,
}

/// The zero-shot scoring of a few examples of every task, contexts shared and each choice alone.
#[derive(Debug, Clone, Copy)]
pub struct ZeroShotBench {
    pub shared_s: f64,
    pub shared: Work,
    pub alone_s: f64,
    pub alone: Work,
}

impl Experiment {
    /// Time each pruning stage of the default parameters on this experiment's data (the loaded
    /// weights stay dense: each stage prunes a copy).
    pub fn time_prune_stages(&self, obs: &mut dyn Observer) -> Result<PruneStages> {
        let llama = &self.model.llama;
        obs.status("timing: dense calibration pass");
        let t = Instant::now();
        let cal = crate::prune::stats::calibrate(llama, &self.calib, 5.0, true, &mut |_| true)?;
        let dense_pass_s = since(t);
        let params = PruneParams::default();
        let mut us = Vec::new();
        for _ in 0..1000 {
            us.push(plan(llama, &cal, &params)?.allocate_us);
        }
        let allocate_median_us = median(us);
        let pl = plan(llama, &cal, &params)?;
        obs.status("timing: preview masks");
        let preview = PruneParams {
            mode: Mode::Preview,
            ..params.clone()
        };
        let mut pruned = llama.clone();
        let t = Instant::now();
        self.prune(&mut pruned, &cal, &pl, &preview, &mut Silent)?;
        let preview_masks_s = since(t);
        drop(pruned);
        obs.status("timing: faithful pass");
        let mut faithful = llama.clone();
        let t = Instant::now();
        self.prune(&mut faithful, &cal, &pl, &params, &mut Silent)?;
        let faithful_pass_s = since(t);
        obs.status("timing: evaluation");
        let t = Instant::now();
        self.perplexity(&faithful, Stage::PrunedEval, &mut Silent)?;
        Ok(PruneStages {
            dense_pass_s,
            allocate_median_us,
            preview_masks_s,
            faithful_pass_s,
            eval_s: since(t),
        })
    }

    /// Time zero-shot scoring of the first `limit` demo examples of every task as the zero-shot
    /// job scores them (contexts shared, packed) and with every choice on its own (each request
    /// its own sequence, still packed).
    pub fn time_zeroshot(&self, limit: usize, obs: &mut dyn Observer) -> Result<ZeroShotBench> {
        let set = self.task_set(&Task::ALL, &TaskSource::Demo, Some(limit), obs)?;
        let shared: Vec<EncodedDoc> = set
            .tasks
            .iter()
            .flat_map(|t| t.encoded.iter().cloned())
            .collect();
        let alone: Vec<EncodedDoc> = shared
            .iter()
            .flat_map(|d| d.iter().map(|r| vec![r.clone()]))
            .collect();
        let mut time = |docs: &[EncodedDoc], what: &str| -> Result<(f64, Work)> {
            obs.status(&format!("timing: zero-shot, {what}"));
            let t = Instant::now();
            let (_, w) = loglikelihoods(&self.model.llama, docs, set.max_len, &mut |_, _, _| true)?;
            Ok((since(t), w))
        };
        let (shared_s, shared) = time(&shared, "contexts shared")?;
        let (alone_s, alone) = time(&alone, "each choice alone")?;
        Ok(ZeroShotBench {
            shared_s,
            shared,
            alone_s,
            alone,
        })
    }
}
