//! Key s: save the applied model as a Hugging Face folder (the path asked for first).

use std::path::PathBuf;

use color_eyre::eyre::{eyre, Result};

use super::{BackgroundJob, Worker};
use crate::app::{InputPurpose, Job, Msg, Stage, State, Tone};

/// Save the pruned model the worker holds to `dir`.
pub struct SaveModel {
    pub dir: PathBuf,
}

impl SaveModel {
    /// The key: ask for the folder (the last one shown), once there is something to save.
    pub fn ask(s: &mut State) {
        if s.history.iter().all(|h| h.achieved.is_none()) {
            s.say(
                "apply masks first (a); then s saves the pruned model",
                Tone::Error,
            );
        } else {
            let t = s.save_path.clone();
            s.input(InputPurpose::SavePath, t);
        }
    }
}

impl BackgroundJob for SaveModel {
    const STAGE: Stage = Stage::Save;

    /// The folder just entered (`State::save_path`).
    fn request(s: &mut State) -> Option<Self> {
        Some(SaveModel {
            dir: PathBuf::from(&s.save_path),
        })
    }

    fn into_job(self) -> Job {
        Job::SaveModel { dir: self.dir }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let (_, m) = w
            .held
            .pruned
            .as_ref()
            .ok_or_else(|| eyre!("apply masks first (a); then s saves the pruned model"))?;
        (w.send)(Msg::Status(format!(
            "saving the pruned model to {}",
            self.dir.display()
        )));
        crate::model::save_folder(m, &self.dir)?;
        (w.send)(Msg::Saved(self.dir.clone()));
        Ok(())
    }

    fn on_reply(s: &mut State, m: Msg) {
        if let Msg::Saved(dir) = m {
            s.say(
                format!("saved the pruned model to {}", dir.display()),
                Tone::Good,
            );
        }
    }
}
