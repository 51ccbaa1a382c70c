//! Pruning masks (`1` = keep) for one weight matrix `[out, in]` stored row-major.
//! Wanda (Sun et al., 2024), magnitude, and N:M patterns.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::select::kth_smallest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// |W|, compared over the whole matrix.
    Magnitude,
    /// |W| · ‖X_j‖, compared within each output row.
    Wanda,
    /// OBS with the layer Hessian: prunes per 128-column block and updates the kept weights
    /// (faithful mode only).
    #[serde(rename = "sparsegpt")]
    SparseGpt,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Magnitude, Metric::Wanda, Metric::SparseGpt];
}

/// Sparsity pattern: unstructured, or N of every M consecutive input weights per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Pattern {
    Unstructured,
    /// N of every M pruned. The global target becomes N/M; with DLP each block gets its own
    /// `N_l = round(M · s_l)` (§10.6), so α = 0 (or uniform allocation) is plain N:M.
    NOfM {
        n: usize,
        m: usize,
    },
}

impl Pattern {
    /// The patterns the explorer cycles through.
    pub const CHOICES: [Pattern; 3] = [
        Pattern::Unstructured,
        Pattern::NOfM { n: 2, m: 4 },
        Pattern::NOfM { n: 4, m: 8 },
    ];
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unstructured => write!(f, "unstructured"),
            Self::NOfM { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "unstructured" {
            return Ok(Self::Unstructured);
        }
        let (n, m) = s
            .split_once(':')
            .ok_or(format!("pattern `{s}`: use unstructured, 2:4 or 4:8"))?;
        let n: usize = n
            .parse()
            .map_err(|_| format!("pattern `{s}`: N is not a number"))?;
        let m: usize = m
            .parse()
            .map_err(|_| format!("pattern `{s}`: M is not a number"))?;
        if m == 0 || n > m {
            return Err(format!(
                "pattern `{s}`: need 0 ≤ N ≤ M and M > 0 (N of every M weights is pruned)"
            ));
        }
        Ok(Self::NOfM { n, m })
    }
}

/// Wanda metric of one matrix: `|w[r, c]| · sqrt(sq_norm[c])`, in f32 (§1). Rows in parallel.
pub fn wanda_metric(w: &[f32], cols: usize, sq_norm: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    wanda_metric_into(w, cols, sq_norm, &mut out);
    out
}

/// [`wanda_metric`] into a reused buffer: a 7B block's scores are 800 MB per pass, and fresh
/// allocations of that size cost as much in page faults as the arithmetic.
pub fn wanda_metric_into(w: &[f32], cols: usize, sq_norm: &[f32], out: &mut Vec<f32>) {
    let scale: Vec<f32> = sq_norm.iter().map(|v| v.sqrt()).collect();
    out.resize(w.len(), 0.0);
    out.par_chunks_mut(cols)
        .zip(w.par_chunks(cols))
        .for_each(|(o, row)| {
            for ((o, x), s) in o.iter_mut().zip(row).zip(&scale) {
                *o = x.abs() * s;
            }
        });
}

/// Per output row, prune the `floor(cols · s)` smallest metric entries; ties fall to the lower
/// column index (a stable ascending sort's order), found by selection rather than a full sort.
/// Rows in parallel (each row's selection is independent, so the mask is the same on any
/// number of threads).
pub fn per_row(metric: &[f32], cols: usize, sparsity: f64) -> Vec<u8> {
    let k = ((cols as f64 * sparsity).floor().max(0.0) as usize).min(cols);
    let mut mask = vec![1u8; metric.len()];
    if k == 0 {
        return mask;
    }
    mask.par_chunks_mut(cols)
        .zip(metric.par_chunks(cols))
        .for_each_init(
            || Vec::<u32>::with_capacity(cols),
            |idx, (m, row)| {
                idx.clear();
                idx.extend(0..cols as u32);
                if k < cols {
                    idx.select_nth_unstable_by(k - 1, |&a, &b| {
                        row[a as usize].total_cmp(&row[b as usize]).then(a.cmp(&b))
                    });
                }
                for &c in &idx[..k] {
                    m[c as usize] = 0;
                }
            },
        );
    mask
}

/// Magnitude over the whole matrix: `thresh = sorted(|W|)[floor(numel · s)]`, prune `|W| ≤ thresh`
/// (k+1 entries plus ties, as the reference code does). The threshold by an exact radix select
/// on all cores.
pub fn per_matrix(metric: &[f32], sparsity: f64) -> Vec<u8> {
    if sparsity <= 0.0 || metric.is_empty() {
        return vec![1u8; metric.len()];
    }
    let k = ((metric.len() as f64 * sparsity).floor() as usize).min(metric.len() - 1);
    let thresh = kth_smallest(metric, k);
    metric.par_iter().map(|&x| u8::from(x > thresh)).collect()
}

/// In every group of `m` consecutive input columns of every row, prune the `n` smallest (ties to
/// the lower column). Groups in parallel.
pub fn n_of_m(metric: &[f32], cols: usize, n: usize, m: usize) -> Vec<u8> {
    let mut mask = vec![1u8; metric.len()];
    if n == 0 {
        return mask;
    }
    // Groups never straddle rows when cols % m == 0 (checked by the caller).
    debug_assert!(cols.is_multiple_of(m));
    mask.par_chunks_mut(m)
        .zip(metric.par_chunks(m))
        .for_each_init(
            || Vec::<usize>::with_capacity(m),
            |idx, (mk, group)| {
                idx.clear();
                idx.extend(0..group.len());
                idx.sort_by(|&a, &b| group[a].total_cmp(&group[b]).then(a.cmp(&b)));
                for &i in idx.iter().take(n.min(group.len())) {
                    mk[i] = 0;
                }
            },
        );
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_prunes_floor_k_with_stable_ties() {
        let metric = [
            3.0, 1.0, 1.0, 2.0, 5.0, /* row 2 */ 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        let m = per_row(&metric, 5, 0.5); // k = floor(2.5) = 2
        assert_eq!(&m[..5], &[1, 0, 0, 1, 1]);
        assert_eq!(
            &m[5..],
            &[0, 0, 1, 1, 1],
            "ties go to the lower column index"
        );
    }

    #[test]
    fn per_row_matches_a_stable_sort() {
        let cols = 37;
        let metric: Vec<f32> = (0..cols * 9).map(|i| ((i * 7919) % 13) as f32).collect();
        for s in [0.1, 0.5, 0.7, 0.99] {
            let got = per_row(&metric, cols, s);
            let k = (cols as f64 * s).floor() as usize;
            for (r, row) in metric.chunks(cols).enumerate() {
                let mut order: Vec<usize> = (0..cols).collect();
                order.sort_by(|&a, &b| row[a].total_cmp(&row[b])); // stable
                let mut want = vec![1u8; cols];
                order[..k].iter().for_each(|&c| want[c] = 0);
                assert_eq!(&got[r * cols..(r + 1) * cols], &want[..]);
            }
        }
    }

    /// Values with many exact ties, so that any split-dependent tie-break would show.
    fn tied_values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 52) % 97) as f32 * 0.125
            })
            .collect()
    }

    #[test]
    fn masks_are_the_same_on_any_number_of_threads() {
        let (rows, cols) = (301, 256);
        let metric = tied_values(rows * cols, 3);
        let w: Vec<f32> = tied_values(rows * cols, 4)
            .iter()
            .map(|v| v - 6.0)
            .collect();
        let norms = tied_values(cols, 5);
        let run = || {
            (
                wanda_metric(&w, cols, &norms),
                per_row(&metric, cols, 0.7),
                per_matrix(&metric, 0.55),
                n_of_m(&metric, cols, 2, 4),
            )
        };
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1).install(run);
        let four = pool(4).install(run);
        assert!(one == four, "1 and 4 threads give different masks");
        // And the sequential definitions: a stable sort per row, the k-th value of a full sort.
        let k = (cols as f64 * 0.7).floor() as usize;
        for (r, row) in metric.chunks(cols).enumerate().step_by(37) {
            let mut order: Vec<usize> = (0..cols).collect();
            order.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
            let mut want = vec![1u8; cols];
            order[..k].iter().for_each(|&c| want[c] = 0);
            assert_eq!(&one.1[r * cols..(r + 1) * cols], &want[..]);
        }
        let mut sorted = metric.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let thresh = sorted[(metric.len() as f64 * 0.55).floor() as usize];
        let want: Vec<u8> = metric.iter().map(|&x| u8::from(x > thresh)).collect();
        assert_eq!(one.2, want);
    }

    #[test]
    fn per_matrix_prunes_k_plus_one_and_ties() {
        let m = per_matrix(&[4.0, 1.0, 2.0, 3.0, 2.0, 6.0], 0.3); // k=1 → thresh = 2.0
        assert_eq!(m, vec![1, 0, 0, 1, 0, 1]);
    }

    #[test]
    fn n_of_m_prunes_n_per_group() {
        let metric = [4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0];
        assert_eq!(n_of_m(&metric, 8, 2, 4), vec![1, 0, 1, 0, 0, 1, 1, 0]);
        assert!("3:2".parse::<Pattern>().unwrap_err().contains("N ≤ M"));
        assert_eq!(
            "2:4".parse::<Pattern>().unwrap(),
            Pattern::NOfM { n: 2, m: 4 }
        );
    }
}
