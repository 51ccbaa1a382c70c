//! Tiny random-weight Llama models written to a temp dir, as llama.cpp and Hugging Face would
//! write them (GGUF with permuted Q/K rows; safetensors folder with HF names).
#![allow(dead_code)]

pub mod study;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use dlpx::model::gguf::permute_rows;

pub struct Tiny {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub blocks: usize,
    pub tied: bool,
}

impl Default for Tiny {
    fn default() -> Self {
        Self {
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            ffn: 48,
            blocks: 2,
            tied: true,
        }
    }
}

/// Byte-level vocabulary: `<|endoftext|>` (control), the 256 byte symbols, and one merge.
pub fn vocab() -> (Vec<String>, Vec<String>) {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    tokens.push("he".to_string());
    (tokens, vec!["h e".to_string()])
}

impl Tiny {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Random weights under their HF names (Q/K in the HF layout).
    pub fn weights(&self, seed: u64) -> HashMap<String, Tensor> {
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let rng = std::cell::RefCell::new(rand::rngs::StdRng::seed_from_u64(seed));
        let uniform = |n: usize, scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| rng.borrow_mut().random_range(-scale..scale))
                .collect()
        };
        let v = vocab().0.len();
        let (h, hd) = (self.hidden, self.head_dim());
        // Uniform weights with variance ≈ 1/fan_in keep activations O(1) through the blocks.
        let r = |o: usize, i: usize| {
            Tensor::from_vec(uniform(o * i, (3.0 / i as f32).sqrt()), (o, i), &dev).unwrap()
        };
        let norm = |n: usize| (Tensor::from_vec(uniform(n, 0.2), n, &dev).unwrap() + 1.0).unwrap();
        let mut w = HashMap::new();
        w.insert("model.embed_tokens.weight".into(), r(v, h));
        w.insert("model.norm.weight".into(), norm(h));
        if !self.tied {
            w.insert("lm_head.weight".into(), r(v, h));
        }
        for b in 0..self.blocks {
            let p = format!("model.layers.{b}");
            w.insert(format!("{p}.input_layernorm.weight"), norm(h));
            w.insert(format!("{p}.post_attention_layernorm.weight"), norm(h));
            w.insert(
                format!("{p}.self_attn.q_proj.weight"),
                r(self.heads * hd, h),
            );
            w.insert(
                format!("{p}.self_attn.k_proj.weight"),
                r(self.kv_heads * hd, h),
            );
            w.insert(
                format!("{p}.self_attn.v_proj.weight"),
                r(self.kv_heads * hd, h),
            );
            w.insert(
                format!("{p}.self_attn.o_proj.weight"),
                r(h, self.heads * hd),
            );
            w.insert(format!("{p}.mlp.gate_proj.weight"), r(self.ffn, h));
            w.insert(format!("{p}.mlp.up_proj.weight"), r(self.ffn, h));
            w.insert(format!("{p}.mlp.down_proj.weight"), r(h, self.ffn));
        }
        w
    }

    /// Write a GGUF file the way llama.cpp's converter does (llama names, permuted Q/K, f32).
    pub fn write_gguf(&self, path: &Path, weights: &HashMap<String, Tensor>, arch: &str) {
        let (tokens, merges) = vocab();
        let mut qt: Vec<(String, QTensor)> = Vec::new();
        for (name, t) in weights {
            let gname = hf_to_gguf(name);
            let t = if name.ends_with("q_proj.weight") {
                permute_rows(t, self.heads).unwrap()
            } else if name.ends_with("k_proj.weight") {
                permute_rows(t, self.kv_heads).unwrap()
            } else {
                t.clone()
            };
            qt.push((gname, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
        qt.sort_by(|a, b| a.0.cmp(&b.0));
        let s = |x: &str| Value::String(x.to_string());
        let a = arch;
        let mut types = vec![Value::I32(3)];
        types.extend(std::iter::repeat_n(Value::I32(1), tokens.len() - 1));
        let meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), s(a)),
            (format!("{a}.block_count"), Value::U32(self.blocks as u32)),
            (
                format!("{a}.embedding_length"),
                Value::U32(self.hidden as u32),
            ),
            (
                format!("{a}.feed_forward_length"),
                Value::U32(self.ffn as u32),
            ),
            (
                format!("{a}.attention.head_count"),
                Value::U32(self.heads as u32),
            ),
            (
                format!("{a}.attention.head_count_kv"),
                Value::U32(self.kv_heads as u32),
            ),
            (
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-5),
            ),
            (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
            (format!("{a}.context_length"), Value::U32(256)),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("starcoder")),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().map(|t| s(t)).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.iter().map(|t| s(t)).collect()),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(0)),
        ];
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qt.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut f = std::fs::File::create(path).unwrap();
        gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
    }

    /// Write a tiny GGUF into `dir` and return its path and the HF-layout weights.
    pub fn gguf_in(&self, dir: &Path, seed: u64) -> (PathBuf, HashMap<String, Tensor>) {
        let w = self.weights(seed);
        let p = dir.join("tiny.gguf");
        self.write_gguf(&p, &w, "llama");
        (p, w)
    }
}

pub fn hf_to_gguf(name: &str) -> String {
    match name {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        // Llama 3.1's per-frequency rope factors have no Hugging Face tensor.
        "rope_freqs.weight" => return "rope_freqs.weight".into(),
        _ => {}
    }
    let rest = name.strip_prefix("model.layers.").unwrap();
    let (idx, tail) = rest.split_once('.').unwrap();
    let part = match tail.trim_end_matches(".weight") {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{idx}.{part}.weight")
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Llama-2-7B's layer shape, for the memory tests (`tests/offload_memory.rs`, `tests/cuda.rs`).
pub const HIDDEN: usize = 4096;
pub const FFN: usize = 11008;
pub const HEADS: usize = 32;

/// Write `model.safetensors` (bf16, as HF checkpoints ship) tensor by tensor, generating the
/// random values in slices so the writer never holds a whole matrix.
pub fn write_shaped_safetensors(path: &Path, vocab: usize, blocks: usize) -> u64 {
    use std::io::Write;
    let mut tensors: Vec<(String, Vec<usize>, f32)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        0.02,
    )];
    for i in 0..blocks {
        let p = format!("model.layers.{i}");
        for (n, shape) in [
            ("self_attn.q_proj", [HIDDEN, HIDDEN]),
            ("self_attn.k_proj", [HIDDEN, HIDDEN]),
            ("self_attn.v_proj", [HIDDEN, HIDDEN]),
            ("self_attn.o_proj", [HIDDEN, HIDDEN]),
            ("mlp.gate_proj", [FFN, HIDDEN]),
            ("mlp.up_proj", [FFN, HIDDEN]),
            ("mlp.down_proj", [HIDDEN, FFN]),
        ] {
            let scale = 1.0 / (shape[1] as f32).sqrt();
            tensors.push((format!("{p}.{n}.weight"), shape.to_vec(), scale));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{n}.weight"), vec![HIDDEN], 0.0));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![HIDDEN], 0.0));

    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, shape, scale) in &tensors {
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 19);
            buf.clear();
            for _ in 0..n {
                let v = if *scale == 0.0 {
                    1.0f32 // norm weights
                } else {
                    // xorshift64*, uniform in (−√3·scale, √3·scale): unit variance × scale.
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    let u =
                        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * 1.732 * scale
                };
                buf.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            f.write_all(&buf).unwrap();
            left -= n;
        }
    }
    f.flush().unwrap();
    (8 + h.len() + offset) as u64
}

/// A folder (config.json, tokenizer.json of the tiny models, bf16 model.safetensors) of a
/// random model with Llama-2-7B's layer shape and `blocks` blocks. Returns the folder, the
/// safetensors file's size and the vocabulary size.
pub fn write_shaped_folder(dir: &Path, blocks: usize) -> (PathBuf, u64, usize) {
    // The tokenizer of the tiny test models (258 tokens) sets the vocabulary.
    let tiny = Tiny::default();
    let (gguf, _) = tiny.gguf_in(dir, 1);
    let tok = dlpx::model::load_gguf(&gguf, &Device::Cpu, DType::F32, &mut |_| {})
        .unwrap()
        .tokenizer;
    let vocab = tok.get_vocab_size(true);
    let folder = dir.join("shaped");
    std::fs::create_dir(&folder).unwrap();
    tok.save(folder.join("tokenizer.json"), false).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": blocks,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": vocab,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true
    });
    std::fs::write(folder.join("config.json"), cfg.to_string()).unwrap();
    let file_bytes = write_shaped_safetensors(&folder.join("model.safetensors"), vocab, blocks);

    (folder, file_bytes, vocab)
}

/// C4-style documents: one JSON object per line (`text`, `url`), gzip-compressed.
pub fn write_jsonl_gz(path: &Path, docs: &[String]) {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    for t in docs {
        writeln!(enc, "{}", serde_json::json!({"text": t, "url": "x"})).unwrap();
    }
    enc.finish().unwrap();
}

/// WikiText-style rows: a parquet file with a `text` column, snappy-compressed.
pub fn write_parquet_text(path: &Path, rows: &[String]) {
    use parquet::basic::Compression;
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    use std::sync::Arc;

    let schema = Arc::new(
        parse_message_type("message schema { REQUIRED BYTE_ARRAY text (UTF8); }").unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w =
        SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    while let Some(mut col) = rg.next_column().unwrap() {
        let vals: Vec<ByteArray> = rows.iter().map(|t| ByteArray::from(t.as_str())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&vals, None, None)
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// A repetitive text file (400 short lines) for calibrating and evaluating tiny models.
pub fn text_file(dir: &Path) -> String {
    let p = dir.join("text.txt");
    let body: String = (0..400)
        .map(|i| format!("line {i} of some text, with words that repeat {}\n", i % 7))
        .collect();
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

/// Run the release binary with its cache inside `dir`.
pub fn dlpx_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .env("DLPX_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

/// A run that must have succeeded (else its stderr is the failure): its stderr, where dlpx
/// writes progress and what it did.
pub fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A run that must have succeeded: its stdout, where dlpx writes its results.
pub fn ok_stdout(o: &std::process::Output) -> String {
    ok(o);
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `‖a − b‖ / ‖a‖` over all elements (f64 sums), after checking both have the same non-zero length.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    assert!(!a.is_empty());
    let num: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| ((x - y) as f64).powi(2))
        .sum();
    let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (num / den).sqrt()
}
