//! Tiny random-weight Llama models written to a temp dir, as llama.cpp and Hugging Face would
//! write them (GGUF with permuted Q/K rows; safetensors folder with HF names).
#![allow(dead_code)]

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
