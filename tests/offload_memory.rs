//! `--offload` keeps memory bounded: a random-weight model with Llama-2-7B's layer shape
//! (hidden 4096, FFN 11008, 32 heads) but three blocks calibrates with its block weights left in
//! the memory-mapped safetensors file, and the process's own peak RSS (`VmHWM`) stays under
//! weights file + the preflight estimate (embeddings, one block, activations, workspace) + a
//! stated slack. The same model loaded resident is then measured above that bound, so the bound
//! tells the two apart.
//!
//! In its own test binary so that no other test's allocations share the process.

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Device};
use dlpx::model::{self, ModelSource, Placement};
use dlpx::prune::mask::Metric;
use dlpx::prune::memory::Estimate;
use dlpx::prune::stats::calibrate;

mod common;

const HIDDEN: usize = 4096;
const FFN: usize = 11008;
const HEADS: usize = 32;
const BLOCKS: usize = 3;
/// Room for the allocator's slack, the tokenizer, rope tables and the test harness.
const SLACK: u64 = 256 << 20;

/// `VmRSS` / `VmHWM` of this process in bytes.
fn status_bytes(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with(key)).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Write `model.safetensors` (bf16, as HF checkpoints ship) tensor by tensor, generating the
/// random values in slices so the writer never holds a whole matrix.
fn write_safetensors(path: &Path, vocab: usize) -> u64 {
    let mut tensors: Vec<(String, Vec<usize>, f32)> = vec![(
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        0.02,
    )];
    for i in 0..BLOCKS {
        let p = format!("model.layers.{i}");
        for (n, shape) in [
            ("self_attn.q_proj", [HIDDEN, HIDDEN]),
            ("self_attn.k_proj", [HIDDEN, HIDDEN]),
            ("self_attn.v_proj", [HIDDEN, HIDDEN]),
            ("self_attn.o_proj", [HIDDEN, HIDDEN]),
            ("mlp.gate_proj", [FFN, HIDDEN]),
            ("mlp.up_proj", [FFN, HIDDEN]),
            ("mlp.down_proj", [HIDDEN, FFN]),
        ] {
            let scale = 1.0 / (shape[1] as f32).sqrt();
            tensors.push((format!("{p}.{n}.weight"), shape.to_vec(), scale));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((format!("{p}.{n}.weight"), vec![HIDDEN], 0.0));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![HIDDEN], 0.0));

    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape, _) in &tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, shape, scale) in &tensors {
        let mut left = shape.iter().product::<usize>();
        while left > 0 {
            let n = left.min(1 << 19);
            buf.clear();
            for _ in 0..n {
                let v = if *scale == 0.0 {
                    1.0f32 // norm weights
                } else {
                    // xorshift64*, uniform in (−√3·scale, √3·scale): unit variance × scale.
                    x ^= x >> 12;
                    x ^= x << 25;
                    x ^= x >> 27;
                    let u =
                        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * 1.732 * scale
                };
                buf.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
            }
            f.write_all(&buf).unwrap();
            left -= n;
        }
    }
    f.flush().unwrap();
    (8 + h.len() + offset) as u64
}

#[test]
fn offloaded_7b_shaped_blocks_calibrate_under_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    // The tokenizer of the tiny test models (258 tokens) sets the vocabulary.
    let tiny = common::Tiny::default();
    let (gguf, _) = tiny.gguf_in(dir.path(), 1);
    let tok = model::load_gguf(&gguf, &Device::Cpu, DType::F32, &mut |_| {})
        .unwrap()
        .tokenizer;
    let vocab = tok.get_vocab_size(true);
    let folder = dir.path().join("shaped");
    std::fs::create_dir(&folder).unwrap();
    tok.save(folder.join("tokenizer.json"), false).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": BLOCKS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "vocab_size": vocab,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true
    });
    std::fs::write(folder.join("config.json"), cfg.to_string()).unwrap();
    let file_bytes = write_safetensors(&folder.join("model.safetensors"), vocab);

    let (n, t) = (4usize, 256usize);
    let windows: Vec<Vec<u32>> = (0..n)
        .map(|w| (0..t).map(|i| ((w * 31 + i * 7) % vocab) as u32).collect())
        .collect();
    let before = status_bytes("VmRSS:");
    let m = model::load_placed(
        &ModelSource::Folder(folder.clone()),
        &Device::Cpu,
        DType::F32,
        Placement::Offload,
        &mut |_| {},
    )
    .unwrap();
    let est = Estimate::new(&m.llama.config, 4, n, t, Metric::Wanda, true);
    let t0 = std::time::Instant::now();
    let cal = calibrate(&m.llama, &windows, 5.0, false, &mut |p| {
        eprintln!("block {} at {:.1}s", p.block, t0.elapsed().as_secs_f64());
        true
    })
    .unwrap();
    let peak = status_bytes("VmHWM:");
    drop(m);

    // The statistics are real: every block has positive scores and a finite α̂ per linear.
    assert_eq!(cal.blocks.len(), BLOCKS);
    for (b, a) in cal.blocks.iter().zip(&cal.esd) {
        assert!(b.median > 0.0 && b.numel == 202_375_168, "{b:?}");
        assert!(a.iter().all(|x| x.is_finite() && *x > 1.0), "{a:?}");
    }
    let one_block = 202_375_168u64 * 4;
    assert!(est.weights >= one_block && est.weights < one_block + (16 << 20));
    let bound = before + file_bytes + est.total + SLACK;
    let mib = |b: u64| b >> 20;
    eprintln!(
        "peak RSS {} MiB = start {} + {} MiB; bound {} MiB (file {} + estimate {} + slack {})",
        mib(peak),
        mib(before),
        mib(peak - before),
        mib(bound),
        mib(file_bytes),
        mib(est.total),
        mib(SLACK)
    );
    assert!(
        peak <= bound,
        "peak RSS {} MiB above the bound {} MiB",
        mib(peak),
        mib(bound)
    );

    // Resident: all three blocks in memory (and the mapped file while loading) go past it.
    let m = model::load_placed(
        &ModelSource::Folder(folder),
        &Device::Cpu,
        DType::F32,
        Placement::Resident,
        &mut |_| {},
    )
    .unwrap();
    let again = calibrate(&m.llama, &windows, 5.0, false, &mut |_| true).unwrap();
    assert_eq!(again.blocks, cal.blocks, "offload changes no statistic");
    let resident = status_bytes("VmHWM:");
    eprintln!("resident peak RSS {} MiB", mib(resident));
    assert!(
        resident > bound,
        "the bound does not tell resident from offloaded"
    );
}
