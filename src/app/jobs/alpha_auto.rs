//! Key A: DLP's α chosen on held-out calibration windows, never the evaluation data (as
//! `dlpx prune --alpha auto` chooses it; the DLP paper tunes α per model, §5). The trace opens
//! in the sweep view.

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, SweepView, Tone, View};
use crate::prune::params::Param;
use crate::prune::pipeline::PruneParams;

/// Held-out calibration windows the explorer's search measures each α on.
const HELDOUT: usize = 16;

/// The α search at `params`.
pub struct AlphaAuto {
    pub params: PruneParams,
}

impl BackgroundJob for AlphaAuto {
    const STAGE: Stage = Stage::PrunedEval;

    fn request(s: &mut State) -> Option<Self> {
        if s.cal.is_none() || s.busy {
            s.say(
                "wait for calibration and the running job (Esc cancels it)",
                Tone::Error,
            );
            return None;
        }
        if !Param::Alpha.applies_to(s.params.alloc.allocation) {
            s.say(
                "A chooses DLP's range α: switch the allocation to DLP",
                Tone::Error,
            );
            return None;
        }
        s.say(
            format!(
                "choosing α on {HELDOUT} held-out calibration windows (never the evaluation data)…"
            ),
            Tone::Info,
        );
        Some(AlphaAuto {
            params: s.params.clone(),
        })
    }

    fn into_job(self) -> Job {
        Job::AlphaAuto {
            params: Box::new(self.params),
        }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let (x, cal) = (&*w.x, w.held.calibration()?);
        let (heldout, set) = x.heldout_windows(HELDOUT, w.obs)?;
        let search = x.search_alpha(&cal, &self.params, &heldout, set, w.obs)?;
        (w.send)(Msg::AlphaSearched(Box::new(search)));
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        let Msg::AlphaSearched(search) = m else {
            return;
        };
        let mut c = s.params.clone();
        c.alloc.alpha = search.chosen;
        s.set_params(c);
        let values: Vec<f64> = search.trace.iter().map(|t| t.alpha).collect();
        s.sweep = Some(SweepView {
            param: Param::Alpha,
            base: s.params.clone(),
            sel: values.iter().position(|v| *v == search.chosen).unwrap_or(0),
            ppl: search.trace.iter().map(|t| Some(t.ppl)).collect(),
            values,
            windows: search.heldout.windows,
            heldout: true,
        });
        s.view = View::Sweep;
        s.say(
            format!(
                "α = {} chosen on {} held-out calibration windows; a applies it",
                search.chosen, search.heldout.windows
            ),
            Tone::Good,
        );
    }
}
