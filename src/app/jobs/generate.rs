//! Key g (and after a prompt is edited or added): greedy continuations of every prompt with
//! the dense model and, once one is applied, the pruned model, streamed token by token into
//! the compare view.

use std::time::Instant;

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State};

/// Generate `prompts` on both sides.
pub struct Generate {
    pub prompts: Vec<String>,
}

/// One side's generations of `prompts` (the dense side's come from the cache when it has them).
pub(super) fn side(w: &mut Worker<'_>, pruned: bool, prompts: &[String]) -> Result<()> {
    w.stage = Stage::Generate;
    let max_new = w.spec.max_new_tokens;
    match (pruned, &w.held.pruned) {
        (false, _) => {
            w.x.dense_generations(prompts, max_new, w.dense_obs)?;
            w.held.dense_gens_done = true;
        }
        (true, Some((_, m))) => {
            w.x.generate(m, prompts, max_new, w.obs)?;
        }
        (true, None) => {}
    }
    Ok(())
}

impl BackgroundJob for Generate {
    const STAGE: Stage = Stage::Generate;

    fn request(s: &mut State) -> Option<Self> {
        Some(Generate {
            prompts: s.prompts.iter().map(|p| p.prompt.clone()).collect(),
        })
    }

    fn into_job(self) -> Job {
        Job::Generate {
            prompts: self.prompts,
        }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        side(w, false, &self.prompts)?;
        if w.held.pruned.is_some() {
            side(w, true, &self.prompts)?;
        }
        Ok(())
    }

    /// A streamed generation's start, tokens and end.
    fn on_reply(s: &mut State, m: Msg) {
        match m {
            Msg::GenStart { pruned, prompt } => {
                if let Some(p) = s.prompts.get_mut(prompt) {
                    if pruned {
                        p.pruned.clear();
                        p.pruned_tokens = 0;
                        p.pruned_secs = None;
                        p.pruned_tok_s = None;
                        p.pruned_started = Some(Instant::now());
                    } else {
                        p.dense.clear();
                        p.dense_tokens = 0;
                        p.dense_secs = None;
                        p.dense_tok_s = None;
                        p.dense_started = Some(Instant::now());
                    }
                }
            }
            Msg::Token {
                pruned,
                prompt,
                text,
            } => {
                if let Some(p) = s.prompts.get_mut(prompt) {
                    if pruned {
                        p.pruned.push_str(&text);
                        p.pruned_tokens += 1;
                        p.pruned_secs = p.pruned_started.map(|t| t.elapsed().as_secs_f64());
                    } else {
                        p.dense.push_str(&text);
                        p.dense_tokens += 1;
                        p.dense_secs = p.dense_started.map(|t| t.elapsed().as_secs_f64());
                    }
                }
            }
            Msg::GenDone {
                pruned,
                prompt,
                tokens,
                tokens_per_s,
            } => {
                if let Some(p) = s.prompts.get_mut(prompt) {
                    let rate = (tokens_per_s > 0.0).then_some(tokens_per_s);
                    if pruned {
                        p.pruned_tokens = tokens;
                        p.pruned_tok_s = rate;
                    } else {
                        p.dense_tokens = tokens;
                        p.dense_tok_s = rate;
                    }
                }
            }
            _ => {}
        }
    }
}
