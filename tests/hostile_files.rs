//! Damaged and hostile model files: the GGUF reader, the safetensors header and shard index,
//! and the config.json parser never panic and never size an allocation from a header's claims.
//! Property tests mutate tiny valid files (truncations, bit flips, absurd counts and sizes);
//! every case must load or give one error. `PROPTEST_CASES` raises the count (default and floor
//! here: 1500 GGUF cases, 400 for the others; a lower value is ignored with a message).

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::Tiny;
use dlpx::model::{self, ModelSource, Placement};
use proptest::prelude::*;

/// Load `bytes` as a GGUF file: Ok, or an error with a message; a panic fails the test.
fn load_gguf_bytes(dir: &Path, bytes: &[u8]) -> Result<(), String> {
    let p = dir.join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    let r = std::panic::catch_unwind(|| {
        model::load_gguf(&p, &Device::Cpu, DType::F32, &mut |_| {}).map(|m| {
            // A model that loads must also run.
            let ids = candle_core::Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
            m.llama.forward(&ids, 0, None).map(|_| ())
        })
    });
    match r {
        Err(_) => panic!("the GGUF loader panicked"),
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            assert!(!msg.trim().is_empty());
            Err(msg)
        }
        Ok(Ok(Err(e))) => Err(format!("{e}")),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

fn tiny_gguf() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = Tiny::default().gguf_in(dir.path(), 9);
    std::fs::read(p).unwrap()
}

/// The offsets of the GGUF header fields that size things: tensor and metadata counts, and
/// every string and array length prefix, found by walking the header.
fn length_fields(b: &[u8]) -> Vec<usize> {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let mut out = vec![8, 16];
    let n_kv = u64_at(16);
    let mut o = 24;
    fn skip(b: &[u8], o: &mut usize, ty: u32, out: &mut Vec<usize>) {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
        match ty {
            0 | 1 | 7 => *o += 1,
            2 | 3 => *o += 2,
            4..=6 => *o += 4,
            10..=12 => *o += 8,
            8 => {
                out.push(*o);
                *o += 8 + u64_at(*o);
            }
            9 => {
                let inner = u32::from_le_bytes(b[*o..*o + 4].try_into().unwrap());
                out.push(*o + 4);
                let n = u64_at(*o + 4);
                *o += 12;
                for _ in 0..n {
                    skip(b, o, inner, out);
                }
            }
            other => panic!("type {other}"),
        }
    }
    for _ in 0..n_kv {
        out.push(o);
        o += 8 + u64_at(o);
        let ty = u32_at(o);
        o += 4;
        skip(b, &mut o, ty, &mut out);
    }
    out
}

/// `default` cases, or more with `PROPTEST_CASES`. A value below `default` (`0` would make the
/// property pass without a single case) or not a number is ignored, with a message.
fn cases(default: u32) -> ProptestConfig {
    let n = match std::env::var("PROPTEST_CASES") {
        Err(_) => default,
        Ok(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= default => n,
            _ => {
                eprintln!(
                    "PROPTEST_CASES={v:?} ignored: this property runs at least {default} cases \
                     (PROPTEST_CASES can only raise the count)"
                );
                default
            }
        },
    };
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[test]
fn absurd_counts_and_lengths_are_refused_without_allocating() {
    let good = tiny_gguf();
    let dir = tempfile::tempdir().unwrap();
    assert!(load_gguf_bytes(dir.path(), &good).is_ok());
    // 2^60 tensors, 2^60 metadata entries.
    for (at, what) in [(8usize, "tensors"), (16, "metadata")] {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let e = load_gguf_bytes(dir.path(), &b).unwrap_err();
        assert!(e.contains("not a readable GGUF"), "{what}: {e}");
    }
    // A 1 TB string as the first key.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let e = load_gguf_bytes(dir.path(), &b).unwrap_err();
    assert!(e.contains("not a readable GGUF"), "{e}");
    // Every length field of the header set to 2^60 in turn.
    for at in length_fields(&good) {
        let mut b = good.clone();
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(
            load_gguf_bytes(dir.path(), &b).is_err(),
            "length at {at} accepted"
        );
    }
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn damaged_gguf_files_never_panic(
        cut in 0usize..100_000,
        flips in proptest::collection::vec((0usize..100_000, 0u8..8), 0..6),
        absurd in proptest::option::of((0usize..100_000, prop_oneof![
            Just(u64::MAX), Just(1u64 << 60), Just(1u64 << 40), Just(1u64 << 32), Just(0u64)
        ])),
        truncate in any::<bool>(),
    ) {
        let good = tiny_gguf_cached();
        let mut b = good.to_vec();
        for (at, bit) in flips {
            let at = at % b.len();
            b[at] ^= 1 << bit;
        }
        if let Some((at, v)) = absurd {
            let fields = length_fields(good);
            let at = fields[at % fields.len()];
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        if truncate {
            b.truncate(cut % (b.len() + 1));
        }
        let dir = tempfile::tempdir().unwrap();
        let _ = load_gguf_bytes(dir.path(), &b);
    }
}

fn tiny_gguf_cached() -> &'static [u8] {
    static CELL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CELL.get_or_init(tiny_gguf)
}

/// A valid safetensors folder of the tiny model (config.json, tokenizer.json, model.safetensors).
fn tiny_folder() -> &'static (Vec<u8>, String, Vec<u8>) {
    static CELL: std::sync::OnceLock<(Vec<u8>, String, Vec<u8>)> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Tiny::default().gguf_in(dir.path(), 4);
        let m = model::load_gguf(&p, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
        let out = dir.path().join("f");
        model::save_folder(&m, &out).unwrap();
        (
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            std::fs::read(out.join("tokenizer.json")).unwrap(),
        )
    })
}

fn load_folder_files(st: &[u8], config: &str, index: Option<&str>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("config.json"), config).unwrap();
    std::fs::write(d.join("tokenizer.json"), &tiny_folder().2).unwrap();
    std::fs::write(d.join("model.safetensors"), st).unwrap();
    if let Some(i) = index {
        std::fs::write(d.join("model.safetensors.index.json"), i).unwrap();
    }
    for place in [Placement::Resident, Placement::Offload] {
        let r = std::panic::catch_unwind(|| {
            model::load_placed(
                &ModelSource::Folder(d.to_path_buf()),
                &Device::Cpu,
                DType::F32,
                place,
                &mut |_| {},
            )
            .map(|_| ())
        });
        match r {
            Err(_) => panic!("the safetensors loader panicked ({place:?})"),
            Ok(Err(e)) => return Err(format!("{e:#}")),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

#[test]
fn absurd_safetensors_headers_and_configs_are_one_clear_error() {
    let (st, cfg, _) = tiny_folder();
    assert_eq!(load_folder_files(st, cfg, None), Ok(()));
    // A header length of 2^60 bytes.
    let mut b = st.clone();
    b[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let e = load_folder_files(&b, cfg, None).unwrap_err();
    assert!(e.contains("safetensors"), "{e}");
    // Zero heads, 2^60 layers, an odd head size: refused by name, before any allocation.
    let mut v: serde_json::Value = serde_json::from_str(cfg).unwrap();
    for (k, bad) in [
        ("num_attention_heads", serde_json::json!(0)),
        ("num_hidden_layers", serde_json::json!(1u64 << 60)),
        ("hidden_size", serde_json::json!(1u64 << 40)),
        ("vocab_size", serde_json::json!(0)),
        ("num_key_value_heads", serde_json::json!(0)),
    ] {
        let keep = v[k].clone();
        v[k] = bad;
        let e = load_folder_files(st, &v.to_string(), None).unwrap_err();
        assert!(
            e.contains(k) || e.contains("num_attention_heads"),
            "{k}: {e}"
        );
        v[k] = keep;
    }
    // An index naming a shard outside the folder, or none at all.
    let e =
        load_folder_files(st, cfg, Some(r#"{"weight_map":{"a":"../../etc/passwd"}}"#)).unwrap_err();
    assert!(e.contains("not a plain file name"), "{e}");
    let e = load_folder_files(st, cfg, Some("{")).unwrap_err();
    assert!(e.contains("not valid JSON"), "{e}");
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn damaged_safetensors_never_panic(
        flips in proptest::collection::vec((0usize..4096, 0u8..8), 1..6),
        cut in proptest::option::of(0usize..200_000),
    ) {
        let (st, cfg, _) = tiny_folder();
        let mut b = st.clone();
        // Most flips land in the JSON header (its first few KiB), where lengths and offsets are.
        for (at, bit) in flips {
            let at = at % b.len();
            b[at] ^= 1 << bit;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        let _ = load_folder_files(&b, cfg, None);
    }

    #[test]
    fn damaged_configs_never_panic(
        cut in 0usize..4000,
        flips in proptest::collection::vec((0usize..4000, 0u8..7), 0..4),
        key in 0usize..12,
        value in prop_oneof![
            Just(serde_json::json!(0)), Just(serde_json::json!(-1)), Just(serde_json::json!(1u64 << 62)),
            Just(serde_json::json!(3)), Just(serde_json::json!("x")), Just(serde_json::json!(null)),
            Just(serde_json::json!(1e308)), Just(serde_json::json!([1, 2]))
        ],
    ) {
        let (_, cfg, _) = tiny_folder();
        let keys = [
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings",
            "rms_norm_eps", "rope_theta", "rope_scaling", "eos_token_id",
        ];
        let mut v: serde_json::Value = serde_json::from_str(cfg).unwrap();
        v[keys[key]] = value;
        let mut text = v.to_string().into_bytes();
        for (at, bit) in flips {
            let at = at % text.len();
            text[at] ^= 1 << bit;
        }
        if cut % 2 == 1 {
            text.truncate(cut % (text.len() + 1));
        }
        let text = String::from_utf8_lossy(&text).to_string();
        let r = std::panic::catch_unwind(|| model::LlamaConfig::from_hf_json(&text).map(|_| ()));
        prop_assert!(r.is_ok(), "config.json parser panicked on {text}");
    }
}
