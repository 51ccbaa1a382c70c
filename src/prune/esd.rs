//! AlphaPruning's heavy-tail metric (Lu et al., 2024): per linear, the Hill/MLE estimate α̂ of
//! the power-law tail of the empirical spectral density (λ = σ² of W), with the tail start xmin
//! searched near the peak of the log-histogram, as `esd_utils.net_esd_estimator(fix_fingers =
//! "xmin_peak", bins = 100)` does — including its mixed log/linear search window.

use color_eyre::eyre::{eyre, Result};

/// Histogram bins of log10 λ used to find the peak.
const BINS: usize = 100;
/// Eigenvalues at or below this are dropped so that ln λ stays finite (the reference's
/// `EVALS_THRESH`; only rank-deficient matrices have any).
const EVALS_THRESH: f64 = 1e-5;

/// Eigenvalues λ = σ² of `w` (`rows × cols`, row-major), ascending: the eigenvalues of the
/// smaller Gram matrix (W Wᵀ or Wᵀ W) in f64, several times faster than an SVD and, from f32
/// weights, as accurate as the reference's f32 `svdvals`.
pub fn eigenvalues(w: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    let gram = gram(w, rows, cols);
    let mut e = gram
        .self_adjoint_eigenvalues(faer::Side::Lower)
        .map_err(|e| eyre!("eigenvalue solver did not converge: {e:?}"))?;
    // Round-off can make the smallest eigenvalues of a PSD matrix slightly negative.
    e.iter_mut().for_each(|x| *x = x.max(0.0));
    Ok(e)
}

/// The smaller Gram matrix of `w` in f64, summed over slices of 1024 along the long side, so
/// the f64 copy of a 7B `down_proj` (360 MB) is never made: only a slice of it at a time.
fn gram(w: &[f32], rows: usize, cols: usize) -> faer::Mat<f64> {
    use faer::linalg::matmul::matmul;
    const SLICE: usize = 1024;
    let small = rows.min(cols);
    let mut g = faer::Mat::<f64>::zeros(small, small);
    let long = rows.max(cols);
    for start in (0..long).step_by(SLICE) {
        let len = SLICE.min(long - start);
        // `s` is small × len: a slice of W's columns (W Wᵀ) or of Wᵀ's columns (Wᵀ W).
        let s = if rows <= cols {
            faer::Mat::<f64>::from_fn(small, len, |i, j| w[i * cols + start + j] as f64)
        } else {
            faer::Mat::<f64>::from_fn(small, len, |i, j| w[(start + j) * cols + i] as f64)
        };
        let beta = match start {
            0 => faer::Accum::Replace,
            _ => faer::Accum::Add,
        };
        matmul(
            g.as_mut(),
            beta,
            s.as_ref(),
            s.transpose(),
            1.0,
            faer::Par::rayon(0),
        );
    }
    g
}

/// α̂ of ascending eigenvalues: among xmin candidates in the reference's window around the
/// histogram peak, the Hill estimate `1 + n / (Σ ln λ_i − n ln xmin)` with the smallest
/// Kolmogorov–Smirnov distance. Returns 0 when there are fewer than two eigenvalues.
pub fn alpha_hat(eigs: &[f64]) -> f64 {
    let e: Vec<f64> = eigs.iter().copied().filter(|&x| x > EVALS_THRESH).collect();
    let n_all = e.len();
    if n_all < 2 {
        return 0.0;
    }
    let logs: Vec<f64> = e.iter().map(|x| x.ln()).collect();
    // torch.histc over log10 λ between its min and max.
    let l10: Vec<f64> = e.iter().map(|x| x.log10()).collect();
    let (lo, hi) = (l10[0], l10[n_all - 1]);
    let mut counts = [0usize; BINS];
    for &v in &l10 {
        let b = if hi > lo {
            (((v - lo) / (hi - lo)) * BINS as f64) as usize
        } else {
            0
        };
        counts[b.min(BINS - 1)] += 1;
    }
    let peak = (0..BINS).fold(0, |a, b| if counts[b] > counts[a] { b } else { a });
    let xmin_peak = 10f64.powf(lo + (hi - lo) * peak as f64 / BINS as f64);
    // The reference's window: the lower bound is a log10, the upper a linear value (a quirk,
    // kept so that α̂ matches its precomputed metrics).
    let (xmin_min, xmin_max) = ((0.95 * xmin_peak).log10(), 1.5 * xmin_peak);

    // Suffix sums of ln λ make each candidate O(1) before its KS distance.
    let mut suffix = vec![0f64; n_all + 1];
    for i in (0..n_all).rev() {
        suffix[i] = suffix[i + 1] + logs[i];
    }
    let (mut best_d, mut best_alpha) = (1f64, 0f64);
    let mut first = true;
    for i in 0..n_all - 1 {
        let xmin = e[i];
        if xmin < xmin_min {
            continue;
        }
        if xmin > xmin_max {
            break;
        }
        let n = (n_all - i) as f64;
        let alpha = 1.0 + n / (suffix[i] - n * logs[i]);
        let mut d = 1.0;
        if alpha > 1.0 {
            d = (0..n_all - i)
                .map(|k| (1.0 - (e[i + k] / xmin).powf(1.0 - alpha) - k as f64 / n).abs())
                .fold(0f64, f64::max);
        }
        // torch.argmin over Ds initialised to 1 and alphas to 0: the first minimum wins.
        if d < best_d || (first && d <= best_d) {
            best_d = d;
            best_alpha = alpha;
        }
        first = false;
    }
    best_alpha
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eigenvalues_are_squared_singular_values() {
        // diag(3, 2) padded with a zero column: σ = 3, 2.
        let w = [3.0f32, 0.0, 0.0, 0.0, 2.0, 0.0];
        let e = eigenvalues(&w, 2, 3).unwrap();
        assert!((e[0] - 4.0).abs() < 1e-12 && (e[1] - 9.0).abs() < 1e-12);
    }

    #[test]
    fn hill_estimate_recovers_a_pareto_tail() {
        // Deterministic Pareto quantiles with density exponent a: λ = (1 − q)^(−1/(a−1)).
        let a = 3.0;
        let n = 2000;
        let e: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-1.0 / (a - 1.0)))
            .collect();
        let got = alpha_hat(&e);
        assert!((got - a).abs() < 0.15, "α̂ = {got}");
        // A heavier tail gives a smaller α̂.
        let heavy: Vec<f64> = e.iter().map(|x| x.powf(2.0)).collect();
        assert!(alpha_hat(&heavy) < got);
    }
}
