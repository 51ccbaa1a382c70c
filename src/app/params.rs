//! The explorer's starting parameters and the history's short names of configurations. The
//! panel's fields (how each is shown, nudged and typed exactly) are the rows of
//! [`crate::prune::params::TABLE`]; every change goes through `PruneParams::validate` before it
//! is accepted, so the state never holds a configuration the engine would refuse.

use crate::prune::allocate::Allocation;
use crate::prune::params::TABLE;
use crate::prune::pipeline::{Mode, PruneParams};

/// The parameters the explorer starts from: the engine's defaults in preview mode.
pub fn explorer_defaults() -> PruneParams {
    PruneParams {
        mode: Mode::Preview,
        ..PruneParams::default()
    }
}

/// The allocations `v` overlays on the sparsity chart, in [`Allocation::ALL`]'s order: every
/// one but DLP, the explorer's subject.
pub fn overlays() -> impl Iterator<Item = Allocation> {
    Allocation::ALL
        .into_iter()
        .filter(|a| *a != Allocation::Dlp)
}

/// A short name of a configuration for the history: the allocation and p, then every
/// parameter that differs from [`explorer_defaults`] (and matters for that allocation).
pub fn describe(p: &PruneParams) -> String {
    let d = explorer_defaults();
    let (a, da) = (&p.alloc, &d.alloc);
    let lower = |x: &dyn std::fmt::Debug| format!("{x:?}").to_lowercase();
    let mut parts = vec![format!(
        "{} p{:.2}",
        a.allocation.short(),
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
    // The allocation's own parameters, in the table's order.
    parts.extend(TABLE.iter().filter_map(|r| r.param.history(p, &d)));
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
