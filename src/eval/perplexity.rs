//! Perplexity by the protocol of protocol.md §3: every window is its own sequence (positions
//! 0..len-1, causal mask, no BOS); logits at positions 0..len-2 predict tokens 1..len-1; NLL from
//! the log-softmax of f32 logits, summed in f64; ppl = exp(Σ NLL / predictions).

use candle_core::{Tensor, D};
use color_eyre::eyre::{bail, Result};
use serde::Serialize;

use crate::model::llama::{log_softmax_f32, Llama};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Number of predicted tokens (windows × (seq_len − 1)).
    pub tokens: usize,
    pub nll_sum: f64,
    pub windows: usize,
    pub seq_len: usize,
}

/// Windows forwarded together: bounds the logits buffer (batch × len × vocab f32).
pub fn batch_size_for(seq_len: usize, vocab: usize) -> usize {
    let per_window = seq_len * vocab * 4 * 3; // logits + log-softmax + slack
    (512 * 1024 * 1024 / per_window.max(1)).clamp(1, 8)
}

/// Perplexity of `model` over `windows`. `progress(done, total)` is called after each batch and
/// may return `false` to cancel (then an error is returned).
pub fn perplexity(
    model: &Llama,
    windows: &[Vec<u32>],
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Perplexity> {
    let Some(first) = windows.first() else {
        bail!("no evaluation windows")
    };
    let seq_len = first.len();
    if windows.iter().any(|w| w.len() != seq_len) || seq_len < 2 {
        bail!("evaluation windows must all have the same length ≥ 2");
    }
    let batch = batch_size_for(seq_len, model.config.vocab_size);
    let mut nll_sum = 0f64;
    let mut done = 0;
    for chunk in windows.chunks(batch) {
        let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
        let ids = Tensor::from_vec(flat, (chunk.len(), seq_len), &model.device)?;
        let logits = model.forward(&ids, 0, None)?.narrow(1, 0, seq_len - 1)?;
        let lsm = log_softmax_f32(&logits)?;
        let targets = ids.narrow(1, 1, seq_len - 1)?.unsqueeze(D::Minus1)?;
        let picked = lsm
            .gather(&targets.contiguous()?, D::Minus1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        nll_sum -= picked.iter().map(|&x| x as f64).sum::<f64>();
        done += chunk.len();
        if !progress(done, windows.len()) {
            bail!("cancelled");
        }
    }
    let tokens = windows.len() * (seq_len - 1);
    Ok(Perplexity {
        ppl: (nll_sum / tokens as f64).exp(),
        tokens,
        nll_sum,
        windows: windows.len(),
        seq_len,
    })
}
