//! What pruning buys, measured in the run that pruned: decode speed of a model (greedy, batch 1,
//! KV-cached) and the bytes its prunable linears hold. Evaluation speed comes from the run's
//! own perplexity passes.

use color_eyre::eyre::Result;

use super::Experiment;
use crate::eval::generate::{generate, GenParams};
use crate::model::{Llama, LoadedModel};
use crate::report::ModelSpeed;

/// The prompt of the timed decode (its text does not matter, only that it is the same).
pub const SPEED_PROMPT: &str = "The history of the city begins";
/// New tokens of the timed decode.
pub const SPEED_NEW_TOKENS: usize = 32;

impl Experiment {
    /// Decode tokens/s of `llama` with this experiment's tokenizer, and its linears' bytes;
    /// `eval_tok_s` is the caller's timing of a perplexity pass, if it made one.
    pub fn model_speed(&self, llama: &Llama, eval_tok_s: Option<f64>) -> Result<ModelSpeed> {
        let params = GenParams {
            max_new_tokens: SPEED_NEW_TOKENS,
            ..GenParams::default()
        };
        let g = generate_with(&self.model, llama, &params)?;
        Ok(ModelSpeed {
            decode_tok_s: g,
            eval_tok_s,
            linear_bytes: llama.linear_bytes() as u64,
        })
    }

    /// Tokens of all evaluation windows (for tokens/s of a timed perplexity pass).
    pub fn eval_tokens(&self) -> usize {
        self.eval.iter().flatten().map(|w| w.len()).sum()
    }
}

/// Greedy decode speed of `llama` with `m`'s tokenizer (the weights of `m` are not used).
fn generate_with(m: &LoadedModel, llama: &Llama, params: &GenParams) -> Result<f64> {
    let view = LoadedModel {
        llama: llama.clone(),
        tokenizer: m.tokenizer.clone(),
        source: m.source.clone(),
        path: m.path.clone(),
        hf_files: m.hf_files.clone(),
    };
    Ok(generate(&view, SPEED_PROMPT, params, &mut |_| true)?.tokens_per_s)
}
