//! How long work reports on itself: one observer type for every front end. The CLI prints the
//! steps on stderr, the explorer's worker turns them into messages; a `Break` from `step` (or
//! `token`) cancels the job, which then ends with the typed [`crate::error::Cancelled`].

use std::fmt;
use std::ops::ControlFlow;
use std::time::Instant;

use crate::prune::stats::ScoreStats;

/// Long-running work, as named in progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Load,
    Calibrate,
    DenseEval,
    Prune,
    PrunedEval,
    Generate,
    Save,
    /// Zero-shot accuracy; steps are log-likelihood requests.
    ZeroShot,
    /// Quantizing the pruned linears; steps are blocks.
    Quantize,
    /// Perplexity of the pruned and quantized model.
    QuantizedEval,
    /// LoRA training; steps are optimizer steps.
    Recover,
    /// Perplexity of the pruned model with its LoRA adapters.
    RecoveredEval,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Load => "loading",
            Stage::Calibrate => "calibrating block",
            Stage::DenseEval => "dense perplexity, window",
            Stage::Prune => "faithful pruning, block",
            Stage::PrunedEval => "pruned perplexity, window",
            Stage::Generate => "generating",
            Stage::Save => "saving",
            Stage::ZeroShot => "zero-shot, request",
            Stage::Quantize => "quantizing, block",
            Stage::QuantizedEval => "pruned+quantized perplexity, window",
            Stage::Recover => "LoRA step",
            Stage::RecoveredEval => "pruned+LoRA perplexity, window",
        }
    }
}

/// `done` of `total` steps of a stage, started at `started`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub stage: Stage,
    pub done: usize,
    pub total: usize,
    /// Tokens processed per step (whole-model equivalent), for tokens/s; 0 when not meaningful.
    pub tokens_per_step: usize,
    pub started: Instant,
}

impl Step {
    /// Tokens per second since the stage started.
    pub fn tokens_per_s(&self) -> f64 {
        (self.done * self.tokens_per_step) as f64 / self.elapsed_s()
    }

    /// Steps per second since the stage started.
    pub fn per_s(&self) -> f64 {
        self.done as f64 / self.elapsed_s()
    }

    /// Seconds left at the rate so far (0 before the first step).
    pub fn eta_s(&self) -> f64 {
        match self.done {
            0 => 0.0,
            d => self.elapsed_s() / d as f64 * self.total.saturating_sub(d) as f64,
        }
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64().max(1e-9)
    }
}

/// A remark of a run that front ends word themselves: the command line adds the flag that
/// changes what happened (the engine knows no flags), the default wording names none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Notice {
    /// The calibration statistics came from the statistics cache.
    StatsFromCache,
    /// The dense perplexity came from the dense cache.
    DenseFromCache,
    /// The dense zero-shot scores came from the dense cache.
    DenseZeroShotFromCache,
    /// DLP's α was chosen on `windows` held-out calibration windows.
    AlphaChosen { alpha: f64, windows: usize },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::StatsFromCache => f.write_str("calibration statistics from the cache"),
            Notice::DenseFromCache => f.write_str("dense perplexity from the cache"),
            Notice::DenseZeroShotFromCache => f.write_str("dense zero-shot scores from the cache"),
            Notice::AlphaChosen { alpha, windows } => write!(
                f,
                "α = {alpha} (lowest perplexity on {windows} held-out calibration windows)"
            ),
        }
    }
}

/// Receives what an experiment does while it does it.
pub trait Observer {
    /// A short status line ("tokenizing", "fetching …").
    fn status(&mut self, msg: &str);
    /// A typed remark of the run; shown as its plain wording unless the front end words it.
    fn notice(&mut self, n: Notice) {
        self.status(&n.to_string())
    }
    /// A step of a long stage finished; `Break` cancels the job.
    fn step(&mut self, step: Step) -> ControlFlow<()>;
    /// Calibration finished block `block` (its statistics, for live charts).
    fn block_scored(&mut self, _block: usize, _stats: ScoreStats) {}
    /// Generation of prompt `prompt` starts.
    fn generation_started(&mut self, _prompt: usize) {}
    /// A decoded piece of prompt `prompt`'s continuation; `Break` cancels.
    fn token(&mut self, _prompt: usize, _text: &str) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
    /// Prompt `prompt`'s continuation is complete: `tokens` new tokens, decoded at
    /// `tokens_per_s` (KV-cached steps after the first forward; 0 when none was timed). A
    /// continuation from the cache reports the figures measured when it was generated.
    fn generation_done(&mut self, _prompt: usize, _tokens: usize, _tokens_per_s: f64) {}
}

/// Observes nothing and never cancels (benchmarks, tests).
pub struct Silent;

impl Observer for Silent {
    fn status(&mut self, _msg: &str) {}
    fn step(&mut self, _step: Step) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_and_eta() {
        let s = Step {
            stage: Stage::Calibrate,
            done: 2,
            total: 6,
            tokens_per_step: 100,
            started: Instant::now() - Duration::from_secs(4),
        };
        // 200 tokens and 2 steps in t seconds; 4 steps left at t/2 each. The rates read the clock
        // themselves, so t is bracketed by reading it just before and just after: exact bounds
        // however loaded the machine is (no assumption on how long the calls take).
        let lo = s.started.elapsed().as_secs_f64();
        let (tps, per_s, eta) = (s.tokens_per_s(), s.per_s(), s.eta_s());
        let hi = s.started.elapsed().as_secs_f64();
        assert!(lo >= 4.0);
        assert!(
            200.0 / hi <= tps && tps <= 200.0 / lo,
            "{tps} ∉ 200/[{lo}, {hi}]"
        );
        assert!(
            2.0 / hi <= per_s && per_s <= 2.0 / lo,
            "{per_s} ∉ 2/[{lo}, {hi}]"
        );
        assert!(2.0 * lo <= eta && eta <= 2.0 * hi, "{eta} ∉ 2·[{lo}, {hi}]");
        assert_eq!(Step { done: 0, ..s }.eta_s(), 0.0);
        assert_eq!(Step { done: 6, ..s }.eta_s(), 0.0, "nothing left");
    }
}
