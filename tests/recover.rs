//! `dlpx recover` on a tiny random-weight model: PEFT adapter files with PEFT's names and shapes,
//! the report's `recovered` section, a merged model with exactly the pruned zeros, and clear
//! errors before any work.

mod common;

use std::path::Path;
use std::process::Output;

use candle_core::{DType, Device};
use common::Tiny;
use dlpx::model::{self, LinearKind, ModelSource};

use common::{dlpx_in as dlpx, text_file as text};

fn ok(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Per linear, which weights are exactly zero.
fn zero_pattern(dir: &Path) -> Vec<Vec<bool>> {
    let m = model::load(
        &ModelSource::Folder(dir.to_path_buf()),
        &Device::Cpu,
        DType::F32,
        &mut |_| {},
    )
    .unwrap();
    m.llama
        .blocks
        .iter()
        .flat_map(|b| LinearKind::ALL.map(|k| b.linear(k).weight().unwrap()))
        .map(|w| {
            w.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v == 0.0)
                .collect()
        })
        .collect()
}

#[test]
fn recover_writes_peft_adapters_a_report_and_a_merged_model_with_the_same_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tiny = Tiny {
        hidden: 64,
        ffn: 128,
        ..Tiny::default()
    };
    let (src, _) = tiny.gguf_in(d, 12);
    let src = src.to_str().unwrap();
    let text = text(d);
    let data = [
        "--calib",
        &text,
        "--eval",
        &text,
        "--calib-samples",
        "8",
        "--seq-len",
        "16",
        "--eval-windows",
        "6",
    ];
    let (r, pruned) = (d.join("r.json"), d.join("pruned"));
    let mut args = vec!["prune", "--model", src, "--sparsity", "0.5"];
    args.extend(data);
    args.extend([
        "--report",
        r.to_str().unwrap(),
        "--save",
        pruned.to_str().unwrap(),
    ]);
    ok(&dlpx(d, &args));
    let (ad, merged, rr) = (d.join("adapters"), d.join("merged"), d.join("rr.json"));
    let o = dlpx(
        d,
        &[
            "recover",
            "--model",
            src,
            "--config",
            r.to_str().unwrap(),
            "--steps",
            "8",
            "--eval-every",
            "2",
            "--patience",
            "10",
            "--lr",
            "5e-3",
            "--holdout",
            "4",
            "--out",
            ad.to_str().unwrap(),
            "--merge",
            "--save",
            merged.to_str().unwrap(),
            "--report",
            rr.to_str().unwrap(),
            "--quantize",
            "q8_0",
        ],
    );
    ok(&o);
    // One table: dense → pruned → pruned+quantized → pruned+LoRA.
    let table = String::from_utf8_lossy(&o.stdout);
    let rows: Vec<&str> = [
        "dense ",
        "pruned ",
        "pruned + q8_0",
        "pruned + LoRA r8 (merged)",
    ]
    .iter()
    .map(|r| {
        table
            .lines()
            .find(|l| l.starts_with(r))
            .unwrap_or_else(|| panic!("no row {r}: {table}"))
    })
    .collect();
    assert_eq!(rows.len(), 4);

    // PEFT's layout: adapter_config.json and base_model.model.<module>.lora_{A,B}.weight.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    // The base is named as `from_pretrained` takes it (PEFT checks: a valid repo id or an
    // existing path): with --merge and no unmerged --save, the model's own folder.
    let base = cfg["base_model_name_or_path"].as_str().unwrap();
    assert!(
        std::path::Path::new(base).is_absolute() && std::path::Path::new(base).exists(),
        "{base}"
    );
    assert_eq!(cfg["revision"], serde_json::Value::Null);
    let t =
        candle_core::safetensors::load(ad.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(t.len(), 2 * 7 * tiny.blocks);
    let kv = tiny.kv_heads * tiny.head_dim();
    for (name, dims) in [
        ("model.layers.0.self_attn.q_proj.lora_A.weight", [8, 64]),
        ("model.layers.0.self_attn.k_proj.lora_B.weight", [kv, 8]),
        ("model.layers.1.mlp.down_proj.lora_A.weight", [8, 128]),
        ("model.layers.1.mlp.down_proj.lora_B.weight", [64, 8]),
    ] {
        let key = format!("base_model.model.{name}");
        assert_eq!(t[&key].dims(), &dims, "{key}");
    }

    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rr).unwrap()).unwrap();
    let rec = &rep["recovered"];
    assert_eq!(rec["merged"], true);
    assert_eq!(rec["lora"]["rank"], 8);
    // 8 steps with a held-out evaluation every 2 and patience 10: every step runs, and the
    // held-out loss is measured at steps 0 (the pruned model), 2, 4, 6 and 8.
    let tr = &rec["training"];
    assert_eq!(tr["steps_run"], 8, "{tr}");
    assert_eq!(tr["stop"], "steps", "{tr}");
    assert_eq!(tr["train_loss"].as_array().unwrap().len(), 8, "{tr}");
    let heldout: Vec<(u64, f64)> = tr["heldout"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let steps: Vec<u64> = heldout.iter().map(|p| p.0).collect();
    assert_eq!(steps, [0, 2, 4, 6, 8], "{tr}");
    // The kept adapters are those of the lowest held-out loss (first on ties), and training
    // improved on the pruned model.
    let mut best = heldout[0];
    for &p in &heldout[1..] {
        if p.1 < best.1 {
            best = p;
        }
    }
    assert_eq!(tr["best_step"], best.0, "{tr}");
    assert!(best.0 > 0, "no step improved the held-out loss: {tr}");
    assert_eq!(
        rec["heldout_data"]["offset"], 8,
        "held out after the calibration windows"
    );
    // The recovered perplexity is the merged model's, measured again by `dlpx eval`.
    let ppl = rec["ppl"].as_f64().unwrap();
    let o = dlpx(
        d,
        &[
            "eval",
            "--model",
            merged.to_str().unwrap(),
            "--data",
            &text,
            "--seq-len",
            "16",
            "--windows",
            "6",
            "--json",
        ],
    );
    ok(&o);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let again = e["ppl"].as_f64().unwrap();
    assert!(
        (again - ppl).abs() <= 1e-9 * ppl,
        "eval {again} vs report {ppl}"
    );
    assert_eq!(rep["quantized"]["quantization"]["format"], "q8_0");
    assert_eq!(rep["quantized"]["quantization"]["zeros_lost"], 0);
    assert_eq!(
        rep["ppl"]["pruned"],
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&r).unwrap()).unwrap()
            ["ppl"]["pruned"]
    );

    // Merged and re-masked: exactly the pruned zeros.
    assert_eq!(zero_pattern(&merged), zero_pattern(&pruned));
}

#[test]
fn bad_recover_input_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = dlpx(d, &["recover", "--config", "missing.json", "--out", "x"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing.json"), "{err}");
    assert!(!err.contains("panicked"));
    // A valid config, but bad training settings or an occupied --out.
    let (src, _) = Tiny::default().gguf_in(d, 2);
    let text = text(d);
    let r = d.join("r.json");
    ok(&dlpx(
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
            "4",
            "--mode",
            "preview",
            "--report",
            r.to_str().unwrap(),
        ],
    ));
    let occupied = d.join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), "mine").unwrap();
    for (extra, want) in [
        (vec!["--rank", "0"], "--rank"),
        (vec!["--lr=0"], "--lr"),
        (vec!["--holdout", "0"], "--holdout"),
    ] {
        let mut args = vec!["recover", "--config", r.to_str().unwrap(), "--out", "fresh"];
        args.extend(extra);
        let o = dlpx(d, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
    }
    let o = dlpx(
        d,
        &[
            "recover",
            "--config",
            r.to_str().unwrap(),
            "--out",
            occupied.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("occupied"), "{err}");
    assert_eq!(
        std::fs::read_to_string(occupied.join("keep.txt")).unwrap(),
        "mine"
    );
}

/// `--offload`: the block weights stay in their file and are read one block at a time for the
/// forward and the recomputation; training and the recovered model are those of a resident run.
#[test]
fn offloaded_recovery_equals_the_resident_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, _) = Tiny::default().gguf_in(d, 3);
    let src = src.to_str().unwrap();
    let text = text(d);
    let r = d.join("r.json");
    ok(&dlpx(
        d,
        &[
            "prune",
            "--model",
            src,
            "--calib",
            &text,
            "--eval",
            &text,
            "--calib-samples",
            "6",
            "--seq-len",
            "16",
            "--eval-windows",
            "4",
            "--report",
            r.to_str().unwrap(),
        ],
    ));
    let run = |name: &str, extra: &[&str]| -> serde_json::Value {
        let out = d.join(name);
        let mut args = vec![
            "recover",
            "--model",
            src,
            "--config",
            r.to_str().unwrap(),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--lr",
            "5e-3",
            "--holdout",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        let o = dlpx(d, &args);
        ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let resident = run("resident", &[]);
    let offloaded = run("offloaded", &["--offload"]);
    let (a, b) = (&resident["recovered"], &offloaded["recovered"]);
    assert_eq!(a["training"]["train_loss"], b["training"]["train_loss"]);
    assert_eq!(a["training"]["heldout"], b["training"]["heldout"]);
    let (pa, pb) = (a["ppl"].as_f64().unwrap(), b["ppl"].as_f64().unwrap());
    assert!(pa > 0.0 && pa == pb, "resident {pa}, offloaded {pb}");
    // Training moved the adapters: the recovered model is not the pruned one.
    assert_ne!(a["ppl"], resident["ppl"]["pruned"]);
    // Merged (and re-masked) into the blocks an offloaded run holds: as merged resident.
    let merged = |name, extra: &[&str]| run(name, extra)["recovered"]["ppl"].as_f64().unwrap();
    let (ma, mb) = (
        merged("ma", &["--merge"]),
        merged("mb", &["--offload", "--merge"]),
    );
    assert!(
        ma.is_finite() && ma == mb,
        "merged: resident {ma}, offloaded {mb}"
    );
}
