//! Deployable exports: compressed-tensors sparse checkpoints (byte for byte against files that
//! compressed-tensors 0.14.0.1 itself wrote, in tests/fixtures/compressed_tensors) and
//! llm-compressor recipes, and on the demo model the size and exactness of a compressed export.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use dlpx::export::compressed::{compress_24, compress_bitmask, decompress};

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/compressed_tensors")
        .join(name);
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

/// Dtype, shape and every bit of two tensors (floats compared through f32, which is exact for
/// bf16/f16 and keeps the sign of zero).
fn same_bits(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    match a.dtype() {
        DType::U8 => assert_eq!(
            a.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            "{what}"
        ),
        DType::I64 => assert_eq!(
            a.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            "{what}"
        ),
        _ => {
            let bits = |t: &Tensor| -> Vec<u32> {
                t.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(a), bits(b), "{what}");
        }
    }
}

#[test]
fn compression_matches_compressed_tensors_byte_for_byte() {
    let dense = fixture("dense_inputs.safetensors");
    let bitmask = fixture("bitmask_tensors.safetensors");
    let s24 = fixture("sparse24_tensors.safetensors");
    let mut checked = 0;
    for (name, w) in &dense {
        let p = name.strip_suffix(".weight").unwrap();
        let (parts, want) = if p.starts_with("u.") {
            (compress_bitmask(p, w).unwrap(), &bitmask)
        } else {
            (compress_24(p, w).unwrap().expect("2:4"), &s24)
        };
        let keys: Vec<&String> = want
            .keys()
            .filter(|k| k.starts_with(&format!("{p}.")))
            .collect();
        assert_eq!(parts.len(), keys.len(), "{p}: tensor names");
        for (k, t) in &parts {
            same_bits(t, &want[k], k);
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 4 + 3 * 3);
    // Their files decompress to the dense inputs (−0.0 written as a dropped zero reads as +0.0).
    for (files, prefix) in [(bitmask, "u."), (s24, "s24")] {
        // Every dense input of the file comes back, none missing and none extra.
        let out = decompress(files).unwrap();
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        let mut want_names: Vec<&str> = dense
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.starts_with(prefix))
            .collect();
        want_names.sort();
        assert_eq!(want_names.len(), 3, "{prefix}: fixture tensors");
        assert_eq!(names, want_names, "{prefix}: decompressed tensors");
        for (k, t) in out {
            let want = dense[&k]
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let got = t
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got, want, "{k}");
        }
    }
}

fn dlpx(args: &[&str]) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The DLP-pruned demo (p 0.7, preview masks) saved dense and compressed: the compressed
/// checkpoint is at most half the size, decompresses to exactly the dense pruned weights, and
/// says what it is in config.json, and dlpx loads it back sparse; the recipe names the per-layer sparsities of the report.
#[test]
fn demo_compressed_export_and_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &str| d.join(p).to_str().unwrap().to_string();
    let common = [
        "prune",
        "--mode",
        "preview",
        "--eval",
        "none",
        "--calib-samples",
        "8",
    ];
    let err = dlpx(
        &[
            &common[..],
            &["--save", &s("compressed"), "--format", "compressed"],
            &[
                "--recipe-out",
                &s("recipe.yaml"),
                "--report",
                &s("report.json"),
            ],
        ]
        .concat(),
    );
    assert!(
        err.contains("sparse-bitmask: 210 linears compressed, 0 left dense"),
        "{err}"
    );
    dlpx(&[&common[..], &["--save", &s("dense")]].concat());

    let size = |p: &str| {
        std::fs::metadata(d.join(p).join("model.safetensors"))
            .unwrap()
            .len()
    };
    let (c, dn) = (size("compressed"), size("dense"));
    assert!(
        c * 2 <= dn,
        "compressed {c} B is more than half of dense {dn} B"
    );

    let load = |p: &str| {
        candle_core::safetensors::load(d.join(p).join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let back = decompress(load("compressed")).unwrap();
    let dense = load("dense");
    assert_eq!(back.len(), dense.len());
    for (k, t) in &dense {
        let f = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(f(&back[k]), f(t), "{k}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("compressed/config.json")).unwrap())
            .unwrap();
    let sc = &cfg["quantization_config"]["sparsity_config"];
    assert_eq!(
        cfg["quantization_config"]["quant_method"],
        "compressed-tensors"
    );
    assert_eq!(sc["format"], "sparse-bitmask");
    assert_eq!(sc["sparsity_structure"], "unstructured");
    assert_eq!(sc["targets"], serde_json::json!(["Linear"]));
    assert_eq!(sc["ignore"], serde_json::json!(["lm_head"]));
    let g = sc["global_sparsity"].as_f64().unwrap();
    assert!(g > 0.5 && g < 0.7, "{g}");

    // dlpx reads its compressed checkpoint back straight into compressed rows: the same
    // linears run sparse, holding the same bytes, and generate the same tokens as the dense
    // folder with zeros (compacted on load); `--sparse off` makes them dense again.
    let generate = |p: &str, mode: &str| -> serde_json::Value {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
            .args(["generate", "-q", "--json", "--max-new-tokens", "8"])
            .args(["--prompt", "The history of the city", "--sparse", mode])
            .args(["--model", &s(p)])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (from_c, from_d) = (generate("compressed", "auto"), generate("dense", "auto"));
    assert!(from_c["sparse_linears"].as_u64().unwrap() > 100, "{from_c}");
    for k in ["sparse_linears", "linear_bytes", "tokens"] {
        assert_eq!(from_c[k], from_d[k], "{k}");
    }
    let off = generate("compressed", "off");
    assert_eq!(off["sparse_linears"], 0);
    assert_eq!(off["tokens"], from_d["tokens"]);
    assert!(
        off["linear_bytes"].as_u64().unwrap() > 2 * from_c["linear_bytes"].as_u64().unwrap(),
        "{off} vs {from_c}"
    );

    // The recipe: WandaPruningModifier with the report's per-block targets, bit for bit.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
    let want: Vec<f64> = report["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["target_sparsity"].as_f64().unwrap())
        .collect();
    let yaml = std::fs::read_to_string(d.join("recipe.yaml")).unwrap();
    let lines: Vec<&str> = yaml.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        &lines[..3],
        [
            "sparsity_stage:",
            "  sparsity_modifiers:",
            "    WandaPruningModifier:"
        ]
    );
    let list = lines[3]
        .trim()
        .strip_prefix("sparsity: [")
        .unwrap()
        .strip_suffix(']')
        .unwrap();
    let got: Vec<f64> = list.split(", ").map(|x| x.parse().unwrap()).collect();
    assert_eq!(got, want);
    assert_eq!(lines[4].trim(), "mask_structure: \"0:0\"");
    assert_eq!(lines[5].trim(), r#"targets: ["re:model\\.layers\\.\\d+$"]"#);
    assert_eq!(lines[6].trim(), r#"ignore: ["re:.*lm_head"]"#);
    assert_eq!(lines.len(), 7);

    // 2:4, uniform: a SparseGPT recipe with one N:M; DLP's per-block N cannot be one.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(&common[..])
        .args(["--pattern", "2:4", "--recipe-out", &s("r24.yaml")])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("one N:M pattern"), "{e}");
    dlpx(
        &[
            &common[..],
            &[
                "--pattern",
                "2:4",
                "--allocation",
                "uniform",
                "--recipe-out",
                &s("r24.yaml"),
            ],
            &["--save", &s("c24"), "--format", "compressed"],
        ]
        .concat(),
    );
    let y = std::fs::read_to_string(d.join("r24.yaml")).unwrap();
    assert!(
        y.contains("      sparsity: 0.5\n      mask_structure: \"2:4\"\n"),
        "{y}"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("c24/config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg["quantization_config"]["sparsity_config"]["format"],
        "sparse-24-bitmask"
    );
    let c24 = load("c24");
    assert_eq!(c24["model.layers.0.mlp.down_proj.shape"].dims(), [2, 1]);
    assert!(!c24.contains_key("model.layers.0.mlp.down_proj.row_offsets"));
}
