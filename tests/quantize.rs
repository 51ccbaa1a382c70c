//! `--quantize` and `--format gguf` on tiny random-weight models: the GGUF that dlpx writes is
//! read back by dlpx's own loader with the same weights (the quantized linears equal to their
//! dequantized values, everything else exact), the same tokenizer and config; q8_0 and q4_0 keep
//! every pruned zero; a folder source gets tokenizer metadata built from its tokenizer.json; and
//! the CLI reports the quantized model.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::Tiny;
use dlpx::export::gguf::{save_gguf, tensor_types};
use dlpx::model::quant::{quantize_matrix, QuantFormat};
use dlpx::model::{self, LinearKind, LoadedModel, ModelSource};

fn load(src: ModelSource) -> LoadedModel {
    model::load(&src, &Device::Cpu, DType::F32, &mut |_| {}).unwrap()
}

/// Zero the 70 % smallest |w| of every row of every block linear (what a Wanda/magnitude mask
/// leaves behind).
fn prune(m: &mut LoadedModel) {
    for i in 0..m.llama.blocks.len() {
        let mut blk = m.llama.block(i).unwrap().into_owned();
        for k in LinearKind::ALL {
            let l = blk.linear_mut(k);
            let cols = l.in_features();
            let w = l.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let abs: Vec<f32> = w.iter().map(|x| x.abs()).collect();
            let mask = dlpx::prune::mask::per_row(&abs, cols, 0.7);
            let shape = l.weight.dims().to_vec();
            l.set_mask(Tensor::from_vec(mask, shape, &Device::Cpu).unwrap())
                .unwrap();
        }
        m.llama.store_block(i, blk).unwrap();
    }
}

fn is_linear(name: &str) -> bool {
    LinearKind::ALL
        .iter()
        .any(|k| name.ends_with(&format!("{}.weight", k.hf_name())))
}

fn check_round_trip(m: &LoadedModel, path: &Path, format: Option<QuantFormat>) {
    let back = load(ModelSource::Gguf(path.to_path_buf()));
    let want = m.llama.named_tensors().unwrap();
    let got: std::collections::HashMap<String, Tensor> =
        back.llama.named_tensors().unwrap().into_iter().collect();
    for (name, t) in &want {
        let expect = match (is_linear(name), format) {
            (true, Some(f)) => quantize_matrix(t, f)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap(),
            _ => t.clone(),
        };
        let g = &got[name];
        assert_eq!(
            common::max_abs_diff(g, &expect),
            0.0,
            "{name} differs after the round trip ({format:?})"
        );
        if is_linear(name) && format != Some(QuantFormat::Q4K) {
            let (a, b) = (
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let lost = a.iter().zip(&b).filter(|(x, y)| **x == 0.0 && **y != 0.0);
            assert_eq!(lost.count(), 0, "{name}: pruned zeros came back non-zero");
        }
    }
    assert_eq!(back.llama.config.hidden_size, m.llama.config.hidden_size);
    assert_eq!(
        back.llama.config.num_key_value_heads,
        m.llama.config.num_key_value_heads
    );
    assert_eq!(back.llama.config.vocab_size, m.llama.config.vocab_size);
    for text in ["he said 12 times: hello", "<|endoftext|>he 007"] {
        assert_eq!(
            back.encode(text).unwrap(),
            m.encode(text).unwrap(),
            "{text}"
        );
    }
}

#[test]
fn gguf_round_trip_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    // Rows of 64 and 128 weights: q8_0/q4_0 blocks of 32 fit, q4_k's 256 do not (→ q5_0).
    let tiny = Tiny {
        hidden: 64,
        ffn: 128,
        ..Tiny::default()
    };
    let (src, _) = tiny.gguf_in(dir.path(), 3);
    let mut m = load(ModelSource::Gguf(src));
    prune(&mut m);
    for (i, format) in [
        None,
        Some(QuantFormat::Q8_0),
        Some(QuantFormat::Q4_0),
        Some(QuantFormat::Q4K),
    ]
    .into_iter()
    .enumerate()
    {
        let out = dir.path().join(format!("out{i}.gguf"));
        save_gguf(&m, &out, format).unwrap();
        check_round_trip(&m, &out, format);
        let types = tensor_types(&out).unwrap();
        let want = match format {
            None => "f32",
            Some(QuantFormat::Q4K) => "q5_0",
            Some(f) => f.name(),
        };
        assert_eq!(
            dlpx::model::quant::type_name(types["blk.0.ffn_down.weight"]),
            want
        );
        assert_eq!(
            dlpx::model::quant::type_name(types["token_embd.weight"]),
            "f32"
        );
    }
    // Nothing is overwritten, and a path that is not a .gguf file is refused.
    let e = save_gguf(&m, &dir.path().join("out0.gguf"), None).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let e = save_gguf(&m, &dir.path().join("model.bin"), None).unwrap_err();
    assert!(e.to_string().contains(".gguf"), "{e}");
}

#[test]
fn q4_k_on_rows_of_256() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny {
        hidden: 256,
        ffn: 512,
        blocks: 1,
        ..Tiny::default()
    };
    let (src, _) = tiny.gguf_in(dir.path(), 4);
    let mut m = load(ModelSource::Gguf(src));
    prune(&mut m);
    let out = dir.path().join("q4k.gguf");
    save_gguf(&m, &out, Some(QuantFormat::Q4K)).unwrap();
    check_round_trip(&m, &out, Some(QuantFormat::Q4K));
    let types = tensor_types(&out).unwrap();
    assert_eq!(
        dlpx::model::quant::type_name(types["blk.0.attn_q.weight"]),
        "q4_k"
    );
}

#[test]
fn folder_source_writes_tokenizer_metadata_from_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = Tiny {
        tied: false,
        ..Tiny::default()
    }
    .gguf_in(dir.path(), 6);
    let folder = dir.path().join("folder");
    model::save_folder(&load(ModelSource::Gguf(src)), &folder).unwrap();
    let mut m = load(ModelSource::Folder(folder));
    prune(&mut m);
    let out = dir.path().join("from-folder.gguf");
    save_gguf(&m, &out, None).unwrap();
    check_round_trip(&m, &out, None);
}

use common::{dlpx_in as dlpx, text_file as text};

#[test]
fn prune_quantize_reports_and_saves_what_it_measured() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, _) = Tiny {
        hidden: 64,
        ffn: 128,
        ..Tiny::default()
    }
    .gguf_in(d, 8);
    let text = text(d);
    let out = d.join("pruned-q8.gguf");
    let report = d.join("r.json");
    let o = dlpx(
        d,
        &[
            "prune",
            "--model",
            src.to_str().unwrap(),
            "--calib",
            &text,
            "--eval",
            &text,
            "--calib-samples",
            "4",
            "--seq-len",
            "16",
            "--eval-windows",
            "6",
            "--quantize",
            "q8_0",
            "--save",
            out.to_str().unwrap(),
            "--format",
            "gguf",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pruned + q8_0"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 4);
    let q = &r["quantized"];
    assert_eq!(q["quantization"]["format"], "q8_0");
    assert_eq!(q["quantization"]["zeros_lost"], 0);
    assert!(q["quantization"]["pruned_zeros"].as_u64().unwrap() > 0);
    assert_eq!(q["quantization"]["types"]["q8_0"], 14);
    let (pruned, quant) = (
        r["ppl"]["pruned"].as_f64().unwrap(),
        q["ppl"].as_f64().unwrap(),
    );
    assert!(
        quant != pruned && (quant / pruned - 1.0).abs() < 0.05,
        "{pruned} → {quant}"
    );
    // The saved file is what was measured: `dlpx eval` of it gives the quantized perplexity.
    let o = dlpx(
        d,
        &[
            "eval",
            "--model",
            out.to_str().unwrap(),
            "--data",
            &text,
            "--seq-len",
            "16",
            "--windows",
            "6",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ppl = e["ppl"].as_f64().unwrap();
    assert!((ppl - quant).abs() <= 1e-9 * quant, "{ppl} vs {quant}");
    // A report of schema 4 replays as a config.
    let o = dlpx(
        d,
        &[
            "prune",
            "--config",
            report.to_str().unwrap(),
            "--model",
            src.to_str().unwrap(),
            "--calib",
            &text,
            "--eval",
            &text,
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_gguf_targets_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, _) = Tiny::default().gguf_in(d, 9);
    for (save, want) in [
        (d.join("model.bin"), ".gguf"),
        (src.clone(), "exists"),
        (d.join("nowhere/model.gguf"), "does not exist"),
    ] {
        let o = dlpx(
            d,
            &[
                "prune",
                "--model",
                src.to_str().unwrap(),
                "--save",
                save.to_str().unwrap(),
                "--format",
                "gguf",
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{err}");
        assert!(!err.contains("calibrat"), "checked before any work: {err}");
    }
    let o = dlpx(d, &["prune", "--quantize", "q3_x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("q8_0"), "{err}");
}
