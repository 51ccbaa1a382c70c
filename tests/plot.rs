//! `dlpx plot` on reports and a sweep of a tiny random-weight model: each figure is valid SVG
//! (parsed) with the expected series, labels and points, and the sweep's points sit on a log
//! axis.

mod common;

use std::path::Path;

use common::study::{lowest, rows, Study};
use common::{dlpx_in as dlpx, ok, Tiny};

/// The print palette's first series colours (Okabe–Ito), as the SVG writes them.
const BLUE: &str = "#0072B2";
const ORANGE: &str = "#D55E00";
const GREEN: &str = "#009E73";

fn plot(d: &Path, inputs: &[&Path], kind: &str, name: &str) -> String {
    let out = d.join(name);
    let mut a = vec!["plot", "--kind", kind, "--palette", "print", "--out"];
    a.push(out.to_str().unwrap());
    a.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    ok(&dlpx(d, &a));
    std::fs::read_to_string(out).unwrap()
}

/// Elements `tag` whose `attr` is `value`.
fn count(doc: &roxmltree::Document, tag: &str, attr: &str, value: &str) -> usize {
    with(doc, tag, attr, value).len()
}

fn with<'a>(
    doc: &'a roxmltree::Document,
    tag: &str,
    attr: &str,
    value: &str,
) -> Vec<roxmltree::Node<'a, 'a>> {
    doc.descendants()
        .filter(|n| n.has_tag_name(tag) && n.attribute(attr) == Some(value))
        .collect()
}

fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

fn points(n: &roxmltree::Node) -> usize {
    n.attribute("points").unwrap().split_whitespace().count()
}

#[test]
fn figures_of_reports_and_of_a_sweep() {
    let study = Study::new(
        Tiny {
            blocks: 4,
            ..Tiny::default()
        },
        3,
    );
    let d = study.d();
    let dlp = study.report("dlp.json", &["--alpha", "0.1", "--calib-draws", "3"]);
    let owl = study.report("owl.json", &["--allocation", "owl"]);
    let uni = study.report("uniform.json", &["--allocation", "uniform"]);

    // Allocation: one colour per report, target line (4 blocks) + dots + achieved triangles,
    // and its score line on the importance panel.
    let svg = plot(d, &[&dlp, &owl, &uni], "allocation", "alloc.svg");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for (col, name) in [
        (BLUE, "DLP α=0.1, τ=∞, p=0.7"),
        (ORANGE, "OWL λ=0.08, M=5, p=0.7"),
        (GREEN, "uniform p=0.7"),
    ] {
        let lines = with(&doc, "polyline", "stroke", col);
        // Target, importance, and the legend's sample line.
        assert_eq!(lines.len(), 3, "{name}");
        assert_eq!(points(&lines[0]), 4, "{name}: a point per block");
        assert_eq!(points(&lines[2]), 4, "{name}: a score per block");
        assert_eq!(count(&doc, "circle", "fill", col), 4, "{name}: target dots");
        // Achieved: one triangle per block and one in the legend.
        assert_eq!(count(&doc, "polygon", "fill", col), 5, "{name}: achieved");
        let t = texts(&doc);
        assert!(t.contains(&format!("{name} target")), "{name}: {t:?}");
        assert!(t.contains(&format!("{name} achieved")), "{name}");
    }
    let t = texts(&doc);
    for label in ["block", "sparsity", "score", "Per-block sparsity"] {
        assert!(t.iter().any(|x| x == label), "{label}: {t:?}");
    }
    // Uniform's target is flat: every dot at the same height.
    let ys: Vec<&str> = with(&doc, "circle", "fill", GREEN)
        .iter()
        .map(|n| n.attribute("cy").unwrap())
        .collect();
    assert!(ys.iter().all(|y| *y == ys[0]), "{ys:?}");

    // Draws: 3 draws × 4 blocks as dots (+ legend), a mean line (+ legend), sd bars.
    let svg = plot(d, &[&dlp], "draws", "draws.svg");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(count(&doc, "circle", "fill", ORANGE), 3 * 4 + 1);
    assert_eq!(count(&doc, "polyline", "stroke", BLUE), 2);
    assert!(texts(&doc)
        .iter()
        .any(|t| t.contains("3 calibration draws")));
    let o = dlpx(
        d,
        &[
            "plot",
            "--kind",
            "draws",
            "--out",
            d.join("x.svg").to_str().unwrap(),
            owl.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--calib-draws K"));

    // Zero-shot: scores written into the report by hand (the tiny model has no tasks).
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&owl).unwrap()).unwrap();
    let score = |task: &str, acc: f64| {
        serde_json::json!({"task": task, "split": "validation", "n": 8, "acc": acc,
            "acc_stderr": 0.1, "acc_norm": null, "acc_norm_stderr": null})
    };
    let zs = |a: f64| {
        serde_json::json!({"source": "demo", "limit": 8,
            "tasks": [score("boolq", a), score("rte", 0.5), score("arc_easy", 0.25)],
            "mean_acc": (a + 0.75) / 3.0, "requests": 0, "tokens": 0, "seconds": 0.0})
    };
    r["zeroshot"] = serde_json::json!({"dense": zs(0.75), "pruned": zs(0.625)});
    let zr = d.join("zs.json");
    std::fs::write(&zr, r.to_string()).unwrap();
    let svg = plot(d, &[&zr], "zeroshot", "zs.svg");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    // Three bars each side and a legend swatch.
    assert_eq!(count(&doc, "rect", "fill", BLUE), 4);
    assert_eq!(count(&doc, "rect", "fill", ORANGE), 4);
    let t = texts(&doc);
    for label in [
        "BoolQ",
        "RTE",
        "ARC-e",
        "dense (mean 50.0)",
        "pruned (mean 45.8)",
    ] {
        assert!(t.iter().any(|x| x == label), "{label}: {t:?}");
    }

    // Sweep: α ∈ {0, 0.1, 0.2, 0.3} × {DLP, uniform}.
    let out = d.join("sw");
    let data = study.data();
    let mut a = vec![
        "sweep",
        "--param",
        "alpha=0:0.3:0.1",
        "--allocation",
        "dlp,uniform",
    ];
    a.extend(data.iter().map(String::as_str));
    a.extend(["--out", out.to_str().unwrap()]);
    ok(&dlpx(d, &a));
    let sweep = d.join("sw.jsonl");
    let rows = rows(&sweep);
    let svg = plot(d, &[&sweep], "sweep", "sweep.svg");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    for col in [BLUE, ORANGE] {
        let lines = with(&doc, "polyline", "stroke", col);
        assert_eq!(lines.len(), 2, "the line and its legend sample");
        assert_eq!(points(&lines[0]), 4, "a point per α");
        assert_eq!(count(&doc, "circle", "fill", col), 4);
        // An error bar per point: its stem and two caps.
        assert_eq!(count(&doc, "line", "stroke", col), 3 * 4);
    }
    let t = texts(&doc);
    for label in ["DLP", "uniform", "alpha", "perplexity (log scale)"] {
        assert!(t.iter().any(|x| x == label), "{label}: {t:?}");
    }
    let best = lowest(&rows, "ppl");
    let want = format!(
        "best: {} ({:.2})",
        best["key"].as_str().unwrap(),
        best["ppl"].as_f64().unwrap()
    );
    assert!(t.contains(&want), "{want}: {t:?}");
    // Log axis: a dot's height is affine in ln(perplexity) (pixels are whole numbers).
    let mut dots: Vec<(f64, f64)> = Vec::new();
    for (col, alloc) in [(BLUE, "dlp"), (ORANGE, "uniform")] {
        let cy: Vec<f64> = with(&doc, "circle", "fill", col)
            .iter()
            .map(|n| n.attribute("cy").unwrap().parse().unwrap())
            .collect();
        let ppl: Vec<f64> = rows
            .iter()
            .filter(|r| r["allocation"] == alloc)
            .map(|r| r["ppl"].as_f64().unwrap().ln())
            .collect();
        dots.extend(ppl.into_iter().zip(cy));
    }
    let lo = dots
        .iter()
        .cloned()
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    let hi = dots
        .iter()
        .cloned()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap();
    assert!(
        hi.0 > lo.0 && hi.1 < lo.1,
        "higher perplexity is drawn higher: {dots:?}"
    );
    let slope = (hi.1 - lo.1) / (hi.0 - lo.0);
    for (l, y) in &dots {
        let want = lo.1 + slope * (l - lo.0);
        assert!((y - want).abs() <= 1.5, "{l} at {y}, want {want}: {dots:?}");
    }
}
