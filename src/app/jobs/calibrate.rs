//! Key r, and the start-up after the load: calibrate over the calibration windows, then the
//! dense results that are not out yet (the data did not change, so recalibrating does not
//! measure the dense model again).

use std::sync::Arc;

use color_eyre::eyre::Result;

use super::{generate, BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, Tone};

/// Calibrate (again).
pub struct Calibrate;

impl BackgroundJob for Calibrate {
    const STAGE: Stage = Stage::Calibrate;

    fn request(s: &mut State) -> Option<Self> {
        if s.busy {
            s.say("a job is running (Esc cancels it)", Tone::Error);
            return None;
        }
        s.cal = None;
        s.plan = None;
        s.block_stats.clear();
        Some(Calibrate)
    }

    fn into_job(self) -> Job {
        Job::Calibrate
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        // The explorer can switch to AlphaPruning at any key press: always the spectra.
        let (cal, cache_hit) = w.x.calibrate(w.spec.owl_m, true, w.dense_obs)?;
        let cal = Arc::new(cal);
        (w.send)(Msg::Calibrated {
            cal: cal.clone(),
            cache_hit,
        });
        w.held.cal = Some(cal);
        if !w.held.dense_ppl_done {
            w.stage = Stage::DenseEval;
            let (ppl, _hit) = w.x.dense_perplexity(w.dense_obs)?;
            if let Some(p) = ppl {
                (w.send)(Msg::DensePpl {
                    ppl: p.ppl,
                    window_nll: p.window_nll,
                });
            }
            w.held.dense_ppl_done = true;
        }
        if !w.held.dense_gens_done {
            let spec = w.spec;
            generate::side(w, false, &spec.prompts)?;
        }
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        match m {
            Msg::Loaded(summary) => {
                s.say(
                    format!(
                        "loaded {} ({} blocks); calibrating…",
                        summary.info.source, summary.info.blocks
                    ),
                    Tone::Info,
                );
                s.summary = Some(*summary);
                s.block = s.block.min(s.n_blocks().saturating_sub(1));
            }
            Msg::BlockScored { block, stats } if block == s.block_stats.len() => {
                s.block_stats.push(stats)
            }
            Msg::Calibrated { cal, cache_hit } => {
                s.block_stats = cal.blocks.clone();
                s.cache_hit = cache_hit;
                s.say(
                    if cache_hit {
                        "calibration statistics from the cache; ←/→ change the allocation, a applies"
                            .to_string()
                    } else {
                        format!(
                            "calibrated in {:.1}s; ←/→ change the allocation, a applies",
                            cal.seconds
                        )
                    },
                    Tone::Good,
                );
                s.cal = Some(cal);
                s.replan();
            }
            Msg::DensePpl { ppl, window_nll } => {
                s.dense_ppl = Some(ppl);
                s.dense_window_nll = Some(window_nll);
            }
            _ => {}
        }
    }
}
