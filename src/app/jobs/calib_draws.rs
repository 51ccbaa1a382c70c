//! Key D: prune at the current parameters from four disjoint calibration draws and measure
//! each, to see how much the allocation and perplexity depend on the calibration sample (as
//! `dlpx prune --calib-draws` does).

use std::sync::Arc;

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, Tone};
use crate::experiment::Silent;
use crate::prune::pipeline::PruneParams;

/// Calibration draws the key asks for.
const DRAWS: usize = 4;

/// Prune at `params` from `draws` disjoint calibration subsets (draw 0 is the session's own).
pub struct CalibDraws {
    pub params: PruneParams,
    pub draws: usize,
}

impl CalibDraws {
    /// Each draw's allocation and perplexity as it finishes.
    fn draws(&self, w: &mut Worker<'_>) -> Result<()> {
        let own = w.held.calibration()?;
        for k in 0..self.draws {
            let cal = match k {
                0 => own.clone(),
                _ => Arc::new(w.x.calibrate_draw(k, &self.params, w.obs)?),
            };
            let (pl, ppl) = w.x.prune_copy(&cal, &self.params, w.obs)?;
            (w.send)(Msg::Draw {
                k,
                block: pl.block,
                ppl,
            });
        }
        // Back to the session's own windows, which its statistics came from.
        if self.draws > 1 {
            w.x.use_calibration_draw(0, w.obs)?;
        }
        Ok(())
    }
}

impl BackgroundJob for CalibDraws {
    const STAGE: Stage = Stage::Prune;

    fn request(s: &mut State) -> Option<Self> {
        if s.cal.is_none() || s.busy {
            s.say(
                "wait for calibration and the running job (Esc cancels it)",
                Tone::Error,
            );
            return None;
        }
        s.draws = Some((s.params.clone(), Vec::new()));
        let mode = format!("{:?}", s.params.mode).to_lowercase();
        s.say(
            format!("pruning ({mode}) from {DRAWS} disjoint calibration draws… (Esc cancels)"),
            Tone::Info,
        );
        Some(CalibDraws {
            params: s.params.clone(),
            draws: DRAWS,
        })
    }

    fn into_job(self) -> Job {
        Job::CalibDraws {
            params: Box::new(self.params),
            draws: self.draws,
        }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let r = self.draws(w);
        // Back to the session's own calibration windows, whatever happened.
        let _ = w.x.use_calibration_draw(0, &mut Silent);
        r
    }

    fn on_reply(s: &mut State, m: Msg) {
        let Msg::Draw { k, block, ppl } = m else {
            return;
        };
        if let Some((_, d)) = &mut s.draws {
            d.push((block, ppl));
        }
        if let Some(p) = ppl {
            s.say(
                format!("calibration draw {}: pruned perplexity {p:.2}", k + 1),
                Tone::Info,
            );
        }
    }
}
