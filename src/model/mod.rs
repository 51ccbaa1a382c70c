//! Loading, holding and saving models.

pub mod config;
pub mod gguf;
pub mod hub;
pub mod linear;
pub mod llama;
pub mod source;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use tokenizers::Tokenizer;

pub use config::LlamaConfig;
pub use linear::{InputStats, LinearKind, PrunableLinear};
pub use llama::{KvCache, Llama, WeightSource};
pub use source::ModelSource;

/// A model ready to run: weights, tokenizer, and where it came from.
pub struct LoadedModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
    /// The file or folder the weights were read from.
    pub path: PathBuf,
}

impl LoadedModel {
    /// Token ids that end generation.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids = self.llama.config.eos_token_ids.clone();
        for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
            if let Some(id) = self.tokenizer.token_to_id(t) {
                if !ids.contains(&id) && self.llama.config.eos_token_ids.is_empty() {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Encode without special tokens (the protocol's tokenization).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode(&self.tokenizer, text)
    }
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode_fast(text, false)
        .map_err(|e| eyre!("tokenizer: {e}"))?
        .get_ids()
        .to_vec())
}

/// Where the weights go at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every weight is read into memory on the compute device.
    #[default]
    Resident,
    /// `--offload`: block linears stay in their file (memory-mapped safetensors, or the GGUF
    /// file) and are read one block at a time.
    Offload,
}

/// Load any supported source. `status` receives short progress lines (download, dequantize).
pub fn load(
    source: &ModelSource,
    device: &Device,
    dtype: DType,
    status: &mut dyn FnMut(&str),
) -> Result<LoadedModel> {
    load_placed(source, device, dtype, Placement::Resident, status)
}

/// As [`load`], choosing where the weights go.
pub fn load_placed(
    source: &ModelSource,
    device: &Device,
    dtype: DType,
    place: Placement,
    status: &mut dyn FnMut(&str),
) -> Result<LoadedModel> {
    match source {
        ModelSource::Demo => {
            let assets = crate::data::demo::ensure_model(status)?;
            let mut m = load_gguf_placed(&assets, device, dtype, place, status)?;
            m.source = ModelSource::Demo;
            Ok(m)
        }
        ModelSource::Gguf(p) => load_gguf_placed(p, device, dtype, place, status),
        ModelSource::Folder(p) => load_folder(p, source.clone(), device, dtype, place, status),
        ModelSource::Hub { id, revision } => {
            let dir = hub::fetch_model(id, revision, status)?;
            load_folder(&dir, source.clone(), device, dtype, place, status)
        }
    }
}

pub fn load_gguf(
    path: &Path,
    device: &Device,
    dtype: DType,
    status: &mut dyn FnMut(&str),
) -> Result<LoadedModel> {
    load_gguf_placed(path, device, dtype, Placement::Resident, status)
}

pub fn load_gguf_placed(
    path: &Path,
    device: &Device,
    dtype: DType,
    place: Placement,
    status: &mut dyn FnMut(&str),
) -> Result<LoadedModel> {
    if path.extension().and_then(|e| e.to_str()) == Some("safetensors") {
        bail!("`{}` is a single safetensors file: pass the folder that holds it with config.json and tokenizer.json", path.display());
    }
    status(&format!("reading {}", path.display()));
    let mut g = gguf::GgufFile::open(path)?;
    let config = g.config()?;
    let tokenizer = g.tokenizer()?;
    let llama = match place {
        Placement::Resident => {
            status("dequantizing weights");
            let mut tensors = g.load_tensors(&config, device, dtype)?;
            Llama::from_named(config, device, dtype, |n| Ok(tensors.remove(n)))?
        }
        Placement::Offload => {
            let src = gguf::GgufSource::new(g, &config);
            Llama::offloaded(config, device, dtype, std::sync::Arc::new(src))?
        }
    };
    Ok(LoadedModel {
        llama,
        tokenizer,
        source: ModelSource::Gguf(path.to_path_buf()),
        path: path.to_path_buf(),
    })
}

/// The safetensors files of a folder: the shards named by the index, or every `*.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .wrap_err_with(|| format!("`{}` is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| eyre!("`{}` has no weight_map", index.display()))?;
        let names: HashSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
        let mut files: Vec<PathBuf> = names.into_iter().map(|n| dir.join(n)).collect();
        files.sort();
        for f in &files {
            if !f.is_file() {
                bail!("shard `{}` named by the index is missing", f.display());
            }
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("folder `{}` has no *.safetensors weights", dir.display());
    }
    Ok(files)
}

/// The tensors of a folder's memory-mapped safetensors files.
struct SafetensorsSource {
    st: candle_core::safetensors::MmapedSafetensors,
    names: HashSet<String>,
}

impl WeightSource for SafetensorsSource {
    fn tensor(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Option<Tensor>> {
        if !self.names.contains(name) {
            return Ok(None);
        }
        Ok(Some(self.st.load(name, device)?.to_dtype(dtype)?))
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if !self.names.contains(name) {
            return None;
        }
        Some(self.st.get(name).ok()?.shape().to_vec())
    }
}

pub fn load_folder(
    dir: &Path,
    source: ModelSource,
    device: &Device,
    dtype: DType,
    place: Placement,
    status: &mut dyn FnMut(&str),
) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        bail!(
            "folder `{}` has no config.json: a model folder needs config.json, tokenizer.json and *.safetensors",
            dir.display()
        );
    }
    let config = LlamaConfig::from_hf_json(&std::fs::read_to_string(&cfg_path)?)
        .wrap_err_with(|| format!("reading `{}`", cfg_path.display()))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        bail!("folder `{}` has no tokenizer.json", dir.display());
    }
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| eyre!("cannot read `{}`: {e}", tok_path.display()))?;
    let files = safetensors_files(dir)?;
    status(&format!("mapping {} safetensors file(s)", files.len()));
    // SAFETY: the files are mapped read-only; we do not modify them while the map lives (every
    // tensor is copied out by `load`).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .wrap_err_with(|| format!("cannot read the safetensors files of `{}`", dir.display()))?;
    let names: HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let src = SafetensorsSource { st, names };
    let llama = match place {
        Placement::Resident => {
            Llama::from_named(config, device, dtype, |n| Ok(src.tensor(n, device, dtype)?))?
        }
        Placement::Offload => Llama::offloaded(config, device, dtype, std::sync::Arc::new(src))?,
    };
    Ok(LoadedModel {
        llama,
        tokenizer,
        source,
        path: dir.to_path_buf(),
    })
}

/// Refuse an output folder that exists with something in it (checked before any work, so bad
/// input loses nothing).
pub fn ensure_free_dir(out: &Path) -> Result<()> {
    let non_empty = out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if non_empty {
        bail!(
            "`{}` already exists and is not empty: choose another folder or remove it",
            out.display()
        );
    }
    Ok(())
}

/// Write an HF-style folder (model.safetensors with the original tensor names, config.json,
/// tokenizer.json). The folder is built beside `out` and renamed into place, so a failure never
/// leaves a half-written model at `out`.
pub fn save_folder(model: &LoadedModel, out: &Path) -> Result<()> {
    ensure_free_dir(out)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .wrap_err_with(|| format!("cannot create `{}`", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".dlpx-export-")
        .tempdir_in(&parent)
        .wrap_err_with(|| format!("cannot write in `{}`", parent.display()))?;
    let tensors: HashMap<String, Tensor> = model.llama.named_tensors()?.into_iter().collect();
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors"))?;
    let cfg = serde_json::to_string_pretty(&model.llama.config.to_hf_json())?;
    std::fs::write(tmp.path().join("config.json"), cfg)?;
    model
        .tokenizer
        .save(tmp.path().join("tokenizer.json"), false)
        .map_err(|e| eyre!("writing tokenizer.json: {e}"))?;
    if out.exists() {
        std::fs::remove_dir(out)?; // empty, checked above
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out)
        .wrap_err_with(|| format!("cannot move the export into `{}`", out.display()))?;
    Ok(())
}
