//! Unit tests of the model code on tiny random-weight models written to a temp dir.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, Tiny};
use dlpx::model::{self, KvCache, LinearKind, ModelSource};

fn load_gguf(p: &std::path::Path) -> dlpx::model::LoadedModel {
    model::load_gguf(p, &Device::Cpu, DType::F32, &mut |_| {}).unwrap()
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap().unsqueeze(0).unwrap()
}

#[test]
fn gguf_unpermutes_qk_and_builds_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let (p, w) = t.gguf_in(dir.path(), 1);
    let m = load_gguf(&p);
    let c = &m.llama.config;
    assert_eq!(
        (
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim
        ),
        (32, 4, 2, 8)
    );
    assert!(c.tie_word_embeddings && m.llama.lm_head.is_none());
    for k in [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::Down,
    ] {
        let got = &m.llama.blocks[1].linear(k).weight;
        let want = &w[&format!("model.layers.1.{}.weight", k.hf_name())];
        assert_eq!(got.dims(), want.dims());
        assert_eq!(
            max_abs_diff(got, want),
            0.0,
            "{k:?} differs from the HF layout"
        );
    }
}

#[test]
fn shapes_of_logits_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Tiny::default().gguf_in(dir.path(), 2);
    let m = load_gguf(&p);
    let x = Tensor::new(&[[1u32, 5, 9, 200], [3, 4, 5, 6]], &Device::Cpu).unwrap();
    let logits = m.llama.forward(&x, 0, None).unwrap();
    assert_eq!(logits.dims(), &[2, 4, m.llama.config.vocab_size]);
    let h = m.llama.embed(&x).unwrap();
    let y = m.llama.forward_block(0, &h, 0, None, None).unwrap();
    assert_eq!(y.dims(), &[2, 4, 32]);
    // Each batch row is an independent sequence.
    let single = m
        .llama
        .forward(&x.narrow(0, 1, 1).unwrap(), 0, None)
        .unwrap();
    assert!(max_abs_diff(&single, &logits.narrow(0, 1, 1).unwrap()) < 1e-5);
}

#[test]
fn kv_cache_equals_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Tiny::default().gguf_in(dir.path(), 3);
    let m = load_gguf(&p);
    let seq: Vec<u32> = vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110];
    let full = m
        .llama
        .forward(&ids(&seq), 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap();
    let mut cache = KvCache::new(m.llama.blocks.len());
    // Prefill 4 tokens, then a chunk of 3, then one token at a time.
    let a = m
        .llama
        .forward(&ids(&seq[..4]), 0, Some(&mut cache))
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert!(max_abs_diff(&a, &full.narrow(0, 0, 4).unwrap()) < 1e-4);
    let b = m
        .llama
        .forward(&ids(&seq[4..7]), 4, Some(&mut cache))
        .unwrap()
        .squeeze(0)
        .unwrap();
    assert!(max_abs_diff(&b, &full.narrow(0, 4, 3).unwrap()) < 1e-4);
    for i in 7..seq.len() {
        let l = m
            .llama
            .forward_last(&ids(&seq[i..i + 1]), i, Some(&mut cache))
            .unwrap()
            .squeeze(0)
            .unwrap();
        let d = max_abs_diff(&l, &full.get(i).unwrap());
        assert!(d < 1e-4, "position {i}: {d}");
    }
    assert_eq!(cache.len, seq.len());
}

/// GQA must equal multi-head attention whose K/V heads are the shared KV head repeated.
#[test]
fn gqa_equals_repeated_kv_heads() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let (p, mut w) = t.gguf_in(dir.path(), 4);
    let gqa = load_gguf(&p);
    let hd = t.head_dim();
    let rep = t.heads / t.kv_heads;
    for b in 0..t.blocks {
        for k in ["k_proj", "v_proj"] {
            let name = format!("model.layers.{b}.self_attn.{k}.weight");
            let heads: Vec<Tensor> = (0..t.heads)
                .map(|h| w[&name].narrow(0, (h / rep) * hd, hd).unwrap())
                .collect();
            w.insert(name, Tensor::cat(&heads, 0).unwrap());
        }
    }
    let mha_t = Tiny {
        kv_heads: t.heads,
        ..Tiny::default()
    };
    let p2 = dir.path().join("mha.gguf");
    mha_t.write_gguf(&p2, &w, "llama");
    let mha = load_gguf(&p2);
    let x = ids(&[5, 6, 7, 8, 9, 10]);
    let d = max_abs_diff(
        &gqa.llama.forward(&x, 0, None).unwrap(),
        &mha.llama.forward(&x, 0, None).unwrap(),
    );
    assert!(d < 1e-5, "{d}");
}

/// The half-split rope against its textbook definition.
#[test]
fn rope_matches_definition() {
    let t = Tiny::default();
    let cfg = dlpx::model::LlamaConfig::from_hf_json(
        &serde_json::json!({"model_type":"llama","hidden_size":t.hidden,"intermediate_size":t.ffn,
            "num_hidden_layers":1,"num_attention_heads":t.heads,"vocab_size":10,"rope_theta":10000.0})
        .to_string(),
    )
    .unwrap();
    let rope = dlpx::model::llama::Rope::new(&cfg, 64, DType::F32, &Device::Cpu).unwrap();
    let d = cfg.head_dim;
    let x = Tensor::randn(0f32, 1.0, (1, 1, 5, d), &Device::Cpu).unwrap();
    let offset = 7;
    let got = rope
        .apply(&x, offset)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for pos in 0..5 {
        for i in 0..d / 2 {
            let theta = (offset + pos) as f64 / 10000f64.powf(2.0 * i as f64 / d as f64);
            let (a, b) = (xv[pos * d + i] as f64, xv[pos * d + i + d / 2] as f64);
            let want0 = a * theta.cos() - b * theta.sin();
            let want1 = b * theta.cos() + a * theta.sin();
            assert!((got[pos * d + i] as f64 - want0).abs() < 1e-5);
            assert!((got[pos * d + i + d / 2] as f64 - want1).abs() < 1e-5);
        }
    }
}

#[test]
fn export_round_trip_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Tiny {
        tied: false,
        ..Tiny::default()
    }
    .gguf_in(dir.path(), 5);
    let m = load_gguf(&p);
    assert!(m.llama.lm_head.is_some());
    let out = dir.path().join("export");
    model::save_folder(&m, &out).unwrap();
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let back = model::load(
        &ModelSource::Folder(out.clone()),
        &Device::Cpu,
        DType::F32,
        &mut |_| {},
    )
    .unwrap();
    let x = ids(&[1, 104, 105, 257, 3]);
    assert_eq!(
        max_abs_diff(
            &m.llama.forward(&x, 0, None).unwrap(),
            &back.llama.forward(&x, 0, None).unwrap()
        ),
        0.0
    );
    assert_eq!(
        m.encode("he said 12").unwrap(),
        back.encode("he said 12").unwrap()
    );
    // Exporting over a non-empty folder is refused and leaves it alone.
    let e = model::save_folder(&m, &out).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
}

#[test]
fn gguf_tokenizer_has_no_prefix_space_and_splits_digits() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Tiny::default().gguf_in(dir.path(), 6);
    let m = load_gguf(&p);
    let ids = m.encode("he<|endoftext|>").unwrap();
    let he = m.tokenizer.token_to_id("he").unwrap();
    assert_eq!(
        ids,
        vec![he, 0],
        "no prefix space, merge applied, control token whole"
    );
    assert_eq!(
        m.tokenizer
            .decode(&m.encode("a 12 é").unwrap(), false)
            .unwrap(),
        "a 12 é"
    );
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let (p, w) = t.gguf_in(dir.path(), 7);
    let dev = Device::Cpu;
    let err = |p: &std::path::Path| match model::load_gguf(p, &dev, DType::F32, &mut |_| {}) {
        Ok(_) => panic!("loaded {}", p.display()),
        Err(e) => format!("{e:#}"),
    };
    // Truncated file.
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(err(&cut).contains("truncated"), "{}", err(&cut));
    let tiny = dir.path().join("tiny-header.gguf");
    std::fs::write(&tiny, &bytes[..40]).unwrap();
    assert!(err(&tiny).contains("not a readable GGUF"), "{}", err(&tiny));
    // Unknown architecture.
    let other = dir.path().join("gpt2.gguf");
    t.write_gguf(&other, &w, "gpt2");
    let e = err(&other);
    assert!(
        e.contains("unsupported architecture `gpt2`") && e.contains("llama"),
        "{e}"
    );
    // Folder without config.json.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = match model::load(&ModelSource::Folder(empty), &dev, DType::F32, &mut |_| {}) {
        Ok(_) => panic!(),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no config.json"), "{e}");
}

/// The preflight estimate for Llama-2-7B's shapes (config only) against a hand calculation.
#[test]
fn memory_estimate_for_llama2_7b_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,
            "intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":32,"vocab_size":32000,"max_position_embeddings":4096,
            "rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false,
            "bos_token_id":1,"eos_token_id":2}"#,
    )
    .unwrap();
    let run = |metric: &str| -> serde_json::Value {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["estimate", "--config-json", cfg.to_str().unwrap()])
            .args([
                "--calib-samples",
                "128",
                "--seq-len",
                "2048",
                "--dtype",
                "f32",
            ])
            .args(["--metric", metric, "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let e = run("wanda");
    // Hand calculation, f32 (4 bytes), 128 windows × 2048 tokens, batches of 8.
    let params: u64 = 32000 * 4096 // embeddings
        + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) // blocks with their 2 norms
        + 4096 // final norm
        + 32000 * 4096; // untied head
    assert_eq!(params, 6_738_415_616);
    assert_eq!(e["weights"], params * 4);
    assert_eq!(e["activations"], 2u64 * 128 * 2048 * 4096 * 4); // 8 GiB
    assert_eq!(
        e["block_workspace"],
        2u64 * 8 * 32 * 2048 * 2048 * 4 + 4 * 8 * 2048 * 11008 * 4
    );
    assert_eq!(e["block_scores"], 2u64 * 202_375_168 * 4);
    assert_eq!(e["wanda_stats"], 32u64 * (6 * 4096 + 11008) * 4);
    assert_eq!(e["hessians"], 0);
    assert_eq!(e["total"], 48_642_768_896u64);
    let s = run("sparsegpt");
    assert_eq!(
        s["hessians"],
        (3u64 * 4096 * 4096 + 11008 * 11008) * 4 + 3 * 11008 * 11008 * 8
    );
}
