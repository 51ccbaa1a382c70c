//! What crosses between the explorer's state and its worker thread: jobs one way, typed
//! progress and results the other.

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::experiment::{Stage, Step, Summary};
use crate::prune::pipeline::{Plan, PruneParams};
use crate::prune::stats::{Calibration, ScoreStats};
use crate::sparse::SparseMode;

/// Messages from the worker thread.
#[derive(Debug, Clone)]
pub enum Msg {
    Status(String),
    Progress(Step),
    Loaded(Box<Summary>),
    BlockScored {
        block: usize,
        stats: ScoreStats,
    },
    Calibrated {
        cal: Arc<Calibration>,
        cache_hit: bool,
    },
    DensePpl {
        ppl: f64,
        /// Σ NLL per evaluation window.
        window_nll: Vec<f64>,
    },
    Applied {
        id: usize,
        achieved: Vec<f64>,
        seconds: f64,
    },
    /// Calibration draw `k` finished: its allocation and pruned perplexity.
    Draw {
        k: usize,
        block: Vec<f64>,
        ppl: Option<f64>,
    },
    /// The α search finished.
    AlphaSearched(Box<crate::experiment::AlphaSearch>),
    /// A sweep point finished.
    SweepPoint {
        value: f64,
        ppl: f64,
    },
    /// Zero-shot accuracy of the dense model (`id` None) or of applied entry `id`.
    ZeroShot {
        id: Option<usize>,
        z: Box<crate::zeroshot::ZeroShot>,
    },
    PrunedPpl {
        id: usize,
        ppl: f64,
        window_nll: Vec<f64>,
    },
    /// Perplexity of applied entry `id` quantized in `format` (key Q).
    Quantized {
        id: usize,
        format: crate::model::quant::QuantFormat,
        ppl: f64,
    },
    /// Perplexity of applied entry `id` after LoRA recovery (key F).
    Recovered {
        id: usize,
        ppl: f64,
        steps_run: usize,
        best_step: usize,
    },
    /// Generation of prompt `prompt` on one side starts (clears its text).
    GenStart {
        pruned: bool,
        prompt: usize,
    },
    Token {
        pruned: bool,
        prompt: usize,
        text: String,
    },
    /// Prompt `prompt`'s continuation on one side is complete: its new tokens and decode speed
    /// (for a dense continuation from the cache, as measured when it was generated).
    GenDone {
        pruned: bool,
        prompt: usize,
        tokens: usize,
        tokens_per_s: f64,
    },
    /// What applied entry `id`'s pruned linears hold and how they run (after the apply and
    /// after each change of its sparse execution, key X).
    Footprint {
        id: usize,
        footprint: Footprint,
    },
    Saved(PathBuf),
    /// A queued apply was replaced by a newer one before it ran.
    Superseded(usize),
    Cancelled(Stage),
    Failed(String),
    /// The worker has nothing left to do.
    Idle,
}

/// The prunable linears of a pruned model against the dense model's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// How the pruned model's linears run.
    pub mode: SparseMode,
    /// Linears held in compressed rows, of `linears`.
    pub sparse_linears: usize,
    pub linears: usize,
    /// Bytes of the linears' weights: the pruned model's, the dense model's.
    pub bytes: u64,
    pub dense_bytes: u64,
}

impl Footprint {
    /// Pruned bytes over dense bytes.
    pub fn ratio(&self) -> f64 {
        self.bytes as f64 / (self.dense_bytes as f64).max(1.0)
    }
}

/// Work for the worker thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Calibrate (again) over the calibration windows.
    Calibrate,
    /// Prune a copy of the dense model, then evaluate and generate with it.
    Apply {
        id: usize,
        params: Box<PruneParams>,
        plan: Box<Plan>,
        prompts: Vec<String>,
    },
    /// Generate every prompt with the dense and (if any) the pruned model.
    Generate {
        prompts: Vec<String>,
    },
    SaveModel {
        dir: PathBuf,
    },
    /// Zero-shot accuracy of the dense model (once; cached on disk) and of applied entry `id`
    /// when it is the pruned model the worker holds.
    ZeroShot {
        id: Option<usize>,
    },
    /// Quantize applied entry `id` (the pruned model the worker holds) in q8_0, q4_k and q4_0,
    /// measuring each.
    Quantize {
        id: usize,
    },
    /// A short LoRA recovery of applied entry `id` (`steps` optimizer steps), then its perplexity.
    Recover {
        id: usize,
        steps: usize,
    },
    /// `--calib-draws`: prune at `params` from `draws` disjoint calibration subsets (draw 0 is
    /// the session's own) and measure each.
    CalibDraws {
        params: Box<PruneParams>,
        draws: usize,
    },
    /// `--alpha auto`'s search at `params`: every α on held-out calibration windows.
    AlphaAuto {
        params: Box<PruneParams>,
    },
    /// Preview-mode perplexity of `params` with `param` set to each of `values`, on the first
    /// `windows` evaluation windows (the sweep view).
    Sweep {
        param: crate::prune::params::Param,
        values: Vec<f64>,
        params: Box<PruneParams>,
        windows: usize,
    },
    /// Run the pruned model's linears sparse or dense (key X): the model the worker holds now
    /// and those of later applies.
    Sparse {
        mode: SparseMode,
    },
}
