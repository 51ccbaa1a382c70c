//! SparseGPT (Frantar & Alistarh, 2023): per linear, the layer Hessian H = 2/N Σ XᵀX of its inputs, then
//! blockwise OBS pruning with the upper Cholesky factor of H⁻¹ (block size 128, the mask of each
//! block chosen after the earlier blocks' updates, lazy update of later columns). The linear
//! algebra (Cholesky, inverse, matmul) is faer's; the sequential column loop is ours, in f64.

use candle_core::{DType, Tensor};
use color_eyre::eyre::{bail, eyre, Result};
use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use rayon::prelude::*;

/// Columns per OBS block, as the reference.
pub const BLOCK: usize = 128;
/// Dampening: 1 % of the mean diagonal.
pub const PERCDAMP: f64 = 0.01;

/// The Hessian of one linear's inputs, accumulated over sequences.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// `Σ XᵀX` over all tokens seen so far, `[cols, cols]` f32 on the model's device.
    pub sum: Tensor,
    /// Sequences seen (the reference's `nsamples`).
    pub n: usize,
}

impl Hessian {
    pub fn new(cols: usize, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            sum: Tensor::zeros((cols, cols), DType::F32, device)?,
            n: 0,
        })
    }

    /// Add a batch `[b, t, cols]`: every row of the batch is one sequence.
    pub fn add_batch(&mut self, x: &Tensor) -> Result<()> {
        let (b, t, c) = x.dims3()?;
        let x = x.to_dtype(DType::F32)?.reshape((b * t, c))?;
        self.sum = (&self.sum + x.t()?.matmul(&x)?)?;
        self.n += b;
        Ok(())
    }

    /// `H = 2/N Σ XᵀX` (what the reference's running update converges to exactly), in f64.
    pub fn matrix(&self) -> Result<Mat<f64>> {
        if self.n == 0 {
            bail!("no calibration samples reached this layer");
        }
        let c = self.sum.dim(0)?;
        let v = self.sum.flatten_all()?.to_vec1::<f32>()?;
        let s = 2.0 / self.n as f64;
        Ok(Mat::from_fn(c, c, |i, j| v[i * c + j] as f64 * s))
    }
}

/// How many weights to prune: a ratio per 128-column block, or N of every M per row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Ratio(f64),
    NOfM { n: usize, m: usize },
}

/// The upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU) after dead-column handling and dampening.
/// Returns U and the dead columns (zero diagonal: inputs that are always zero).
pub fn hinv_upper(h: &Mat<f64>) -> Result<(Mat<f64>, Vec<bool>)> {
    let c = h.nrows();
    let mut h = h.clone();
    let dead: Vec<bool> = (0..c).map(|i| h[(i, i)] == 0.0).collect();
    for i in 0..c {
        if dead[i] {
            h[(i, i)] = 1.0;
        }
    }
    let damp = PERCDAMP * (0..c).map(|i| h[(i, i)]).sum::<f64>() / c as f64;
    for i in 0..c {
        h[(i, i)] += damp;
    }
    let hinv = h
        .llt(Side::Lower)
        .map_err(|e| {
            eyre!(
                "the layer Hessian is not positive definite ({e:?}); use more calibration samples"
            )
        })?
        .inverse();
    let l = hinv
        .llt(Side::Lower)
        .map_err(|e| eyre!("H⁻¹ is not positive definite ({e:?})"))?
        .L()
        .to_owned();
    Ok((l.transpose().to_owned(), dead))
}

/// Prune `w` (`rows × cols`, row-major, f64) in place with the OBS updates; returns the keep
/// mask (`1` = kept). Pruned entries end exactly zero; the others are updated to compensate.
pub fn fasterprune(
    w: &mut [f64],
    rows: usize,
    cols: usize,
    h: &Mat<f64>,
    target: Target,
) -> Result<Vec<u8>> {
    let (u, dead) = hinv_upper(h)?;
    for r in 0..rows {
        for c in 0..cols {
            if dead[c] {
                w[r * cols + c] = 0.0;
            }
        }
    }
    let mut mask = vec![1u8; rows * cols];
    let mut i1 = 0;
    while i1 < cols {
        let i2 = (i1 + BLOCK).min(cols);
        let bs = i2 - i1;
        // The block's columns, row-major [rows, bs], and the pruning mask (true = prune).
        let mut w1: Vec<f64> = (0..rows)
            .flat_map(|r| w[r * cols + i1..r * cols + i2].to_vec())
            .collect();
        let mut prune = vec![false; rows * bs];
        if let Target::Ratio(s) = target {
            // tmp = W1² / diag(U)², thresholded at its int(numel·s)-th smallest value (`<=`).
            let tmp: Vec<f64> = (0..rows * bs)
                .map(|k| {
                    let d = u[(i1 + k % bs, i1 + k % bs)];
                    w1[k] * w1[k] / (d * d)
                })
                .collect();
            let k = ((tmp.len() as f64) * s) as usize;
            if k < tmp.len() {
                let mut sorted = tmp.clone();
                let (_, kth, _) = sorted.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
                let thr = *kth;
                for (p, t) in prune.iter_mut().zip(&tmp) {
                    *p = *t <= thr;
                }
            } else {
                prune.iter_mut().for_each(|p| *p = true);
            }
        }
        // The block of U, contiguous, and its diagonal.
        let ublk: Vec<f64> = (0..bs * bs)
            .map(|k| u[(i1 + k / bs, i1 + k % bs)])
            .collect();
        let diag: Vec<f64> = (0..bs).map(|i| ublk[i * bs + i]).collect();
        let mut err = vec![0f64; rows * bs];
        // Rows are independent within a block (the ratio mask is already chosen): parallel.
        w1.par_chunks_mut(bs)
            .zip(prune.par_chunks_mut(bs))
            .zip(err.par_chunks_mut(bs))
            .for_each(|((row, pr), er)| {
                for i in 0..bs {
                    if let Target::NOfM { n, m } = target {
                        if i % m == 0 && n > 0 {
                            let width = m.min(bs - i);
                            let score = |j: usize| row[j] * row[j] / (diag[j] * diag[j]);
                            let mut idx: Vec<usize> = (i..i + width).collect();
                            // The N smallest (ties to the lower column: a stable sort).
                            idx.sort_by(|&a, &b| score(a).total_cmp(&score(b)));
                            for &j in idx.iter().take(n.min(width)) {
                                pr[j] = true;
                            }
                        }
                    }
                    let wv = row[i];
                    let q = if pr[i] { 0.0 } else { wv };
                    let e = (wv - q) / diag[i];
                    er[i] = e;
                    if e != 0.0 {
                        // OBS update of this row's later columns within the block.
                        let urow = &ublk[i * bs + i..(i + 1) * bs];
                        for (x, uv) in row[i..].iter_mut().zip(urow) {
                            *x -= e * uv;
                        }
                    }
                    row[i] = q;
                }
            });
        for r in 0..rows {
            for j in 0..bs {
                w[r * cols + i1 + j] = w1[r * bs + j];
                if prune[r * bs + j] {
                    mask[r * cols + i1 + j] = 0;
                    w[r * cols + i1 + j] = 0.0;
                }
            }
        }
        // Lazy update of the later columns: W[:, i2:] -= Err1 @ U[i1:i2, i2:].
        if i2 < cols {
            let e = Mat::<f64>::from_fn(rows, bs, |r, j| err[r * bs + j]);
            let rest = u.as_ref().submatrix(i1, i2, bs, cols - i2);
            let upd = &e * rest;
            for r in 0..rows {
                for j in 0..cols - i2 {
                    w[r * cols + i2 + j] -= upd[(r, j)];
                }
            }
        }
        i1 = i2;
    }
    for r in 0..rows {
        for c in 0..cols {
            if dead[c] {
                mask[r * cols + c] = 0;
            }
        }
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A direct transcription of sequential OBS without the Cholesky and lazy-batch tricks:
    /// for each column i, invert the Hessian of the not-yet-processed columns densely and
    /// spread the pruning error of column i over all later columns.
    fn direct_obs(w0: &[f64], rows: usize, cols: usize, h: &Mat<f64>, s: f64) -> Vec<f64> {
        let mut hd = h.clone();
        let damp = PERCDAMP * (0..cols).map(|i| hd[(i, i)]).sum::<f64>() / cols as f64;
        for i in 0..cols {
            hd[(i, i)] += damp;
        }
        // Sub-inverses F_i = inverse(H[i.., i..]).
        let finv: Vec<Mat<f64>> = (0..cols)
            .map(|i| {
                let sub = hd.as_ref().submatrix(i, i, cols - i, cols - i).to_owned();
                sub.llt(Side::Lower).unwrap().inverse()
            })
            .collect();
        let mut w = w0.to_vec();
        let mut i1 = 0;
        while i1 < cols {
            let i2 = (i1 + BLOCK).min(cols);
            let bs = i2 - i1;
            let tmp: Vec<f64> = (0..rows * bs)
                .map(|k| {
                    let (r, j) = (k / bs, i1 + k % bs);
                    w[r * cols + j].powi(2) / finv[j][(0, 0)]
                })
                .collect();
            let mut sorted = tmp.clone();
            sorted.sort_by(|a, b| a.total_cmp(b));
            let thr = sorted[(tmp.len() as f64 * s) as usize];
            for i in i1..i2 {
                let f = &finv[i];
                for r in 0..rows {
                    if tmp[r * bs + i - i1] <= thr {
                        let e = w[r * cols + i] / f[(0, 0)];
                        for j in i..cols {
                            w[r * cols + j] -= e * f[(0, j - i)];
                        }
                        w[r * cols + i] = 0.0;
                    }
                }
            }
            i1 = i2;
        }
        w
    }

    fn random(n: usize, seed: u64) -> Vec<f64> {
        // A small LCG: deterministic, no extra dependency.
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn blockwise_update_matches_a_direct_obs_solve() {
        let (rows, cols, samples) = (6, 300, 400);
        let z = random(samples * cols, 7);
        // Inputs with correlated neighbouring columns, so that compensation matters.
        let x: Vec<f64> = (0..samples * cols)
            .map(|k| {
                let (s, i) = (k / cols, k % cols);
                z[k] + 0.7 * z[s * cols + (i + 1) % cols]
            })
            .collect();
        let h = Mat::<f64>::from_fn(cols, cols, |i, j| {
            (0..samples)
                .map(|s| x[s * cols + i] * x[s * cols + j])
                .sum::<f64>()
                * 2.0
                / samples as f64
        });
        let w0 = random(rows * cols, 11);
        let mut w = w0.clone();
        let mask = fasterprune(&mut w, rows, cols, &h, Target::Ratio(0.5)).unwrap();
        let want = direct_obs(&w0, rows, cols, &h, 0.5);
        let max = w
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(max < 1e-4, "max |Δ| = {max}");
        // Pruned entries are exact zeros and about half of every block is pruned.
        let zeros = mask.iter().filter(|&&m| m == 0).count();
        assert!(w.iter().zip(&mask).all(|(v, m)| *m == 1 || *v == 0.0));
        assert!(
            (zeros as f64 / mask.len() as f64 - 0.5).abs() < 0.01,
            "{zeros}"
        );
        // The update helps: the reconstruction error (W−W0) H (W−W0)ᵀ is below plain masking.
        let err = |v: &[f64]| -> f64 {
            (0..rows)
                .map(|r| {
                    let d: Vec<f64> = (0..cols)
                        .map(|c| v[r * cols + c] - w0[r * cols + c])
                        .collect();
                    (0..cols)
                        .map(|i| d[i] * (0..cols).map(|j| h[(i, j)] * d[j]).sum::<f64>())
                        .sum::<f64>()
                })
                .sum()
        };
        let masked: Vec<f64> = w0.iter().zip(&mask).map(|(v, m)| v * *m as f64).collect();
        assert!(
            err(&w) < 0.8 * err(&masked),
            "{} vs {}",
            err(&w),
            err(&masked)
        );
    }

    #[test]
    fn n_of_m_prunes_exactly_n_per_group() {
        let (rows, cols) = (4, 16);
        let x = random(64 * cols, 3);
        let h = Mat::<f64>::from_fn(cols, cols, |i, j| {
            (0..64)
                .map(|s| x[s * cols + i] * x[s * cols + j])
                .sum::<f64>()
                / 32.0
        });
        let mut w = random(rows * cols, 5);
        let mask = fasterprune(&mut w, rows, cols, &h, Target::NOfM { n: 2, m: 4 }).unwrap();
        for g in mask.chunks(4) {
            assert_eq!(g.iter().filter(|&&m| m == 0).count(), 2);
        }
    }
}
