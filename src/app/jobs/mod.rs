//! The explorer's background jobs, one type each (as gitui's `AsyncJob`): the request a key
//! makes of the state, the work it does against the experiment on the worker thread, and what
//! its replies do to the state. A new job is one file here, its [`Job`] and [`Msg`] variants, a
//! row in [`dispatch`] and in [`on_reply`], and a key-table row ([`super::keys`]) with its arm
//! in `State::act`; the state's `act` and `on_msg` and the worker's `run` only dispatch to it.

mod alpha_auto;
mod apply;
mod calib_draws;
mod calibrate;
mod generate;
mod quantize;
mod recover;
mod save_model;
mod sparse;
mod sweep;
mod worker;
mod zeroshot;

pub use alpha_auto::AlphaAuto;
pub use apply::Apply;
pub use calib_draws::CalibDraws;
pub use calibrate::Calibrate;
pub use generate::Generate;
pub use quantize::Quantize;
pub use recover::Recover;
pub use save_model::SaveModel;
pub use sparse::Sparse;
pub use sweep::Sweep;
pub use worker::{Held, Spec, Worker, ZeroShotSpec};
pub use zeroshot::ZeroShot;

use color_eyre::eyre::Result;

use super::{Effect, Job, Msg, Stage, State};

/// One background job of the explorer.
pub trait BackgroundJob: Sized {
    /// The stage a cancel or a failure of the work is reported as, until the work moves
    /// [`Worker::stage`] on.
    const STAGE: Stage;

    /// The request its key makes: the job, or `None` when there is nothing to run (the state
    /// says why, or the key only changed the view).
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

/// A worker message to the job whose reply it is. The worker's own messages (status,
/// progress, cancel, failure, idle) are the state's and do nothing here.
pub(super) fn on_reply(s: &mut State, m: Msg) {
    match m {
        Msg::Loaded(_)
        | Msg::BlockScored { .. }
        | Msg::Calibrated { .. }
        | Msg::DensePpl { .. } => Calibrate::on_reply(s, m),
        Msg::Applied { .. } | Msg::PrunedPpl { .. } | Msg::Superseded(_) => Apply::on_reply(s, m),
        Msg::GenStart { .. } | Msg::Token { .. } | Msg::GenDone { .. } => Generate::on_reply(s, m),
        Msg::Footprint { .. } => Sparse::on_reply(s, m),
        Msg::Saved(_) => SaveModel::on_reply(s, m),
        Msg::ZeroShot { .. } => ZeroShot::on_reply(s, m),
        Msg::Draw { .. } => CalibDraws::on_reply(s, m),
        Msg::SweepPoint { .. } => Sweep::on_reply(s, m),
        Msg::AlphaSearched(_) => AlphaAuto::on_reply(s, m),
        Msg::Quantized { .. } => Quantize::on_reply(s, m),
        Msg::Recovered { .. } => Recover::on_reply(s, m),
        Msg::Status(_) | Msg::Progress(_) | Msg::Cancelled(_) | Msg::Failed(_) | Msg::Idle => {}
    }
}

/// Run `job` from the [`Job`] that carried it; `work` runs any one job type.
pub trait RunJob {
    fn work<J: BackgroundJob>(&mut self, job: J);
}

/// The worker's dispatch: the job type each [`Job`] carries, to `r`'s `work`. The start-up's
/// load is the worker's own; [`Calibrate`] is what follows it.
pub fn dispatch(job: Job, r: &mut impl RunJob) {
    match job {
        Job::Calibrate => r.work(Calibrate),
        Job::Apply {
            id,
            params,
            plan,
            prompts,
        } => r.work(Apply {
            id,
            params: *params,
            plan: *plan,
            prompts,
        }),
        Job::Generate { prompts } => r.work(Generate { prompts }),
        Job::SaveModel { dir } => r.work(SaveModel { dir }),
        Job::ZeroShot { id } => r.work(ZeroShot { id }),
        Job::Quantize { id } => r.work(Quantize { id }),
        Job::Recover { id, steps } => r.work(Recover { id, steps }),
        Job::CalibDraws { params, draws } => r.work(CalibDraws {
            params: *params,
            draws,
        }),
        Job::AlphaAuto { params } => r.work(AlphaAuto { params: *params }),
        Job::Sweep {
            param,
            values,
            params,
            windows,
        } => r.work(Sweep {
            param,
            values,
            params: *params,
            windows,
        }),
        Job::Sparse { mode } => r.work(Sparse { mode }),
    }
}
