//! The pruning engine on the real demo model and protocol: allocation invariants, the paper's
//! ordering at p = 0.7 (Wanda, faithful), report replay, saved-model round trip, bad input.

use std::process::Command;

use candle_core::{DType, Device};
use dlpx::data::{windows, DemoSplit, TextSource};
use dlpx::eval::perplexity::perplexity;
use dlpx::model::{self, ModelSource};
use dlpx::prune::allocate::Allocation;
use dlpx::prune::cache::{self, StatsKey};
use dlpx::prune::mask::{Metric, Pattern};
use dlpx::prune::pipeline::{achieved, plan, prune_faithful, prune_preview, Mode, PruneParams};
use dlpx::prune::stats::calibrate;

fn protocol_windows(m: &model::LoadedModel, split: DemoSplit, n: usize) -> Vec<Vec<u32>> {
    let text = TextSource::Demo(split).load(&mut |_| {}).unwrap();
    windows(&m.encode(&text).unwrap(), 256, n, "demo").unwrap()
}

/// One calibration, five faithful prunings: with Wanda DLP(median) < OWL(M=5, λ=0.08) < uniform;
/// SparseGPT-uniform < Wanda-uniform and SparseGPT-DLP < SparseGPT-uniform.
#[test]
fn paper_ordering_and_invariants_at_70_percent() {
    let m = model::load(&ModelSource::Demo, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let calib = protocol_windows(&m, DemoSplit::Calib, 32);
    let eval = protocol_windows(&m, DemoSplit::Eval, 64);
    let cal = calibrate(&m.llama, &calib, 5.0, true, &mut |_| true).unwrap();
    let mut ppl = Vec::new();
    for alloc in [Allocation::Uniform, Allocation::Owl, Allocation::Dlp] {
        let mut p = PruneParams::default();
        p.alloc.allocation = alloc;
        let pl = plan(&m.llama, &cal, &p).unwrap();
        let n = pl.block.len() as f64;
        let mean = pl.block.iter().sum::<f64>() / n;
        assert!((mean - 0.7).abs() < 1e-6, "{alloc:?}: mean target {mean}");
        let (lo, hi) = pl
            .block
            .iter()
            .fold((9f64, -9f64), |(a, b), &v| (a.min(v), b.max(v)));
        let spread = match alloc {
            Allocation::Uniform => 0.0,
            Allocation::Owl => 0.16,
            Allocation::Dlp => 0.30,
            other => unreachable!("{other:?} is not in this loop"),
        };
        assert!(
            (hi - lo - spread).abs() < 1e-6,
            "{alloc:?}: spread {}",
            hi - lo
        );
        if alloc == Allocation::Dlp {
            // Blocks ordered by score: a higher median Wanda score never gets less sparsity.
            let mut idx: Vec<usize> = (0..pl.block.len()).collect();
            idx.sort_by(|&a, &b| pl.scores[a].total_cmp(&pl.scores[b]));
            assert!(idx
                .windows(2)
                .all(|w| pl.block[w[0]] <= pl.block[w[1]] + 1e-12));
        }
        let mut pruned = m.llama.clone();
        prune_faithful(&mut pruned, &calib, &pl, &p, &mut |_| true).unwrap();
        let got = achieved(&pruned).unwrap();
        let overall = got.iter().sum::<f64>() / n;
        assert!(
            (overall - 0.7).abs() < 0.002,
            "{alloc:?}: achieved {overall}"
        );
        let r = perplexity(&pruned, &eval, &mut |_, _| true).unwrap();
        eprintln!("{alloc:?}: ppl {:.3}, achieved {overall:.5}", r.ppl);
        ppl.push(r.ppl);
    }
    let (uniform, owl, dlp) = (ppl[0], ppl[1], ppl[2]);
    assert!(
        dlp < owl && owl < uniform,
        "expected DLP < OWL < uniform, got {dlp} / {owl} / {uniform}"
    );

    // depth's plan (not pruned here): p − α to p + α in equal steps over the equal blocks.
    let mut p = PruneParams::default();
    p.alloc.allocation = Allocation::Depth;
    let pl = plan(&m.llama, &cal, &p).unwrap();
    let n = pl.block.len();
    for (i, s) in pl.block.iter().enumerate() {
        let want = 0.7 - 0.15 + 0.3 * i as f64 / (n - 1) as f64;
        assert!((s - want).abs() < 1e-9, "depth: {:?}", pl.block);
    }

    // SparseGPT (faithful): uniform beats Wanda-uniform, and DLP beats SparseGPT-uniform.
    let mut sgpt = Vec::new();
    for alloc in [Allocation::Uniform, Allocation::Dlp] {
        let mut p = PruneParams {
            metric: Metric::SparseGpt,
            ..Default::default()
        };
        p.alloc.allocation = alloc;
        let pl = plan(&m.llama, &cal, &p).unwrap();
        let mut pruned = m.llama.clone();
        prune_faithful(&mut pruned, &calib, &pl, &p, &mut |_| true).unwrap();
        let got = achieved(&pruned).unwrap();
        let overall = got.iter().sum::<f64>() / got.len() as f64;
        assert!(
            (overall - 0.7).abs() < 0.002,
            "SparseGPT {alloc:?}: {overall}"
        );
        let r = perplexity(&pruned, &eval, &mut |_, _| true).unwrap();
        eprintln!(
            "SparseGPT {alloc:?}: ppl {:.3}, achieved {overall:.5}",
            r.ppl
        );
        sgpt.push(r.ppl);
    }
    assert!(
        sgpt[0] < uniform,
        "SparseGPT-uniform {} ≥ Wanda-uniform {uniform}",
        sgpt[0]
    );
    assert!(
        sgpt[1] < sgpt[0],
        "SparseGPT-DLP {} ≥ SparseGPT-uniform {}",
        sgpt[1],
        sgpt[0]
    );
}

fn dlpx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dlpx"))
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap()
}

/// Preview run with a report, replay via --config, --save then eval of the folder.
#[test]
fn report_replay_and_saved_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rep = d.join("r.json");
    let ratios = d.join("ratios.json");
    let saved = d.join("pruned");
    let common = [
        "prune",
        "--mode",
        "preview",
        "--calib-samples",
        "8",
        "--eval-windows",
        "8",
    ];
    let mut a = common.to_vec();
    let (r, ra, s) = (
        rep.to_str().unwrap(),
        ratios.to_str().unwrap(),
        saved.to_str().unwrap(),
    );
    a.extend([
        "--alpha",
        "0.1",
        "--tau",
        "0.5",
        "--report",
        r,
        "--ratios-out",
        ra,
        "--save",
        s,
    ]);
    let o = dlpx(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(report["schema_version"], dlpx::report::SCHEMA_VERSION);
    assert_eq!(report["params"]["alloc"]["tau"], 0.5);
    let keep: Vec<f64> = serde_json::from_str(&std::fs::read_to_string(&ratios).unwrap()).unwrap();
    assert_eq!(keep.len(), 30);
    assert!((keep.iter().sum::<f64>() / 30.0 - 0.3).abs() < 1e-6);

    // Replay: identical per-block sparsities.
    let rep2 = d.join("r2.json");
    let o = dlpx(&[
        "prune",
        "--config",
        r,
        "--eval",
        "none",
        "--report",
        rep2.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rep2).unwrap()).unwrap();
    // The second run over the same model and data reads the statistics cache.
    assert_eq!(report2["timings"]["stats_cache_hit"], true);
    let (blocks, blocks2) = (
        report["blocks"].as_array().unwrap(),
        report2["blocks"].as_array().unwrap(),
    );
    assert_eq!(blocks.len(), 30, "one entry per block of the demo model");
    assert_eq!(blocks2.len(), blocks.len(), "the replay has every block");
    // The replayed targets are the ratio file's, block by block (keep = 1 − sparsity).
    for (b, k) in blocks.iter().zip(&keep) {
        let t = b["target_sparsity"].as_f64().unwrap();
        assert!((t - (1.0 - k)).abs() < 1e-12, "{t} vs keep {k}");
    }
    for (a, b) in blocks.iter().zip(blocks2) {
        assert_eq!(a["target_sparsity"], b["target_sparsity"]);
        assert_eq!(a["achieved_sparsity"], b["achieved_sparsity"]);
    }

    // The saved folder evaluates to the report's pruned perplexity.
    let o = dlpx(&["eval", "--model", s, "--windows", "8", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (got, want) = (
        e["ppl"].as_f64().unwrap(),
        report["ppl"]["pruned"].as_f64().unwrap(),
    );
    assert!(
        (got / want - 1.0).abs() < 1e-4,
        "saved {got} vs report {want}"
    );
}

#[test]
fn bad_prune_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rep = d.join("r.json");
    let r = rep.to_str().unwrap();
    let check = |args: &[&str], needle: &str| {
        let mut a = vec!["prune", "--report", r];
        a.extend_from_slice(args);
        let o = dlpx(&a);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!rep.exists(), "{args:?} wrote a report");
    };
    check(&["--sparsity", "1.3"], "sparsity must be in [0, 1)");
    check(&["--sparsity", "-0.1"], "sparsity must be in [0, 1)");
    check(&["--alpha", "-0.1"], "--alpha must be ≥ 0");
    check(&["--tau", "0"], "--tau must be nonzero");
    check(&["--pattern", "5:4"], "N ≤ M");
    check(&["--alpha-eps", "1.5"], "--alpha-eps must be in [0, 1)");
    check(
        &["--metric", "sparsegpt", "--mode", "preview"],
        "--metric sparsegpt needs --mode faithful",
    );
    let cfg = d.join("cfg.json");
    let c = cfg.to_str().unwrap();
    std::fs::write(&cfg, r#"{"schema_version": 99}"#).unwrap();
    check(&["--config", c], "schema_version 99");
    // A config naming an unknown field.
    let schema_ok = include_str!("../src/report.schema.json");
    assert!(schema_ok.contains("schema_version"));
    std::fs::write(
        &cfg,
        r#"{"schema_version": 1, "tool": {"name": "dlpx", "version": "0", "colour": 1}}"#,
    )
    .unwrap();
    check(&["--config", c], "unknown field `colour`");
}

#[test]
fn committed_schema_matches_the_types() {
    assert_eq!(
        include_str!("../src/report.schema.json"),
        dlpx::report::json_schema().unwrap(),
        "run `dlpx schema > src/report.schema.json`"
    );
}

/// N:M masks verified row by row on the real model (DLP picks N per block), AlphaPruning's
/// allocation invariants, and the statistics cache round trip.
#[test]
fn n_of_m_rows_alphapruning_and_stats_cache() {
    let m = model::load(&ModelSource::Demo, &Device::Cpu, DType::F32, &mut |_| {}).unwrap();
    let calib = protocol_windows(&m, DemoSplit::Calib, 8);
    let cal = calibrate(&m.llama, &calib, 5.0, true, &mut |_| true).unwrap();

    for (n, mm) in [(2usize, 4usize), (4, 8)] {
        let p = PruneParams {
            pattern: Pattern::NOfM { n, m: mm },
            mode: Mode::Preview,
            ..Default::default()
        };
        let pl = plan(&m.llama, &cal, &p).unwrap();
        let ns = pl.n_of_m.clone().unwrap();
        // DLP spreads N around n: some blocks prune fewer, some more, the mean stays near n.
        let mean_n = ns.iter().sum::<usize>() as f64 / ns.len() as f64;
        assert!((mean_n - n as f64).abs() < 0.5, "{n}:{mm}: mean N {mean_n}");
        assert!(
            ns.iter().any(|&x| x != ns[0]),
            "{n}:{mm}: N does not vary: {ns:?}"
        );
        let mut pruned = m.llama.clone();
        prune_preview(&mut pruned, &cal, &pl, &p).unwrap();
        // The mask is `weight != 0`: exactly N zeros per group of M, plus any weight that was
        // already zero in the dense model (rare in the dequantized demo) and was kept.
        for (b, (blk, dense)) in pruned.blocks.iter().zip(&m.llama.blocks).enumerate() {
            for (l, d) in blk.linears.iter().zip(&dense.linears) {
                let w = l.weight().unwrap().to_vec2::<f32>().unwrap();
                let wd = d.weight().unwrap().to_vec2::<f32>().unwrap();
                for (r, (row, drow)) in w.iter().zip(&wd).enumerate() {
                    for (g, (grp, dgrp)) in row.chunks(mm).zip(drow.chunks(mm)).enumerate() {
                        let zeros = grp.iter().filter(|&&x| x == 0.0).count();
                        let dense_zeros = dgrp.iter().filter(|&&x| x == 0.0).count();
                        assert!(
                            zeros >= ns[b] && zeros <= ns[b] + dense_zeros,
                            "{n}:{mm} block {b} {} row {r} group {g}: {zeros} zeros, N = {}",
                            l.name,
                            ns[b]
                        );
                    }
                }
            }
        }
    }

    // AlphaPruning: parameter-weighted mean p, a lighter tail (higher α̂) never gets less
    // sparsity, and the spread is the ε factor range (1 + ε)/(1 − ε) when nothing clamps.
    let mut p = PruneParams::default();
    p.alloc.allocation = Allocation::Alpha;
    let pl = plan(&m.llama, &cal, &p).unwrap();
    let n = pl.block.len() as f64;
    assert!((pl.block.iter().sum::<f64>() / n - 0.7).abs() < 1e-6);
    let esd: Vec<f64> = cal
        .esd
        .iter()
        .map(|a| a.iter().sum::<f64>() / 7.0)
        .collect();
    assert!(esd.iter().all(|a| a.is_finite() && *a > 1.0), "{esd:?}");
    let mut idx: Vec<usize> = (0..esd.len()).collect();
    idx.sort_by(|&a, &b| esd[a].total_cmp(&esd[b]));
    assert!(idx
        .windows(2)
        .all(|w| pl.block[w[0]] <= pl.block[w[1]] + 1e-12));
    let (lo, hi) = pl
        .block
        .iter()
        .fold((9f64, -9f64), |(a, b), &v| (a.min(v), b.max(v)));
    assert!((hi / lo - 1.2 / 0.8).abs() < 1e-9, "ratio {}", hi / lo);

    // The cache returns exactly what was stored, and the same allocation follows.
    let key = StatsKey::new(&m.identity().unwrap(), "test-only-key", 8, 256, DType::F32);
    cache::store(&key, &cal).unwrap();
    let back = cache::load(&key).expect("cached statistics");
    assert!(
        serde_json::to_string(&back).unwrap() == serde_json::to_string(&cal).unwrap(),
        "cached statistics differ from the stored ones"
    );
    assert_eq!(plan(&m.llama, &back, &p).unwrap().block, pl.block);

    // A calibration made without the spectra refuses AlphaPruning by name; through the cache,
    // asking for them adds exactly the same α̂ from the weights.
    let mut bare = cal.clone();
    bare.esd.clear();
    let e = plan(&m.llama, &bare, &p).unwrap_err().to_string();
    assert!(e.contains("allocation alpha"), "{e}");
    cache::store(&key, &bare).unwrap();
    let (filled, hit) = cache::calibrate_cached(
        &m,
        &calib,
        Some(&key),
        5.0,
        true,
        &mut |_| true,
        &mut |_| {},
    )
    .unwrap();
    assert!(hit);
    assert_eq!(filled.esd, cal.esd);
    std::fs::remove_file(key.path().unwrap()).unwrap();
}
