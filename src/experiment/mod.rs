//! One experiment: a model and its calibration/evaluation data, opened once, then calibrated,
//! pruned, measured and reported. `dlpx prune`, the explorer's worker and `dlpx bench` call
//! this and add only their own I/O (printing, messages, timings); the engine below (`prune`,
//! `eval`) knows nothing of flags or screens.
//!
//! Results of the dense model that do not depend on the pruning parameters (its perplexity on
//! the evaluation windows, its greedy generations) are cached on disk next to the calibration
//! statistics, so a second run with the same model and data measures only the pruned model.

mod alpha_search;
pub mod bench;
pub mod observer;
mod recover;
mod report;
mod run;
mod speed;
pub mod stages;
pub use speed::{SPEED_NEW_TOKENS, SPEED_PROMPT};
pub mod scheduler;
pub mod sparse_speed;
pub mod sweep;

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device};
use color_eyre::eyre::{bail, Result, WrapErr};
use serde::Serialize;

pub use crate::report::{AlphaSearch, AlphaTrial};
pub use alpha_search::alpha_grid;
pub use observer::{Notice, Observer, Silent, Stage, Step};
pub use report::{build_report, weighted_mean, Measured};
pub use run::{RecoverSpec, Recovered, Run, RunSpec, TaskSpec};

use crate::data::{source_windows, DemoSplit, TextSource};
use crate::error::{Cancelled, Setting};
use crate::eval::generate::{generate, GenParams};
use crate::eval::perplexity::{perplexity, Perplexity};
use crate::model::quant::{quantize_linears, QuantFormat, QuantSummary};
use crate::model::{Llama, LoadedModel, ModelSource, Placement};
use crate::prune::cache::{calibrate_cached, StatsKey};
use crate::prune::mask::Metric;
use crate::prune::memory::Estimate;
use crate::prune::pipeline::{achieved, linear_numel, prune_faithful, prune_preview, Mode};
use crate::prune::pipeline::{Plan, PruneParams};
use crate::prune::stats::Calibration;
use crate::report::{DataInfo, DataSet, ModelInfo};
use crate::sparse::SparseMode;
use crate::zeroshot::{LogLikelihoods, Task, TaskSet, TaskSource, ZeroShot};

/// The demo protocol's defaults (README, "The demo protocol"): every front end starts here.
pub const DEFAULT_CALIB_SAMPLES: usize = 32;
pub const DEFAULT_SEQ_LEN: usize = 256;
pub const DEFAULT_EVAL_WINDOWS: usize = 64;
pub const DEFAULT_SEED: u64 = 0;

/// Which texts calibrate and evaluate, and how they are cut into windows.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSpec {
    /// `demo`, `c4` or a file.
    pub calib: String,
    /// `demo`, `wikitext2` or a file; `None`: no perplexity.
    pub eval: Option<String>,
    pub calib_samples: usize,
    pub seq_len: usize,
    /// Evaluation windows (0: all the text has).
    pub eval_windows: usize,
    /// Seed of the calibration sampler for document sources.
    pub seed: u64,
}

impl Default for DataSpec {
    fn default() -> Self {
        Self {
            calib: "demo".into(),
            eval: Some("demo".into()),
            calib_samples: DEFAULT_CALIB_SAMPLES,
            seq_len: DEFAULT_SEQ_LEN,
            eval_windows: DEFAULT_EVAL_WINDOWS,
            seed: DEFAULT_SEED,
        }
    }
}

impl DataSpec {
    /// The data a saved report was made with (what replaying its config reads).
    pub fn of_report(d: &DataInfo) -> Self {
        Self {
            calib: d.calib.source.clone(),
            eval: d.eval.as_ref().map(|e| e.source.clone()),
            calib_samples: d.calib.windows,
            seq_len: d.calib.seq_len,
            eval_windows: d
                .eval
                .as_ref()
                .map(|e| e.windows)
                .unwrap_or(DEFAULT_EVAL_WINDOWS),
            seed: d.calib.seed.unwrap_or(DEFAULT_SEED),
        }
    }

    /// The sources, parsed; errors name the value that is wrong (checked before any work).
    pub fn sources(&self) -> Result<(TextSource, Option<TextSource>)> {
        if self.calib_samples == 0 {
            bail!("the number of calibration windows must be at least 1");
        }
        if self.seq_len < 2 {
            bail!(
                "the window length must be at least 2 tokens (got {})",
                self.seq_len
            );
        }
        let calib = TextSource::parse(&self.calib, DemoSplit::Calib)?;
        let eval = self
            .eval
            .as_deref()
            .map(|e| TextSource::parse(e, DemoSplit::Eval))
            .transpose()?;
        Ok((calib, eval))
    }
}

/// Everything an experiment is opened with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub source: ModelSource,
    pub device: Device,
    pub dtype: DType,
    pub place: Placement,
    /// Whether pruned linears run in compressed rows.
    pub sparse: SparseMode,
    pub data: DataSpec,
    /// Use the on-disk cache of calibration statistics.
    pub stats_cache: bool,
    /// Use the on-disk cache of the dense model's perplexity and generations.
    pub dense_cache: bool,
    /// The metric the memory estimate plans for (SparseGPT needs its Hessians).
    pub metric: Metric,
    /// A pruned copy of the weights is kept beside the dense ones (the explorer compares both).
    pub keeps_pruned_copy: bool,
    /// LoRA recovery follows the pruning: (rank, batch) its preflight estimate plans for.
    pub recovery: Option<(usize, usize)>,
}

/// What the model and data are, for reports and the explorer's header.
#[derive(Debug, Clone)]
pub struct Summary {
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

/// An opened experiment: the dense model with its windows. Pruning works on copies (or, for a
/// one-shot run, on the model itself through [`Experiment::prune`]).
pub struct Experiment {
    pub model: LoadedModel,
    pub calib: Vec<Vec<u32>>,
    pub eval: Option<Vec<Vec<u32>>>,
    pub summary: Summary,
    /// Seconds spent loading the weights.
    pub load_s: f64,
    stats_key: Option<StatsKey>,
    /// Identity of the weights, dtype and device: the key of the dense results.
    dense_key: Option<DenseKey>,
    /// What the windows were cut from (calibration draws re-cut them).
    data: DataSpec,
    dtype: DType,
    /// The weights' identity (cache keys).
    identity: String,
}

/// What the dense model's results depend on besides the question asked.
#[derive(Debug, Clone, Serialize)]
struct DenseKey {
    model: String,
    dtype: String,
    device: String,
    format: u32,
}

/// Bump when the meaning of a cached dense result changes: old files then miss. (3: the fused
/// CPU attention and log-probabilities changed the dense figures in their last bits.)
const DENSE_FORMAT: u32 = 3;

#[derive(Serialize)]
enum DenseQuestion<'a> {
    /// Perplexity over exactly these windows (their ids' sha256).
    Perplexity { windows_sha256: String },
    /// Zero-shot scores on exactly these examples and tokens (the task set's sha256).
    ZeroShot { tasks_sha256: String },
    /// The greedy continuation of a prompt.
    Greedy {
        prompt: &'a str,
        max_new_tokens: usize,
    },
}

/// A cached dense continuation: its text, new tokens and decode speed when it was generated.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct DenseGeneration {
    text: String,
    tokens: usize,
    tokens_per_s: f64,
}

fn dtype_name(d: DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// The report's description of a text set.
fn dataset(
    sha256: String,
    windows: usize,
    seq_len: usize,
    arg: &str,
    seed: Option<u64>,
) -> DataSet {
    DataSet {
        source: arg.to_string(),
        sha256,
        windows,
        seq_len,
        seed,
        offset: 0,
    }
}

/// What the calibration statistics depend on besides model, windows and length: the text, and
/// the sampler's seed for document sources.
fn stats_data_key(set: &DataSet) -> String {
    let key = match set.seed {
        Some(s) => format!("{}+seed{s}", set.sha256),
        None => set.sha256.clone(),
    };
    match set.offset {
        0 => key,
        o => format!("{key}+offset{o}"),
    }
}

/// How the perplexity was measured, so numbers are never compared across protocols.
pub fn protocol_text(windows: usize, seq_len: usize, label: &str) -> String {
    format!(
        "{windows} windows × {seq_len} tokens of {label}, each its own sequence; ppl = exp(mean NLL over {} predictions)",
        windows * (seq_len.saturating_sub(1))
    )
}

/// The report's description of a model; `identity` is [`LoadedModel::identity`].
pub fn model_info(m: &LoadedModel, dtype: DType, identity: &str) -> ModelInfo {
    let (source, sha256, revision) = match &m.source {
        ModelSource::Demo => ("demo".to_string(), Some(identity.to_string()), None),
        ModelSource::Gguf(p) => (p.display().to_string(), Some(identity.to_string()), None),
        ModelSource::Folder(p) => (p.display().to_string(), None, None),
        ModelSource::Hub { id, revision } => (id.clone(), None, Some(revision.clone())),
    };
    let c = &m.llama.config;
    ModelInfo {
        source,
        sha256,
        revision,
        architecture: c.arch.model_type().to_string(),
        blocks: c.num_hidden_layers,
        parameters: c.param_count(),
        dtype: dtype_name(dtype),
    }
}

fn windows_sha256(w: &[Vec<u32>]) -> String {
    let bytes: Vec<u8> = w.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    crate::assets::sha256_bytes(&bytes)
}

/// A step-callback for the engine (which takes `FnMut(..) -> bool`) from an observer.
/// Load the weights with a status line saying what was loaded and how long it took.
fn load(s: &Setup, obs: &mut dyn Observer) -> Result<(LoadedModel, f64)> {
    let t = Instant::now();
    let mut model = crate::model::load_placed(&s.source, &s.device, s.dtype, s.place, &mut |m| {
        obs.status(m)
    })?;
    model.llama.set_sparse(s.sparse)?;
    let load_s = t.elapsed().as_secs_f64();
    obs.status(&crate::model::loaded_line(
        &model, &s.device, s.dtype, load_s,
    ));
    Ok((model, load_s))
}

fn dense_key(s: &Setup, identity: &str) -> Option<DenseKey> {
    s.dense_cache.then(|| DenseKey {
        model: identity.to_string(),
        dtype: dtype_name(s.dtype),
        device: format!("{:?}", s.device.location()),
        format: DENSE_FORMAT,
    })
}

fn go_on(obs: &mut dyn Observer, step: Step) -> bool {
    obs.step(step).is_continue()
}

impl Experiment {
    /// Load the model, check the preflight memory estimate, and cut the calibration and
    /// evaluation windows.
    pub fn open(s: &Setup, obs: &mut dyn Observer) -> Result<Self> {
        let (calib_src, eval_src) = s.data.sources()?;
        let d = &s.data;
        // Measured before the weights are loaded, so the estimate (weights included) compares.
        let available = match s.device {
            Device::Cpu => crate::prune::memory::available_bytes(),
            _ => None,
        };
        let (model, load_s) = load(s, obs)?;
        let mut est = Estimate::new(
            &model.llama.config,
            s.dtype.size_in_bytes(),
            d.calib_samples,
            d.seq_len,
            s.metric,
            s.place == Placement::Offload,
        );
        if s.keeps_pruned_copy {
            // Offloaded, the dense blocks stay in their file, the pruned ones in memory.
            est.total += est.weights + est.offloaded;
        }
        obs.status(&est.describe());
        est.check(available, d.calib_samples)?;
        if let Some((rank, batch)) = s.recovery {
            let rec = crate::recover::memory::RecoveryEstimate::new(
                &model.llama.config,
                s.dtype.size_in_bytes(),
                rank,
                batch,
                d.seq_len,
                s.place == Placement::Offload,
            );
            obs.status(&rec.describe());
            rec.check(available, batch)?;
        }

        let mut status = |m: &str| obs.status(m);
        let (calib, calib_sha) = source_windows(
            &calib_src,
            &model,
            d.calib_samples,
            d.seq_len,
            true,
            d.seed,
            &mut status,
        )?;
        let calib_set = dataset(
            calib_sha,
            d.calib_samples,
            d.seq_len,
            &d.calib,
            calib_src.is_sampled().then_some(d.seed),
        );
        let (eval, eval_set) = match (&eval_src, &d.eval) {
            (Some(src), Some(arg)) => {
                let (w, sha) = source_windows(
                    src,
                    &model,
                    d.eval_windows,
                    d.seq_len,
                    false,
                    0,
                    &mut status,
                )?;
                let set = dataset(sha, w.len(), d.seq_len, arg, None);
                (Some(w), Some(set))
            }
            _ => (None, None),
        };
        let identity = model.identity()?;
        let stats_key = s.stats_cache.then(|| {
            StatsKey::new(
                &identity,
                &stats_data_key(&calib_set),
                d.calib_samples,
                d.seq_len,
                s.dtype,
            )
        });
        let dense_key = dense_key(s, &identity);
        let protocol = protocol_text(
            eval_set.as_ref().map(|e| e.windows).unwrap_or(0),
            d.seq_len,
            &eval_src
                .as_ref()
                .map(|s| s.label())
                .unwrap_or_else(|| "none".into()),
        );
        let summary = Summary {
            info: model_info(&model, s.dtype, &identity),
            data: DataInfo {
                calib: calib_set,
                eval: eval_set,
            },
            numel: linear_numel(&model.llama),
            device: match s.place {
                Placement::Offload => format!("{} · offload", crate::device::describe(&s.device)),
                Placement::Resident => crate::device::describe(&s.device),
            },
            protocol,
            memory_gib: crate::prune::memory::gib(est.total),
        };
        Ok(Self {
            model,
            calib,
            eval,
            summary,
            load_s,
            stats_key,
            dense_key,
            data: d.clone(),
            dtype: s.dtype,
            identity,
        })
    }

    /// Load the model only, to score it (zero-shot accuracy): no calibration or evaluation
    /// windows, no pruning estimate. `s.data` is not read.
    pub fn open_for_scoring(s: &Setup, obs: &mut dyn Observer) -> Result<Self> {
        let (model, load_s) = load(s, obs)?;
        let identity = model.identity()?;
        let none = dataset(String::new(), 0, 0, "none", None);
        let summary = Summary {
            info: model_info(&model, s.dtype, &identity),
            data: DataInfo {
                calib: none,
                eval: None,
            },
            numel: linear_numel(&model.llama),
            device: crate::device::describe(&s.device),
            protocol: String::new(),
            memory_gib: 0.0,
        };
        Ok(Self {
            dense_key: dense_key(s, &identity),
            model,
            calib: Vec::new(),
            eval: None,
            summary,
            load_s,
            stats_key: None,
            data: s.data.clone(),
            dtype: s.dtype,
            identity,
        })
    }

    /// Calibrate from draw `k` of disjoint calibration subsets of the same size and length:
    /// windows `k·n … (k+1)·n − 1` of a text source, or seed `seed + k` of a document source
    /// (draw 0 is the experiment's own calibration data). The statistics cache keys each draw
    /// apart.
    pub fn use_calibration_draw(&mut self, k: usize, obs: &mut dyn Observer) -> Result<()> {
        let d = self.data.clone();
        let (src, _) = d.sources()?;
        let n = d.calib_samples;
        let mut status = |m: &str| obs.status(m);
        let sampled = src.is_sampled();
        let (windows, sha, seed, offset) = if sampled {
            let seed = d.seed + k as u64;
            let (w, sha) =
                source_windows(&src, &self.model, n, d.seq_len, true, seed, &mut status)?;
            (w, sha, Some(seed), 0)
        } else {
            let (mut w, sha) = source_windows(
                &src,
                &self.model,
                n * (k + 1),
                d.seq_len,
                true,
                0,
                &mut status,
            )
            .wrap_err_with(|| {
                format!(
                    "calibration draw {} needs windows {}…{} of the calibration text",
                    k + 1,
                    n * k,
                    n * (k + 1) - 1
                )
            })?;
            if w.len() < n * (k + 1) {
                bail!(
                    "calibration text `{}` has {} windows of {} tokens: not enough for {} disjoint draws of {n}",
                    d.calib,
                    w.len(),
                    d.seq_len,
                    k + 1
                );
            }
            (w.split_off(n * k), sha, None, n * k)
        };
        let mut set = dataset(sha, n, d.seq_len, &d.calib, seed);
        set.offset = offset;
        if let Some(key) = &mut self.stats_key {
            *key = StatsKey::new(
                &self.identity,
                &stats_data_key(&set),
                n,
                d.seq_len,
                self.dtype,
            );
        }
        self.summary.data.calib = set;
        self.calib = windows;
        Ok(())
    }

    /// The dense calibration pass (from the statistics cache when it has it): the statistics
    /// and whether they came from the cache. `spectra`: also AlphaPruning's α̂ per linear (an
    /// eigenvalue problem each; only AlphaPruning and the explorer need them).
    pub fn calibrate(
        &self,
        owl_m: f64,
        spectra: bool,
        obs: &mut dyn Observer,
    ) -> Result<(Calibration, bool)> {
        let obs = std::cell::RefCell::new(obs);
        calibrate_cached(
            &self.model,
            &self.calib,
            self.stats_key.as_ref(),
            owl_m,
            spectra,
            &mut |bp| {
                let mut o = obs.borrow_mut();
                if let Some(stats) = bp.stats {
                    o.block_scored(bp.block - 1, stats);
                }
                go_on(
                    &mut **o,
                    Step {
                        stage: Stage::Calibrate,
                        done: bp.block,
                        total: bp.blocks,
                        // Whole-model equivalent: each step runs every token through one block.
                        tokens_per_step: bp.tokens / bp.blocks.max(1),
                        started: bp.started,
                    },
                )
            },
            &mut |w| obs.borrow_mut().status(w),
        )
    }

    /// Prune a copy of the dense weights by `plan`: preview (masks from the dense statistics) or
    /// faithful (the sequential pass over the calibration windows). Returns the achieved
    /// sparsity per block.
    pub fn prune(
        &self,
        llama: &mut Llama,
        cal: &Calibration,
        plan: &Plan,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<Vec<f64>> {
        prune_with(llama, &self.calib, cal, plan, params, obs)
    }

    /// As [`Experiment::prune`] on the loaded weights themselves (a one-shot run needs no copy;
    /// the dense results must be measured before).
    pub fn prune_in_place(
        &mut self,
        cal: &Calibration,
        plan: &Plan,
        params: &PruneParams,
        obs: &mut dyn Observer,
    ) -> Result<Vec<f64>> {
        prune_with(&mut self.model.llama, &self.calib, cal, plan, params, obs)
    }

    /// A copy of `llama` with its block linears quantized in `format` and dequantized back (the
    /// values llama.cpp would compute with), and what quantizing did.
    pub fn quantize(
        &self,
        llama: &Llama,
        format: QuantFormat,
        obs: &mut dyn Observer,
    ) -> Result<(Llama, QuantSummary)> {
        let mut q = llama.clone();
        let started = Instant::now();
        let mut stop = false;
        let summary = quantize_linears(&mut q, format, &mut |done, total| {
            stop |= !go_on(
                obs,
                Step {
                    stage: Stage::Quantize,
                    done,
                    total,
                    tokens_per_step: 0,
                    started,
                },
            );
        })?;
        if stop {
            return Err(crate::error::Cancelled.into());
        }
        Ok((q, summary))
    }

    /// `llama` quantized in `format` and measured as the report states it: perplexity, and
    /// zero-shot accuracy on `tasks` when given.
    pub fn measure_quantized(
        &self,
        llama: &Llama,
        format: QuantFormat,
        tasks: Option<&TaskSet>,
        obs: &mut dyn Observer,
    ) -> Result<crate::report::QuantizedReport> {
        let (q, quantization) = self.quantize(llama, format, obs)?;
        let ppl = self.perplexity(&q, Stage::QuantizedEval, obs)?;
        let zeroshot = match tasks {
            Some(set) => Some(self.zeroshot(&q, set, obs)?),
            None => None,
        };
        Ok(crate::report::QuantizedReport {
            quantization,
            ppl: ppl.as_ref().map(|p| p.ppl),
            window_nll: ppl.map(|p| p.window_nll),
            zeroshot,
        })
    }

    /// A runnable model around pruned weights (tokenizer and source of the dense one).
    pub fn with_weights(&self, llama: Llama) -> LoadedModel {
        LoadedModel {
            llama,
            tokenizer: self.model.tokenizer.clone(),
            source: self.model.source.clone(),
            path: self.model.path.clone(),
            hf_files: self.model.hf_files.clone(),
        }
    }

    /// Perplexity of `llama` on the evaluation windows (`None` without evaluation data), with
    /// each window's NLL.
    pub fn perplexity(
        &self,
        llama: &Llama,
        stage: Stage,
        obs: &mut dyn Observer,
    ) -> Result<Option<Perplexity>> {
        self.perplexity_first(llama, None, stage, obs)
    }

    /// As [`Experiment::perplexity`] on the first `n` evaluation windows (all when `None`).
    pub fn perplexity_first(
        &self,
        llama: &Llama,
        n: Option<usize>,
        stage: Stage,
        obs: &mut dyn Observer,
    ) -> Result<Option<Perplexity>> {
        let all = self.eval.as_ref().map_or(0, |w| w.len());
        self.perplexity_range(llama, 0..n.unwrap_or(all), stage, obs)
    }

    /// As [`Experiment::perplexity`] on the evaluation windows `range` (clipped to those there
    /// are): the sparse benchmark alternates two models chunk by chunk.
    pub fn perplexity_range(
        &self,
        llama: &Llama,
        range: std::ops::Range<usize>,
        stage: Stage,
        obs: &mut dyn Observer,
    ) -> Result<Option<Perplexity>> {
        let Some(w) = &self.eval else { return Ok(None) };
        let w = &w[range.start.min(w.len())..range.end.min(w.len())];
        let started = Instant::now();
        let seq = w.first().map(|x| x.len()).unwrap_or(0);
        let r = perplexity(llama, w, &mut |done, total| {
            go_on(
                obs,
                Step {
                    stage,
                    done,
                    total,
                    tokens_per_step: seq,
                    started,
                },
            )
        })?;
        Ok(Some(r))
    }

    /// The dense model's perplexity, from the cache when this model, dtype, device and these
    /// exact windows were measured before. Returns it and whether it came from the cache.
    pub fn dense_perplexity(&self, obs: &mut dyn Observer) -> Result<(Option<Perplexity>, bool)> {
        let Some(w) = &self.eval else {
            return Ok((None, false));
        };
        let q = DenseQuestion::Perplexity {
            windows_sha256: windows_sha256(w),
        };
        if let Some(p) = self.dense_cached::<Perplexity>(&q) {
            return Ok((Some(p), true));
        }
        let ppl = self.perplexity(&self.model.llama, Stage::DenseEval, obs)?;
        if let Some(p) = &ppl {
            self.dense_store(&q, p, obs);
        }
        Ok((ppl, false))
    }

    /// Read and tokenize the zero-shot examples of `tasks` (the first `limit` of each).
    pub fn task_set(
        &self,
        tasks: &[Task],
        source: &TaskSource,
        limit: Option<usize>,
        obs: &mut dyn Observer,
    ) -> Result<TaskSet> {
        if limit == Some(0) {
            return Err(crate::said!(
                Setting::TaskLimit,
                " 0 leaves no example to score; give at least 1 (or leave it out for all)"
            )
            .into());
        }
        let rows = crate::zeroshot::load_tasks(tasks, source, &mut |m| obs.status(m))?;
        obs.status("tokenizing the zero-shot examples");
        TaskSet::prepare(
            &self.model.tokenizer,
            rows,
            source,
            limit,
            self.model.llama.config.max_position_embeddings,
        )
    }

    /// Zero-shot accuracy of `llama` on `set`, with requests/s and ETA through the observer.
    pub fn zeroshot(
        &self,
        llama: &Llama,
        set: &TaskSet,
        obs: &mut dyn Observer,
    ) -> Result<ZeroShot> {
        Ok(self.zeroshot_samples(llama, set, obs)?.0)
    }

    /// As [`Experiment::zeroshot`], with every request's log-likelihood.
    pub fn zeroshot_samples(
        &self,
        llama: &Llama,
        set: &TaskSet,
        obs: &mut dyn Observer,
    ) -> Result<(ZeroShot, LogLikelihoods)> {
        let started = Instant::now();
        let total = set.requests();
        // Tokens per request, for the tokens/s of the progress line.
        let (zs, lls, _) = crate::zeroshot::evaluate(llama, set, &mut |done, _, tokens| {
            go_on(
                obs,
                Step {
                    stage: Stage::ZeroShot,
                    done,
                    total,
                    tokens_per_step: tokens.checked_div(done).unwrap_or(0),
                    started,
                },
            )
        })?;
        Ok((zs, lls))
    }

    /// The dense model's zero-shot accuracy, from the cache when this model, dtype, device and
    /// these exact examples were scored before (the cache keeps scores, not log-likelihoods:
    /// `samples` scores again and returns them). Returns it, the log-likelihoods when scored,
    /// and whether it came from the cache.
    pub fn dense_zeroshot(
        &self,
        set: &TaskSet,
        samples: bool,
        obs: &mut dyn Observer,
    ) -> Result<(ZeroShot, Option<LogLikelihoods>, bool)> {
        let q = DenseQuestion::ZeroShot {
            tasks_sha256: set.sha256(),
        };
        if !samples {
            if let Some(z) = self.dense_cached::<ZeroShot>(&q) {
                return Ok((z, None, true));
            }
        }
        let (z, lls) = self.zeroshot_samples(&self.model.llama, set, obs)?;
        self.dense_store(&q, &z, obs);
        Ok((z, Some(lls), false))
    }

    /// Greedy continuations of `prompts` by `m`, streamed to the observer piece by piece; each
    /// one's token count and decode speed go to [`Observer::generation_done`].
    pub fn generate(
        &self,
        m: &LoadedModel,
        prompts: &[String],
        max_new_tokens: usize,
        obs: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            self.generation_step(obs, i, prompts.len())?;
            out.push(self.generate_one(m, p, i, max_new_tokens, obs)?.text);
        }
        Ok(out)
    }

    /// One greedy continuation as prompt `i` (streamed, then reported done).
    fn generate_one(
        &self,
        m: &LoadedModel,
        prompt: &str,
        i: usize,
        max_new_tokens: usize,
        obs: &mut dyn Observer,
    ) -> Result<DenseGeneration> {
        let params = GenParams {
            max_new_tokens,
            ..GenParams::default()
        };
        let mut stop = false;
        let g = generate(m, prompt, &params, &mut |piece| {
            stop = obs.token(i, piece).is_break();
            !stop
        })?;
        if stop {
            return Err(Cancelled.into());
        }
        obs.generation_done(i, g.tokens.len(), g.tokens_per_s);
        Ok(DenseGeneration {
            text: g.text,
            tokens: g.tokens.len(),
            tokens_per_s: g.tokens_per_s,
        })
    }

    /// As [`Experiment::generate`] for the dense model, each prompt from the cache when it was
    /// generated before with this model, dtype and device (and then sent to the observer whole,
    /// with the token count and decode speed measured when it was generated).
    pub fn dense_generations(
        &self,
        prompts: &[String],
        max_new_tokens: usize,
        obs: &mut dyn Observer,
    ) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let q = DenseQuestion::Greedy {
                prompt: p,
                max_new_tokens,
            };
            self.generation_step(obs, i, prompts.len())?;
            // A cache entry of the older shape (the bare text) does not parse: generated again.
            let g = match self.dense_cached::<DenseGeneration>(&q) {
                Some(g) => {
                    if obs.token(i, &g.text).is_break() {
                        return Err(Cancelled.into());
                    }
                    obs.generation_done(i, g.tokens, g.tokens_per_s);
                    g
                }
                None => {
                    let g = self.generate_one(&self.model, p, i, max_new_tokens, obs)?;
                    self.dense_store(&q, &g, obs);
                    g
                }
            };
            out.push(g.text);
        }
        Ok(out)
    }

    fn generation_step(&self, obs: &mut dyn Observer, i: usize, total: usize) -> Result<()> {
        obs.generation_started(i);
        let step = Step {
            stage: Stage::Generate,
            done: i,
            total,
            tokens_per_step: 0,
            started: Instant::now(),
        };
        match obs.step(step) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(Cancelled.into()),
        }
    }

    fn dense_cached<T: serde::de::DeserializeOwned>(&self, q: &DenseQuestion) -> Option<T> {
        let key = self.dense_key.as_ref()?;
        crate::assets::cache_load("dense", &(key, q))
    }

    /// A failed write only warns: the result is still good, it will be measured again next time.
    fn dense_store(&self, q: &DenseQuestion, v: &impl Serialize, obs: &mut dyn Observer) {
        if let Some(key) = &self.dense_key {
            if let Err(e) = crate::assets::cache_store("dense", &(key, q), v) {
                obs.status(&format!(
                    "warning: could not save a dense result to the cache: {e}"
                ));
            }
        }
    }
}

fn prune_with(
    llama: &mut Llama,
    calib: &[Vec<u32>],
    cal: &Calibration,
    plan: &Plan,
    params: &PruneParams,
    obs: &mut dyn Observer,
) -> Result<Vec<f64>> {
    match params.mode {
        Mode::Preview => prune_preview(llama, cal, plan, params)?,
        Mode::Faithful => prune_faithful(llama, calib, plan, params, &mut |bp| {
            go_on(
                obs,
                Step {
                    stage: Stage::Prune,
                    done: bp.block,
                    total: bp.blocks,
                    tokens_per_step: bp.tokens / bp.blocks.max(1),
                    started: bp.started,
                },
            )
        })?,
    }
    achieved(llama)
}
