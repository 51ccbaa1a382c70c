//! dlpx's decoder against candle-transformers' own model implementations on the same random
//! weights and tokens: Llama-2 shapes, Llama-3 (GQA, rope scaling `llama3`), Mistral (untied
//! head) and Qwen2 (q/k/v biases, untied head). The last-position logits of a full forward and
//! of every step of a KV-cached continuation agree within 1e-4 in f32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, mistral, qwen2};
use dlpx::model::{self, KvCache, ModelSource, Placement};
use rand::{rngs::StdRng, Rng, SeedableRng};

const TOL: f32 = 1e-4;

struct Shape {
    hidden: usize,
    inter: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    qkv_bias: bool,
    tied: bool,
}

fn random(rng: &mut StdRng, shape: &[usize], scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| offset + scale * (rng.random::<f32>() * 2.0 - 1.0))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Random weights under the Hugging Face names.
fn weights(s: &Shape, seed: u64) -> HashMap<String, Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let hd = s.hidden / s.heads;
    let mut w = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32, rng: &mut StdRng| {
        w.insert(name, random(rng, shape, scale, offset));
    };
    put(
        "model.embed_tokens.weight".into(),
        &[s.vocab, s.hidden],
        0.5,
        0.0,
        &mut rng,
    );
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        let lin = 1.0 / (s.hidden as f32).sqrt();
        put(
            format!("{p}.input_layernorm.weight"),
            &[s.hidden],
            0.1,
            1.0,
            &mut rng,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[s.hidden],
            0.1,
            1.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.q_proj.weight"),
            &[s.heads * hd, s.hidden],
            lin,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            &[s.kv_heads * hd, s.hidden],
            lin,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            &[s.kv_heads * hd, s.hidden],
            lin,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[s.hidden, s.heads * hd],
            lin,
            0.0,
            &mut rng,
        );
        if s.qkv_bias {
            put(
                format!("{p}.self_attn.q_proj.bias"),
                &[s.heads * hd],
                0.2,
                0.0,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.k_proj.bias"),
                &[s.kv_heads * hd],
                0.2,
                0.0,
                &mut rng,
            );
            put(
                format!("{p}.self_attn.v_proj.bias"),
                &[s.kv_heads * hd],
                0.2,
                0.0,
                &mut rng,
            );
        }
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[s.inter, s.hidden],
            lin,
            0.0,
            &mut rng,
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            &[s.inter, s.hidden],
            lin,
            0.0,
            &mut rng,
        );
        let down = 1.0 / (s.inter as f32).sqrt();
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[s.hidden, s.inter],
            down,
            0.0,
            &mut rng,
        );
    }
    put("model.norm.weight".into(), &[s.hidden], 0.1, 1.0, &mut rng);
    if !s.tied {
        put(
            "lm_head.weight".into(),
            &[s.vocab, s.hidden],
            0.3,
            0.0,
            &mut rng,
        );
    }
    w
}

/// A model folder dlpx loads: config.json, model.safetensors and a (word-level) tokenizer.json.
fn write_folder(dir: &Path, config: &serde_json::Value, w: &HashMap<String, Tensor>) {
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    candle_core::safetensors::save(w, dir.join("model.safetensors")).unwrap();
    let tok = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;
    std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
}

/// config.json of a shape: the fields every architecture has from `s`, then `extra` (which
/// may override them).
fn config(s: &Shape, class: &str, model_type: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({
        "architectures": [class], "model_type": model_type, "hidden_size": s.hidden,
        "intermediate_size": s.inter, "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads, "num_key_value_heads": s.kv_heads,
        "vocab_size": s.vocab, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": s.tied, "bos_token_id": 1, "eos_token_id": 2
    });
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Random weights of `s` written as a model folder with `cfg`.
fn checkpoint(
    s: &Shape,
    cfg: &serde_json::Value,
    seed: u64,
) -> (tempfile::TempDir, HashMap<String, Tensor>) {
    let dir = tempfile::tempdir().unwrap();
    let w = weights(s, seed);
    write_folder(dir.path(), cfg, &w);
    (dir, w)
}

/// The reference: prefill, then one token at a time; last-position logits `[vocab]` each call.
trait Reference {
    fn step(&mut self, ids: &[u32], offset: usize) -> Tensor;
}

struct CandleLlama(llama::Llama, llama::Cache);
impl Reference for CandleLlama {
    fn step(&mut self, ids: &[u32], offset: usize) -> Tensor {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        self.0
            .forward(&t, offset, &mut self.1)
            .unwrap()
            .squeeze(0)
            .unwrap()
    }
}

struct CandleMistral(mistral::Model);
impl Reference for CandleMistral {
    fn step(&mut self, ids: &[u32], offset: usize) -> Tensor {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        self.0.forward(&t, offset).unwrap().flatten_all().unwrap()
    }
}

struct CandleQwen2(qwen2::ModelForCausalLM);
impl Reference for CandleQwen2 {
    fn step(&mut self, ids: &[u32], offset: usize) -> Tensor {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        self.0.forward(&t, offset).unwrap().flatten_all().unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Full forward and a KV-cached continuation of dlpx against the reference on `prompt`.
fn compare(name: &str, dir: &Path, reference: &mut dyn Reference, prompt: &[u32], steps: usize) {
    let m = model::load_folder(
        dir,
        ModelSource::Folder(dir.to_path_buf()),
        &Device::Cpu,
        DType::F32,
        Placement::Resident,
        &mut |_| {},
    )
    .unwrap();
    let ids = |v: &[u32]| Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    // Full forward: dlpx's logits at every position; the reference gives the last.
    let full = m.llama.forward(&ids(prompt), 0, None).unwrap();
    let last = full.squeeze(0).unwrap().get(prompt.len() - 1).unwrap();
    let want = reference.step(prompt, 0);
    let d = max_diff(&last, &want);
    assert!(d <= TOL, "{name}: full forward differs by {d}");
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(scale > 0.1, "{name}: logits too small to compare ({scale})");

    // KV-cached continuation, the next token chosen greedily from dlpx's logits.
    let mut cache = KvCache::new(m.llama.blocks.len());
    let mut logits = m
        .llama
        .forward_last(&ids(prompt), 0, Some(&mut cache))
        .unwrap()
        .squeeze(0)
        .unwrap();
    for (step, offset) in (0..steps).zip(prompt.len()..) {
        let next = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        logits = m
            .llama
            .forward_last(&ids(&[next]), offset, Some(&mut cache))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let want = reference.step(&[next], offset);
        let d = max_diff(&logits, &want);
        assert!(d <= TOL, "{name}: cached step {step} differs by {d}");
    }
}

fn prompt(vocab: usize) -> Vec<u32> {
    [3u32, 17, 41, 5, 99, 250, 8, 77, 1, 64]
        .iter()
        .map(|&x| x % vocab as u32)
        .collect()
}

fn vb(w: &HashMap<String, Tensor>) -> VarBuilder<'static> {
    VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu)
}

#[test]
fn llama2_shapes_match_candle_transformers() {
    let s = Shape {
        hidden: 64,
        inter: 160,
        layers: 2,
        heads: 4,
        kv_heads: 4,
        vocab: 300,
        qkv_bias: false,
        tied: false,
    };
    let cfg = config(
        &s,
        "LlamaForCausalLM",
        "llama",
        serde_json::json!({"rope_theta": 10000.0}),
    );
    let (dir, w) = checkpoint(&s, &cfg, 11);
    let c: llama::LlamaConfig = serde_json::from_value(cfg).unwrap();
    let c = c.into_config(false);
    let model = llama::Llama::load(vb(&w), &c).unwrap();
    let cache = llama::Cache::new(true, DType::F32, &c, &Device::Cpu).unwrap();
    compare(
        "llama-2",
        dir.path(),
        &mut CandleLlama(model, cache),
        &prompt(300),
        6,
    );
}

#[test]
fn llama3_rope_scaling_and_gqa_match_candle_transformers() {
    let s = Shape {
        hidden: 64,
        inter: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        qkv_bias: false,
        tied: true,
    };
    // original_max_position_embeddings 32 with head_dim 16: some frequencies are kept, some
    // divided by the factor, some smoothly in between.
    let cfg = config(
        &s,
        "LlamaForCausalLM",
        "llama",
        serde_json::json!({"rope_theta": 500000.0,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 32, "rope_type": "llama3"}}),
    );
    let (dir, w) = checkpoint(&s, &cfg, 12);
    let c: llama::LlamaConfig = serde_json::from_value(cfg).unwrap();
    let c = c.into_config(false);
    let model = llama::Llama::load(vb(&w), &c).unwrap();
    let cache = llama::Cache::new(true, DType::F32, &c, &Device::Cpu).unwrap();
    compare(
        "llama-3",
        dir.path(),
        &mut CandleLlama(model, cache),
        &prompt(300),
        6,
    );
}

#[test]
fn mistral_matches_candle_transformers() {
    let s = Shape {
        hidden: 64,
        inter: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        qkv_bias: false,
        tied: false,
    };
    let cfg = config(
        &s,
        "MistralForCausalLM",
        "mistral",
        serde_json::json!({"rope_theta": 10000.0, "hidden_act": "silu", "sliding_window": null}),
    );
    let (dir, w) = checkpoint(&s, &cfg, 13);
    let c: mistral::Config = serde_json::from_value(cfg).unwrap();
    let model = mistral::Model::new(&c, vb(&w)).unwrap();
    compare(
        "mistral",
        dir.path(),
        &mut CandleMistral(model),
        &prompt(300),
        6,
    );
}

#[test]
fn qwen2_biases_and_untied_head_match_candle_transformers() {
    let s = Shape {
        hidden: 64,
        inter: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        qkv_bias: true,
        tied: false,
    };
    let cfg = config(
        &s,
        "Qwen2ForCausalLM",
        "qwen2",
        serde_json::json!({"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu",
        "sliding_window": 64, "max_window_layers": 2, "use_sliding_window": false}),
    );
    let (dir, w) = checkpoint(&s, &cfg, 14);
    let c: qwen2::Config = serde_json::from_value(cfg).unwrap();
    let model = qwen2::ModelForCausalLM::new(&c, vb(&w)).unwrap();
    compare(
        "qwen2",
        dir.path(),
        &mut CandleQwen2(model),
        &prompt(300),
        6,
    );
}
