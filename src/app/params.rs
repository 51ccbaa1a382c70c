//! The parameter panel's fields: how each is shown, nudged (fine / coarse) and typed exactly.
//! Every change goes through `PruneParams::validate` before it is accepted, so the state never
//! holds a configuration the engine would refuse.

use crate::prune::allocate::{Allocation, ClampPolicy};
use crate::prune::mask::{Metric, Pattern};
use crate::prune::pipeline::{Mode, PruneParams};
use crate::prune::stats::Statistic;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Sparsity,
    Alpha,
    Tau,
    Statistic,
    Allocation,
    Metric,
    Pattern,
    Clamp,
    Mode,
    OwlLambda,
    AlphaEps,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Sparsity,
        Field::Alpha,
        Field::Tau,
        Field::Statistic,
        Field::Allocation,
        Field::Metric,
        Field::Pattern,
        Field::Clamp,
        Field::Mode,
        Field::OwlLambda,
        Field::AlphaEps,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Field::Sparsity => "sparsity p",
            Field::Alpha => "range α",
            Field::Tau => "temperature τ",
            Field::Statistic => "statistic F",
            Field::Allocation => "allocation",
            Field::Metric => "metric",
            Field::Pattern => "pattern",
            Field::Clamp => "clamp",
            Field::Mode => "mode",
            Field::OwlLambda => "OWL λ",
            Field::AlphaEps => "Alpha ε",
        }
    }

    /// Numeric fields accept typed values.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Field::Sparsity | Field::Alpha | Field::Tau | Field::OwlLambda | Field::AlphaEps
        )
    }

    pub fn value(self, p: &PruneParams) -> String {
        let a = &p.alloc;
        match self {
            Field::Sparsity => format!("{:.2}", p.effective_alloc().sparsity),
            Field::Alpha => format!("{:.3}", a.alpha),
            Field::Tau => match a.tau {
                None => "∞".into(),
                Some(t) => format!("{t:.3}"),
            },
            Field::Statistic => format!("{:?}", p.statistic).to_lowercase(),
            Field::Allocation => match a.allocation {
                Allocation::Uniform => "uniform",
                Allocation::Owl => "OWL",
                Allocation::Dlp => "DLP",
                Allocation::Alpha => "AlphaPruning",
            }
            .into(),
            Field::Metric => format!("{:?}", p.metric).to_lowercase(),
            Field::Pattern => p.pattern.to_string(),
            Field::Clamp => format!("{:?}", a.clamp).to_lowercase(),
            Field::Mode => format!("{:?}", p.mode).to_lowercase(),
            Field::OwlLambda => format!("{:.3}", a.owl_lambda),
            Field::AlphaEps => format!("{:.3}", a.alpha_eps),
        }
    }

    /// Step by `dir` (±1); `coarse` takes bigger steps. Returns the candidate parameters.
    pub fn nudge(self, p: &PruneParams, dir: i32, coarse: bool) -> PruneParams {
        let mut q = p.clone();
        let d = dir as f64;
        let a = &mut q.alloc;
        // Values land on exact decimals (0.2, not 0.19999999999999998): round to 1e-3 by division.
        let round = |x: f64, _: f64| (x * 1e3).round() / 1e3;
        match self {
            Field::Sparsity => {
                let step = if coarse { 0.05 } else { 0.01 };
                a.sparsity = round(a.sparsity + d * step, 1e-6).clamp(0.0, 0.99);
            }
            Field::Alpha => {
                let step = if coarse { 0.05 } else { 0.01 };
                a.alpha = round(a.alpha + d * step, 1e-6).clamp(0.0, 0.5);
            }
            Field::Tau => {
                // Stepped in β = 1/τ so that ∞ (β = 0) sits in the middle of the range.
                let beta = a.tau.map(|t| 1.0 / t).unwrap_or(0.0);
                let step = if coarse { 2.0 } else { 0.5 };
                let b = round(beta + d * step, 1e-6).clamp(-50.0, 50.0);
                a.tau = (b != 0.0).then(|| 1.0 / b);
            }
            Field::OwlLambda => {
                let step = if coarse { 0.05 } else { 0.01 };
                a.owl_lambda = round(a.owl_lambda + d * step, 1e-6).clamp(0.0, 0.5);
            }
            Field::AlphaEps => {
                let step = if coarse { 0.1 } else { 0.05 };
                a.alpha_eps = round(a.alpha_eps + d * step, 1e-6).clamp(0.0, 0.95);
            }
            Field::Statistic => {
                q.statistic = cycle(
                    &[
                        Statistic::Median,
                        Statistic::Mean,
                        Statistic::Sum,
                        Statistic::Max,
                        Statistic::Std,
                        Statistic::Var,
                    ],
                    q.statistic,
                    dir,
                )
            }
            Field::Allocation => {
                a.allocation = cycle(
                    &[
                        Allocation::Uniform,
                        Allocation::Owl,
                        Allocation::Dlp,
                        Allocation::Alpha,
                    ],
                    a.allocation,
                    dir,
                )
            }
            Field::Metric => {
                q.metric = cycle(
                    &[Metric::Magnitude, Metric::Wanda, Metric::SparseGpt],
                    q.metric,
                    dir,
                );
                // SparseGPT's Hessians come from the sequential pass.
                if q.metric == Metric::SparseGpt {
                    q.mode = Mode::Faithful;
                }
            }
            Field::Pattern => {
                q.pattern = cycle(
                    &[
                        Pattern::Unstructured,
                        Pattern::NOfM { n: 2, m: 4 },
                        Pattern::NOfM { n: 4, m: 8 },
                    ],
                    q.pattern,
                    dir,
                )
            }
            Field::Clamp => {
                a.clamp = cycle(&[ClampPolicy::Budget, ClampPolicy::Paper], a.clamp, dir)
            }
            Field::Mode => q.mode = cycle(&[Mode::Preview, Mode::Faithful], q.mode, dir),
        }
        q
    }

    /// Set a numeric field from typed text (`inf` / `∞` allowed for τ).
    pub fn set_typed(self, p: &PruneParams, text: &str) -> Result<PruneParams, String> {
        let t = text.trim();
        let mut q = p.clone();
        if self == Field::Tau && matches!(t, "inf" | "∞" | "infinity" | "") {
            q.alloc.tau = None;
            return Ok(q);
        }
        let v: f64 = t.parse().map_err(|_| format!("`{t}` is not a number"))?;
        match self {
            Field::Sparsity => q.alloc.sparsity = v,
            Field::Alpha => q.alloc.alpha = v,
            Field::Tau => q.alloc.tau = v.is_finite().then_some(v),
            Field::OwlLambda => q.alloc.owl_lambda = v,
            Field::AlphaEps => q.alloc.alpha_eps = v,
            _ => return Err(format!("{} is chosen with ←/→", self.label())),
        }
        Ok(q)
    }
}

fn cycle<T: Copy + PartialEq>(all: &[T], cur: T, dir: i32) -> T {
    let i = all.iter().position(|x| *x == cur).unwrap_or(0) as i32;
    let n = all.len() as i32;
    all[((i + dir).rem_euclid(n)) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_steps_through_infinity_in_beta() {
        let p = PruneParams::default();
        let up = Field::Tau.nudge(&p, 1, false);
        assert_eq!(up.alloc.tau, Some(2.0));
        let back = Field::Tau.nudge(&up, -1, false);
        assert_eq!(back.alloc.tau, None);
        assert_eq!(Field::Tau.value(&back), "∞");
        assert_eq!(
            Field::Tau.set_typed(&p, "0.25").unwrap().alloc.tau,
            Some(0.25)
        );
    }

    #[test]
    fn nudges_round_and_cycle() {
        let p = PruneParams::default();
        let q = Field::Sparsity.nudge(&p, 1, true);
        assert_eq!(q.alloc.sparsity, 0.75);
        let q = Field::Allocation.nudge(&p, 1, false);
        assert_eq!(q.alloc.allocation, Allocation::Alpha);
        let q = Field::Allocation.nudge(&q, 1, false);
        assert_eq!(q.alloc.allocation, Allocation::Uniform);
        assert!(Field::Metric.set_typed(&p, "1").is_err());
        // SparseGPT needs the sequential pass: choosing it switches the mode.
        let preview = PruneParams {
            mode: Mode::Preview,
            ..Default::default()
        };
        let q = Field::Metric.nudge(&preview, 1, false);
        assert_eq!((q.metric, q.mode), (Metric::SparseGpt, Mode::Faithful));
    }
}

/// The parameters the explorer starts from: the engine's defaults in preview mode.
pub fn explorer_defaults() -> PruneParams {
    PruneParams {
        mode: Mode::Preview,
        ..PruneParams::default()
    }
}

/// A short name of a configuration for the history: the allocation and p, then every
/// parameter that differs from [`explorer_defaults`] (and matters for that allocation).
pub fn describe(p: &PruneParams) -> String {
    let d = explorer_defaults();
    let (a, da) = (&p.alloc, &d.alloc);
    let lower = |x: &dyn std::fmt::Debug| format!("{x:?}").to_lowercase();
    let mut parts = vec![format!(
        "{} p{:.2}",
        match a.allocation {
            Allocation::Dlp => "DLP",
            Allocation::Owl => "OWL",
            Allocation::Alpha => "Alpha",
            Allocation::Uniform => "uniform",
        },
        p.effective_alloc().sparsity
    )];
    if p.mode != d.mode {
        parts.push(lower(&p.mode));
    }
    if p.metric != d.metric {
        parts.push(lower(&p.metric));
    }
    if p.pattern != d.pattern {
        parts.push(p.pattern.to_string());
    }
    match a.allocation {
        Allocation::Dlp => {
            if a.alpha != da.alpha {
                parts.push(format!("α{:.2}", a.alpha));
            }
            if let Some(t) = a.tau {
                parts.push(format!("τ{t:.2}"));
            }
            if p.statistic != d.statistic {
                parts.push(lower(&p.statistic));
            }
        }
        Allocation::Owl => {
            if a.owl_lambda != da.owl_lambda {
                parts.push(format!("λ{:.2}", a.owl_lambda));
            }
            if p.owl_m != d.owl_m {
                parts.push(format!("M{}", p.owl_m));
            }
        }
        Allocation::Alpha => {
            if a.alpha_eps != da.alpha_eps {
                parts.push(format!("ε{:.2}", a.alpha_eps));
            }
        }
        Allocation::Uniform => {}
    }
    if a.clamp != da.clamp {
        parts.push(format!("clamp {}", lower(&a.clamp)));
    }
    if p.granularity != d.granularity {
        parts.push(format!("per {}", lower(&p.granularity)));
    }
    match a.overrides.len() {
        0 => {}
        1 => parts.push("1 pin".into()),
        n => parts.push(format!("{n} pins")),
    }
    parts.join(" ")
}

#[cfg(test)]
mod describe_tests {
    use super::*;
    use crate::prune::stats::Statistic;

    #[test]
    fn history_names_every_changed_parameter() {
        assert_eq!(describe(&explorer_defaults()), "DLP p0.70");
        let mut p = explorer_defaults();
        p.alloc.tau = Some(0.3);
        p.statistic = Statistic::Mean;
        p.alloc.alpha = 0.2;
        p.mode = Mode::Faithful;
        p.alloc.overrides = vec![(3, 0.5)];
        assert_eq!(describe(&p), "DLP p0.70 faithful α0.20 τ0.30 mean 1 pin");
        p.alloc.allocation = Allocation::Owl;
        p.owl_m = 7.0;
        assert_eq!(describe(&p), "OWL p0.70 faithful M7 1 pin");
    }
}
