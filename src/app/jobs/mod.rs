//! The explorer's background jobs, one type each (as gitui's `AsyncJob`): the request a key
//! makes of the state, the work it does against the experiment on the worker thread, and what
//! its reply does to the state. A new job is one file here, its [`Job`] and [`Msg`] variants, and
//! a row of the key table ([`super::keys`]); the state's `act` and `on_msg` and the worker's
//! `run` only dispatch to it.

mod alpha_auto;
mod quantize;
mod recover;

pub use alpha_auto::AlphaAuto;
pub use quantize::Quantize;
pub use recover::Recover;

use std::sync::Arc;

use color_eyre::eyre::{eyre, Result};

use super::{Effect, Job, Msg, Stage, State};
use crate::experiment::{Experiment, Observer};
use crate::model::LoadedModel;
use crate::prune::stats::Calibration;

/// What a job's work runs against: the worker's session as the job sees it, and its way back.
pub struct Worker<'a> {
    pub x: &'a Experiment,
    pub cal: Option<&'a Arc<Calibration>>,
    /// The pruned model the worker holds and the applied entry it belongs to.
    pub held: Option<(usize, &'a LoadedModel)>,
    /// Sends a message to the state.
    pub send: &'a dyn Fn(Msg),
    /// The job's progress (the pruned side's, for generations).
    pub obs: &'a mut dyn Observer,
}

impl<'a> Worker<'a> {
    /// The pruned model of applied entry `id`, if the worker still holds it.
    pub fn held(&self, id: usize) -> Result<&'a LoadedModel> {
        match self.held {
            Some((held, m)) if held == id => Ok(m),
            _ => Err(eyre!(
                "#{id} is no longer the applied model: apply it again (a)"
            )),
        }
    }
}

/// One background job of the explorer.
pub trait BackgroundJob: Sized {
    /// The stage a cancel or a failure of the work is reported as.
    const STAGE: Stage;

    /// The request its key makes: the job, or `None` after the state said why not.
    fn request(s: &mut State) -> Option<Self>;

    /// The request as it crosses to the worker.
    fn into_job(self) -> Job;

    /// The work, on the worker thread; replies go out through `w.send`.
    fn run(&self, w: &mut Worker<'_>) -> Result<()>;

    /// What a reply of this job does to the state.
    fn on_reply(s: &mut State, m: Msg);

    /// The key: the request, marked busy and sent, or nothing.
    fn start(s: &mut State) -> Vec<Effect> {
        match Self::request(s) {
            Some(job) => {
                s.busy = true;
                vec![Effect::Job(job.into_job())]
            }
            None => vec![],
        }
    }
}
