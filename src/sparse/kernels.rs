//! The two products of a bitmask compressed-row matrix `W` (`[rows, cols]`, see [`Blocked`])
//! with f32 inputs, each with an AVX-512 path chosen at run time and a portable one:
//!
//! - [`gemv`]: `y = W x` for one input (KV-cached decode). Memory-bound: the kernel moves
//!   4 bytes per kept weight plus one bit per weight (0.33× dense at 70 % zeros). Per 16
//!   columns it loads the next 16 packed values, spreads them to their columns with the
//!   register form of `vexpandps` under the block's mask, and multiplies them with `x`.
//! - [`gemm`]: `Y = X Wᵀ` for many inputs (perplexity windows, scoring, calibration).
//!   Compute-bound: each kept `w[r, c]` is broadcast once against a tile of [`TILE`] tokens
//!   stored column-major (`xt[c][t]`), so the zeros cost nothing. The loop runs block of
//!   columns by block of columns, so the part of the tile it reads (64 columns × 64 tokens,
//!   16 KiB) stays in L1.
//!
//! Every output element is summed by one thread in a fixed order (its row's kept weights, block
//! by block, in column order), so the bits do not depend on the thread count.

use rayon::prelude::*;

/// Tokens per tile of [`gemm`]: four 16-lane AVX-512 registers per row.
pub const TILE: usize = 64;

/// Columns per block: one u64 mask per row and block says which of its columns are kept.
pub const BLOCK: usize = 64;

/// Zero floats after the last kept value: the matrix–vector kernel loads 16 values at a time
/// from any kept weight's position.
pub const PAD: usize = 16;

/// Rows per parallel task in [`gemv`].
const GEMV_ROWS_PER_TASK: usize = 64;
/// Below this many kept weights a product is not worth a rayon dispatch.
const PARALLEL_MIN_NNZ: usize = 32 * 1024;

/// A borrowed bitmask compressed-row matrix. Row `r` holds its kept weights at
/// `values[row_ptr[r]..row_ptr[r + 1]]`, ordered by column; bit `j` of `masks[r * blocks + b]`
/// is set when column `b * BLOCK + j` is kept (never for a column `≥ cols`). `values` has
/// [`PAD`] zeros after the last kept weight.
///
/// Only [`super::SparseMatrix::blocked`] makes one (the fields are private to the crate), so the
/// kernels' unchecked loads can rely on these invariants.
#[derive(Clone, Copy)]
pub struct Blocked<'a> {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) row_ptr: &'a [u32],
    pub(crate) masks: &'a [u64],
    pub(crate) values: &'a [f32],
}

impl Blocked<'_> {
    pub fn blocks(&self) -> usize {
        self.cols.div_ceil(BLOCK)
    }

    fn nnz(&self) -> usize {
        self.row_ptr.last().map_or(0, |&n| n as usize)
    }

    /// The mask of row `r`'s block `b`.
    fn mask(&self, r: usize, b: usize) -> u64 {
        self.masks[r * self.blocks() + b]
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
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("popcnt")
            {
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
pub fn gemv(w: Blocked<'_>, x: &[f32], y: &mut [f32]) {
    gemv_with(isa(), w, x, y)
}

/// [`gemv`] with a given instruction set (tests compare the two paths).
pub fn gemv_with(isa: Isa, w: Blocked<'_>, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), w.cols, "gemv: input length");
    assert_eq!(y.len(), w.rows, "gemv: output length");
    let rows_into = |r0: usize, out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = row_dot(isa, &w, r0 + j, x);
        }
    };
    if w.nnz() < PARALLEL_MIN_NNZ {
        rows_into(0, y);
    } else {
        super::pool::fill_chunks(y, GEMV_ROWS_PER_TASK, &rows_into);
    }
}

fn row_dot(isa: Isa, w: &Blocked<'_>, r: usize, x: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `Isa::detect` after the runtime check for
        // avx512f and popcnt; the matrix invariants (established by `SparseMatrix`) keep every
        // kept column `< cols == x.len()` and the values padded by `PAD` zeros.
        Isa::Avx512 => unsafe { avx512::row_dot(w, r, x) },
        _ => row_dot_portable(w, r, x),
    }
}

/// The plain definition with sixteen partial sums (column `c` sums into `c % 16`; a fixed
/// order, no fused multiply-adds).
fn row_dot_portable(w: &Blocked<'_>, r: usize, x: &[f32]) -> f32 {
    let mut k = w.row_ptr[r] as usize;
    let mut acc = [0f32; 16];
    for b in 0..w.blocks() {
        let mut m = w.mask(r, b);
        while m != 0 {
            let j = m.trailing_zeros() as usize;
            m &= m - 1;
            acc[j % 16] += w.values[k] * x[b * BLOCK + j];
            k += 1;
        }
    }
    acc.iter().sum()
}

/// `y[t, r] = Σ_k X[t, k] W[r, k]` for `n` inputs (`x.len() == n·cols`, `y.len() == n·rows`).
pub fn gemm(w: Blocked<'_>, x: &[f32], n: usize, y: &mut [f32]) {
    gemm_with(isa(), w, x, n, y)
}

/// [`gemm`] with a given instruction set.
pub fn gemm_with(isa: Isa, w: Blocked<'_>, x: &[f32], n: usize, y: &mut [f32]) {
    assert_eq!(x.len(), n * w.cols, "gemm: input length");
    assert_eq!(y.len(), n * w.rows, "gemm: output length");
    if n == 0 || w.rows == 0 {
        return;
    }
    let tiles = n.div_ceil(TILE);
    let threads = rayon::current_num_threads();
    let serial = w.nnz() < PARALLEL_MIN_NNZ;
    if tiles >= threads || serial {
        // Enough tiles for every thread: one task per tile, which writes its own rows of `y`.
        let work = |(ti, out): (usize, &mut [f32])| {
            let t0 = ti * TILE;
            let nt = out.len() / w.rows;
            let xt = transpose_tile(&x[t0 * w.cols..(t0 + nt) * w.cols], w.cols);
            let mut acc = vec![0f32; w.rows * TILE];
            rows_tile(isa, &w, 0..w.rows, &xt, &mut acc);
            scatter_tile(&acc, nt, w.rows, out);
        };
        match serial {
            true => y.chunks_mut(TILE * w.rows).enumerate().for_each(work),
            false => y.par_chunks_mut(TILE * w.rows).enumerate().for_each(work),
        }
        return;
    }
    // Few tokens (a short prompt): split the rows instead, tile by tile.
    let rows_per_task = w.rows.div_ceil(threads * 4).max(16);
    for ti in 0..tiles {
        let t0 = ti * TILE;
        let nt = (n - t0).min(TILE);
        let xt = transpose_tile(&x[t0 * w.cols..(t0 + nt) * w.cols], w.cols);
        let mut acc = vec![0f32; w.rows * TILE];
        acc.par_chunks_mut(rows_per_task * TILE)
            .enumerate()
            .for_each(|(i, out)| {
                let r0 = i * rows_per_task;
                rows_tile(isa, &w, r0..r0 + out.len() / TILE, &xt, out);
            });
        scatter_tile(&acc, nt, w.rows, &mut y[t0 * w.rows..(t0 + nt) * w.rows]);
    }
}

/// `out[t * rows + r] = acc[r * TILE + t]` for the tile's `nt` tokens, in 16 × 16 squares.
fn scatter_tile(acc: &[f32], nt: usize, rows: usize, out: &mut [f32]) {
    for r0 in (0..rows).step_by(16) {
        let r1 = (r0 + 16).min(rows);
        for t in 0..nt {
            let dst = &mut out[t * rows + r0..t * rows + r1];
            for (j, d) in dst.iter_mut().enumerate() {
                *d = acc[(r0 + j) * TILE + t];
            }
        }
    }
}

/// `x` (`[nt, cols]`, `nt ≤ TILE`) as `xt[c * TILE + t]`, zero-padded to a full tile. In
/// squares of 16 × 16 so reads and writes both stay within a few cache lines.
fn transpose_tile(x: &[f32], cols: usize) -> Vec<f32> {
    let nt = x.len() / cols.max(1);
    let mut xt = vec![0f32; cols * TILE];
    for t0 in (0..nt).step_by(16) {
        let t1 = (t0 + 16).min(nt);
        for c0 in (0..cols).step_by(16) {
            let c1 = (c0 + 16).min(cols);
            for t in t0..t1 {
                let row = &x[t * cols..(t + 1) * cols];
                for c in c0..c1 {
                    xt[c * TILE + t] = row[c];
                }
            }
        }
    }
    xt
}

/// Rows `rows` of one tile: `acc[(r - rows.start) * TILE + t] = Σ_c W[r, c] xt[c][t]`, in
/// panels of [`PANEL_ROWS`] rows, each panel column block by column block (each row's cursor
/// advancing through its kept weights). The panel's accumulators (16 KiB) and the column
/// block's slice of the tile (16 KiB) stay in L1; without panels a 11008-row linear's
/// accumulators (2.8 MB per tile) were reloaded from memory for every block, which made the
/// kernel slower than dense GEMM at 7B shapes.
fn rows_tile(isa: Isa, w: &Blocked<'_>, rows: std::ops::Range<usize>, xt: &[f32], acc: &mut [f32]) {
    let nb = w.blocks();
    // `acc` arrives zeroed (freshly allocated).
    let mut cursor: Vec<usize> = rows.clone().map(|r| w.row_ptr[r] as usize).collect();
    for p0 in rows.clone().step_by(PANEL_ROWS) {
        let panel = p0..(p0 + PANEL_ROWS).min(rows.end);
        for b in 0..nb {
            let xb = &xt[b * BLOCK * TILE..];
            for r in panel.clone() {
                let j = r - rows.start;
                let m = w.mask(r, b);
                let k = cursor[j];
                let n = m.count_ones() as usize;
                let Some(out) = acc
                    .get_mut(j * TILE..(j + 1) * TILE)
                    .and_then(|c| <&mut [f32; TILE]>::try_from(c).ok())
                else {
                    continue;
                };
                let v = &w.values[k..k + n];
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: avx512f was detected at run time; `v` holds one value per set bit
                    // of `m`, and every set bit `j` has `b * BLOCK + j < cols`, so the 64 floats
                    // read at `j * TILE` of `xb` lie inside `xt` (`cols * TILE` long).
                    Isa::Avx512 => unsafe { avx512::block_tile(v, m, xb, out) },
                    _ => block_tile_portable(v, m, xb, out),
                }
                cursor[j] = k + n;
            }
        }
    }
}

/// Rows per panel of [`rows_tile`]: 64 rows × 64 tokens of f32 accumulators, 16 KiB.
const PANEL_ROWS: usize = 64;

fn block_tile_portable(v: &[f32], mut m: u64, xb: &[f32], acc: &mut [f32; TILE]) {
    for &w in v {
        let col = m.trailing_zeros() as usize;
        m &= m - 1;
        let src = &xb[col * TILE..(col + 1) * TILE];
        for (a, &s) in acc.iter_mut().zip(src) {
            *a += w * s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Blocked, BLOCK, TILE};
    use std::arch::x86_64::*;

    /// Row `r` of `w` against `x`. Per block of 64 columns and its mask `m`: for each quarter
    /// `q` (16 columns, mask bits `16q..16q + 16`), load the next 16 packed values, spread the
    /// first `popcnt` of them to their lanes (`vexpandps` between registers; its load form is
    /// microcoded and several times slower on Zen 4), and multiply by `x` loaded under the
    /// same mask. The quarters' starting values come from popcounts of the mask's low bits, so
    /// the four are independent and only one add per block carries over. Quarter `q` always
    /// sums into accumulator `q`, so the order of the sums is fixed by the matrix.
    ///
    /// # Safety
    /// The CPU supports avx512f and popcnt; `w` satisfies the [`Blocked`] invariants (kept
    /// columns `< cols == x.len()`, `values` padded by `PAD` zeros).
    #[target_feature(enable = "avx512f,popcnt")]
    pub unsafe fn row_dot(w: &Blocked<'_>, r: usize, x: &[f32]) -> f32 {
        let nb = w.blocks();
        let mut vp = w.values.as_ptr().add(w.row_ptr[r] as usize);
        let mp = w.masks.as_ptr().add(r * nb);
        let xp = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..nb {
            let m = *mp.add(b);
            // The value stream is the one the hardware prefetcher falls behind on: ask for it
            // ~1 KiB ahead (a hint; it never faults).
            _mm_prefetch::<_MM_HINT_T0>(vp.add(PREFETCH) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(vp.add(PREFETCH + 16) as *const i8);
            let start = [
                0,
                (m & 0xffff).count_ones() as usize,
                (m & 0xffff_ffff).count_ones() as usize,
                (m & 0xffff_ffff_ffff).count_ones() as usize,
            ];
            let xb = xp.add(b * BLOCK);
            for (q, a) in acc.iter_mut().enumerate() {
                let k = (m >> (16 * q)) as __mmask16;
                // SAFETY: `vp + start[q]` is at most the row's end, so its 16 floats lie
                // within the values and their padding; `x` is read only under `k`, whose
                // lanes are kept columns `< cols`.
                let v = _mm512_maskz_expand_ps(k, _mm512_loadu_ps(vp.add(start[q])));
                let xv = _mm512_maskz_loadu_ps(k, xb.add(16 * q));
                *a = _mm512_fmadd_ps(v, xv, *a);
            }
            vp = vp.add(m.count_ones() as usize);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// Distance of the value prefetch, in floats.
    const PREFETCH: usize = 256;

    /// `acc[t] += Σ v[k] xb[c_k * TILE + t]` for the `TILE` tokens of a tile, where `c_k` is
    /// the `k`-th set bit of `m`; one accumulator register per 16 tokens.
    ///
    /// # Safety
    /// The CPU supports avx512f, `v.len() == m.count_ones()`, and `(c + 1) * TILE ≤ xb.len()`
    /// for every set bit `c` of `m`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn block_tile(v: &[f32], mut m: u64, xb: &[f32], acc: &mut [f32; TILE]) {
        const R: usize = TILE / 16;
        let o = acc.as_mut_ptr();
        let mut a = [_mm512_setzero_ps(); R];
        for (l, a_l) in a.iter_mut().enumerate() {
            // SAFETY: `acc` holds TILE = 16 · R floats.
            *a_l = _mm512_loadu_ps(o.add(16 * l));
        }
        let xp = xb.as_ptr();
        for &w in v {
            let col = m.trailing_zeros() as usize;
            m &= m - 1;
            let b = _mm512_set1_ps(w);
            // SAFETY: `col * TILE + TILE ≤ xb.len()` by the caller's contract.
            let p = xp.add(col * TILE);
            for (l, a_l) in a.iter_mut().enumerate() {
                *a_l = _mm512_fmadd_ps(b, _mm512_loadu_ps(p.add(16 * l)), *a_l);
            }
        }
        for (l, a_l) in a.iter().enumerate() {
            _mm512_storeu_ps(o.add(16 * l), *a_l);
        }
    }
}

/// `y[r] = Σ_c W[r, c] x[c]` for a dense row-major `W` (`[rows, cols]`): the batch-1 product of
/// dense linears and of the LM head. One pass over `W` at memory speed, rows split over the
/// threads in fixed chunks (each row summed by one thread, so the bits do not depend on the
/// thread count). A general matmul routine packs its operands first, which at batch 1 costs
/// more than the product.
pub fn dense_gemv(w: &[f32], cols: usize, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), cols, "dense gemv: input length");
    assert_eq!(w.len(), y.len() * cols, "dense gemv: weight length");
    let isa = isa();
    let rows_into = |r0: usize, out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            let row = &w[(r0 + j) * cols..(r0 + j + 1) * cols];
            *o = match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx512f was detected at run time; `row` and `x` have `cols` elements.
                Isa::Avx512 => unsafe { avx512_dense::dot(row, x) },
                _ => dot_portable(row, x),
            };
        }
    };
    if w.len() < 64 * 1024 {
        rows_into(0, y);
    } else {
        super::pool::fill_chunks(y, GEMV_ROWS_PER_TASK, &rows_into);
    }
}

/// `Σ a[i] b[i]` in sixteen partial sums (AVX-512 where the CPU has it): the plain
/// `iter().sum()` is one serial chain of adds, four times slower on a 64-float attention head.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: lengths");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time; the lengths are equal.
        Isa::Avx512 => unsafe { avx512_dense::dot(a, b) },
        _ => dot_portable(a, b),
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ac = a.chunks_exact(16);
    let mut bc = b.chunks_exact(16);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ac.remainder().iter().zip(bc.remainder()).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512_dense {
    use std::arch::x86_64::*;

    /// `Σ a[i] b[i]` with four 16-lane accumulators.
    ///
    /// # Safety
    /// The CPU supports avx512f and `a.len() == b.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (loops): every load reads `[i, i + 16)` with `i + 16 ≤ n`, or is masked.
        while i + 64 <= n {
            for (l, a_l) in acc.iter_mut().enumerate() {
                let o = i + 16 * l;
                *a_l =
                    _mm512_fmadd_ps(_mm512_loadu_ps(ap.add(o)), _mm512_loadu_ps(bp.add(o)), *a_l);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(
                _mm512_loadu_ps(ap.add(i)),
                _mm512_loadu_ps(bp.add(i)),
                acc[0],
            );
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            acc[1] = _mm512_fmadd_ps(
                _mm512_maskz_loadu_ps(m, ap.add(i)),
                _mm512_maskz_loadu_ps(m, bp.add(i)),
                acc[1],
            );
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }
}
