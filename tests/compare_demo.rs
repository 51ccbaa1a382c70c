//! `dlpx compare` on the demo: per-window NLL in the reports (schema 2) and the paired
//! bootstrap interval of the perplexity ratio — exactly 1 for a configuration against itself,
//! excluding 1 for magnitude against Wanda at p 0.7.

fn dlpx(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn bootstrap_interval_of_the_perplexity_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    for (metric, windows, out) in [
        ("wanda", "16", "wanda.json"),
        ("magnitude", "16", "magnitude.json"),
        ("wanda", "8", "wanda8.json"),
    ] {
        let (ok, _, err) = dlpx(&[
            "prune",
            "--mode",
            "preview",
            "--calib-samples",
            "8",
            "--eval-windows",
            windows,
            "--metric",
            metric,
            "--report",
            &p(out),
        ]);
        assert!(ok, "{err}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p("wanda.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], dlpx::report::SCHEMA_VERSION);
    let w = r["ppl"]["pruned_window_nll"].as_array().unwrap();
    assert_eq!(w.len(), 16);
    // The windows add up to the perplexity (up to summation order).
    let sum: f64 = w.iter().map(|x| x.as_f64().unwrap()).sum();
    let ppl = (sum / (16.0 * 255.0)).exp();
    assert!((ppl / r["ppl"]["pruned"].as_f64().unwrap() - 1.0).abs() < 1e-9);

    let json = |a: &str, b: &str, extra: &[&str]| -> serde_json::Value {
        let (ok, out, err) = dlpx(&[&["compare", &p(a), &p(b), "--json"], extra].concat());
        assert!(ok, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let same = json("wanda.json", "wanda.json", &[]);
    assert_eq!(
        (
            same["ratio"].as_f64(),
            same["lo"].as_f64(),
            same["hi"].as_f64()
        ),
        (Some(1.0), Some(1.0), Some(1.0))
    );
    let worse = json("wanda.json", "magnitude.json", &[]);
    assert!(worse["lo"].as_f64().unwrap() > 1.0, "{worse}");
    // Dense against pruned of the same report: pruning costs perplexity, beyond the noise.
    let cost = json("wanda.json", "wanda.json", &["--side-a", "dense"]);
    assert!(cost["lo"].as_f64().unwrap() > 1.0, "{cost}");
    let (_, text, _) = dlpx(&["compare", &p("wanda.json"), &p("magnitude.json")]);
    assert!(text.contains("B is worse than A"), "{text}");

    // Different windows: one clear error.
    let (ok, _, err) = dlpx(&["compare", &p("wanda.json"), &p("wanda8.json")]);
    assert!(!ok && err.contains("different windows"), "{err}");
    // A schema-1 report (no per-window NLL) still loads but cannot be compared.
    let mut old = r.clone();
    old["schema_version"] = 1.into();
    old["ppl"]
        .as_object_mut()
        .unwrap()
        .remove("pruned_window_nll");
    old["ppl"]
        .as_object_mut()
        .unwrap()
        .remove("dense_window_nll");
    std::fs::write(p("old.json"), old.to_string()).unwrap();
    let (ok, _, err) = dlpx(&["compare", &p("old.json"), &p("wanda.json")]);
    assert!(!ok && err.contains("no per-window NLL"), "{err}");
}
