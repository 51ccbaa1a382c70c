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
        let got = &m.llama.blocks[1].linear(k).weight().unwrap();
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
    let run = |metric: &str, extra: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["estimate", "--config-json", cfg.to_str().unwrap()])
            .args(extra)
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
    let e = run("wanda", &[]);
    // Hand calculation, f32 (4 bytes), 128 windows × 2048 tokens, forwarded one at a time.
    let params: u64 = 32000 * 4096 // embeddings
        + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) // blocks with their 2 norms
        + 4096 // final norm
        + 32000 * 4096; // untied head
    assert_eq!(params, 6_738_415_616);
    assert_eq!(e["weights"], params * 4);
    assert_eq!(e["activations"], 2u64 * 128 * 2048 * 4096 * 4); // 8 GiB
    assert_eq!(
        e["block_workspace"],
        2u64 * 32 * 2048 * 2048 * 4 + 4 * 2048 * 11008 * 4
    );
    // One linear at a time: the largest (11008 × 4096) as f32 weights plus the f64 Gram matrix
    // of its smaller side (4096²) and the eigensolver's two copies, which beats weights + scores.
    let linear_work: u64 = 11008 * 4096 * 4 + 3 * 4096 * 4096 * 8;
    assert!(linear_work > 2 * 11008 * 4096 * 4);
    assert_eq!(e["linear_work"], linear_work);
    assert_eq!(e["offloaded"], 0);
    assert_eq!(e["wanda_stats"], 32u64 * (6 * 4096 + 11008) * 4);
    assert_eq!(e["hessians"], 0);
    let total: u64 = params * 4
        + 2 * 128 * 2048 * 4096 * 4
        + (2 * 32 * 2048 * 2048 * 4 + 4 * 2048 * 11008 * 4)
        + linear_work
        + 32 * (6 * 4096 + 11008) * 4;
    assert_eq!(e["total"], total);
    assert_eq!(total, 37_565_612_032); // 35.0 GiB
                                       // --offload: 31 of the 32 blocks' linears (202,375,168 parameters each) stay in the file.
    let o = run("wanda", &["--offload"]);
    let block: u64 = 4 * 4096 * 4096 + 3 * 4096 * 11008;
    assert_eq!(block, 202_375_168);
    assert_eq!(o["weights"], (params - 31 * block) * 4);
    assert_eq!(o["offloaded"], 32 * block * 4);
    assert_eq!(o["total"], total - 31 * block * 4); // 11.6 GiB
    let s = run("sparsegpt", &[]);
    assert_eq!(
        s["hessians"],
        (3u64 * 4096 * 4096 + 11008 * 11008) * 4 + 3 * 11008 * 11008 * 8
    );
}

/// The paper-protocol loaders offline, on files the test writes: C4-style JSON lines (gzip) for
/// calibration through the seeded sampler, WikiText-style parquet (snappy) for evaluation with
/// all windows; the presets without network or cache fail with a clear message.
#[test]
fn protocol_loaders_on_local_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, _) = Tiny::default().gguf_in(d, 3);
    // C4-style: one JSON object per line, gzip; every third document too short for a window.
    let docs: Vec<String> = (0..40)
        .map(|i| {
            if i % 3 == 0 {
                format!("tiny {i}")
            } else {
                format!(
                    "document {i}: {}",
                    "lorem ipsum dolor sit amet ".repeat(2 + i % 5)
                )
            }
        })
        .collect();
    let gz = d.join("c4-style.jsonl.gz");
    common::write_jsonl_gz(&gz, &docs);
    // WikiText-style: a parquet file with a `text` column, snappy-compressed.
    let rows: Vec<String> = (0..25)
        .map(|i| format!(" = Section {i} = \n Some wiki text, line {i}. "))
        .collect();
    let pq = d.join("wikitext-style.parquet");
    common::write_parquet_text(&pq, &rows);

    let run = |seed: &str, report: &str| -> serde_json::Value {
        let rep = d.join(report);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["prune", "--quiet", "--model", model.to_str().unwrap()])
            .args([
                "--calib",
                gz.to_str().unwrap(),
                "--eval",
                pq.to_str().unwrap(),
            ])
            .args([
                "--calib-samples",
                "6",
                "--seq-len",
                "16",
                "--eval-windows",
                "0",
            ])
            .args(["--mode", "preview", "--no-stats-cache", "--seed", seed])
            .arg("--report")
            .arg(&rep)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let a = run("0", "a.json");
    let b = run("0", "b.json");
    let c = run("7", "c.json");
    assert_eq!(a["data"]["calib"]["seed"], 0);
    assert_eq!(c["data"]["calib"]["seed"], 7);
    // Deterministic for a seed: the same statistics, hence the same scores.
    let scores = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["score"].clone())
            .collect()
    };
    assert_eq!(scores(&a), scores(&b));
    assert_ne!(scores(&a), scores(&c), "another seed draws other windows");
    // Evaluation: every non-overlapping window of the joined rows, tail dropped.
    let m = model::load_gguf(&model, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let ids = m.encode(&rows.join("\n\n")).unwrap();
    assert_eq!(a["data"]["eval"]["windows"], ids.len() / 16);
    assert_eq!(a["ppl"]["dense"], b["ppl"]["dense"]);
    // The sampler in the library gives the windows the CLI used (seeded, offline): the block
    // scores the CLI reported for seeds 0 and 7 are the median Wanda scores of the library's
    // windows for those seeds (a local file adds no BOS, as the windows here do not).
    let lib_scores = |seed: u64| -> Vec<serde_json::Value> {
        let mut encode = |t: &str| m.encode(t);
        let w = dlpx::data::presets::sample_windows(&docs, &mut encode, 6, 16, seed).unwrap();
        assert_eq!(w.len(), 6);
        assert!(w.iter().all(|x| x.len() == 16), "{w:?}");
        let cal = dlpx::prune::stats::calibrate(&m.llama, &w, 5.0, false, &mut |_| true).unwrap();
        let stat = dlpx::prune::pipeline::PruneParams::default().statistic;
        cal.blocks
            .iter()
            .map(|b| serde_json::json!(b.get(stat)))
            .collect()
    };
    assert_eq!(scores(&a).len(), m.llama.blocks.len());
    assert_eq!(lib_scores(0), scores(&a), "seed 0: library vs CLI windows");
    assert_eq!(lib_scores(7), scores(&c), "seed 7: library vs CLI windows");

    // The presets, offline with an empty cache: one clear message naming the dataset.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args([
            "prune",
            "--quiet",
            "--model",
            model.to_str().unwrap(),
            "--calib",
            "c4",
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", d.join("empty-hf-home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("allenai/c4") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

/// `--offload` (block linears read from the file one block at a time) computes exactly what the
/// resident model does, from a GGUF and from a safetensors folder: logits, calibration
/// statistics (with the spectra), a faithful Wanda-DLP pruning, and the exported weights.
#[test]
fn offload_matches_resident() {
    use dlpx::eval::perplexity::perplexity;
    use dlpx::model::Placement;
    use dlpx::prune::pipeline::{achieved, plan, prune_faithful, PruneParams};
    use dlpx::prune::stats::calibrate;
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        tied: false,
        blocks: 3,
        ..Tiny::default()
    };
    let (gguf, _) = tiny.gguf_in(dir.path(), 9);
    let folder = dir.path().join("folder");
    model::save_folder(&load_gguf(&gguf), &folder).unwrap();
    let windows: Vec<Vec<u32>> = (0..4)
        .map(|w| (0..16).map(|i| ((w * 37 + i * 11) % 258) as u32).collect())
        .collect();
    for src in [ModelSource::Gguf(gguf.clone()), ModelSource::Folder(folder)] {
        let load =
            |place| model::load_placed(&src, &Device::Cpu, DType::F32, place, &mut |_| {}).unwrap();
        let (res, off) = (load(Placement::Resident), load(Placement::Offload));
        assert!(off.llama.blocks.iter().all(|b| !b.resident));
        let x = ids(&[1, 104, 105, 257, 3]);
        let logits = |m: &model::LoadedModel| m.llama.forward(&x, 0, None).unwrap();
        assert_eq!(max_abs_diff(&logits(&res), &logits(&off)), 0.0, "{src:?}");
        // Offloaded perplexity runs block by block (each block read once): same NLL, exactly.
        let ppl = |l: &dlpx::model::Llama| perplexity(l, &windows, &mut |_, _| true).unwrap();
        assert_eq!(ppl(&res.llama), ppl(&off.llama));

        let cal_r = calibrate(&res.llama, &windows, 5.0, true, &mut |_| true).unwrap();
        let cal_o = calibrate(&off.llama, &windows, 5.0, true, &mut |_| true).unwrap();
        assert_eq!(
            serde_json::to_string(&cal_r)
                .unwrap()
                .split("\"seconds\"")
                .next(),
            serde_json::to_string(&cal_o)
                .unwrap()
                .split("\"seconds\"")
                .next()
        );
        let p = PruneParams::default();
        let pl = plan(&res.llama, &cal_r, &p).unwrap();
        let (mut pr, mut po) = (res.llama.clone(), off.llama.clone());
        prune_faithful(&mut pr, &windows, &pl, &p, &mut |_| true).unwrap();
        prune_faithful(&mut po, &windows, &pl, &p, &mut |_| true).unwrap();
        assert!(
            po.blocks.iter().all(|b| b.resident),
            "pruned blocks are kept"
        );
        assert_eq!(achieved(&pr).unwrap(), achieved(&po).unwrap());
        let after = |l: &dlpx::model::Llama| l.forward(&x, 0, None).unwrap();
        assert_eq!(max_abs_diff(&after(&pr), &after(&po)), 0.0);
        assert_eq!(ppl(&pr), ppl(&po));
        // The dense offloaded model is untouched by pruning its copy.
        assert_eq!(max_abs_diff(&logits(&res), &logits(&off)), 0.0);
        let named = |l: &dlpx::model::Llama| l.named_tensors().unwrap();
        let (nres, noff) = (named(&res.llama), named(&off.llama));
        // Every weight of the model: embeddings, final norm, lm_head, 9 per block.
        assert_eq!(nres.len(), 3 + 9 * tiny.blocks, "{src:?}");
        assert_eq!(noff.len(), nres.len(), "{src:?}: offloaded tensors missing");
        for ((na, ta), (nb, tb)) in nres.iter().zip(&noff) {
            assert_eq!(na, nb);
            assert_eq!(max_abs_diff(ta, tb), 0.0, "{na}");
        }
    }
}

/// Options every command takes work before or after the subcommand; an explorer option before a
/// subcommand (which would silently ignore it) is refused by name.
#[test]
fn option_placement() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(args)
            .output()
            .unwrap()
    };
    for args in [
        &["--device", "cpu", "schema"][..],
        &["schema", "--device", "cpu"],
    ] {
        let o = run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("schema_version"));
    }
    let o = run(&["--calib", "c4", "prune"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("`--calib` before `prune`"), "{e}");
}

/// The experiment layer's dense results cache: a second `dlpx prune` with the same model and
/// windows takes the dense perplexity and generations from the cache (same bits), `--no-cache`
/// measures them again, and other windows miss.
#[test]
fn second_prune_reuses_the_dense_results() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let (gguf, _) = t.gguf_in(dir.path(), 7);
    let text = dir.path().join("text.txt");
    let body: String = (0..400)
        .map(|i| format!("word{} and more{}\n", i % 37, i % 11))
        .collect();
    std::fs::write(&text, body).unwrap();
    let cache = dir.path().join("cache");
    let run = |eval_windows: &str, extra: &[&str]| -> (serde_json::Value, String) {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .env("DLPX_CACHE", &cache)
            .args(["prune", "--model", gguf.to_str().unwrap()])
            .args([
                "--calib",
                text.to_str().unwrap(),
                "--eval",
                text.to_str().unwrap(),
            ])
            .args([
                "--calib-samples",
                "2",
                "--seq-len",
                "16",
                "--eval-windows",
                eval_windows,
            ])
            .args(["--prompt", "word1", "--max-new-tokens", "4", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        (serde_json::from_slice(&o.stdout).unwrap(), err)
    };
    let (first, err1) = run("3", &[]);
    assert!(!err1.contains("dense perplexity from the cache"), "{err1}");
    let (second, err2) = run("3", &[]);
    assert!(err2.contains("dense perplexity from the cache"), "{err2}");
    assert_eq!(
        first["ppl"], second["ppl"],
        "cached dense perplexity differs"
    );
    assert_eq!(first["generations"], second["generations"]);
    assert!(second["ppl"]["dense"].as_f64().unwrap() > 1.0);
    let (fresh, err3) = run("3", &["--no-cache"]);
    assert!(!err3.contains("from the cache"), "{err3}");
    assert_eq!(
        first["ppl"], fresh["ppl"],
        "measuring again gives the same bits"
    );
    // Other windows are another question: measured, not taken from the cache.
    let (_, err4) = run("2", &[]);
    assert!(!err4.contains("dense perplexity from the cache"), "{err4}");
}

/// A Llama-3.1-style GGUF stores its rope scaling as per-frequency factors (`rope_freqs.weight`,
/// as llama.cpp's converter computes them); it loads and gives the logits of the same weights
/// with `rope_scaling` (llama3) in config.json. Exporting it as a folder is refused by name.
#[test]
fn llama31_gguf_with_rope_freqs_equals_rope_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny::default();
    let (plain, mut w) = t.gguf_in(dir.path(), 21);
    // llama3 scaling: factor 8, low 1, high 4, original context 64; head_dim 8 → 4 frequencies
    // (one kept, one smoothed, two divided by the factor).
    let (factor, low, high, old) = (8.0f64, 1.0f64, 4.0f64, 64.0f64);
    let d = t.head_dim();
    let factors: Vec<f32> = (0..d / 2)
        .map(|i| {
            let f = 1.0 / 10000f64.powf(2.0 * i as f64 / d as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let k = if wavelen < old / high {
                1.0
            } else if wavelen > old / low {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            k as f32
        })
        .collect();
    assert!(factors[0] == 1.0 && factors[3] == 8.0 && factors[1] > 1.0 && factors[1] < 8.0);
    w.insert(
        "rope_freqs.weight".into(),
        Tensor::new(factors.as_slice(), &Device::Cpu).unwrap(),
    );
    let gguf31 = dir.path().join("llama31.gguf");
    t.write_gguf(&gguf31, &w, "llama");
    let m31 = load_gguf(&gguf31);
    assert_eq!(
        m31.llama.config.rope_freq_factors.as_ref().unwrap().len(),
        d / 2
    );

    // The same weights as a folder whose config.json states the scaling.
    let folder = dir.path().join("folder");
    model::save_folder(&load_gguf(&plain), &folder).unwrap();
    let cfg_path = folder.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": factor,
        "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": 64});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let hf = model::load(
        &ModelSource::Folder(folder.clone()),
        &Device::Cpu,
        DType::F32,
        &mut |_| {},
    )
    .unwrap();
    let x = ids(&[5, 9, 17, 33, 2, 70, 41, 8, 100, 3, 7, 64]);
    let a = m31.llama.forward(&x, 0, None).unwrap();
    let b = hf.llama.forward(&x, 0, None).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-4, "rope_freqs and rope_scaling differ by {diff}");
    // Without the factors the logits do differ (the test would notice a dropped tensor).
    let c = load_gguf(&plain).llama.forward(&x, 0, None).unwrap();
    assert!(max_abs_diff(&a, &c) > 1e-3);

    let e = model::save_folder(&m31, &dir.path().join("out")).unwrap_err();
    assert!(format!("{e:#}").contains("rope_freqs"), "{e:#}");
}

/// The recovery estimate of `dlpx estimate` for Llama-2-7B's shapes against a hand calculation
/// (rank 8, 4 × 2048-token windows, bf16), and offloaded.
#[test]
fn recovery_estimate_for_llama2_7b_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":4096,
            "intermediate_size":11008,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":32,"vocab_size":32000,"max_position_embeddings":4096,
            "rms_norm_eps":1e-5,"tie_word_embeddings":false}"#,
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["estimate", "--config-json", cfg.to_str().unwrap()])
            .args(["--seq-len", "2048", "--dtype", "bf16", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let r = &run(&[])["recover"];
    // r·(in + out): q, k, v, o are 4096 → 4096; gate, up, down 4096 ↔ 11008; f32.
    let adapters: u64 = 32 * 8 * (4 * 8192 + 3 * 15104) * 4;
    assert_eq!(r["adapters"], adapters);
    assert_eq!(r["optimizer"], 4 * adapters);
    let t: u64 = 2047;
    assert_eq!(r["checkpoints"], 33 * 4 * t * 4096 * 2 + 4 * t * 4096 * 4);
    assert_eq!(
        r["block_workspace"],
        (8 * 4 * 32 * t * t + 10 * 4 * t * 11008 + 20 * 4 * t * 4096) * 2
    );
    assert_eq!(r["head"], 10u64 * 256 * 32000 * 4);
    assert_eq!(r["weights"], 6_738_415_616u64 * 2);
    let off = &run(&["--offload"])["recover"];
    let block: u64 = (4 * 4096 * 4096 + 3 * 4096 * 11008) * 2;
    assert_eq!(off["offloaded"], 32 * block);
    assert_eq!(off["weights"], 6_738_415_616u64 * 2 - 31 * block);
    // Offloaded in bf16, a 7B recovery fits in 24 GiB (the issue's bound).
    assert!(off["total"].as_u64().unwrap() < 24 << 30, "{off}");
    // Rank and batch are the recovery's own.
    let r2 = &run(&["--rank", "16", "--batch", "2"])["recover"];
    assert_eq!(r2["adapters"], 2 * adapters);
    assert_eq!(r2["checkpoints"], 33 * 2 * t * 4096 * 2 + 2 * t * 4096 * 4);
}
