//! Key X: switch the applied model's linears between sparse execution where it is faster
//! (auto) and dense (off); later applies keep the choice. The next generations and
//! perplexities run that way (g generates again).

use color_eyre::eyre::Result;

use super::{BackgroundJob, Worker};
use crate::app::{Footprint, Job, Msg, Stage, State, Tone};
use crate::model::Llama;
use crate::sparse::SparseMode;

/// Run the held pruned model's linears as `mode` says, and later applies' too.
pub struct Sparse {
    pub mode: SparseMode,
}

/// The pruned model's linears against the dense model's.
pub(super) fn footprint(dense: &Llama, pruned: &Llama) -> Footprint {
    Footprint {
        mode: pruned.sparse,
        sparse_linears: pruned.sparse_linears(),
        linears: pruned.blocks.iter().map(|b| b.linears.len()).sum(),
        bytes: pruned.linear_bytes() as u64,
        dense_bytes: dense.linear_bytes() as u64,
    }
}

impl BackgroundJob for Sparse {
    const STAGE: Stage = Stage::PrunedEval;

    fn request(s: &mut State) -> Option<Self> {
        let (Some(id), Some(cur)) = (s.held_entry(), s.sparse) else {
            s.say(
                "apply first (a): X switches the applied model's sparse execution",
                Tone::Info,
            );
            return None;
        };
        let mode = match cur {
            SparseMode::Off => SparseMode::Auto,
            SparseMode::Auto | SparseMode::On => SparseMode::Off,
        };
        s.sparse = Some(mode);
        s.say(
            format!("#{id}: sparse execution {}…", mode.name()),
            Tone::Info,
        );
        Some(Sparse { mode })
    }

    fn into_job(self) -> Job {
        Job::Sparse { mode: self.mode }
    }

    fn run(&self, w: &mut Worker<'_>) -> Result<()> {
        let mode = self.mode;
        w.held.sparse = mode;
        let Some((id, m)) = &mut w.held.pruned else {
            return Ok(());
        };
        m.llama.set_sparse(mode)?;
        let fp = footprint(&w.x.model.llama, &m.llama);
        (w.send)(Msg::Footprint {
            id: *id,
            footprint: fp,
        });
        (w.send)(Msg::Status(format!(
            "#{id}: sparse execution {}, {} of {} linears sparse, {:.0} MB ({:.2}× dense); g generates again",
            mode.name(),
            fp.sparse_linears,
            fp.linears,
            fp.bytes as f64 / 1e6,
            fp.ratio()
        )));
        Ok(())
    }

    /// What an applied entry's linears hold and how they run (after an apply, and after this
    /// key).
    fn on_reply(s: &mut State, m: Msg) {
        let Msg::Footprint { id, footprint } = m else {
            return;
        };
        if let Some(h) = s.history.iter_mut().find(|h| h.id == id) {
            h.footprint = Some(footprint);
        }
        s.sparse = Some(footprint.mode);
    }
}
