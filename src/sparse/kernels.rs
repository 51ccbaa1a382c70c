//! The two products of a compressed-row matrix `W` (`[rows, cols]`, u16 column indices, f32
//! values) with f32 inputs, each with an AVX-512 path chosen at run time and a portable one:
//!
//! - [`gemv`]: `y = W x` for one input (KV-cached decode). Memory-bound: the kernel moves
//!   6 bytes per non-zero instead of 4 per weight, and gathers `x[col]` from the L1-resident input.
//! - [`gemm`]: `Y = X Wᵀ` for many inputs (perplexity windows, scoring, calibration). Compute-bound:
//!   each non-zero `w[r, c]` is broadcast once against a tile of [`TILE`] tokens stored
//!   column-major (`xt[c][t]`), so the zeros cost nothing.
//!
//! Every output element is summed by one thread in a fixed order (the non-zeros of its row, in
//! column order), so the bits do not depend on the thread count.

use rayon::prelude::*;

/// Tokens per tile of [`gemm`]: four 16-lane AVX-512 registers per row.
pub const TILE: usize = 64;

/// Rows per parallel task in [`gemv`]; small matrices run on the calling thread.
const GEMV_ROWS_PER_TASK: usize = 64;
/// Below this many non-zeros a product is not worth a rayon dispatch.
const PARALLEL_MIN_NNZ: usize = 32 * 1024;

/// A borrowed compressed-row matrix: row `r`'s non-zeros are `values[row_ptr[r]..row_ptr[r+1]]`
/// at columns `cols[..]` (strictly increasing within a row).
#[derive(Clone, Copy)]
pub struct Csr<'a> {
    pub rows: usize,
    pub cols: usize,
    pub row_ptr: &'a [u32],
    pub col_idx: &'a [u16],
    pub values: &'a [f32],
}

impl Csr<'_> {
    fn row(&self, r: usize) -> (&[f32], &[u16]) {
        let (a, b) = (self.row_ptr[r] as usize, self.row_ptr[r + 1] as usize);
        (&self.values[a..b], &self.col_idx[a..b])
    }
}

/// Which instruction set the kernels use on this CPU (detected once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Portable,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
        }
        Isa::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Portable => "portable",
        }
    }
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(Isa::detect)
}

/// `y[r] = Σ_k W[r, k] x[k]` (`x.len() == cols`, `y.len() == rows`).
pub fn gemv(w: Csr<'_>, x: &[f32], y: &mut [f32]) {
    gemv_with(isa(), w, x, y)
}

/// [`gemv`] with a given instruction set (tests compare the two paths).
pub fn gemv_with(isa: Isa, w: Csr<'_>, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols, "gemv: input length");
    assert_eq!(y.len(), w.rows, "gemv: output length");
    let rows_into = |r0: usize, out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            let (v, c) = w.row(r0 + j);
            *o = row_dot(isa, v, c, x);
        }
    };
    if w.values.len() < PARALLEL_MIN_NNZ {
        rows_into(0, y);
    } else {
        y.par_chunks_mut(GEMV_ROWS_PER_TASK)
            .enumerate()
            .for_each(|(i, out)| rows_into(i * GEMV_ROWS_PER_TASK, out));
    }
}

fn row_dot(isa: Isa, v: &[f32], c: &[u16], x: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `Isa::detect` after the runtime check for
        // avx512f (or by tests on a CPU that passed the same check); every column index is
        // `< cols == x.len()` by construction of the matrix (checked in `SparseMatrix::new`).
        Isa::Avx512 => unsafe { avx512::row_dot(v, c, x) },
        _ => row_dot_portable(v, c, x),
    }
}

/// The plain definition with eight partial sums (a fixed order, vectorisable gathers aside).
fn row_dot_portable(v: &[f32], c: &[u16], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut vc = v.chunks_exact(8);
    let mut cc = c.chunks_exact(8);
    for (vs, cs) in (&mut vc).zip(&mut cc) {
        for l in 0..8 {
            acc[l] += vs[l] * x[cs[l] as usize];
        }
    }
    for (l, (&vv, &cv)) in vc.remainder().iter().zip(cc.remainder()).enumerate() {
        acc[l] += vv * x[cv as usize];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `y[t, r] = Σ_k X[t, k] W[r, k]` for `n` inputs (`x.len() == n·cols`, `y.len() == n·rows`).
pub fn gemm(w: Csr<'_>, x: &[f32], n: usize, y: &mut [f32]) {
    gemm_with(isa(), w, x, n, y)
}

/// [`gemm`] with a given instruction set.
pub fn gemm_with(isa: Isa, w: Csr<'_>, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "gemm: input length");
    assert_eq!(y.len(), n * w.rows, "gemm: output length");
    if n == 0 || w.rows == 0 {
        return;
    }
    let tiles = n.div_ceil(TILE);
    let threads = rayon::current_num_threads();
    if tiles >= threads || w.values.len() < PARALLEL_MIN_NNZ {
        // Enough tiles for every thread: one task per tile, which writes its own rows of `y`.
        let work = |(ti, out): (usize, &mut [f32])| {
            let t0 = ti * TILE;
            let nt = out.len() / w.rows;
            let xt = transpose_tile(&x[t0 * w.cols..(t0 + nt) * w.cols], w.cols);
            let mut acc = [0f32; TILE];
            for r in 0..w.rows {
                let (v, c) = w.row(r);
                row_tile(isa, v, c, &xt, &mut acc);
                for t in 0..nt {
                    out[t * w.rows + r] = acc[t];
                }
            }
        };
        if w.values.len() < PARALLEL_MIN_NNZ {
            y.chunks_mut(TILE * w.rows).enumerate().for_each(work);
        } else {
            y.par_chunks_mut(TILE * w.rows).enumerate().for_each(work);
        }
        return;
    }
    // Few tokens (a short prompt): split the rows instead, tile by tile. Each task fills the
    // tile's outputs of its rows in a row-major scratch, copied into `y` afterwards.
    let rows_per_task = w.rows.div_ceil(threads * 4).max(16);
    for ti in 0..tiles {
        let t0 = ti * TILE;
        let nt = (n - t0).min(TILE);
        let xt = transpose_tile(&x[t0 * w.cols..(t0 + nt) * w.cols], w.cols);
        let mut scratch = vec![0f32; w.rows * TILE];
        scratch
            .par_chunks_mut(rows_per_task * TILE)
            .enumerate()
            .for_each(|(i, out)| {
                let r0 = i * rows_per_task;
                for (j, acc) in out.chunks_exact_mut(TILE).enumerate() {
                    let (v, c) = w.row(r0 + j);
                    let acc: &mut [f32; TILE] = acc.try_into().expect("TILE-sized chunk");
                    row_tile(isa, v, c, &xt, acc);
                }
            });
        for t in 0..nt {
            let dst = &mut y[(t0 + t) * w.rows..(t0 + t + 1) * w.rows];
            for (r, d) in dst.iter_mut().enumerate() {
                *d = scratch[r * TILE + t];
            }
        }
    }
}

/// `x` (`[nt, cols]`, `nt ≤ TILE`) as `xt[c * TILE + t]`, zero-padded to a full tile.
fn transpose_tile(x: &[f32], cols: usize) -> Vec<f32> {
    let mut xt = vec![0f32; cols * TILE];
    for (t, row) in x.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            xt[c * TILE + t] = v;
        }
    }
    xt
}

fn row_tile(isa: Isa, v: &[f32], c: &[u16], xt: &[f32], acc: &mut [f32; TILE]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `row_dot`: avx512f was detected at run time, and every column index is
        // `< cols`, so `c * TILE + TILE ≤ xt.len()` (xt is `cols * TILE` long).
        Isa::Avx512 => unsafe { avx512::row_tile(v, c, xt, acc) },
        _ => row_tile_portable(v, c, xt, acc),
    }
}

fn row_tile_portable(v: &[f32], c: &[u16], xt: &[f32], acc: &mut [f32; TILE]) {
    *acc = [0f32; TILE];
    for (&w, &col) in v.iter().zip(c) {
        let src = &xt[col as usize * TILE..(col as usize + 1) * TILE];
        for (a, &s) in acc.iter_mut().zip(src) {
            *a += w * s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// `Σ v[k] x[c[k]]` with 16-lane gathers and two accumulators.
    ///
    /// # Safety
    /// The CPU supports avx512f, `v.len() == c.len()`, and every `c[k] < x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_dot(v: &[f32], c: &[u16], x: &[f32]) -> f32 {
        debug_assert_eq!(v.len(), c.len());
        let n = v.len();
        let (vp, cp, xp) = (v.as_ptr(), c.as_ptr(), x.as_ptr());
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let mut k = 0;
        // SAFETY (whole function): loads read `v[k..k+16]`/`c[k..k+16]` only while `k + 16 ≤ n`;
        // gathers read `x[c[k]]`, in bounds by the caller's contract.
        while k + 32 <= n {
            let i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(cp.add(k) as *const __m256i));
            let i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(cp.add(k + 16) as *const __m256i));
            let g0 = _mm512_i32gather_ps::<4>(i0, xp);
            let g1 = _mm512_i32gather_ps::<4>(i1, xp);
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, acc0);
            acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k + 16)), g1, acc1);
            k += 32;
        }
        if k + 16 <= n {
            let i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(cp.add(k) as *const __m256i));
            let g0 = _mm512_i32gather_ps::<4>(i0, xp);
            acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(vp.add(k)), g0, acc0);
            k += 16;
        }
        if k < n {
            // The tail: copy its indices into a zeroed buffer, then gather and load under a mask.
            let rem = n - k;
            let mut idx = [0u16; 16];
            idx[..rem].copy_from_slice(&c[k..]);
            let m: __mmask16 = ((1u32 << rem) - 1) as __mmask16;
            let i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256(idx.as_ptr() as *const __m256i));
            let g0 = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, i0, xp);
            acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vp.add(k)), g0, acc1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// `acc[t] = Σ v[k] xt[c[k] * TILE + t]` for the `TILE` tokens of a tile, four registers.
    ///
    /// # Safety
    /// The CPU supports avx512f, `v.len() == c.len()`, and `(c[k] + 1) * TILE ≤ xt.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_tile(v: &[f32], c: &[u16], xt: &[f32], acc: &mut [f32; TILE]) {
        let mut a0 = _mm512_setzero_ps();
        let mut a1 = _mm512_setzero_ps();
        let mut a2 = _mm512_setzero_ps();
        let mut a3 = _mm512_setzero_ps();
        let xp = xt.as_ptr();
        for (&w, &col) in v.iter().zip(c) {
            let b = _mm512_set1_ps(w);
            // SAFETY: `col * TILE + 64 ≤ xt.len()` by the caller's contract.
            let p = xp.add(col as usize * TILE);
            a0 = _mm512_fmadd_ps(b, _mm512_loadu_ps(p), a0);
            a1 = _mm512_fmadd_ps(b, _mm512_loadu_ps(p.add(16)), a1);
            a2 = _mm512_fmadd_ps(b, _mm512_loadu_ps(p.add(32)), a2);
            a3 = _mm512_fmadd_ps(b, _mm512_loadu_ps(p.add(48)), a3);
        }
        let o = acc.as_mut_ptr();
        // SAFETY: `acc` holds TILE = 64 floats.
        _mm512_storeu_ps(o, a0);
        _mm512_storeu_ps(o.add(16), a1);
        _mm512_storeu_ps(o.add(32), a2);
        _mm512_storeu_ps(o.add(48), a3);
    }
}
