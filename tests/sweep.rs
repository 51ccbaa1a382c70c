//! `dlpx sweep` on a tiny random-weight model: rows = the grid's product, resuming skips the
//! finished points, shards merged equal the whole sweep, and a point equals `dlpx prune` with
//! the same parameters.

mod common;

use std::path::Path;
use std::process::Output;

use common::study::{lowest, rows, Study, DATA};
use common::{dlpx_in as dlpx, ok, Tiny};

#[test]
fn grid_rows_resume_shards_and_merge() {
    let study = Study::new(Tiny::default(), 5);
    let d = study.d();
    let out = d.join("sw");
    let base = study.grid();
    let run = |extra: &[&str]| -> Output {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend(extra);
        dlpx(d, &a)
    };
    let o = run(&["--out", out.to_str().unwrap()]);
    let err = ok(&o);
    assert!(err.contains("12 grid points: 0 done, 12 to run"), "{err}");
    let all = rows(&d.join("sw.jsonl"));
    assert_eq!(all.len(), 3 * 2 * 2, "rows = the grid's product");
    let keys: std::collections::HashSet<&str> =
        all.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 12);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("best"), "{table}");
    let csv = std::fs::read_to_string(d.join("sw.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13);
    assert!(csv.starts_with("index,allocation,alpha,sparsity,target_sparsity"));
    // Uniform ignores α: its three α points per sparsity are the same pruning.
    let ppl = |key: &str| {
        all.iter().find(|r| r["key"] == key).unwrap()["ppl"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        ppl("allocation=uniform alpha=0 sparsity=0.5"),
        ppl("allocation=uniform alpha=0.2 sparsity=0.5")
    );

    // Resume: nothing left to run; a lost point (the file cut after 7 rows, mid-line) is rerun.
    let err = ok(&run(&["--out", out.to_str().unwrap()]));
    assert!(err.contains("12 done, 0 to run"), "{err}");
    let text_file = std::fs::read_to_string(d.join("sw.jsonl")).unwrap();
    let cut: Vec<&str> = text_file.lines().take(8).collect();
    let partial = format!("{}\n{{\"index\": 7, \"key\": \"allocation=", cut.join("\n"));
    std::fs::write(d.join("sw.jsonl"), partial).unwrap();
    let err = ok(&run(&["--out", out.to_str().unwrap()]));
    assert!(err.contains("7 done, 5 to run"), "{err}");
    let resumed = rows(&d.join("sw.jsonl"));
    assert_eq!(resumed.len(), 12);
    let by_key = |v: &[serde_json::Value]| -> Vec<(String, f64)> {
        let mut x: Vec<(String, f64)> = v
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["ppl"].as_f64().unwrap(),
                )
            })
            .collect();
        x.sort_by(|a, b| a.0.cmp(&b.0));
        x
    };
    assert_eq!(
        by_key(&resumed),
        by_key(&all),
        "resumed points measure the same"
    );

    // Another grid on the same file is refused, nothing overwritten.
    let mut other: Vec<&str> = base.iter().map(String::as_str).collect();
    let last = other.len() - 1;
    other[last] = "dlp";
    other.extend(["--out", out.to_str().unwrap()]);
    let o = dlpx(d, &other);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another model, data, grid"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(rows(&d.join("sw.jsonl")).len(), 12);

    // Shards 0/2 and 1/2, merged, hold the same rows as the whole sweep.
    let sh = d.join("sh");
    for s in ["0/2", "1/2"] {
        ok(&run(&["--out", sh.to_str().unwrap(), "--shard", s]));
    }
    assert_eq!(rows(&d.join("sh.0of2.jsonl")).len(), 6);
    let merged = d.join("merged");
    let o = dlpx(
        d,
        &[
            "sweep",
            "--merge",
            d.join("sh.0of2.jsonl").to_str().unwrap(),
            d.join("sh.1of2.jsonl").to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
    );
    ok(&o);
    let m = rows(&d.join("merged.jsonl"));
    assert_eq!(by_key(&m), by_key(&all));
    let idx: Vec<u64> = m.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, (0..12).collect::<Vec<_>>(), "merged in grid order");
}

#[test]
fn a_sweep_point_equals_prune_with_its_parameters() {
    let study = Study::new(Tiny::default(), 6);
    let d = study.d();
    // `--model M --calib T --eval T` and the small data.
    let data = study.data();
    let data: Vec<&str> = data.iter().map(String::as_str).collect();
    let mut a = vec!["sweep", "--param", "alpha=0.1", "--json"];
    a.extend(&data);
    let one = d.join("one");
    a.extend(["--out", one.to_str().unwrap()]);
    let o = dlpx(d, &a);
    ok(&o);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut p = vec!["prune", "--alpha", "0.1", "--mode", "preview", "--json"];
    p.extend(&data);
    let o = dlpx(d, &p);
    ok(&o);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows[0]["ppl"], report["ppl"]["pruned"]);
    assert_eq!(
        rows[0]["achieved_sparsity"],
        report["overall"]["achieved_sparsity"]
    );
}

#[test]
fn bad_grids_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = d.join("x");
    for (args, want) in [
        (vec!["--param", "beta=1"], "unknown sweep parameter `beta`"),
        (vec!["--param", "alpha=0.3:0:0.1"], "needs start ≤ stop"),
        (vec!["--param", "sparsity=0.5,1.3"], "sparsity"),
        (vec!["--allocation", "dlp,best"], "`best` is not one of"),
        (vec!["--shard", "2/2"], "--shard `2/2`"),
    ] {
        let mut a = vec!["sweep", "--model", "/nonexistent.gguf"];
        a.extend(args);
        a.extend(["--out", x.to_str().unwrap()]);
        let o = dlpx(d, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{a:?}: {err}");
        assert!(!d.join("x.jsonl").exists());
    }
}

#[test]
fn calibration_draws_use_disjoint_windows_and_report_the_spread() {
    let study = Study::new(Tiny::default(), 8);
    let (d, m, text) = (study.d(), study.m(), study.text.clone());
    let run = |draws: &str, samples: &str| {
        dlpx(
            d,
            &[
                "prune",
                "--model",
                m,
                "--calib",
                &text,
                "--eval",
                &text,
                "--calib-samples",
                samples,
                "--seq-len",
                "16",
                "--eval-windows",
                "6",
                "--mode",
                "preview",
                "--calib-draws",
                draws,
                "--json",
            ],
        )
    };
    let o = run("3", "4");
    ok(&o);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &r["calib_draws"];
    assert_eq!(c["draws"], 3);
    let ppl: Vec<f64> = c["ppl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(
        ppl[0],
        r["ppl"]["pruned"].as_f64().unwrap(),
        "draw 0 is the run's own"
    );
    assert!(
        ppl[1] != ppl[0] || ppl[2] != ppl[0],
        "other windows, other statistics: {ppl:?}"
    );
    let mean = ppl.iter().sum::<f64>() / 3.0;
    let sd = (ppl.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!((c["ppl_mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert!((c["ppl_sd"].as_f64().unwrap() - sd).abs() < 1e-9);
    assert_eq!(c["block_sparsity"].as_array().unwrap().len(), 3);
    assert_eq!(c["block_sd"].as_array().unwrap().len(), 2);
    // Draw 0's report is the plain run's.
    let plain: serde_json::Value = serde_json::from_slice(&run("1", "4").stdout).unwrap();
    assert_eq!(plain["ppl"]["pruned"], r["ppl"]["pruned"]);
    assert!(plain.get("calib_draws").is_none());
    // The text holds ~1,200 windows of 16 byte tokens: not 3 draws of 600.
    let o = run("3", "600");
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("calibration draw 2 needs windows 600…1199"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn alpha_auto_searches_held_out_calibration_windows_never_the_evaluation_data() {
    let study = Study::new(Tiny::default(), 9);
    let d = study.d();
    // Two unrelated evaluation texts: the search must not change with them.
    let eval_a = d.join("eval_a.txt");
    let eval_b = d.join("eval_b.txt");
    std::fs::write(
        &eval_a,
        "the quick brown fox jumps over the lazy dog. ".repeat(60),
    )
    .unwrap();
    std::fs::write(
        &eval_b,
        "0123456789 abcdefghij KLMNOPQRST !?;:,. ".repeat(60),
    )
    .unwrap();
    let run = |eval: &Path| -> serde_json::Value {
        let mut a = vec![
            "prune",
            "--model",
            study.m(),
            "--calib",
            &study.text,
            "--eval",
            eval.to_str().unwrap(),
            "--alpha",
            "auto",
            "--alpha-holdout",
            "5",
            "--mode",
            "preview",
            "--json",
        ];
        a.extend(DATA);
        let o = study.dlpx(&a);
        ok(&o);
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let a = run(&eval_a);
    let b = run(&eval_b);
    let s = &a["alpha_search"];
    assert_eq!(
        s, &b["alpha_search"],
        "the evaluation text changed the search"
    );
    assert_ne!(
        a["ppl"]["pruned"], b["ppl"]["pruned"],
        "the evaluations did differ"
    );
    // Held out: the 5 windows right after the 4 calibration windows of the calibration text.
    assert_eq!(s["heldout"]["windows"], 5);
    assert_eq!(s["heldout"]["offset"], 4);
    assert_eq!(s["heldout"]["source"], a["data"]["calib"]["source"]);
    let trace = s["trace"].as_array().unwrap();
    assert_eq!(trace.len(), 13, "α = 0, 0.025, …, 0.3");
    let best = lowest(trace, "ppl");
    assert_eq!(s["chosen"], best["alpha"]);
    assert_eq!(
        a["params"]["alloc"]["alpha"], s["chosen"],
        "the run used the chosen α"
    );
    // Only DLP has an α to search.
    let o = study.dlpx(&[
        "prune",
        "--model",
        study.m(),
        "--allocation",
        "owl",
        "--alpha",
        "auto",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--alpha auto searches DLP's range α"));
}
