//! From a study's files to its tables and figures: pure functions of reports and sweep files
//! (no model, no device). The `dlpx table` and `dlpx plot` front ends only read the files and
//! write what these return.

pub mod plot;
pub mod table;

#[cfg(test)]
pub(crate) mod sample {
    use crate::prune::pipeline::PruneParams;
    use crate::report::*;

    /// A two-block report with made-up but fixed numbers, for the unit tests.
    pub fn report() -> Report {
        let set = |windows| DataSet {
            source: "demo".into(),
            sha256: "00".into(),
            windows,
            seq_len: 128,
            seed: None,
            offset: 0,
        };
        Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool::default(),
            model: ModelInfo {
                source: "demo".into(),
                sha256: None,
                revision: None,
                architecture: "llama".into(),
                blocks: 2,
                parameters: 1000,
                dtype: "f32".into(),
            },
            data: DataInfo {
                calib: set(4),
                eval: Some(set(6)),
            },
            params: PruneParams::default(),
            blocks: (0..2)
                .map(|i| BlockReport {
                    index: i,
                    score: 1.0 + i as f64,
                    outlier_ratio: 2.0,
                    esd_alpha: None,
                    target_sparsity: 0.6 + 0.2 * i as f64,
                    achieved_sparsity: Some(0.61 + 0.2 * i as f64),
                    n_of_m: None,
                })
                .collect(),
            overall: Overall {
                target_sparsity: 0.7,
                achieved_sparsity: Some(0.71),
            },
            ppl: PplInfo {
                dense: Some(12.345),
                pruned: Some(45.678),
                protocol: "test".into(),
                dense_window_nll: None,
                pruned_window_nll: None,
            },
            generations: vec![],
            alpha_search: None,
            calib_draws: None,
            zeroshot: None,
            quantized: None,
            recovered: None,
            speed: None,
            timings: Timings::default(),
        }
    }
}
