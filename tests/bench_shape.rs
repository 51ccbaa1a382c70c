//! `dlpx bench --prune --shape`: the paper protocol timed stage by stage on a random-weight model
//! built in memory. A small config.json keeps it fast; the presets' shapes are unit-tested in
//! `model::synthetic`.

use std::process::Command;

fn small_config(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("config.json");
    std::fs::write(
        &p,
        r#"{"model_type":"llama","hidden_size":256,"intermediate_size":688,"num_hidden_layers":12,
           "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":32000,"rms_norm_eps":1e-5}"#,
    )
    .unwrap();
    p
}

fn bench(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .arg("bench")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn run_json(cfg: &str, metric: &str) -> serde_json::Value {
    let (ok, out, err) = bench(&[
        "--prune",
        "--shape",
        cfg,
        "--blocks",
        "3",
        "--calib-samples",
        "2",
        "--seq-len",
        "64",
        "--metric",
        metric,
        "--json",
    ]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn every_stage_is_timed_and_the_projection_scales_to_the_real_block_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let v = run_json(cfg.to_str().unwrap(), "wanda");
    let both = &v["per_block"]["both"];
    let stages = [
        "load",
        "forward",
        "input_stats",
        "hessians",
        "block_statistic",
        "spectra",
        "masks",
        "solve",
        "to_host",
        "apply",
    ];
    // The per-block total is the sum of its stages, added here from the printed stages.
    let sum: f64 = stages.iter().map(|s| both[s].as_f64().unwrap()).sum();
    let total = v["per_block"]["total_s"].as_f64().unwrap();
    assert!((sum - total).abs() <= 1e-9 * total, "{sum} vs {total}");
    for s in [
        "forward",
        "input_stats",
        "block_statistic",
        "masks",
        "apply",
    ] {
        assert!(both[s].as_f64().unwrap() > 0.0, "{s} was not timed: {both}");
    }
    for s in ["hessians", "solve"] {
        assert_eq!(both[s].as_f64().unwrap(), 0.0, "Wanda has no {s}");
    }
    // The dense pass computes the block statistic; the faithful pass the masks.
    assert_eq!(v["per_block"]["dense_pass"]["masks"], 0.0);
    assert_eq!(v["per_block"]["faithful_pass"]["block_statistic"], 0.0);
    // The projections by hand, from the config this test wrote (12 blocks) and the stages:
    // the whole model is 12 blocks; the paper's 128 windows instead of the run's 2 multiply
    // the token-proportional stages (forward, input statistics, Hessians) by 64.
    assert_eq!(v["real_blocks"], 12);
    let whole = v["projected"]["whole_model_s"].as_f64().unwrap();
    assert!(
        (whole - 12.0 * sum).abs() <= 1e-9 * whole,
        "{whole} vs 12 × {sum}"
    );
    let tokens: f64 = ["forward", "input_stats", "hessians"]
        .iter()
        .map(|s| both[s].as_f64().unwrap())
        .sum();
    let paper = v["projected"]["whole_model_paper_windows_s"]
        .as_f64()
        .unwrap();
    let by_hand = 12.0 * (sum + 63.0 * tokens);
    assert!(
        (paper - by_hand).abs() <= 1e-9 * by_hand,
        "{paper} vs {by_hand} (12 × (stages + 63 × token stages))"
    );
    // Masks as planned: per-row floors leave at most one weight per row off (256/688 columns).
    let err = v["achieved_vs_planned_max_abs"].as_f64().unwrap();
    assert!(err < 1.0 / 256.0, "achieved sparsity {err} off the plan");
    for k in [
        "speedup_block_statistic",
        "speedup_masks",
        "speedup_per_weight",
    ] {
        let s = v["per_weight_block0"][k].as_f64().unwrap();
        assert!(s.is_finite() && s > 0.0, "{k} = {s}");
    }
}

#[test]
fn sparsegpt_reports_its_hessians_and_solve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let v = run_json(cfg.to_str().unwrap(), "sparsegpt");
    let f = &v["per_block"]["faithful_pass"];
    assert!(f["hessians"].as_f64().unwrap() > 0.0 && f["solve"].as_f64().unwrap() > 0.0);
    assert_eq!(f["masks"], 0.0, "SparseGPT's masks come from its solve");
}

#[test]
fn shape_errors_are_one_readable_line() {
    let (ok, _, err) = bench(&["--prune", "--shape", "llama9-1t"]);
    assert!(!ok && err.contains("unknown shape `llama9-1t`") && err.contains("llama2-7b"));
    assert!(!err.contains("panicked"), "{err}");
    let (ok, _, err) = bench(&["--shape", "llama2-7b"]);
    assert!(!ok && err.contains("--prune"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(["--offload", "bench", "--prune", "--shape"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("drop --offload"),
        "{err}"
    );
}

/// `--recover --shape`: one LoRA step timed, its peak memory, and the projection to the real
/// block count (step time) and the recovery estimate of the whole model (memory).
#[test]
fn recover_step_is_timed_and_projected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let (ok, out, err) = bench(&[
        "--recover",
        "--shape",
        cfg.to_str().unwrap(),
        "--blocks",
        "2",
        "--calib-samples",
        "2",
        "--seq-len",
        "32",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["real_blocks"], 12);
    assert_eq!(v["step"]["tokens"], 2 * 31);
    let step = &v["step"];
    let s = step["forward_backward_s"].as_f64().unwrap() + step["optimizer_s"].as_f64().unwrap();
    assert!(s > 0.0 && step["loss"].as_f64().unwrap().is_finite(), "{v}");
    // Random weights over a 1024-token vocabulary: the loss starts near ln(1024).
    let loss = step["loss"].as_f64().unwrap();
    assert!((loss - 1024f64.ln()).abs() < 1.0, "loss {loss}");
    let proj = v["projected"]["step_s"].as_f64().unwrap();
    assert!((proj - s * 6.0).abs() < 1e-9 * proj, "{proj} vs {s} × 12/2");
    let (res, off) = (
        v["projected"]["memory"]["total"].as_u64().unwrap(),
        v["projected"]["memory_offload"]["total"].as_u64().unwrap(),
    );
    assert!(off < res, "{off} vs {res}");
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 0.0);
    // --recover needs --shape, and is not --prune.
    let (ok, _, err) = bench(&["--recover"]);
    assert!(!ok && err.contains("--shape"), "{err}");
}
