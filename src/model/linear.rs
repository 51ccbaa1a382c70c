//! A linear layer that can be pruned: it owns its weight, can be masked, and its inputs can be
//! observed by the calibration code (the Wanda `scaler_row` statistic is built from them).

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};

use crate::sparse::{SparseMatmul, SparseMatrix, SparseMode};

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
    /// `[out_features, in_features]`, dense in the model's compute dtype, or compressed rows
    /// once pruned (see [`PrunableLinear::compact`]). Pruned entries are exact zeros either way.
    store: Store,
    pub bias: Option<Tensor>,
    /// A low-rank adapter added to the output (LoRA recovery); the weight itself is untouched,
    /// so its pruned entries stay exact zeros.
    pub lora: Option<Lora>,
}

/// How a linear holds its weight.
#[derive(Debug, Clone)]
enum Store {
    Dense(Tensor),
    /// Compressed rows in host memory, f32 (the dense tensor is freed): what a pruned CPU
    /// model runs with (README, "Sparse execution"); while adapters train, also the transpose's
    /// (see [`PrunableLinear::keep_transpose`]).
    Sparse(Arc<SparseMatrix>, Option<Arc<SparseMatrix>>),
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
            store: Store::Dense(weight),
            bias,
            lora: None,
        }
    }

    /// A linear held in compressed rows from the start (a sparse checkpoint read as it is).
    pub fn from_sparse(
        name: impl Into<String>,
        weight: SparseMatrix,
        bias: Option<Tensor>,
    ) -> Self {
        Self {
            name: name.into(),
            store: Store::Sparse(Arc::new(weight), None),
            bias,
            lora: None,
        }
    }

    /// A shape-only weight for an offloaded block: one scalar broadcast to `[out, in]`, so
    /// shapes and parameter counts are known while the data stays in its file.
    pub fn placeholder(shape: Vec<usize>, dtype: DType) -> Result<Tensor> {
        Tensor::zeros((), dtype, &candle_core::Device::Cpu)?.broadcast_as(shape)
    }

    /// The weight as a dense `[out, in]` tensor: the stored tensor itself when dense, a fresh
    /// copy with the zeros filled in when sparse (host memory, f32).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.store {
            Store::Dense(w) => Ok(w.clone()),
            Store::Sparse(s, _) => s.to_tensor(&Device::Cpu, DType::F32),
        }
    }

    /// With `on`, hold a sparse weight's transpose in compressed rows too, so that the
    /// backward of a training step multiplies by `W` without rebuilding it dense (a fresh
    /// dense copy of every linear per step, and the zeros multiplied); without, drop it.
    /// Dense weights are left as they are.
    pub fn keep_transpose(&mut self, on: bool) -> Result<()> {
        if let Store::Sparse(s, t) = &mut self.store {
            *t = match on {
                true => Some(Arc::new(s.transposed()?)),
                false => None,
            };
        }
        Ok(())
    }

    /// The compressed rows, when the weight is held sparse.
    pub fn sparse(&self) -> Option<&SparseMatrix> {
        match &self.store {
            Store::Sparse(s, _) => Some(s),
            Store::Dense(_) => None,
        }
    }

    pub fn in_features(&self) -> usize {
        match &self.store {
            Store::Dense(w) => w.dims()[1],
            Store::Sparse(s, _) => s.cols(),
        }
    }

    pub fn out_features(&self) -> usize {
        match &self.store {
            Store::Dense(w) => w.dims()[0],
            Store::Sparse(s, _) => s.rows(),
        }
    }

    pub fn elem_count(&self) -> usize {
        self.in_features() * self.out_features()
    }

    pub fn device(&self) -> Device {
        match &self.store {
            Store::Dense(w) => w.device().clone(),
            Store::Sparse(..) => Device::Cpu,
        }
    }

    pub fn dtype(&self) -> DType {
        match &self.store {
            Store::Dense(w) => w.dtype(),
            Store::Sparse(..) => DType::F32,
        }
    }

    /// Bytes the weight holds in memory (a shape-only placeholder holds none).
    pub fn weight_bytes(&self) -> usize {
        match &self.store {
            Store::Dense(w) if w.stride().contains(&0) => 0,
            Store::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Store::Sparse(s, _) => s.bytes(),
        }
    }

    /// Hold the weight in compressed rows when `mode` says it runs faster so (shape, sparsity,
    /// CPU f32), freeing the dense tensor; `Off` (or a dense-enough weight) makes it dense again.
    /// Returns whether it is sparse now.
    pub fn compact(&mut self, mode: SparseMode) -> Result<bool> {
        let (rows, cols) = (self.out_features(), self.in_features());
        match &self.store {
            Store::Dense(w) => {
                if w.stride().contains(&0) || mode == SparseMode::Off {
                    return Ok(false);
                }
                // Count the zeros in place first: a dense model never pays for a copy.
                let Some(zeros) = zero_fraction(w)? else {
                    return Ok(false);
                };
                if !mode.use_sparse(rows, cols, zeros, w.device(), w.dtype()) {
                    return Ok(false);
                }
                let s = SparseMatrix::from_tensor(w)?;
                if !mode.use_sparse(rows, cols, s.sparsity(), w.device(), w.dtype()) {
                    return Ok(false);
                }
                self.store = Store::Sparse(Arc::new(s), None);
                Ok(true)
            }
            Store::Sparse(s, _) => {
                if mode.use_sparse(rows, cols, s.sparsity(), &Device::Cpu, DType::F32) {
                    return Ok(true);
                }
                self.store = Store::Dense(s.to_tensor(&Device::Cpu, DType::F32)?);
                Ok(false)
            }
        }
    }

    /// `x @ Wᵀ (+ b)` for an input of shape `[.., in_features]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (rows, cols) = (
            dims[..dims.len() - 1].iter().product::<usize>(),
            dims[dims.len() - 1],
        );
        let x2 = x.reshape((rows, cols))?;
        let y = match &self.store {
            Store::Dense(w) => match crate::sparse::dense_gemv(w, &x2)? {
                Some(y) => y,
                None => match crate::sparse::FrozenMatmul::apply(w, &x2)? {
                    Some(y) => y,
                    None => x2.matmul(&w.t()?)?,
                },
            },
            Store::Sparse(s, t) if x.device().is_cpu() && x.dtype() == DType::F32 => {
                SparseMatmul::apply_with(s, t.as_ref(), &x2)?
            }
            Store::Sparse(s, _) => {
                let w = s.to_tensor(x.device(), x.dtype())?;
                x2.matmul(&w.t()?)?
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let y = match &self.lora {
            // The scale on the rank-r product, not on the output-sized one: one pass over
            // `[rows, r]` instead of `[rows, out]`.
            Some(l) => (y + (x2.matmul(&l.a.t()?)? * l.scale)?.matmul(&l.b.t()?)?)?,
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
        let w = self.weight()?;
        let keep = mask.to_dtype(w.dtype())?.to_device(w.device())?;
        self.store = Store::Dense((&w * keep)?);
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
        let weight = weight.to_dtype(self.dtype())?.to_device(&self.device())?;
        if weight.dims() != [self.out_features(), self.in_features()] {
            candle_core::bail!(
                "{}: new weight {:?} for a [{}, {}] linear",
                self.name,
                weight.dims(),
                self.out_features(),
                self.in_features()
            );
        }
        self.store = Store::Dense(weight);
        Ok(())
    }

    /// Put a weight in place as it is (its own dtype and device): an offloaded block's weight
    /// read from its file, or a block moved between devices.
    pub fn put_weight(&mut self, weight: Tensor) {
        self.store = Store::Dense(weight);
    }

    /// Move a dense weight to `dev` (a sparse weight stays in host memory, where it runs).
    pub fn move_to(&mut self, dev: &Device) -> Result<()> {
        if let Store::Dense(w) = &self.store {
            self.store = Store::Dense(w.to_device(dev)?);
        }
        Ok(())
    }

    /// Fraction of exactly-zero weights.
    pub fn sparsity(&self) -> Result<f64> {
        let w = match &self.store {
            Store::Sparse(s, _) => return Ok(s.sparsity()),
            Store::Dense(w) => w,
        };
        let zeros = w
            .eq(0.0)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        Ok(zeros / w.elem_count() as f64)
    }
}

/// Fraction of exact zeros of a contiguous f32 CPU tensor, read in place (`None` for any other).
fn zero_fraction(w: &Tensor) -> Result<Option<f64>> {
    use rayon::prelude::*;
    if !w.device().is_cpu() || w.dtype() != DType::F32 || !w.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let data = cpu.as_slice::<f32>()?;
    let Some((a, b)) = layout.contiguous_offsets() else {
        return Ok(None);
    };
    let zeros: usize = data[a..b]
        .par_chunks(1 << 16)
        .map(|c| c.iter().filter(|&&x| x == 0.0).count())
        .sum();
    Ok(Some(zeros as f64 / (b - a).max(1) as f64))
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
            l.weight()?.to_vec2::<f32>()?,
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
