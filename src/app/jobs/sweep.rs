//! Key w: the sweep view, and the sweep behind it: preview-mode perplexity at each value of one
//! parameter (p, or α where it applies), the others as they are, on the first evaluation
//! windows (as `dlpx sweep` measures a grid point).

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, SweepView, Tone, View};
use crate::experiment::sweep::{Axis, Grid};
use crate::prune::params::Param;
use crate::prune::pipeline::{Mode, PruneParams};

/// Preview-mode perplexity of `params` with `param` set to each of `values`, on the first
/// `windows` evaluation windows.
pub struct Sweep {
    pub param: Param,
    pub values: Vec<f64>,
    pub params: PruneParams,
    pub windows: usize,
}

impl BackgroundJob for Sweep {
    const STAGE: Stage = Stage::PrunedEval;

    /// Show the sweep view (or leave it), sweeping when there is no sweep of the current
    /// parameters.
    fn request(s: &mut State) -> Option<Self> {
        if s.view == View::Sweep {
            s.view = View::Main;
            return None;
        }
        if s.cal.is_none() {
            s.say("calibration has to finish before a sweep", Tone::Error);
            return None;
        }
        // The focused parameter when it is p or α; else α where it applies (DLP's own knob),
        // p otherwise.
        let param = match s.field {
            Param::Sparsity => Param::Sparsity,
            Param::Alpha => Param::Alpha,
            _ if Param::Alpha.applies_to(s.params.alloc.allocation) => Param::Alpha,
            _ => Param::Sparsity,
        };
        s.view = View::Sweep;
        let fresh = s
            .sweep
            .as_ref()
            .is_some_and(|sw| sw.param == param && sw.made_with(&s.params));
        if fresh {
            return None;
        }
        if s.busy {
            s.say(
                "a job is running (Esc cancels it); w again sweeps",
                Tone::Error,
            );
            return None;
        }
        let values: Vec<f64> = match param {
            Param::Sparsity => (0..10).map(|i| (40 + 5 * i) as f64 / 100.0).collect(),
            _ => (0..13).map(|i| (25 * i) as f64 / 1000.0).collect(),
        };
        let mut base = s.params.clone();
        base.mode = Mode::Preview;
        let current = param.get(&s.params);
        s.sweep = Some(SweepView {
            param,
            base: base.clone(),
            sel: values
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - current).abs().total_cmp(&(b.1 - current).abs()))
                .map(|(i, _)| i)
                .unwrap_or(0),
            ppl: vec![None; values.len()],
            values: values.clone(),
            windows: s.sweep_windows,
            heldout: false,
        });
        s.say(
            format!(
                "sweeping {} in preview on {} evaluation windows… (Esc cancels, finished points stay)",
                param.sweep_name(),
                s.sweep_windows
            ),
            Tone::Info,
        );
        Some(Sweep {
            param,
            values,
            params: base,
            windows: s.sweep_windows,
        })
    }

    fn into_job(self) -> Job {
        Job::Sweep {
            param: self.param,
            values: self.values,
            params: Box::new(self.params),
            windows: self.windows,
        }
    }

    /// Point by point, each the experiment's sweep point.
    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let cal = w.held.calibration()?;
        let mut base = self.params.clone();
        base.mode = Mode::Preview;
        let grid = Grid::new(
            vec![base.alloc.allocation],
            vec![Axis {
                param: self.param,
                values: self.values.clone(),
            }],
        )?;
        for p in grid.points() {
            if !(w.go_on)() {
                return Err(crate::error::Cancelled.into());
            }
            let row =
                w.x.sweep_point(&cal, &base, &p, Some(self.windows), w.obs)?;
            if let Some(ppl) = row.ppl {
                (w.send)(Msg::SweepPoint {
                    value: p.values[0].1,
                    ppl,
                });
            }
        }
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        let Msg::SweepPoint { value, ppl } = m else {
            return;
        };
        if let Some(sw) = &mut s.sweep {
            if let Some(i) = sw.values.iter().position(|v| *v == value) {
                sw.ppl[i] = Some(ppl);
            }
            if let Some(b) = sw.best() {
                sw.sel = b;
            }
        }
    }
}
