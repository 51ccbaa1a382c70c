//! What a job's work runs against on the worker thread: the experiment, what the worker keeps
//! between jobs, and its way back to the state.

use std::sync::Arc;

use color_eyre::eyre::{eyre, Result};

use crate::app::{Msg, Stage};
use crate::experiment::{Experiment, Observer, Setup};
use crate::model::LoadedModel;
use crate::prune::stats::Calibration;
use crate::sparse::SparseMode;
use crate::zeroshot::{Task, TaskSet, TaskSource};

/// What the explorer was started on.
#[derive(Debug, Clone)]
pub struct Spec {
    pub setup: Setup,
    pub owl_m: f64,
    pub max_new_tokens: usize,
    pub prompts: Vec<String>,
    pub zeroshot: ZeroShotSpec,
}

/// The examples the accuracy job scores.
#[derive(Debug, Clone)]
pub struct ZeroShotSpec {
    pub tasks: Vec<Task>,
    pub source: TaskSource,
    pub limit: Option<usize>,
}

/// What the worker keeps between jobs.
pub struct Held {
    pub cal: Option<Arc<Calibration>>,
    /// The pruned copy of the last apply and the applied entry it belongs to.
    pub pruned: Option<(usize, LoadedModel)>,
    /// Dense results already sent (recalibrating does not change the data, so they stay).
    pub dense_ppl_done: bool,
    pub dense_gens_done: bool,
    pub dense_zeroshot_done: bool,
    /// The zero-shot examples, read and tokenized by the first accuracy job.
    pub tasks: Option<TaskSet>,
    /// How pruned models' linears run: `Setup::sparse` until key X changes it.
    pub sparse: SparseMode,
}

impl Held {
    pub fn new(sparse: SparseMode) -> Self {
        Self {
            cal: None,
            pruned: None,
            dense_ppl_done: false,
            dense_gens_done: false,
            dense_zeroshot_done: false,
            tasks: None,
            sparse,
        }
    }

    /// The pruned model of applied entry `id`, if the worker still holds it.
    pub fn model(&self, id: usize) -> Result<&LoadedModel> {
        match &self.pruned {
            Some((held, m)) if *held == id => Ok(m),
            _ => Err(eyre!(
                "#{id} is no longer the applied model: apply it again (a)"
            )),
        }
    }

    /// The calibration, once it has finished.
    pub fn calibration(&self) -> Result<Arc<Calibration>> {
        self.cal
            .clone()
            .ok_or_else(|| eyre!("calibration has to finish first"))
    }
}

/// A job's view of the worker while its work runs.
pub struct Worker<'a> {
    pub x: &'a mut Experiment,
    pub spec: &'a Spec,
    pub held: &'a mut Held,
    /// Sends a message to the state.
    pub send: &'a dyn Fn(Msg),
    /// False once the user asked to cancel (Esc).
    pub go_on: &'a dyn Fn() -> bool,
    /// Progress of the pruned side (its generations stream to the pruned column).
    pub obs: &'a mut dyn Observer,
    /// Progress of the dense side.
    pub dense_obs: &'a mut dyn Observer,
    /// The stage a cancel or a failure is reported as; work of several stages moves it on.
    pub stage: Stage,
}
