//! Perplexity by the paper's protocol (README, "The demo protocol"): every window is its own sequence (positions
//! 0..len-1, causal mask, no BOS); logits at positions 0..len-2 predict tokens 1..len-1; NLL from
//! the log-softmax of f32 logits, summed in f64; ppl = exp(Σ NLL / predictions).

use candle_core::{Tensor, D};
use color_eyre::eyre::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::fused;
use crate::model::llama::{log_softmax_f32, Llama};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// Number of predicted tokens (windows × (seq_len − 1)).
    pub tokens: usize,
    pub nll_sum: f64,
    pub windows: usize,
    pub seq_len: usize,
    /// Σ NLL of each window (its `seq_len − 1` predictions), in window order: what a paired
    /// comparison of two configurations on the same windows resamples.
    pub window_nll: Vec<f64>,
}

/// Windows forwarded together: bounds the logits buffer (batch × len × vocab f32).
pub fn batch_size_for(seq_len: usize, vocab: usize) -> usize {
    let per_window = seq_len * vocab * 4 * 3; // logits + log-softmax + slack
    (512 * 1024 * 1024 / per_window.max(1)).clamp(1, 8)
}

/// Positions whose logits exist at once: `POSITIONS × vocab` f32 (48 MB for the demo's 49,152
/// tokens); candle's log-softmax (GPUs) needs two more of them. A window's 255 predictions at
/// once: the head's matrix product packs the whole embedding matrix on every call, four times
/// per window with 64 positions.
const POSITIONS: usize = 256;

/// Σ NLL of one batch from its final hidden states (`None`: run the model's blocks on `ids`).
///
/// The head and log-softmax run on a few positions of one window at a time: the logits of a
/// whole batch are `batch × seq_len × vocab` f32, and the log-softmax triples that, which
/// would be most of the evaluation's peak memory. Every step is row-wise (RMS norm, the head's
/// matrix product, log-softmax), and one running sum in window and position order gives the
/// same bits as the whole batch at once.
fn batch_nll(
    model: &Llama,
    ids: &Tensor,
    hidden: Option<&Tensor>,
    per_window: &mut Vec<f64>,
) -> Result<f64> {
    let (batch, seq_len) = ids.dims2()?;
    let hidden = match hidden {
        Some(h) => h.to_device(&model.device)?,
        None => model.hidden(ids)?,
    };
    let mut sum = 0f64;
    for i in 0..batch {
        // The batch's running sum is kept as it always was (the perplexity's bits); each
        // window's own sum beside it.
        let mut window = 0f64;
        for start in (0..seq_len - 1).step_by(POSITIONS) {
            let n = POSITIONS.min(seq_len - 1 - start);
            let h = hidden.narrow(0, i, 1)?.narrow(1, start, n)?;
            let targets = ids.narrow(0, i, 1)?.narrow(1, start + 1, n)?;
            let ids = targets.flatten_all()?.to_vec1::<u32>()?;
            let lp = match model.head_log_probs(&h, &ids)? {
                Some(lp) => lp,
                None => target_log_probs(&model.head(&h)?, &targets)?,
            };
            for x in lp {
                sum += x;
                window += x;
            }
        }
        per_window.push(-window);
    }
    Ok(-sum)
}

/// `log p(target)` at each position of `logits` `[1, n, vocab]`: fused on the CPU in f32 (one
/// pass per row, rows in parallel), else candle's log-softmax (a GPU, bf16 logits).
fn target_log_probs(logits: &Tensor, targets: &Tensor) -> Result<Vec<f64>> {
    let ids = targets.flatten_all()?.to_vec1::<u32>()?;
    if let Some(lp) = fused::target_log_probs(logits, &ids)? {
        return Ok(lp);
    }
    let lsm = log_softmax_f32(logits)?;
    let picked = lsm
        .gather(&targets.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(picked.into_iter().map(f64::from).collect())
}

fn ids_of(model: &Llama, chunk: &[Vec<u32>]) -> Result<Tensor> {
    let flat: Vec<u32> = chunk.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(
        flat,
        (chunk.len(), chunk[0].len()),
        &model.device,
    )?)
}

/// Batch by batch through the whole model.
fn batch_major(
    model: &Llama,
    windows: &[Vec<u32>],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    per_window: &mut Vec<f64>,
) -> Result<f64> {
    let (mut nll_sum, mut done) = (0f64, 0);
    for chunk in windows.chunks(batch) {
        nll_sum += batch_nll(model, &ids_of(model, chunk)?, None, per_window)?;
        done += chunk.len();
        crate::error::check(progress(done, windows.len()))?;
    }
    Ok(nll_sum)
}

/// Host memory for the hidden states of one group of windows in [`block_major`].
const GROUP_BYTES: usize = 1 << 30;

/// An offloaded model reads every block from its file for each forward, so evaluate block by
/// block instead: the hidden states of a group of windows (up to [`GROUP_BYTES`]) go through
/// block 0, then block 1, …, so each block is read once per group rather than once per batch.
/// Same batches, same operations: the NLL equals [`batch_major`]'s exactly.
fn block_major(
    model: &Llama,
    windows: &[Vec<u32>],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
    window_nll: &mut Vec<f64>,
) -> Result<f64> {
    let per_window = windows[0].len() * model.config.hidden_size * model.dtype.size_in_bytes();
    let group = (GROUP_BYTES / per_window.max(1) / batch).max(1) * batch;
    let n = model.blocks.len();
    let (mut nll_sum, mut done) = (0f64, 0);
    for g in windows.chunks(group) {
        let ids: Vec<Tensor> = g
            .chunks(batch)
            .map(|c| ids_of(model, c))
            .collect::<Result<_>>()?;
        let mut xs: Vec<Tensor> = ids
            .iter()
            .map(|i| model.embed(i)?.to_device(&model.activations_home()))
            .collect::<candle_core::Result<_>>()?;
        for b in 0..n {
            let blk = model.block(b)?;
            xs = xs
                .iter()
                .map(|x| model.forward_batch(&blk, x, None))
                .collect::<candle_core::Result<_>>()?;
            crate::error::check(progress(done + g.len() * (b + 1) / (n + 1), windows.len()))?;
        }
        for (i, x) in ids.iter().zip(&xs) {
            nll_sum += batch_nll(model, i, Some(x), window_nll)?;
        }
        done += g.len();
        crate::error::check(progress(done, windows.len()))?;
    }
    Ok(nll_sum)
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
    let mut window_nll = Vec::with_capacity(windows.len());
    let nll_sum = match model.offload {
        None => batch_major(model, windows, batch, progress, &mut window_nll)?,
        Some(_) => block_major(model, windows, batch, progress, &mut window_nll)?,
    };
    let tokens = windows.len() * (seq_len - 1);
    Ok(Perplexity {
        ppl: (nll_sum / tokens as f64).exp(),
        tokens,
        nll_sum,
        windows: windows.len(),
        seq_len,
        window_nll,
    })
}
