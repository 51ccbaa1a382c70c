//! Sparse execution of pruned linears on the CPU: what pruning buys.
//!
//! A pruned linear's weight is stored as bitmask compressed rows ([`SparseMatrix`]: f32 values
//! packed row by row, one bit per weight saying which are kept), 4 bytes per kept weight plus
//! one bit per weight instead of 4 bytes per weight (0.33× dense at 70 % zeros), and multiplied
//! without touching the zeros ([`kernels`]). Values stay in f32: the product equals the
//! dense-with-zeros product up to summation order.
//!
//! Why this layout: measured on the demo's linear shapes at p 0.7 (AMD Zen 4, 2 threads, in
//! one probe), a dense GEMV took 21–25 ms per pass, compressed rows with u8 column offsets
//! and 16-lane gathers from the L1-resident input 12.5 ms, and the bitmask with a 16-value
//! load expanded between registers 9 ms (the expand's load form, `vexpandps zmm, m512`, took
//! 17–19 ms: it is microcoded on Zen 4). Packing the input under the mask (`vcompressps`)
//! instead of spreading the values took 0.8× the expand's time in a later probe (over all
//! 210 linears of one decode step: 5.7–6.2 ms against 7.2–7.7 ms; streaming the same bytes
//! 4.2–4.7 ms). The sparse benchmark (README, "Sparse execution")
//! measures both uses (decode and evaluation) against dense in one run. [`SparseMode`] decides
//! per linear from the measured crossover (README, "Sparse execution").

pub mod kernels;
mod op;
pub mod pool;

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

pub use op::{dense_gemv, FrozenMatmul, SparseMatmul};

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

/// A `[rows, cols]` f32 matrix in bitmask compressed rows ([`kernels::Blocked`]): per kept
/// weight its f32 value, per row and block of 64 columns a u64 mask of the kept columns, per
/// row a u32 offset.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseMatrix {
    rows: usize,
    cols: usize,
    row_ptr: Vec<u32>,
    masks: Vec<u64>,
    /// Followed by [`kernels::PAD`] zeros (the kernels load 16 values at a time).
    values: Vec<f32>,
    /// No value is infinite or NaN (the matrix–vector kernel then loads values unmasked).
    finite: bool,
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
        let per_row: Vec<(Vec<u64>, Vec<f32>)> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let row = &w[r * cols..(r + 1) * cols];
                let mut masks = vec![0u64; nb];
                // Sized first: growing by `push` reallocated a few times per row, which was
                // most of the conversion (7 % of an 8-window `dlpx eval` of a saved p 0.7 folder).
                let mut v = Vec::with_capacity(row.iter().filter(|&&x| x != 0.0).count());
                for (j, &x) in row.iter().enumerate() {
                    if x != 0.0 {
                        masks[j / kernels::BLOCK] |= 1 << (j % kernels::BLOCK);
                        v.push(x);
                    }
                }
                (masks, v)
            })
            .collect();
        let nnz: usize = per_row.iter().map(|r| r.1.len()).sum();
        let mut row_ptr = Vec::with_capacity(rows + 1);
        let mut masks = Vec::with_capacity(rows * nb);
        let mut values = Vec::with_capacity(nnz + kernels::PAD);
        row_ptr.push(0u32);
        for (m, v) in per_row {
            masks.extend_from_slice(&m);
            values.extend_from_slice(&v);
            row_ptr.push(values.len() as u32);
        }
        Ok(Self::padded(rows, cols, row_ptr, masks, values))
    }

    /// A matrix from a packed bitmask and its kept values, as compressed-tensors'
    /// `sparse-bitmask` stores a weight: `bits` holds `⌈cols/8⌉` bytes per row, bit `j` (least
    /// significant first) of byte `k` set when column `8k + j` is kept; `values` are the kept
    /// weights in row-major order. The bits are checked (count, nothing past the last column),
    /// since the kernels rely on them.
    pub fn from_packed_bits(
        rows: usize,
        cols: usize,
        bits: &[u8],
        values: Vec<f32>,
    ) -> Result<Self> {
        let per_row = cols.div_ceil(8);
        if bits.len() != rows * per_row {
            candle_core::bail!(
                "sparse: {} bitmask bytes for a [{rows}, {cols}] matrix ({} expected)",
                bits.len(),
                rows * per_row
            );
        }
        if rows * cols >= u32::MAX as usize {
            candle_core::bail!("sparse: [{rows}, {cols}] exceeds the u32 row offsets");
        }
        let nb = cols.div_ceil(kernels::BLOCK);
        let tail = cols % kernels::BLOCK;
        let mut masks = vec![0u64; rows * nb];
        let mut row_ptr = Vec::with_capacity(rows + 1);
        row_ptr.push(0u32);
        let mut kept = 0usize;
        for (r, row) in bits.chunks(per_row.max(1)).take(rows).enumerate() {
            for (b, m) in masks[r * nb..(r + 1) * nb].iter_mut().enumerate() {
                let src = &row[8 * b..(8 * b + 8).min(per_row)];
                let mut word = [0u8; 8];
                word[..src.len()].copy_from_slice(src);
                *m = u64::from_le_bytes(word);
                kept += m.count_ones() as usize;
            }
            if tail != 0 && masks[r * nb + nb - 1] >> tail != 0 {
                candle_core::bail!("sparse: row {r} of the bitmask marks columns past {cols}");
            }
            row_ptr.push(kept as u32);
        }
        if rows > 0 && per_row == 0 {
            row_ptr.resize(rows + 1, 0);
        }
        if values.len() != kept {
            candle_core::bail!(
                "sparse: {} values for {kept} set bits of the bitmask",
                values.len()
            );
        }
        Ok(Self::padded(rows, cols, row_ptr, masks, values))
    }

    /// The matrix from its parts, with the [`kernels::PAD`] zeros the kernels read past the end.
    fn padded(
        rows: usize,
        cols: usize,
        row_ptr: Vec<u32>,
        masks: Vec<u64>,
        mut values: Vec<f32>,
    ) -> Self {
        values.extend_from_slice(&[0f32; kernels::PAD]);
        let finite = values.iter().all(|v| v.is_finite());
        Self {
            rows,
            cols,
            row_ptr,
            masks,
            values,
            finite,
        }
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
        self.values.len() - kernels::PAD
    }

    /// Fraction of zeros.
    pub fn sparsity(&self) -> f64 {
        match self.rows * self.cols {
            0 => 0.0,
            n => 1.0 - self.nnz() as f64 / n as f64,
        }
    }

    /// Bytes held: values (with their padding), masks and row offsets.
    pub fn bytes(&self) -> usize {
        self.values.len() * 4 + self.masks.len() * 8 + self.row_ptr.len() * 4
    }

    pub fn blocked(&self) -> kernels::Blocked<'_> {
        kernels::Blocked {
            rows: self.rows,
            cols: self.cols,
            row_ptr: &self.row_ptr,
            masks: &self.masks,
            values: &self.values,
            finite: self.finite,
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
                    let mut m = self.masks[r * nb + b];
                    while m != 0 {
                        row[b * kernels::BLOCK + m.trailing_zeros() as usize] = self.values[k];
                        m &= m - 1;
                        k += 1;
                    }
                }
            });
        w
    }

    /// `Wᵀ` `[cols, rows]` in compressed rows.
    pub fn transposed(&self) -> Result<Self> {
        let w = self.to_dense();
        let mut t = vec![0f32; w.len()];
        t.par_chunks_mut(self.rows.max(1))
            .enumerate()
            .for_each(|(c, row)| {
                for (r, v) in row.iter_mut().enumerate() {
                    *v = w[r * self.cols + c];
                }
            });
        Self::from_dense(&t, self.cols, self.rows)
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
    fn round_trip_and_masks() -> Result<()> {
        let w = [0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
        let s = SparseMatrix::from_dense(&w, 3, 3)?;
        assert_eq!(s.nnz(), 3);
        assert_eq!(s.row_ptr, vec![0, 1, 2, 3]);
        assert_eq!(s.masks, vec![0b010, 0b001, 0b100]);
        assert_eq!(&s.values[..3], &[1.5, -2.0, 3.0]);
        assert_eq!(s.to_dense(), w.to_vec());
        assert!((s.sparsity() - 6.0 / 9.0).abs() < 1e-12);
        assert_eq!(s.bytes(), (3 + kernels::PAD) * 4 + 3 * 8 + 4 * 4);
        // Later column blocks: column c is bit c % BLOCK of block c / BLOCK.
        let bl = kernels::BLOCK;
        let mut w = vec![0f32; 2 * 600];
        w[300] = 1.0;
        w[600 + 599] = 2.0;
        let s = SparseMatrix::from_dense(&w, 2, 600)?;
        let nb = 600usize.div_ceil(bl);
        let mut masks = vec![0u64; 2 * nb];
        masks[300 / bl] = 1 << (300 % bl);
        masks[nb + 599 / bl] = 1 << (599 % bl);
        assert_eq!(s.masks, masks);
        assert_eq!(s.to_dense(), w);
        Ok(())
    }

    /// numpy's `packbits(axis=-1, bitorder="little")` of the nonzeros, written out by hand.
    fn packed(w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
        let per_row = cols.div_ceil(8);
        let mut out = vec![0u8; rows * per_row];
        for r in 0..rows {
            for c in 0..cols {
                if w[r * cols + c] != 0.0 {
                    out[r * per_row + c / 8] |= 1 << (c % 8);
                }
            }
        }
        out
    }

    #[test]
    fn packed_bits_give_the_same_matrix_as_the_dense_values() -> Result<()> {
        for (rows, cols) in [(3, 1), (5, 7), (4, 64), (3, 130), (2, 576)] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| match (i * 7919) % 10 {
                    0..=6 => 0.0,
                    k => k as f32 - 0.5 * i as f32,
                })
                .collect();
            let kept: Vec<f32> = w.iter().copied().filter(|&x| x != 0.0).collect();
            let s = SparseMatrix::from_packed_bits(rows, cols, &packed(&w, rows, cols), kept)?;
            assert_eq!(
                s,
                SparseMatrix::from_dense(&w, rows, cols)?,
                "{rows}x{cols}"
            );
        }
        // Wrong counts and bits past the last column are refused.
        assert!(SparseMatrix::from_packed_bits(1, 7, &[0b11], vec![1.0]).is_err());
        assert!(SparseMatrix::from_packed_bits(1, 7, &[0b1000_0001], vec![1.0, 2.0]).is_err());
        assert!(SparseMatrix::from_packed_bits(2, 7, &[1], vec![1.0]).is_err());
        Ok(())
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
