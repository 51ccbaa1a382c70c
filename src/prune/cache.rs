//! On-disk cache of calibration statistics, keyed by (model, calibration text, windows, seq_len,
//! dtype), so a second run — or the TUI after a reconnect — skips the dense pass. A cache file that
//! cannot be read is ignored and rewritten, never trusted.

use std::path::PathBuf;

use color_eyre::eyre::Result;
use serde::Serialize;

use super::stats::{calibrate, owl_ratios, BlockProgress, Calibration};
use crate::assets::{cache_load, cache_store, keyed_path};
use crate::model::LoadedModel;

/// Bump when the statistics' meaning or layout changes: old files then miss. (3: the fused CPU
/// attention changed the calibration forward's activations in their last bits.)
const FORMAT: u32 = 3;

/// What the statistics depend on.
#[derive(Debug, Clone, Serialize)]
pub struct StatsKey {
    pub model: String,
    pub data_sha256: String,
    pub windows: usize,
    pub seq_len: usize,
    pub dtype: String,
    format: u32,
}

impl StatsKey {
    /// `model` is the weights' identity ([`crate::model::LoadedModel::identity`]).
    pub fn new(
        model: &str,
        data_sha256: &str,
        windows: usize,
        seq_len: usize,
        dtype: candle_core::DType,
    ) -> Self {
        Self {
            model: model.to_string(),
            data_sha256: data_sha256.to_string(),
            windows,
            seq_len,
            dtype: format!("{dtype:?}").to_lowercase(),
            format: FORMAT,
        }
    }

    /// `<cache>/stats/<sha256 of the key>.json`.
    pub fn path(&self) -> Result<PathBuf> {
        keyed_path("stats", self)
    }
}

/// Read cached statistics; `None` when absent or unreadable.
pub fn load(key: &StatsKey) -> Option<Calibration> {
    cache_load("stats", key)
}

pub fn store(key: &StatsKey, cal: &Calibration) -> Result<()> {
    cache_store("stats", key, cal)
}

/// The dense pass through the cache: returns the statistics and whether they came from disk.
/// With `key = None` the cache is bypassed (the user asked for fresh statistics). A failed write only warns.
pub fn calibrate_cached(
    m: &LoadedModel,
    windows: &[Vec<u32>],
    key: Option<&StatsKey>,
    owl_m: f64,
    spectra: bool,
    progress: &mut dyn FnMut(BlockProgress) -> bool,
    warn: &mut dyn FnMut(&str),
) -> Result<(Calibration, bool)> {
    if let Some(mut cal) = key.and_then(load) {
        if cal.inputs.len() == m.llama.blocks.len() {
            if cal.owl_m != owl_m {
                cal.owl = owl_ratios(&m.llama, &cal, owl_m)?;
                cal.owl_m = owl_m;
            }
            if spectra && cal.esd.len() != cal.inputs.len() {
                // Cached without the spectra: add them and keep them for next time.
                cal.esd = super::stats::spectra(&m.llama)?;
                if let Some(k) = key {
                    if let Err(e) = store(k, &cal) {
                        warn(&format!(
                            "warning: could not save the statistics cache: {e}"
                        ));
                    }
                }
            }
            return Ok((cal, true));
        }
    }
    let cal = calibrate(&m.llama, windows, owl_m, spectra, progress)?;
    if let Some(k) = key {
        if let Err(e) = store(k, &cal) {
            warn(&format!(
                "warning: could not save the statistics cache: {e}"
            ));
        }
    }
    Ok((cal, false))
}
