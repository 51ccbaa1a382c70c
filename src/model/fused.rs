//! Fused CPU f32 operations for inference passes (perplexity windows, zero-shot rows,
//! calibration): the causal attention of a block's own tokens, SwiGLU, and the log-probability
//! of each target token. Composed from candle's tensor ops these were about half of an
//! evaluation's time once the linears ran sparse: `repeat_kv` and contiguous copies, a full
//! `t × t` score matrix whose upper half the causal mask then throws away, a log-softmax over
//! the whole vocabulary materialised three times, and a scalar `expf` per element.
//!
//! Each function has an AVX-512 path chosen at run time and a portable one. Work is split
//! over rows or heads, each output computed by one thread in a fixed order, so the bits do not
//! depend on the thread count. Nothing here records gradients: LoRA training's backward keeps
//! candle's composed ops (see `Llama::differentiable`).

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::sparse::kernels::{isa, Isa};

/// Whether `t` is a CPU f32 tensor (what these kernels run on). Their results record no
/// gradient even when an input does (a LoRA adapter's output): callers use them only where none
/// is needed (evaluation, and the forward of checkpointed training, which recomputes each block
/// with candle's ops for the backward).
fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// Run `f` on the data of a contiguous CPU f32 tensor (callers check [`applies`] and make the
/// tensor contiguous first).
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (s, l) = t.storage_and_layout();
    let candle_core::Storage::Cpu(s) = &*s else {
        candle_core::bail!("fused op: the tensor is not on the CPU");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("fused op: the tensor is not contiguous");
    };
    Ok(f(&s.as_slice::<f32>()?[a..b]))
}

// ---------------------------------------------------------------------------------------------
// Log-probabilities of targets.

/// `log softmax(logits[r])[targets[r]]` for each row of `logits` `[.., rows, vocab]` (a CPU f32
/// tensor), in f64: one pass for the maximum and one for `Σ exp(x − max)` per row, rows in
/// parallel. `None` where the tensor is not CPU f32 (the caller uses candle's log-softmax).
pub fn target_log_probs(logits: &Tensor, targets: &[u32]) -> Result<Option<Vec<f64>>> {
    let vocab = logits.dims().last().copied().unwrap_or(0);
    if vocab == 0 || logits.elem_count() != targets.len() * vocab {
        candle_core::bail!(
            "target log-probabilities: {} targets for logits {:?}",
            targets.len(),
            logits.dims()
        );
    }
    check_targets(targets, vocab)?;
    if !applies(logits) {
        return Ok(None);
    }
    let logits = logits.contiguous()?;
    with_data(&logits, |x| {
        Some(
            x.par_chunks(vocab)
                .zip(targets.par_iter())
                .map(|(row, &t)| row_log_prob(row, t as usize))
                .collect(),
        )
    })
}

/// `log p(targets[r])` for each row of the final hidden states `h` (`[n, d]`, after the norm)
/// through a dense head `w` (`[vocab, d]`, the tied embedding): `None` where either is not a
/// CPU f32 tensor (the caller computes the logits with `Llama::head`).
///
/// The logits go into a buffer each thread keeps between calls. A fresh `[n, vocab]` tensor
/// per window (50 MB for the demo's 255 positions, above glibc's largest mmap threshold) was
/// mapped, faulted in page by page and unmapped every time: about 7 % of a sparse evaluation
/// on Zen 5. The product is the same `gemm` call candle's CPU matmul makes for `h · wᵀ` (same
/// strides, α, β and thread count), so the logits, and the log-probabilities, keep their bits
/// (`head_log_probs_equal_the_matmul_path` checks this).
pub fn head_target_log_probs(h: &Tensor, w: &Tensor, targets: &[u32]) -> Result<Option<Vec<f64>>> {
    let (n, d) = h.dims2()?;
    let (vocab, wd) = w.dims2()?;
    if wd != d || targets.len() != n {
        candle_core::bail!(
            "head log-probabilities: hidden {:?}, head {:?}, {} targets",
            h.dims(),
            w.dims(),
            targets.len()
        );
    }
    check_targets(targets, vocab)?;
    if !applies(h) || !applies(w) || n == 0 {
        return Ok(None);
    }
    let (h, w) = (h.contiguous()?, w.contiguous()?);
    let lp = with_data(&h, |hv| {
        with_data(&w, |wv| {
            LOGITS.with_borrow_mut(|buf| {
                if buf.len() < n * vocab {
                    *buf = vec![0f32; n * vocab];
                }
                let logits = &mut buf[..n * vocab];
                let threads = candle_core::utils::get_num_threads();
                let parallelism = match threads {
                    0 | 1 => gemm::Parallelism::None,
                    t => gemm::Parallelism::Rayon(t),
                };
                // SAFETY: `logits` holds `n × vocab` floats written with row stride `vocab`;
                // `hv` is `[n, d]` row-major and `wv` `[vocab, d]` row-major, read as `wᵀ`
                // (`[d, vocab]`: row stride 1, column stride `d`); with `read_dst` false the
                // destination is only written. The arguments are those of candle's matmul.
                unsafe {
                    gemm::gemm(
                        n,
                        vocab,
                        d,
                        logits.as_mut_ptr(),
                        1,
                        vocab as isize,
                        false,
                        hv.as_ptr(),
                        1,
                        d as isize,
                        wv.as_ptr(),
                        d as isize,
                        1,
                        0f32,
                        1f32,
                        false,
                        false,
                        false,
                        parallelism,
                    )
                };
                logits
                    .par_chunks(vocab)
                    .zip(targets.par_iter())
                    .map(|(row, &t)| row_log_prob(row, t as usize))
                    .collect()
            })
        })
    })??;
    Ok(Some(lp))
}

/// Every target id is inside the vocabulary.
fn check_targets(targets: &[u32], vocab: usize) -> Result<()> {
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("target id {bad} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

thread_local! {
    /// [`head_target_log_probs`]'s logits, kept between calls (grown, never shrunk).
    static LOGITS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `log softmax(row)[t]`.
pub fn row_log_prob(row: &[f32], t: usize) -> f64 {
    let (max, sum) = match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time.
        Isa::Avx512 => unsafe { avx512::max_and_sum_exp(row) },
        _ => max_and_sum_exp_portable(row),
    };
    (row[t] - max) as f64 - sum.ln()
}

/// The row's maximum and `Σ exp(x − max)` (the sum in f64).
fn max_and_sum_exp_portable(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
    (max, sum)
}

// ---------------------------------------------------------------------------------------------
// SwiGLU.

/// `silu(g) · u = g / (1 + exp(−g)) · u` for CPU f32 tensors of one shape; `None` where they
/// are not (the caller composes candle's ops).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Option<Tensor>> {
    if g.dims() != u.dims() || !applies(g) || !applies(u) {
        return Ok(None);
    }
    let (gt, ut) = (g.contiguous()?, u.contiguous()?);
    let y = with_data(&gt, |g| {
        with_data(&ut, |u| {
            let mut y = vec![0f32; g.len()];
            if g.len() <= SWIGLU_CHUNK {
                // One task: handing it to rayon would only wait for a worker (decode steps).
                swiglu_slice(g, u, &mut y);
                return y;
            }
            y.par_chunks_mut(SWIGLU_CHUNK)
                .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)))
                .for_each(|(y, (g, u))| swiglu_slice(g, u, y));
            y
        })
    })??;
    Ok(Some(Tensor::from_vec(y, g.dims(), &Device::Cpu)?))
}

/// Elements per parallel SwiGLU task (a 256-token window of the demo's 1536-wide MLP is 24 of
/// them).
const SWIGLU_CHUNK: usize = 16 * 1024;

/// `y = silu(g) · u` elementwise over equal-length slices.
pub fn swiglu_slice(g: &[f32], u: &[f32], y: &mut [f32]) {
    assert!(g.len() == u.len() && g.len() == y.len(), "swiglu: lengths");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time; the lengths are equal.
        Isa::Avx512 => unsafe { avx512::swiglu(g, u, y) },
        _ => {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = g / (1.0 + (-g).exp()) * u;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Causal attention.

/// The shape of a causal attention over a block's own tokens.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads / kv_heads` query heads share one).
    pub kv_heads: usize,
    pub tokens: usize,
    pub head_dim: usize,
    /// `1/√head_dim`.
    pub scale: f32,
}

/// Whether the fused attention runs on these inputs: CPU f32, `q` `[b, heads, t, d]`, `k` and
/// `v` `[b, kv_heads, t, d]` with `kv_heads` dividing `heads`.
pub(crate) fn attention_applies(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<bool> {
    let (b, nh, t, hd) = q.dims4()?;
    let (_, nkv, _, _) = k.dims4()?;
    let fits = nkv > 0 && nh % nkv == 0 && k.dims() == [b, nkv, t, hd] && v.dims() == k.dims();
    Ok(fits && applies(q) && applies(k) && applies(v))
}

/// Softmax attention of `t` tokens over themselves with the causal mask (query `i` sees keys
/// `0..=i`): `q` `[b, heads, t, d]`, `k`, `v` `[b, kv_heads, t, d]` (CPU f32) → `[b, t, heads·d]`.
/// The masked half of the scores is never computed. `None` where the tensors are not CPU f32.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !attention_applies(q, k, v)? {
        return Ok(None);
    }
    let (b, nh, t, hd) = q.dims4()?;
    let nkv = k.dims4()?.1;
    let shape = AttnShape {
        batch: b,
        heads: nh,
        kv_heads: nkv,
        tokens: t,
        head_dim: hd,
        scale: scale as f32,
    };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let y = with_data(&q, |q| {
        with_data(&k, |k| {
            with_data(&v, |v| {
                let mut out = vec![0f32; q.len()];
                attention_into(shape, q, k, v, &mut out);
                out
            })
        })
    })???;
    Ok(Some(
        Tensor::from_vec(y, (b, nh, t, hd), &Device::Cpu)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?,
    ))
}

/// [`causal_attention`] on slices: `out` `[b, heads, t, d]`. One task per (batch, head).
pub fn attention_into(s: AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    attention_with(isa(), s, q, k, v, out)
}

/// [`attention_into`] with a given instruction set (tests compare the two paths).
pub fn attention_with(isa: Isa, s: AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let (t, hd) = (s.tokens, s.head_dim);
    let per_head = t * hd;
    assert_eq!(q.len(), s.batch * s.heads * per_head, "attention: q");
    assert_eq!(k.len(), s.batch * s.kv_heads * per_head, "attention: k");
    assert_eq!(v.len(), k.len(), "attention: v");
    assert_eq!(out.len(), q.len(), "attention: out");
    let n_rep = s.heads / s.kv_heads;
    out.par_chunks_mut(per_head)
        .enumerate()
        .for_each(|(bh, out)| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let kv = (b * s.kv_heads + h / n_rep) * per_head;
            let (q, k, v) = (
                &q[bh * per_head..][..per_head],
                &k[kv..][..per_head],
                &v[kv..][..per_head],
            );
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx512f was detected at run time (or a test asked for it on a machine
                // that has it); the slices are `t × hd` as asserted above.
                Isa::Avx512 if hd % 16 == 0 => unsafe { avx512::head(s, q, k, v, out) },
                _ => head_portable(s, q, k, v, out),
            }
        });
}

/// One head: `out[i] = Σ_{j ≤ i} softmax_j(scale · q_i·k_j) v_j`.
fn head_portable(s: AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let hd = s.head_dim;
    let mut p = vec![0f32; s.tokens];
    for i in 0..s.tokens {
        let qi = &q[i * hd..][..hd];
        for (j, p) in p[..=i].iter_mut().enumerate() {
            let kj = &k[j * hd..][..hd];
            *p = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * s.scale;
        }
        let max = p[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for p in p[..=i].iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        let o = &mut out[i * hd..][..hd];
        o.fill(0.0);
        for (j, &p) in p[..=i].iter().enumerate() {
            for (o, &x) in o.iter_mut().zip(&v[j * hd..][..hd]) {
                *o += p * x;
            }
        }
        o.iter_mut().for_each(|o| *o /= sum);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::AttnShape;

    /// `exp(x)` per lane, Cephes' single-precision polynomial: `x = n ln 2 + r` with
    /// `|r| ≤ ln 2 / 2`, `exp(r)` by a degree-6 polynomial, then `2ⁿ` applied exactly with
    /// `vscalefps` (which also gives 0 for very negative inputs, so −∞ maps to 0). Within
    /// 2 ulp of the exact value on [−87, 88].
    ///
    /// # Safety
    /// The CPU supports avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.72));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x − n ln 2, with ln 2 split in two so that n · C1 is exact.
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(p, n)
    }

    /// Mask of the first `n` lanes (`n ≤ 16`).
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// The maximum of `row` and `Σ exp(x − max)`, the sum in four 16-lane f32 accumulators
    /// reduced in f64.
    ///
    /// # Safety
    /// The CPU supports avx512f.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max_and_sum_exp(row: &[f32]) -> (f32, f64) {
        let n = row.len();
        let p = row.as_ptr();
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = [ninf; 4];
        let mut i = 0;
        // SAFETY (both loops): full loads read `[i, i + 16) ⊂ [0, n)`; the tail load is masked.
        while i + 64 <= n {
            for (a, m) in m.iter_mut().enumerate() {
                *m = _mm512_max_ps(*m, _mm512_loadu_ps(p.add(i + 16 * a)));
            }
            i += 64;
        }
        while i < n {
            let k = first((n - i).min(16));
            m[0] = _mm512_max_ps(m[0], _mm512_mask_loadu_ps(ninf, k, p.add(i)));
            i += 16;
        }
        let m = _mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3]));
        let max = _mm512_reduce_max_ps(m);
        let mx = _mm512_set1_ps(max);
        let mut s = [_mm512_setzero_ps(); 4];
        i = 0;
        while i + 64 <= n {
            for (a, s) in s.iter_mut().enumerate() {
                let x = _mm512_loadu_ps(p.add(i + 16 * a));
                *s = _mm512_add_ps(*s, exp(_mm512_sub_ps(x, mx)));
            }
            i += 64;
        }
        while i < n {
            let k = first((n - i).min(16));
            let x = _mm512_mask_loadu_ps(ninf, k, p.add(i));
            s[0] = _mm512_add_ps(s[0], exp(_mm512_sub_ps(x, mx)));
            i += 16;
        }
        let mut lanes = [0f32; 64];
        for (a, s) in s.iter().enumerate() {
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * a), *s);
        }
        (max, lanes.iter().map(|&x| x as f64).sum())
    }

    /// `y = g / (1 + exp(−g)) · u`.
    ///
    /// # Safety
    /// The CPU supports avx512f; the three slices have the same length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu(g: &[f32], u: &[f32], y: &mut [f32]) {
        let n = g.len();
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        // SAFETY: every access covers `[i, i + 16) ∩ [0, n)` through the lane mask.
        while i < n {
            let k = first((n - i).min(16));
            let gv = _mm512_maskz_loadu_ps(k, g.as_ptr().add(i));
            let uv = _mm512_maskz_loadu_ps(k, u.as_ptr().add(i));
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let s = _mm512_div_ps(gv, _mm512_add_ps(one, e));
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(i), k, _mm512_mul_ps(s, uv));
            i += 16;
        }
    }

    /// Keys per score group: four 16-lane accumulators, independent FMA chains over the head
    /// dimension.
    const GROUP: usize = 64;

    /// One head of [`super::causal_attention`]. Keys are transposed to `kt[d][j]` (padded with
    /// zeros to a multiple of [`GROUP`]) so that 16 scores come from one FMA per dimension; a
    /// query's last group may score keys past it, which are then left out. Queries go in pairs
    /// ([`rows`]): each loaded key and value serves both, and the pair's independent FMA chains
    /// fill the FMA units that one query's chains left idle. Each query's arithmetic is that of
    /// a query alone, in the same order, so the pairing does not change a bit.
    ///
    /// # Safety
    /// The CPU supports avx512f; `q`, `k`, `v`, `out` are `t × hd` with `hd % 16 == 0`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn head(s: AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
        let (t, hd) = (s.tokens, s.head_dim);
        let tp = t.div_ceil(GROUP) * GROUP;
        let mut kt = vec![0f32; hd * tp];
        for j in 0..t {
            for d in 0..hd {
                kt[d * tp + j] = k[j * hd + d];
            }
        }
        let mut sc = [vec![0f32; tp], vec![0f32; tp]];
        let keys = Keys { kt: &kt, tp, v, hd };
        let mut i = 0;
        while i + 1 < t {
            rows::<2>(s, &keys, q, i, &mut sc, out);
            i += 2;
        }
        if i < t {
            rows::<1>(s, &keys, q, i, &mut sc, out);
        }
    }

    /// A head's keys (transposed, `tp` per dimension) and values (`[t, hd]`).
    struct Keys<'a> {
        kt: &'a [f32],
        tp: usize,
        v: &'a [f32],
        hd: usize,
    }

    /// Queries `i0..i0 + N` of one head (`N` is 1 or 2): query `i` attends to keys `0..=i`.
    ///
    /// # Safety
    /// avx512f; `i0 + N ≤ t`; `q` and `out` are `t × hd`, `sc` rows `tp` long (as in [`head`]).
    // The loops over `a` (a 16-lane chunk) and `r` (a query) index several arrays in step.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const N: usize>(
        s: AttnShape,
        keys: &Keys<'_>,
        q: &[f32],
        i0: usize,
        sc: &mut [Vec<f32>; 2],
        out: &mut [f32],
    ) {
        let (hd, tp) = (keys.hd, keys.tp);
        let n: [usize; N] = std::array::from_fn(|r| i0 + r + 1);
        // Scores of keys [0, groups · 64) for every query of the pass (the last query's
        // groups; an earlier query's extra scores are never read).
        // SAFETY: kt rows are `tp` long and `g + 64 ≤ tp`; `(i0 + r) · hd + d` is inside `q`.
        let scale = _mm512_set1_ps(s.scale);
        let mut g = 0;
        while g < n[N - 1] {
            let mut acc = [[_mm512_setzero_ps(); 4]; N];
            for d in 0..hd {
                let row = keys.kt.as_ptr().add(d * tp + g);
                let qd: [__m512; N] =
                    std::array::from_fn(|r| _mm512_set1_ps(*q.as_ptr().add((i0 + r) * hd + d)));
                for a in 0..4 {
                    let kv = _mm512_loadu_ps(row.add(16 * a));
                    for r in 0..N {
                        acc[r][a] = _mm512_fmadd_ps(qd[r], kv, acc[r][a]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (a, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(
                        sc[r].as_mut_ptr().add(g + 16 * a),
                        _mm512_mul_ps(*acc, scale),
                    );
                }
            }
            g += GROUP;
        }
        let inv: [__m512; N] = std::array::from_fn(|r| softmax(&mut sc[r], n[r]));
        // Weighted values, 64 dimensions at a time; even and odd keys in separate accumulators
        // so that eight FMA chains per query run side by side. The keys both queries attend to
        // go through together; then each query finishes its own keys as it would alone.
        // SAFETY: value rows are `hd` long; `c + 16 · a < hd` for the chunks used.
        let v = keys.v.as_ptr();
        let mut c = 0;
        while c < hd {
            let w = ((hd - c) / 16).min(4);
            let mut even = [[_mm512_setzero_ps(); 4]; N];
            let mut odd = [[_mm512_setzero_ps(); 4]; N];
            let mut j = 0;
            while j + 1 < n[0] {
                let (ve, vo) = (v.add(j * hd + c), v.add((j + 1) * hd + c));
                let pe: [__m512; N] = std::array::from_fn(|r| _mm512_set1_ps(sc[r][j]));
                let po: [__m512; N] = std::array::from_fn(|r| _mm512_set1_ps(sc[r][j + 1]));
                for a in 0..w {
                    let (xe, xo) = (
                        _mm512_loadu_ps(ve.add(16 * a)),
                        _mm512_loadu_ps(vo.add(16 * a)),
                    );
                    for r in 0..N {
                        even[r][a] = _mm512_fmadd_ps(pe[r], xe, even[r][a]);
                        odd[r][a] = _mm512_fmadd_ps(po[r], xo, odd[r][a]);
                    }
                }
                j += 2;
            }
            for r in 0..N {
                let (even, odd) = (&mut even[r], &mut odd[r]);
                let mut j = j;
                while j + 1 < n[r] {
                    let (pe, po) = (_mm512_set1_ps(sc[r][j]), _mm512_set1_ps(sc[r][j + 1]));
                    let (ve, vo) = (v.add(j * hd + c), v.add((j + 1) * hd + c));
                    for a in 0..w {
                        even[a] = _mm512_fmadd_ps(pe, _mm512_loadu_ps(ve.add(16 * a)), even[a]);
                        odd[a] = _mm512_fmadd_ps(po, _mm512_loadu_ps(vo.add(16 * a)), odd[a]);
                    }
                    j += 2;
                }
                if j < n[r] {
                    let pe = _mm512_set1_ps(sc[r][j]);
                    let ve = v.add(j * hd + c);
                    for (a, e) in even.iter_mut().take(w).enumerate() {
                        *e = _mm512_fmadd_ps(pe, _mm512_loadu_ps(ve.add(16 * a)), *e);
                    }
                }
                let o = out.as_mut_ptr().add((i0 + r) * hd);
                for a in 0..w {
                    let y = _mm512_mul_ps(_mm512_add_ps(even[a], odd[a]), inv[r]);
                    _mm512_storeu_ps(o.add(c + 16 * a), y);
                }
            }
            c += 16 * w;
        }
    }

    /// Softmax numerators over scores `[0, n)` of `sc` in place (the rest of the last 16
    /// lanes are masked); returns `1 / Σ` broadcast.
    ///
    /// # Safety
    /// avx512f; `n ≤ sc.len()`.
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax(sc: &mut [f32], n: usize) -> __m512 {
        // SAFETY: loads and stores cover `[j, j + 16) ∩ [0, n)` through the mask; n ≤ tp.
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut m = ninf;
        let mut j = 0;
        while j < n {
            let k = first((n - j).min(16));
            m = _mm512_max_ps(m, _mm512_mask_loadu_ps(ninf, k, sc.as_ptr().add(j)));
            j += 16;
        }
        let mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        j = 0;
        while j < n {
            let k = first((n - j).min(16));
            let e = exp(_mm512_sub_ps(
                _mm512_mask_loadu_ps(ninf, k, sc.as_ptr().add(j)),
                mx,
            ));
            sum = _mm512_add_ps(sum, e);
            _mm512_mask_storeu_ps(sc.as_mut_ptr().add(j), k, e);
            j += 16;
        }
        _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64 as Rng;

    /// Uniform in `(−scale, scale)`.
    fn random(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    /// The plain definition in f64: `log softmax(row)[t]`.
    fn log_prob_f64(row: &[f32], t: usize) -> f64 {
        let max = row
            .iter()
            .map(|&x| x as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        row[t] as f64 - max - sum.ln()
    }

    #[test]
    fn log_probs_match_the_definition() {
        let mut rng = Rng::new(7);
        for &n in &[1usize, 15, 16, 17, 64, 100, 1000, 49_152] {
            for &scale in &[0.1f32, 10.0, 80.0] {
                let row = random(&mut rng, n, scale);
                for t in [0, n / 2, n - 1] {
                    let want = log_prob_f64(&row, t);
                    for got in [row_log_prob(&row, t), {
                        let (m, s) = max_and_sum_exp_portable(&row);
                        (row[t] - m) as f64 - s.ln()
                    }] {
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "n {n} scale {scale} t {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn target_log_probs_rows_and_errors() {
        let mut rng = Rng::new(3);
        let (rows, vocab) = (37, 301);
        let x = random(&mut rng, rows * vocab, 5.0);
        let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % vocab as u32).collect();
        let t = Tensor::from_vec(x.clone(), (1, rows, vocab), &Device::Cpu).unwrap();
        let got = target_log_probs(&t, &targets).unwrap().unwrap();
        for (r, &g) in got.iter().enumerate() {
            let want = log_prob_f64(&x[r * vocab..][..vocab], targets[r] as usize);
            assert!((g - want).abs() < 1e-5, "row {r}: {g} vs {want}");
        }
        assert!(target_log_probs(&t, &targets[1..]).is_err());
        let mut bad = targets.clone();
        bad[3] = vocab as u32;
        assert!(target_log_probs(&t, &bad).is_err());
        let bf = t.to_dtype(DType::BF16).unwrap();
        assert!(target_log_probs(&bf, &targets).unwrap().is_none());
    }

    /// The head's log-probabilities through the kept logits buffer have the bits of candle's
    /// `h · wᵀ` followed by [`target_log_probs`], for a first call, a smaller one (the buffer
    /// is reused, longer than needed) and a window-sized one (the product runs on threads).
    #[test]
    fn head_log_probs_equal_the_matmul_path() {
        let mut rng = Rng::new(5);
        let (vocab, d) = (1_003, 67);
        let w = random(&mut rng, vocab * d, 0.5);
        let w = Tensor::from_vec(w, (vocab, d), &Device::Cpu).unwrap();
        for n in [40usize, 3, 255] {
            let h = random(&mut rng, n * d, 2.0);
            let h = Tensor::from_vec(h, (n, d), &Device::Cpu).unwrap();
            let targets: Vec<u32> = (0..n as u32).map(|r| (r * 31 + 7) % vocab as u32).collect();
            let logits = h.matmul(&w.t().unwrap()).unwrap();
            let want = target_log_probs(&logits, &targets).unwrap().unwrap();
            let got = head_target_log_probs(&h, &w, &targets).unwrap().unwrap();
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{n} positions");
        }
        let h = Tensor::zeros((2, d), DType::F32, &Device::Cpu).unwrap();
        assert!(head_target_log_probs(&h, &w, &[1]).is_err());
        assert!(head_target_log_probs(&h, &w, &[1, vocab as u32]).is_err());
        let hb = h.to_dtype(DType::BF16).unwrap();
        assert!(head_target_log_probs(&hb, &w, &[1, 2]).unwrap().is_none());
    }

    #[test]
    fn swiglu_matches_the_definition() {
        let mut rng = Rng::new(11);
        for &n in &[1usize, 15, 16, 33, 1000, 40_000] {
            let g = random(&mut rng, n, 12.0);
            let u = random(&mut rng, n, 3.0);
            let gt = Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap();
            let ut = Tensor::from_vec(u.clone(), n, &Device::Cpu).unwrap();
            let y = swiglu(&gt, &ut).unwrap().unwrap().to_vec1::<f32>().unwrap();
            for i in 0..n {
                let (g, u) = (g[i] as f64, u[i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (y[i] as f64 - want).abs() <= 2e-6 * want.abs().max(1e-3),
                    "{i}: {} vs {want}",
                    y[i]
                );
            }
        }
    }

    /// The plain definition: full scores, the causal mask, softmax, weighted values (f64).
    fn attention_f64(s: AttnShape, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (t, hd) = (s.tokens, s.head_dim);
        let mut out = vec![0f64; q.len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kvh = b * s.kv_heads + h / (s.heads / s.kv_heads);
                let qh = &q[(b * s.heads + h) * t * hd..];
                let (kh, vh) = (&k[kvh * t * hd..], &v[kvh * t * hd..]);
                for i in 0..t {
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hd)
                                .map(|d| qh[i * hd + d] as f64 * kh[j * hd + d] as f64)
                                .sum::<f64>()
                                * s.scale as f64
                        })
                        .collect();
                    let max = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        out[((b * s.heads + h) * t + i) * hd + d] =
                            (0..=i).map(|j| e[j] * vh[j * hd + d] as f64).sum::<f64>() / sum;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition_on_both_paths() {
        let mut rng = Rng::new(5);
        // (batch, heads, kv heads, tokens, head dim): GQA, MHA, one token, lengths around the
        // 64-key groups, head dims that are and are not multiples of 16 or 64.
        for &(b, nh, nkv, t, hd) in &[
            (1, 1, 1, 1, 16),
            (2, 6, 2, 17, 64),
            (1, 4, 4, 64, 32),
            (1, 3, 1, 65, 80),
            (2, 2, 1, 130, 128),
            (1, 2, 2, 9, 12),
        ] {
            let s = AttnShape {
                batch: b,
                heads: nh,
                kv_heads: nkv,
                tokens: t,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            let q = random(&mut rng, b * nh * t * hd, 2.0);
            let k = random(&mut rng, b * nkv * t * hd, 2.0);
            let v = random(&mut rng, b * nkv * t * hd, 1.0);
            let want = attention_f64(s, &q, &k, &v);
            let mut paths = vec![Isa::Portable];
            if Isa::detect() == Isa::Avx512 {
                paths.push(Isa::Avx512);
            }
            for isa in paths {
                let mut out = vec![0f32; q.len()];
                attention_with(isa, s, &q, &k, &v, &mut out);
                for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() < 2e-5,
                        "{isa:?} {b}x{nh}/{nkv}x{t}x{hd} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn attention_bits_do_not_depend_on_the_thread_count() {
        let mut rng = Rng::new(9);
        let s = AttnShape {
            batch: 2,
            heads: 6,
            kv_heads: 2,
            tokens: 100,
            head_dim: 64,
            scale: 0.125,
        };
        let q = random(&mut rng, 2 * 6 * 100 * 64, 2.0);
        let k = random(&mut rng, 2 * 2 * 100 * 64, 2.0);
        let v = random(&mut rng, 2 * 2 * 100 * 64, 1.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut out = vec![0f32; q.len()];
            pool.install(|| attention_into(s, &q, &k, &v, &mut out));
            out
        };
        let one = run(1);
        assert!(one
            .iter()
            .zip(run(4))
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
