//! Key F: a short LoRA recovery of the applied model on the calibration text, then its
//! perplexity (`dlpx recover` trains longer and saves the adapters; README, "Recovery").

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, Tone, RECOVER_STEPS};
use crate::experiment::Silent;
use crate::recover::{Adapters, LoraParams};

/// Recover applied entry `id` with `steps` optimizer steps.
pub struct Recover {
    pub id: usize,
    pub steps: usize,
}

impl BackgroundJob for Recover {
    const STAGE: Stage = Stage::Recover;

    fn request(s: &mut State) -> Option<Self> {
        let Some(id) = s.held_entry() else {
            s.say(
                "apply first (a): F recovers the applied model with LoRA",
                Tone::Info,
            );
            return None;
        };
        s.say(
            format!(
                "#{id}: LoRA recovery, {RECOVER_STEPS} steps on the calibration text… (Esc keeps the best so far)"
            ),
            Tone::Info,
        );
        Some(Recover {
            id,
            steps: RECOVER_STEPS,
        })
    }

    fn into_job(self) -> Job {
        Job::Recover {
            id: self.id,
            steps: self.steps,
        }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let (id, x) = (self.id, &*w.x);
        let m = w.held.model(id)?;
        let p = LoraParams {
            steps: self.steps,
            ..LoraParams::default()
        };
        let ((train, _), (heldout, _)) = x.recovery_windows("calib", 0, 8, w.obs)?;
        let adapters = Adapters::new(&m.llama, p.rank, p.alpha, p.seed)?;
        let mut llama = m.llama.clone();
        // A cancel (Esc) stops training with the best adapters so far, then measures them.
        let t = x.recover(
            &mut llama,
            &adapters,
            (&train, &heldout),
            &p,
            &mut |_| Ok(()),
            w.obs,
        )?;
        if let Some(ppl) = x.perplexity(&llama, Stage::RecoveredEval, &mut Silent)? {
            (w.send)(Msg::Recovered {
                id,
                ppl: ppl.ppl,
                steps_run: t.steps_run,
                best_step: t.best_step,
            });
        }
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        let Msg::Recovered {
            id,
            ppl,
            steps_run,
            best_step,
        } = m
        else {
            return;
        };
        if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
            h.recovered = Some((ppl, steps_run));
            s.say(
                format!("#{id} + LoRA: perplexity {ppl:.2} after {steps_run} steps (best held-out at step {best_step})"),
                Tone::Info,
            );
        }
    }
}
