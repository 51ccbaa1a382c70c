//! A pruned (and optionally quantized) model as one GGUF file, the way llama.cpp's converter
//! writes Llama-family models: llama.cpp tensor names, Q/K rows permuted for its interleaved rope
//! (Llama and Mistral), the architecture metadata it reads, and the tokenizer metadata of the
//! source (copied from a GGUF source; built from the tokenizer for byte-level BPE folders).
//!
//! Only the seven linears of every block are quantized (when a format is given); embeddings,
//! head and norms stay f32, so the file holds exactly the values dlpx measured. Without a
//! format the linears are f32 too (pruned zeros stored as zeros).
//!
//! The refusals are typed ([`GgufError`]): the command line names its flags in them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};

use crate::model::config::Arch;
use crate::model::gguf::permute_rows;
use crate::model::quant::{quantize_matrix, QuantFormat};
use crate::model::{LinearKind, LoadedModel, ModelSource};

/// Why a GGUF export was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The tokenizer is not one dlpx can write as GGUF metadata (why not).
    Tokenizer(String),
    /// The target is not a `.gguf` file path.
    NotAFile(std::path::PathBuf),
}

impl GgufError {
    /// The message with the format setting and the save path named by `format` and `save`
    /// (plain words here, flags on the command line).
    pub fn render(&self, format: &str, save: &str) -> String {
        match self {
            GgufError::Tokenizer(why) => format!(
                "{format}: cannot write this tokenizer as GGUF metadata ({why}); dlpx writes \
                 byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen2) and copies a GGUF \
                 source's; convert others with llama.cpp's convert_hf_to_gguf.py from a {save} folder"
            ),
            GgufError::NotAFile(out) => format!(
                "{format} writes one file: give {save} a path ending in .gguf (got `{}`)",
                out.display()
            ),
        }
    }
}

impl std::fmt::Display for GgufError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render("GGUF export", "saved"))
    }
}

impl std::error::Error for GgufError {}

/// What the GGUF export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufSummary {
    pub tensors: usize,
    pub bytes: u64,
}

/// Hugging Face name → llama.cpp name (`None` for names llama.cpp has no tensor for).
pub fn hf_to_gguf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.into());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (idx, tail) = rest.split_once('.')?;
    let (part, kind) = tail.rsplit_once('.')?;
    let g = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{kind}"))
}

/// llama.cpp's `general.file_type` for a file whose linears are in `format` (none: all f32).
fn file_type(format: Option<QuantFormat>) -> u32 {
    match format {
        None => 0,                    // ALL_F32
        Some(QuantFormat::Q4_0) => 2, // MOSTLY_Q4_0
        Some(QuantFormat::Q8_0) => 7, // MOSTLY_Q8_0
        Some(QuantFormat::Q4K) => 14, // MOSTLY_Q4_K_S
    }
}

/// The architecture metadata llama.cpp reads for `arch`.
fn arch_metadata(model: &LoadedModel, format: Option<QuantFormat>) -> Vec<(String, Value)> {
    let c = &model.llama.config;
    // llama.cpp runs Mistral checkpoints as `llama` (its converter writes them so).
    let a = match c.arch {
        Arch::Qwen2 => "qwen2",
        Arch::Llama | Arch::Mistral => "llama",
    };
    let u = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            "general.name".into(),
            Value::String(format!("{} (pruned with dlpx)", model.source.label())),
        ),
        ("general.file_type".into(), Value::U32(file_type(format))),
        ("general.quantization_version".into(), Value::U32(2)),
        (format!("{a}.context_length"), u(c.max_position_embeddings)),
        (format!("{a}.embedding_length"), u(c.hidden_size)),
        (format!("{a}.block_count"), u(c.num_hidden_layers)),
        (format!("{a}.feed_forward_length"), u(c.intermediate_size)),
        (
            format!("{a}.attention.head_count"),
            u(c.num_attention_heads),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            u(c.num_key_value_heads),
        ),
        (format!("{a}.attention.key_length"), u(c.head_dim)),
        (format!("{a}.attention.value_length"), u(c.head_dim)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps as f32),
        ),
        (
            format!("{a}.rope.freq_base"),
            Value::F32(c.rope_theta as f32),
        ),
        (format!("{a}.rope.dimension_count"), u(c.head_dim)),
        (format!("{a}.vocab_size"), u(c.vocab_size)),
    ]
}

/// The source GGUF's `tokenizer.*` metadata, unchanged.
fn tokenizer_metadata_from_gguf(path: &Path) -> Result<Vec<(String, Value)>> {
    let f = crate::model::gguf::GgufFile::open(path)?;
    let mut out: Vec<(String, Value)> = f
        .content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `tokenizer.ggml.*` metadata for a byte-level BPE tokenizer (GPT-2 style: SmolLM, Llama 3,
/// Qwen2), as llama.cpp's converter writes it: tokens by id, their types (control for special
/// added tokens, user-defined for other added ones), merges and the pre-tokenizer's name.
fn tokenizer_metadata_from_json(model: &LoadedModel) -> Result<Vec<(String, Value)>> {
    let doc: serde_json::Value = serde_json::from_str(
        &model
            .tokenizer
            .to_string(false)
            .map_err(|e| eyre!("reading the tokenizer: {e}"))?,
    )?;
    let unsupported = |why: &str| color_eyre::Report::from(GgufError::Tokenizer(why.to_string()));
    let m = &doc["model"];
    if m["type"] != "BPE" || m["byte_fallback"] == true {
        return Err(unsupported("not a byte-level BPE model"));
    }
    let pre_text = doc["pre_tokenizer"].to_string();
    if !pre_text.contains("ByteLevel") {
        return Err(unsupported("its pre-tokenizer is not byte-level"));
    }
    let pre = if pre_text.contains(r"\\p{N}{1,3}") {
        "llama-bpe"
    } else if pre_text.contains(r"|\\p{N}|") {
        "qwen2"
    } else if pre_text.contains("Digits") {
        // Digits one at a time, then GPT-2's regex: llama.cpp's `starcoder` (= its `smollm`).
        "starcoder"
    } else {
        "gpt2"
    };
    let vocab = m["vocab"]
        .as_object()
        .ok_or_else(|| unsupported("no vocabulary"))?;
    let n = model.tokenizer.get_vocab_size(true);
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (t, id) in vocab {
        let id = id.as_u64().unwrap_or(u64::MAX) as usize;
        if id < n {
            tokens[id] = t.clone();
        }
    }
    for a in doc["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().unwrap_or(u64::MAX) as usize;
        if id < n {
            tokens[id] = a["content"].as_str().unwrap_or_default().to_string();
            types[id] = if a["special"] == true { 3 } else { 4 };
        }
    }
    if let Some(i) = tokens.iter().position(|t| t.is_empty()) {
        return Err(unsupported(&format!("token id {i} has no text")));
    }
    let merges: Vec<Value> = m["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| match x {
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(p) => Value::String(format!(
                "{} {}",
                p.first().and_then(|v| v.as_str()).unwrap_or_default(),
                p.get(1).and_then(|v| v.as_str()).unwrap_or_default()
            )),
            _ => Value::String(String::new()),
        })
        .collect();
    // Whether the tokenizer puts a BOS before every sequence: encode with and without specials.
    let with = model
        .tokenizer
        .encode("a", true)
        .map_err(|e| eyre!("{e}"))?;
    let without = model
        .tokenizer
        .encode("a", false)
        .map_err(|e| eyre!("{e}"))?;
    let add_bos = with.get_ids().len() > without.get_ids().len()
        && model.llama.config.bos_token_id == with.get_ids().first().copied();
    let c = &model.llama.config;
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)),
    ];
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".into(), Value::Array(merges)));
    }
    if let Some(b) = c.bos_token_id {
        out.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = c.eos_token_ids.first() {
        out.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    Ok(out)
}

/// llama.cpp's per-frequency rope factors (`rope_freqs.weight`) of a Llama-3-scaled config.
fn rope_freqs(model: &LoadedModel) -> Option<Vec<f32>> {
    let c = &model.llama.config;
    if c.rope_scaling.is_none() && c.rope_freq_factors.is_none() {
        return None;
    }
    let plain = crate::model::llama::rope_inv_freq(&crate::model::LlamaConfig {
        rope_scaling: None,
        rope_freq_factors: None,
        ..c.clone()
    });
    let scaled = crate::model::llama::rope_inv_freq(c);
    Some(
        plain
            .iter()
            .zip(&scaled)
            .map(|(p, s)| (p / s) as f32)
            .collect(),
    )
}

/// Whether `out` can take a GGUF export: a new `.gguf` file in an existing folder (checked before
/// any work).
pub fn check_target(out: &Path) -> Result<()> {
    if out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        bail!(GgufError::NotAFile(out.to_path_buf()));
    }
    if out.exists() {
        bail!(
            "`{}` exists; dlpx does not overwrite a model: remove it or choose another path",
            out.display()
        );
    }
    crate::assets::ensure_parent_dir(out)?;
    Ok(())
}

/// Save `model` as one GGUF file at `out` (written beside it, then renamed into place), its
/// block linears in `format` when given, f32 otherwise.
pub fn save_gguf(
    model: &LoadedModel,
    out: &Path,
    format: Option<QuantFormat>,
) -> Result<GgufSummary> {
    check_target(out)?;
    let c = &model.llama.config;
    let permuted = matches!(c.arch, Arch::Llama | Arch::Mistral);
    let linears: std::collections::HashSet<String> = (0..model.llama.blocks.len())
        .flat_map(|i| {
            LinearKind::ALL
                .iter()
                .map(move |k| format!("model.layers.{i}.{}.weight", k.hf_name()))
        })
        .collect();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in model.llama.named_tensors()? {
        let Some(g) = hf_to_gguf_name(&name) else {
            continue;
        };
        let mut t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        if permuted && g.contains(".attn_q.") {
            t = permute_rows(&t, c.num_attention_heads)?;
        } else if permuted && g.contains(".attn_k.") {
            t = permute_rows(&t, c.num_key_value_heads)?;
        }
        let q = match (linears.contains(&name), format) {
            (true, Some(f)) => quantize_matrix(&t, f)?,
            _ => QTensor::quantize(&t, GgmlDType::F32)?,
        };
        tensors.push((g, q));
    }
    if let Some(f) = rope_freqs(model) {
        let n = f.len();
        let t = Tensor::from_vec(f, n, &Device::Cpu)?;
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32)?,
        ));
    }
    let mut meta = arch_metadata(model, format);
    meta.extend(match &model.source {
        ModelSource::Demo | ModelSource::Gguf(_) => tokenizer_metadata_from_gguf(&model.path)?,
        _ => tokenizer_metadata_from_json(model)?,
    });
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let dir = crate::assets::ensure_parent_dir(out)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".dlpx-")
        .suffix(".gguf")
        .tempfile_in(dir)
        .wrap_err_with(|| format!("cannot write in `{}`", dir.display()))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        gguf_file::write(&mut w, &meta_refs, &tensor_refs)
            .wrap_err_with(|| format!("writing `{}`", out.display()))?;
        std::io::Write::flush(&mut w)?;
    }
    let bytes = tmp.as_file().metadata()?.len();
    crate::assets::make_shareable(tmp.path(), false)?;
    tmp.persist(out)
        .map_err(|e| eyre!("cannot write `{}`: {e}", out.display()))?;
    Ok(GgufSummary {
        tensors: tensors.len(),
        bytes,
    })
}

/// The tensors of a written GGUF by llama.cpp name, for checks.
pub fn tensor_types(path: &Path) -> Result<HashMap<String, GgmlDType>> {
    let f = crate::model::gguf::GgufFile::open(path)?;
    Ok(f.content
        .tensor_infos
        .iter()
        .map(|(k, v)| (k.clone(), v.ggml_dtype))
        .collect())
}
