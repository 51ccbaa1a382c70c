//! Layer-wise sparsity allocation: a pure function of cached block statistics and parameters
//! (microseconds), which is what makes reallocation instant. DLP (ICML 2025), OWL (Yin et al., 2024) and
//! AlphaPruning (Lu et al., 2024) as their papers define them; the temperature τ, the clamp policy
//! and pins are dlpx's additions (README, "Pruning"), and so is `depth`, a depth-linear schedule:
//! the kind of pre-defined schedule the DLP paper argues against, there to be compared with it.

use serde::{Deserialize, Serialize};

/// Upper bound of any block's sparsity under the `budget` policy.
pub const MAX_SPARSITY: f64 = 0.99;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Allocation {
    Uniform,
    Owl,
    Dlp,
    /// AlphaPruning: heavier-tailed spectra (smaller α̂) keep more weights.
    Alpha,
    /// Depth-linear: sparsity rises with the block index from p − α to p + α (mean p).
    Depth,
}

impl Allocation {
    /// Every allocation, in the order the explorer cycles through them.
    pub const ALL: [Allocation; 5] = [
        Allocation::Uniform,
        Allocation::Owl,
        Allocation::Dlp,
        Allocation::Alpha,
        Allocation::Depth,
    ];

    /// The name the command line, the sweep files and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Allocation::Uniform => "uniform",
            Allocation::Owl => "owl",
            Allocation::Dlp => "dlp",
            Allocation::Alpha => "alpha",
            Allocation::Depth => "depth",
        }
    }

    /// How the explorer shows it (parameter panel, overlay).
    pub fn label(self) -> &'static str {
        match self {
            Allocation::Uniform => "uniform",
            Allocation::Owl => "OWL",
            Allocation::Dlp => "DLP",
            Allocation::Alpha => "AlphaPruning",
            Allocation::Depth => "depth",
        }
    }

    /// Its short name in the explorer's history.
    pub fn short(self) -> &'static str {
        match self {
            Allocation::Alpha => "Alpha",
            a => a.label(),
        }
    }

    /// One line on what it does (the command line's help).
    pub fn about(self) -> &'static str {
        match self {
            Allocation::Uniform => "",
            Allocation::Owl => "",
            Allocation::Dlp => "",
            Allocation::Alpha => {
                "AlphaPruning: heavier-tailed spectra (smaller α̂) keep more weights"
            }
            Allocation::Depth => "sparsity rising linearly with the block index, p − α to p + α",
        }
    }

    /// Whether it reads the weights' spectra (α̂), an eigenvalue problem per linear at
    /// calibration: only AlphaPruning.
    pub fn needs_spectra(self) -> bool {
        self == Allocation::Alpha
    }

    /// The allocation named `s` ([`Allocation::name`], any case).
    pub fn from_name(s: &str) -> Option<Allocation> {
        let s = s.trim();
        Allocation::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// The names, comma-separated (for messages).
    pub fn names() -> String {
        Allocation::ALL.map(Allocation::name).join(", ")
    }
}

/// What happens when a block's sparsity leaves [0, 1) (README, "Pruning": `budget` or `paper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClampPolicy {
    /// Clamp to [0, 0.99], then shift the unclamped blocks so the weighted mean is p again.
    Budget,
    /// The reference code: sparsity ≤ 0 becomes 0.01, no upper bound.
    Paper,
}

impl ClampPolicy {
    pub const ALL: [ClampPolicy; 2] = [ClampPolicy::Budget, ClampPolicy::Paper];
}

/// Everything the allocation depends on besides the statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocParams {
    pub allocation: Allocation,
    /// Global target sparsity p in [0, 1).
    pub sparsity: f64,
    /// DLP's and depth's range: sparsities span 2α.
    pub alpha: f64,
    /// DLP temperature τ; `None` is ∞ (the paper's linear map).
    pub tau: Option<f64>,
    pub clamp: ClampPolicy,
    /// OWL λ: sparsities span 2λ.
    pub owl_lambda: f64,
    /// AlphaPruning ε: sparsities scale by factors in [1 − ε, 1 + ε] before normalising.
    #[serde(default = "default_alpha_eps")]
    pub alpha_eps: f64,
    /// Per-block pinned sparsities `(block, sparsity)`; the others re-solve under the budget.
    #[serde(default)]
    pub overrides: Vec<(usize, f64)>,
}

impl Default for AllocParams {
    fn default() -> Self {
        Self {
            allocation: Allocation::Dlp,
            sparsity: 0.7,
            alpha: 0.15,
            tau: None,
            clamp: ClampPolicy::Budget,
            owl_lambda: 0.08,
            alpha_eps: default_alpha_eps(),
            overrides: vec![],
        }
    }
}

fn default_alpha_eps() -> f64 {
    0.2
}

/// Min-max normalisation to [0, 1]; all zeros when the values are all equal.
pub fn min_max(x: &[f64]) -> Vec<f64> {
    let (lo, hi) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if hi.is_nan() || lo.is_nan() || hi <= lo {
        return vec![0.0; x.len()];
    }
    x.iter().map(|v| (v - lo) / (hi - lo)).collect()
}

/// The temperature map (README, "Pruning"): `v = (exp(u/τ) − 1) / (exp(1/τ) − 1)`, `v = u` at τ = ±∞, computed without
/// overflow for small |τ|.
pub fn temper(u: f64, tau: Option<f64>) -> f64 {
    let Some(tau) = tau.filter(|t| t.is_finite()) else {
        return u;
    };
    let beta = 1.0 / tau;
    if beta.abs() < 1e-9 {
        return u;
    }
    if beta > 0.0 {
        // exp(β(u−1)) · (1 − e^{−βu}) / (1 − e^{−β})
        (beta * (u - 1.0)).exp() * (-(-beta * u).exp_m1()) / (-(-beta).exp_m1())
    } else {
        (beta * u).exp_m1() / beta.exp_m1()
    }
}

/// Parameter-weighted mean.
fn wmean(x: &[f64], w: &[f64]) -> f64 {
    x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / w.iter().sum::<f64>()
}

/// The reference code's DLP keep ratios in f32 (the paper's min-max → spread of 2α around the target), returned as the
/// sparsities `1 − keep` (in f64, as Python computes them), before clamping.
pub fn dlp_reference_f32(scores: &[f32], p: f64, alpha: f64) -> Vec<f64> {
    let mut total = 0f32;
    for &s in scores {
        total += s;
    }
    let r: Vec<f32> = scores.iter().map(|&s| 1.0 - s / total).collect();
    let (lo, hi) = r
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let scale = 1.0 / (hi - lo) * alpha as f32 * 2.0;
    let d: Vec<f32> = r.iter().map(|&v| (v - lo) * scale).collect();
    let mut sum = 0f32;
    for &v in &d {
        sum += v;
    }
    let mean = sum / d.len() as f32;
    let base = (1.0 - p) as f32;
    d.iter().map(|&v| 1.0 - (v - mean + base) as f64).collect()
}

/// OWL (Yin et al., 2024): more outliers → less sparsity; spread 2λ.
pub fn owl_raw(outlier_ratio: &[f64], p: f64, lambda: f64) -> Vec<f64> {
    let o = min_max(outlier_ratio);
    let d: Vec<f64> = o.iter().map(|v| v * 2.0 * lambda).collect();
    let m = d.iter().sum::<f64>() / d.len() as f64;
    d.iter().map(|v| 1.0 - (v - m + (1.0 - p))).collect()
}

/// DLP with temperature (§2.1 closed form and §10.2): higher score → less important → more sparsity.
pub fn dlp_raw(scores: &[f64], weights: &[f64], p: f64, alpha: f64, tau: Option<f64>) -> Vec<f64> {
    let v: Vec<f64> = min_max(scores)
        .into_iter()
        .map(|u| temper(u, tau))
        .collect();
    let m = wmean(&v, weights);
    v.iter().map(|x| p + 2.0 * alpha * (x - m)).collect()
}

/// AlphaPruning's linear map (§4.7): `f = minmax(α̂)·2ε + 1 − ε`, scaled so the
/// parameter-weighted mean is p. Higher α̂ (lighter tail) → more sparsity.
pub fn alpha_raw(esd: &[f64], weights: &[f64], p: f64, eps: f64) -> Vec<f64> {
    let f: Vec<f64> = min_max(esd)
        .into_iter()
        .map(|u| u * 2.0 * eps + 1.0 - eps)
        .collect();
    let scale = p / wmean(&f, weights);
    f.iter().map(|x| x * scale).collect()
}

/// The depth-linear schedule: sparsity rising linearly with the unit's index from p − α to
/// p + α, centred as DLP centres its scores (parameter-weighted mean p; with equal weights the
/// ends are exactly p ∓ α).
pub fn depth_raw(weights: &[f64], p: f64, alpha: f64) -> Vec<f64> {
    let index: Vec<f64> = (0..weights.len()).map(|i| i as f64).collect();
    let v = min_max(&index);
    let m = wmean(&v, weights);
    v.iter().map(|x| p + 2.0 * alpha * (x - m)).collect()
}

/// Apply a clamp policy and the per-block overrides. `weights` are parameter counts.
pub fn clamp(
    raw: &[f64],
    weights: &[f64],
    p: f64,
    policy: ClampPolicy,
    overrides: &[(usize, f64)],
) -> Vec<f64> {
    let mut s = raw.to_vec();
    for &(b, v) in overrides {
        s[b] = v;
    }
    match policy {
        ClampPolicy::Paper => {
            for (i, x) in s.iter_mut().enumerate() {
                if *x <= 0.0 && !overrides.iter().any(|o| o.0 == i) {
                    *x = 0.01;
                }
            }
            s
        }
        ClampPolicy::Budget => budget(&s, weights, p, overrides),
    }
}

/// Clamp to [0, 0.99] and shift the free blocks so the weighted mean is p (iterating until no new
/// block clamps). Pinned blocks keep their value.
fn budget(start: &[f64], w: &[f64], p: f64, overrides: &[(usize, f64)]) -> Vec<f64> {
    let n = start.len();
    let mut fixed: Vec<bool> = (0..n).map(|i| overrides.iter().any(|o| o.0 == i)).collect();
    let mut s = start.to_vec();
    let total: f64 = w.iter().sum();
    for _ in 0..=n {
        let fixed_mass: f64 = (0..n).filter(|&i| fixed[i]).map(|i| w[i] * s[i]).sum();
        let free_w: f64 = (0..n).filter(|&i| !fixed[i]).map(|i| w[i]).sum();
        if free_w == 0.0 {
            break;
        }
        let free_mass: f64 = (0..n).filter(|&i| !fixed[i]).map(|i| w[i] * s[i]).sum();
        let shift = (p * total - fixed_mass - free_mass) / free_w;
        let mut newly = false;
        for i in 0..n {
            if fixed[i] {
                continue;
            }
            s[i] += shift;
            if s[i] < 0.0 || s[i] > MAX_SPARSITY {
                s[i] = s[i].clamp(0.0, MAX_SPARSITY);
                fixed[i] = true;
                newly = true;
            }
        }
        if !newly {
            break;
        }
    }
    s
}

/// Inputs of one allocation: per-unit scores and weights (units are blocks, or linears with
/// `linear` granularity).
pub struct AllocInput<'a> {
    /// DLP unimportance scores (higher → more sparsity).
    pub scores: &'a [f64],
    /// The same scores in f32, for the bit-exact paper path.
    pub scores_f32: &'a [f32],
    /// OWL outlier ratios in percent (higher → less sparsity).
    pub outliers: &'a [f64],
    /// AlphaPruning's α̂ (block-averaged for blocks).
    pub esd: &'a [f64],
    /// Parameter count of each unit.
    pub weights: &'a [f64],
}

/// Requested sparsity per unit.
pub fn allocate(inp: &AllocInput, a: &AllocParams) -> Vec<f64> {
    let n = inp.scores.len();
    let uniform_weights = inp.weights.windows(2).all(|w| w[0] == w[1]);
    let raw = match a.allocation {
        Allocation::Uniform => vec![a.sparsity; n],
        Allocation::Owl => owl_raw(inp.outliers, a.sparsity, a.owl_lambda),
        Allocation::Dlp if a.tau.is_none() && a.clamp == ClampPolicy::Paper && uniform_weights => {
            dlp_reference_f32(inp.scores_f32, a.sparsity, a.alpha)
        }
        Allocation::Dlp => dlp_raw(inp.scores, inp.weights, a.sparsity, a.alpha, a.tau),
        Allocation::Alpha => alpha_raw(inp.esd, inp.weights, a.sparsity, a.alpha_eps),
        Allocation::Depth => depth_raw(inp.weights, a.sparsity, a.alpha),
    };
    clamp(&raw, inp.weights, a.sparsity, a.clamp, &a.overrides)
}

/// N:M per block (dlpx's per-block N, README "Pruning"): `N_l = round(M · s_l)` clamped to [0, M].
pub fn n_of_m(sparsity: &[f64], m: usize) -> Vec<usize> {
    sparsity
        .iter()
        .map(|s| ((m as f64 * s).round().max(0.0) as usize).min(m))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(s: &'a [f64], s32: &'a [f32], w: &'a [f64]) -> AllocInput<'a> {
        AllocInput {
            scores: s,
            scores_f32: s32,
            outliers: s,
            esd: s,
            weights: w,
        }
    }

    #[test]
    fn dlp_mean_is_p_and_spread_is_two_alpha() {
        let scores = [3.0, 1.0, 2.0, 5.0, 4.5, 1.2];
        let s32: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
        let w = [1.0; 6];
        let a = AllocParams {
            sparsity: 0.6,
            alpha: 0.1,
            ..Default::default()
        };
        let s = allocate(&input(&scores, &s32, &w), &a);
        let mean = s.iter().sum::<f64>() / 6.0;
        assert!((mean - 0.6).abs() < 1e-12);
        let (lo, hi) = s
            .iter()
            .fold((9f64, -9f64), |(a, b), &v| (a.min(v), b.max(v)));
        assert!((hi - lo - 0.2).abs() < 1e-12);
        // Ordered by score: the highest score gets the most sparsity.
        assert_eq!(s.iter().cloned().fold(0f64, f64::max), s[3]);
        assert_eq!(s.iter().cloned().fold(1f64, f64::min), s[1]);
    }

    #[test]
    fn alphapruning_normalises_by_parameter_count() {
        // Transcription of ww_sparsity: f = minmax(α̂)(s2 − s1) + s1, times p·Σn / Σ(n·f).
        let esd = [2.0, 4.0, 3.0];
        let w = [1.0, 3.0, 2.0];
        let got = alpha_raw(&esd, &w, 0.7, 0.2);
        let f = [0.8, 1.2, 1.0];
        let scale = 0.7 * 6.0 / (0.8 + 3.6 + 2.0);
        for (g, x) in got.iter().zip(f) {
            assert!((g - x * scale).abs() < 1e-12);
        }
        let wmean: f64 = got.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / 6.0;
        assert!((wmean - 0.7).abs() < 1e-12);
        // A lighter tail (higher α̂) is pruned more.
        assert!(got[1] > got[2] && got[2] > got[0]);
    }

    #[test]
    fn temperature_keeps_order_and_range_and_is_paper_at_infinity() {
        for tau in [0.05, 0.3, 1.0, -0.3, -0.05, 1e12] {
            let v: Vec<f64> = [0.0, 0.2, 0.5, 0.9, 1.0]
                .iter()
                .map(|&u| temper(u, Some(tau)))
                .collect();
            assert!(v.windows(2).all(|w| w[0] <= w[1]), "{tau}: {v:?}");
            assert!(
                (v[0]).abs() < 1e-12 && (v[4] - 1.0).abs() < 1e-9,
                "{tau}: {v:?}"
            );
        }
        assert!(temper(0.5, Some(0.1)) < 0.5 && temper(0.5, Some(-0.1)) > 0.5);
        assert_eq!(temper(0.37, None), 0.37);
        assert!((temper(0.37, Some(1e12)) - 0.37).abs() < 1e-9);
        assert!(temper(0.5, Some(1e-4)).is_finite());
    }

    #[test]
    fn paper_policy_is_bit_exact_reference_formula() {
        let s32 = [0.31f32, 0.2, 0.45, 0.12, 0.33, 0.27, 0.5, 0.05];
        let s: Vec<f64> = s32.iter().map(|&x| x as f64).collect();
        let w = [1.0; 8];
        let a = AllocParams {
            clamp: ClampPolicy::Paper,
            ..Default::default()
        };
        let got = allocate(&input(&s, &s32, &w), &a);
        // Independent transcription of lib/prune.py:get_dlp_ratios steps 5-8 in f32.
        let total: f32 = s32.iter().fold(0f32, |a, &b| a + b);
        let r: Vec<f32> = s32.iter().map(|&x| 1f32 - x / total).collect();
        let rmin = r.iter().cloned().fold(f32::INFINITY, f32::min);
        let rmax = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let d: Vec<f32> = r
            .iter()
            .map(|&x| (x - rmin) * (1f32 / (rmax - rmin) * 0.15f32 * 2f32))
            .collect();
        let mean = d.iter().fold(0f32, |a, &b| a + b) / 8f32;
        for (g, dv) in got.iter().zip(&d) {
            let keep = dv - mean + (1f64 - 0.7) as f32;
            let want = 1.0 - keep as f64;
            assert_eq!(
                g.to_bits(),
                if want <= 0.0 { 0.01f64 } else { want }.to_bits()
            );
        }
        // And it agrees with the closed form to f32 precision.
        let closed = dlp_raw(&s, &w, 0.7, 0.15, None);
        for (g, c) in got.iter().zip(closed) {
            assert!((g - c).abs() < 1e-6);
        }
    }

    #[test]
    fn budget_clamps_and_restores_the_mean() {
        let scores = [0.0, 0.1, 0.2, 0.3, 1.0];
        let s32: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
        let w = [1.0; 5];
        let a = AllocParams {
            sparsity: 0.9,
            alpha: 0.3,
            ..Default::default()
        };
        let s = allocate(&input(&scores, &s32, &w), &a);
        assert!(
            s.iter().all(|&x| (0.0..=MAX_SPARSITY).contains(&x)),
            "{s:?}"
        );
        assert!((s.iter().sum::<f64>() / 5.0 - 0.9).abs() < 1e-12, "{s:?}");
        // The paper policy leaves values above 1 alone.
        let p = allocate(
            &input(&scores, &s32, &w),
            &AllocParams {
                clamp: ClampPolicy::Paper,
                ..a.clone()
            },
        );
        assert!(p.iter().any(|&x| x > 1.0), "{p:?}");
    }

    #[test]
    fn overrides_pin_blocks_and_others_resolve() {
        let scores = [0.1, 0.5, 0.3, 0.9];
        let s32: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
        let w = [1.0; 4];
        let a = AllocParams {
            overrides: vec![(3, 0.2)],
            ..Default::default()
        };
        let s = allocate(&input(&scores, &s32, &w), &a);
        assert_eq!(s[3], 0.2);
        assert!((s.iter().sum::<f64>() / 4.0 - 0.7).abs() < 1e-12);
    }

    #[test]
    fn owl_more_outliers_less_sparsity() {
        let o = [5.0, 1.0, 3.0];
        let s = owl_raw(&o, 0.7, 0.08);
        assert!(s[0] < s[2] && s[2] < s[1]);
        assert!((s[1] - s[0] - 0.16).abs() < 1e-12);
        assert!((s.iter().sum::<f64>() / 3.0 - 0.7).abs() < 1e-12);
    }

    #[test]
    fn depth_rises_linearly_from_p_minus_alpha_to_p_plus_alpha() {
        let s = depth_raw(&[1.0; 4], 0.5, 0.1);
        let want = [0.4, 0.5 - 0.1 / 3.0, 0.5 + 0.1 / 3.0, 0.6];
        for (g, w) in s.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{s:?}");
        }
        assert!(
            (s[1] - 0.466_666_666_666_7).abs() < 1e-12
                && (s[2] - 0.533_333_333_333_3).abs() < 1e-12
        );
        assert!((s.iter().sum::<f64>() / 4.0 - 0.5).abs() < 1e-12);
        // One block: p itself.
        assert_eq!(depth_raw(&[3.0], 0.7, 0.2), vec![0.7]);
        // Unequal weights: the same slope, shifted so the weighted mean is p.
        let w = [1.0, 1.0, 2.0];
        let s = depth_raw(&w, 0.6, 0.15);
        assert!((s[1] - s[0] - 0.15).abs() < 1e-12 && (s[2] - s[1] - 0.15).abs() < 1e-12);
        let wmean: f64 = s.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / 4.0;
        assert!((wmean - 0.6).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn depth_through_allocate_ignores_the_statistics_and_clamps_like_the_others() {
        // The scores, outliers and α̂ play no part: only the block index does.
        let scores = [5.0, 1.0, 4.0, 2.0, 3.0];
        let s32: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
        let w = [1.0; 5];
        let a = AllocParams {
            allocation: Allocation::Depth,
            sparsity: 0.6,
            alpha: 0.1,
            ..Default::default()
        };
        let s = allocate(&input(&scores, &s32, &w), &a);
        for (i, g) in s.iter().enumerate() {
            assert!((g - (0.5 + 0.05 * i as f64)).abs() < 1e-12, "{s:?}");
        }
        // Budget: the top would be 1.02; it clamps to 0.99 and the others shift so the mean
        // stays p (as for DLP).
        let hi = AllocParams {
            sparsity: 0.9,
            alpha: 0.12,
            ..a.clone()
        };
        let s = allocate(&input(&scores, &s32, &w), &hi);
        assert_eq!(s[4], MAX_SPARSITY);
        assert!(s.windows(2).all(|x| x[0] < x[1]), "{s:?}");
        assert!((s.iter().sum::<f64>() / 5.0 - 0.9).abs() < 1e-12, "{s:?}");
        // Paper: no upper bound, as for DLP.
        let paper = AllocParams {
            clamp: ClampPolicy::Paper,
            ..hi
        };
        let s = allocate(&input(&scores, &s32, &w), &paper);
        assert!((s[4] - 1.02).abs() < 1e-12, "{s:?}");
        assert_eq!(Allocation::from_name("Depth"), Some(Allocation::Depth));
    }

    #[test]
    fn n_of_m_rounds_and_clamps() {
        assert_eq!(n_of_m(&[0.5, 0.62, 0.9, -0.1, 1.2], 4), vec![2, 2, 4, 0, 4]);
    }
}
