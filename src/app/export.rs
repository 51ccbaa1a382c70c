//! The explorer's export and import: the report of the current state (the same schema as
//! `dlpx prune --report`) and restoring parameters from a saved config.

use color_eyre::eyre::bail;

use super::State;
use crate::report::{
    BlockReport, GenerationPair, Overall, PplInfo, Report, Timings, Tool, SCHEMA_VERSION,
};

impl State {
    /// The report of the current state: current parameters and allocation, plus measurements of
    /// the last apply when it used these parameters.
    pub fn report(&self) -> color_eyre::Result<Report> {
        let (Some(s), Some(cal), Some(plan)) = (&self.summary, &self.cal, &self.plan) else {
            bail!("nothing to export before calibration has finished");
        };
        let applied = self.current_applied();
        let achieved = applied.and_then(|a| a.achieved.clone());
        let w: Vec<f64> = s.numel.iter().map(|x| x.iter().sum()).collect();
        let wmean =
            |v: &[f64]| v.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / w.iter().sum::<f64>();
        let blocks = (0..plan.block.len())
            .map(|i| BlockReport {
                index: i,
                score: plan.scores[i],
                outlier_ratio: cal.owl[i],
                esd_alpha: cal.esd.get(i).map(|a| a.iter().sum::<f64>() / 7.0),
                target_sparsity: plan.block[i],
                achieved_sparsity: achieved.as_ref().map(|a| a[i]),
                n_of_m: plan.n_of_m.as_ref().map(|v| v[i]),
            })
            .collect();
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
        Ok(Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool::default(),
            model: s.info.clone(),
            data: s.data.clone(),
            params: self.params.clone(),
            blocks,
            overall: Overall {
                target_sparsity: wmean(&plan.block),
                achieved_sparsity: achieved.as_ref().map(|a| wmean(a)),
            },
            ppl: PplInfo {
                dense: self.dense_ppl,
                pruned: applied.and_then(|a| a.ppl),
                protocol: s.protocol.clone(),
            },
            generations,
            timings: Timings {
                load_s: 0.0,
                calibrate_s: cal.seconds,
                stats_cache_hit: self.cache_hit,
                allocate_us: plan.allocate_us,
                prune_s: applied.map(|a| a.seconds).unwrap_or(0.0),
                eval_s: 0.0,
            },
        })
    }

    pub fn export(&self, path: &std::path::Path) -> color_eyre::Result<()> {
        self.report()?.save(path)
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
