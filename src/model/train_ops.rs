//! Fused CPU f32 operations with a backward pass, for the recomputation inside a LoRA training
//! step (README, "Quantize and recover"): RMS norm, the half-split rotary embedding, softmax over
//! the last dimension, the causal attention of a block's own tokens, SwiGLU, and the head's
//! cross-entropy. candle's fused kernels
//! for these have no backward, and composed from its tensor ops each became several elementwise
//! ops, each with its own buffer and its own backward step.
//!
//! Each is a candle custom op whose backward gives the gradient of its activations only: the
//! norm weights and rope tables are constants of the graph (LoRA trains the adapters alone).
//! Each function returns `None` where it does not apply (another device or dtype, another
//! layout), and the caller composes candle's ops. Work is split over rows, each row computed by
//! one thread in a fixed order, so the bits do not depend on the thread count.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::fused::{self, AttnShape};

/// Whether `t` is a CPU f32 tensor.
fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The values of a contiguous CPU f32 storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: input is {:?}, not f32", s.dtype());
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: input is not contiguous");
    };
    Ok(&v[a..b])
}

/// Run `f` on the values of a CPU f32 tensor (made contiguous first), outside the graph.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.detach().contiguous()?;
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        candle_core::bail!("training op: the tensor is not on the CPU");
    };
    Ok(f(slice(s, l, "training op")?))
}

/// Rows per parallel task.
const ROWS: usize = 16;

/// `out` row by row (rows of `d`), `f(row index, row)`, rows in parallel.
fn rows_into(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    out.par_chunks_mut(d * ROWS)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (r, row) in chunk.chunks_mut(d).enumerate() {
                f(c * ROWS + r, row);
            }
        });
}

// ---------------------------------------------------------------------------------------------
// RMS norm.

/// `x / √(mean(x²) + eps) · w` over the last dimension (Zhang & Sennrich, 2019), as candle's
/// `rms_norm_slow` composes it; `w` gets no gradient.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let d = w.dims1()?;
    if !applies(x) || !applies(w) || w.track_op() || x.dims().last() != Some(&d) {
        return Ok(None);
    }
    let op = RmsNorm {
        w: w.to_vec1::<f32>()?,
        eps,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

struct RmsNorm {
    w: Vec<f32>,
    eps: f64,
}

impl RmsNorm {
    /// `√(mean(x²) + eps)` of one row.
    fn rms(&self, x: &[f32]) -> f32 {
        let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        (ss / x.len() as f64 + self.eps).sqrt() as f32
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "train-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = self.w.len();
        let mut y = vec![0f32; x.len()];
        rows_into(&mut y, d, |r, y| {
            let x = &x[r * d..][..d];
            let s = self.rms(x);
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(&self.w) {
                *y = x / s * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    /// With `g = dy · w`: `dx = (g − x · Σ(g·x) / (d · s²)) / s`.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = self.w.len();
        let dx = with_values(arg, |x| {
            with_values(grad, |dy| {
                let mut dx = vec![0f32; x.len()];
                rows_into(&mut dx, d, |r, dx| {
                    let (x, dy) = (&x[r * d..][..d], &dy[r * d..][..d]);
                    let s = self.rms(x) as f64;
                    let dot: f64 = (x.iter().zip(dy).zip(&self.w))
                        .map(|((&x, &g), &w)| x as f64 * g as f64 * w as f64)
                        .sum();
                    let k = (dot / (d as f64 * s * s)) as f32;
                    let s = s as f32;
                    for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(dy).zip(&self.w) {
                        *dx = (g * w - x * k) / s;
                    }
                });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), &Device::Cpu)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding.

/// The half-split rotary embedding (Su et al., 2021; candle's `rope_slow`) of `x`
/// `[b, heads, t, d]` with tables `cos`, `sin` `[t, d/2]`: `(x₁, x₂) ↦ (x₁c − x₂s, x₂c + x₁s)`.
/// Its backward is the rotation by the opposite angle. `None` for other shapes (packed
/// sequences' per-row tables).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    let (_, _, t, d) = x.dims4()?;
    let fits = d % 2 == 0 && cos.dims() == [t, d / 2] && sin.dims() == cos.dims();
    if !fits || !applies(x) || !applies(cos) || !applies(sin) {
        return Ok(None);
    }
    let op = Rope {
        cos: cos.flatten_all()?.to_vec1::<f32>()?,
        sin: sin.flatten_all()?.to_vec1::<f32>()?,
        t,
        d,
    };
    Ok(Some(x.contiguous()?.apply_op1(op)?))
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    t: usize,
    d: usize,
}

impl Rope {
    /// Rotate every row of `x` by its position's angle, times `sign` (−1: the inverse).
    fn rotate(&self, x: &[f32], sign: f32) -> Vec<f32> {
        let (d, half) = (self.d, self.d / 2);
        let mut y = vec![0f32; x.len()];
        rows_into(&mut y, d, |r, y| {
            let p = (r % self.t) * half;
            let (c, s) = (&self.cos[p..][..half], &self.sin[p..][..half]);
            let (x1, x2) = x[r * d..][..d].split_at(half);
            let (y1, y2) = y.split_at_mut(half);
            for i in 0..half {
                let s = sign * s[i];
                y1[i] = x1[i] * c[i] - x2[i] * s;
                y2[i] = x2[i] * c[i] + x1[i] * s;
            }
        });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "train-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.rotate(slice(s, l, self.name())?, 1.0);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values(grad, |g| self.rotate(g, -1.0))?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), &Device::Cpu)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Softmax.

/// Softmax over the last dimension; backward `dx = y · (dy − Σ dy·y)`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Option<Tensor>> {
    if !applies(x) || x.rank() == 0 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(Softmax)?))
}

struct Softmax;

/// `y ← softmax(y)` (one row).
fn softmax_in_place(y: &mut [f32]) {
    let max = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for y in y.iter_mut() {
        *y = (*y - max).exp();
        sum += *y;
    }
    y.iter_mut().for_each(|y| *y /= sum);
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "train-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        rows_into(&mut y, d, |r, y| {
            y.copy_from_slice(&x[r * d..][..d]);
            softmax_in_place(y);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let d = arg.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_values(res, |y| {
            with_values(grad, |g| {
                let mut dx = vec![0f32; y.len()];
                rows_into(&mut dx, d, |r, dx| {
                    let (y, g) = (&y[r * d..][..d], &g[r * d..][..d]);
                    let dot: f32 = y.iter().zip(g).map(|(y, g)| y * g).sum();
                    for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                        *dx = y * (g - dot);
                    }
                });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), &Device::Cpu)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Causal attention.

/// Softmax attention of a block's `t` tokens over themselves under the causal mask:
/// `q` `[b, heads, t, d]`, `k`, `v` `[b, kv_heads, t, d]` → `[b, heads, t, d]`. The forward is
/// the inference kernel ([`fused::attention_into`]); the backward recomputes the probabilities
/// `P` and, per key/value head with its query heads stacked (no repeated keys), gives
/// `dV = Pᵀ dO`, `dS = P ⊙ (dO Vᵀ − rowsum(dO ⊙ O))`, `dQ = scale · dS K`, `dK = scale · dSᵀ Q`
/// (Dao et al., 2022, FlashAttention's backward, unblocked).
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !fused::attention_applies(q, k, v)? {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(Some(q.apply_op3(&k, &v, Attention { scale })?))
}

struct Attention {
    scale: f64,
}

impl Attention {
    fn shape(&self, q: &Layout, k: &Layout) -> Result<AttnShape> {
        let (b, nh, t, hd) = q.shape().dims4()?;
        let nkv = k.shape().dims4()?.1;
        Ok(AttnShape {
            batch: b,
            heads: nh,
            kv_heads: nkv,
            tokens: t,
            head_dim: hd,
            scale: self.scale as f32,
        })
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "train-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.shape(ql, kl)?;
        let (q, k, v) = (
            slice(qs, ql, self.name())?,
            slice(ks, kl, self.name())?,
            slice(vs, vl, self.name())?,
        );
        let mut out = vec![0f32; q.len()];
        fused::attention_into(s, q, k, v, &mut out);
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, nh, t, hd) = q.dims4()?;
        let nkv = k.dims()[1];
        // The query heads that share a key/value head, stacked: `[b, kv_heads, rep · t, d]`.
        let stacked = (b, nkv, nh / nkv * t, hd);
        let plain = |x: &Tensor| x.detach().contiguous();
        let (q, k, v) = (plain(q)?.reshape(stacked)?, plain(k)?, plain(v)?);
        let (o, dout) = (
            plain(res)?.reshape(stacked)?,
            plain(grad)?.reshape(stacked)?,
        );
        let scores = q.matmul(&k.t()?)?;
        let sdims = scores.dims().to_vec();
        let p = with_values(&scores, |s| causal_probs(s, t, self.scale as f32))?;
        let p = Tensor::from_vec(p, sdims.as_slice(), &Device::Cpu)?;
        let dv = p.t()?.matmul(&dout)?;
        let dp = dout.matmul(&v.t()?)?;
        let ds = with_values(&p, |p| {
            with_values(&dp, |dp| {
                with_values(&o, |o| {
                    with_values(&dout, |dout| {
                        score_grads(p, dp, o, dout, t, hd, self.scale as f32)
                    })
                })
            })
        })????;
        let ds = Tensor::from_vec(ds, sdims.as_slice(), &Device::Cpu)?;
        let dq = ds.matmul(&k)?.reshape((b, nh, t, hd))?;
        let dk = ds.t()?.matmul(&q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal softmax probabilities from raw scores `[.., rows, t]` (row `r` is query `r mod t`,
/// which sees keys `0..=r mod t`): `softmax(scale · s)`, zero past the query.
fn causal_probs(s: &[f32], t: usize, scale: f32) -> Vec<f32> {
    let mut p = vec![0f32; s.len()];
    rows_into(&mut p, t, |r, p| {
        let n = r % t + 1;
        for (p, &s) in p[..n].iter_mut().zip(&s[r * t..][..n]) {
            *p = s * scale;
        }
        softmax_in_place(&mut p[..n]);
    });
    p
}

/// `dS = scale · P ⊙ (dP − rowsum(dO ⊙ O))` for rows of `t` scores and `hd` outputs (the
/// scale of the scores folded in, so that `dQ = dS K` and `dK = dSᵀ Q`).
fn score_grads(
    p: &[f32],
    dp: &[f32],
    o: &[f32],
    dout: &[f32],
    t: usize,
    hd: usize,
    scale: f32,
) -> Vec<f32> {
    let mut ds = vec![0f32; p.len()];
    rows_into(&mut ds, t, |r, ds| {
        let n = r % t + 1;
        let (o, dout) = (&o[r * hd..][..hd], &dout[r * hd..][..hd]);
        let delta: f32 = o.iter().zip(dout).map(|(a, b)| a * b).sum();
        let (p, dp) = (&p[r * t..][..n], &dp[r * t..][..n]);
        for ((ds, &p), &dp) in ds[..n].iter_mut().zip(p).zip(dp) {
            *ds = scale * p * (dp - delta);
        }
    });
    ds
}

// ---------------------------------------------------------------------------------------------
// SwiGLU.

/// `silu(g) · u` (Shazeer, 2020) for `g`, `u` of one shape; backward
/// `dg = dy · u · σ(g) (1 + g (1 − σ(g)))`, `du = dy · g σ(g)`.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if g.dims() != u.dims() || !applies(g) || !applies(u) {
        return Ok(None);
    }
    Ok(Some(g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)?))
}

struct SwiGlu;

/// Elements per parallel SwiGLU task.
const SWIGLU_CHUNK: usize = 16 * 1024;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "train-swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(gs, gl, self.name())?, slice(us, ul, self.name())?);
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(SWIGLU_CHUNK)
            .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)))
            .for_each(|(y, (g, u))| fused::swiglu_slice(g, u, y));
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_values(g, |g| {
            with_values(u, |u| {
                with_values(grad, |dy| {
                    let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
                    dg.par_chunks_mut(SWIGLU_CHUNK)
                        .zip(du.par_chunks_mut(SWIGLU_CHUNK))
                        .enumerate()
                        .for_each(|(c, (dg, du))| {
                            let at = c * SWIGLU_CHUNK;
                            for (i, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate() {
                                let (g, u, dy) = (g[at + i], u[at + i], dy[at + i]);
                                let s = 1.0 / (1.0 + (-g).exp());
                                *dg = dy * u * s * (1.0 + g * (1.0 - s));
                                *du = dy * g * s;
                            }
                        });
                    (dg, du)
                })
            })
        })???;
        let shape = g.shape();
        Ok((
            Some(Tensor::from_vec(dg, shape, &Device::Cpu)?),
            Some(Tensor::from_vec(du, shape, &Device::Cpu)?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

/// Mean next-token cross-entropy of `logits` `[rows, vocab]` against `targets` (`rows` ids):
/// `mean_r(log Σ exp(x_r) − x_r[t_r])`, as candle's `cross_entropy` composes it (a log-softmax,
/// a gather, a mean; each a pass over the whole `rows × vocab` block, and as many in the
/// backward). Backward: `(softmax(x_r) − onehot(t_r)) · g / rows`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Option<Tensor>> {
    let (rows, vocab) = logits.dims2()?;
    if !applies(logits) || targets.dims() != [rows] || rows == 0 || vocab == 0 {
        return Ok(None);
    }
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target id {bad} is outside the vocabulary of {vocab}");
    }
    Ok(Some(
        logits.contiguous()?.apply_op1(CrossEntropy { targets })?,
    ))
}

struct CrossEntropy {
    targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "train-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let vocab = l.dims()[1];
        let sum: f64 = x
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .map(|(row, &t)| -fused::row_log_prob(row, t as usize))
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        let mean = (sum / self.targets.len() as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let vocab = arg.dims()[1];
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / self.targets.len() as f32;
        let dx = with_values(arg, |x| {
            let mut dx = vec![0f32; x.len()];
            dx.par_chunks_mut(vocab)
                .zip(x.par_chunks(vocab))
                .zip(self.targets.par_iter())
                .for_each(|((dx, x), &t)| {
                    dx.copy_from_slice(x);
                    softmax_in_place(dx);
                    dx[t as usize] -= 1.0;
                    dx.iter_mut().for_each(|d| *d *= g);
                });
            dx
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), &Device::Cpu)?))
    }
}

#[cfg(test)]
mod tests;
