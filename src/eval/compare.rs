//! Is a perplexity difference larger than the noise of the evaluation windows? A paired
//! bootstrap: both configurations were measured on the same windows, so the windows are
//! resampled with replacement (the same draw for both) and the perplexity ratio B/A recomputed;
//! the spread of those ratios is the interval. Seeded, so a comparison is reproducible.

use color_eyre::eyre::{bail, Result};
use serde::Serialize;

use crate::rng::SplitMix64;

/// The perplexity ratio B/A with its bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioInterval {
    /// exp((Σ NLL_B − Σ NLL_A) / predictions): B's perplexity over A's.
    pub ratio: f64,
    pub lo: f64,
    pub hi: f64,
    /// Two-sided coverage, e.g. 0.95.
    pub level: f64,
    pub windows: usize,
    pub resamples: usize,
    pub seed: u64,
}

impl RatioInterval {
    /// Whether the interval excludes 1: the difference is larger than the windows' noise.
    pub fn excludes_one(&self) -> bool {
        self.hi < 1.0 || self.lo > 1.0
    }
}

/// The paired bootstrap interval of B/A from per-window NLL sums `a` and `b` (same windows, same
/// order), each window having `predictions` predicted tokens.
pub fn paired_bootstrap(
    a: &[f64],
    b: &[f64],
    predictions: usize,
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<RatioInterval> {
    if a.len() != b.len() || a.is_empty() {
        bail!(
            "the two measurements have {} and {} windows: a paired comparison needs the same windows",
            a.len(),
            b.len()
        );
    }
    if resamples == 0 || !(0.0 < level && level < 1.0) {
        bail!("need at least one resample and a level in (0, 1)");
    }
    let n = a.len();
    let tokens = (n * predictions) as f64;
    let diff: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let ratio = (diff.iter().sum::<f64>() / tokens).exp();
    let mut rng = SplitMix64::new(seed);
    let mut ratios: Vec<f64> = (0..resamples)
        .map(|_| {
            let s: f64 = (0..n).map(|_| diff[rng.below(n)]).sum();
            (s / tokens).exp()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - level) / 2.0;
    let at = |q: f64| ratios[((q * resamples as f64).floor() as usize).min(resamples - 1)];
    Ok(RatioInterval {
        ratio,
        lo: at(tail),
        hi: at(1.0 - tail),
        level,
        windows: n,
        resamples,
        seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_against_itself_is_exactly_one() {
        let a: Vec<f64> = (0..16).map(|i| 500.0 + 37.0 * (i as f64).sin()).collect();
        let r = paired_bootstrap(&a, &a, 255, 1000, 0.95, 0).unwrap();
        assert_eq!((r.ratio, r.lo, r.hi), (1.0, 1.0, 1.0));
        assert!(!r.excludes_one());
    }

    #[test]
    fn a_consistent_gap_excludes_one_and_noise_does_not() {
        let a: Vec<f64> = (0..32)
            .map(|i| 600.0 + 50.0 * ((i * 7) as f64).cos())
            .collect();
        // B worse by 0.05 nats per prediction in every window, plus window noise.
        let worse: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + 255.0 * 0.05 + 3.0 * (i as f64).sin())
            .collect();
        let r = paired_bootstrap(&a, &worse, 255, 1000, 0.95, 1).unwrap();
        assert!(r.excludes_one() && r.lo > 1.0, "{r:?}");
        assert!((r.ratio - 0.05f64.exp()).abs() < 0.01, "{r:?}");
        assert!(r.lo <= r.ratio && r.ratio <= r.hi);
        // Zero-mean differences: the interval straddles 1.
        let noisy: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + if i % 2 == 0 { 20.0 } else { -20.0 })
            .collect();
        let r = paired_bootstrap(&a, &noisy, 255, 1000, 0.95, 1).unwrap();
        assert!(!r.excludes_one(), "{r:?}");
        // Seeded: the same call gives the same interval.
        assert_eq!(r, paired_bootstrap(&a, &noisy, 255, 1000, 0.95, 1).unwrap());
        assert!(paired_bootstrap(&a, &a[..3], 255, 10, 0.95, 0).is_err());
    }
}
