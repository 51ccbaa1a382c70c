//! Key z: zero-shot accuracy of the dense model (once; cached on disk) and of the last applied
//! entry (README, "Zero-shot accuracy").

use color_eyre::eyre::{eyre, Result};

use super::{BackgroundJob, Worker};
use crate::app::{Job, Msg, Stage, State, Tone};

/// Score the dense model if it has no score, and applied entry `id` if it is the pruned model
/// the worker holds.
pub struct ZeroShot {
    pub id: Option<usize>,
}

impl BackgroundJob for ZeroShot {
    const STAGE: Stage = Stage::ZeroShot;

    /// The dense model (once) and the last applied entry, if either has no score yet.
    fn request(s: &mut State) -> Option<Self> {
        let id = s.held_entry();
        let pending = s.dense_zeroshot.is_none()
            || id.is_some_and(|id| s.history.iter().any(|h| h.id == id && h.zeroshot.is_none()));
        if !pending {
            s.say(
                "zero-shot accuracy is already measured for the dense model and the last apply",
                Tone::Info,
            );
            return None;
        }
        s.say(
            match id {
                Some(id) => format!("scoring zero-shot accuracy: dense, then #{id}… (Esc cancels)"),
                None => {
                    "scoring zero-shot accuracy of the dense model… (a applies, then z scores it)"
                        .to_string()
                }
            },
            Tone::Info,
        );
        Some(ZeroShot { id })
    }

    fn into_job(self) -> Job {
        Job::ZeroShot { id: self.id }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let x = &*w.x;
        if w.held.tasks.is_none() {
            let z = &w.spec.zeroshot;
            w.held.tasks = Some(x.task_set(&z.tasks, &z.source, z.limit, w.dense_obs)?);
        }
        let set = w
            .held
            .tasks
            .as_ref()
            .ok_or_else(|| eyre!("no zero-shot examples"))?;
        if !w.held.dense_zeroshot_done {
            let (z, _, _) = x.dense_zeroshot(set, false, w.dense_obs)?;
            (w.send)(Msg::ZeroShot {
                id: None,
                z: Box::new(z),
            });
            w.held.dense_zeroshot_done = true;
        }
        if let (Some(id), Some((held, m))) = (self.id, &w.held.pruned) {
            if *held == id {
                let z = x.zeroshot(&m.llama, set, w.dense_obs)?;
                (w.send)(Msg::ZeroShot {
                    id: Some(id),
                    z: Box::new(z),
                });
            }
        }
        Ok(())
    }

    /// Zero-shot scores of the dense model or of an applied entry.
    fn on_reply(s: &mut State, m: Msg) {
        let Msg::ZeroShot { id, z } = m else {
            return;
        };
        let msg = match id {
            None => format!("dense: zero-shot mean acc {:.4}", z.mean_acc),
            Some(id) => format!(
                "#{id}: zero-shot mean acc {:.4} (dense {})",
                z.mean_acc,
                s.dense_zeroshot
                    .as_ref()
                    .map(|d| format!("{:.4}", d.mean_acc))
                    .unwrap_or("…".into())
            ),
        };
        match id {
            None => s.dense_zeroshot = Some(*z),
            Some(id) => {
                if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
                    h.zeroshot = Some(*z);
                }
            }
        }
        s.say(msg, Tone::Good);
    }
}
