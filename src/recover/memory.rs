//! Preflight memory estimate of LoRA recovery, from the model's config alone (no weights), in
//! the terms of the pruning estimate ([`crate::prune::memory::Estimate`]): what a checkpointed
//! training step holds at its peak, so a run that cannot fit is refused before any work with the
//! setting that would make it fit.

use color_eyre::eyre::Result;

use crate::error::{Part, Setting, SettingError};
use crate::model::LlamaConfig;
use crate::prune::mask::Metric;
use crate::prune::memory::{gib, Estimate};

/// Copies of the `[HEAD_ROWS, vocab]` f32 logits alive at once in the head's loss and its
/// backward (logits, log-softmax and its intermediates, their gradients). Measured on the demo:
/// the head's part of a step peaks 480 MB above the step's base, 9.5 × 50 MB.
const HEAD_COPIES: u64 = 10;
/// Copies of the attention scores `[b, heads, t, t]` in one block's recomputation and its
/// backward (the product, scale, mask, the composed softmax's steps, their gradients).
const SCORE_COPIES: u64 = 8;
/// Copies of the MLP's `[b, t, intermediate]` tensors (gate, up, silu's steps, product, gradients).
const MLP_COPIES: u64 = 10;
/// Copies of `[b, t, hidden]` tensors (norms, projections, residuals, gradients).
const HIDDEN_COPIES: u64 = 20;

/// Bytes per part of a recovery run, each at its peak.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecoveryEstimate {
    /// Weights held in memory, in the compute dtype, as the pruning estimate counts them: all, or
    /// offloaded the embeddings, norms and head plus the one block being run.
    pub weights: u64,
    /// Offloaded: the block weights that are read one block at a time. 0 without.
    pub offloaded: u64,
    /// LoRA's A and B of the seven linears of every block, f32.
    pub adapters: u64,
    /// AdamW's two moments, one step's gradients and the best checkpoint's copy, f32.
    pub optimizer: u64,
    /// Gradient checkpointing: every block's input of one batch (and the last block's output)
    /// in the compute dtype, plus the f32 hidden-state gradient carried down.
    pub checkpoints: u64,
    /// One block's recomputation and its backward for one batch: attention scores, the MLP's
    /// and the hidden-width intermediates with their gradients.
    pub block_workspace: u64,
    /// The head and the loss, `head_rows` positions at a time, f32.
    pub head: u64,
    pub total: u64,
}

impl RecoveryEstimate {
    /// `rank`, `batch` windows of `seq_len` tokens; the head runs `head_rows` positions at a time.
    pub fn new(
        c: &LlamaConfig,
        dtype_bytes: usize,
        rank: usize,
        batch: usize,
        seq_len: usize,
        offload: bool,
    ) -> Self {
        let e = Estimate::new(c, dtype_bytes, 1, seq_len, Metric::Wanda, offload);
        let (h, i, l) = (
            c.hidden_size as u64,
            c.intermediate_size as u64,
            c.num_hidden_layers as u64,
        );
        let (r, b, db) = (rank as u64, batch as u64, dtype_bytes as u64);
        // A training window of t tokens predicts t − 1.
        let t = seq_len.saturating_sub(1) as u64;
        let o_in = (c.num_attention_heads * c.head_dim) as u64;
        let kv = (c.num_key_value_heads * c.head_dim) as u64;
        // (in, out) of q, k, v, o, gate, up, down: r·(in + out) each.
        let shapes = [
            (h, o_in),
            (h, kv),
            (h, kv),
            (o_in, h),
            (h, i),
            (h, i),
            (i, h),
        ];
        let per_block: u64 = shapes.iter().map(|(a, o)| r * (a + o)).sum();
        let adapters = l * per_block * 4;
        let optimizer = 4 * adapters;
        let checkpoints = (l + 1) * b * t * h * db + b * t * h * 4;
        let heads = c.num_attention_heads as u64;
        let block_workspace =
            (SCORE_COPIES * b * heads * t * t + MLP_COPIES * b * t * i + HIDDEN_COPIES * b * t * h)
                * db;
        let rows = (crate::recover::HEAD_ROWS as u64).min(b * t);
        let head = HEAD_COPIES * rows * c.vocab_size as u64 * 4;
        let total = e.weights + adapters + optimizer + checkpoints + block_workspace + head;
        Self {
            weights: e.weights,
            offloaded: e.offloaded,
            adapters,
            optimizer,
            checkpoints,
            block_workspace,
            head,
            total,
        }
    }

    pub fn describe(&self) -> String {
        let offloaded = match self.offloaded {
            0 => String::new(),
            b => format!(
                " (+{:.2} GiB of blocks read one at a time, offloaded)",
                gib(b)
            ),
        };
        format!(
            "recovery memory estimate {:.2} GiB{offloaded}: weights {:.2}, adapters {:.3}, AdamW \
             state {:.3}, block inputs {:.2}, one block's backward {:.2}, head and loss {:.2}",
            gib(self.total),
            gib(self.weights),
            gib(self.adapters),
            gib(self.optimizer),
            gib(self.checkpoints),
            gib(self.block_workspace),
            gib(self.head),
        )
    }

    /// Refuse when the estimate exceeds `available` bytes, naming what would make it fit: a
    /// smaller LoRA batch (block inputs and one block's backward scale with it), else offloading.
    pub fn check(&self, available: Option<u64>, batch: usize) -> Result<()> {
        let Some(avail) = available else {
            return Ok(());
        };
        if self.total <= avail {
            return Ok(());
        }
        let scaled = self.checkpoints + self.block_workspace;
        let rest = self.total - scaled;
        let per = scaled / batch.max(1) as u64;
        let fit = match rest < avail {
            true => ((avail - rest) / per.max(1)) as usize,
            false => 0,
        };
        let hint = match (fit >= 1, self.offloaded) {
            (true, _) => crate::said!(
                "use ",
                Setting::LoraBatch,
                format!(" {fit} or fewer windows per step")
            ),
            (false, 0) => crate::said!(
                "even one window per step does not fit: use ",
                Setting::Offload,
                " (one block in memory at a time), ",
                Setting::Dtype,
                " bf16 (half the memory) or a machine with more memory"
            ),
            (false, _) => crate::said!(
                "even one block and one window at a time do not fit: use ",
                Setting::Dtype,
                " bf16 (half the memory) or a machine with more memory"
            ),
        };
        let mut parts = vec![Part::Text(format!(
            "this recovery needs about {:.1} GiB but {:.1} GiB are available ({}); ",
            gib(self.total),
            gib(avail),
            self.describe()
        ))];
        parts.extend(hint.0);
        Err(SettingError(parts).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo_like() -> LlamaConfig {
        LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
                "num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
                "max_position_embeddings":8192,"rms_norm_eps":1e-5,"tie_word_embeddings":true}"#,
        )
        .unwrap()
    }

    #[test]
    fn parts_by_hand_and_the_demo_figure() {
        let c = demo_like();
        let e = RecoveryEstimate::new(&c, 4, 8, 4, 256, false);
        // r·(in + out) over q and o (576 ↔ 576), k and v (576 → 192), gate, up and down (576 ↔ 1536).
        let per_block = 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536));
        assert_eq!(e.adapters, 30 * per_block * 4);
        assert_eq!(e.optimizer, 4 * e.adapters);
        assert_eq!(e.checkpoints, 31 * 4 * 255 * 576 * 4 + 4 * 255 * 576 * 4);
        assert_eq!(e.head, 10 * 256 * 49152 * 4);
        // The measured peak of `dlpx recover --steps 10` on the demo (README) is 1.17 GiB: the
        // estimate is within a fifth of it.
        let g = gib(e.total);
        assert!((0.95..1.4).contains(&g), "{g:.2} GiB");
        let off = RecoveryEstimate::new(&c, 4, 8, 4, 256, true);
        assert!(off.weights < e.weights && off.offloaded > 0);
    }

    #[test]
    fn refusal_names_a_fitting_batch_then_offload() {
        let c = demo_like();
        let e = RecoveryEstimate::new(&c, 4, 8, 8, 256, false);
        let one = RecoveryEstimate::new(&c, 4, 8, 1, 256, false);
        let flag = |p: Setting| match p {
            Setting::LoraBatch => "BATCH",
            Setting::Offload => "OFFLOAD",
            _ => "OTHER",
        };
        let said = |avail: u64| {
            let err = e.check(Some(avail), 8).unwrap_err();
            err.downcast_ref::<SettingError>()
                .expect("a typed setting error")
                .render(flag)
        };
        // Room for exactly three windows' share.
        let per = (e.checkpoints + e.block_workspace) / 8;
        let msg = said(e.total - (e.checkpoints + e.block_workspace) + 3 * per);
        assert!(msg.contains("use BATCH 3 or fewer"), "{msg}");
        // Not even one window: offload.
        let msg = said(one.total - per - 1);
        assert!(msg.contains("use OFFLOAD"), "{msg}");
        assert!(e.check(Some(e.total), 8).is_ok());
        assert!(e.check(None, 8).is_ok());
    }
}
