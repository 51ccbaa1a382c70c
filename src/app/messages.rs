//! What crosses between the explorer's state and its worker thread: jobs one way, typed
//! progress and results the other.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::prune::pipeline::{Plan, PruneParams};
use crate::prune::stats::{Calibration, ScoreStats};
use crate::report::{DataInfo, ModelInfo};

/// What the worker knows about the loaded model and data, sent once after loading.
#[derive(Debug, Clone)]
pub struct ModelSummary {
    pub info: ModelInfo,
    pub data: DataInfo,
    /// Parameter count per block and linear (all that allocation needs of the model).
    pub numel: Vec<[f64; 7]>,
    pub device: String,
    /// Human description of the perplexity protocol.
    pub protocol: String,
    /// Preflight memory estimate of calibration and pruning, GiB.
    pub memory_gib: f64,
}

/// Long-running work, as shown in the progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Load,
    Calibrate,
    DenseEval,
    Prune,
    PrunedEval,
    Generate,
    Save,
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
        }
    }
}

/// Messages from the worker thread.
#[derive(Debug, Clone)]
pub enum Msg {
    Status(String),
    Progress {
        stage: Stage,
        done: usize,
        total: usize,
        /// Tokens processed per step (for tokens/s).
        tokens_per_step: usize,
        started: Instant,
    },
    Loaded(Box<ModelSummary>),
    BlockScored {
        block: usize,
        stats: ScoreStats,
    },
    Calibrated {
        cal: Arc<Calibration>,
        cache_hit: bool,
    },
    DensePpl(f64),
    Applied {
        id: usize,
        achieved: Vec<f64>,
        seconds: f64,
    },
    PrunedPpl {
        id: usize,
        ppl: f64,
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
    Saved(PathBuf),
    /// A queued apply was replaced by a newer one before it ran.
    Superseded(usize),
    Cancelled(Stage),
    Failed(String),
    /// The worker has nothing left to do.
    Idle,
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
}
