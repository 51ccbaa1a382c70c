//! Loading, holding and saving models.

pub mod config;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hf_files;
pub mod linear;
pub mod llama;
pub mod quant;
pub mod source;
pub mod synthetic;
pub mod train_ops;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use tokenizers::Tokenizer;

use crate::sparse::SparseMatrix;

pub use config::LlamaConfig;
pub use linear::{InputStats, LinearKind, PrunableLinear};
pub use llama::{KvCache, Llama, WeightSource};
pub use source::ModelSource;

/// A model ready to run: weights, tokenizer, and where it came from.
#[derive(Clone)]
pub struct LoadedModel {
    pub llama: Llama,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
    /// The file or folder the weights were read from.
    pub path: PathBuf,
    /// tokenizer_config.json and its companions, written beside a saved folder.
    pub hf_files: hf_files::HfFiles,
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

    /// A content identity of the weights: the file's sha256 for GGUF (the pinned one for the
    /// demo), else a fingerprint of the folder (config.json bytes, and name, size and mtime of
    /// every safetensors file). Keys the result caches; hashes a GGUF file once per call.
    pub fn identity(&self) -> Result<String> {
        match &self.source {
            ModelSource::Demo => Ok(crate::assets::demo::GGUF_SHA256.to_string()),
            ModelSource::Gguf(p) => crate::assets::sha256_file(p),
            ModelSource::Folder(_) | ModelSource::Hub { .. } => folder_fingerprint(&self.path),
        }
    }

    /// Encode without special tokens (the protocol's tokenization).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        encode(&self.tokenizer, text)
    }
}

/// Text per chunk of [`LoadedModel::encode_long`].
const CHUNK_BYTES: usize = 64 * 1024;

impl LoadedModel {
    /// [`encode_long`] with this model's tokenizer.
    pub fn encode_long(&self, text: &str, limit: Option<usize>) -> Result<Vec<u32>> {
        encode_long(&self.tokenizer, text, limit)
    }
}

/// The ids of `encode(tok, text)`, stopping once `limit` ids are there (`None`: all of them).
///
/// A long text is encoded in chunks of about 64 KiB, so the peak is one chunk's encoding
/// (offsets, pieces, words) rather than the whole text's (~0.5 GB for 4.6 MB of text), and
/// the first windows of a large corpus do not wait for all of it. Chunks end only where the
/// cut cannot change the ids (see [`chunk_safe`]); other tokenizers get the whole text at once.
pub fn encode_long(tok: &Tokenizer, text: &str, limit: Option<usize>) -> Result<Vec<u32>> {
    let limit = limit.unwrap_or(usize::MAX);
    if !chunk_safe(tok) {
        let mut ids = encode(tok, text)?;
        ids.truncate(limit);
        return Ok(ids);
    }
    let mut ids = Vec::new();
    let mut rest = text;
    while !rest.is_empty() && ids.len() < limit {
        let cut = safe_cut(rest, CHUNK_BYTES);
        ids.extend(encode(tok, &rest[..cut])?);
        rest = &rest[cut..];
    }
    ids.truncate(limit);
    Ok(ids)
}

/// Whether cutting a text after a newline that has a non-whitespace character on each side
/// keeps the ids: true for byte-level BPE with the GPT-2 split regex and no normalizer or
/// prefix space (GPT-2, SmolLM). There, such a newline is a pre-token of its own in the whole
/// text (`\s+` matches just it, since `\s+(?!\S)` fails before the next character) and at the
/// end of a chunk (`\s+(?!\S)` matches just it), and the regex match after it starts afresh in
/// both; BPE never merges across pre-tokens. A newline next to other whitespace is not a cut
/// point: at a chunk's end `\s+(?!\S)` would take the whole run, in the text only part of it.
fn chunk_safe(tok: &Tokenizer) -> bool {
    use tokenizers::PreTokenizerWrapper;
    let byte_level = matches!(
        tok.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space && b.use_regex
    );
    let newline_in_added = tok
        .get_added_tokens_decoder()
        .values()
        .any(|t| t.content.contains('\n'));
    byte_level && tok.get_normalizer().is_none() && !newline_in_added
}

/// The length of the first chunk of `text`: at least `min` bytes, ending just after a newline
/// with non-whitespace on both sides (Unicode whitespace, as the split regex's `\s`); all of
/// `text` when there is no such newline after `min`.
fn safe_cut(text: &str, min: usize) -> usize {
    let mut start = min.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    for (off, _) in text[start..].match_indices('\n') {
        let i = start + off;
        let before = text[..i].chars().next_back();
        let after = text[i + 1..].chars().next();
        if let (Some(p), Some(n)) = (before, after) {
            if !p.is_whitespace() && !n.is_whitespace() {
                return i + 1;
            }
        }
    }
    text.len()
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode_fast(text, false)
        .map_err(|e| eyre!("tokenizer: {e}"))?
        .get_ids()
        .to_vec())
}

/// A matrix's weights as f32 row-major.
pub fn weights_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn folder_fingerprint(dir: &Path) -> Result<String> {
    let mut parts = vec![std::fs::read(dir.join("config.json")).unwrap_or_default()];
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .wrap_err_with(|| format!("cannot list `{}`", dir.display()))?
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
    Ok(crate::assets::sha256_bytes(&parts.concat()))
}

/// The status line after loading: what, how big, where, and how long it took.
pub fn loaded_line(m: &LoadedModel, device: &Device, dtype: DType, secs: f64) -> String {
    let c = &m.llama.config;
    format!(
        "loaded {} ({} blocks, {:.1} M parameters, {}, {:?}) in {:.1}s",
        m.source.label(),
        c.num_hidden_layers,
        c.param_count() as f64 / 1e6,
        crate::device::describe(device),
        dtype,
        secs
    )
}

/// The tokenizer of a model source without loading its weights (a GGUF's metadata, a folder's
/// or a Hub repo's tokenizer.json).
pub fn load_tokenizer(source: &ModelSource, status: &mut dyn FnMut(&str)) -> Result<Tokenizer> {
    match source {
        ModelSource::Demo => tokenizer_file(&crate::assets::demo::ensure_model(status)?),
        ModelSource::Gguf(p) => tokenizer_file(p),
        ModelSource::Folder(d) => tokenizer_file(&d.join("tokenizer.json")),
        ModelSource::Hub { id, revision } => tokenizer_file(&crate::assets::hub::fetch_model_file(
            id,
            revision,
            "tokenizer.json",
            status,
        )?),
    }
}

/// A tokenizer from a `.gguf` file (its metadata; a vocabulary-only GGUF is enough) or a
/// `tokenizer.json`.
pub fn tokenizer_file(path: &Path) -> Result<Tokenizer> {
    if path.extension().and_then(|e| e.to_str()) == Some("gguf") {
        return gguf::GgufFile::open(path)?.tokenizer();
    }
    if !path.is_file() {
        bail!(
            "tokenizer `{}` does not exist: pass a .gguf file or a tokenizer.json",
            path.display()
        );
    }
    Tokenizer::from_file(path).map_err(|e| eyre!("cannot read tokenizer `{}`: {e}", path.display()))
}

/// Where the weights go at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every weight is read into memory on the compute device.
    #[default]
    Resident,
    /// Offloaded: block linears stay in their file (memory-mapped safetensors, or the GGUF
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
            let assets = crate::assets::demo::ensure_model(status)?;
            let mut m = load_gguf_placed(&assets, device, dtype, place, status)?;
            m.source = ModelSource::Demo;
            Ok(m)
        }
        ModelSource::Gguf(p) => load_gguf_placed(p, device, dtype, place, status),
        ModelSource::Folder(p) => load_folder(p, source.clone(), device, dtype, place, status),
        ModelSource::Hub { id, revision } => {
            let dir = crate::assets::hub::fetch_model(id, revision, status)?;
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
    let mut config = g.config()?;
    // Llama 3.1 GGUFs carry their rope scaling as per-frequency factors.
    config.rope_freq_factors = g.rope_freq_factors()?;
    config
        .validate()
        .wrap_err_with(|| format!("`{}`", path.display()))?;
    let tokenizer = g.tokenizer()?;
    let hf_files = hf_files::HfFiles::from_special(
        &g.special_tokens(config.max_position_embeddings)?,
        &tokenizer,
    );
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
        hf_files,
    })
}

/// The safetensors files of a folder: the shards named by the index, or every `*.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .wrap_err_with(|| format!("cannot read `{}`", index.display()))?;
        let shards = crate::assets::safetensors_shards(&text, &index.display().to_string())?;
        let files: Vec<PathBuf> = shards.iter().map(|n| dir.join(n)).collect();
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

impl SafetensorsSource {
    /// The parts of a compressed-tensors weight (`sparse-bitmask` or `sparse-24-bitmask`, as
    /// dlpx's compressed export writes them; README, "Export"): for
    /// `<p>.weight`, the tensors `<p>.compressed` (kept values, row-major), `<p>.bitmask`
    /// (packed rows) and `<p>.shape` (`[rows, cols]`), as compressed rows in f32.
    fn compressed(&self, name: &str) -> candle_core::Result<Option<SparseMatrix>> {
        let Some(p) = name.strip_suffix(".weight") else {
            return Ok(None);
        };
        let part = |s: &str| format!("{p}.{s}");
        if self.names.contains(name) || !self.names.contains(&part("compressed")) {
            return Ok(None);
        }
        let cpu = &Device::Cpu;
        let load = |s: &str| -> candle_core::Result<Tensor> {
            match self.names.contains(&part(s)) {
                true => self.st.load(&part(s), cpu)?.flatten_all(),
                false => candle_core::bail!("compressed weight `{p}` has no `{}`", part(s)),
            }
        };
        let shape = load("shape")?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
        let (rows, cols) = match shape[..] {
            [r, c] if r >= 0 && c >= 0 => (r as usize, c as usize),
            _ => candle_core::bail!("`{}` is {shape:?}, not [rows, cols]", part("shape")),
        };
        let bits = load("bitmask")?.to_vec1::<u8>()?;
        let values = load("compressed")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        SparseMatrix::from_packed_bits(rows, cols, &bits, values)
            .map(Some)
            .map_err(|e| candle_core::Error::msg(format!("compressed weight `{p}`: {e}")))
    }
}

impl WeightSource for SafetensorsSource {
    fn tensor(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Option<Tensor>> {
        if !self.names.contains(name) {
            // A compressed weight wanted dense (a GPU, another dtype, an offloaded block).
            return match self.compressed(name)? {
                Some(s) => Ok(Some(s.to_tensor(device, dtype)?)),
                None => Ok(None),
            };
        }
        Ok(Some(self.st.load(name, device)?.to_dtype(dtype)?))
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        if !self.names.contains(name) {
            // A compressed weight: its `<p>.shape` tensor says `[rows, cols]`.
            let p = name.strip_suffix(".weight")?;
            let shape = self.st.load(&format!("{p}.shape"), &Device::Cpu).ok()?;
            let dims = shape.flatten_all().ok()?.to_vec1::<i64>().ok()?;
            return dims.iter().map(|&d| usize::try_from(d).ok()).collect();
        }
        Some(self.st.get(name).ok()?.shape().to_vec())
    }

    fn sparse_weight(&self, name: &str) -> candle_core::Result<Option<SparseMatrix>> {
        self.compressed(name)
    }
}

/// Load a safetensors folder (config.json, tokenizer.json, *.safetensors or an index).
///
/// The safetensors files are memory-mapped, not read: do not truncate or rewrite them while the
/// model is in use (for example by re-downloading into the same folder), or the process is
/// killed by SIGBUS on its next read of the weights.
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
    // SAFETY: a memory map is only sound while nobody truncates or rewrites the file: the map
    // lives as long as the model (offloaded, blocks are read from it on every pass), and a
    // file shortened under it makes the next read fault with SIGBUS. dlpx itself never writes
    // to a source folder (exports go to a new folder); the user must not replace the files
    // while dlpx runs, as documented on `load_folder`.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .wrap_err_with(|| format!("cannot read the safetensors files of `{}`", dir.display()))?;
    let names: HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let src = SafetensorsSource { st, names };
    let llama = match place {
        Placement::Resident => Llama::from_source(config, device, dtype, &src)?,
        Placement::Offload => Llama::offloaded(config, device, dtype, std::sync::Arc::new(src))?,
    };
    Ok(LoadedModel {
        llama,
        tokenizer,
        source,
        path: dir.to_path_buf(),
        hf_files: hf_files::HfFiles::from_folder(dir)?,
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
    let tensors: HashMap<String, Tensor> = model.llama.named_tensors()?.into_iter().collect();
    write_folder(model, out, &tensors, model.llama.config.to_hf_json()?)
}

/// Write an HF-style folder from `tensors` (model.safetensors) and `config` (config.json), with
/// the model's tokenizer.json and [`hf_files`]. The folder is built beside `out` and renamed into
/// place, so a failure never leaves a half-written model at `out`.
pub fn write_folder(
    model: &LoadedModel,
    out: &Path,
    tensors: &HashMap<String, Tensor>,
    config: serde_json::Value,
) -> Result<()> {
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
    candle_core::safetensors::save(tensors, tmp.path().join("model.safetensors"))?;
    let cfg = serde_json::to_string_pretty(&config)?;
    std::fs::write(tmp.path().join("config.json"), cfg)?;
    model
        .tokenizer
        .save(tmp.path().join("tokenizer.json"), false)
        .map_err(|e| eyre!("writing tokenizer.json: {e}"))?;
    model
        .hf_files
        .write(tmp.path(), &model.llama.config, &model.tokenizer)?;
    // The temp folder and safetensors' file are created private; an export is meant to be shared.
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        hf_files::TOKENIZER_CONFIG,
        hf_files::SPECIAL_TOKENS_MAP,
        hf_files::GENERATION_CONFIG,
    ] {
        crate::assets::make_shareable(&tmp.path().join(f), false)?;
    }
    crate::assets::make_shareable(tmp.path(), true)?;
    if out.exists() {
        std::fs::remove_dir(out)?; // empty, checked above
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, out)
        .wrap_err_with(|| format!("cannot move the export into `{}`", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_cut;

    #[test]
    fn chunks_end_after_a_newline_between_non_spaces() {
        let t = "ab\n\ncd\nef\n gh\nij";
        // From byte 0: "\n\n" is skipped (whitespace on a side), "cd\nef" is a cut point.
        assert_eq!(&t[..safe_cut(t, 0)], "ab\n\ncd\n");
        assert_eq!(&t[..safe_cut(t, 8)], "ab\n\ncd\nef\n gh\n");
        assert_eq!(safe_cut(t, 15), t.len());
        // Non-ASCII whitespace counts as whitespace; a cut never splits a character.
        let u = "é\n\u{a0}x\ny";
        assert_eq!(&u[..safe_cut(u, 1)], "é\n\u{a0}x\n");
    }
}
