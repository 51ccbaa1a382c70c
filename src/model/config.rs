//! Model hyper-parameters, parsed from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Every supported architecture is a Llama-family decoder; they differ only in a few switches
//! (q/k/v biases, rope scaling, tied embeddings), so one [`LlamaConfig`] describes them all.

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use serde::Deserialize;
use serde_json::Value;

/// The `model_type` values (HF) this build can run.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "smollm"];
/// The `general.architecture` values (GGUF) this build can run.
pub const SUPPORTED_GGUF_ARCHS: &[&str] = &["llama", "mistral", "qwen2"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub fn from_model_type(t: &str) -> Result<Self> {
        match t {
            "llama" | "smollm" => Ok(Self::Llama),
            "mistral" => Ok(Self::Mistral),
            "qwen2" => Ok(Self::Qwen2),
            other => bail!(
                "unsupported architecture `{other}`: dlpx runs {} (Llama-family decoders)",
                SUPPORTED_MODEL_TYPES.join(", ")
            ),
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
        }
    }
}

/// Llama-3 style frequency-dependent rope scaling (`rope_type = "llama3"`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Per-frequency rope divisors (`head_dim / 2` of them), as a Llama-3.1 GGUF stores them in
    /// `rope_freqs.weight`: inverse frequency i becomes `base_i / factor_i`.
    pub rope_freq_factors: Option<Vec<f64>>,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 has biases on q/k/v; Llama checkpoints may say so with `attention_bias`.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// The subset of HF `config.json` fields we read. Unknown fields are ignored on purpose:
/// real configs carry dozens of fields irrelevant to inference.
#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    vocab_size: usize,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn token_ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
}

impl LlamaConfig {
    /// Parse a HF `config.json` document.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: Value = serde_json::from_str(text).wrap_err("config.json is not valid JSON")?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| eyre!("config.json has no `model_type` field"))?
            .to_string();
        let arch = Arch::from_model_type(&model_type)?;
        let c: HfConfig =
            serde_json::from_value(raw).wrap_err("config.json is missing a required field")?;
        let _ = (&c.model_type, &c.architectures);
        if c.num_attention_heads == 0
            || !c.hidden_size.is_multiple_of(c.num_attention_heads) && c.head_dim.is_none()
        {
            bail!(
                "config.json: hidden_size {} is not divisible by num_attention_heads {}",
                c.hidden_size,
                c.num_attention_heads
            );
        }
        let rope_scaling = match &c.rope_scaling {
            Some(Value::Object(m)) => {
                let kind = m
                    .get("rope_type")
                    .or_else(|| m.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("");
                match kind {
                    "llama3" => {
                        let f = |k: &str| m.get(k).and_then(|v| v.as_f64()).ok_or_else(|| eyre!("config.json: rope_scaling.{k} missing"));
                        Some(Llama3RopeScaling {
                            factor: f("factor")?,
                            low_freq_factor: f("low_freq_factor")?,
                            high_freq_factor: f("high_freq_factor")?,
                            original_max_position_embeddings: f("original_max_position_embeddings")? as usize,
                        })
                    }
                    "default" | "" => None,
                    other => bail!("config.json: rope_scaling type `{other}` is not supported (supported: llama3)"),
                }
            }
            _ => None,
        };
        let n_kv = c.num_key_value_heads.unwrap_or(c.num_attention_heads);
        if n_kv == 0 || !c.num_attention_heads.is_multiple_of(n_kv) {
            bail!("config.json: num_attention_heads {} is not a multiple of num_key_value_heads {n_kv}", c.num_attention_heads);
        }
        let cfg = Self {
            arch,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_key_value_heads: n_kv,
            head_dim: c.head_dim.unwrap_or(c.hidden_size / c.num_attention_heads),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: c.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_freq_factors: None,
            vocab_size: c.vocab_size,
            max_position_embeddings: c.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(false),
            attention_bias: c.attention_bias.unwrap_or(arch == Arch::Qwen2),
            bos_token_id: token_ids(&c.bos_token_id).first().copied(),
            eos_token_ids: token_ids(&c.eos_token_id),
        };
        cfg.validate().wrap_err("config.json")?;
        Ok(cfg)
    }

    /// Refuse shapes no real checkpoint has before anything is sized from them: a hostile or
    /// damaged header must give an error, not a division by zero or a huge allocation.
    pub fn validate(&self) -> Result<()> {
        let limits = [
            ("num_hidden_layers", self.num_hidden_layers, 1, 1 << 10),
            ("hidden_size", self.hidden_size, 1, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1, 1 << 19),
            ("num_attention_heads", self.num_attention_heads, 1, 1 << 12),
            ("num_key_value_heads", self.num_key_value_heads, 1, 1 << 12),
            ("head_dim", self.head_dim, 2, 1 << 12),
            ("vocab_size", self.vocab_size, 1, 1 << 24),
        ];
        for (name, v, lo, hi) in limits {
            if !(lo..=hi).contains(&v) {
                bail!("{name} {v} is outside the plausible range {lo}..={hi}: the file is damaged or not a Llama-family model");
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "head_dim {} is odd: rotary embeddings need an even head size",
                self.head_dim
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        let usable = self.rms_norm_eps.is_finite()
            && self.rms_norm_eps >= 0.0
            && self.rope_theta.is_finite()
            && self.rope_theta > 0.0;
        if !usable {
            bail!(
                "rms_norm_eps {} / rope_theta {} are not usable numbers",
                self.rms_norm_eps,
                self.rope_theta
            );
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                bail!(
                    "rope_freqs has {} factors for head_dim {} (needs {} positive numbers)",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                );
            }
        }
        Ok(())
    }

    /// A HF-style `config.json` for this configuration (used when exporting a GGUF-loaded model).
    pub fn to_hf_json(&self) -> Result<Value> {
        if self.rope_freq_factors.is_some() {
            bail!(
                "this model's rope frequencies come from a GGUF `rope_freqs` tensor, which a Hugging \
                 Face config.json cannot state: export from the original safetensors checkpoint"
            );
        }
        let arch_class = match self.arch {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch_class],
            "model_type": self.arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        Ok(v)
    }

    /// Parameters of the prunable linears of one block (q, k, v, o, gate, up, down).
    pub fn block_linear_params(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size
    }

    /// Total parameter count (embeddings, blocks, norms, head).
    pub fn param_count(&self) -> usize {
        let h = self.hidden_size;
        let bias = if self.attention_bias {
            self.num_attention_heads * self.head_dim + 2 * self.num_key_value_heads * self.head_dim
        } else {
            0
        };
        let per_block = self.block_linear_params() + bias + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.vocab_size * h + self.num_hidden_layers * per_block + h + head
    }

    /// Dense forward FLOPs per token (2 per multiply-add) of the linears and the LM head,
    /// ignoring attention scores; the figure `dlpx bench` divides by.
    pub fn flops_per_token(&self) -> f64 {
        2.0 * (self.num_hidden_layers * self.block_linear_params()
            + self.vocab_size * self.hidden_size) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_llama3_rope_scaling_and_eos_list() {
        let j = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192},"eos_token_id":[1,2]}"#;
        let c = LlamaConfig::from_hf_json(j).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.rope_scaling.as_ref().unwrap().factor, 8.0);
        let back = LlamaConfig::from_hf_json(&c.to_hf_json().unwrap().to_string()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_model_type_lists_supported() {
        let j = r#"{"model_type":"gpt_neox","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":100}"#;
        let e = LlamaConfig::from_hf_json(j).unwrap_err().to_string();
        assert!(
            e.contains("gpt_neox") && e.contains("llama, mistral, qwen2"),
            "{e}"
        );
    }

    #[test]
    fn qwen2_defaults_to_attention_bias() {
        let j = r#"{"model_type":"qwen2","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100}"#;
        assert!(LlamaConfig::from_hf_json(j).unwrap().attention_bias);
    }
}
