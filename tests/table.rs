//! `dlpx table` on reports of a tiny random-weight model: each format's row equals one built
//! by hand from the report's own numbers.

mod common;

use common::study::Study;
use common::{ok_stdout as ok, Tiny};

#[test]
fn one_row_per_report_in_each_format() {
    let study = Study::new(Tiny::default(), 5);
    let d = study.d();
    let load = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let r1 = study.report("dlp.json", &["--alpha", "0.1", "--calib-draws", "2"]);
    let r2 = study.report("owl.json", &["--allocation", "owl", "--sparsity", "0.6"]);
    let (a, mut b) = (load(&r1), load(&r2));
    // Zero-shot scores written into the second report by hand (the tiny model has no tasks):
    // the table reads them from the report as `dlpx prune --tasks` writes them.
    let score = |task: &str, acc: f64| {
        serde_json::json!({"task": task, "split": "validation", "n": 8, "acc": acc,
            "acc_stderr": null, "acc_norm": null, "acc_norm_stderr": null})
    };
    let tasks = serde_json::json!({"source": "demo", "limit": 8,
        "tasks": [score("boolq", 0.625), score("rte", 0.5)], "mean_acc": 0.5625,
        "requests": 0, "tokens": 0, "seconds": 0.0});
    b["zeroshot"] = serde_json::json!({"dense": tasks, "pruned": tasks});
    std::fs::write(&r2, serde_json::to_string_pretty(&b).unwrap()).unwrap();

    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    let (dense_a, draws) = (f(&a["ppl"]["dense"]), &a["calib_draws"]);
    let (mean_a, sd_a) = (f(&draws["ppl_mean"]), f(&draws["ppl_sd"]));
    let (dense_b, pruned_b) = (f(&b["ppl"]["dense"]), f(&b["ppl"]["pruned"]));
    let name = "tiny.gguf";
    assert!(study.m().ends_with(name), "{}", study.m());

    let md = ok(&study.dlpx(&["table", r1.to_str().unwrap(), r2.to_str().unwrap()]));
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(lines.len(), 4, "{md}");
    assert!(lines[0].starts_with("| Model | Allocation | Parameters | Metric | p |"));
    assert_eq!(
        lines[2],
        format!(
            "| {name} | DLP | α=0.1, τ=∞ | Wanda (preview) | 0.7 | {dense_a:.2} | {mean_a:.2} ± {sd_a:.2} \
             | — | — | — | — | — | — | — | — |"
        )
    );
    assert_eq!(
        lines[3],
        format!(
            "| {name} | OWL | λ=0.08, M=5 | Wanda (preview) | 0.6 | {dense_b:.2} | {pruned_b:.2} \
             | 62.50 | 50.00 | — | — | — | — | — | 56.25 (2 tasks) |"
        )
    );

    let tex = ok(&study.dlpx(&["table", r1.to_str().unwrap(), "--format", "latex"]));
    assert_eq!(
        tex.lines().nth(4).unwrap(),
        format!(
            "{name} & DLP & $\\alpha$=0.1, $\\tau$=$\\infty$ & Wanda (preview) & 0.7 & {dense_a:.2} & \
             {mean_a:.2} $\\pm$ {sd_a:.2} & -- & -- & -- & -- & -- & -- & -- & -- \\\\"
        )
    );

    let csv = ok(&study.dlpx(&[
        "table",
        r2.to_str().unwrap(),
        r1.to_str().unwrap(),
        "--format",
        "csv",
    ]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[1],
        format!("{name},owl,\"λ=0.08, M=5\",wanda,preview,0.6,,{dense_b},{pruned_b},,,0.625,0.5,,,,,,0.5625,2")
    );
    assert_eq!(
        lines[2],
        format!(
            "{name},dlp,\"α=0.1, τ=∞\",wanda,preview,0.7,,{dense_a},{mean_a},{sd_a},2,,,,,,,,,"
        )
    );

    // Not a report: one readable error.
    std::fs::write(d.join("x.json"), "{}").unwrap();
    let o = study.dlpx(&["table", d.join("x.json").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no schema_version"));
}
