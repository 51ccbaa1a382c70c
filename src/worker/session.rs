//! The explorer's session: an [`Experiment`] opened at start-up and what the worker keeps
//! between jobs ([`Held`]: the calibration, the pruned copy of the last apply). Each job is a
//! type in `app::jobs` that runs against them; what it reports goes out as messages through
//! [`WorkerObserver`].

use std::ops::ControlFlow;

use color_eyre::eyre::{eyre, Result};

use super::{Link, Session};
use crate::app::jobs::{self, BackgroundJob, Calibrate, Held, RunJob, Spec, Worker};
use crate::app::{Job, Msg};
use crate::error::is_cancelled;
use crate::experiment::{Experiment, Observer, Stage, Step};
use crate::prune::stats::ScoreStats;

/// Turns an experiment's progress into messages; the cancel flag into `Break`.
struct WorkerObserver<'a> {
    link: &'a Link,
    /// Generations belong to the pruned side.
    pruned: bool,
}

impl Observer for WorkerObserver<'_> {
    fn status(&mut self, msg: &str) {
        self.link.send(Msg::Status(msg.to_string()));
    }

    fn step(&mut self, step: Step) -> ControlFlow<()> {
        self.link.send(Msg::Progress(step));
        self.flow()
    }

    fn block_scored(&mut self, block: usize, stats: ScoreStats) {
        self.link.send(Msg::BlockScored { block, stats });
    }

    fn generation_started(&mut self, prompt: usize) {
        self.link.send(Msg::GenStart {
            pruned: self.pruned,
            prompt,
        });
    }

    fn token(&mut self, prompt: usize, text: &str) -> ControlFlow<()> {
        self.link.send(Msg::Token {
            pruned: self.pruned,
            prompt,
            text: text.to_string(),
        });
        self.flow()
    }

    fn generation_done(&mut self, prompt: usize, tokens: usize, tokens_per_s: f64) {
        self.link.send(Msg::GenDone {
            pruned: self.pruned,
            prompt,
            tokens,
            tokens_per_s,
        });
    }
}

impl WorkerObserver<'_> {
    fn flow(&self) -> ControlFlow<()> {
        match self.link.go_on() {
            true => ControlFlow::Continue(()),
            false => ControlFlow::Break(()),
        }
    }
}

pub struct ExplorerSession {
    spec: Spec,
    x: Option<Experiment>,
    held: Held,
}

impl ExplorerSession {
    pub fn new(spec: Spec) -> Self {
        Self {
            held: Held::new(spec.setup.sparse),
            spec,
            x: None,
        }
    }
}

/// Report a stage's outcome: a cancel or an error ends the job (not the worker) with a message.
fn settle(link: &Link, stage: Stage, r: Result<()>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) if is_cancelled(&e) => {
            link.send(Msg::Cancelled(stage));
            false
        }
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            link.send(Msg::Failed(format!("error: {}", chain.join(": "))));
            false
        }
    }
}

impl Session for ExplorerSession {
    /// Load, then calibrate and the dense results.
    fn start(&mut self, link: &Link) {
        if self.open(link) {
            ExplorerRun { s: self, link }.work(Calibrate);
        }
    }

    fn run(&mut self, job: Job, link: &Link) {
        match job {
            // After a failed or panicked load, `r` tries the whole start again.
            Job::Calibrate if self.x.is_none() => self.start(link),
            job => jobs::dispatch(job, &mut ExplorerRun { s: self, link }),
        }
    }
}

/// The session while one job runs.
struct ExplorerRun<'a> {
    s: &'a mut ExplorerSession,
    link: &'a Link,
}

impl RunJob for ExplorerRun<'_> {
    /// Run a job's work against the session; a cancel or an error ends it with a message.
    fn work<J: BackgroundJob>(&mut self, job: J) {
        let link = self.link;
        let (stage, r) = match &mut self.s.x {
            None => (J::STAGE, Err(eyre!("the model has to load first"))),
            Some(x) => {
                let mut obs = WorkerObserver { link, pruned: true };
                let mut dense_obs = WorkerObserver {
                    link,
                    pruned: false,
                };
                let send = |m: Msg| link.send(m);
                let go_on = || link.go_on();
                let mut w = Worker {
                    x,
                    spec: &self.s.spec,
                    held: &mut self.s.held,
                    send: &send,
                    go_on: &go_on,
                    obs: &mut obs,
                    dense_obs: &mut dense_obs,
                    stage: J::STAGE,
                };
                let r = job.run(&mut w);
                (w.stage, r)
            }
        };
        settle(link, stage, r);
    }
}

impl ExplorerSession {
    fn open(&mut self, link: &Link) -> bool {
        let mut obs = WorkerObserver {
            link,
            pruned: false,
        };
        let r = Experiment::open(&self.spec.setup, &mut obs).map(|x| {
            link.send(Msg::Loaded(Box::new(x.summary.clone())));
            self.x = Some(x);
        });
        settle(link, Stage::Load, r)
    }
}
