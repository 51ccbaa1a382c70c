//! Preflight memory estimate of a pruning run, from the model's config alone (no weights):
//! what dlpx holds at its peak, so a run that cannot fit is refused before any work with the
//! option that would make it fit.

use color_eyre::eyre::Result;

use crate::error::{Part, Setting, SettingError};
use crate::model::LlamaConfig;
use crate::prune::mask::Metric;

/// Bytes per part, each at its peak.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    /// Weights held in memory, in the compute dtype: all of them, or when offloaded the
    /// embeddings, norms and head plus the one block being worked on.
    pub weights: u64,
    /// Offloaded: the block weights left in their file (memory-mapped, read one block at
    /// a time; the OS may keep their pages cached, but they are not needed at once). 0 without.
    pub offloaded: u64,
    /// Calibration activations: the block inputs and outputs of every window (compute dtype),
    /// two copies while a block's outputs replace its inputs.
    pub activations: u64,
    /// Inside one block's forward for one batch: attention scores and the MLP's intermediates.
    pub block_workspace: u64,
    /// Work on one linear at a time: its f32 weights with their Wanda scores (the block median
    /// is a two-pass radix select, so one linear's scores exist at a time), or AlphaPruning's
    /// eigenvalue problem (f32 weights, the f64 Gram matrix and the solver's two work copies),
    /// whichever is larger.
    pub linear_work: u64,
    /// Wanda input statistics ‖X_j‖² of every linear of every block (f32), kept for reallocation.
    pub wanda_stats: u64,
    /// SparseGPT: one block's input Hessians (4 distinct inputs, f32) and the f64 working copies
    /// (H, H⁻¹, its Cholesky factor) of the widest linear.
    pub hessians: u64,
    pub total: u64,
}

pub fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

impl Estimate {
    pub fn new(
        c: &LlamaConfig,
        dtype_bytes: usize,
        nsamples: usize,
        seq_len: usize,
        metric: Metric,
        offload: bool,
    ) -> Self {
        let (h, i, l) = (
            c.hidden_size as u64,
            c.intermediate_size as u64,
            c.num_hidden_layers as u64,
        );
        let (n, t) = (nsamples as u64, seq_len as u64);
        let b = crate::prune::stats::batch_for(seq_len).min(nsamples.max(1)) as u64;
        let all_weights = c.param_count() as u64 * dtype_bytes as u64;
        let block_weights = c.block_linear_params() as u64 * dtype_bytes as u64;
        let (weights, offloaded) = match offload {
            true => (all_weights - (l - 1) * block_weights, l * block_weights),
            false => (all_weights, 0),
        };
        let db = dtype_bytes as u64;
        let activations = 2 * n * t * h * db;
        // Scores [b, heads, t, t] plus softmax output, and gate/up/act/product [b, t, i].
        let block_workspace = (2 * b * c.num_attention_heads as u64 * t * t + 4 * b * t * i) * db;
        // Per block, the 7 linears' input widths: q, k, v, gate, up take h; o takes heads·d; down i.
        let o_in = (c.num_attention_heads * c.head_dim) as u64;
        let kv = (c.num_key_value_heads * c.head_dim) as u64;
        let shapes = [(o_in, h), (kv, h), (h, o_in), (i, h), (h, i)];
        let widest = shapes.iter().map(|(r, c)| r * c).max().unwrap_or(0);
        let gram = shapes
            .iter()
            .map(|(r, c)| *r.min(c))
            .max()
            .unwrap_or(0)
            .pow(2);
        let linear_work = (2 * widest * 4).max(widest * 4 + 3 * gram * 8);
        let wanda_stats = l * (5 * h + o_in + i) * 4;
        let hessians = match metric {
            Metric::SparseGpt => (2 * h * h + o_in * o_in + i * i) * 4 + 3 * i.max(h).pow(2) * 8,
            _ => 0,
        };
        let total = weights + activations + block_workspace + linear_work + wanda_stats + hessians;
        Self {
            weights,
            offloaded,
            activations,
            block_workspace,
            linear_work,
            wanda_stats,
            hessians,
            total,
        }
    }

    pub fn describe(&self) -> String {
        let offloaded = match self.offloaded {
            0 => String::new(),
            b => format!(
                " (+{:.2} GiB of blocks left in the file, offloaded)",
                gib(b)
            ),
        };
        format!(
            "memory estimate {:.2} GiB{offloaded}: weights {:.2}, activations {:.2}, block \
             workspace {:.2}, per-linear work {:.2}, Wanda statistics {:.3}, SparseGPT Hessians {:.2}",
            gib(self.total),
            gib(self.weights),
            gib(self.activations),
            gib(self.block_workspace),
            gib(self.linear_work),
            gib(self.wanda_stats),
            gib(self.hessians),
        )
    }

    /// Refuse when the estimate exceeds `available` bytes, naming what would make it fit.
    pub fn check(&self, available: Option<u64>, nsamples: usize) -> Result<()> {
        let Some(avail) = available else {
            return Ok(());
        };
        if self.total <= avail {
            return Ok(());
        }
        let rest = self.total - self.activations;
        let mut hint = None;
        if rest < avail && self.activations > 0 {
            // Activations scale linearly with the number of windows.
            let per = self.activations / nsamples.max(1) as u64;
            let fit = ((avail - rest) / per.max(1)) as usize;
            if fit >= 1 {
                hint = Some(crate::said!(
                    "use ",
                    Setting::CalibSamples,
                    format!(" {fit} or fewer, or a shorter "),
                    Setting::SeqLen
                ));
            }
        }
        let hint = match hint {
            Some(h) => h,
            None if self.offloaded == 0 => crate::said!(
                "the weights alone do not fit: use ",
                Setting::Offload,
                " (one block in memory at a time), ",
                Setting::Dtype,
                " bf16 (half the memory) or a machine with more memory"
            ),
            None => crate::said!(
                "even one block at a time does not fit: use ",
                Setting::Dtype,
                " bf16 (half the memory) or a machine with more memory"
            ),
        };
        let mut parts = vec![Part::Text(format!(
            "this run needs about {:.1} GiB but {:.1} GiB are available ({}); ",
            gib(self.total),
            gib(avail),
            self.describe()
        ))];
        parts.extend(hint.0);
        Err(SettingError(parts).into())
    }
}

/// Memory available to this process (Linux `MemAvailable`); `None` where unknown.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size of this process (VmHWM), in KiB; `None` off Linux.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_a_fitting_sample_count() {
        let c = LlamaConfig::from_hf_json(
            r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
                "num_attention_heads":4,"num_key_value_heads":4,"vocab_size":100,
                "max_position_embeddings":512,"rms_norm_eps":1e-5}"#,
        )
        .unwrap();
        let e = Estimate::new(&c, 4, 128, 256, Metric::Wanda, false);
        let avail = e.total - e.activations / 2;
        let err = e.check(Some(avail), 128).unwrap_err();
        let said = err
            .downcast_ref::<SettingError>()
            .expect("a typed setting error");
        let flag = |p: Setting| match p {
            Setting::CalibSamples => "CALIB",
            _ => "OTHER",
        };
        let msg = said.render(flag);
        assert!(msg.contains("use CALIB 64 or fewer"), "{msg}");
        assert!(
            err.to_string().contains("calibration windows 64 or fewer"),
            "{err}"
        );
        assert!(e.check(Some(e.total), 128).is_ok());
        assert!(e.check(None, 128).is_ok());
    }
}
