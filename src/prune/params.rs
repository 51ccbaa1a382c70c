//! Every tunable pruning parameter, once: how the explorer labels it and names it in messages,
//! the command-line flag and the sweep axis that set it, how it is read and written on
//! [`PruneParams`], its valid range and its fine and coarse steps, and the allocations it applies
//! to. The command line's resolution, the explorer's parameter panel, the sweep axes and the
//! messages of [`InvalidParam`] are lookups in [`TABLE`].
//!
//! The parameter set itself ([`PruneParams`]) and its validation live here as well, so the
//! layers of `prune` run one way: `allocate` (pure, knows no parameter table) below this
//! module, `pipeline` (plan and masks) above it.

use std::fmt;

use color_eyre::eyre::Result;
use serde::{Deserialize, Serialize};

use super::allocate::{AllocParams, Allocation, ClampPolicy, MAX_SPARSITY};
use super::mask::{Metric, Pattern};
use super::stats::Statistic;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The paper: masks of block l from the outputs of the pruned blocks 0..l-1.
    Faithful,
    /// All masks from the dense statistics; no further forward passes.
    Preview,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// All 7 linears of a block share its sparsity (the paper).
    Block,
    /// Each linear is scored and allocated on its own, parameter-weighted (DLP only).
    Linear,
}

/// Every parameter of a pruning run (the `params` object of a report / config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneParams {
    pub metric: Metric,
    pub statistic: Statistic,
    pub granularity: Granularity,
    pub pattern: Pattern,
    pub mode: Mode,
    /// OWL's outlier threshold M (scores above M × mean are outliers).
    pub owl_m: f64,
    pub alloc: AllocParams,
}

impl Default for PruneParams {
    fn default() -> Self {
        Self {
            metric: Metric::Wanda,
            statistic: Statistic::Median,
            granularity: Granularity::Block,
            pattern: Pattern::Unstructured,
            mode: Mode::Faithful,
            owl_m: 5.0,
            alloc: AllocParams::default(),
        }
    }
}

impl PruneParams {
    /// The allocation parameters actually used: an N:M pattern sets the global target to N/M.
    pub fn effective_alloc(&self) -> AllocParams {
        let mut a = self.alloc.clone();
        if let Pattern::NOfM { n, m } = self.pattern {
            a.sparsity = n as f64 / m as f64;
        }
        a
    }

    pub fn validate(&self, n_blocks: usize) -> Result<()> {
        validate_alloc(&self.effective_alloc(), n_blocks)?;
        if !(self.owl_m > 0.0 && self.owl_m.is_finite()) {
            return Err(invalid(
                Param::OwlM,
                format!("must be > 0 (got {})", self.owl_m),
            ));
        }
        if let Pattern::NOfM { n, m } = self.pattern {
            if m == 0 || n > m {
                return Err(invalid(
                    Param::Pattern,
                    format!("{n}:{m} needs N ≤ M and M > 0"),
                ));
            }
        }
        if self.granularity == Granularity::Linear
            && !Param::Granularity.applies_to(self.alloc.allocation)
        {
            return Err(invalid(
                Param::Granularity,
                format!(
                    "linear applies to {} only",
                    Param::Granularity.applies_labels()
                ),
            ));
        }
        if self.metric == Metric::SparseGpt && self.mode != Mode::Faithful {
            return Err(InvalidParam {
                param: Param::Metric,
                problem: Problem::Needs {
                    subject: "sparsegpt",
                    other: Param::Mode,
                    value: "faithful",
                    why: " (its Hessians come from the sequential pass)",
                },
            }
            .into());
        }
        if self.granularity == Granularity::Linear && !self.alloc.overrides.is_empty() {
            return Err(InvalidParam {
                param: Param::Pins,
                problem: Problem::Needs {
                    subject: "",
                    other: Param::Granularity,
                    value: "block",
                    why: " (pins are per block)",
                },
            }
            .into());
        }
        Ok(())
    }
}

/// Check the allocation parameters (the ones of [`PruneParams::effective_alloc`]).
fn validate_alloc(a: &AllocParams, n_blocks: usize) -> Result<()> {
    if !(0.0..1.0).contains(&a.sparsity) {
        return Err(invalid(
            Param::Sparsity,
            format!("must be in [0, 1) (got {})", a.sparsity),
        ));
    }
    if !(a.alpha >= 0.0 && a.alpha.is_finite()) {
        return Err(invalid(
            Param::Alpha,
            format!("must be ≥ 0 (got {})", a.alpha),
        ));
    }
    if let Some(t) = a.tau {
        if t == 0.0 || t.is_nan() {
            return Err(invalid(
                Param::Tau,
                format!("must be nonzero (got {t}); use `inf` for the paper's linear map"),
            ));
        }
    }
    if !(a.owl_lambda >= 0.0 && a.owl_lambda.is_finite()) {
        return Err(invalid(
            Param::OwlLambda,
            format!("must be ≥ 0 (got {})", a.owl_lambda),
        ));
    }
    if !(0.0..1.0).contains(&a.alpha_eps) {
        return Err(invalid(
            Param::AlphaEps,
            format!("must be in [0, 1) (got {})", a.alpha_eps),
        ));
    }
    for &(b, s) in &a.overrides {
        if b >= n_blocks {
            return Err(invalid(
                Param::Pins,
                format!("for block {b}, but the model has {n_blocks} blocks"),
            ));
        }
        if !(0.0..=MAX_SPARSITY).contains(&s) {
            return Err(invalid(
                Param::Pins,
                format!("for block {b}: sparsity {s} must be in [0, {MAX_SPARSITY}]"),
            ));
        }
    }
    Ok(())
}

/// A tunable pruning parameter (a row of [`TABLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
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
    OwlM,
    Granularity,
    Pins,
}

/// One parameter's row.
pub struct Spec {
    pub param: Param,
    /// Its line on the explorer's parameter panel (`None`: not on the panel).
    pub label: Option<&'static str>,
    /// How the explorer's messages name it.
    pub name: &'static str,
    /// The command-line flag that sets it, without the leading dashes.
    pub flag: &'static str,
    /// The name of a sweep axis over it (`dlpx sweep`, the explorer's sweep view).
    pub sweep: Option<&'static str>,
    pub value: Value,
    /// The allocations it matters for; empty: all of them.
    pub applies: &'static [Allocation],
    /// How the explorer's history names its value when it differs from the start (the
    /// parameters of some allocations only; the others have fixed words there).
    pub history: Option<fn(&PruneParams) -> String>,
}

/// How a parameter's value is shown and changed.
pub enum Value {
    /// A number, typed exactly or stepped.
    Number(Number),
    /// One of a few values, cycled through.
    Choice {
        show: fn(&PruneParams) -> String,
        /// One step through the values (`dir` ±1).
        cycle: fn(&mut PruneParams, i32),
    },
    /// Neither (the pins are set per block).
    Other,
}

/// A numeric parameter.
pub struct Number {
    /// Its value (τ: ∞ when unset).
    pub get: fn(&PruneParams) -> f64,
    /// Set it (τ: ∞ unsets it, the paper's linear map).
    pub set: fn(&mut PruneParams, f64),
    pub show: fn(&PruneParams) -> String,
    /// The range a step stays in, in step space.
    pub range: (f64, f64),
    pub fine: f64,
    pub coarse: f64,
    /// Stepped in 1/x (τ: so that ∞, 1/τ = 0, sits in the middle of the range).
    pub inverse: bool,
}

const DLP: &[Allocation] = &[Allocation::Dlp];

/// Every parameter, in the explorer panel's order (the ones not on the panel last).
pub static TABLE: [Spec; 14] = [
    Spec {
        param: Param::Sparsity,
        label: Some("sparsity p"),
        name: "sparsity",
        flag: "sparsity",
        sweep: Some("sparsity"),
        value: Value::Number(Number {
            get: |p| p.alloc.sparsity,
            set: |p, v| p.alloc.sparsity = v,
            show: |p| format!("{:.2}", p.effective_alloc().sparsity),
            range: (0.0, 0.99),
            fine: 0.01,
            coarse: 0.05,
            inverse: false,
        }),
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::Alpha,
        label: Some("range α"),
        name: "range α",
        flag: "alpha",
        sweep: Some("alpha"),
        value: Value::Number(Number {
            get: |p| p.alloc.alpha,
            set: |p, v| p.alloc.alpha = v,
            show: |p| format!("{:.3}", p.alloc.alpha),
            range: (0.0, 0.5),
            fine: 0.01,
            coarse: 0.05,
            inverse: false,
        }),
        applies: &[Allocation::Dlp, Allocation::Depth],
        history: Some(|p| format!("α{:.2}", p.alloc.alpha)),
    },
    Spec {
        param: Param::Tau,
        label: Some("temperature τ"),
        name: "temperature τ",
        flag: "tau",
        sweep: Some("tau"),
        value: Value::Number(Number {
            get: |p| p.alloc.tau.unwrap_or(f64::INFINITY),
            set: |p, v| p.alloc.tau = v.is_finite().then_some(v),
            show: |p| match p.alloc.tau {
                None => "∞".into(),
                Some(t) => format!("{t:.3}"),
            },
            range: (-50.0, 50.0),
            fine: 0.5,
            coarse: 2.0,
            inverse: true,
        }),
        applies: DLP,
        history: Some(|p| format!("τ{:.2}", p.alloc.tau.unwrap_or(f64::INFINITY))),
    },
    Spec {
        param: Param::Statistic,
        label: Some("statistic F"),
        name: "statistic F",
        flag: "statistic",
        sweep: None,
        value: Value::Choice {
            show: |p| lower(&p.statistic),
            cycle: |p, dir| p.statistic = cycle(&Statistic::ALL, p.statistic, dir),
        },
        applies: DLP,
        history: Some(|p| lower(&p.statistic)),
    },
    Spec {
        param: Param::Allocation,
        label: Some("allocation"),
        name: "allocation",
        flag: "allocation",
        sweep: None,
        value: Value::Choice {
            show: |p| p.alloc.allocation.label().into(),
            cycle: |p, dir| p.alloc.allocation = cycle(&Allocation::ALL, p.alloc.allocation, dir),
        },
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::Metric,
        label: Some("metric"),
        name: "metric",
        flag: "metric",
        sweep: None,
        value: Value::Choice {
            show: |p| lower(&p.metric),
            cycle: |p, dir| {
                p.metric = cycle(&Metric::ALL, p.metric, dir);
                // SparseGPT's Hessians come from the sequential pass.
                if p.metric == Metric::SparseGpt {
                    p.mode = Mode::Faithful;
                }
            },
        },
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::Pattern,
        label: Some("pattern"),
        name: "pattern",
        flag: "pattern",
        sweep: None,
        value: Value::Choice {
            show: |p| p.pattern.to_string(),
            cycle: |p, dir| p.pattern = cycle(&Pattern::CHOICES, p.pattern, dir),
        },
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::Clamp,
        label: Some("clamp"),
        name: "clamp",
        flag: "clamp",
        sweep: None,
        value: Value::Choice {
            show: |p| lower(&p.alloc.clamp),
            cycle: |p, dir| p.alloc.clamp = cycle(&ClampPolicy::ALL, p.alloc.clamp, dir),
        },
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::Mode,
        label: Some("mode"),
        name: "mode",
        flag: "mode",
        sweep: None,
        value: Value::Choice {
            show: |p| lower(&p.mode),
            cycle: |p, dir| p.mode = cycle(&[Mode::Preview, Mode::Faithful], p.mode, dir),
        },
        applies: &[],
        history: None,
    },
    Spec {
        param: Param::OwlLambda,
        label: Some("OWL λ"),
        name: "OWL λ",
        flag: "owl-lambda",
        sweep: Some("owl_lambda"),
        value: Value::Number(Number {
            get: |p| p.alloc.owl_lambda,
            set: |p, v| p.alloc.owl_lambda = v,
            show: |p| format!("{:.3}", p.alloc.owl_lambda),
            range: (0.0, 0.5),
            fine: 0.01,
            coarse: 0.05,
            inverse: false,
        }),
        applies: &[Allocation::Owl],
        history: Some(|p| format!("λ{:.2}", p.alloc.owl_lambda)),
    },
    Spec {
        param: Param::AlphaEps,
        label: Some("Alpha ε"),
        name: "Alpha ε",
        flag: "alpha-eps",
        sweep: Some("alpha_eps"),
        value: Value::Number(Number {
            get: |p| p.alloc.alpha_eps,
            set: |p, v| p.alloc.alpha_eps = v,
            show: |p| format!("{:.3}", p.alloc.alpha_eps),
            range: (0.0, 0.95),
            fine: 0.05,
            coarse: 0.1,
            inverse: false,
        }),
        applies: &[Allocation::Alpha],
        history: Some(|p| format!("ε{:.2}", p.alloc.alpha_eps)),
    },
    Spec {
        param: Param::OwlM,
        label: None,
        name: "OWL M",
        flag: "owl-m",
        sweep: None,
        value: Value::Number(Number {
            get: |p| p.owl_m,
            set: |p, v| p.owl_m = v,
            show: |p| format!("{}", p.owl_m),
            range: (0.5, 50.0),
            fine: 0.5,
            coarse: 1.0,
            inverse: false,
        }),
        applies: &[Allocation::Owl],
        history: Some(|p| format!("M{}", p.owl_m)),
    },
    Spec {
        param: Param::Granularity,
        label: None,
        name: "granularity",
        flag: "granularity",
        sweep: None,
        value: Value::Choice {
            show: |p| lower(&p.granularity),
            cycle: |p, dir| {
                p.granularity = cycle(
                    &[Granularity::Block, Granularity::Linear],
                    p.granularity,
                    dir,
                )
            },
        },
        applies: &[Allocation::Dlp, Allocation::Alpha],
        history: None,
    },
    Spec {
        param: Param::Pins,
        label: None,
        name: "pin",
        flag: "pin",
        sweep: None,
        value: Value::Other,
        applies: &[],
        history: None,
    },
];

impl Param {
    /// This parameter's row.
    pub fn spec(self) -> &'static Spec {
        // The table lists every parameter once (checked by a test).
        TABLE.iter().find(|s| s.param == self).unwrap_or(&TABLE[0])
    }

    /// How the explorer's messages name it.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The command-line flag that sets it, without the leading dashes.
    pub fn flag(self) -> &'static str {
        self.spec().flag
    }

    /// The parameters on the explorer's panel, in order.
    pub fn panel() -> impl Iterator<Item = Param> {
        TABLE.iter().filter(|s| s.label.is_some()).map(|s| s.param)
    }

    /// The parameters a sweep can vary, in order.
    pub fn sweepable() -> impl Iterator<Item = Param> {
        TABLE.iter().filter(|s| s.sweep.is_some()).map(|s| s.param)
    }

    /// The parameter of the sweep axis named `s` (`-` and `_` alike).
    pub fn by_sweep_name(s: &str) -> Option<Param> {
        let s = s.trim().replace('-', "_");
        TABLE
            .iter()
            .find(|r| r.sweep == Some(s.as_str()))
            .map(|r| r.param)
    }

    /// Its panel label (its message name when it has none).
    pub fn label(self) -> &'static str {
        let s = self.spec();
        s.label.unwrap_or(s.name)
    }

    /// Its sweep axis name (its flag when it has none).
    pub fn sweep_name(self) -> &'static str {
        let s = self.spec();
        s.sweep.unwrap_or(s.flag)
    }

    /// Whether it matters under `allocation`.
    pub fn applies_to(self, allocation: Allocation) -> bool {
        let a = self.spec().applies;
        a.is_empty() || a.contains(&allocation)
    }

    /// The allocations it matters for, as the explorer names them ("DLP and AlphaPruning");
    /// empty when it matters for all.
    pub fn applies_labels(self) -> String {
        let a: Vec<&str> = self.spec().applies.iter().map(|a| a.label()).collect();
        match a.split_last() {
            None => String::new(),
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// The history's words for it (`α0.20`), when it has some, matters for `p`'s allocation
    /// and differs between `p` and `start`.
    pub fn history(self, p: &PruneParams, start: &PruneParams) -> Option<String> {
        let words = self.spec().history?;
        let differs = match self.number() {
            Some(n) => (n.get)(p) != (n.get)(start),
            None => self.show(p) != self.show(start),
        };
        (differs && self.applies_to(p.alloc.allocation)).then(|| words(p))
    }

    /// Its numeric accessors, when it is a number.
    pub fn number(self) -> Option<&'static Number> {
        match &self.spec().value {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// Its value as the panel shows it.
    pub fn show(self, p: &PruneParams) -> String {
        match &self.spec().value {
            Value::Number(n) => (n.show)(p),
            Value::Choice { show, .. } => show(p),
            Value::Other => match p.alloc.overrides.len() {
                0 => "none".into(),
                n => format!("{n}"),
            },
        }
    }

    /// Its value read as a number (τ = ∞ when unset); 0 for the other kinds.
    pub fn get(self, p: &PruneParams) -> f64 {
        self.number().map(|n| (n.get)(p)).unwrap_or(0.0)
    }

    /// Set it to the number `v` (nothing for the other kinds).
    pub fn set(self, p: &mut PruneParams, v: f64) {
        if let Some(n) = self.number() {
            (n.set)(p, v)
        }
    }

    /// One step by `dir` (±1), `coarse` the bigger one; choices cycle. Returns the candidate.
    pub fn nudge(self, p: &PruneParams, dir: i32, coarse: bool) -> PruneParams {
        let mut q = p.clone();
        match &self.spec().value {
            Value::Number(n) => {
                let step = if coarse { n.coarse } else { n.fine };
                let cur = (n.get)(p);
                let x = match n.inverse {
                    true if cur.is_infinite() => 0.0,
                    true => 1.0 / cur,
                    false => cur,
                };
                // Values land on exact decimals (0.2, not 0.19999999999999998).
                let x = ((x + dir as f64 * step) * 1e3).round() / 1e3;
                let x = x.clamp(n.range.0, n.range.1);
                let v = match n.inverse {
                    true if x == 0.0 => f64::INFINITY,
                    true => 1.0 / x,
                    false => x,
                };
                (n.set)(&mut q, v);
            }
            Value::Choice { cycle, .. } => cycle(&mut q, dir),
            Value::Other => {}
        }
        q
    }

    /// Set a numeric parameter from typed text (`inf` / `∞` for τ).
    pub fn set_typed(self, p: &PruneParams, text: &str) -> Result<PruneParams, String> {
        let Some(n) = self.number() else {
            return Err(format!("{} is chosen with ←/→", self.label()));
        };
        let t = text.trim();
        let v = match (n.inverse, t) {
            (true, "inf" | "∞" | "infinity" | "") => f64::INFINITY,
            _ => t.parse().map_err(|_| format!("`{t}` is not a number"))?,
        };
        let mut q = p.clone();
        (n.set)(&mut q, v);
        Ok(q)
    }
}

fn lower(x: &dyn fmt::Debug) -> String {
    format!("{x:?}").to_lowercase()
}

/// The value after `cur` in `all` (before it for `dir` < 0), wrapping around.
fn cycle<T: Copy + PartialEq>(all: &[T], cur: T, dir: i32) -> T {
    let i = all.iter().position(|x| *x == cur).unwrap_or(0) as i32;
    let n = all.len() as i32;
    all[((i + dir).rem_euclid(n)) as usize]
}

/// A pruning parameter the engine cannot run with. It names the parameter as the explorer
/// shows it; the CLI names the flag instead ([`InvalidParam::render`] with the flag names).
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidParam {
    pub param: Param,
    pub problem: Problem,
}

/// What is wrong with a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// Its value: "must be ≥ 0 (got -1)".
    Value(String),
    /// A value of it (`subject`, may be empty) needs another parameter set to `value`.
    Needs {
        subject: &'static str,
        other: Param,
        value: &'static str,
        why: &'static str,
    },
}

impl InvalidParam {
    /// The message with parameters named by `name` (names here, flags on the command line).
    pub fn render(&self, name: impl Fn(Param) -> String) -> String {
        match &self.problem {
            Problem::Value(v) => format!("{} {v}", name(self.param)),
            Problem::Needs {
                subject,
                other,
                value,
                why,
            } => {
                let sp = if subject.is_empty() { "" } else { " " };
                format!(
                    "{}{sp}{subject} needs {} {value}{why}",
                    name(self.param),
                    name(*other)
                )
            }
        }
    }
}

impl fmt::Display for InvalidParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(|p| p.name().to_string()))
    }
}

impl std::error::Error for InvalidParam {}

/// The error for a parameter whose value is wrong.
pub fn invalid(param: Param, problem: impl Into<String>) -> color_eyre::Report {
    InvalidParam {
        param,
        problem: Problem::Value(problem.into()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_has_one_row() {
        for (i, s) in TABLE.iter().enumerate() {
            assert_eq!(s.param.spec().param, s.param);
            assert!(
                TABLE[..i].iter().all(|r| r.param != s.param),
                "{:?}",
                s.param
            );
        }
    }

    #[test]
    fn tau_steps_through_infinity_in_beta() {
        let p = PruneParams::default();
        let up = Param::Tau.nudge(&p, 1, false);
        assert_eq!(up.alloc.tau, Some(2.0));
        let back = Param::Tau.nudge(&up, -1, false);
        assert_eq!(back.alloc.tau, None);
        assert_eq!(Param::Tau.show(&back), "∞");
        assert_eq!(
            Param::Tau.set_typed(&p, "0.25").unwrap().alloc.tau,
            Some(0.25)
        );
    }

    #[test]
    fn nudges_round_and_cycle() {
        let p = PruneParams::default();
        let q = Param::Sparsity.nudge(&p, 1, true);
        assert_eq!(q.alloc.sparsity, 0.75);
        let q = Param::Allocation.nudge(&p, 1, false);
        assert_eq!(q.alloc.allocation, Allocation::Alpha);
        let q = Param::Allocation.nudge(&q, 1, false);
        assert_eq!(q.alloc.allocation, Allocation::Depth);
        let q = Param::Allocation.nudge(&q, 1, false);
        assert_eq!(q.alloc.allocation, Allocation::Uniform);
        // α is depth's range too.
        assert!(Param::Alpha.applies_to(Allocation::Depth));
        assert!(!Param::Tau.applies_to(Allocation::Depth));
        assert!(Param::Metric.set_typed(&p, "1").is_err());
        // SparseGPT needs the sequential pass: choosing it switches the mode.
        let preview = PruneParams {
            mode: Mode::Preview,
            ..Default::default()
        };
        let q = Param::Metric.nudge(&preview, 1, false);
        assert_eq!((q.metric, q.mode), (Metric::SparseGpt, Mode::Faithful));
    }

    #[test]
    fn parameter_errors_name_the_parameter_or_the_flag() {
        let e = InvalidParam {
            param: Param::Metric,
            problem: Problem::Needs {
                subject: "sparsegpt",
                other: Param::Mode,
                value: "faithful",
                why: "",
            },
        };
        assert_eq!(e.to_string(), "metric sparsegpt needs mode faithful");
        assert_eq!(
            e.render(|p| format!("<{}>", p.flag())),
            "<metric> sparsegpt needs <mode> faithful"
        );
    }
}
