//! Random-weight models at the shapes of public checkpoints, built in memory (nothing is
//! downloaded or written), so the pruning stages can be timed at 7B shapes on any machine
//! (the pruning benchmark on a named shape, README "Benchmarks"). The weights are uniform with the standard
//! deviation of a freshly initialised Llama (0.02); the vocabulary is reduced, since only the
//! blocks are timed.

use candle_core::{DType, Device, Tensor};
use color_eyre::eyre::{bail, Result, WrapErr};
use rayon::prelude::*;

use super::config::LlamaConfig;
use super::Llama;
use crate::rng::SplitMix64;

/// The block shapes of `config.json` of three public checkpoints (the fields dlpx reads).
const PRESETS: &[(&str, &str, &str)] = &[
    (
        "llama2-7b",
        "meta-llama/Llama-2-7b-hf",
        r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":11008,"num_hidden_layers":32,
            "num_attention_heads":32,"num_key_value_heads":32,"rms_norm_eps":1e-5,"rope_theta":10000.0,
            "vocab_size":32000,"max_position_embeddings":4096,"tie_word_embeddings":false}"#,
    ),
    (
        "llama3-8b",
        "meta-llama/Meta-Llama-3-8B",
        r#"{"model_type":"llama","hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
            "num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,
            "vocab_size":128256,"max_position_embeddings":8192,"tie_word_embeddings":false}"#,
    ),
    (
        "qwen2-7b",
        "Qwen/Qwen2-7B",
        r#"{"model_type":"qwen2","hidden_size":3584,"intermediate_size":18944,"num_hidden_layers":28,
            "num_attention_heads":28,"num_key_value_heads":4,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
            "vocab_size":152064,"max_position_embeddings":131072,"tie_word_embeddings":false}"#,
    ),
];

/// Names accepted by [`Shape::parse`] besides a path.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// A model shape: a preset's or a `config.json`'s.
#[derive(Debug, Clone)]
pub struct Shape {
    /// What the user named: the preset, or the file.
    pub label: String,
    /// The full model's configuration (its real block count and vocabulary).
    pub config: LlamaConfig,
}

impl Shape {
    /// A preset name (`llama2-7b`, `llama3-8b`, `qwen2-7b`) or a path to a Hugging Face
    /// `config.json`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Some((name, repo, json)) = PRESETS.iter().find(|p| p.0 == s) {
            return Ok(Self {
                label: format!("{name} ({repo} shapes)"),
                config: LlamaConfig::from_hf_json(json)?,
            });
        }
        let path = std::path::Path::new(s);
        if !path.is_file() {
            bail!(
                "unknown shape `{s}`: give one of {} or a path to a config.json",
                preset_names().join(", ")
            );
        }
        let text = std::fs::read_to_string(path)
            .wrap_err_with(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            label: path.display().to_string(),
            config: LlamaConfig::from_hf_json(&text)
                .wrap_err_with(|| format!("{} is not a usable config.json", path.display()))?,
        })
    }
}

/// `n` values uniform on ±0.02·√3 (standard deviation 0.02), from `seed`.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let half = 0.02f32 * 3f32.sqrt();
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        // A seeded stream per chunk, so the weights do not depend on the thread count.
        let mut rng = SplitMix64::new(seed ^ (c as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        for x in out {
            // 24 random bits → [-1, 1).
            let u = (rng.next_u64() >> 40) as f32 / (1u32 << 23) as f32 - 1.0;
            *x = u * half;
        }
    });
    v
}

/// A stable seed per tensor name.
fn name_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(seed ^ 0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01B3)
    })
}

/// A random-weight model of `shape` with `blocks` decoder blocks and a `vocab`-token vocabulary.
pub fn random_model(
    shape: &LlamaConfig,
    blocks: usize,
    vocab: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<Llama> {
    if blocks == 0 || vocab == 0 {
        bail!("a benchmark model needs at least one block and one token");
    }
    let mut c = shape.clone();
    c.num_hidden_layers = blocks;
    c.vocab_size = vocab;
    let (h, f) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    let get = |name: &str| -> Result<Option<Tensor>> {
        let leaf = name.rsplit('.').nth(1).unwrap_or(name);
        let dims: Vec<usize> = match (leaf, name.ends_with(".bias")) {
            ("input_layernorm" | "post_attention_layernorm" | "norm", _) => {
                return Ok(Some(Tensor::ones(h, dtype, device)?));
            }
            ("q_proj", true) => vec![q],
            ("k_proj" | "v_proj", true) => vec![kv],
            ("embed_tokens" | "lm_head", _) => vec![vocab, h],
            ("q_proj", _) => vec![q, h],
            ("k_proj" | "v_proj", _) => vec![kv, h],
            ("o_proj", _) => vec![h, q],
            ("gate_proj" | "up_proj", _) => vec![f, h],
            ("down_proj", _) => vec![h, f],
            _ => return Ok(None),
        };
        let n = dims.iter().product();
        let t = Tensor::from_vec(uniform(n, name_seed(seed, name)), dims, &Device::Cpu)?;
        Ok(Some(t.to_dtype(dtype)?.to_device(device)?))
    };
    Llama::from_named(c, device, dtype, get)
}

/// `n` windows of `len` random token ids below `vocab`.
pub fn random_windows(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| (rng.next_u64() % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_with_their_public_shapes() {
        let s = Shape::parse("llama2-7b").unwrap();
        assert_eq!(
            (
                s.config.hidden_size,
                s.config.intermediate_size,
                s.config.num_hidden_layers
            ),
            (4096, 11008, 32)
        );
        assert_eq!(s.config.block_linear_params(), 202_375_168);
        let l3 = Shape::parse("llama3-8b").unwrap().config;
        assert_eq!((l3.num_key_value_heads, l3.head_dim), (8, 128));
        let qw = Shape::parse("qwen2-7b").unwrap().config;
        assert!(qw.attention_bias, "Qwen2 has q/k/v biases");
        assert_eq!((qw.num_hidden_layers, qw.head_dim), (28, 128));
        let e = Shape::parse("llama9-1t").unwrap_err().to_string();
        assert!(e.contains("llama2-7b, llama3-8b, qwen2-7b"), "{e}");
    }

    #[test]
    fn uniform_is_seeded_and_has_the_init_spread() {
        let a = uniform(200_000, 7);
        assert_eq!(a, uniform(200_000, 7));
        assert_ne!(a, uniform(200_000, 8));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let sd =
            (a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 5e-4 && (sd - 0.02).abs() < 5e-4, "{mean} {sd}");
    }
}
