//! Tokenizers from GGUF vocabulary metadata, configured to tokenize as llama.cpp does, written as
//! a Hugging Face `tokenizer.json` document (no hand-written BPE: the `tokenizers` crate runs it).
//!
//! - `llama` (SentencePiece BPE: Llama 1/2, Mistral): merges derived from the token scores (every
//!   split of a token into two vocabulary tokens, best score first), byte fallback to `<0xXX>`,
//!   spaces as `▁` with one prepended to every run of text (llama.cpp's `add_space_prefix`,
//!   also after a special token), as transformers' legacy Llama converter does.
//! - `gpt2` (byte-level BPE) with the pre-tokenizer named by `tokenizer.ggml.pre`: llama.cpp's
//!   split regexes for `llama-bpe` (Llama 3, whose tokenizer emits a whole word that is in the
//!   vocabulary before trying merges: `ignore_merges`) and `qwen2`; GPT-2's own regex for
//!   GPT-2/SmolLM vocabularies; digits split first for StarCoder ones.
//!
//! Checked against llama.cpp's own test vectors (`tests/gguf_tokenizers.rs`).

use std::collections::HashMap;

use color_eyre::eyre::{bail, eyre, Result};
use serde_json::{json, Value};

/// llama.cpp's token types.
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// llama.cpp's split regex for the LLAMA3 pre-tokenizer (`llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's split regex for the QWEN2 pre-tokenizer: digits one at a time.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values dlpx builds, for the error that names an unsupported one.
pub const SUPPORTED_PRE: &[&str] = &[
    "default",
    "gpt2",
    "smollm",
    "starcoder",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "qwen2",
];

/// The `tokenizer.ggml.*` metadata of a GGUF file.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre` (`default` when absent).
    pub pre: String,
    pub tokens: Vec<String>,
    /// Per token: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub types: Vec<i32>,
    /// SentencePiece scores (empty for byte-level BPE).
    pub scores: Vec<f32>,
    /// Byte-level BPE merges, `"left right"`.
    pub merges: Vec<String>,
    pub bos: Option<usize>,
    pub eos: Option<usize>,
    pub unk: Option<usize>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub pad: Option<usize>,
    pub chat_template: Option<String>,
}

/// Whether a BOS and an EOS are added to each sequence: the metadata's flags, else llama.cpp's
/// defaults (BOS for SentencePiece and for Llama 3's `llama-bpe`).
pub fn special_flags(v: &GgufVocab) -> (bool, bool) {
    let default_bos = match v.model.as_str() {
        "llama" => true,
        _ => matches!(v.pre.as_str(), "llama-bpe" | "llama3" | "llama-v3"),
    };
    (v.add_bos.unwrap_or(default_bos), v.add_eos.unwrap_or(false))
}

/// The `tokenizer.json` document for a GGUF vocabulary.
pub fn tokenizer_json(v: &GgufVocab) -> Result<Value> {
    if v.types.len() != v.tokens.len() {
        bail!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            v.types.len(),
            v.tokens.len()
        );
    }
    let vocab: serde_json::Map<String, Value> = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    if vocab.len() != v.tokens.len() {
        bail!("tokenizer.ggml.tokens has repeated tokens");
    }
    let token = |i: Option<usize>, what: &str| -> Result<Option<String>> {
        match i {
            None => Ok(None),
            Some(i) => v
                .tokens
                .get(i)
                .cloned()
                .map(Some)
                .ok_or_else(|| eyre!("{what} token id {i} is outside the vocabulary")),
        }
    };
    let bos = token(v.bos, "BOS")?;
    let eos = token(v.eos, "EOS")?;
    // llama.cpp matches control, unknown and user-defined tokens whole before tokenizing the
    // text between them; only user-defined ones are ordinary (non-special) tokens.
    let added: Vec<Value> = v
        .tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|(_, (_, &t))| matches!(t, UNKNOWN | CONTROL | USER_DEFINED))
        .map(|(i, (content, &t))| {
            json!({"id": i, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": t != USER_DEFINED})
        })
        .collect();
    let (model, normalizer, pre_tokenizer, decoder) = match v.model.as_str() {
        "llama" => spm(v, vocab, token(v.unk, "unknown")?)?,
        "gpt2" => byte_level(v, vocab)?,
        other => bail!(
            "GGUF tokenizer model `{other}` is not supported (supported: llama, gpt2); use a \
             folder with tokenizer.json instead"
        ),
    };
    let (add_bos, add_eos) = special_flags(v);
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(add_bos.then_some(bos).flatten(), add_eos.then_some(eos).flatten(), v),
        "decoder": decoder, "model": model,
    }))
}

type Parts = (Value, Value, Value, Value);

/// SentencePiece BPE (`llama`).
fn spm(v: &GgufVocab, vocab: serde_json::Map<String, Value>, unk: Option<String>) -> Result<Parts> {
    if v.scores.len() != v.tokens.len() {
        bail!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            v.scores.len(),
            v.tokens.len()
        );
    }
    let prefix = v.add_space_prefix.unwrap_or(true);
    let mut normalizers = vec![];
    if prefix {
        // Prepended to every run of text (not skipped when it starts with a space, unlike
        // Metaspace), which is what llama.cpp does.
        normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
        "ignore_merges": false, "vocab": vocab, "merges": spm_merges(&v.tokens, &v.scores),
    });
    Ok((
        model,
        json!({"type": "Sequence", "normalizers": normalizers}),
        Value::Null,
        json!({"type": "Sequence", "decoders": decoders}),
    ))
}

/// The merges a SentencePiece BPE vocabulary implies: every split (l, r) of a token t with both
/// halves in the vocabulary, ranked by t's score, higher first; ties by the lengths of l and r
/// (longer first), then by the ids of l and r. The same order as transformers' conversion of
/// SentencePiece models.
pub fn spm_merges(tokens: &[String], scores: &[f32]) -> Vec<[String; 2]> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f32, usize, usize)> = vec![];
    for (t, &score) in tokens.iter().zip(scores) {
        let mut local = vec![];
        for (k, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(k);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                local.push((a, b, score, l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|m| (m.0, m.1));
        merges.extend(local);
    }
    // Stable: equal keys keep the order above.
    merges.sort_by(|x, y| y.2.total_cmp(&x.2).then(y.3.cmp(&x.3)).then(y.4.cmp(&x.4)));
    merges
        .into_iter()
        .map(|(a, b, ..)| [tokens[a].clone(), tokens[b].clone()])
        .collect()
}

/// Byte-level BPE (`gpt2`) with the pre-tokenizer `v.pre` names.
fn byte_level(v: &GgufVocab, vocab: serde_json::Map<String, Value>) -> Result<Parts> {
    // llama.cpp splits a merge at the first space after its first character.
    let merges: Vec<[String; 2]> = v
        .merges
        .iter()
        .map(|m| {
            let at = m
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == ' ')
                .map(|(i, _)| i)
                .ok_or_else(|| eyre!("malformed BPE merge `{m}`"))?;
            Ok([m[..at].to_string(), m[at + 1..].to_string()])
        })
        .collect::<Result<_>>()?;
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        ]})
    };
    // GPT-2's regex inside ByteLevel, no prefix space: reproduces SmolLM2's ids on the whole
    // demo corpus (tested).
    let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let (pre_tokenizer, ignore_merges) = match v.pre.as_str() {
        "llama-bpe" | "llama3" | "llama-v3" => (split(LLAMA3_SPLIT), true),
        "qwen2" => (split(QWEN2_SPLIT), false),
        "starcoder" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, gpt2,
            ]}),
            false,
        ),
        "default" | "gpt2" | "smollm" => (gpt2, false),
        other => bail!(
            "GGUF pre-tokenizer `{other}` is not supported (supported: {}); use a folder with \
             tokenizer.json instead",
            SUPPORTED_PRE.join(", ")
        ),
    };
    let model = json!({
        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
    });
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
    Ok((model, Value::Null, pre_tokenizer, decoder))
}

/// BOS before (and EOS after) each sequence when the vocabulary asks for them.
fn post_processor(bos: Option<String>, eos: Option<String>, v: &GgufVocab) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let mut single = vec![];
    let mut pair = vec![];
    let mut specials = serde_json::Map::new();
    let mut special =
        |t: &Option<String>, id: Option<usize>, out: &mut Vec<Value>, type_id: u32| {
            if let (Some(t), Some(id)) = (t, id) {
                out.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        };
    special(&bos, v.bos, &mut single, 0);
    single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    special(&eos, v.eos, &mut single, 0);
    special(&bos, v.bos, &mut pair, 0);
    pair.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
    special(&eos, v.eos, &mut pair, 0);
    special(&bos, v.bos, &mut pair, 1);
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    special(&eos, v.eos, &mut pair, 1);
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_follow_scores_then_lengths() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let m = spm_merges(&tokens, &scores);
        // ab (score -1) first, bc (-2), then the two splits of abc: a+bc (lens 1, 2) after
        // ab+c (lens 2, 1).
        assert_eq!(
            m,
            vec![
                ["a".to_string(), "b".to_string()],
                ["b".into(), "c".into()],
                ["ab".into(), "c".into()],
                ["a".into(), "bc".into()],
            ]
        );
    }

    #[test]
    fn unsupported_models_and_pre_tokenizers_are_named() {
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: "deepseek-llm".into(),
            tokens: vec!["a".into(), "b".into()],
            types: vec![1, 1],
            scores: vec![],
            merges: vec![],
            bos: None,
            eos: None,
            unk: None,
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
            pad: None,
            chat_template: None,
        };
        let e = tokenizer_json(&v).unwrap_err().to_string();
        assert!(
            e.contains("`deepseek-llm` is not supported") && e.contains("qwen2"),
            "{e}"
        );
        let e = tokenizer_json(&GgufVocab {
            model: "rwkv".into(),
            ..v
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("`rwkv` is not supported"), "{e}");
    }
}
