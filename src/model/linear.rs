//! A linear layer that can be pruned: it owns its weight, can be masked, and its inputs can be
//! observed by the calibration code (the Wanda `scaler_row` statistic is built from them).

use candle_core::{DType, Result, Tensor};

/// The seven prunable linears of a decoder block, in the reference code's module order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearKind {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LinearKind {
    pub const ALL: [LinearKind; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The HF tensor-name suffix inside `model.layers.N.`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Q => "self_attn.q_proj",
            Self::K => "self_attn.k_proj",
            Self::V => "self_attn.v_proj",
            Self::O => "self_attn.o_proj",
            Self::Gate => "mlp.gate_proj",
            Self::Up => "mlp.up_proj",
            Self::Down => "mlp.down_proj",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone)]
pub struct PrunableLinear {
    /// HF name prefix, e.g. `model.layers.3.self_attn.q_proj` (weight is `<name>.weight`).
    pub name: String,
    /// `[out_features, in_features]`, in the model's compute dtype. Pruned entries are exact zeros.
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// A low-rank adapter added to the output (LoRA recovery); the weight itself is untouched,
    /// so its pruned entries stay exact zeros.
    pub lora: Option<Lora>,
}

/// A LoRA adapter (Hu et al., 2022) as PEFT defines it: `y += scale · (x Aᵀ) Bᵀ`, with
/// `A: [r, in]`, `B: [out, r]` and `scale = lora_alpha / r`.
#[derive(Debug, Clone)]
pub struct Lora {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl PrunableLinear {
    pub fn new(name: impl Into<String>, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            name: name.into(),
            weight,
            bias,
            lora: None,
        }
    }

    /// A shape-only weight for an offloaded block: one scalar broadcast to `[out, in]`, so
    /// shapes and parameter counts are known while the data stays in its file.
    pub fn placeholder(shape: Vec<usize>, dtype: DType) -> Result<Tensor> {
        Tensor::zeros((), dtype, &candle_core::Device::Cpu)?.broadcast_as(shape)
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `x @ Wᵀ (+ b)` for an input of shape `[.., in_features]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, cols) = (
            dims[..dims.len() - 1].iter().product::<usize>(),
            dims[dims.len() - 1],
        );
        let y = x.reshape((rows, cols))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match &self.lora {
            Some(l) => {
                let x2 = x.reshape((rows, cols))?;
                (y + (x2.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?)?
            }
            None => y,
        };
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.out_features();
        }
        y.reshape(out)
    }

    /// Apply a keep-mask (`u8` or any dtype, nonzero = keep): the weight becomes exactly zero where
    /// the mask is zero. The mask itself is not kept: pruned weights are exact zeros, so a pruned
    /// layer's mask is `weight != 0` (a byte per weight would add a quarter to an f32 model).
    pub fn set_mask(&mut self, mask: Tensor) -> Result<()> {
        let keep = mask.to_dtype(self.weight.dtype())?;
        self.weight = (&self.weight * keep)?;
        Ok(())
    }

    /// Replace the weight (e.g. SparseGPT's updated values) and record the keep-mask; masked
    /// entries are forced to exact zeros.
    pub fn set_weight_and_mask(&mut self, weight: Tensor, mask: Tensor) -> Result<()> {
        self.set_weight(weight)?;
        self.set_mask(mask)
    }

    /// Replace the weight by one of the same shape (converted to this layer's dtype and device).
    pub fn set_weight(&mut self, weight: Tensor) -> Result<()> {
        let weight = weight
            .to_dtype(self.weight.dtype())?
            .to_device(self.weight.device())?;
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "{}: new weight {:?} for a {:?} linear",
                self.name,
                weight.dims(),
                self.weight.dims()
            );
        }
        self.weight = weight;
        Ok(())
    }

    /// Fraction of exactly-zero weights.
    pub fn sparsity(&self) -> Result<f64> {
        let zeros = self
            .weight
            .eq(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok(zeros / self.weight.elem_count() as f64)
    }
}

/// The Wanda input statistic of one linear (`scaler_row` of the reference code): after N
/// sequences, `sq_norm[j] = (1/N) Σ_sequences Σ_tokens x[t, j]²`. `n` counts sequences, not tokens.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputStats {
    pub sq_norm: Vec<f32>,
    pub n: usize,
}

impl InputStats {
    pub fn new(cols: usize) -> Self {
        Self {
            sq_norm: vec![0.0; cols],
            n: 0,
        }
    }

    /// Add a batch `[b, t, cols]` (or `[t, cols]`); every row of the batch is one sequence and
    /// is added with the reference code's running-mean update, in f32.
    pub fn add_batch(&mut self, x: &Tensor) -> Result<()> {
        let x = if x.rank() == 2 {
            x.unsqueeze(0)?
        } else {
            x.clone()
        };
        // Norm first, then squared, as torch.norm(X, p=2, dim=1) ** 2 does.
        let norms = x.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?; // [b, cols]
        for row in norms.to_vec2::<f32>()? {
            let n = self.n as f32;
            let keep = n / (n + 1.0);
            self.n += 1;
            let inv = self.n as f32;
            for (s, v) in self.sq_norm.iter_mut().zip(row) {
                *s *= keep;
                *s += v * v / inv;
            }
        }
        Ok(())
    }
}

/// Observer of the inputs of a block's linears during a forward pass.
pub type Observer<'a> = &'a mut dyn FnMut(LinearKind, &Tensor) -> Result<()>;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn forward_matches_manual_and_mask_zeroes() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev)?;
        let b = Tensor::new(&[0.5f32, -1.0], &dev)?;
        let mut l = PrunableLinear::new("x", w, Some(b));
        let x = Tensor::new(&[[[1f32, 0., -1.]]], &dev)?;
        assert_eq!(
            l.forward(&x)?.to_vec3::<f32>()?,
            vec![vec![vec![-1.5, -3.0]]]
        );
        l.set_mask(Tensor::new(&[[1u8, 0, 1], [0, 1, 1]], &dev)?)?;
        assert_eq!(
            l.weight.to_vec2::<f32>()?,
            vec![vec![1., 0., 3.], vec![0., 5., 6.]]
        );
        assert!((l.sparsity()? - 2.0 / 6.0).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn input_stats_is_running_mean_over_sequences() -> Result<()> {
        let dev = Device::Cpu;
        let mut s = InputStats::new(2);
        // two sequences of two tokens
        let x = Tensor::new(&[[[1f32, 2.], [3., 0.]], [[0f32, 1.], [1., 1.]]], &dev)?;
        s.add_batch(&x)?;
        assert_eq!(s.n, 2);
        // seq0: [10, 4], seq1: [1, 2] → mean [5.5, 3]
        assert!((s.sq_norm[0] - 5.5).abs() < 1e-6 && (s.sq_norm[1] - 3.0).abs() < 1e-6);
        Ok(())
    }
}
