//! The one builder of [`Report`]: `dlpx prune`, the explorer's export and a replayed config all
//! describe a run through it, so "overall" and the per-block rows are computed one way.

use crate::prune::pipeline::{Plan, PruneParams};
use crate::prune::stats::Calibration;
use crate::report::{
    BlockReport, CalibDraws, GenerationPair, Overall, PplInfo, Report, Timings, Tool, ZeroShotPair,
};

use super::Summary;

/// What was measured after the masks were applied (all `None`/empty for a configuration that
/// was exported before applying it).
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Exact zeros per block.
    pub achieved: Option<Vec<f64>>,
    pub dense_ppl: Option<f64>,
    pub pruned_ppl: Option<f64>,
    /// Σ NLL per evaluation window of each measurement (for paired comparisons).
    pub dense_window_nll: Option<Vec<f64>>,
    pub pruned_window_nll: Option<Vec<f64>>,
    pub generations: Vec<GenerationPair>,
    pub zeroshot: Option<ZeroShotPair>,
    pub calib_draws: Option<CalibDraws>,
    pub alpha_search: Option<super::AlphaSearch>,
    pub timings: Timings,
}

/// Mean of per-block values weighted by each block's prunable parameters (the sparsity of the
/// whole model when the values are per-block sparsities).
pub fn weighted_mean(values: &[f64], numel: &[[f64; 7]]) -> f64 {
    let w: Vec<f64> = numel.iter().map(|x| x.iter().sum()).collect();
    values.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() / w.iter().sum::<f64>()
}

pub fn build_report(
    s: &Summary,
    params: &PruneParams,
    cal: &Calibration,
    plan: &Plan,
    m: Measured,
) -> Report {
    let blocks = (0..plan.block.len())
        .map(|i| BlockReport {
            index: i,
            score: plan.scores[i],
            outlier_ratio: cal.owl[i],
            esd_alpha: cal.esd.get(i).map(|a| a.iter().sum::<f64>() / 7.0),
            target_sparsity: plan.block[i],
            achieved_sparsity: m.achieved.as_ref().map(|a| a[i]),
            n_of_m: plan.n_of_m.as_ref().map(|v| v[i]),
        })
        .collect();
    Report {
        schema_version: crate::report::SCHEMA_VERSION,
        tool: Tool::default(),
        model: s.info.clone(),
        data: s.data.clone(),
        params: params.clone(),
        blocks,
        overall: Overall {
            target_sparsity: weighted_mean(&plan.block, &s.numel),
            achieved_sparsity: m.achieved.as_ref().map(|a| weighted_mean(a, &s.numel)),
        },
        ppl: PplInfo {
            dense: m.dense_ppl,
            pruned: m.pruned_ppl,
            protocol: s.protocol.clone(),
            dense_window_nll: m.dense_window_nll,
            pruned_window_nll: m.pruned_window_nll,
        },
        generations: m.generations,
        zeroshot: m.zeroshot,
        quantized: None,
        recovered: None,
        speed: None,
        calib_draws: m.calib_draws,
        alpha_search: m.alpha_search,
        timings: m.timings,
    }
}

#[cfg(test)]
mod tests {
    use super::weighted_mean;

    #[test]
    fn overall_weights_blocks_by_size() {
        let numel = [[1.0; 7], [3.0; 7]];
        assert_eq!(weighted_mean(&[0.5, 0.9], &numel), (0.5 + 3.0 * 0.9) / 4.0);
        // Equal blocks: the plain mean, to the bit.
        let eq = [[2.0; 7]; 3];
        let v = [0.6, 0.7, 0.8];
        assert_eq!(
            weighted_mean(&v, &eq),
            v.iter().map(|x| x * 14.0).sum::<f64>() / 42.0
        );
    }
}
