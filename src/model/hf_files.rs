//! The files a transformers `save_pretrained` folder has beside the weights and tokenizer.json,
//! which its loaders (and lm-evaluation-harness through them) read: tokenizer_config.json (the
//! special tokens, chat template, model_max_length), special_tokens_map.json and
//! generation_config.json. A folder source's own files are kept as they are; a GGUF source's
//! are built from its metadata; what is missing is derived from config.json and the tokenizer.

use std::path::Path;

use color_eyre::eyre::{Result, WrapErr};
use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use super::LlamaConfig;

pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP: &str = "special_tokens_map.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// The special tokens of a tokenizer, as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
    pub model_max_length: Option<usize>,
}

/// The JSON files to write beside the weights (`None`: derive it when saving).
#[derive(Debug, Clone, Default)]
pub struct HfFiles {
    pub tokenizer_config: Option<Value>,
    pub special_tokens_map: Option<Value>,
    pub generation_config: Option<Value>,
}

impl HfFiles {
    /// The files a model folder has (each optional; a file that is not JSON is an error).
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<Option<Value>> {
            let p = dir.join(name);
            if !p.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p)
                .wrap_err_with(|| format!("cannot read `{}`", p.display()))?;
            let v = serde_json::from_str(&text)
                .wrap_err_with(|| format!("`{}` is not valid JSON", p.display()))?;
            Ok(Some(v))
        };
        Ok(Self {
            tokenizer_config: read(TOKENIZER_CONFIG)?,
            special_tokens_map: read(SPECIAL_TOKENS_MAP)?,
            generation_config: read(GENERATION_CONFIG)?,
        })
    }

    /// The files of a tokenizer whose special tokens are known (a GGUF's metadata).
    pub fn from_special(s: &SpecialTokens, tokenizer: &Tokenizer) -> Self {
        Self {
            tokenizer_config: Some(tokenizer_config(s, tokenizer)),
            special_tokens_map: Some(special_tokens_map(s)),
            generation_config: None,
        }
    }

    /// Write the three files into `dir`, deriving the missing ones from `config` and `tok`.
    pub fn write(&self, dir: &Path, config: &LlamaConfig, tok: &Tokenizer) -> Result<()> {
        let derived = derived_special(config, tok);
        let tokenizer_config = self
            .tokenizer_config
            .clone()
            .unwrap_or_else(|| tokenizer_config(&derived, tok));
        let special_map = self
            .special_tokens_map
            .clone()
            .unwrap_or_else(|| special_tokens_map(&special_from_config(&tokenizer_config)));
        let generation = self
            .generation_config
            .clone()
            .unwrap_or_else(|| generation_config(config));
        for (name, v) in [
            (TOKENIZER_CONFIG, tokenizer_config),
            (SPECIAL_TOKENS_MAP, special_map),
            (GENERATION_CONFIG, generation),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, serde_json::to_string_pretty(&v)? + "\n")
                .wrap_err_with(|| format!("cannot write `{}`", p.display()))?;
        }
        Ok(())
    }
}

/// The special tokens a config.json and a tokenizer imply (a folder without tokenizer_config.json).
fn derived_special(c: &LlamaConfig, tok: &Tokenizer) -> SpecialTokens {
    let name = |id: u32| tok.id_to_token(id);
    SpecialTokens {
        bos: c.bos_token_id.and_then(name),
        eos: c.eos_token_ids.first().copied().and_then(name),
        unk: None,
        pad: None,
        add_bos: false,
        add_eos: false,
        chat_template: None,
        model_max_length: Some(c.max_position_embeddings),
    }
}

/// The special tokens a tokenizer_config.json states.
pub fn special_from_config(v: &Value) -> SpecialTokens {
    // A token is written as a string or as an AddedToken object with `content`.
    let token = |k: &str| match v.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    };
    SpecialTokens {
        bos: token("bos_token"),
        eos: token("eos_token"),
        unk: token("unk_token"),
        pad: token("pad_token"),
        add_bos: v
            .get("add_bos_token")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        add_eos: v
            .get("add_eos_token")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        chat_template: v
            .get("chat_template")
            .and_then(|t| t.as_str())
            .map(String::from),
        model_max_length: v
            .get("model_max_length")
            .and_then(|m| m.as_u64())
            .map(|m| m as usize),
    }
}

/// tokenizer_config.json as transformers writes it for a fast tokenizer.
fn tokenizer_config(s: &SpecialTokens, tok: &Tokenizer) -> Value {
    let mut added = Map::new();
    let mut decoder: Vec<_> = tok.get_added_tokens_decoder().into_iter().collect();
    decoder.sort_by_key(|(id, _)| *id);
    for (id, t) in decoder {
        added.insert(
            id.to_string(),
            json!({"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                   "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}),
        );
    }
    let mut v = json!({
        "add_bos_token": s.add_bos,
        "add_eos_token": s.add_eos,
        "added_tokens_decoder": added,
        "bos_token": s.bos,
        "clean_up_tokenization_spaces": false,
        "eos_token": s.eos,
        "model_max_length": s.model_max_length,
        "pad_token": s.pad,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": s.unk,
    });
    if let Some(t) = &s.chat_template {
        v["chat_template"] = json!(t);
    }
    v
}

fn special_tokens_map(s: &SpecialTokens) -> Value {
    let mut m = Map::new();
    for (k, t) in [
        ("bos_token", &s.bos),
        ("eos_token", &s.eos),
        ("unk_token", &s.unk),
        ("pad_token", &s.pad),
    ] {
        if let Some(t) = t {
            m.insert(k.into(), json!(t));
        }
    }
    Value::Object(m)
}

/// generation_config.json from the model's token ids (greedy by default, as transformers does).
fn generation_config(c: &LlamaConfig) -> Value {
    let mut v = json!({ "_from_model_config": true });
    if let Some(b) = c.bos_token_id {
        v["bos_token_id"] = json!(b);
    }
    match c.eos_token_ids.as_slice() {
        [] => {}
        [one] => v["eos_token_id"] = json!(one),
        many => v["eos_token_id"] = json!(many),
    }
    v
}
