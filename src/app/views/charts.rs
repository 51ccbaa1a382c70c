//! The main view's keys: the parameter panel, the block pins, and what the charts show.

use crate::app::keys::Action;
use crate::app::{params, Importance, InputPurpose, State, Tone};
use crate::prune::allocate::{Allocation, MAX_SPARSITY};
use crate::prune::params::Param;

impl State {
    /// A key of the parameter panel or the charts.
    pub(in crate::app) fn act_charts(&mut self, a: Action) {
        match a {
            Action::FieldNext | Action::FieldPrev => self.next_field(a == Action::FieldNext),
            Action::Inc | Action::Dec | Action::IncCoarse | Action::DecCoarse => {
                let dir = if matches!(a, Action::Inc | Action::IncCoarse) {
                    1
                } else {
                    -1
                };
                let coarse = matches!(a, Action::IncCoarse | Action::DecCoarse);
                let c = self.field.nudge(&self.params, dir, coarse);
                self.set_params(c);
            }
            Action::TypeValue => {
                if self.field.number().is_some() {
                    let cur = match (self.field, self.params.alloc.tau) {
                        (Param::Tau, None) => "inf".to_string(),
                        _ => self.field.show(&self.params),
                    };
                    self.input(InputPurpose::Value(self.field), cur);
                } else {
                    let c = self.field.nudge(&self.params, 1, false);
                    self.set_params(c);
                }
            }
            Action::BlockNext => {
                self.block = (self.block + 1).min(self.n_blocks().saturating_sub(1))
            }
            Action::BlockPrev => self.block = self.block.saturating_sub(1),
            Action::PinUp | Action::PinDown | Action::Unpin | Action::UnpinAll => self.pin(a),
            Action::CycleImportance => {
                self.importance = match self.importance {
                    Importance::Statistic => Importance::OwlRatio,
                    Importance::OwlRatio => Importance::AlphaHat,
                    Importance::AlphaHat => Importance::Statistic,
                };
            }
            Action::CycleOverlay => self.cycle_overlay(),
            _ => {}
        }
    }

    /// The next (or previous) parameter of the panel, wrapping around.
    fn next_field(&mut self, forward: bool) {
        let panel: Vec<Param> = Param::panel().collect();
        let n = panel.len();
        let i = panel.iter().position(|f| *f == self.field).unwrap_or(0);
        self.field = match forward {
            true => panel[(i + 1) % n],
            false => panel[(i + n - 1) % n],
        };
    }

    /// Pin the selected block's sparsity up or down, unpin it, or unpin all.
    fn pin(&mut self, a: Action) {
        let mut c = self.params.clone();
        match a {
            Action::PinUp | Action::PinDown => {
                let Some(plan) = &self.plan else {
                    self.say(
                        "calibration has to finish before blocks can be pinned",
                        Tone::Error,
                    );
                    return;
                };
                let cur = plan.block.get(self.block).copied().unwrap_or(0.0);
                let d = if a == Action::PinUp { 0.01 } else { -0.01 };
                let v = ((cur + d) * 100.0).round() / 100.0;
                c.alloc.overrides.retain(|o| o.0 != self.block);
                c.alloc
                    .overrides
                    .push((self.block, v.clamp(0.0, MAX_SPARSITY)));
                c.alloc.overrides.sort_by_key(|o| o.0);
            }
            Action::Unpin => c.alloc.overrides.retain(|o| o.0 != self.block),
            _ => c.alloc.overrides.clear(),
        }
        self.set_params(c);
    }

    /// The next comparison overlay on the sparsity chart (key o).
    fn cycle_overlay(&mut self) {
        // None → each overlay allocation (`params::overlays`) → the last applied entry (if
        // any) → none, skipping the allocation shown.
        let order: Vec<Option<Allocation>> = std::iter::once(None)
            .chain(params::overlays().map(Some))
            .collect();
        let entry = self.held_entry();
        if self.overlay_entry.take().is_none() {
            let mut i = order
                .iter()
                .position(|o| *o == self.overlay_alloc)
                .unwrap_or(0);
            loop {
                i = (i + 1) % order.len();
                if order[i] != Some(self.params.alloc.allocation) {
                    break;
                }
            }
            // Wrapping past the last allocation shows the applied entry first.
            if order[i].is_none() && self.overlay_alloc.is_some() {
                self.overlay_entry = entry;
            }
            self.overlay_alloc = order[i];
        }
        self.replan();
    }
}
