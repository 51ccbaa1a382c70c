//! α chosen automatically: DLP's range α chosen by the data instead of by hand (the paper tunes α per
//! model, §5). Every α of a grid is applied in preview mode (masks from the dense statistics)
//! and measured on held-out *calibration* windows: the windows after the calibration windows
//! of a text source, or another sampler seed of a document source. The search takes only those
//! windows, so the evaluation data cannot leak into the choice.

use color_eyre::eyre::{bail, Result, WrapErr};

use super::{dataset, Experiment, Observer};
use crate::data::source_windows;
use crate::error::Setting;
use crate::eval::perplexity::perplexity;
use crate::prune::params::{InvalidParam, Param, Problem};
use crate::prune::pipeline::{plan, prune_preview, Mode, PruneParams};
use crate::prune::stats::Calibration;
use crate::report::{AlphaSearch, AlphaTrial, DataSet};

/// Grid step and largest α tried.
const STEP: f64 = 0.025;
const MAX_ALPHA: f64 = 0.3;
/// Seed offset of the held-out sample for document sources (far from the calibration draws').
const HOLDOUT_SEED_OFFSET: u64 = 1_000_003;

/// The α grid: 0, 0.025, … up to 0.3, keeping those valid at the other parameters.
pub fn alpha_grid(base: &PruneParams, blocks: usize) -> Vec<f64> {
    let n = (MAX_ALPHA / STEP).round() as usize;
    (0..=n)
        .map(|i| ((i as f64 * STEP) * 1e9).round() / 1e9)
        .filter(|&a| {
            let mut p = base.clone();
            p.alloc.alpha = a;
            p.validate(blocks).is_ok()
        })
        .collect()
}

impl Experiment {
    /// `h` held-out windows from the calibration source, disjoint from the calibration windows.
    pub fn heldout_windows(
        &self,
        h: usize,
        obs: &mut dyn Observer,
    ) -> Result<(Vec<Vec<u32>>, DataSet)> {
        if h == 0 {
            return Err(crate::said!(Setting::AlphaHoldout, " must be at least 1 window").into());
        }
        let d = &self.data;
        let (src, _) = d.sources()?;
        let mut status = |m: &str| obs.status(m);
        if src.is_sampled() {
            let seed = d.seed + HOLDOUT_SEED_OFFSET;
            let (w, sha) =
                source_windows(&src, &self.model, h, d.seq_len, true, seed, &mut status)?;
            return Ok((w, dataset(sha, h, d.seq_len, &d.calib, Some(seed))));
        }
        let n = d.calib_samples;
        let (mut w, sha) =
            source_windows(&src, &self.model, n + h, d.seq_len, true, 0, &mut status)
                .wrap_err_with(|| {
                    format!(
                        "choosing α needs {h} held-out windows after the {n} calibration windows"
                    )
                })?;
        let heldout = w.split_off(n);
        let mut set = dataset(sha, h, d.seq_len, &d.calib, None);
        set.offset = n;
        Ok((heldout, set))
    }

    /// Held-out perplexity of each α of [`alpha_grid`], in preview mode.
    pub fn search_alpha(
        &self,
        cal: &Calibration,
        base: &PruneParams,
        heldout: &[Vec<u32>],
        heldout_set: DataSet,
        obs: &mut dyn Observer,
    ) -> Result<AlphaSearch> {
        if !Param::Alpha.applies_to(base.alloc.allocation) {
            return Err(InvalidParam {
                param: Param::Alpha,
                problem: Problem::Needs {
                    subject: "auto",
                    other: Param::Allocation,
                    value: "dlp",
                    why: " (the search is over DLP's range α)",
                },
            }
            .into());
        }
        let grid = alpha_grid(base, self.model.llama.blocks.len());
        if grid.is_empty() {
            bail!("no α in 0…{MAX_ALPHA} is valid at these parameters");
        }
        let mut trace = Vec::with_capacity(grid.len());
        for (i, &alpha) in grid.iter().enumerate() {
            obs.status(&format!(
                "α search {}/{}: α = {alpha} on {} held-out calibration windows",
                i + 1,
                grid.len(),
                heldout.len()
            ));
            let mut p = base.clone();
            p.alloc.alpha = alpha;
            p.mode = Mode::Preview;
            let pl = plan(&self.model.llama, cal, &p)?;
            let mut llama = self.model.llama.clone();
            prune_preview(&mut llama, cal, &pl, &p)?;
            let started = std::time::Instant::now();
            let seq = heldout.first().map(Vec::len).unwrap_or(0);
            let r = perplexity(&llama, heldout, &mut |done, total| {
                super::go_on(
                    obs,
                    super::Step {
                        stage: super::Stage::PrunedEval,
                        done,
                        total,
                        tokens_per_step: seq,
                        started,
                    },
                )
            })?;
            trace.push(AlphaTrial { alpha, ppl: r.ppl });
        }
        let chosen = trace
            .iter()
            .fold(None::<&AlphaTrial>, |best, t| match best {
                Some(b) if b.ppl <= t.ppl => Some(b),
                _ => Some(t),
            })
            .map(|t| t.alpha)
            .unwrap_or(base.alloc.alpha);
        Ok(AlphaSearch {
            heldout: heldout_set,
            trace,
            chosen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_stays_valid() {
        let g = alpha_grid(&PruneParams::default(), 30);
        assert_eq!(g.len(), 13);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[12], 0.3);
        assert_eq!(g[5], 0.125);
    }
}
