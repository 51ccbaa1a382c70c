//! Our own Llama-family decoder (Llama 1/2/3, Mistral, Qwen2, SmolLM).
//!
//! It is ours rather than candle-transformers' because pruning needs to run blocks one at a time,
//! observe the input of every linear, and zero weights in place; candle's models keep blocks private.
//! Q/K weights are always in the Hugging Face layout, so the half-split rope (`rope`) is used for
//! every source (GGUF weights are un-permuted at load).

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::ops::{rms_norm, softmax_last_dim};

use super::config::LlamaConfig;
use super::linear::{LinearKind, Observer, PrunableLinear};
use super::{fused, train_ops};
use crate::sparse::{SparseMatrix, SparseMode};

/// Precomputed rope tables `[max_pos, head_dim/2]`.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    /// An op with a backward instead of candle's fused kernel, for training (see
    /// [`Llama::set_differentiable`]).
    differentiable: bool,
}

impl Rope {
    pub fn new(cfg: &LlamaConfig, max_pos: usize, dtype: DType, dev: &Device) -> Result<Self> {
        let inv_freq = rope_inv_freq(cfg);
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max_pos, half), dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (max_pos, half), dev)?.to_dtype(dtype)?,
            differentiable: false,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// candle's fused rope has no backward pass; for training, ours (CPU f32) or the composed
    /// one (same arithmetic) has.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if !self.differentiable {
            return candle_nn::rotary_emb::rope(&x, cos, sin);
        }
        match train_ops::rope(&x, cos, sin)? {
            Some(y) => Ok(y),
            None => candle_nn::rotary_emb::rope_slow(&x, cos, sin),
        }
    }

    /// Rotate `[b, heads, t, head_dim]` for positions `offset..offset+t`.
    pub fn apply(&self, x: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dims()[2];
        if offset + t > self.max_positions() {
            candle_core::bail!(
                "position {} is beyond the rope table ({} positions)",
                offset + t,
                self.max_positions()
            );
        }
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        self.rotate(x, &cos, &sin)
    }

    /// Rotate `[b, heads, t, head_dim]` whose token `(i, j)` sits at position
    /// `positions[i, j]` (u32 `[b, t]`): packed sequences, where positions restart for every
    /// packed piece.
    pub fn apply_at(&self, x: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let (b, t) = positions.dims2()?;
        let half = self.cos.dims()[1];
        let flat = positions.flatten_all()?;
        let cos = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
        let sin = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
        self.rotate(x, &cos, &sin)
    }
}

/// Several sequences (or a tree of sequences sharing prefixes) packed into one row: each token's
/// position and which tokens it may attend to.
#[derive(Debug, Clone)]
pub struct Packing {
    /// u32 `[b, t]`: the position of every packed token within its own sequence.
    pub positions: Tensor,
    /// Additive mask `[b, 1, t, t]`: 0 where token i may see token j (its own earlier
    /// tokens), −∞ elsewhere.
    pub mask: Tensor,
}

/// Inverse frequencies, with Llama-3 frequency-dependent scaling when configured (from a
/// config.json's `rope_scaling`, or a GGUF's per-frequency `rope_freqs` factors).
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    if let Some(factors) = &cfg.rope_freq_factors {
        return base.iter().zip(factors).map(|(f, k)| f / k).collect();
    }
    let Some(s) = &cfg.rope_scaling else {
        return base;
    };
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

/// Keys and values of one block for the positions seen so far. Held in buffers
/// `[b, kv_heads, capacity, head_dim]` whose first `len` positions are filled, grown by doubling:
/// a decode step writes its one position in place instead of copying the whole cache.
#[derive(Debug, Clone, Default)]
pub struct KvEntry {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl KvEntry {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `k`, `v` (`[b, kv_heads, t, head_dim]`).
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let (b, kv, t, hd) = k.dims4()?;
        let cap = self.k.as_ref().map(|x| x.dims()[2]).unwrap_or(0);
        if self.len + t > cap {
            let new_cap = (self.len + t).max(2 * cap).max(64);
            let len = self.len;
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, kv, new_cap, hd), k.dtype(), k.device())?;
                if let (Some(o), true) = (old, len > 0) {
                    buf.slice_set(&o.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        if let (Some(kb), Some(vb)) = (&self.k, &self.v) {
            kb.slice_set(&k.contiguous()?, 2, self.len)?;
            vb.slice_set(&v.contiguous()?, 2, self.len)?;
        }
        self.len += t;
        Ok(())
    }

    /// The filled part of the key and value buffers, `[b, kv_heads, len, head_dim]`.
    fn filled(&self) -> Result<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Ok((k.narrow(2, 0, self.len)?, v.narrow(2, 0, self.len)?)),
            _ => candle_core::bail!("the KV cache is empty"),
        }
    }
}

/// One query position against the cached keys and values, on host f32 slices: per head, scaled
/// dot products, softmax, weighted sum of values (grouped-query heads share their KV head). The
/// decode step's attention as one loop instead of a dozen small tensor ops (`repeat_kv`,
/// contiguous copies, batched matmuls, softmax), which cost more than the arithmetic at batch 1.
fn decode_attention(q: &Tensor, e: &KvEntry, nh: usize, scale: f64) -> Result<Tensor> {
    let (Some(kt), Some(vt)) = (&e.k, &e.v) else {
        candle_core::bail!("the KV cache is empty");
    };
    let (_, nkv, cap, hd) = kt.dims4()?;
    let total = e.len;
    let n_rep = nh / nkv;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl) = kt.storage_and_layout();
    let (vs, vl) = vt.storage_and_layout();
    let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&*ks, &*vs) else {
        candle_core::bail!("decode attention runs on the CPU");
    };
    let (k, v) = (
        &ks.as_slice::<f32>()?[kl.start_offset()..],
        &vs.as_slice::<f32>()?[vl.start_offset()..],
    );
    let scale = scale as f32;
    let head = |h: usize, out: &mut [f32]| {
        let g = h / n_rep;
        let qh = &q[h * hd..(h + 1) * hd];
        let kg = &k[g * cap * hd..];
        let vg = &v[g * cap * hd..];
        let mut s: Vec<f32> = (0..total)
            .map(|j| {
                let kj = &kg[j * hd..(j + 1) * hd];
                crate::sparse::kernels::dot(qh, kj) * scale
            })
            .collect();
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in s.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        crate::sparse::kernels::weighted_rows(&s, vg, hd, out);
        out.iter_mut().for_each(|o| *o /= sum);
    };
    let mut out = vec![0f32; nh * hd];
    if total * nh * hd > 1 << 14 {
        // On the spinning pool that also runs the step's products: rayon's workers would
        // have to be woken, and they compete with the spinning ones for the cores.
        crate::sparse::pool::fill_chunks(&mut out, hd, &|i, o| head(i / hd, o));
    } else {
        out.chunks_mut(hd).enumerate().for_each(|(h, o)| head(h, o));
    }
    Tensor::from_vec(out, (1, 1, nh * hd), &Device::Cpu)
}

/// One KV entry per block.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub blocks: Vec<KvEntry>,
    pub len: usize,
}

impl KvCache {
    pub fn new(n_blocks: usize) -> Self {
        Self {
            blocks: vec![KvEntry::default(); n_blocks],
            len: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
    /// q, k, v, o, gate, up, down — indexed by [`LinearKind::index`].
    pub linears: [PrunableLinear; 7],
    /// False while the linears of an offloaded model are shape-only placeholders: their weights
    /// are read from the [`WeightSource`] by [`Llama::block`] when the block runs.
    pub resident: bool,
}

impl Block {
    pub fn linear(&self, k: LinearKind) -> &PrunableLinear {
        &self.linears[k.index()]
    }

    pub fn linear_mut(&mut self, k: LinearKind) -> &mut PrunableLinear {
        &mut self.linears[k.index()]
    }

    /// Hold each linear in compressed rows or dense as `mode` says (see
    /// [`PrunableLinear::compact`]); returns how many run sparse.
    pub fn compact(&mut self, mode: SparseMode) -> Result<usize> {
        let mut n = 0;
        for l in self.linears.iter_mut() {
            n += usize::from(l.compact(mode)?);
        }
        Ok(n)
    }
}

/// Where a block's input tokens sit: one span from `offset`, or packed sequences.
#[derive(Clone, Copy)]
enum At<'a> {
    Offset(usize),
    Packed(&'a Packing),
}

/// Additive causal mask `[t, offset+t]`: query i (at absolute position offset+i) sees keys ≤ offset+i.
fn causal_mask(t: usize, offset: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let total = offset + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > offset + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, total), dev)?.to_dtype(dtype)
}

/// Repeat KV heads for grouped-query attention: `[b, kv, T, d]` → `[b, kv*n_rep, T, d]`.
fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, kv, n_rep, t, d))?
        .reshape((b, kv * n_rep, t, d))
}

/// Where the weights of an offloaded model stay (a memory-mapped safetensors file, a GGUF file):
/// block linears are read from it one block at a time, on the compute device and in its dtype.
pub trait WeightSource: Send + Sync {
    /// The tensor with this Hugging Face name, or `None` when the checkpoint has none.
    fn tensor(&self, name: &str, device: &Device, dtype: DType) -> Result<Option<Tensor>>;
    /// Its shape, from the file's header (no data is read).
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The weight with this name in compressed rows (f32), when the checkpoint stores it
    /// sparse; `None` when it stores it dense (then [`WeightSource::tensor`] reads it).
    fn sparse_weight(&self, _name: &str) -> Result<Option<SparseMatrix>> {
        Ok(None)
    }
}

/// The weight source of an offloaded model (block weights read from their file on demand).
#[derive(Clone)]
pub struct Offload(pub Arc<dyn WeightSource>);

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Offload")
    }
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub config: LlamaConfig,
    pub embed_tokens: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    /// `None` when the head is tied to the embeddings.
    pub lm_head: Option<PrunableLinear>,
    pub rope: Rope,
    pub device: Device,
    pub dtype: DType,
    /// Offloaded: block linears stay in their file until [`Llama::block`] reads them, and
    /// pruned blocks are kept in host memory, so the device holds one block at a time.
    pub offload: Option<Offload>,
    /// Whether pruned linears run in compressed rows ([`SparseMode`]); see [`Llama::set_sparse`].
    pub sparse: SparseMode,
    /// Run rms-norm, softmax, rope and attention as ops that backpropagate (candle's fused
    /// kernels have no backward pass), for LoRA training: ours with a backward on the CPU in f32
    /// ([`train_ops`]), else candle's composed ops; same values to rounding.
    differentiable: bool,
}

/// How many rope positions to precompute: enough for any window we run, bounded for memory.
const MAX_ROPE_POSITIONS: usize = 16_384;

impl Llama {
    /// Build from tensors named as in Hugging Face checkpoints; `get` returns a tensor by name
    /// (already on the target device and dtype) or an error naming the missing tensor.
    pub fn from_named(
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
        get: impl FnMut(&str) -> color_eyre::Result<Option<Tensor>>,
    ) -> color_eyre::Result<Self> {
        Self::build(config, device, dtype, get, |_| Ok(None), None)
    }

    /// Build a resident model from a weight source. On the CPU in f32, a linear the source
    /// holds sparse ([`WeightSource::sparse_weight`], e.g. a compressed-tensors checkpoint) is
    /// read straight into compressed rows, without a dense copy.
    pub fn from_source(
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
        src: &dyn WeightSource,
    ) -> color_eyre::Result<Self> {
        let sparse_ok = device.is_cpu() && dtype == DType::F32;
        Self::build(
            config,
            device,
            dtype,
            |n| Ok(src.tensor(n, device, dtype)?),
            |n| match sparse_ok {
                true => Ok(src.sparse_weight(n)?),
                false => Ok(None),
            },
            None,
        )
    }

    /// Build an offloaded model: embeddings, norms, biases and head are read now; the block
    /// linears are placeholders of the right shape until [`Llama::block`] reads them.
    pub fn offloaded(
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
        source: Arc<dyn WeightSource>,
    ) -> color_eyre::Result<Self> {
        let src = source.clone();
        let get = move |n: &str| -> color_eyre::Result<Option<Tensor>> {
            Ok(src.tensor(n, device, dtype)?)
        };
        Self::build(
            config,
            device,
            dtype,
            get,
            |_| Ok(None),
            Some(Offload(source)),
        )
    }

    fn build(
        config: LlamaConfig,
        device: &Device,
        dtype: DType,
        mut get: impl FnMut(&str) -> color_eyre::Result<Option<Tensor>>,
        mut get_sparse: impl FnMut(&str) -> color_eyre::Result<Option<SparseMatrix>>,
        offload: Option<Offload>,
    ) -> color_eyre::Result<Self> {
        use color_eyre::eyre::eyre;
        let mut req = |name: &str| -> color_eyre::Result<Tensor> {
            get(name)?.ok_or_else(|| eyre!("the checkpoint has no tensor `{name}`"))
        };
        let embed_tokens = req("model.embed_tokens.weight")?;
        let norm = req("model.norm.weight")?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut mk = |k: LinearKind| -> color_eyre::Result<PrunableLinear> {
                let name = format!("{p}.{}", k.hf_name());
                let w_name = format!("{name}.weight");
                let wants_bias = config.attention_bias
                    && matches!(k, LinearKind::Q | LinearKind::K | LinearKind::V);
                let bias_name = format!("{name}.bias");
                let bias = |req: &mut dyn FnMut(&str) -> color_eyre::Result<Tensor>| {
                    wants_bias.then(|| req(&bias_name)).transpose()
                };
                let w = match &offload {
                    Some(o) => {
                        let shape =
                            o.0.shape(&w_name)
                                .ok_or_else(|| eyre!("the checkpoint has no tensor `{w_name}`"))?;
                        PrunableLinear::placeholder(shape, dtype)?
                    }
                    None => match get_sparse(&w_name)? {
                        // A sparse checkpoint read straight into compressed rows.
                        Some(sw) => {
                            let b = bias(&mut req)?;
                            let mut l = PrunableLinear::from_sparse(name, sw, b);
                            l.compact(SparseMode::Auto)?;
                            return Ok(l);
                        }
                        None => req(&w_name)?,
                    },
                };
                let b = bias(&mut req)?;
                // A saved pruned checkpoint: held in compressed rows as it is read, so the
                // model never holds a second dense copy (`SparseMode::Off` makes it dense again).
                let mut l = PrunableLinear::new(name, w, b);
                l.compact(SparseMode::Auto)?;
                Ok(l)
            };
            let linears = [
                mk(LinearKind::Q)?,
                mk(LinearKind::K)?,
                mk(LinearKind::V)?,
                mk(LinearKind::O)?,
                mk(LinearKind::Gate)?,
                mk(LinearKind::Up)?,
                mk(LinearKind::Down)?,
            ];
            blocks.push(Block {
                input_layernorm: req(&format!("{p}.input_layernorm.weight"))?,
                post_attention_layernorm: req(&format!("{p}.post_attention_layernorm.weight"))?,
                linears,
                resident: offload.is_none(),
            });
        }
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            // Some checkpoints omit the head even without the flag: then it is tied.
            get("lm_head.weight")?.map(|w| PrunableLinear::new("lm_head", w, None))
        };
        let max_pos = config.max_position_embeddings.clamp(1, MAX_ROPE_POSITIONS);
        let rope = Rope::new(&config, max_pos, dtype, device)?;
        let m = Self {
            config,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            rope,
            device: device.clone(),
            dtype,
            offload,
            sparse: SparseMode::Auto,
            differentiable: false,
        };
        m.check_shapes()?;
        Ok(m)
    }

    fn check_shapes(&self) -> color_eyre::Result<()> {
        let c = &self.config;
        let q = c.num_attention_heads * c.head_dim;
        let kv = c.num_key_value_heads * c.head_dim;
        let expect = |k: LinearKind| match k {
            LinearKind::Q => (q, c.hidden_size),
            LinearKind::K | LinearKind::V => (kv, c.hidden_size),
            LinearKind::O => (c.hidden_size, q),
            LinearKind::Gate | LinearKind::Up => (c.intermediate_size, c.hidden_size),
            LinearKind::Down => (c.hidden_size, c.intermediate_size),
        };
        for b in &self.blocks {
            for k in LinearKind::ALL {
                let l = b.linear(k);
                let (o, i) = expect(k);
                if [l.out_features(), l.in_features()] != [o, i] {
                    color_eyre::eyre::bail!(
                        "tensor `{}.weight` has shape {:?}, the config implies [{o}, {i}]",
                        l.name,
                        [l.out_features(), l.in_features()]
                    );
                }
            }
        }
        if self.embed_tokens.dims() != [c.vocab_size, c.hidden_size] {
            color_eyre::eyre::bail!(
                "embedding has shape {:?}, the config implies [{}, {}]",
                self.embed_tokens.dims(),
                c.vocab_size,
                c.hidden_size
            );
        }
        Ok(())
    }

    /// Set how pruned linears run and convert the resident ones now: compressed rows where
    /// `mode` says it is faster (dense weights freed), dense elsewhere.
    pub fn set_sparse(&mut self, mode: SparseMode) -> Result<()> {
        self.sparse = mode;
        for b in self.blocks.iter_mut().filter(|b| b.resident) {
            b.compact(mode)?;
        }
        Ok(())
    }

    /// How many prunable linears run in compressed rows.
    pub fn sparse_linears(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.linears.iter())
            .filter(|l| l.sparse().is_some())
            .count()
    }

    /// Bytes held by the prunable linears' weights (dense or compressed rows; nothing for
    /// blocks left in their file).
    pub fn linear_bytes(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.linears.iter())
            .map(PrunableLinear::weight_bytes)
            .sum()
    }

    /// Hold (`on`) or drop the transposes of the sparse linears, for the backward of training
    /// steps ([`PrunableLinear::keep_transpose`]).
    pub fn keep_transposes(&mut self, on: bool) -> Result<()> {
        for b in self.blocks.iter_mut().filter(|b| b.resident) {
            for l in b.linears.iter_mut() {
                l.keep_transpose(on)?;
            }
        }
        Ok(())
    }

    /// Switch the forward between candle's fused kernels (inference) and ops that
    /// backpropagate (training).
    pub fn set_differentiable(&mut self, on: bool) {
        self.differentiable = on;
        self.rope.differentiable = on;
    }

    fn norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        if !self.differentiable {
            return rms_norm(x, w, eps as f32);
        }
        match train_ops::rms_norm(x, w, eps)? {
            Some(y) => Ok(y),
            None => candle_nn::ops::rms_norm_slow(x, w, eps as f32),
        }
    }

    fn softmax(&self, att: &Tensor) -> Result<Tensor> {
        if !self.differentiable {
            return softmax_last_dim(att);
        }
        match train_ops::softmax_last_dim(att)? {
            Some(y) => Ok(y),
            None => candle_nn::ops::softmax(att, D::Minus1),
        }
    }

    /// Block `i` ready to run on the compute device: borrowed when resident there; otherwise
    /// read from the offload source (or copied from host memory after pruning) for this use only.
    pub fn block(&self, i: usize) -> Result<Cow<'_, Block>> {
        let b = &self.blocks[i];
        if b.resident {
            if b.linears[0].device().same_device(&self.device) {
                return Ok(Cow::Borrowed(b));
            }
            let mut out = b.clone();
            for l in out.linears.iter_mut() {
                l.move_to(&self.device)?;
            }
            return Ok(Cow::Owned(out));
        }
        let Some(src) = &self.offload else {
            candle_core::bail!("block {i} has no weights and the model has no offload source");
        };
        let mut out = b.clone();
        for l in out.linears.iter_mut() {
            let name = format!("{}.weight", l.name);
            l.put_weight(
                src.0
                    .tensor(&name, &self.device, self.dtype)?
                    .ok_or_else(|| {
                        candle_core::Error::Msg(format!("tensor `{name}` disappeared"))
                    })?,
            );
        }
        out.resident = true;
        Ok(Cow::Owned(out))
    }

    /// Put back a block taken with [`Llama::block`] and changed (pruned). An offloaded model on
    /// a GPU keeps it in host memory, so the device still holds one block at a time.
    pub fn store_block(&mut self, i: usize, mut b: Block) -> Result<()> {
        b.compact(self.sparse)?;
        if self.offload.is_some() && !self.device.is_cpu() {
            for l in b.linears.iter_mut() {
                l.move_to(&Device::Cpu)?;
            }
        }
        b.resident = true;
        self.blocks[i] = b;
        Ok(())
    }

    /// Every tensor under its HF name, in a stable order (used by export). Offloaded blocks are
    /// read one by one and kept in host memory.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for i in 0..self.blocks.len() {
            let b = self.block(i)?;
            let host = |t: &Tensor| -> Result<Tensor> {
                match self.offload {
                    Some(_) => t.to_device(&Device::Cpu),
                    None => Ok(t.clone()),
                }
            };
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                b.input_layernorm.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.post_attention_layernorm.clone(),
            ));
            for l in &b.linears {
                out.push((format!("{}.weight", l.name), host(&l.weight()?)?));
                if let Some(bias) = &l.bias {
                    out.push((format!("{}.bias", l.name), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.weight()?));
        }
        Ok(out)
    }

    /// Positions the rope table covers.
    pub fn rope_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Token embeddings `[b, t, hidden]` for ids `[b, t]`.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.embed_tokens
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.config.hidden_size))
    }

    /// Run decoder block `i` on `x` `[b, t, hidden]` whose first position is `offset`.
    /// With `cache`, keys/values are appended to it; `observe` sees the input of every linear.
    pub fn forward_block(
        &self,
        i: usize,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut KvEntry>,
        observe: Option<Observer<'_>>,
    ) -> Result<Tensor> {
        let blk = self.block(i)?;
        self.forward_block_with(&blk, x, offset, cache, observe)
    }

    /// Run `blk` on packed sequences `x` `[b, t, hidden]` (see [`Packing`]); no cache.
    pub fn forward_block_packed(
        &self,
        blk: &Block,
        x: &Tensor,
        packing: &Packing,
    ) -> Result<Tensor> {
        self.block_forward(blk, x, At::Packed(packing), None, None)
    }

    /// As [`Llama::forward_block`], with a block already taken by [`Llama::block`] (so a pass
    /// over many batches reads an offloaded block once).
    pub fn forward_block_with(
        &self,
        blk: &Block,
        x: &Tensor,
        offset: usize,
        cache: Option<&mut KvEntry>,
        observe: Option<Observer<'_>>,
    ) -> Result<Tensor> {
        self.block_forward(blk, x, At::Offset(offset), cache, observe)
    }

    fn block_forward(
        &self,
        blk: &Block,
        x: &Tensor,
        at: At<'_>,
        cache: Option<&mut KvEntry>,
        mut observe: Option<Observer<'_>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let mut see = |k: LinearKind, v: &Tensor| -> Result<()> {
            match observe.as_mut() {
                Some(f) => f(k, v),
                None => Ok(()),
            }
        };

        let h = self.norm(&x.contiguous()?, &blk.input_layernorm)?;
        see(LinearKind::Q, &h)?;
        see(LinearKind::K, &h)?;
        see(LinearKind::V, &h)?;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let q = blk
            .linear(LinearKind::Q)
            .forward(&h)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?;
        let k = blk
            .linear(LinearKind::K)
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let v = blk
            .linear(LinearKind::V)
            .forward(&h)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let (q, k) = match at {
            At::Offset(offset) => (self.rope.apply(&q, offset)?, self.rope.apply(&k, offset)?),
            At::Packed(p) => (
                self.rope.apply_at(&q, &p.positions)?,
                self.rope.apply_at(&k, &p.positions)?,
            ),
        };
        let v = v.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let one_step = t == 1
            && b == 1
            && matches!(at, At::Offset(_))
            && !self.differentiable
            && self.device.is_cpu()
            && q.dtype() == DType::F32;
        let (k, v) = match cache {
            Some(e) => {
                e.append(&k, &v)?;
                if one_step {
                    // KV-cached decode on the CPU: one fused loop over the cache.
                    let y = decode_attention(&q, e, nh, scale)?;
                    return self.block_tail(blk, x, &y, &mut see);
                }
                e.filled()?
            }
            None => (k, v),
        };
        let total = k.dims()[2];
        if total == t && t > 1 && matches!(at, At::Offset(_)) {
            // A block's own tokens under the causal mask (perplexity windows, scoring,
            // calibration, a prompt's prefill, training): one fused pass on the CPU in f32.
            let y = match self.differentiable {
                false => fused::causal_attention(&q, &k, &v, scale)?,
                true => train_ops::causal_attention(&q, &k, &v, scale)?
                    .map(|y| y.transpose(1, 2)?.reshape((b, t, nh * hd)))
                    .transpose()?,
            };
            if let Some(y) = y {
                return self.block_tail(blk, x, &y, &mut see);
            }
        }
        let k = repeat_kv(k, nh / nkv)?.contiguous()?;
        let v = repeat_kv(v, nh / nkv)?.contiguous()?;
        let mut att = (q.matmul(&k.t()?)? * scale)?;
        match at {
            At::Offset(_) if t > 1 => {
                let mask = causal_mask(t, total - t, att.dtype(), &self.device)?;
                att = att.broadcast_add(&mask)?;
            }
            At::Offset(_) => {}
            At::Packed(p) => att = att.broadcast_add(&p.mask.to_dtype(att.dtype())?)?,
        }
        let att = self.softmax(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.block_tail(blk, x, &y, &mut see)
    }

    /// The rest of a block after attention: output projection and residual, then the MLP.
    fn block_tail(
        &self,
        blk: &Block,
        x: &Tensor,
        y: &Tensor,
        see: &mut dyn FnMut(LinearKind, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let y = y.clone();
        see(LinearKind::O, &y)?;
        let x = (x + blk.linear(LinearKind::O).forward(&y)?)?;

        let h = self.norm(&x, &blk.post_attention_layernorm)?;
        see(LinearKind::Gate, &h)?;
        see(LinearKind::Up, &h)?;
        let g = blk.linear(LinearKind::Gate).forward(&h)?;
        let u = blk.linear(LinearKind::Up).forward(&h)?;
        let fused = match self.differentiable {
            false => fused::swiglu(&g, &u)?,
            true => train_ops::swiglu(&g, &u)?,
        };
        let a = match fused {
            Some(a) => a,
            None => (candle_nn::ops::silu(&g)? * u)?,
        };
        see(LinearKind::Down, &a)?;
        x + blk.linear(LinearKind::Down).forward(&a)?
    }

    /// Where block-by-block passes keep the hidden states between blocks: in host memory for an
    /// offloaded model (on a GPU the device then holds one block and one batch), else on the
    /// compute device.
    pub fn activations_home(&self) -> Device {
        match self.offload {
            Some(_) => Device::Cpu,
            None => self.device.clone(),
        }
    }

    /// Run `blk` on one batch kept at [`Llama::activations_home`]: moved to the device for the
    /// forward, its output moved back.
    pub fn forward_batch(
        &self,
        blk: &Block,
        x: &Tensor,
        observe: Option<Observer<'_>>,
    ) -> Result<Tensor> {
        let y = self.forward_block_with(blk, &x.to_device(&self.device)?, 0, None, observe)?;
        y.to_device(&self.activations_home())
    }

    /// Final norm and LM head: `[b, t, hidden]` → logits `[b, t, vocab]`.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm(&x.contiguous()?, &self.norm)?;
        match &self.lm_head {
            Some(l) => l.forward(&h),
            None => {
                let (b, t, d) = h.dims3()?;
                let h = h.reshape((b * t, d))?;
                let y = match crate::sparse::dense_gemv(&self.embed_tokens, &h)? {
                    Some(y) => y,
                    None => match crate::sparse::FrozenMatmul::apply(&self.embed_tokens, &h)? {
                        Some(y) => y,
                        None => h.matmul(&self.embed_tokens.t()?)?,
                    },
                };
                y.reshape((b, t, self.config.vocab_size))
            }
        }
    }

    /// `log p(targets[i])` at each position of the final hidden states `x` (`[1, n, hidden]`)
    /// without keeping the logits, where the head is the tied embedding on the CPU in f32
    /// (`fused::head_target_log_probs`, the same bits as [`Llama::head`] and a log-softmax);
    /// `None` elsewhere (an untied head, a GPU), and the caller goes through [`Llama::head`].
    pub fn head_log_probs(&self, x: &Tensor, targets: &[u32]) -> Result<Option<Vec<f64>>> {
        if self.lm_head.is_some() {
            return Ok(None);
        }
        let h = self.norm(&x.contiguous()?, &self.norm)?;
        let (b, t, d) = h.dims3()?;
        fused::head_target_log_probs(&h.reshape((b * t, d))?, &self.embed_tokens, targets)
    }

    /// Full forward of ids `[b, t]` at `offset`: logits `[b, t, vocab]`.
    pub fn forward(
        &self,
        ids: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for i in 0..self.blocks.len() {
            let entry = cache.as_deref_mut().map(|c| &mut c.blocks[i]);
            x = self.forward_block(i, &x, offset, entry, None)?;
        }
        if let Some(c) = cache {
            c.len = offset + ids.dims()[1];
        }
        self.head(&x)
    }

    /// Final hidden states of ids `[b, t]` (positions from 0, no cache), before the final norm
    /// and head: `[b, t, hidden]`. `head(hidden(ids))` is `forward(ids, 0, None)`.
    pub fn hidden(&self, ids: &Tensor) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for i in 0..self.blocks.len() {
            x = self.forward_block(i, &x, 0, None, None)?;
        }
        Ok(x)
    }

    /// Logits of the last position only, `[b, vocab]` (generation).
    pub fn forward_last(
        &self,
        ids: &Tensor,
        offset: usize,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let mut x = self.embed(ids)?;
        for i in 0..self.blocks.len() {
            let entry = cache.as_deref_mut().map(|c| &mut c.blocks[i]);
            x = self.forward_block(i, &x, offset, entry, None)?;
        }
        let t = ids.dims()[1];
        if let Some(c) = cache {
            c.len = offset + t;
        }
        let last = x.narrow(1, t - 1, 1)?;
        self.head(&last)?.squeeze(1)
    }

    /// Fraction of zero weights over all prunable linears (the 7·L matrices).
    pub fn linear_sparsity(&self) -> Result<f64> {
        let (mut zeros, mut total) = (0f64, 0f64);
        for i in 0..self.blocks.len() {
            for l in &self.block(i)?.linears {
                let n = l.elem_count() as f64;
                zeros += l.sparsity()? * n;
                total += n;
            }
        }
        Ok(zeros / total)
    }
}

/// Log-softmax over the vocabulary in f32 (used by perplexity).
pub fn log_softmax_f32(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
