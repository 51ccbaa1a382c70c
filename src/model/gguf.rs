//! GGUF files: metadata → [`LlamaConfig`], tensors dequantized to f32 and renamed to the Hugging
//! Face names, Q/K rows un-permuted back to the HF layout, and a tokenizer built from the
//! `tokenizer.ggml.*` metadata.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use std::str::FromStr;

use tokenizers::Tokenizer;

use super::config::{Arch, LlamaConfig, SUPPORTED_GGUF_ARCHS};
use super::gguf_tokenizer::{special_flags, tokenizer_json, GgufVocab};
use super::hf_files::SpecialTokens;

/// A parsed GGUF file: its header and an open handle for reading tensors.
pub struct GgufFile {
    pub content: Content,
    reader: BufReader<File>,
    path: std::path::PathBuf,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .wrap_err_with(|| format!("cannot open GGUF file `{}`", path.display()))?;
        let size = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        // candle's reader bounds every count and length by the file size; a panic inside it on
        // a damaged header (e.g. an alignment of 0) is still a bad file, not a crash.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut reader)));
        let content = match read {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => bail!(
                "`{}` is not a readable GGUF file ({e}); it may be truncated or not GGUF at all: download it again",
                path.display()
            ),
            Err(_) => bail!(
                "`{}` is not a readable GGUF file (its header is inconsistent); download it again",
                path.display()
            ),
        };
        // Check that every tensor's bytes are present before doing any work; the sizes come
        // from the header, so every product is checked. (A vocabulary-only file has no tensors
        // and may end before the aligned data offset.)
        let mut needed = 0u64;
        for (name, info) in &content.tensor_infos {
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
            let end = elems
                .filter(|n| n % block == 0)
                .and_then(|n| (n / block).checked_mul(size))
                .and_then(|b| {
                    content
                        .tensor_data_offset
                        .checked_add(info.offset)?
                        .checked_add(b as u64)
                });
            let Some(end) = end else {
                bail!(
                    "`{}`: tensor `{name}` has an impossible shape {:?} for {:?}; the file is damaged",
                    path.display(),
                    info.shape.dims(),
                    info.ggml_dtype
                );
            };
            needed = needed.max(end);
        }
        if size < needed {
            bail!(
                "`{}` is truncated: its header describes {needed} bytes of data but the file has {size}; download it again",
                path.display()
            );
        }
        Ok(Self {
            content,
            reader,
            path: path.to_path_buf(),
        })
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_u(&self, key: &str) -> Result<usize> {
        let v = self.meta(key).ok_or_else(|| {
            eyre!(
                "GGUF metadata `{key}` is missing in `{}`",
                self.path.display()
            )
        })?;
        Ok(match v {
            Value::U8(x) => *x as usize,
            Value::U16(x) => *x as usize,
            Value::U32(x) => *x as usize,
            Value::U64(x) => *x as usize,
            Value::I32(x) => *x as usize,
            Value::I64(x) => *x as usize,
            other => bail!(
                "GGUF metadata `{key}` has unexpected type {:?}",
                other.value_type()
            ),
        })
    }

    fn meta_f(&self, key: &str) -> Option<f64> {
        match self.meta(key)? {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            _ => None,
        }
    }

    pub fn architecture(&self) -> Result<String> {
        match self.meta("general.architecture") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => bail!(
                "`{}` has no `general.architecture` metadata",
                self.path.display()
            ),
        }
    }

    pub fn config(&self) -> Result<LlamaConfig> {
        let a = self.architecture()?;
        let arch = match a.as_str() {
            "llama" => Arch::Llama,
            "mistral" => Arch::Mistral,
            "qwen2" => Arch::Qwen2,
            other => bail!(
                "unsupported architecture `{other}` in `{}`: dlpx runs {} (Llama-family decoders)",
                self.path.display(),
                SUPPORTED_GGUF_ARCHS.join(", ")
            ),
        };
        let hidden = self.meta_u(&format!("{a}.embedding_length"))?;
        let heads = self.meta_u(&format!("{a}.attention.head_count"))?;
        if heads == 0 {
            bail!("`{}`: {a}.attention.head_count is 0", self.path.display());
        }
        let kv_heads = self
            .meta_u(&format!("{a}.attention.head_count_kv"))
            .unwrap_or(heads);
        let head_dim = self
            .meta_u(&format!("{a}.attention.key_length"))
            .unwrap_or(hidden / heads);
        let vocab = match self.meta("tokenizer.ggml.tokens") {
            Some(Value::Array(t)) => t.len(),
            _ => self.meta_u(&format!("{a}.vocab_size"))?,
        };
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let eos = self
            .meta_u("tokenizer.ggml.eos_token_id")
            .ok()
            .map(|x| x as u32);
        Ok(LlamaConfig {
            arch,
            hidden_size: hidden,
            intermediate_size: self.meta_u(&format!("{a}.feed_forward_length"))?,
            num_hidden_layers: self.meta_u(&format!("{a}.block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: self
                .meta_f(&format!("{a}.attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self
                .meta_f(&format!("{a}.rope.freq_base"))
                .unwrap_or(10_000.0),
            rope_scaling: None,
            rope_freq_factors: None,
            vocab_size: vocab,
            max_position_embeddings: self.meta_u(&format!("{a}.context_length")).unwrap_or(4096),
            tie_word_embeddings: tied,
            attention_bias: self.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
            bos_token_id: self
                .meta_u("tokenizer.ggml.bos_token_id")
                .ok()
                .map(|x| x as u32),
            eos_token_ids: eos.into_iter().collect(),
        })
    }

    /// Dequantize every tensor to f32, rename it to its HF name and un-permute Q/K.
    pub fn load_tensors(
        &mut self,
        cfg: &LlamaConfig,
        device: &Device,
        dtype: DType,
    ) -> Result<HashMap<String, Tensor>> {
        let names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        let mut out = HashMap::with_capacity(names.len());
        // llama.cpp permutes Q/K rows for its interleaved rope only for Llama-style architectures.
        let permuted = matches!(cfg.arch, Arch::Llama | Arch::Mistral);
        for name in names {
            let Some(hf) = gguf_to_hf_name(&name) else {
                continue;
            };
            let t = self.read_f32(&name, cfg, permuted)?;
            out.insert(hf, t.to_device(device)?.to_dtype(dtype)?);
        }
        Ok(out)
    }

    /// One tensor dequantized to f32 on the CPU, as stored.
    fn read_raw_f32(&mut self, name: &str) -> Result<Tensor> {
        let q = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .wrap_err_with(|| format!("reading tensor `{name}` from `{}`", self.path.display()))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// The special tokens the metadata names, for the saved folder's tokenizer_config.json.
    pub fn special_tokens(&self, context_length: usize) -> Result<SpecialTokens> {
        let v = self.vocab()?;
        let name = |i: Option<usize>| i.and_then(|i| v.tokens.get(i).cloned());
        let (add_bos, add_eos) = special_flags(&v);
        Ok(SpecialTokens {
            bos: name(v.bos),
            eos: name(v.eos),
            unk: name(v.unk),
            pad: name(v.pad),
            add_bos,
            add_eos,
            chat_template: v.chat_template.clone(),
            model_max_length: Some(context_length),
        })
    }

    /// The per-frequency rope factors of a Llama-3.1 GGUF (`rope_freqs.weight`), if it has them.
    pub fn rope_freq_factors(&mut self) -> Result<Option<Vec<f64>>> {
        if !self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Ok(None);
        }
        let t = self.read_raw_f32("rope_freqs.weight")?;
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(v.into_iter().map(f64::from).collect()))
    }

    /// One tensor dequantized to f32 on the CPU, Q/K rows back in the HF layout.
    fn read_f32(&mut self, name: &str, cfg: &LlamaConfig, permuted: bool) -> Result<Tensor> {
        let mut t = self.read_raw_f32(name)?;
        if permuted && (name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias")) {
            t = unpermute_rows(&t, cfg.num_attention_heads)?;
        } else if permuted && (name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias")) {
            t = unpermute_rows(&t, cfg.num_key_value_heads)?;
        }
        Ok(t)
    }

    /// The `tokenizer.ggml.*` metadata.
    fn vocab(&self) -> Result<GgufVocab> {
        let text = |key: &str| match self.meta(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            match self.meta(key) {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| v.to_string().cloned().map_err(|e| eyre!("{key}: {e}")))
                    .collect(),
                _ => bail!(
                    "GGUF metadata `{key}` is missing in `{}`",
                    self.path.display()
                ),
            }
        };
        let Some(model) = text("tokenizer.ggml.model") else {
            bail!(
                "`{}` has no tokenizer metadata (tokenizer.ggml.model)",
                self.path.display()
            );
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let types: Vec<i32> = match self.meta("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_i32().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let scores: Vec<f32> = match self.meta("tokenizer.ggml.scores") {
            Some(Value::Array(a)) => a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect(),
            _ => vec![],
        };
        let merges = match model.as_str() {
            "gpt2" => strings("tokenizer.ggml.merges")?,
            _ => vec![],
        };
        let flag = |key: &str| match self.meta(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let id = |key: &str| self.meta_u(key).ok();
        Ok(GgufVocab {
            model,
            pre: text("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()),
            tokens,
            types,
            scores,
            merges,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            unk: id("tokenizer.ggml.unknown_token_id"),
            add_bos: flag("tokenizer.ggml.add_bos_token"),
            add_eos: flag("tokenizer.ggml.add_eos_token"),
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
            pad: id("tokenizer.ggml.padding_token_id"),
            chat_template: text("tokenizer.chat_template"),
        })
    }

    /// Build the tokenizer described by the `tokenizer.ggml.*` metadata, as a `tokenizers`
    /// object configured the way llama.cpp tokenizes (see [`tokenizer_json`]).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let v = self.vocab()?;
        let json = tokenizer_json(&v).wrap_err_with(|| format!("`{}`", self.path.display()))?;
        Tokenizer::from_str(&json.to_string())
            .map_err(|e| eyre!("building the tokenizer of `{}`: {e}", self.path.display()))
    }
}

/// An offloaded GGUF model's weights: tensors stay quantized in the file and are read and
/// dequantized one at a time.
pub struct GgufSource {
    file: std::sync::Mutex<GgufFile>,
    /// HF name → GGUF name.
    names: HashMap<String, String>,
    cfg: LlamaConfig,
}

impl GgufSource {
    pub fn new(file: GgufFile, cfg: &LlamaConfig) -> Self {
        let names = file
            .content
            .tensor_infos
            .keys()
            .filter_map(|g| gguf_to_hf_name(g).map(|h| (h, g.clone())))
            .collect();
        Self {
            file: std::sync::Mutex::new(file),
            names,
            cfg: cfg.clone(),
        }
    }
}

impl super::WeightSource for GgufSource {
    fn tensor(
        &self,
        name: &str,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some(g) = self.names.get(name) else {
            return Ok(None);
        };
        let permuted = matches!(self.cfg.arch, Arch::Llama | Arch::Mistral);
        let mut f = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".into()))?;
        let t = f
            .read_f32(g, &self.cfg, permuted)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        Ok(Some(t.to_device(device)?.to_dtype(dtype)?))
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let g = self.names.get(name)?;
        let f = self.file.lock().ok()?;
        Some(f.content.tensor_infos.get(g)?.shape.dims().to_vec())
    }
}

/// llama.cpp name → Hugging Face name (`None` for tensors we do not use).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (idx, tail) = rest.split_once('.')?;
    let (part, kind) = tail.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{idx}.{hf}.{kind}"))
}

/// Undo llama.cpp's row permutation of Q/K (`[heads, 2, hd/2] → [heads, hd/2, 2]` at conversion).
pub fn unpermute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    t.reshape((heads, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// The inverse of [`unpermute_rows`], as llama.cpp's converter applies it (used by tests to write
/// GGUF files the way llama.cpp does).
pub fn permute_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    t.reshape((heads, 2, hd / 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}
