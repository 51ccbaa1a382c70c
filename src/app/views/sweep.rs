//! The sweep view: preview perplexity along one parameter (key w, or α's held-out search, key
//! A), and its keys.

use crate::app::jobs::{Apply, BackgroundJob};
use crate::app::keys::Action;
use crate::app::{Effect, State, Tone, View};
use crate::prune::params::Param;
use crate::prune::pipeline::{Mode, PruneParams};

/// The sweep view's data: preview perplexity at each value of one parameter, the others as
/// they were when the sweep started.
#[derive(Debug, Clone)]
pub struct SweepView {
    pub param: Param,
    pub base: PruneParams,
    pub values: Vec<f64>,
    /// Perplexity per value, as the points finish.
    pub ppl: Vec<Option<f64>>,
    /// Evaluation windows per point.
    pub windows: usize,
    /// The selected point.
    pub sel: usize,
    /// Measured on held-out calibration windows (`A`), not on the evaluation windows.
    pub heldout: bool,
}

impl SweepView {
    /// The point with the lowest perplexity so far.
    pub fn best(&self) -> Option<usize> {
        (0..self.values.len())
            .filter(|&i| self.ppl[i].is_some())
            .min_by(|&a, &b| {
                self.ppl[a]
                    .unwrap_or(f64::MAX)
                    .total_cmp(&self.ppl[b].unwrap_or(f64::MAX))
            })
    }

    /// Whether the sweep was made with `params` (all but the swept parameter equal).
    pub(in crate::app) fn made_with(&self, params: &PruneParams) -> bool {
        let mut p = params.clone();
        self.param.set(&mut p, self.param.get(&self.base));
        p.mode = self.base.mode;
        p == self.base
    }
}

impl State {
    /// The sweep view's keys: move along the points, use one, or re-check it faithfully (an
    /// apply).
    pub(in crate::app) fn act_sweep(&mut self, a: Action) -> Vec<Effect> {
        match a {
            Action::SweepPrev | Action::SweepNext => {
                if let Some(sw) = &mut self.sweep {
                    let n = sw.values.len();
                    sw.sel = match a {
                        Action::SweepNext => (sw.sel + 1).min(n.saturating_sub(1)),
                        _ => sw.sel.saturating_sub(1),
                    };
                }
            }
            _ => {
                let Some(sw) = &self.sweep else { return vec![] };
                let (param, v) = (sw.param, sw.values[sw.sel]);
                let mut c = self.params.clone();
                param.set(&mut c, v);
                if a == Action::SweepRecheck {
                    c.mode = Mode::Faithful;
                }
                self.set_params(c);
                self.view = View::Main;
                if a == Action::SweepRecheck {
                    return Apply::start(self);
                }
                self.say(
                    format!("{} = {v} from the sweep; a applies it", param.sweep_name()),
                    Tone::Good,
                );
            }
        }
        vec![]
    }
}
