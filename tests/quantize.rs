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
use dlpx::model::quant::QuantFormat;
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
            let w = l
                .weight()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let abs: Vec<f32> = w.iter().map(|x| x.abs()).collect();
            let mask = dlpx::prune::mask::per_row(&abs, cols, 0.7);
            let shape = l.weight().unwrap().dims().to_vec();
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

/// f32 values rounded to f16 and back (the block scales are stored as f16).
fn via_f16(xs: &[f32]) -> Vec<f32> {
    Tensor::new(xs, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// A row-major weight matrix quantized and dequantized by ggml's reference quantizers
/// (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`, `quantize_row_q5_0_ref` and the matching
/// `dequantize_row_*` in llama.cpp's ggml-quants.c), written out here from the C so the expected
/// values do not come from the quantizer under test. Blocks of 32 weights, one f16 scale each:
/// - q8_0: d = max|x| / 127, q = round(x / d) in −127..127;
/// - q4_0: d = x_m / −8 with x_m the weight of largest |x|, q = min(15, trunc(x / d + 8.5)) − 8;
/// - q5_0: the same with 16 and 31: q = min(31, trunc(x / d + 16.5)) − 16.
///
/// The dequantized weight is q · f16(d); the division uses the unrounded d, as the C does.
fn ggml_reference(w: &[f32], ty: &str) -> Vec<f32> {
    assert_eq!(w.len() % 32, 0);
    let blocks: Vec<&[f32]> = w.chunks(32).collect();
    let d: Vec<f32> = blocks
        .iter()
        .map(|b| {
            let (mut amax, mut max) = (0f32, 0f32);
            for &x in b.iter() {
                if amax < x.abs() {
                    amax = x.abs();
                    max = x;
                }
            }
            match ty {
                "q8_0" => amax / 127.0,
                "q4_0" => max / -8.0,
                "q5_0" => max / -16.0,
                _ => unreachable!("{ty}"),
            }
        })
        .collect();
    let d16 = via_f16(&d);
    let mut out = Vec::with_capacity(w.len());
    for ((b, &d), &d16) in blocks.iter().zip(&d).zip(&d16) {
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for &x in b.iter() {
            let q = match ty {
                "q8_0" => (x * id).round(),
                "q4_0" => ((x * id + 8.5) as i8).min(15) as f32 - 8.0,
                _ => ((x * id + 16.5) as i8).min(31) as f32 - 16.0,
            };
            out.push(q * d16);
        }
    }
    out
}

/// The GGUF type a linear with rows of `cols` weights is written in (llama.cpp's fallbacks:
/// q4_k needs rows of 256, else q5_0).
fn expected_type(format: QuantFormat, cols: usize) -> &'static str {
    match format {
        QuantFormat::Q8_0 => "q8_0",
        QuantFormat::Q4_0 => "q4_0",
        QuantFormat::Q4K if cols.is_multiple_of(256) => "q4_k",
        QuantFormat::Q4K => "q5_0",
    }
}

/// q4_k has no reference written out here; what it must be: 4 bits per weight, so at most 16
/// distinct values in each sub-block of 32 (d·sc·q − dmin·m, q in 0..15), and close to the
/// weights: its relative RMS error on the kept weights is at most that of a 16-level grid
/// spanning each sub-block's range, (max − min) / 15 / √12 per weight, with 50 % slack for the
/// 6-bit scales and minimums. Returns the relative RMS error.
fn check_q4_k(name: &str, w: &[f32], g: &[f32]) -> f64 {
    let (mut err, mut grid, mut norm) = (0f64, 0f64, 0f64);
    for (wb, gb) in w.chunks(32).zip(g.chunks(32)) {
        let mut levels: Vec<u32> = gb.iter().map(|x| x.to_bits()).collect();
        levels.sort();
        levels.dedup();
        assert!(levels.len() <= 16, "{name}: {} values in 32", levels.len());
        let lo = wb.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        let hi = wb.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let step = (hi - lo) / 15.0;
        for (&x, &y) in wb.iter().zip(gb) {
            if x != 0.0 {
                err += (x as f64 - y as f64).powi(2);
                grid += step * step / 12.0;
                norm += (x as f64).powi(2);
            }
        }
    }
    assert!(norm > 0.0, "{name}: no kept weight");
    assert!(
        err <= 1.5 * 1.5 * grid,
        "{name}: rms error {} > grid {}",
        err.sqrt(),
        grid.sqrt()
    );
    (err / norm).sqrt()
}

fn check_round_trip(m: &LoadedModel, path: &Path, format: Option<QuantFormat>) {
    let back = load(ModelSource::Gguf(path.to_path_buf()));
    let want = m.llama.named_tensors().unwrap();
    let got: std::collections::HashMap<String, Tensor> =
        back.llama.named_tensors().unwrap().into_iter().collect();
    assert_eq!(got.len(), want.len(), "tensors in the file");
    let types = tensor_types(path).unwrap();
    let mut quantized = 0;
    for (name, t) in &want {
        let g = &got[name];
        assert_eq!(g.dims(), t.dims(), "{name}");
        let format = format.filter(|_| is_linear(name));
        if let Some(f) = format {
            let cols = t.dims()[1];
            let ty = expected_type(f, cols);
            let gguf = dlpx::export::gguf::hf_to_gguf_name(name).unwrap();
            assert_eq!(dlpx::model::quant::type_name(types[&gguf]), ty, "{name}");
            let w = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            if ty == "q4_k" {
                check_q4_k(name, &w, &gv);
            } else {
                let expect = ggml_reference(&w, ty);
                let bad = expect.iter().zip(&gv).position(|(a, b)| a != b);
                assert!(
                    bad.is_none(),
                    "{name} ({ty}): weight {} is {} in the file, ggml's reference gives {}",
                    bad.unwrap(),
                    gv[bad.unwrap()],
                    expect[bad.unwrap()]
                );
            }
            quantized += 1;
        } else {
            assert_eq!(
                common::max_abs_diff(g, t),
                0.0,
                "{name} differs after the round trip"
            );
        }
        if is_linear(name) && format != Some(QuantFormat::Q4K) {
            let (a, b) = (
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let lost = a.iter().zip(&b).filter(|(x, y)| **x == 0.0 && **y != 0.0);
            assert_eq!(lost.count(), 0, "{name}: pruned zeros came back non-zero");
        }
    }
    if format.is_some() {
        assert_eq!(quantized, 7 * m.llama.blocks.len(), "quantized linears");
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

use common::dlpx_in as dlpx;
use common::study::Study;

#[test]
fn prune_quantize_reports_and_saves_what_it_measured() {
    let study = Study::new(
        Tiny {
            hidden: 64,
            ffn: 128,
            ..Tiny::default()
        },
        8,
    );
    let d = study.d();
    let out = d.join("pruned-q8.gguf");
    let report = d.join("r.json");
    let data = study.data();
    let mut a = vec!["prune"];
    a.extend(data.iter().map(String::as_str));
    a.extend([
        "--quantize",
        "q8_0",
        "--save",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--report",
        report.to_str().unwrap(),
    ]);
    let o = study.dlpx(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("pruned + q8_0"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["schema_version"], dlpx::report::SCHEMA_VERSION);
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
    let o = study.dlpx(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        &study.text,
        "--seq-len",
        "16",
        "--windows",
        "6",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ppl = e["ppl"].as_f64().unwrap();
    assert!((ppl - quant).abs() <= 1e-9 * quant, "{ppl} vs {quant}");
    // A report of schema 4 replays as a config.
    let o = study.dlpx(&[
        "prune",
        "--config",
        report.to_str().unwrap(),
        "--model",
        study.m(),
        "--calib",
        &study.text,
        "--eval",
        &study.text,
        "--json",
    ]);
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
