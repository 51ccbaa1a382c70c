//! Integration tests on the real demo model and corpus (README, "The demo protocol"), driving the release binary.
//! The demo assets are fetched into `$DLPX_CACHE` (or the user cache) on first use.

use std::path::Path;
use std::process::{Command, Output};

use dlpx::data::{DemoSplit, TextSource};

fn dlpx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .arg("--quiet")
        .output()
        .expect("run dlpx")
}

fn ok(args: &[&str]) -> String {
    let o = dlpx(args);
    assert!(
        o.status.success(),
        "dlpx {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Runs dlpx expecting failure; returns stderr, checking it is one clear error and not a panic.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .arg("--quiet")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(
        o.status.code(),
        Some(1),
        "dlpx {args:?} should exit 1: {err}"
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one message expected: {err}"
    );
    err
}

fn demo_gguf() -> std::path::PathBuf {
    dlpx::assets::demo::ensure_model(&mut |_| {}).unwrap()
}

fn ppl_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["eval", "--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(&a)).unwrap()
}

#[test]
fn tokenizer_matches_protocol_counts() {
    let g = dlpx::model::gguf::GgufFile::open(&demo_gguf()).unwrap();
    let tok = g.tokenizer().unwrap();
    let enc = |s: &str| dlpx::model::encode(&tok, s).unwrap();
    assert_eq!(
        enc("The capital of France is"),
        vec![504, 3575, 282, 4649, 314]
    );
    let calib = TextSource::Demo(DemoSplit::Calib)
        .load(&mut |_| {})
        .unwrap();
    let eval = TextSource::Demo(DemoSplit::Eval).load(&mut |_| {}).unwrap();
    assert_eq!(calib.len(), 4_656_953);
    assert_eq!(eval.len(), 1_452_991);
    let (calib_ids, eval_ids) = (enc(&calib), enc(&eval));
    assert_eq!(calib_ids.len(), 1_008_556);
    assert_eq!(eval_ids.len(), 353_860);
    // Chunked encoding (cut after a newline between non-spaces) gives exactly the same ids, and
    // stopping early gives their prefix.
    let long = |s: &str, n| dlpx::model::encode_long(&tok, s, n).unwrap();
    assert_eq!(long(&calib, None), calib_ids);
    assert_eq!(long(&eval, None), eval_ids);
    assert_eq!(long(&eval, Some(16_384)), eval_ids[..16_384]);
}

#[test]
fn greedy_generation_says_paris() {
    let out = ok(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "8",
    ]);
    assert!(out.starts_with("The capital of France is Paris"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        "8",
        "--json",
    ]))
    .unwrap();
    assert!(j["text"].as_str().unwrap().starts_with(" Paris"), "{j}");
    // Seeded sampling is reproducible, and uses its seed and its temperature.
    let sample = |temperature: &str, seed: &str| {
        ok(&[
            "generate",
            "--prompt",
            "Once upon a time",
            "--temperature",
            temperature,
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
        ])
    };
    let a = sample("0.8", "7");
    assert!(a.starts_with("Once upon a time") && a.len() > 20, "{a}");
    assert_eq!(a, sample("0.8", "7"), "same seed, same text");
    let others = [sample("0.8", "8"), sample("0.8", "9")];
    assert!(
        others.iter().any(|o| *o != a),
        "seeds 7, 8 and 9 drew the same text: the seed is ignored\n{a}"
    );
    // Near temperature 0 the distribution is one-hot: every seed gives the greedy text. If the
    // temperature were ignored, the seeds would still draw different texts here.
    let greedy = ok(&[
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "12",
    ]);
    for seed in ["7", "8", "9"] {
        assert_eq!(
            sample("0.01", seed),
            greedy,
            "seed {seed} at temperature 0.01"
        );
    }
    assert!(
        [&a, &others[0], &others[1]].iter().any(|o| **o != greedy),
        "temperature 0.8 never left the greedy text"
    );
}

/// Dense perplexity on the demo protocol, then the same after an export round trip.
#[test]
fn perplexity_and_export_round_trip() {
    let dense = ppl_json(&[]);
    let ppl = dense["ppl"].as_f64().unwrap();
    assert_eq!(dense["tokens"], 16320);
    assert!(
        (ppl / 52.81 - 1.0).abs() < 0.005,
        "dense ppl {ppl}, expected 52.81 ± 0.5 %"
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smollm2-f32");
    ok(&["export-model", "--out", out.to_str().unwrap()]);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let back = ppl_json(&["--model", out.to_str().unwrap()])["ppl"]
        .as_f64()
        .unwrap();
    assert!(
        (back / ppl - 1.0).abs() < 1e-4,
        "round trip {back} vs {ppl}"
    );
}

#[test]
fn bad_inputs_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Missing file.
    let e = fails(&["eval", "--model", "/no/such/model.gguf"], &[]);
    assert!(e.contains("does not exist"), "{e}");
    let e = fails(&["eval", "--data", "/no/such/text.txt"], &[]);
    assert!(e.contains("does not exist"), "{e}");
    // Truncated GGUF: the first 10 MB of the real file.
    let bytes = std::fs::read(demo_gguf()).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..10_000_000]).unwrap();
    let e = fails(&["eval", "--model", cut.to_str().unwrap()], &[]);
    assert!(e.contains("truncated"), "{e}");
    // Folder without config.json.
    let e = fails(&["eval", "--model", d.to_str().unwrap()], &[]);
    assert!(e.contains("no config.json"), "{e}");
    // Unknown architecture.
    let arch = d.join("neox");
    std::fs::create_dir(&arch).unwrap();
    std::fs::write(
        arch.join("config.json"),
        r#"{"model_type":"gpt_neox","hidden_size":64,"intermediate_size":256,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}"#,
    )
    .unwrap();
    let e = fails(&["eval", "--model", arch.to_str().unwrap()], &[]);
    assert!(
        e.contains("unsupported architecture `gpt_neox`") && e.contains("llama, mistral, qwen2"),
        "{e}"
    );
    // Unknown Hub id while offline: names the id and the cache.
    let hf_home = d.join("hf");
    let e = fails(
        &["eval", "--model", "no-such-org/no-such-model"],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HOME", hf_home.to_str().unwrap()),
        ],
    );
    assert!(
        e.contains("no-such-org/no-such-model") && e.contains(hf_home.to_str().unwrap()),
        "{e}"
    );
    // Bad numbers.
    let e = fails(&["eval", "--windows", "100000"], &[]);
    assert!(e.contains("windows"), "{e}");
    let e = fails(&["generate", "--prompt", "x", "--top-p", "1.5"], &[]);
    assert!(e.contains("--top-p"), "{e}");
    // Exporting over a non-empty folder loses nothing.
    std::fs::write(d.join("keep.txt"), "x").unwrap();
    let e = fails(&["export-model", "--out", d.to_str().unwrap()], &[]);
    assert!(e.contains("not empty"), "{e}");
    assert!(Path::new(&d.join("keep.txt")).is_file());
}

/// A saved demo folder carries tokenizer_config.json, special_tokens_map.json and
/// generation_config.json with the GGUF's special tokens, chat template and context length, and
/// the folder loads back with the same special token ids.
#[test]
fn saved_folder_has_the_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("saved");
    ok(&["export-model", "--out", out.to_str().unwrap()]);
    let g = dlpx::model::gguf::GgufFile::open(&demo_gguf()).unwrap();
    let want = g.special_tokens(8192).unwrap();
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(f)).unwrap()).unwrap()
    };
    let tc = read("tokenizer_config.json");
    let got = dlpx::model::hf_files::special_from_config(&tc);
    assert_eq!(got, want);
    assert_eq!(got.bos.as_deref(), Some("<|im_start|>"));
    assert_eq!(got.eos.as_deref(), Some("<|im_end|>"));
    assert_eq!(got.unk.as_deref(), Some("<|endoftext|>"));
    assert_eq!(got.pad.as_deref(), Some("<|im_end|>"));
    assert!(got.chat_template.unwrap().contains("im_start"));
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["added_tokens_decoder"]["2"]["content"], "<|im_end|>");
    assert_eq!(read("special_tokens_map.json")["eos_token"], "<|im_end|>");
    let gen = read("generation_config.json");
    assert_eq!(
        (gen["bos_token_id"].as_u64(), gen["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );
    // Loaded back as a folder: the same files again, and the tokens resolve to the same ids.
    let m = dlpx::model::load(
        &dlpx::model::ModelSource::Folder(out.clone()),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(m.hf_files.tokenizer_config.as_ref(), Some(&tc));
    assert_eq!(m.tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(m.tokenizer.token_to_id("<|im_end|>"), Some(2));
    #[cfg(unix)]
    for f in [
        "tokenizer_config.json",
        "generation_config.json",
        "model.safetensors",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{f}");
    }
}
