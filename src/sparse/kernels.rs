//! The two products of a bitmask compressed-row matrix `W` (`[rows, cols]`, see [`Blocked`])
//! with f32 inputs, each with an AVX-512 path chosen at run time and a portable one:
//!
//! - [`gemv`]: `y = W x` for one input (KV-cached decode). Memory-bound: the kernel moves
//!   4 bytes per kept weight plus one bit per weight (0.33× dense at 70 % zeros). Per 16
//!   columns it packs the kept inputs into the low lanes with the register form of
//!   `vcompressps` under the block's mask and multiplies them with the next 16 packed values.
//! - [`gemm`]: `Y = X Wᵀ` for many inputs (perplexity windows, scoring, calibration).
//!   Compute-bound: each kept `w[r, c]` is broadcast once against a tile of [`TILE`] tokens
//!   stored column-major (`xt[c][t]`), so the zeros cost nothing. The loop runs block of
//!   columns by block of columns, so the part of the tile it reads (64 columns × 128 tokens,
//!   32 KiB) stays in L1. A tile of 128 tokens gives each kept weight eight independent
//!   multiply-adds (one accumulator chain per 16 tokens), enough to cover the FMA latency,
//!   and halves the per-row, per-block overhead of 64-token tiles; measured on the demo's
//!   linear shapes at p 0.7 (Intel Xeon, 2 threads, 256 tokens) the sparse/dense time went
//!   from 0.72–0.77 to 0.53–0.61 with it, the cache-line-aligned operands and the transposes
//!   between registers.
//!
//! Every output element is summed by one thread in a fixed order (its row's kept weights, block
//! by block, in column order), so the bits do not depend on the thread count.

use rayon::prelude::*;

/// Tokens per tile of [`gemm`]: eight 16-lane AVX-512 registers per row.
pub const TILE: usize = 128;

/// Columns per block: one u64 mask per row and block says which of its columns are kept.
pub const BLOCK: usize = 64;

/// Zero floats after the last kept value: the matrix–vector kernel loads 16 values at a time
/// from any kept weight's position.
pub const PAD: usize = 16;

/// Rows per parallel task of a batch-1 product ([`gemv`], [`dense_gemv`]): two tasks per
/// thread, at least [`GEMV_MIN_ROWS`] rows. Each task then streams one long contiguous stretch
/// of the weights, which the hardware prefetcher follows; with 64-row tasks every task started
/// a new stream from memory. Measured over the demo's 210 linears at p 0.7 (Zen 4, 2 threads,
/// compressed rows): 64-row tasks 5.7–6.4 ms, a quarter of the rows per task 5.3–5.8 ms. More
/// tasks than threads keep a worker that starts late from holding up the product by more than
/// one task.
fn gemv_rows_per_task(rows: usize) -> usize {
    rows.div_ceil(2 * super::pool::global().threads())
        .max(GEMV_MIN_ROWS)
}

/// The smallest task of a batch-1 product.
const GEMV_MIN_ROWS: usize = 16;
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
    /// Every value is finite (no infinity or NaN): see [`avx512::row_dot`].
    pub(crate) finite: bool,
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

pub(crate) fn isa() -> Isa {
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
        super::pool::fill_chunks(y, gemv_rows_per_task(w.rows), &rows_into);
    }
}

fn row_dot(isa: Isa, w: &Blocked<'_>, r: usize, x: &[f32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `Isa::detect` after the runtime check for
        // avx512f and popcnt; the matrix invariants (established by `SparseMatrix`) keep every
        // kept column `< cols == x.len()` and the values padded by `PAD` zeros.
        Isa::Avx512 => unsafe {
            match w.finite {
                true => avx512::row_dot::<true>(w, r, x),
                false => avx512::row_dot::<false>(w, r, x),
            }
        },
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
            SCRATCH.with_borrow_mut(|(xt, acc)| {
                transpose_tile(isa, &x[t0 * w.cols..(t0 + nt) * w.cols], w.cols, xt);
                let acc = acc.reset(w.rows * TILE);
                rows_tile(isa, &w, 0..w.rows, nt, xt.as_slice(), acc);
                scatter_tile(isa, acc, nt, w.rows, out);
            });
        };
        match serial {
            true => y.chunks_mut(TILE * w.rows).enumerate().for_each(work),
            false => y.par_chunks_mut(TILE * w.rows).enumerate().for_each(work),
        }
        return;
    }
    // Few tokens (a short prompt): split the rows instead, tile by tile.
    let rows_per_task = w.rows.div_ceil(threads * 4).max(16);
    let (mut xt, mut acc) = (LineBuf::default(), LineBuf::default());
    for ti in 0..tiles {
        let t0 = ti * TILE;
        let nt = (n - t0).min(TILE);
        transpose_tile(isa, &x[t0 * w.cols..(t0 + nt) * w.cols], w.cols, &mut xt);
        let xt = xt.as_slice();
        let acc = acc.reset(w.rows * TILE);
        acc.par_chunks_mut(rows_per_task * TILE)
            .enumerate()
            .for_each(|(i, out)| {
                let r0 = i * rows_per_task;
                rows_tile(isa, &w, r0..r0 + out.len() / TILE, nt, xt, out);
            });
        scatter_tile(
            isa,
            acc,
            nt,
            w.rows,
            &mut y[t0 * w.rows..(t0 + nt) * w.rows],
        );
    }
}

thread_local! {
    /// Each thread's transposed tile and accumulators, kept between products: allocating and
    /// zeroing them for every tile of every linear cost a tenth of the sparse product.
    static SCRATCH: std::cell::RefCell<(LineBuf, LineBuf)> = Default::default();
}

/// `out[t * rows + r] = acc[r * TILE + t]` for the tile's `nt` tokens.
fn scatter_tile(isa: Isa, acc: &[f32], nt: usize, rows: usize, out: &mut [f32]) {
    assert!(acc.len() >= rows * TILE && out.len() >= nt * rows && nt <= TILE);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time; the lengths are asserted above.
        Isa::Avx512 => unsafe { avx512_transpose::scatter_tile(acc, nt, rows, out) },
        _ => {
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
    }
}

/// `x` (`[nt, cols]`, `nt ≤ TILE`) into `xt[c * TILE + t]`, zero-padded to a full tile.
fn transpose_tile(isa: Isa, x: &[f32], cols: usize, buf: &mut LineBuf) {
    let nt = x.len() / cols.max(1);
    assert!(nt <= TILE && x.len() == nt * cols);
    let xt = buf.reset(cols * TILE);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time; `x` is `[nt, cols]` with `nt ≤ TILE` and
        // `xt` holds `cols · TILE` floats.
        Isa::Avx512 => unsafe { avx512_transpose::transpose_tile(x, nt, cols, xt) },
        _ => {
            xt.fill(0.0);
            for t in 0..nt {
                for (c, &v) in x[t * cols..(t + 1) * cols].iter().enumerate() {
                    xt[c * TILE + t] = v;
                }
            }
        }
    }
}

/// 16 floats on a 64-byte boundary: one cache line, one AVX-512 register.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// An f32 buffer that starts on a cache line. The GEMM kernel's operands (the tile and
/// the accumulators) live in these: from the plain allocator a large `Vec<f32>` starts 16
/// bytes past a line, which splits every 64-byte load across two lines.
#[derive(Default)]
struct LineBuf {
    lines: Vec<Line>,
    len: usize,
}

impl LineBuf {
    /// `len` floats (grown if needed, never shrunk), with whatever the last use left in them.
    fn reset(&mut self, len: usize) -> &mut [f32] {
        if self.lines.len() < len.div_ceil(16) {
            self.lines = vec![Line([0.0; 16]); len.div_ceil(16)];
        }
        self.len = len;
        self.as_mut_slice()
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is 16 f32s with no padding (`repr(C)`, size 64), so the lines are
        // `16 · lines.len() ≥ len` contiguous, initialised f32s.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<f32>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`; the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<f32>(), self.len) }
    }
}

/// Rows `rows` of one tile of `nt` tokens: `acc[(r - rows.start) * TILE + t] = Σ_c W[r, c]
/// xt[c][t]`, in panels of [`PANEL_ROWS`] rows, each panel column block by column block (each
/// row's cursor advancing through its kept weights), so a panel's accumulators and the column
/// block's slice of the tile stay in L1. Whatever `acc` held before is overwritten.
fn rows_tile(
    isa: Isa,
    w: &Blocked<'_>,
    rows: std::ops::Range<usize>,
    nt: usize,
    xt: &[f32],
    acc: &mut [f32],
) {
    let nb = w.blocks();
    assert!(acc.len() >= rows.len() * TILE, "gemm: accumulator length");
    assert!(xt.len() >= w.cols * TILE, "gemm: tile length");
    if isa == Isa::Portable || nb == 0 {
        acc[..rows.len() * TILE].fill(0.0);
    }
    let mut cursor: Vec<usize> = rows.clone().map(|r| w.row_ptr[r] as usize).collect();
    for p0 in rows.clone().step_by(PANEL_ROWS) {
        let panel = p0..(p0 + PANEL_ROWS).min(rows.end);
        // The next panel's values and masks, a slice per column block (see `prefetch_lines`).
        let next = panel.end..(panel.end + PANEL_ROWS).min(rows.end);
        let next_values = &w.values[w.row_ptr[next.start] as usize..w.row_ptr[next.end] as usize];
        let next_masks = &w.masks[next.start * nb..next.end * nb];
        for b in 0..nb {
            if isa == Isa::Avx512 {
                prefetch_lines(part(next_values, b, nb));
                prefetch_lines(part(next_masks, b, nb));
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: avx512f and popcnt were detected at run time; `panel` lies within
                // `rows` and `rows` within the matrix, `cursor` starts at each row's first kept
                // weight and advances by the kept weights of each block, `acc` holds `TILE`
                // floats per row of `rows` and `xt` `TILE` per column (both asserted above).
                Isa::Avx512 => unsafe {
                    let args = (
                        w,
                        panel.clone(),
                        rows.start,
                        b,
                        xt,
                        &mut *acc,
                        &mut cursor[..],
                    );
                    // Short inputs (a zero-shot row, a prompt) use only the registers that
                    // hold tokens; which lanes are computed never changes a sum's order.
                    match nt {
                        0..=64 => avx512::panel_block::<4>(args),
                        _ => avx512::panel_block::<8>(args),
                    }
                },
                _ => {
                    let xb = &xt[b * BLOCK * TILE..];
                    for r in panel.clone() {
                        let j = r - rows.start;
                        let m = w.mask(r, b);
                        let k = cursor[j];
                        let n = m.count_ones() as usize;
                        let out = &mut acc[j * TILE..(j + 1) * TILE];
                        block_tile_portable(&w.values[k..k + n], m, xb, out);
                        cursor[j] = k + n;
                    }
                }
            }
        }
    }
}

/// Part `i` of `n` equal parts of `v` (the last part takes the remainder).
fn part<T>(v: &[T], i: usize, n: usize) -> &[T] {
    let len = v.len().div_ceil(n);
    &v[(i * len).min(v.len())..((i + 1) * len).min(v.len())]
}

/// Ask for the cache lines of `v` to be brought into L1 (a hint, never a fault). The GEMM
/// walks a panel's 16 rows block by block, so their values and masks are 32 short streams that
/// advance a few dozen bytes per block, which the hardware prefetcher does not follow: in
/// place (weights from memory, not from a hot cache) the loads of the values stalled the
/// kernel. Fetching the next panel's lines while this panel computes, a slice per block, and
/// taking rows in pairs at every tile width ([`avx512::panel_block`]) measured together 1.4× the
/// sparse evaluation's tokens/s on the demo at p 0.7 (16 windows, three alternating runs on
/// AMD Zen 5: 796–839 tok/s without either, 904–1093 with the pairs alone, 837–868 with the
/// prefetch alone, 1096–1173 with both).
fn prefetch_lines<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(v);
        let p = v.as_ptr().cast::<i8>();
        for off in (0..bytes).step_by(64) {
            // SAFETY: `p + off` lies within `v`; a prefetch only hints the cache and never
            // faults or changes memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Rows per panel of [`rows_tile`]: 16 rows × 128 tokens of f32 accumulators (8 KiB) beside the
/// 32 KiB column block of the tile.
const PANEL_ROWS: usize = 16;

fn block_tile_portable(v: &[f32], mut m: u64, xb: &[f32], acc: &mut [f32]) {
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
    /// `q` (16 columns, mask bits `16q..16q + 16`), gather the quarter's kept inputs into the
    /// low lanes (`vcompressps` between registers, the rest zeroed) and multiply them by the
    /// next 16 packed values, whose first `popcnt` lanes are the quarter's kept weights. Packing
    /// the input rather than spreading the values (`vexpandps`) is the same arithmetic and
    /// measured 1.2× faster on Zen 4 over the demo's linears at p 0.7 (README, "Sparse
    /// execution"). The quarters' starting values come from popcounts of the mask's low bits,
    /// so the four are independent and only one add per block carries over. Quarter `q` always
    /// sums into accumulator `q`, its `i`-th kept weight into lane `i`, so the order of the
    /// sums is fixed by the matrix.
    ///
    /// The lanes past a quarter's kept weights multiply a zero input by whatever values follow
    /// (the next quarter's, the next row's, the padding): harmless for finite values. With
    /// `FINITE` false (a matrix holding an infinity or NaN) those lanes are loaded as zeros, so
    /// `0 · ∞` cannot put a NaN into a row that never had one.
    ///
    /// # Safety
    /// The CPU supports avx512f and popcnt; `w` satisfies the [`Blocked`] invariants (kept
    /// columns `< cols == x.len()`, `values` padded by `PAD` zeros).
    #[target_feature(enable = "avx512f,popcnt")]
    pub unsafe fn row_dot<const FINITE: bool>(w: &Blocked<'_>, r: usize, x: &[f32]) -> f32 {
        let nb = w.blocks();
        let mut vp = w.values.as_ptr().add(w.row_ptr[r] as usize);
        let mp = w.masks.as_ptr().add(r * nb);
        let xp = x.as_ptr();
        let mut acc = [_mm512_setzero_ps(); 4];
        for b in 0..nb {
            let m = *mp.add(b);
            // The value stream is the one the hardware prefetcher falls behind on: ask for it
            // [`PREFETCH`] floats ahead (a hint; it never faults).
            _mm_prefetch::<_MM_HINT_T0>(vp.add(PREFETCH) as *const i8);
            let start = [
                0,
                (m & 0xffff).count_ones() as usize,
                (m & 0xffff_ffff).count_ones() as usize,
                (m & 0xffff_ffff_ffff).count_ones() as usize,
            ];
            let xb = xp.add(b * BLOCK);
            for (q, a) in acc.iter_mut().enumerate() {
                let k = (m >> (16 * q)) as __mmask16;
                // SAFETY: `x` is read only under `k`, whose lanes are kept columns `< cols`;
                // `vp + start[q]` is at most the row's end, so its 16 floats lie within the
                // values and their padding.
                let xv = _mm512_maskz_compress_ps(k, _mm512_maskz_loadu_ps(k, xb.add(16 * q)));
                let v = match FINITE {
                    true => _mm512_loadu_ps(vp.add(start[q])),
                    false => {
                        let n = k.count_ones();
                        _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, vp.add(start[q]))
                    }
                };
                *a = _mm512_fmadd_ps(v, xv, *a);
            }
            vp = vp.add(m.count_ones() as usize);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// Distance of the value prefetch, in floats (6 KiB). 2 KiB suited the AMD machines; on the
    /// Intel Xeon, whose single thread streams memory at about half their rate (13 GB/s), the
    /// farther prefetch decoded the demo at p 0.7 about 4 % faster (median of 12 alternating
    /// runs of `dlpx generate`; 16 KiB was no better).
    const PREFETCH: usize = 1536;

    /// The arguments of [`panel_block`]: the matrix, the panel's rows, the first row of `acc`,
    /// the column block, the transposed tile, the accumulators and the rows' cursors.
    pub type PanelArgs<'a, 'w> = (
        &'a Blocked<'w>,
        std::ops::Range<usize>,
        usize,
        usize,
        &'a [f32],
        &'a mut [f32],
        &'a mut [usize],
    );

    /// One column block `b` of a panel of rows of one tile, on the first `16 R` tokens: for
    /// each row `r` of `panel`, `acc[(r - first) * TILE + t] += Σ_k v_k xt[(b * BLOCK + c_k) *
    /// TILE + t]` over the row's kept weights `v_k` in block `b` (columns `c_k`, in column
    /// order), starting at `cursor[r - first]`, which advances past them. Block 0 writes the
    /// accumulators instead of adding to them, so they need no zeroing.
    ///
    /// One row's `R` accumulators form `R` chains of dependent multiply-adds. Rows go in pairs
    /// (`2 R` chains, at most 16 accumulators and two broadcasts of the 32 registers): with
    /// `R = 4` so that eight chains cover the FMA latency, and with `R = 8` because two rows'
    /// independent loads keep Zen 5's two FMA units busier (the kernel on one demo MLP shape,
    /// 768 tokens, hot in cache: 0.67 → 0.55 of the dense GEMM's time). Each row still sums
    /// its own weights in column order, so the result does not change.
    ///
    /// # Safety
    /// The CPU supports avx512f and popcnt; `w` satisfies the [`Blocked`] invariants; `panel`
    /// lies within the matrix's rows and starts at or after `first`; `cursor[r - first]` is
    /// row `r`'s position in `values` at the start of block `b`; `acc` holds `TILE` floats per
    /// row from `first` to the panel's end and `xt` holds `TILE` floats per column; `R ≤ 8`.
    #[target_feature(enable = "avx512f,popcnt")]
    pub unsafe fn panel_block<const R: usize>(args: PanelArgs<'_, '_>) {
        let (w, panel, first, b, xt, acc, cursor) = args;
        let xb = xt.as_ptr().add(b * BLOCK * TILE);
        let vp = w.values.as_ptr();
        let o = acc.as_mut_ptr();
        let fresh = b == 0;
        let mut r = panel.start;
        while r < panel.end {
            let j = r - first;
            let m1 = w.mask(r, b);
            let k1 = cursor[j];
            cursor[j] = k1 + m1.count_ones() as usize;
            if r + 1 < panel.end {
                let m2 = w.mask(r + 1, b);
                let k2 = cursor[j + 1];
                cursor[j + 1] = k2 + m2.count_ones() as usize;
                // SAFETY: the caller's contract (rows `j`, `j + 1` of `acc`; the kept weights
                // of both rows in block `b` start at `k1`, `k2`).
                let (o1, o2) = (o.add(j * TILE), o.add((j + 1) * TILE));
                pair::<R>(vp.add(k1), m1, vp.add(k2), m2, xb, o1, o2, fresh);
                r += 2;
            } else {
                // SAFETY: as above, for one row.
                single::<R>(vp.add(k1), m1, xb, o.add(j * TILE), fresh);
                r += 1;
            }
        }
    }

    /// The `R` accumulator registers of a row: its stored sums, or zeros on the first block.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn start<const R: usize>(o: *const f32, fresh: bool) -> [__m512; R] {
        let mut a = [_mm512_setzero_ps(); R];
        if !fresh {
            for (l, a_l) in a.iter_mut().enumerate() {
                *a_l = _mm512_load_ps(o.add(16 * l));
            }
        }
        a
    }

    /// Row accumulators `o[0..16 R] += Σ v[k] xb[c_k * TILE..]` for the set bits `c_k` of `m`.
    ///
    /// # Safety
    /// avx512f; `v` has `m.count_ones()` floats, `o` (64-byte aligned) `16 R`, `xb` (64-byte
    /// aligned) `TILE` per set bit's column.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn single<const R: usize>(
        v: *const f32,
        m: u64,
        xb: *const f32,
        o: *mut f32,
        fresh: bool,
    ) {
        let mut a = start::<R>(o, fresh);
        accumulate(&mut a, v, m, xb);
        for (l, a_l) in a.iter().enumerate() {
            _mm512_store_ps(o.add(16 * l), *a_l);
        }
    }

    /// `a += Σ v[k] xb[c_k * TILE..]` in registers.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn accumulate<const R: usize>(
        a: &mut [__m512; R],
        v: *const f32,
        mut m: u64,
        xb: *const f32,
    ) {
        let mut k = 0;
        while m != 0 {
            let mut p = xb.add(m.trailing_zeros() as usize * TILE);
            base_only(&mut p);
            m &= m - 1;
            let bv = _mm512_set1_ps(*v.add(k));
            k += 1;
            for (l, a_l) in a.iter_mut().enumerate() {
                *a_l = _mm512_fmadd_ps(bv, _mm512_load_ps(p.add(16 * l)), *a_l);
            }
        }
    }

    /// Leaves `p` as it is, but makes the compiler hold it in one register, so the loads that
    /// follow address `[p + offset]`. Without it the compiler folds `xb + column · TILE` into
    /// each multiply-add's memory operand as `[xb + index + offset]`, and Intel cores split a
    /// three-operand instruction with an indexed memory operand into two micro-ops at rename:
    /// the kernel measured 4–5 % faster on the Intel Xeon with this (one demo MLP shape, 1024
    /// tokens, one thread, six alternating runs).
    #[inline(always)]
    fn base_only(p: &mut *const f32) {
        let mut addr = p.addr();
        // SAFETY: an empty template that only names `addr` as an input and output register: it
        // reads and writes no memory and changes no value.
        unsafe { core::arch::asm!("/* {0} */", inout(reg) addr, options(pure, nomem, nostack)) };
        *p = p.with_addr(addr);
    }

    /// [`single`] for two rows at once (their weights interleaved while both have some left).
    ///
    /// # Safety
    /// As [`single`], for each row.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn pair<const R: usize>(
        v1: *const f32,
        mut m1: u64,
        v2: *const f32,
        mut m2: u64,
        xb: *const f32,
        o1: *mut f32,
        o2: *mut f32,
        fresh: bool,
    ) {
        let mut a = start::<R>(o1, fresh);
        let mut c = start::<R>(o2, fresh);
        let (mut k1, mut k2) = (0, 0);
        while m1 != 0 && m2 != 0 {
            let mut p1 = xb.add(m1.trailing_zeros() as usize * TILE);
            let mut p2 = xb.add(m2.trailing_zeros() as usize * TILE);
            base_only(&mut p1);
            base_only(&mut p2);
            m1 &= m1 - 1;
            m2 &= m2 - 1;
            let b1 = _mm512_set1_ps(*v1.add(k1));
            let b2 = _mm512_set1_ps(*v2.add(k2));
            k1 += 1;
            k2 += 1;
            for l in 0..R {
                a[l] = _mm512_fmadd_ps(b1, _mm512_load_ps(p1.add(16 * l)), a[l]);
                c[l] = _mm512_fmadd_ps(b2, _mm512_load_ps(p2.add(16 * l)), c[l]);
            }
        }
        // The longer row's remaining weights.
        accumulate(&mut a, v1.add(k1), m1, xb);
        accumulate(&mut c, v2.add(k2), m2, xb);
        for l in 0..R {
            _mm512_store_ps(o1.add(16 * l), a[l]);
            _mm512_store_ps(o2.add(16 * l), c[l]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_transpose {
    use super::TILE;
    use std::arch::x86_64::*;

    /// Transposes the 16 × 16 floats of `r` in place (row `i` becomes column `i`): pairs of
    /// 32-bit lanes, then 64-bit lanes, then two rounds of 128-bit lanes.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        let pd = _mm512_castps_pd;
        for g in 0..4 {
            let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
            r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        // r[4g + k] lane L: rows 4g..4g+4 of column 4L + k.
        for h in 0..2 {
            for k in 0..4 {
                let (lo, hi) = (r[8 * h + k], r[8 * h + 4 + k]);
                t[8 * h + k] = _mm512_shuffle_f32x4::<0x88>(lo, hi);
                t[8 * h + 4 + k] = _mm512_shuffle_f32x4::<0xdd>(lo, hi);
            }
        }
        // t[8h + k] lanes: rows 8h..8h+4 and 8h+4..8h+8 of columns k and k + 8; t[8h + 4 + k]
        // the same for columns k + 4 and k + 12.
        for k in 0..8 {
            r[k] = _mm512_shuffle_f32x4::<0x88>(t[k], t[8 + k]);
            r[k + 8] = _mm512_shuffle_f32x4::<0xdd>(t[k], t[8 + k]);
        }
    }

    fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// [`super::transpose_tile`] in 16 × 16 squares transposed between registers, sixteen
    /// tokens at a time across all columns: the loads then follow 16 rows of `x` front to back,
    /// streams the hardware prefetcher tracks (column-block outer, they were 128 streams
    /// advancing 64 bytes each).
    ///
    /// # Safety
    /// avx512f; `x` holds `nt · cols` floats, `nt ≤ TILE`, `xt` holds `cols · TILE` floats.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn transpose_tile(x: &[f32], nt: usize, cols: usize, xt: &mut [f32]) {
        let (xp, op) = (x.as_ptr(), xt.as_mut_ptr());
        let mut r = [_mm512_setzero_ps(); 16];
        for t0 in (0..TILE).step_by(16) {
            for c0 in (0..cols).step_by(16) {
                let cm = lanes(cols - c0);
                for (i, r_i) in r.iter_mut().enumerate() {
                    // SAFETY: row `t0 + i < nt` of `x`, columns `c0..` under the mask `< cols`.
                    *r_i = match t0 + i < nt {
                        true => _mm512_maskz_loadu_ps(cm, xp.add((t0 + i) * cols + c0)),
                        false => _mm512_setzero_ps(),
                    };
                }
                transpose16(&mut r);
                for (j, r_j) in r.iter().enumerate() {
                    if c0 + j < cols {
                        // SAFETY: column `c0 + j < cols`, tokens `t0..t0 + 16 ≤ TILE`.
                        _mm512_storeu_ps(op.add((c0 + j) * TILE + t0), *r_j);
                    }
                }
            }
        }
    }

    /// [`super::scatter_tile`] in 16 × 16 squares transposed between registers, sixteen
    /// tokens at a time across all rows, so the stores fill 16 rows of `out` front to back.
    /// With the rows outer they went to 128 rows of `out` 64 bytes at a time, which on the
    /// Intel Xeon (Sapphire Rapids class, 2 MiB L2) missed the cache on nearly every store: the
    /// scatter took 23 % of the kernel's time on a 1536 × 576 layer with 2048 tokens, and 10 %
    /// in this order (`perf`, same probe); sparse evaluation of the demo at p 0.7 gained 9 %
    /// (median of six alternating runs).
    ///
    /// # Safety
    /// avx512f; `acc` holds `rows · TILE` floats, `out` `nt · rows`, `nt ≤ TILE`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn scatter_tile(acc: &[f32], nt: usize, rows: usize, out: &mut [f32]) {
        let (ap, op) = (acc.as_ptr(), out.as_mut_ptr());
        let mut r = [_mm512_setzero_ps(); 16];
        for t0 in (0..nt).step_by(16) {
            let tokens = nt - t0;
            for r0 in (0..rows).step_by(16) {
                let rm = lanes(rows - r0);
                for (i, r_i) in r.iter_mut().enumerate() {
                    // SAFETY: row `r0 + i < rows` of `acc`, tokens `t0..t0 + 16 ≤ TILE`.
                    *r_i = match r0 + i < rows {
                        true => _mm512_loadu_ps(ap.add((r0 + i) * TILE + t0)),
                        false => _mm512_setzero_ps(),
                    };
                }
                transpose16(&mut r);
                for (j, r_j) in r.iter().enumerate() {
                    if j < tokens {
                        // SAFETY: token `t0 + j < nt`, rows `r0..` under the mask `< rows`.
                        _mm512_mask_storeu_ps(op.add((t0 + j) * rows + r0), rm, *r_j);
                    }
                }
            }
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
        super::pool::fill_chunks(y, gemv_rows_per_task(y.len()), &rows_into);
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

/// `out[d] = Σ_j p[j] · v[j · stride + d]` for `d < out.len()`, summed over `j` in order with
/// a multiply, then an add, each rounded (the same bits on both paths): the weighted sum of
/// values in a decode step's attention (`v` a KV head's cached values, one row of `stride` per
/// position). The AVX-512 path keeps 64 outputs in registers across all positions; a loop of
/// `out += p[j] · v_j` stores and reloads `out` for every position, and the compiler's own
/// vectorisation of it uses 4-lane SSE in a portable build.
pub fn weighted_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    assert!(out.len() <= stride, "weighted_rows: row length");
    if let Some(last) = p.len().checked_sub(1) {
        assert!(
            v.len() >= last * stride + out.len(),
            "weighted_rows: values length"
        );
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: avx512f was detected at run time; the lengths are asserted above.
        Isa::Avx512 => unsafe { avx512_dense::weighted_rows(p, v, stride, out) },
        _ => {
            out.fill(0.0);
            for (j, &pj) in p.iter().enumerate() {
                let row = &v[j * stride..j * stride + out.len()];
                out.iter_mut().zip(row).for_each(|(o, &x)| *o += pj * x);
            }
        }
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

    /// [`super::weighted_rows`]: 64 outputs at a time (four registers, the last ones under a
    /// mask) summed over every position before they are stored.
    ///
    /// # Safety
    /// The CPU supports avx512f; `out.len() ≤ stride` and `v` holds `(p.len() − 1) · stride +
    /// out.len()` values (when `p` is not empty).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
        let n = out.len();
        let vp = v.as_ptr();
        let mut d0 = 0;
        while d0 < n {
            let lanes = |q: usize| -> __mmask16 {
                let left = n.saturating_sub(d0 + 16 * q).min(16);
                ((1u32 << left) - 1) as __mmask16
            };
            let masks = [lanes(0), lanes(1), lanes(2), lanes(3)];
            let mut acc = [_mm512_setzero_ps(); 4];
            for (j, &pj) in p.iter().enumerate() {
                let pv = _mm512_set1_ps(pj);
                let row = vp.add(j * stride + d0);
                for (q, a) in acc.iter_mut().enumerate() {
                    // SAFETY: lanes under `masks[q]` are outputs `d0 + 16q + l < n ≤ stride` of
                    // row `j < p.len()`, inside `v` by the caller's contract.
                    let x = _mm512_maskz_loadu_ps(masks[q], row.add(16 * q));
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(pv, x));
                }
            }
            for (q, a) in acc.iter().enumerate() {
                // SAFETY: the same lanes of `out`, which has `n` elements.
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(d0 + 16 * q), masks[q], *a);
            }
            d0 += 64;
        }
    }

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
