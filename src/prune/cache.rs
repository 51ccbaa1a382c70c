//! On-disk cache of calibration statistics, keyed by (model, calibration text, windows, seq_len,
//! dtype), so a second run — or the TUI after a reconnect — skips the dense pass. A cache file that
//! cannot be read is ignored and rewritten, never trusted.

use std::path::{Path, PathBuf};

use color_eyre::eyre::Result;
use serde::Serialize;

use super::stats::{calibrate, owl_ratios, BlockProgress, Calibration};
use crate::data::demo::{cache_dir, sha256_bytes, sha256_file};
use crate::model::{LoadedModel, ModelSource};
use crate::report::write_atomic;

/// Bump when the statistics' meaning or layout changes: old files then miss.
const FORMAT: u32 = 1;

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
    pub fn new(
        m: &LoadedModel,
        data_sha256: &str,
        windows: usize,
        seq_len: usize,
        dtype: candle_core::DType,
    ) -> Result<Self> {
        Ok(Self {
            model: model_identity(m)?,
            data_sha256: data_sha256.to_string(),
            windows,
            seq_len,
            dtype: format!("{dtype:?}").to_lowercase(),
            format: FORMAT,
        })
    }

    /// `<cache>/stats/<sha256 of the key>.json`.
    pub fn path(&self) -> Result<PathBuf> {
        let id = sha256_bytes(serde_json::to_string(self)?.as_bytes());
        Ok(cache_dir()?.join("stats").join(format!("{id}.json")))
    }
}

/// A content identity of the weights: the file's sha256 for GGUF, else a fingerprint of the
/// folder (config.json bytes, and name, size and mtime of every safetensors file).
fn model_identity(m: &LoadedModel) -> Result<String> {
    match &m.source {
        ModelSource::Demo => Ok(crate::data::demo::GGUF_SHA256.to_string()),
        ModelSource::Gguf(p) => sha256_file(p),
        ModelSource::Folder(_) | ModelSource::Hub { .. } => folder_fingerprint(&m.path),
    }
}

fn folder_fingerprint(dir: &Path) -> Result<String> {
    let mut parts = vec![std::fs::read(dir.join("config.json")).unwrap_or_default()];
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        .collect();
    files.sort_by_key(|e| e.file_name());
    for f in files {
        let md = std::fs::metadata(f.path())?;
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        parts.push(format!("{:?} {} {mtime}", f.file_name(), md.len()).into_bytes());
    }
    Ok(sha256_bytes(&parts.concat()))
}

/// Read cached statistics; `None` when absent or unreadable.
pub fn load(key: &StatsKey) -> Option<Calibration> {
    let bytes = std::fs::read(key.path().ok()?).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn store(key: &StatsKey, cal: &Calibration) -> Result<()> {
    let path = key.path()?;
    std::fs::create_dir_all(path.parent().expect("stats path has a parent"))?;
    write_atomic(&path, &serde_json::to_vec(cal)?)
}

/// The dense pass through the cache: returns the statistics and whether they came from disk.
/// With `key = None` the cache is bypassed (`--no-stats-cache`). A failed write only warns.
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
