//! The explorer's session: an [`Experiment`] opened at start-up, its calibration, and the
//! pruned copy of the last apply. Each job is a short sequence of experiment calls; what they
//! report goes out as messages through [`WorkerObserver`].

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use color_eyre::eyre::{eyre, Result};

use super::{Link, Session};
use crate::app::jobs::{AlphaAuto, BackgroundJob, Quantize, Recover, Worker};
use crate::app::{Footprint, Job, Msg};
use crate::error::is_cancelled;
use crate::experiment::sweep::{Axis, Grid};
use crate::experiment::{Experiment, Observer, Setup, Stage, Step};
use crate::model::{Llama, LoadedModel};
use crate::prune::params::Param;
use crate::prune::pipeline::{Plan, PruneParams};
use crate::prune::stats::{Calibration, ScoreStats};
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
    cal: Option<Arc<Calibration>>,
    pruned: Option<LoadedModel>,
    /// The applied entry the pruned copy belongs to.
    pruned_id: Option<usize>,
    dense_ppl_done: bool,
    dense_gens_done: bool,
    /// The zero-shot examples, read and tokenized by the first accuracy job.
    tasks: Option<TaskSet>,
    dense_zeroshot_done: bool,
    /// How pruned models' linears run: `--sparse` until key X changes it.
    sparse: SparseMode,
}

impl ExplorerSession {
    pub fn new(spec: Spec) -> Self {
        Self {
            sparse: spec.setup.sparse,
            spec,
            x: None,
            cal: None,
            pruned: None,
            pruned_id: None,
            dense_ppl_done: false,
            dense_gens_done: false,
            tasks: None,
            dense_zeroshot_done: false,
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
    fn start(&mut self, link: &Link) {
        let _ = self.open(link) && self.prepare(link);
    }

    fn run(&mut self, job: Job, link: &Link) {
        match job {
            // Also what the start would have done after a cancel, and the start itself after a
            // failed or panicked load (r tries again).
            Job::Calibrate => match self.x.is_some() {
                true => {
                    let _ = self.prepare(link);
                }
                false => self.start(link),
            },
            Job::Apply {
                id,
                params,
                plan,
                prompts,
            } => {
                let _ = self.apply(link, id, &params, &plan)
                    && self.pruned_eval(link, id)
                    && self.generate(link, true, &prompts);
            }
            Job::Generate { prompts } => {
                let _ = self.generate(link, false, &prompts)
                    && (self.pruned.is_none() || self.generate(link, true, &prompts));
            }
            Job::SaveModel { dir } => {
                let r = self.save(link, dir);
                settle(link, Stage::Save, r);
            }
            Job::ZeroShot { id } => {
                let r = self.zeroshot(link, id);
                settle(link, Stage::ZeroShot, r);
            }
            Job::Quantize { id } => self.work(Quantize { id }, link),
            Job::Recover { id, steps } => self.work(Recover { id, steps }, link),
            Job::CalibDraws { params, draws } => {
                let r = self.calib_draws(link, &params, draws);
                // Back to the session's own calibration windows, whatever happened.
                if let Some(x) = self.x.as_mut() {
                    let _ = x.use_calibration_draw(0, &mut crate::experiment::Silent);
                }
                settle(link, Stage::Prune, r);
            }
            Job::AlphaAuto { params } => self.work(AlphaAuto { params: *params }, link),
            Job::Sweep {
                param,
                values,
                params,
                windows,
            } => {
                let r = self.sweep(link, param, &values, &params, windows);
                settle(link, Stage::PrunedEval, r);
            }
            Job::Sparse { mode } => {
                let r = self.set_sparse(link, mode);
                settle(link, Stage::PrunedEval, r);
            }
        }
    }
}

impl ExplorerSession {
    /// Run a job's work against this session; a cancel or an error ends it with a message.
    fn work<J: BackgroundJob>(&mut self, job: J, link: &Link) {
        let r = match &self.x {
            None => Err(eyre!("the model has to load first")),
            Some(x) => {
                let mut obs = WorkerObserver { link, pruned: true };
                let send = |m: Msg| link.send(m);
                let mut w = Worker {
                    x,
                    cal: self.cal.as_ref(),
                    held: self.pruned_id.zip(self.pruned.as_ref()),
                    send: &send,
                    obs: &mut obs,
                };
                job.run(&mut w)
            }
        };
        settle(link, J::STAGE, r);
    }

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

    /// Calibrate, then the dense results that are not there yet (the data did not change, so
    /// recalibrating does not measure the dense model again).
    fn prepare(&mut self, link: &Link) -> bool {
        let prompts = self.spec.prompts.clone();
        self.calibrate(link)
            && (self.dense_ppl_done || self.dense_eval(link))
            && (self.dense_gens_done || self.generate(link, false, &prompts))
    }

    fn calibrate(&mut self, link: &Link) -> bool {
        let Some(x) = &self.x else { return false };
        let mut obs = WorkerObserver {
            link,
            pruned: false,
        };
        // The explorer can switch to AlphaPruning at any key press: always the spectra.
        let r = x
            .calibrate(self.spec.owl_m, true, &mut obs)
            .map(|(cal, hit)| {
                let cal = Arc::new(cal);
                link.send(Msg::Calibrated {
                    cal: cal.clone(),
                    cache_hit: hit,
                });
                self.cal = Some(cal);
            });
        settle(link, Stage::Calibrate, r)
    }

    fn dense_eval(&mut self, link: &Link) -> bool {
        let Some(x) = &self.x else { return false };
        let mut obs = WorkerObserver {
            link,
            pruned: false,
        };
        let r = x.dense_perplexity(&mut obs).map(|(ppl, _hit)| {
            if let Some(p) = ppl {
                link.send(Msg::DensePpl {
                    ppl: p.ppl,
                    window_nll: p.window_nll,
                });
            }
        });
        self.dense_ppl_done = settle(link, Stage::DenseEval, r);
        self.dense_ppl_done
    }

    fn apply(&mut self, link: &Link, id: usize, params: &PruneParams, plan: &Plan) -> bool {
        let Some(x) = &self.x else { return false };
        let started = Instant::now();
        let mut obs = WorkerObserver { link, pruned: true };
        let r = (|| -> Result<LoadedModel> {
            let cal = self
                .cal
                .as_ref()
                .ok_or_else(|| eyre!("calibration has to finish first"))?;
            let mut llama = x.model.llama.clone();
            let achieved = x.prune(&mut llama, cal, plan, params, &mut obs)?;
            if llama.sparse != self.sparse {
                llama.set_sparse(self.sparse)?;
            }
            link.send(Msg::Applied {
                id,
                achieved,
                seconds: started.elapsed().as_secs_f64(),
            });
            link.send(Msg::Footprint {
                id,
                footprint: footprint(&x.model.llama, &llama),
            });
            Ok(x.with_weights(llama))
        })();
        let r = r.map(|m| {
            self.pruned = Some(m);
            self.pruned_id = Some(id);
        });
        settle(link, Stage::Prune, r)
    }

    fn pruned_eval(&mut self, link: &Link, id: usize) -> bool {
        let (Some(x), Some(m)) = (&self.x, &self.pruned) else {
            return false;
        };
        let mut obs = WorkerObserver { link, pruned: true };
        let r = x
            .perplexity(&m.llama, Stage::PrunedEval, &mut obs)
            .map(|ppl| {
                if let Some(p) = ppl {
                    link.send(Msg::PrunedPpl {
                        id,
                        ppl: p.ppl,
                        window_nll: p.window_nll,
                    });
                }
            });
        settle(link, Stage::PrunedEval, r)
    }

    /// Greedy generations of every prompt on one side, streamed token by token.
    fn generate(&mut self, link: &Link, pruned: bool, prompts: &[String]) -> bool {
        let Some(x) = &self.x else { return false };
        let mut obs = WorkerObserver { link, pruned };
        let max_new = self.spec.max_new_tokens;
        let r = match (pruned, &self.pruned) {
            (false, _) => x.dense_generations(prompts, max_new, &mut obs).map(|_| ()),
            (true, Some(m)) => x.generate(m, prompts, max_new, &mut obs).map(|_| ()),
            (true, None) => Ok(()),
        };
        let ok = settle(link, Stage::Generate, r);
        if !pruned && ok {
            self.dense_gens_done = true;
        }
        ok
    }

    /// Run the held pruned model's linears as `mode` says, and later applies' too.
    fn set_sparse(&mut self, link: &Link, mode: SparseMode) -> Result<()> {
        self.sparse = mode;
        let (Some(x), Some(m), Some(id)) = (&self.x, &mut self.pruned, self.pruned_id) else {
            return Ok(());
        };
        m.llama.set_sparse(mode)?;
        let fp = footprint(&x.model.llama, &m.llama);
        link.send(Msg::Footprint { id, footprint: fp });
        link.send(Msg::Status(format!(
            "#{id}: sparse execution {}, {} of {} linears sparse, {:.0} MB ({:.2}× dense); g generates again",
            mode.name(),
            fp.sparse_linears,
            fp.linears,
            fp.bytes as f64 / 1e6,
            fp.ratio()
        )));
        Ok(())
    }

    /// Prune from `draws` disjoint calibration subsets (draw 0: the session's own statistics) and
    /// report each draw's allocation and perplexity as it finishes.
    fn calib_draws(&mut self, link: &Link, params: &PruneParams, draws: usize) -> Result<()> {
        let own = self
            .cal
            .clone()
            .ok_or_else(|| eyre!("calibration has to finish first"))?;
        let x = self
            .x
            .as_mut()
            .ok_or_else(|| eyre!("the model has to load first"))?;
        let mut obs = WorkerObserver { link, pruned: true };
        for k in 0..draws {
            let cal = match k {
                0 => own.clone(),
                _ => Arc::new(x.calibrate_draw(k, params, &mut obs)?),
            };
            let (pl, ppl) = x.prune_copy(&cal, params, &mut obs)?;
            link.send(Msg::Draw {
                k,
                block: pl.block,
                ppl,
            });
        }
        // Back to the session's own windows, which its statistics came from.
        if draws > 1 {
            x.use_calibration_draw(0, &mut obs)?;
        }
        Ok(())
    }

    /// Preview-mode perplexity at each value of the swept parameter, point by point (the
    /// experiment's sweep point, on the first `windows` evaluation windows).
    fn sweep(
        &self,
        link: &Link,
        param: Param,
        values: &[f64],
        params: &PruneParams,
        windows: usize,
    ) -> Result<()> {
        let (Some(x), Some(cal)) = (&self.x, &self.cal) else {
            return Err(eyre!("calibration has to finish first"));
        };
        let mut obs = WorkerObserver { link, pruned: true };
        let mut base = params.clone();
        base.mode = crate::prune::pipeline::Mode::Preview;
        let grid = Grid::new(
            vec![base.alloc.allocation],
            vec![Axis {
                param,
                values: values.to_vec(),
            }],
        )?;
        for p in grid.points() {
            if !link.go_on() {
                return Err(crate::error::Cancelled.into());
            }
            let row = x.sweep_point(cal, &base, &p, Some(windows), &mut obs)?;
            if let Some(ppl) = row.ppl {
                link.send(Msg::SweepPoint {
                    value: p.values[0].1,
                    ppl,
                });
            }
        }
        Ok(())
    }

    /// The dense model's accuracy (once), then applied entry `id`'s when the pruned copy is it.
    fn zeroshot(&mut self, link: &Link, id: Option<usize>) -> Result<()> {
        let x = self
            .x
            .as_ref()
            .ok_or_else(|| eyre!("the model has to load first"))?;
        let mut obs = WorkerObserver {
            link,
            pruned: false,
        };
        if self.tasks.is_none() {
            let z = &self.spec.zeroshot;
            self.tasks = Some(x.task_set(&z.tasks, &z.source, z.limit, &mut obs)?);
        }
        let set = self
            .tasks
            .as_ref()
            .ok_or_else(|| eyre!("no zero-shot examples"))?;
        if !self.dense_zeroshot_done {
            let (z, _, _) = x.dense_zeroshot(set, false, &mut obs)?;
            link.send(Msg::ZeroShot {
                id: None,
                z: Box::new(z),
            });
            self.dense_zeroshot_done = true;
        }
        if let (Some(id), Some(m)) = (id, &self.pruned) {
            if self.pruned_id == Some(id) {
                let z = x.zeroshot(&m.llama, set, &mut obs)?;
                link.send(Msg::ZeroShot {
                    id: Some(id),
                    z: Box::new(z),
                });
            }
        }
        Ok(())
    }

    fn save(&self, link: &Link, dir: PathBuf) -> Result<()> {
        let m = self
            .pruned
            .as_ref()
            .ok_or_else(|| eyre!("apply masks first (a); then s saves the pruned model"))?;
        link.send(Msg::Status(format!(
            "saving the pruned model to {}",
            dir.display()
        )));
        crate::model::save_folder(m, &dir)?;
        link.send(Msg::Saved(dir));
        Ok(())
    }
}

/// The pruned model's linears against the dense model's.
fn footprint(dense: &Llama, pruned: &Llama) -> Footprint {
    Footprint {
        mode: pruned.sparse,
        sparse_linears: pruned.sparse_linears(),
        linears: pruned.blocks.iter().map(|b| b.linears.len()).sum(),
        bytes: pruned.linear_bytes() as u64,
        dense_bytes: dense.linear_bytes() as u64,
    }
}
