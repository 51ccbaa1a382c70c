//! Key a: prune a copy of the dense model with the current plan, then measure and generate
//! with it. Each apply is a new entry of the history (the compare view).

use std::time::Instant;

use color_eyre::eyre::Result;

use super::{generate, sparse::footprint, BackgroundJob, Worker};
use crate::app::{Applied, Job, Msg, Stage, State, Tone};
use crate::prune::pipeline::{Plan, PruneParams};

/// Apply `plan` (made from `params`) as entry `id`, then generate `prompts` with it.
pub struct Apply {
    pub id: usize,
    pub params: PruneParams,
    pub plan: Plan,
    pub prompts: Vec<String>,
}

impl BackgroundJob for Apply {
    const STAGE: Stage = Stage::Prune;

    fn request(s: &mut State) -> Option<Self> {
        let Some(plan) = s.plan.clone() else {
            s.say(
                "calibration has to finish before masks can be applied",
                Tone::Error,
            );
            return None;
        };
        // Ids are never reused, even when a cancelled or superseded apply leaves the history.
        let id = s
            .history
            .iter()
            .map(|h| h.id)
            .max()
            .unwrap_or(0)
            .max(s.last_id)
            + 1;
        s.last_id = id;
        s.history.push(Applied {
            id,
            params: s.params.clone(),
            target: plan.block.clone(),
            n_of_m: plan.n_of_m.clone(),
            achieved: None,
            ppl: None,
            window_nll: None,
            zeroshot: None,
            quantized: vec![],
            recovered: None,
            footprint: None,
            seconds: 0.0,
        });
        let mode = format!("{:?}", s.params.mode).to_lowercase();
        s.say(format!("applying #{id} ({mode})…"), Tone::Info);
        Some(Apply {
            id,
            params: s.params.clone(),
            plan,
            prompts: s.prompts.iter().map(|p| p.prompt.clone()).collect(),
        })
    }

    fn into_job(self) -> Job {
        Job::Apply {
            id: self.id,
            params: Box::new(self.params),
            plan: Box::new(self.plan),
            prompts: self.prompts,
        }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let id = self.id;
        let started = Instant::now();
        let cal = w.held.calibration()?;
        let x = &*w.x;
        let mut llama = x.model.llama.clone();
        let achieved = x.prune(&mut llama, &cal, &self.plan, &self.params, w.obs)?;
        if llama.sparse != w.held.sparse {
            llama.set_sparse(w.held.sparse)?;
        }
        (w.send)(Msg::Applied {
            id,
            achieved,
            seconds: started.elapsed().as_secs_f64(),
        });
        (w.send)(Msg::Footprint {
            id,
            footprint: footprint(&x.model.llama, &llama),
        });
        w.held.pruned = Some((id, x.with_weights(llama)));

        w.stage = Stage::PrunedEval;
        let m = w.held.model(id)?;
        if let Some(p) = x.perplexity(&m.llama, Stage::PrunedEval, w.obs)? {
            (w.send)(Msg::PrunedPpl {
                id,
                ppl: p.ppl,
                window_nll: p.window_nll,
            });
        }
        generate::side(w, true, &self.prompts)
    }

    fn on_reply(s: &mut State, m: Msg) {
        match m {
            Msg::Applied {
                id,
                achieved,
                seconds,
            } => {
                if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
                    h.achieved = Some(achieved);
                    h.seconds = seconds;
                }
                for p in &mut s.prompts {
                    p.pruned.clear();
                }
                s.say(
                    format!("applied #{id} in {seconds:.1}s; evaluating…"),
                    Tone::Info,
                );
            }
            Msg::PrunedPpl {
                id,
                ppl,
                window_nll,
            } => {
                if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
                    h.ppl = Some(ppl);
                    h.window_nll = Some(window_nll);
                }
                s.say(format!("#{id}: pruned perplexity {ppl:.2}"), Tone::Good);
            }
            // A queued apply was replaced by a newer one before it ran.
            Msg::Superseded(id) => s.history.retain(|h| h.id != id),
            _ => {}
        }
    }
}
