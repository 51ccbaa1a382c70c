//! Generation with a KV cache: greedy or seeded sampling (temperature, top-p), text streamed as
//! it is decoded.

use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use color_eyre::eyre::{bail, eyre, Result};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::error::Setting;
use crate::model::{KvCache, LoadedModel};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 40,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl GenParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(crate::said!(
                Setting::Temperature,
                format!(" must be ≥ 0 (got {}); 0 means greedy", self.temperature)
            )
            .into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(crate::said!(
                Setting::TopP,
                format!(" must be in (0, 1] (got {})", self.top_p)
            )
            .into());
        }
        Ok(())
    }

    fn sampling(&self) -> Sampling {
        if self.temperature == 0.0 {
            Sampling::ArgMax
        } else if self.top_p < 1.0 {
            Sampling::TopP {
                p: self.top_p,
                temperature: self.temperature,
            }
        } else {
            Sampling::All {
                temperature: self.temperature,
            }
        }
    }
}

/// Incremental detokenizer: emits only text that is complete (no half UTF-8 sequence), and
/// decodes a sliding range so byte-level merges across tokens come out right.
pub struct TokenStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prev: usize,
    cur: usize,
}

impl<'a> TokenStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        Self {
            tok,
            ids: Vec::new(),
            prev: 0,
            cur: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| eyre!("detokenizer: {e}"))
    }

    /// Push one token; returns newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let before = self.decode(&self.ids[self.prev..self.cur])?;
        self.ids.push(id);
        let now = self.decode(&self.ids[self.prev..])?;
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') {
            let new = now[before.len()..].to_string();
            self.prev = self.cur;
            self.cur = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// Whatever is still pending at the end.
    pub fn finish(&self) -> Result<Option<String>> {
        let before = self.decode(&self.ids[self.prev..self.cur])?;
        let all = self.decode(&self.ids[self.prev..])?;
        Ok((all.len() > before.len()).then(|| all[before.len()..].to_string()))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Generation {
    pub prompt: String,
    pub text: String,
    pub tokens: Vec<u32>,
    pub stopped_at_eos: bool,
    /// Seconds of the first forward (the whole prompt, then the first new token).
    pub prefill_s: f64,
    /// Seconds of the KV-cached steps after it (batch 1, one token each).
    pub decode_s: f64,
    /// KV-cached decode steps timed in `decode_s`.
    pub decode_steps: usize,
    /// `decode_steps / decode_s`: the decode speed (0 when no step was timed).
    pub tokens_per_s: f64,
}

/// Generate a continuation of `prompt`; `on_text` receives text pieces as they are decoded and may
/// return `false` to stop early.
pub fn generate(
    m: &LoadedModel,
    prompt: &str,
    params: &GenParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    params.validate()?;
    let prompt_ids = m.encode(prompt)?;
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let model = &m.llama;
    if prompt_ids.len() + params.max_new_tokens > model.rope.max_positions() {
        return Err(crate::said!(
            "prompt plus ",
            Setting::MaxNewTokens,
            format!(
                " exceeds the model's {} positions",
                model.rope.max_positions()
            )
        )
        .into());
    }
    let eos = m.eos_ids();
    let mut sampler = LogitsProcessor::from_sampling(params.seed, params.sampling());
    let mut cache = KvCache::new(model.blocks.len());
    let mut stream = TokenStream::new(&m.tokenizer);
    let mut text = String::new();
    let mut tokens = Vec::new();
    let mut input = prompt_ids.clone();
    let mut offset = 0;
    let mut stopped_at_eos = false;
    let (mut prefill_s, mut decode_s, mut decode_steps) = (0.0, 0.0, 0usize);
    for step in 0..params.max_new_tokens {
        let t = std::time::Instant::now();
        let ids = Tensor::new(input.as_slice(), &model.device)?.unsqueeze(0)?;
        let logits = model
            .forward_last(&ids, offset, Some(&mut cache))?
            .squeeze(0)?
            .to_dtype(DType::F32)?;
        match step {
            0 => prefill_s = t.elapsed().as_secs_f64(),
            _ => {
                decode_s += t.elapsed().as_secs_f64();
                decode_steps += 1;
            }
        }
        offset += input.len();
        let next = sampler.sample(&logits)?;
        if eos.contains(&next) {
            stopped_at_eos = true;
            break;
        }
        tokens.push(next);
        input = vec![next];
        if let Some(piece) = stream.push(next)? {
            text.push_str(&piece);
            if !on_text(&piece) {
                break;
            }
        }
    }
    if let Some(rest) = stream.finish()? {
        text.push_str(&rest);
        on_text(&rest);
    }
    Ok(Generation {
        prompt: prompt.to_string(),
        text,
        tokens,
        stopped_at_eos,
        prefill_s,
        decode_s,
        decode_steps,
        tokens_per_s: match decode_s > 0.0 {
            true => decode_steps as f64 / decode_s,
            false => 0.0,
        },
    })
}
