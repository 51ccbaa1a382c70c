//! Zero-shot accuracy on the real demo model and the demo tasks (the first 100 examples of
//! HellaSwag and ARC-Easy, where the 135M model is clearly above chance; on BoolQ, RTE and
//! WinoGrande it is not, so pruning can move those either way).
//!
//! One `dlpx prune --tasks` run (Wanda, DLP, p 0.7, faithful: the defaults) measures dense and
//! pruned accuracy; one `dlpx zeroshot` run on one thread measures the dense model again. The
//! dense numbers must be identical (runs and thread counts), and pruning must lower both
//! tasks' accuracy by a margin well above the examples' noise on orderings.

use std::process::Command;

fn dlpx(args: &[&str], threads: Option<&str>) -> serde_json::Value {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dlpx"));
    c.args(args);
    if let Some(t) = threads {
        c.env("RAYON_NUM_THREADS", t);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "dlpx {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn acc(z: &serde_json::Value, task: &str, metric: &str) -> f64 {
    z["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == task)
        .unwrap_or_else(|| panic!("no {task} in {z}"))[metric]
        .as_f64()
        .unwrap()
}

#[test]
fn pruning_lowers_accuracy_and_dense_scores_are_deterministic() {
    let tasks = "hellaswag,arc_easy";
    let report = dlpx(
        &[
            "prune",
            "--tasks",
            tasks,
            "--task-limit",
            "100",
            "--eval",
            "none",
            "--no-cache",
            "--json",
            "-q",
        ],
        None,
    );
    assert_eq!(report["schema_version"], dlpx::report::SCHEMA_VERSION);
    let dense = &report["zeroshot"]["dense"];
    let pruned = &report["zeroshot"]["pruned"];
    for t in ["hellaswag", "arc_easy"] {
        let z = dense["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["task"] == t)
            .unwrap();
        assert_eq!(z["n"], 100);
        assert_eq!(z["split"], "validation");
    }
    // The dense model is clearly above chance (0.25) on both.
    assert!(acc(dense, "hellaswag", "acc") > 0.35, "{dense}");
    assert!(acc(dense, "arc_easy", "acc") > 0.38, "{dense}");
    // Measured: hellaswag acc 0.42 → 0.31, acc_norm 0.45 → 0.39; arc_easy acc 0.48 → 0.28.
    assert!(
        acc(pruned, "hellaswag", "acc") < acc(dense, "hellaswag", "acc") - 0.05,
        "{dense} {pruned}"
    );
    assert!(
        acc(pruned, "arc_easy", "acc") < acc(dense, "arc_easy", "acc") - 0.08,
        "{dense} {pruned}"
    );
    assert!(
        pruned["mean_acc"].as_f64().unwrap() < dense["mean_acc"].as_f64().unwrap() - 0.05,
        "{dense} {pruned}"
    );

    // Another process, one thread, no cache: the same dense numbers to the bit.
    let again = dlpx(
        &[
            "zeroshot",
            "--tasks",
            tasks,
            "--limit",
            "100",
            "--no-cache",
            "--json",
            "-q",
        ],
        Some("1"),
    );
    for t in ["hellaswag", "arc_easy"] {
        for m in ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"] {
            assert_eq!(
                acc(&again, t, m).to_bits(),
                acc(dense, t, m).to_bits(),
                "{t} {m}"
            );
        }
    }
    assert_eq!(again["tokens"], dense["tokens"]);
}
