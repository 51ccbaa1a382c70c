//! The versioned report of a pruning run; the same JSON is the config a later run replays.
//! Every file is written atomically (temp file in the same folder, then rename).

use std::path::Path;

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::assets::write_atomic;
use crate::prune::pipeline::PruneParams;

/// 2: `ppl.dense_window_nll` / `ppl.pruned_window_nll`; 3: `zeroshot`; 4: `quantized`. Older
/// files, without them, still load.
pub const SCHEMA_VERSION: u32 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub model: ModelInfo,
    pub data: DataInfo,
    pub params: PruneParams,
    pub blocks: Vec<BlockReport>,
    pub overall: Overall,
    pub ppl: PplInfo,
    #[serde(default)]
    pub generations: Vec<GenerationPair>,
    /// How α was chosen automatically (held-out calibration windows, every α tried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha_search: Option<AlphaSearch>,
    /// Calibration sensitivity: the same run from disjoint calibration draws.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calib_draws: Option<CalibDraws>,
    /// Zero-shot accuracy of the dense and the pruned model (schema 3; when tasks were scored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeroshot: Option<ZeroShotPair>,
    /// The pruned model quantized (schema 4; when the run quantized it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedReport>,
    /// LoRA recovery of the pruned model (schema 4; `dlpx recover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<RecoveredReport>,
    /// What pruning buys: decode and evaluation speed and the linears' bytes, dense and
    /// pruned, measured in the same run (schema 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<SpeedReport>,
    pub timings: Timings,
}

/// One α tried and its held-out perplexity.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlphaTrial {
    pub alpha: f64,
    pub ppl: f64,
}

/// The search: where the held-out windows come from, every α tried, and the choice.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlphaSearch {
    /// The held-out calibration windows (never the evaluation data).
    pub heldout: DataSet,
    pub trace: Vec<AlphaTrial>,
    /// The α with the lowest held-out perplexity (the smallest on a tie).
    pub chosen: f64,
}

/// Speed and memory of the dense and the pruned model, measured in one run on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpeedReport {
    /// How the pruned linears ran (`auto`, `on`, `off`).
    pub sparse_mode: String,
    /// Pruned linears held in compressed rows (of 7 per block).
    pub sparse_linears: usize,
    /// Threads the kernels ran on.
    pub threads: usize,
    /// Greedy decode, batch 1, KV-cached: new tokens timed per model.
    pub decode_new_tokens: usize,
    pub dense: ModelSpeed,
    pub pruned: ModelSpeed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpeed {
    /// Decode tokens per second (after the prompt).
    pub decode_tok_s: f64,
    /// Evaluation tokens per second over the perplexity windows (`None`: the perplexity came
    /// from the cache, so it was not timed).
    pub eval_tok_s: Option<f64>,
    /// Bytes held by the prunable linears' weights.
    pub linear_bytes: u64,
}

/// The pruned model recovered with LoRA adapters (masks fixed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoveredReport {
    pub lora: crate::recover::LoraParams,
    pub training: crate::recover::Trained,
    /// Where the training and held-out windows came from.
    pub train_data: DataSet,
    pub heldout_data: DataSet,
    /// The adapters were merged into the weights and the masks re-applied.
    pub merged: bool,
    /// Trainable adapter parameters.
    pub adapter_params: usize,
    /// Perplexity on the report's evaluation windows, and each window's Σ NLL.
    pub ppl: Option<f64>,
    pub window_nll: Option<Vec<f64>>,
    /// Zero-shot accuracy on the report's tasks (when tasks were scored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeroshot: Option<crate::zeroshot::ZeroShot>,
    /// The pruned model's evaluation forward (perplexity, no adapters, no gradients) in this
    /// run, tokens/s: what the training throughput is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_tokens_per_s: Option<f64>,
}

impl RecoveredReport {
    /// Training throughput (step time alone) over the same run's evaluation forward.
    pub fn train_over_eval(&self) -> Option<f64> {
        self.eval_tokens_per_s
            .map(|e| self.training.train_tokens_per_s() / e.max(1e-9))
    }
}

/// The pruned model with its linears quantized (GGUF block formats), measured dequantized: the
/// values llama.cpp computes with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuantizedReport {
    pub quantization: crate::model::quant::QuantSummary,
    /// Perplexity on the report's evaluation windows, and each window's Σ NLL.
    pub ppl: Option<f64>,
    pub window_nll: Option<Vec<f64>>,
    /// Zero-shot accuracy on the report's tasks (when tasks were scored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zeroshot: Option<crate::zeroshot::ZeroShot>,
}

/// The same pruning from disjoint calibration subsets: how much the result depends on which
/// calibration text was drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibDraws {
    /// Draws (draw 0 is this report's own calibration).
    pub draws: usize,
    /// Pruned perplexity of each draw.
    pub ppl: Vec<f64>,
    pub ppl_mean: f64,
    /// Sample standard deviation (n − 1) of the draws' perplexities.
    pub ppl_sd: f64,
    /// Allocated sparsity per draw and block.
    pub block_sparsity: Vec<Vec<f64>>,
    /// Sample standard deviation of each block's allocated sparsity over the draws.
    pub block_sd: Vec<f64>,
}

impl CalibDraws {
    pub fn new(ppl: Vec<f64>, block_sparsity: Vec<Vec<f64>>) -> Self {
        let sd = |v: &[f64]| -> (f64, f64) {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let var = if v.len() > 1 {
                v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
            } else {
                0.0
            };
            (m, var.sqrt())
        };
        let (ppl_mean, ppl_sd) = sd(&ppl);
        let blocks = block_sparsity.first().map(Vec::len).unwrap_or(0);
        let block_sd = (0..blocks)
            .map(|b| sd(&block_sparsity.iter().map(|d| d[b]).collect::<Vec<_>>()).1)
            .collect();
        Self {
            draws: ppl.len(),
            ppl,
            ppl_mean,
            ppl_sd,
            block_sparsity,
            block_sd,
        }
    }
}

/// Zero-shot accuracy before and after pruning, on the same examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZeroShotPair {
    pub dense: crate::zeroshot::ZeroShot,
    pub pruned: Option<crate::zeroshot::ZeroShot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

impl Default for Tool {
    fn default() -> Self {
        Self {
            name: "dlpx".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// The model the run was given (`demo`, a path, or a Hub id).
    pub source: String,
    /// sha256 of the GGUF file, for file sources.
    pub sha256: Option<String>,
    /// Hub revision, for Hub sources.
    pub revision: Option<String>,
    pub architecture: String,
    pub blocks: usize,
    pub parameters: usize,
    pub dtype: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSet {
    /// `demo` or a file path.
    pub source: String,
    pub sha256: String,
    pub windows: usize,
    pub seq_len: usize,
    /// Seed of the calibration sampler, for document sources (c4, .jsonl.gz).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Windows skipped at the start of a text source (calibration draws after the first).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: usize,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataInfo {
    pub calib: DataSet,
    pub eval: Option<DataSet>,
}

impl DataInfo {
    /// Next-token predictions per evaluation window (the window's length less one), which the
    /// paired bootstrap over windows needs; 0 without an evaluation.
    pub fn predictions_per_window(&self) -> usize {
        self.eval
            .as_ref()
            .map(|e| e.seq_len.saturating_sub(1))
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockReport {
    pub index: usize,
    /// Block score under the chosen statistic (higher = less important for DLP).
    pub score: f64,
    /// OWL outlier ratio (percent) at `params.owl_m`.
    pub outlier_ratio: f64,
    /// AlphaPruning's α̂, the mean over the block's 7 linears; `null` when the run skipped the
    /// spectra (they are computed for the `alpha` allocation and in the explorer).
    #[serde(default)]
    pub esd_alpha: Option<f64>,
    pub target_sparsity: f64,
    /// Measured zeros after masking; `null` in a configuration exported before applying it.
    pub achieved_sparsity: Option<f64>,
    /// N of every M pruned in this block, for N:M patterns.
    pub n_of_m: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overall {
    pub target_sparsity: f64,
    /// `null` in a configuration exported before applying it.
    pub achieved_sparsity: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PplInfo {
    pub dense: Option<f64>,
    pub pruned: Option<f64>,
    /// Human description of the evaluation protocol, so numbers are not compared across protocols.
    pub protocol: String,
    /// Σ NLL of each evaluation window (its `seq_len − 1` predictions) for the dense model, in
    /// window order; `dlpx compare` resamples them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_window_nll: Option<Vec<f64>>,
    /// The same for the pruned model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned_window_nll: Option<Vec<f64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationPair {
    pub prompt: String,
    pub dense: String,
    pub pruned: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub load_s: f64,
    pub calibrate_s: f64,
    /// The calibration statistics came from the on-disk cache.
    #[serde(default)]
    pub stats_cache_hit: bool,
    pub allocate_us: f64,
    pub prune_s: f64,
    pub eval_s: f64,
    /// Seconds scoring zero-shot tasks (dense and pruned).
    #[serde(default)]
    pub zeroshot_s: f64,
    /// Seconds quantizing and measuring the quantized model (when the run quantized it).
    #[serde(default)]
    pub quantize_s: f64,
}

impl Report {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json()?.as_bytes())
    }

    /// Read a report/config, checking the schema version first so an old or future file gets
    /// a clear message rather than a field error.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .wrap_err_with(|| format!("cannot read config `{}`", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .wrap_err_with(|| format!("config `{}` is not valid JSON", path.display()))?;
        match v.get("schema_version").and_then(|s| s.as_u64()) {
            // 1: no per-window NLL; 2: no zero-shot accuracy; 3: no quantization; 4: no speed.
            // All read as the current version.
            Some(1..=5) => {}
            Some(x) => bail!(
                "config `{}` has schema_version {x}; this dlpx reads version {SCHEMA_VERSION}: re-export it with this version",
                path.display()
            ),
            None => bail!("config `{}` has no schema_version: is it a dlpx report?", path.display()),
        }
        serde_json::from_value(v).map_err(|e| eyre!("config `{}`: {e}", path.display()))
    }

    /// Keep ratios per block (`1 − sparsity`), the format of the reference code's ratios/ files.
    pub fn keep_ratios(&self) -> Vec<f64> {
        self.blocks
            .iter()
            .map(|b| 1.0 - b.target_sparsity)
            .collect()
    }
}

/// The JSON Schema of [`Report`] (committed as `report.schema.json`, checked by a test).
pub fn json_schema() -> Result<String> {
    Ok(serde_json::to_string_pretty(&schemars::schema_for!(Report))? + "\n")
}
