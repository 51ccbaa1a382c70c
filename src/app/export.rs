//! The explorer's export and import: the report of the current state (the same schema as
//! `dlpx prune --report`) and restoring parameters from a saved config.

use color_eyre::eyre::bail;

use super::State;
use crate::experiment::{build_report, Measured};
use crate::report::{GenerationPair, Report, Timings, ZeroShotPair};

impl State {
    /// The report of the current state: current parameters and allocation, plus measurements of
    /// the last apply when it used these parameters.
    pub fn report(&self) -> color_eyre::Result<Report> {
        let (Some(s), Some(cal), Some(plan)) = (&self.summary, &self.cal, &self.plan) else {
            bail!("nothing to export before calibration has finished");
        };
        let applied = self.current_applied();
        let generations = match applied {
            Some(_) => self
                .prompts
                .iter()
                .map(|p| GenerationPair {
                    prompt: p.prompt.clone(),
                    dense: p.dense.clone(),
                    pruned: p.pruned.clone(),
                })
                .collect(),
            None => vec![],
        };
        let measured = Measured {
            achieved: applied.and_then(|a| a.achieved.clone()),
            dense_ppl: self.dense_ppl,
            pruned_ppl: applied.and_then(|a| a.ppl),
            dense_window_nll: self.dense_window_nll.clone(),
            pruned_window_nll: applied.and_then(|a| a.window_nll.clone()),
            generations,
            calib_draws: None,
            alpha_search: None,
            zeroshot: self.dense_zeroshot.as_ref().map(|d| ZeroShotPair {
                dense: d.clone(),
                pruned: applied.and_then(|a| a.zeroshot.clone()),
            }),
            timings: Timings {
                load_s: 0.0,
                calibrate_s: cal.seconds,
                stats_cache_hit: self.cache_hit,
                allocate_us: plan.allocate_us,
                prune_s: applied.map(|a| a.seconds).unwrap_or(0.0),
                eval_s: 0.0,
                zeroshot_s: 0.0,
                quantize_s: 0.0,
            },
        };
        Ok(build_report(s, &self.params, cal, plan, measured))
    }

    pub fn export(&self, path: &std::path::Path) -> color_eyre::Result<()> {
        self.report()?.save(path)
    }

    /// The llm-compressor recipe of the current allocation (the same as `dlpx prune --recipe-out`).
    pub fn export_recipe(&self, path: &std::path::Path) -> color_eyre::Result<()> {
        let yaml = crate::export::recipe::llm_compressor_recipe(&self.report()?)?;
        crate::assets::write_atomic(path, yaml.as_bytes())
    }

    /// Restore parameters (and pins) from a saved report/config.
    pub fn open(&mut self, path: &std::path::Path) -> color_eyre::Result<()> {
        let r = Report::load(path)?;
        let n = self.n_blocks();
        if n > 0 && r.blocks.len() != n {
            bail!(
                "`{}` is for a model with {} blocks; this one has {n}",
                path.display(),
                r.blocks.len()
            );
        }
        r.params.validate(n.max(1))?;
        self.params = r.params;
        self.replan();
        Ok(())
    }
}
