//! LoRA recovery through the experiment: which windows train and which are held out, and the
//! training loop with progress in the observer's terms (steps, tokens/s, cancel).

use color_eyre::eyre::{Result, WrapErr};

use super::{dataset, go_on, Experiment, Observer, Stage, Step};
use crate::data::source_windows;
use crate::model::Llama;
use crate::recover::{train, Adapters, LoraParams, Trained};
use crate::report::DataSet;

/// Windows and their description.
pub type Windows = (Vec<Vec<u32>>, DataSet);

impl Experiment {
    /// Training and held-out windows for LoRA recovery. `calib`: the experiment's calibration
    /// windows, and the `holdout` windows that follow them in the same text (as the α search
    /// holds them out); a file: its first `n_train` windows, then `holdout` more.
    pub fn recovery_windows(
        &self,
        data: &str,
        n_train: usize,
        holdout: usize,
        obs: &mut dyn Observer,
    ) -> Result<(Windows, Windows)> {
        if data == "calib" {
            let train = (self.calib.clone(), self.summary.data.calib.clone());
            let heldout = self.heldout_windows(holdout, obs)?;
            return Ok((train, heldout));
        }
        let mut spec = self.data.clone();
        spec.calib = data.to_string();
        let (src, _) = spec
            .sources()
            .wrap_err(format!("LoRA training data `{data}`"))?;
        let seq = self.data.seq_len;
        let mut status = |m: &str| obs.status(m);
        let (mut w, sha) =
            source_windows(&src, &self.model, n_train + holdout, seq, true, spec.seed, &mut status)
                .wrap_err_with(|| {
                    format!("LoRA training data `{data}`: need {n_train} training and {holdout} held-out windows of {seq} tokens")
                })?;
        let heldout = w.split_off(n_train);
        let mut held = dataset(sha.clone(), holdout, seq, data, None);
        held.offset = n_train;
        Ok(((w, dataset(sha, n_train, seq, data, None)), (heldout, held)))
    }

    /// Train `adapters` on `llama` (the pruned model) on `windows` (training, held-out), reporting each step as
    /// [`Stage::Recover`] and each held-out evaluation as a status line; a `Break` stops with the
    /// best adapters so far. `on_best` runs at every held-out improvement.
    pub fn recover(
        &self,
        llama: &mut Llama,
        adapters: &Adapters,
        (train_windows, heldout): (&[Vec<u32>], &[Vec<u32>]),
        p: &LoraParams,
        on_best: &mut dyn FnMut(&Adapters) -> Result<()>,
        obs: &mut dyn Observer,
    ) -> Result<Trained> {
        let started = std::time::Instant::now();
        let tokens_per_step = p.batch * train_windows.first().map(Vec::len).unwrap_or(0);
        train(
            llama,
            adapters,
            train_windows,
            heldout,
            p,
            &mut |s| {
                if let Some(h) = s.heldout {
                    obs.status(&format!(
                        "LoRA step {}/{}: training loss {:.4}, held-out loss {h:.4}",
                        s.step, s.steps, s.loss
                    ));
                }
                go_on(
                    obs,
                    Step {
                        stage: Stage::Recover,
                        done: s.step,
                        total: s.steps,
                        tokens_per_step,
                        started,
                    },
                )
            },
            on_best,
        )
    }
}
