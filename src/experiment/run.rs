//! One run: the whole one-shot sequence on an opened experiment — the dense measurements,
//! calibrate, allocate (α chosen on held-out calibration windows when asked), the calibration
//! draws, prune the loaded weights in place, the pruned measurements, quantization and LoRA
//! recovery — each stage timed here, handed back with the report. `dlpx prune` and
//! `dlpx recover` differ only in the [`RunSpec`] they pass and in what they write and print.

use std::time::Instant;

use color_eyre::eyre::{eyre, Result};

use super::{build_report, Experiment, Measured, Notice, Observer, Stage};
use crate::model::quant::QuantFormat;
use crate::model::Llama;
use crate::prune::pipeline::{plan, Plan, PruneParams};
use crate::prune::stats::Calibration;
use crate::recover::{Adapters, LoraParams};
use crate::report::{
    AlphaSearch, CalibDraws, GenerationPair, ModelSpeed, RecoveredReport, Report, SpeedReport,
    Timings, ZeroShotPair,
};
use crate::zeroshot::{Task, TaskSet, TaskSource, ZeroShot};

/// Which zero-shot tasks are scored, dense and pruned.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub tasks: Vec<Task>,
    pub source: TaskSource,
    /// The first this many examples of each task (all when `None`).
    pub limit: Option<usize>,
}

/// LoRA recovery of the pruned model, trained on a copy with the masks fixed.
pub struct RecoverSpec<'a> {
    /// `calib` (the calibration windows, then held-out windows after them) or a text file.
    pub data: String,
    /// Training windows when `data` is a file.
    pub train_windows: usize,
    pub holdout: usize,
    pub lora: LoraParams,
    /// Merge the adapters into the weights (masks re-applied) before measuring.
    pub merge: bool,
    /// Runs at every held-out improvement with the best adapters so far (a checkpoint).
    pub on_best: OnBest<'a>,
}

/// A checkpoint of the best adapters so far.
pub type OnBest<'a> = Box<dyn FnMut(&Adapters) -> Result<()> + 'a>;

/// Per extra calibration draw: the pruned perplexity and the per-block sparsities.
type Draws = (Vec<f64>, Vec<Vec<f64>>);

/// Everything one run does besides opening the experiment.
pub struct RunSpec<'a> {
    pub params: PruneParams,
    /// Choose DLP's α on this many held-out calibration windows instead of taking the params'.
    pub alpha_auto: Option<usize>,
    /// Prune from this many disjoint calibration subsets (1: the run's own only) and report the
    /// spread of the pruned perplexity and of each block's allocated sparsity.
    pub calib_draws: usize,
    pub tasks: Option<TaskSpec>,
    /// Also quantize the pruned model in this format and measure it.
    pub quantize: Option<QuantFormat>,
    /// Greedy generations before and after pruning.
    pub prompts: Vec<String>,
    pub max_new_tokens: usize,
    /// Time decode dense and pruned (the report's speed section).
    pub speed: bool,
    /// Checked on the allocation before any weight is pruned (an export that cannot state it
    /// should cost no pruning).
    pub check_plan: Option<fn(&PruneParams, &Plan) -> Result<()>>,
    pub recover: Option<RecoverSpec<'a>>,
}

impl RunSpec<'_> {
    /// A plain run of `params`: no α search, draws, tasks, quantization, generations, speed or
    /// recovery.
    pub fn new(params: PruneParams) -> Self {
        RunSpec {
            params,
            alpha_auto: None,
            calib_draws: 1,
            tasks: None,
            quantize: None,
            prompts: vec![],
            max_new_tokens: 0,
            speed: false,
            check_plan: None,
            recover: None,
        }
    }
}

/// The recovered model and its adapters (merged into `llama` when asked).
pub struct Recovered {
    pub llama: Llama,
    pub adapters: Adapters,
}

/// What a run hands back: the report (with every stage's seconds) and the recovered model.
pub struct Run {
    pub report: Report,
    /// The per-block sparsities of the allocation that was applied.
    pub plan: Plan,
    pub recovered: Option<Recovered>,
    /// Seconds of the dense perplexity, and whether it came from the dense cache.
    pub dense_eval_s: f64,
    pub dense_from_cache: bool,
}

/// The dense model's measurements, before its weights are pruned in place.
struct Dense {
    ppl: Option<crate::eval::perplexity::Perplexity>,
    eval_s: f64,
    from_cache: bool,
    speed: Option<ModelSpeed>,
    generations: Vec<String>,
    zeroshot: Option<(TaskSet, ZeroShot)>,
}

/// Seconds since `t`.
fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl Experiment {
    /// Run `spec` on this experiment: measure the dense model, calibrate, allocate, prune the
    /// loaded weights in place, measure the pruned model (and its quantized copy, and its
    /// recovered copy), and build the report.
    pub fn run(&mut self, spec: RunSpec<'_>, obs: &mut dyn Observer) -> Result<Run> {
        let mut params = spec.params.clone();
        params.validate(self.model.llama.blocks.len())?;
        let mut timings = Timings {
            load_s: self.load_s,
            ..Timings::default()
        };
        let dense = self.measure_dense(&spec, &mut timings, obs)?;

        let spectra = params.alloc.allocation.needs_spectra();
        let t = Instant::now();
        let (cal, hit) = self.calibrate(params.owl_m, spectra, obs)?;
        timings.calibrate_s = since(t);
        timings.stats_cache_hit = hit;
        if hit {
            obs.notice(Notice::StatsFromCache);
        }
        let alpha_search = match spec.alpha_auto {
            Some(holdout) => Some(self.choose_alpha(&cal, &mut params, holdout, obs)?),
            None => None,
        };
        let pl = plan(&self.model.llama, &cal, &params)?;
        timings.allocate_us = pl.allocate_us;
        // Draws 1..K on copies (the dense weights stay for the next draw); then draw 0, the
        // run's own calibration, prunes the model in place below.
        let draws = self.calibration_draws(spec.calib_draws, &params, obs)?;
        if let Some(check) = spec.check_plan {
            check(&params, &pl)?;
        }

        // A one-shot run prunes the loaded weights in place: no second copy.
        let t = Instant::now();
        let got = self.prune_in_place(&cal, &pl, &params, obs)?;
        timings.prune_s = since(t);
        let t = Instant::now();
        let pruned_ppl = self.perplexity(&self.model.llama, Stage::PrunedEval, obs)?;
        let pruned_eval_s = since(t);
        timings.eval_s += pruned_eval_s;
        let speed = match dense.speed {
            Some(dense_speed) => {
                obs.status("timing pruned decode");
                let tok_s = pruned_ppl
                    .is_some()
                    .then(|| self.eval_tokens() as f64 / pruned_eval_s.max(1e-9));
                Some(self.speed_report(dense_speed, tok_s)?)
            }
            None => None,
        };
        let calib_draws = match (draws, &pruned_ppl) {
            // Draw 0 first, as the report's own calibration.
            (Some((mut ppl, mut blocks)), Some(p0)) => {
                ppl.insert(0, p0.ppl);
                blocks.insert(0, pl.block.clone());
                Some(CalibDraws::new(ppl, blocks))
            }
            _ => None,
        };
        let pruned_gens = self.generate(&self.model, &spec.prompts, spec.max_new_tokens, obs)?;
        let t = Instant::now();
        let (zeroshot, task_set) = match dense.zeroshot {
            Some((set, dense)) => {
                let pruned = Some(self.zeroshot(&self.model.llama, &set, obs)?);
                (Some(ZeroShotPair { dense, pruned }), Some(set))
            }
            None => (None, None),
        };
        timings.zeroshot_s += since(t);
        // Quantized on a copy: the pruned weights themselves are what an export writes.
        let t = Instant::now();
        let quantized = match spec.quantize {
            Some(f) => {
                Some(self.measure_quantized(&self.model.llama, f, task_set.as_ref(), obs)?)
            }
            None => None,
        };
        timings.quantize_s = since(t);
        let recovered = match spec.recover {
            Some(r) => {
                // The pruned model's evaluation forward, which the training throughput is
                // compared with (same run, same machine load).
                let eval_tokens_per_s = pruned_ppl
                    .is_some()
                    .then(|| self.eval_tokens() as f64 / pruned_eval_s.max(1e-9));
                let (rec, mut rep) =
                    self.recover_pruned(r, task_set.as_ref(), &mut timings, obs)?;
                rep.eval_tokens_per_s = eval_tokens_per_s;
                Some((rec, rep))
            }
            None => None,
        };

        let generations = spec
            .prompts
            .iter()
            .zip(dense.generations.into_iter().zip(pruned_gens))
            .map(|(p, (dense, pruned))| GenerationPair {
                prompt: p.clone(),
                dense,
                pruned,
            })
            .collect();
        let (dense_ppl, dense_eval_s, dense_from_cache) =
            (dense.ppl, dense.eval_s, dense.from_cache);
        let mut report = build_report(
            &self.summary,
            &params,
            &cal,
            &pl,
            Measured {
                achieved: Some(got),
                dense_ppl: dense_ppl.as_ref().map(|p| p.ppl),
                pruned_ppl: pruned_ppl.as_ref().map(|p| p.ppl),
                dense_window_nll: dense_ppl.map(|p| p.window_nll),
                pruned_window_nll: pruned_ppl.map(|p| p.window_nll),
                generations,
                zeroshot,
                calib_draws,
                alpha_search,
                timings,
            },
        );
        report.quantized = quantized;
        report.speed = speed;
        let (recovered, recovered_report) = match recovered {
            Some((r, rep)) => (Some(r), Some(rep)),
            None => (None, None),
        };
        report.recovered = recovered_report;
        Ok(Run {
            report,
            plan: pl,
            recovered,
            dense_eval_s,
            dense_from_cache,
        })
    }

    /// The dense perplexity, decode speed, generations and zero-shot accuracy (each from the
    /// dense cache when it has them).
    fn measure_dense(
        &self,
        spec: &RunSpec<'_>,
        timings: &mut Timings,
        obs: &mut dyn Observer,
    ) -> Result<Dense> {
        let t = Instant::now();
        let (ppl, hit) = self.dense_perplexity(obs)?;
        if hit {
            obs.notice(Notice::DenseFromCache);
        }
        let eval_s = since(t);
        timings.eval_s += eval_s;
        // What the dense model costs to run, before its weights are pruned in place.
        let speed = match spec.speed {
            true => {
                obs.status("timing dense decode");
                let tok_s =
                    (ppl.is_some() && !hit).then(|| self.eval_tokens() as f64 / eval_s.max(1e-9));
                Some(self.model_speed(&self.model.llama, tok_s)?)
            }
            false => None,
        };
        let generations = self.dense_generations(&spec.prompts, spec.max_new_tokens, obs)?;
        let t = Instant::now();
        let zeroshot = match &spec.tasks {
            Some(ts) => {
                let set = self.task_set(&ts.tasks, &ts.source, ts.limit, obs)?;
                let (dense, _, hit) = self.dense_zeroshot(&set, false, obs)?;
                if hit {
                    obs.notice(Notice::DenseZeroShotFromCache);
                }
                Some((set, dense))
            }
            None => None,
        };
        timings.zeroshot_s += since(t);
        Ok(Dense {
            ppl,
            eval_s,
            from_cache: hit,
            speed,
            generations,
            zeroshot,
        })
    }

    /// DLP's α chosen on `holdout` held-out calibration windows, set in `params`.
    fn choose_alpha(
        &self,
        cal: &Calibration,
        params: &mut PruneParams,
        holdout: usize,
        obs: &mut dyn Observer,
    ) -> Result<AlphaSearch> {
        let (heldout, set) = self.heldout_windows(holdout, obs)?;
        let search = self.search_alpha(cal, params, &heldout, set, obs)?;
        params.alloc.alpha = search.chosen;
        obs.notice(Notice::AlphaChosen {
            alpha: search.chosen,
            windows: heldout.len(),
        });
        Ok(search)
    }

    /// Calibration draws 1..`k`, each pruned on a copy and measured: the pruned perplexities
    /// and the per-block sparsities (`None` for one draw). Leaves draw 0 in place.
    fn calibration_draws(
        &mut self,
        k: usize,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<Option<Draws>> {
        if k <= 1 {
            return Ok(None);
        }
        let (mut ppl, mut blocks) = (Vec::new(), Vec::new());
        for d in 1..k {
            obs.status(&format!("calibration draw {}/{k}", d + 1));
            let cal = self.calibrate_draw(d, params, obs)?;
            let (pl, p) = self.prune_copy(&cal, params, obs)?;
            ppl.push(p.ok_or_else(|| eyre!("no evaluation data"))?);
            blocks.push(pl.block);
        }
        self.use_calibration_draw(0, obs)?;
        Ok(Some((ppl, blocks)))
    }

    /// The statistics of calibration draw `k` (its windows stay the experiment's until
    /// [`Experiment::use_calibration_draw`]`(0)` restores draw 0, the run's own), with the
    /// spectra when the allocation reads them.
    pub fn calibrate_draw(
        &mut self,
        k: usize,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<Calibration> {
        self.use_calibration_draw(k, obs)?;
        let spectra = params.alloc.allocation.needs_spectra();
        Ok(self.calibrate(params.owl_m, spectra, obs)?.0)
    }

    /// Allocate from `cal`, prune a copy of the dense weights and measure its perplexity (one
    /// calibration draw; the loaded weights stay dense).
    pub fn prune_copy(
        &self,
        cal: &Calibration,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<(Plan, Option<f64>)> {
        let (pl, llama) = self.pruned_copy(cal, params, obs)?;
        let ppl = self.perplexity(&llama, Stage::PrunedEval, obs)?;
        Ok((pl, ppl.map(|p| p.ppl)))
    }

    /// Allocate from `cal` and prune a copy of the dense weights (the loaded weights stay
    /// dense).
    pub fn pruned_copy(
        &self,
        cal: &Calibration,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<(Plan, Llama)> {
        let pl = plan(&self.model.llama, cal, params)?;
        let mut llama = self.model.llama.clone();
        self.prune(&mut llama, cal, &pl, params, obs)?;
        Ok((pl, llama))
    }

    /// The speed section: the dense figures and the pruned model's, measured now.
    fn speed_report(&self, dense: ModelSpeed, eval_tok_s: Option<f64>) -> Result<SpeedReport> {
        Ok(SpeedReport {
            sparse_mode: self.model.llama.sparse.name().to_string(),
            sparse_linears: self.model.llama.sparse_linears(),
            threads: rayon::current_num_threads(),
            decode_new_tokens: super::SPEED_NEW_TOKENS,
            dense,
            pruned: self.model_speed(&self.model.llama, eval_tok_s)?,
        })
    }

    /// LoRA recovery of the pruned weights on a copy, and its measurements.
    fn recover_pruned(
        &self,
        mut r: RecoverSpec<'_>,
        tasks: Option<&TaskSet>,
        timings: &mut Timings,
        obs: &mut dyn Observer,
    ) -> Result<(Recovered, RecoveredReport)> {
        let ((train, train_set), (heldout, heldout_set)) =
            self.recovery_windows(&r.data, r.train_windows, r.holdout, obs)?;
        let lora = r.lora.clone();
        let adapters = Adapters::new(&self.model.llama, lora.rank, lora.alpha, lora.seed)?;
        let mut llama = self.model.llama.clone();
        let trained = self.recover(
            &mut llama,
            &adapters,
            (&train, &heldout),
            &lora,
            &mut *r.on_best,
            obs,
        )?;
        if r.merge {
            adapters.merge(&mut llama)?;
        }
        let t = Instant::now();
        let ppl = self.perplexity(&llama, Stage::RecoveredEval, obs)?;
        timings.eval_s += since(t);
        let zeroshot = match tasks {
            Some(set) => Some(self.zeroshot(&llama, set, obs)?),
            None => None,
        };
        let report = RecoveredReport {
            lora,
            training: trained,
            train_data: train_set,
            heldout_data: heldout_set,
            merged: r.merge,
            adapter_params: adapters.params(),
            ppl: ppl.as_ref().map(|p| p.ppl),
            window_nll: ppl.map(|p| p.window_nll),
            zeroshot,
            eval_tokens_per_s: None,
        };
        Ok((Recovered { llama, adapters }, report))
    }
}
