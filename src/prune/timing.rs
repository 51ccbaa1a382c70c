//! Seconds per stage of the block-by-block passes, so the pruning benchmark can say where a
//! block's time goes (README "Benchmarks"). The passes always fill one [`StageTimes`] per block;
//! the cost is a clock read per stage per linear.

use std::time::Instant;

use serde::Serialize;

/// Where one block's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Reading the block's weights (from the file when offloaded; nothing when resident).
    pub load: f64,
    /// Block forwards (the observers' time excluded).
    pub forward: f64,
    /// Wanda's input statistic (`scaler_row`), recorded during the forwards.
    pub input_stats: f64,
    /// SparseGPT's input Hessians, recorded during the forwards.
    pub hessians: f64,
    /// The block statistic: Wanda scores, their sums, the exact median and OWL's outlier count.
    pub block_statistic: f64,
    /// AlphaPruning's eigenvalue problems (when the spectra are asked for).
    pub spectra: f64,
    /// Masks: the per-weight metric and the per-row (per-matrix, N:M) selection.
    pub masks: f64,
    /// SparseGPT's solve (Hessian inverse and the column sweep).
    pub solve: f64,
    /// Weights copied to host f32 for the per-weight work.
    pub to_host: f64,
    /// Masks (and SparseGPT's new weights) sent back and applied to the weights.
    pub apply: f64,
}

impl StageTimes {
    pub fn total(&self) -> f64 {
        self.load
            + self.forward
            + self.input_stats
            + self.hessians
            + self.block_statistic
            + self.spectra
            + self.masks
            + self.solve
            + self.to_host
            + self.apply
    }

    /// The stages that touch every weight once per block: scores, statistic, masks.
    pub fn per_weight(&self) -> f64 {
        self.block_statistic + self.masks
    }

    /// Stage by stage sum.
    pub fn plus(&self, o: &Self) -> Self {
        Self {
            load: self.load + o.load,
            forward: self.forward + o.forward,
            input_stats: self.input_stats + o.input_stats,
            hessians: self.hessians + o.hessians,
            block_statistic: self.block_statistic + o.block_statistic,
            spectra: self.spectra + o.spectra,
            masks: self.masks + o.masks,
            solve: self.solve + o.solve,
            to_host: self.to_host + o.to_host,
            apply: self.apply + o.apply,
        }
    }

    /// Every stage multiplied by `f`.
    pub fn scaled(&self, f: f64) -> Self {
        Self {
            load: self.load * f,
            forward: self.forward * f,
            input_stats: self.input_stats * f,
            hessians: self.hessians * f,
            block_statistic: self.block_statistic * f,
            spectra: self.spectra * f,
            masks: self.masks * f,
            solve: self.solve * f,
            to_host: self.to_host * f,
            apply: self.apply * f,
        }
    }

    /// The stages as (name, seconds), in pipeline order.
    pub fn stages(&self) -> [(&'static str, f64); 10] {
        [
            ("load", self.load),
            ("forward", self.forward),
            ("input_stats", self.input_stats),
            ("hessians", self.hessians),
            ("block_statistic", self.block_statistic),
            ("spectra", self.spectra),
            ("masks", self.masks),
            ("solve", self.solve),
            ("to_host", self.to_host),
            ("apply", self.apply),
        ]
    }
}

/// Run `f`, adding its wall time to `slot`.
pub fn timed<T>(slot: &mut f64, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    *slot += t.elapsed().as_secs_f64();
    out
}
