//! Sparse execution of pruned linears on the CPU: what pruning buys.
//!
//! A pruned linear's weight is stored in column-blocked compressed rows ([`SparseMatrix`]: f32
//! values, u8 column offsets in blocks of 64 columns), 5 bytes per kept weight instead of 4
//! per weight (0.375× dense at 70 % zeros), and multiplied without touching the zeros
//! ([`kernels`]). Values stay in f32: the product equals
//! the dense-with-zeros product up to summation order.
//!
//! Why compressed rows and not a bitmask with packed values: on AVX-512 cores measured here
//! (AMD Zen 4) the expand-load (`vpexpandd`) a bitmask layout needs is slow, while gathers
//! from the L1-resident input are not; the sparse benchmark (README, "Sparse execution")
//! measures both uses (decode and evaluation) against dense in one run. [`SparseMode`] decides per linear from the measured
//! crossover (README, "Sparse execution").

pub mod kernels;
mod op;
pub mod pool;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

pub use op::{dense_gemv, SparseMatmul};

/// When pruned linears run in compressed rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SparseMode {
    /// Where it is faster: a CPU f32 linear at least [`AUTO_MIN_SPARSITY`] sparse.
    #[default]
    Auto,
    /// Every CPU f32 linear with any zero (for measuring; may be slower than dense).
    On,
    /// Never: every linear stays dense.
    Off,
}

impl SparseMode {
    pub const ALL: [SparseMode; 3] = [SparseMode::Auto, SparseMode::On, SparseMode::Off];

    pub fn name(self) -> &'static str {
        match self {
            SparseMode::Auto => "auto",
            SparseMode::On => "on",
            SparseMode::Off => "off",
        }
    }

    /// Whether a linear of this shape and sparsity, on this device and dtype, runs sparse.
    pub fn use_sparse(
        self,
        rows: usize,
        cols: usize,
        sparsity: f64,
        dev: &Device,
        dtype: DType,
    ) -> bool {
        let able = dev.is_cpu() && dtype == DType::F32 && rows > 0 && cols > 0;
        match self {
            SparseMode::Off => false,
            SparseMode::On => able && sparsity > 0.0,
            SparseMode::Auto => able && sparsity >= AUTO_MIN_SPARSITY,
        }
    }
}

/// The crossover of [`SparseMode::Auto`]: below this fraction of zeros a linear stays dense. Measured
/// with the sparse benchmark on the demo's linears (AMD Zen 4, 2 threads): compressed rows beat
/// the dense AVX-512 GEMM/GEMV from about p 0.5 on (README, "Sparse execution"); 0.55 leaves a
/// margin so `auto` is never slower than dense.
pub const AUTO_MIN_SPARSITY: f64 = 0.55;

/// A `[rows, cols]` f32 matrix in column-blocked compressed rows ([`kernels::Blocked`]): per
/// kept weight its f32 value and a u8 column offset in its block of 64 columns (5 bytes), per
/// row and block a u16 count, per row a u32 offset.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    rows: usize,
    cols: usize,
    row_ptr: Vec<u32>,
    counts: Vec<u16>,
    /// Padded with [`PAD`] zero bytes (the kernels load up to 64 offsets at a time).
    col_off: Vec<u8>,
    values: Vec<f32>,
    /// 16-lane gathers the matrix–vector kernel runs per block without a branch (see
    /// [`kernels::Blocked::gathers`]).
    gathers: u8,
}

/// Bytes of zero padding after the last column offset: one whole block of offsets, so the
/// kernels may load 64 offsets from any entry.
const PAD: usize = kernels::BLOCK;

/// How many 16-lane gathers per block the matrix–vector kernel runs branch-free: enough for
/// all but about one block in a thousand (those take a slower loop). Blocks' counts vary with
/// the data, so a loop whose trip count follows them mispredicts a branch or two per block,
/// which cost more than the gathers themselves (measured on the demo at p 0.7: 64-column
/// blocks hold 19 ± 4 kept weights).
fn gathers_for(counts: &[u16]) -> u8 {
    let mut hist = [0usize; kernels::BLOCK + 1];
    for &c in counts {
        hist[c as usize] += 1;
    }
    let allowed = counts.len() / 1000;
    let mut above = 0;
    // The smallest g such that at most `allowed` blocks hold more than 16·g weights.
    for g in 1..=kernels::BLOCK / 16 {
        above = hist[16 * g + 1..].iter().sum::<usize>();
        if above <= allowed {
            return g as u8;
        }
    }
    debug_assert_eq!(above, 0);
    (kernels::BLOCK / 16) as u8
}

impl SparseMatrix {
    /// The non-zeros of a row-major `[rows, cols]` matrix (exact zeros are dropped).
    pub fn from_dense(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if w.len() != rows * cols {
            candle_core::bail!("sparse: {} values for a [{rows}, {cols}] matrix", w.len());
        }
        if rows * cols >= u32::MAX as usize {
            candle_core::bail!("sparse: [{rows}, {cols}] exceeds the u32 row offsets");
        }
        let nb = cols.div_ceil(kernels::BLOCK);
        // Rows in parallel, then concatenated in order: the result does not depend on threads.
        let per_row: Vec<(Vec<u16>, Vec<u8>, Vec<f32>)> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let row = &w[r * cols..(r + 1) * cols];
                let mut counts = vec![0u16; nb];
                let (mut c, mut v) = (Vec::new(), Vec::new());
                for (j, &x) in row.iter().enumerate() {
                    if x != 0.0 {
                        counts[j / kernels::BLOCK] += 1;
                        c.push((j % kernels::BLOCK) as u8);
                        v.push(x);
                    }
                }
                (counts, c, v)
            })
            .collect();
        let nnz: usize = per_row.iter().map(|r| r.2.len()).sum();
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut counts = Vec::with_capacity(rows * nb);
        let mut col_off = Vec::with_capacity(nnz + PAD);
        let mut values = Vec::with_capacity(nnz);
        row_ptr.push(0u32);
        for (n, c, v) in per_row {
            counts.extend_from_slice(&n);
            col_off.extend_from_slice(&c);
            values.extend_from_slice(&v);
            row_ptr.push(values.len() as u32);
        }
        col_off.extend_from_slice(&[0u8; PAD]);
        let gathers = gathers_for(&counts);
        Ok(Self {
            rows,
            cols,
            row_ptr,
            counts,
            col_off,
            values,
            gathers,
        })
    }

    /// The non-zeros of a 2-D f32 CPU tensor.
    pub fn from_tensor(w: &Tensor) -> Result<Self> {
        let (rows, cols) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        let data = w.flatten_all()?.to_vec1::<f32>()?;
        Self::from_dense(&data, rows, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Kept (non-zero) weights.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// Fraction of zeros.
    pub fn sparsity(&self) -> f64 {
        match self.rows * self.cols {
            0 => 0.0,
            n => 1.0 - self.nnz() as f64 / n as f64,
        }
    }

    /// Bytes held: values, column offsets, per-block counts and row offsets.
    pub fn bytes(&self) -> usize {
        self.values.len() * 4 + self.col_off.len() + self.counts.len() * 2 + self.row_ptr.len() * 4
    }

    pub fn blocked(&self) -> kernels::Blocked<'_> {
        kernels::Blocked {
            rows: self.rows,
            cols: self.cols,
            row_ptr: &self.row_ptr,
            counts: &self.counts,
            col_off: &self.col_off,
            values: &self.values,
            gathers: self.gathers,
        }
    }

    /// The dense row-major values (zeros filled in).
    pub fn to_dense(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        let nb = self.cols.div_ceil(kernels::BLOCK);
        w.par_chunks_mut(self.cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let mut k = self.row_ptr[r] as usize;
                for b in 0..nb {
                    let n = self.counts[r * nb + b] as usize;
                    for (&c, &v) in self.col_off[k..k + n].iter().zip(&self.values[k..k + n]) {
                        row[b * kernels::BLOCK + c as usize] = v;
                    }
                    k += n;
                }
            });
        w
    }

    /// The dense `[rows, cols]` tensor on `dev` in `dtype`.
    pub fn to_tensor(&self, dev: &Device, dtype: DType) -> Result<Tensor> {
        Tensor::from_vec(self.to_dense(), (self.rows, self.cols), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_counts() -> Result<()> {
        let w = [0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let s = SparseMatrix::from_dense(&w, 3, 3)?;
        assert_eq!(s.nnz(), 3);
        assert_eq!(s.row_ptr, vec![0, 1, 2, 3]);
        assert_eq!(s.counts, vec![1, 1, 1]);
        assert_eq!(&s.col_off[..3], &[1, 0, 2]);
        assert_eq!(s.to_dense(), w.to_vec());
        assert!((s.sparsity() - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(s.bytes(), 3 * 4 + (3 + PAD) + 3 * 2 + 4 * 4);
        assert_eq!(s.blocked().gathers, 1);
        // Later column blocks: column c is offset c % BLOCK of block c / BLOCK.
        let bl = kernels::BLOCK;
        let mut w = vec![0f32; 2 * 600];
        w[300] = 1.0;
        w[600 + 599] = 2.0;
        let s = SparseMatrix::from_dense(&w, 2, 600)?;
        let nb = 600usize.div_ceil(bl);
        let mut counts = vec![0u16; 2 * nb];
        counts[300 / bl] = 1;
        counts[nb + 599 / bl] = 1;
        assert_eq!(s.counts, counts);
        assert_eq!(&s.col_off[..2], &[(300 % bl) as u8, (599 % bl) as u8]);
        assert_eq!(s.to_dense(), w);
        Ok(())
    }

    #[test]
    fn gathers_cover_all_but_one_block_in_a_thousand() {
        // 2000 blocks: at most 2 may exceed 16·g.
        let mut counts = vec![10u16; 2000];
        assert_eq!(gathers_for(&counts), 1);
        counts[..2].iter_mut().for_each(|c| *c = 64);
        assert_eq!(gathers_for(&counts), 1);
        counts[2] = 17;
        assert_eq!(gathers_for(&counts), 2);
        counts[3..10].iter_mut().for_each(|c| *c = 40);
        assert_eq!(gathers_for(&counts), 3);
        // Few blocks: none may exceed.
        assert_eq!(gathers_for(&[3, 33]), 3);
        assert_eq!(gathers_for(&[]), 1);
    }

    #[test]
    fn auto_keeps_dense_below_the_crossover_and_off_the_cpu_f32() {
        let cpu = Device::Cpu;
        assert!(!SparseMode::Auto.use_sparse(64, 64, 0.3, &cpu, DType::F32));
        assert!(SparseMode::Auto.use_sparse(64, 64, 0.7, &cpu, DType::F32));
        assert!(!SparseMode::Auto.use_sparse(64, 64, 0.7, &cpu, DType::BF16));
        assert!(!SparseMode::Off.use_sparse(64, 64, 0.9, &cpu, DType::F32));
        assert!(SparseMode::On.use_sparse(64, 64, 0.1, &cpu, DType::F32));
        assert!(!SparseMode::On.use_sparse(64, 64, 0.0, &cpu, DType::F32));
    }
}
