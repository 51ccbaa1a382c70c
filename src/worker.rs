//! The TUI's compute thread: owns the model, runs the engine (the same functions `dlpx prune`
//! uses) and posts typed messages. One job runs at a time; newer requests of the same kind
//! replace queued ones (latest wins); a shared flag cancels the running job between steps.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use color_eyre::eyre::{eyre, Result};
use tokio::sync::mpsc::UnboundedSender;

use crate::app::{Job, ModelSummary, Msg, Stage};
use crate::data::{source_windows, DemoSplit, TextSource};
use crate::eval::generate::{generate, GenParams};
use crate::eval::perplexity::perplexity;
use crate::model::{LoadedModel, ModelSource, Placement};
use crate::prune::cache::{calibrate_cached, StatsKey};
use crate::prune::pipeline::{
    achieved, linear_numel, prune_faithful, prune_preview, Mode, Plan, PruneParams,
};
use crate::prune::stats::Calibration;
use crate::report::DataInfo;

/// What the TUI was started on.
#[derive(Debug, Clone)]
pub struct Spec {
    pub source: ModelSource,
    pub device: Device,
    pub dtype: DType,
    pub place: Placement,
    pub calib: String,
    pub eval: String,
    pub calib_samples: usize,
    pub seq_len: usize,
    pub eval_windows: usize,
    pub owl_m: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub prompts: Vec<String>,
    pub use_stats_cache: bool,
}

pub struct Handle {
    pub jobs: mpsc::Sender<Job>,
    pub cancel: Arc<AtomicBool>,
}

/// Start the worker: it loads, calibrates, evaluates the dense model and generates the prompts,
/// then waits for jobs.
pub fn spawn(spec: Spec, out: UnboundedSender<Msg>) -> Handle {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    std::thread::Builder::new()
        .name("dlpx-worker".into())
        .spawn(move || {
            let mut w = Worker {
                spec,
                out,
                cancel: c,
                dense: None,
                pruned: None,
                calib: vec![],
                eval: vec![],
                key: None,
                cal: None,
                dense_ppl_done: false,
                dense_gens_done: false,
            };
            w.main(rx)
        })
        .expect("spawn the worker thread");
    Handle { jobs: tx, cancel }
}

struct Worker {
    spec: Spec,
    out: UnboundedSender<Msg>,
    cancel: Arc<AtomicBool>,
    dense: Option<LoadedModel>,
    pruned: Option<LoadedModel>,
    calib: Vec<Vec<u32>>,
    eval: Vec<Vec<u32>>,
    key: Option<StatsKey>,
    cal: Option<Arc<Calibration>>,
    dense_ppl_done: bool,
    dense_gens_done: bool,
}

fn cancelled(e: &color_eyre::Report) -> bool {
    e.to_string() == "cancelled"
}

fn same_kind(a: &Job, b: &Job) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Worker {
    fn send(&self, m: Msg) {
        // The UI may be gone (quitting); nothing to do then.
        let _ = self.out.send(m);
    }

    fn go_on(&self) -> bool {
        !self.cancel.load(Ordering::Relaxed)
    }

    /// Run a stage; a cancel or an error is reported and ends the job, not the worker.
    fn stage(&self, stage: Stage, r: Result<()>) -> bool {
        match r {
            Ok(()) => true,
            Err(e) if cancelled(&e) => {
                self.send(Msg::Cancelled(stage));
                false
            }
            Err(e) => {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                self.send(Msg::Failed(format!("error: {}", chain.join(": "))));
                false
            }
        }
    }

    fn main(&mut self, rx: mpsc::Receiver<Job>) {
        self.cancel.store(false, Ordering::Relaxed);
        let r = self.start();
        if self.stage(Stage::Load, r) {
            let _ = self.calibrate()
                && self.dense_eval()
                && self.generate_side(false, &self.spec.prompts.clone());
        }
        self.send(Msg::Idle);
        let mut queue: VecDeque<Job> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match rx.recv() {
                    Ok(j) => queue.push_back(j),
                    Err(_) => return,
                }
            }
            while let Ok(j) = rx.try_recv() {
                // Latest wins: a newer request replaces a queued one of the same kind.
                match queue.iter_mut().find(|q| same_kind(q, &j)) {
                    Some(q) => {
                        if let Job::Apply { id, .. } = q {
                            self.send(Msg::Superseded(*id));
                        }
                        *q = j
                    }
                    None => queue.push_back(j),
                }
            }
            let Some(job) = queue.pop_front() else {
                continue;
            };
            self.cancel.store(false, Ordering::Relaxed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(job)));
            if let Err(p) = r {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.send(Msg::Failed(format!("internal error in the worker: {what}")));
            }
            if queue.is_empty() {
                self.send(Msg::Idle);
            }
        }
    }

    fn run(&mut self, job: Job) {
        match job {
            Job::Calibrate => {
                // After a cancelled start, also finish what the start would have done.
                let prompts = self.spec.prompts.clone();
                let _ = self.calibrate()
                    && (self.dense_ppl_done || self.dense_eval())
                    && (self.dense_gens_done || self.generate_side(false, &prompts));
            }
            Job::Apply {
                id,
                params,
                plan,
                prompts,
            } => {
                let _ = self.apply(id, &params, &plan)
                    && self.pruned_eval(id)
                    && self.generate_side(true, &prompts);
            }
            Job::Generate { prompts } => {
                let _ = self.generate_side(false, &prompts)
                    && (self.pruned.is_none() || self.generate_side(true, &prompts));
            }
            Job::SaveModel { dir } => {
                let r = self.save(dir);
                self.stage(Stage::Save, r);
            }
        }
    }

    fn start(&mut self) -> Result<()> {
        let s = self.spec.clone();
        let out = self.out.clone();
        let mut status = |m: &str| {
            let _ = out.send(Msg::Status(m.to_string()));
        };
        let available = match s.device {
            Device::Cpu => crate::prune::memory::available_bytes(),
            _ => None,
        };
        let m = crate::model::load_placed(&s.source, &s.device, s.dtype, s.place, &mut status)?;
        let est = crate::prune::memory::Estimate::new(
            &m.llama.config,
            s.dtype.size_in_bytes(),
            s.calib_samples,
            s.seq_len,
            crate::prune::mask::Metric::SparseGpt,
            s.place == Placement::Offload,
        );
        // The explorer also keeps a pruned copy of the weights next to the dense ones (with
        // --offload the dense blocks stay in their file, the pruned ones in host memory).
        let mut est_tui = est.clone();
        est_tui.total += est.weights + est.offloaded;
        est_tui.check(available, s.calib_samples)?;
        let calib_src = TextSource::parse(&s.calib, DemoSplit::Calib)?;
        let eval_src = TextSource::parse(&s.eval, DemoSplit::Eval)?;
        let (calib, calib_sha) = source_windows(
            &calib_src,
            &m,
            s.calib_samples,
            s.seq_len,
            true,
            s.seed,
            &mut status,
        )?;
        let (eval, eval_sha) = source_windows(
            &eval_src,
            &m,
            s.eval_windows,
            s.seq_len,
            false,
            0,
            &mut status,
        )?;
        let calib_set = crate::prune_cmd::dataset(
            calib_sha,
            s.calib_samples,
            s.seq_len,
            &s.calib,
            calib_src.is_sampled().then_some(s.seed),
        );
        let eval_set = crate::prune_cmd::dataset(eval_sha, eval.len(), s.seq_len, &s.eval, None);
        self.calib = calib;
        self.eval = eval;
        self.key = match s.use_stats_cache {
            true => Some(StatsKey::new(
                &m,
                &crate::prune_cmd::stats_data_key(&calib_set),
                s.calib_samples,
                s.seq_len,
                s.dtype,
            )?),
            false => None,
        };
        let summary = ModelSummary {
            info: crate::prune_cmd::model_info(&m, s.dtype)?,
            data: DataInfo {
                calib: calib_set,
                eval: Some(eval_set.clone()),
            },
            numel: linear_numel(&m.llama),
            device: match s.place {
                Placement::Offload => format!("{} · offload", crate::device::describe(&s.device)),
                Placement::Resident => crate::device::describe(&s.device),
            },
            protocol: crate::prune_cmd::protocol_text(
                eval_set.windows,
                s.seq_len,
                &eval_src.label(),
            ),
            memory_gib: crate::prune::memory::gib(est_tui.total),
        };
        self.send(Msg::Loaded(Box::new(summary)));
        self.dense = Some(m);
        Ok(())
    }

    fn calibrate(&mut self) -> bool {
        let Some(m) = &self.dense else { return false };
        let r = (|| -> Result<Arc<Calibration>> {
            let out = self.out.clone();
            let cancel = self.cancel.clone();
            let (cal, hit): (Calibration, bool) = calibrate_cached(
                m,
                &self.calib,
                self.key.as_ref(),
                self.spec.owl_m,
                // The explorer can switch to AlphaPruning at any key press.
                true,
                &mut |bp| {
                    if let Some(stats) = bp.stats {
                        let _ = out.send(Msg::BlockScored {
                            block: bp.block - 1,
                            stats,
                        });
                    }
                    let _ = out.send(Msg::Progress {
                        stage: Stage::Calibrate,
                        done: bp.block,
                        total: bp.blocks,
                        // Whole-model equivalent: each step runs every token through one block.
                        tokens_per_step: bp.tokens / bp.blocks.max(1),
                        started: bp.started,
                    });
                    !cancel.load(Ordering::Relaxed)
                },
                &mut |w| {
                    let _ = out.send(Msg::Status(w.to_string()));
                },
            )?;
            let cal = Arc::new(cal);
            self.send(Msg::Calibrated {
                cal: cal.clone(),
                cache_hit: hit,
            });
            Ok(cal)
        })();
        let r = r.map(|cal| self.cal = Some(cal));
        self.stage(Stage::Calibrate, r)
    }

    fn ppl(&self, m: &LoadedModel, stage: Stage) -> Result<f64> {
        let started = Instant::now();
        let seq = self.spec.seq_len;
        Ok(perplexity(&m.llama, &self.eval, &mut |done, total| {
            self.send(Msg::Progress {
                stage,
                done,
                total,
                tokens_per_step: seq,
                started,
            });
            self.go_on()
        })?
        .ppl)
    }

    fn dense_eval(&mut self) -> bool {
        let Some(m) = &self.dense else { return false };
        let r = self
            .ppl(m, Stage::DenseEval)
            .map(|p| self.send(Msg::DensePpl(p)));
        self.stage(Stage::DenseEval, r)
    }

    fn apply(&mut self, id: usize, params: &PruneParams, plan: &Plan) -> bool {
        let Some(d) = &self.dense else { return false };
        let started = Instant::now();
        let r = (|| -> Result<LoadedModel> {
            let mut llama = d.llama.clone();
            match params.mode {
                Mode::Preview => {
                    let cal = self
                        .cal
                        .as_ref()
                        .ok_or_else(|| eyre!("calibration has to finish first"))?;
                    prune_preview(&mut llama, cal, plan, params)?
                }
                Mode::Faithful => {
                    prune_faithful(&mut llama, &self.calib, plan, params, &mut |bp| {
                        self.send(Msg::Progress {
                            stage: Stage::Prune,
                            done: bp.block,
                            total: bp.blocks,
                            tokens_per_step: bp.tokens / bp.blocks.max(1),
                            started: bp.started,
                        });
                        self.go_on()
                    })?
                }
            }
            let got = achieved(&llama)?;
            self.send(Msg::Applied {
                id,
                achieved: got,
                seconds: started.elapsed().as_secs_f64(),
            });
            Ok(LoadedModel {
                llama,
                tokenizer: d.tokenizer.clone(),
                source: d.source.clone(),
                path: d.path.clone(),
            })
        })();
        match r {
            Ok(m) => {
                self.pruned = Some(m);
                true
            }
            Err(e) => self.stage(Stage::Prune, Err(e)),
        }
    }

    fn pruned_eval(&mut self, id: usize) -> bool {
        let Some(m) = &self.pruned else { return false };
        let r = self
            .ppl(m, Stage::PrunedEval)
            .map(|ppl| self.send(Msg::PrunedPpl { id, ppl }));
        self.stage(Stage::PrunedEval, r)
    }

    /// Greedy generations of every prompt on one side, streamed token by token.
    fn generate_side(&mut self, pruned: bool, prompts: &[String]) -> bool {
        let m = if pruned { &self.pruned } else { &self.dense };
        let Some(m) = m else { return false };
        let params = GenParams {
            max_new_tokens: self.spec.max_new_tokens,
            ..GenParams::default()
        };
        let r = (|| -> Result<()> {
            for (i, p) in prompts.iter().enumerate() {
                self.send(Msg::GenStart { pruned, prompt: i });
                self.send(Msg::Progress {
                    stage: Stage::Generate,
                    done: i,
                    total: prompts.len(),
                    tokens_per_step: 0,
                    started: Instant::now(),
                });
                generate(m, p, &params, &mut |piece| {
                    self.send(Msg::Token {
                        pruned,
                        prompt: i,
                        text: piece.to_string(),
                    });
                    self.go_on()
                })?;
                if !self.go_on() {
                    return Err(eyre!("cancelled"));
                }
            }
            Ok(())
        })();
        if !pruned && r.is_ok() {
            self.dense_gens_done = true;
        }
        self.stage(Stage::Generate, r)
    }

    fn save(&self, dir: PathBuf) -> Result<()> {
        let m = self
            .pruned
            .as_ref()
            .ok_or_else(|| eyre!("apply masks first (a); then s saves the pruned model"))?;
        self.send(Msg::Status(format!(
            "saving the pruned model to {}",
            dir.display()
        )));
        crate::model::save_folder(m, &dir)?;
        self.send(Msg::Saved(dir));
        Ok(())
    }
}
