//! Snapshots of the explorer's screens (ratatui TestBackend) at 80×24 and 160×48: during
//! calibration, after it, after a parameter change, the compare view and the help overlay.
//! The state is built from fixed statistics so the frames are exact; the files live in
//! tests/snapshots/ (`UPDATE_SNAPSHOTS=1 cargo test --release --test tui_snapshots` rewrites them;
//! any other value is ignored, with a message, and the frames are compared).

use std::sync::Arc;
use std::time::Instant;

use dlpx::app::keys::Action;
use dlpx::app::{Effect, Job, Msg, Stage, State, Step, Summary, View};
use dlpx::prune::pipeline::PruneParams;
use dlpx::prune::stats::{Calibration, ScoreStats};
use dlpx::report::{DataInfo, DataSet, ModelInfo};
use dlpx::ui::render_to_string;
use dlpx::ui::theme::Theme;

const BLOCKS: usize = 30;

/// A median score that rises with depth with some bumps, like the demo model's.
fn score(i: usize) -> f64 {
    0.12 + 0.014 * i as f64 + 0.02 * ((i * 7 % 5) as f64 - 2.0) / 2.0
}

fn stats(i: usize) -> ScoreStats {
    let m = score(i);
    ScoreStats {
        numel: 4_000_000,
        median: m as f32,
        mean: m * 1.4,
        max: (40.0 + i as f64) as f32,
        var: m * 0.5,
    }
}

fn summary() -> Summary {
    let set = |w| DataSet {
        source: "demo".into(),
        sha256: "0".repeat(64),
        windows: w,
        seq_len: 256,
        seed: None,
        offset: 0,
    };
    Summary {
        info: ModelInfo {
            source: "demo".into(),
            sha256: None,
            revision: None,
            architecture: "llama".into(),
            blocks: BLOCKS,
            parameters: 134_515_008,
            dtype: "f32".into(),
        },
        data: DataInfo {
            calib: set(32),
            eval: Some(set(64)),
        },
        numel: vec![[331776.0, 110592.0, 110592.0, 331776.0, 884736.0, 884736.0, 884736.0]; BLOCKS],
        device: "cpu (2 threads)".into(),
        protocol: "64 windows × 256 tokens of demo:eval".into(),
        memory_gib: 1.6,
    }
}

fn calibration() -> Calibration {
    Calibration {
        inputs: vec![],
        blocks: (0..BLOCKS).map(stats).collect(),
        linears: vec![],
        owl: (0..BLOCKS).map(|i| 0.5 + 0.06 * i as f64).collect(),
        owl_m: 5.0,
        esd: (0..BLOCKS)
            .map(|i| [3.0 + (i % 4) as f64 * 0.3; 7])
            .collect(),
        seconds: 15.0,
    }
}

fn calibrating() -> State {
    let mut s = State::new(
        PruneParams {
            mode: dlpx::prune::pipeline::Mode::Preview,
            ..Default::default()
        },
        vec!["The capital of France is".into(), "Water boils at".into()],
    );
    s.on_msg(Msg::Loaded(Box::new(summary())));
    for b in 0..12 {
        s.on_msg(Msg::BlockScored {
            block: b,
            stats: stats(b),
        });
    }
    s.on_msg(Msg::Progress(Step {
        stage: Stage::Calibrate,
        done: 12,
        total: BLOCKS,
        tokens_per_step: 0,
        started: Instant::now(),
    }));
    s
}

fn calibrated() -> State {
    let mut s = calibrating();
    s.on_msg(Msg::Calibrated {
        cal: Arc::new(calibration()),
        cache_hit: false,
    });
    s.on_msg(Msg::DensePpl {
        ppl: 52.8128,
        window_nll: vec![],
    });
    s.on_msg(Msg::Idle);
    // Fixed figures for the frame (the real ones are timings).
    s.last_allocate_us = 21.0;
    s
}

fn changed() -> State {
    let mut s = calibrated();
    s.act(Action::FieldNext); // α
    for _ in 0..5 {
        s.act(Action::Inc);
    }
    s.act(Action::FieldNext); // τ
    s.act(Action::Inc);
    s.block = 20;
    s.act(Action::PinDown);
    s.last_allocate_us = 21.0;
    s
}

fn compared() -> State {
    let mut s = calibrated();
    let jobs = s.act(Action::Apply);
    assert!(matches!(
        jobs.as_slice(),
        [Effect::Job(Job::Apply { id: 1, .. })]
    ));
    let target = s.plan.as_ref().unwrap().block.clone();
    s.on_msg(Msg::Applied {
        id: 1,
        achieved: target.iter().map(|t| t - 0.0007).collect(),
        seconds: 2.5,
    });
    s.on_msg(Msg::PrunedPpl {
        id: 1,
        ppl: 355.03,
        window_nll: vec![],
    });
    for (i, (d, p)) in [
        (" Paris.", " a city, the."),
        (" 100 degrees.", " the the the"),
    ]
    .iter()
    .enumerate()
    {
        s.on_msg(Msg::Token {
            pruned: false,
            prompt: i,
            text: d.to_string(),
        });
        s.on_msg(Msg::Token {
            pruned: true,
            prompt: i,
            text: p.to_string(),
        });
    }
    s.on_msg(Msg::Idle);
    s.act(Action::ToggleCompare);
    assert_eq!(s.view, View::Compare);
    s
}

/// `UPDATE_SNAPSHOTS=1` rewrites the snapshot files instead of comparing; any other value (`0`,
/// `true`, empty) is ignored with a message, so that a stray variable cannot accept a change.
fn update_snapshots() -> bool {
    match std::env::var_os("UPDATE_SNAPSHOTS") {
        None => false,
        Some(v) if v == "1" => true,
        Some(v) => {
            eprintln!(
                "UPDATE_SNAPSHOTS={v:?} ignored (only UPDATE_SNAPSHOTS=1 rewrites the snapshots): \
                 comparing with tests/snapshots/"
            );
            false
        }
    }
}

fn check(name: &str, s: &State) {
    let theme = Theme::mono();
    for (w, h) in [(80u16, 24u16), (160, 48), (240, 70)] {
        let got = render_to_string(s, &theme, w, h);
        // The themes change colours only: the dark and 16-colour screens have the same text.
        for other in ["dark", "16color"] {
            let t = Theme::load(other).unwrap();
            assert_eq!(
                render_to_string(s, &t, w, h),
                got,
                "{name} at {w}×{h}: theme {other} changes the text"
            );
        }
        let path = format!(
            "{}/tests/snapshots/{name}_{w}x{h}.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        if update_snapshots() {
            std::fs::create_dir_all(format!("{}/tests/snapshots", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("missing snapshot {path}; run with UPDATE_SNAPSHOTS=1 and review it")
        });
        assert!(
            got == want,
            "{name} at {w}×{h} differs from {path}:\n{got}\n(run with UPDATE_SNAPSHOTS=1 to accept)"
        );
    }
}

#[test]
fn screen_while_calibrating() {
    let s = calibrating();
    let frame = render_to_string(&s, &Theme::mono(), 80, 24);
    assert!(frame.contains("calibrating block 12/30"), "{frame}");
    assert!(
        frame.contains("allocation appears when calibration"),
        "{frame}"
    );
    check("calibrating", &s);
}

#[test]
fn screen_after_calibration() {
    let s = calibrated();
    let frame = render_to_string(&s, &Theme::mono(), 80, 24);
    assert!(frame.contains("dense ppl            52.81"), "{frame}");
    check("calibrated", &s);
}

#[test]
fn screen_after_a_parameter_change() {
    let before = calibrated();
    let s = changed();
    assert_eq!(s.params.alloc.alpha, 0.2);
    assert_eq!(s.params.alloc.tau, Some(2.0));
    let pins = &s.params.alloc.overrides;
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].0, 20);
    // The allocation changed: the spread is now 2α around p, with block 20 pinned.
    let (a, b) = (
        &before.plan.as_ref().unwrap().block,
        &s.plan.as_ref().unwrap().block,
    );
    assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3));
    assert!((b[20] - pins[0].1).abs() < 1e-12);
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    assert!(
        frame.contains(&format!("pins 20={:.2}", pins[0].1)),
        "{frame}"
    );
    assert!(frame.contains("temperature τ"), "{frame}");
    check("changed", &s);
}

#[test]
fn compare_view() {
    let s = compared();
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    assert!(frame.contains("pruned #1 (preview)"), "{frame}");
    assert!(frame.contains("355.03"), "{frame}");
    check("compare", &s);
}

#[test]
fn help_overlay() {
    let mut s = calibrated();
    s.act(Action::Help);
    let frame = render_to_string(&s, &Theme::mono(), 80, 24);
    // Every binding's help line is on the overlay (it is generated from the table).
    for (_, help, _) in dlpx::app::keys::help_rows() {
        assert!(frame.contains(help), "help lacks `{help}`:\n{frame}");
    }
    check("help", &s);
}

#[test]
fn tiny_terminals_get_a_notice_not_a_panic() {
    let s = compared();
    for (w, h) in [(1, 1), (20, 5), (59, 30), (200, 15), (60, 16)] {
        let frame = render_to_string(&s, &Theme::mono(), w, h);
        if (w < 60 || h < 16) && w >= 20 {
            assert!(frame.replace('\n', "").contains("dlpx"), "{w}×{h}: {frame}");
        }
    }
}

#[test]
fn export_then_open_restores_parameters() {
    let s = changed();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.json");
    s.export(&path).unwrap();
    let r = dlpx::report::Report::load(&path).unwrap();
    assert_eq!(r.params, s.params);
    assert!(r.blocks.iter().all(|b| b.achieved_sparsity.is_none()));
    let mut fresh = calibrated();
    fresh.open(&path).unwrap();
    assert_eq!(fresh.params, s.params);
    assert_eq!(
        fresh.plan.as_ref().unwrap().block,
        s.plan.as_ref().unwrap().block
    );
    // A missing file is one clear message and changes nothing.
    let e = fresh.open(&dir.path().join("nope.json")).unwrap_err();
    assert!(format!("{e:#}").contains("nope.json"));

    // R writes the llm-compressor recipe of the shown allocation: one sparsity per block.
    let mut s = s;
    s.act(Action::ExportRecipe);
    let recipe = dir.path().join("r.yaml");
    s.overlay = Some(dlpx::app::Overlay::Input {
        purpose: dlpx::app::InputPurpose::RecipePath,
        text: recipe.to_str().unwrap().into(),
        fresh: false,
    });
    s.on_key(ratatui::crossterm::event::KeyEvent::new(
        ratatui::crossterm::event::KeyCode::Enter,
        ratatui::crossterm::event::KeyModifiers::NONE,
    ));
    let yaml = std::fs::read_to_string(&recipe).unwrap();
    // Written out by hand from llm-compressor 0.14's recipe format (comments aside): Wanda's
    // modifier, unstructured, every decoder layer, lm_head left alone.
    let shown = &s.plan.as_ref().unwrap().block;
    assert_eq!(shown.len(), BLOCKS);
    let list: Vec<String> = shown.iter().map(|x| x.to_string()).collect();
    let want = format!(
        "sparsity_stage:\n\
         \x20 sparsity_modifiers:\n\
         \x20   WandaPruningModifier:\n\
         \x20     sparsity: [{}]\n\
         \x20     mask_structure: \"0:0\"\n\
         \x20     targets: [\"re:model\\\\.layers\\\\.\\\\d+$\"]\n\
         \x20     ignore: [\"re:.*lm_head\"]\n",
        list.join(", ")
    );
    let body: String = yaml
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(body, want);
    // The listed sparsities read back as the shown allocation, bit for bit.
    let line = yaml
        .lines()
        .find(|l| l.trim().starts_with("sparsity: ["))
        .unwrap();
    let read: Vec<f64> = line.trim()["sparsity: [".len()..]
        .trim_end_matches(']')
        .split(", ")
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(&read, shown, "{line}");
}

#[test]
fn superseded_and_cancelled_applies_leave_the_history() {
    let mut s = calibrated();
    for _ in 0..3 {
        s.act(Action::Apply);
    }
    s.on_msg(Msg::Superseded(2));
    let target = s.plan.as_ref().unwrap().block.clone();
    s.on_msg(Msg::Applied {
        id: 1,
        achieved: target,
        seconds: 1.0,
    });
    s.on_msg(Msg::Cancelled(Stage::Prune));
    let ids: Vec<usize> = s.history.iter().map(|h| h.id).collect();
    assert_eq!(ids, vec![1]);
    // Ids are never reused.
    s.act(Action::Apply);
    assert_eq!(s.history.last().unwrap().id, 4);
}

/// The history shows each other entry's perplexity ratio to the highlighted one, with its
/// paired bootstrap interval (`*` when it excludes 1).
#[test]
fn history_shows_intervals_against_the_highlighted_entry() {
    let mut s = calibrated();
    let target = s.plan.as_ref().unwrap().block.clone();
    let base: Vec<f64> = (0..16).map(|i| 1400.0 + 40.0 * (i as f64).sin()).collect();
    for (id, shift) in [(1usize, 0.0f64), (2, 255.0 * 0.2)] {
        s.act(Action::Apply);
        s.on_msg(Msg::Applied {
            id,
            achieved: target.clone(),
            seconds: 1.0,
        });
        let w: Vec<f64> = base.iter().map(|x| x + shift).collect();
        s.on_msg(Msg::PrunedPpl {
            id,
            ppl: (w.iter().sum::<f64>() / (16.0 * 255.0)).exp(),
            window_nll: w,
        });
        s.on_msg(Msg::Idle);
    }
    s.act(Action::ToggleCompare);
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    // #2 is highlighted (current parameters); #1 is e^-0.2 of it, beyond the noise.
    let line = frame.lines().find(|l| l.contains("#1 ")).unwrap();
    assert!(line.contains("×0.819 [0.819–0.819]*"), "{line}");
}

fn zeroshot(mean_shift: f64) -> dlpx::zeroshot::ZeroShot {
    use dlpx::zeroshot::{TaskScore, ZeroShot};
    let tasks: Vec<TaskScore> = [
        ("boolq", 0.32, None),
        ("hellaswag", 0.42, Some(0.45)),
        ("arc_easy", 0.48, Some(0.36)),
    ]
    .iter()
    .map(|&(task, acc, norm)| TaskScore {
        task: task.into(),
        split: "validation".into(),
        n: 100,
        acc: acc - mean_shift,
        acc_stderr: Some(0.049),
        acc_norm: norm,
        acc_norm_stderr: norm.map(|_| 0.05),
    })
    .collect();
    let mean_acc = tasks.iter().map(|t| t.acc).sum::<f64>() / 3.0;
    ZeroShot {
        source: "demo".into(),
        limit: Some(100),
        tasks,
        mean_acc,
        requests: 1000,
        tokens: 20000,
        seconds: 30.0,
    }
}

#[test]
fn zero_shot_job_and_its_table() {
    let mut s = compared();
    // z asks for the dense model and the last apply.
    let jobs = s.act(Action::ZeroShot);
    assert!(
        matches!(
            jobs.as_slice(),
            [Effect::Job(Job::ZeroShot { id: Some(1) })]
        ),
        "{jobs:?}"
    );
    s.on_msg(Msg::ZeroShot {
        id: None,
        z: Box::new(zeroshot(0.0)),
    });
    s.on_msg(Msg::ZeroShot {
        id: Some(1),
        z: Box::new(zeroshot(0.1)),
    });
    s.on_msg(Msg::Idle);
    // Both measured: pressing z again asks for nothing.
    assert!(s.act(Action::ZeroShot).is_empty());
    let wide = render_to_string(&s, &Theme::mono(), 160, 48);
    assert!(wide.contains("zero-shot acc: dense │ #1"), "{wide}");
    assert!(
        wide.contains("hellaswag     0.420±0.049 0.320±0.049"),
        "{wide}"
    );
    assert!(wide.contains("zs 0.407"), "{wide}");
    let narrow = render_to_string(&s, &Theme::mono(), 80, 24);
    assert!(narrow.contains("hswag  0.420"), "{narrow}");
    check("compare_zeroshot", &s);
    // The exported report carries both.
    let r = s.report().unwrap();
    let z = r.zeroshot.unwrap();
    assert_eq!(z.dense.mean_acc, zeroshot(0.0).mean_acc);
    assert_eq!(z.pruned.unwrap().mean_acc, zeroshot(0.1).mean_acc);
}

#[test]
fn sweep_view_points_arrive_and_the_best_is_used() {
    use dlpx::prune::params::Param;
    let mut s = calibrated();
    s.act(Action::FieldNext); // focus α
    let jobs = s.act(Action::ToggleSweep);
    match jobs.as_slice() {
        [Effect::Job(Job::Sweep {
            param,
            values,
            windows,
            params,
        })] => {
            assert_eq!(*param, Param::Alpha);
            assert_eq!(values.len(), 13);
            assert_eq!(values[4], 0.1);
            assert_eq!(*windows, 16);
            assert_eq!(params.mode, dlpx::prune::pipeline::Mode::Preview);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.view, View::Sweep);
    // Points arrive as they finish; the lowest perplexity (α 0.1) becomes the selection.
    for v in [0.0, 0.025, 0.05, 0.075, 0.1, 0.125] {
        s.on_msg(Msg::SweepPoint {
            value: v,
            ppl: 380.0 + 40_000.0 * (v - 0.1_f64).powi(2),
        });
    }
    let frame = render_to_string(&s, &Theme::mono(), 100, 30);
    assert!(
        frame.contains("sweep alpha · preview on 16 eval windows · 6/13"),
        "{frame}"
    );
    assert!(frame.contains("▸★ 0.100   380.00"), "{frame}");
    check("sweep", &s);
    s.on_msg(Msg::Idle);
    // Enter takes the best point's α and goes back to the charts.
    s.act(Action::SweepJump);
    assert_eq!(s.params.alloc.alpha, 0.1);
    assert_eq!(s.view, View::Main);
    // The sweep still describes these parameters (only α differs): w shows it, no new job.
    assert!(s.act(Action::ToggleSweep).is_empty());
    assert_eq!(s.view, View::Sweep);
    // f re-checks the selected point faithfully: an apply in faithful mode.
    let jobs = s.act(Action::SweepRecheck);
    match jobs.as_slice() {
        [Effect::Job(Job::Apply { params, .. })] => {
            assert_eq!(params.mode, dlpx::prune::pipeline::Mode::Faithful);
            assert_eq!(params.alloc.alpha, 0.1);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn large_terminal_shows_numbers_scales_table_and_an_overlay() {
    let mut s = calibrated();
    // v cycles the overlay: uniform, then OWL (the legend names it).
    s.act(Action::CycleOverlay);
    assert_eq!(
        s.overlay_alloc,
        Some(dlpx::prune::allocate::Allocation::Uniform)
    );
    s.act(Action::CycleOverlay);
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(frame.contains("◆ OWL"), "{frame}");
    assert!(frame.contains('◆'), "{frame}");
    // Block numbers 0…29 under both charts, both value scales, the per-block table.
    let all_blocks: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    let numbers = frame
        .lines()
        .filter(|l| {
            // The chart part of the line (left of the side panel).
            let chart: String = l.chars().take(160).collect();
            let words: Vec<&str> = chart.split(['│', ' ']).filter(|w| !w.is_empty()).collect();
            words == all_blocks
        })
        .count();
    assert_eq!(numbers, 2, "{frame}");
    assert!(
        frame.contains("│0.54") && frame.contains("│1.00"),
        "{frame}"
    );
    assert!(frame.contains("0.70 ─"), "{frame}");
    assert!(frame.contains("blk   score target   ach."), "{frame}");
    assert!(
        frame.contains("history      ppl   zs") && frame.contains("none yet: a applies"),
        "{frame}"
    );
    // The panel shows the measured reallocation time: fixed here, so the frame is exact.
    s.last_allocate_us = 1.0;
    check("overlay", &s);
    // i switches the importance chart, from the same calibration.
    s.act(Action::CycleImportance);
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(
        frame.contains("importance · OWL outlier ratio, %"),
        "{frame}"
    );
    s.act(Action::CycleImportance);
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(frame.contains("importance · AlphaPruning α̂"), "{frame}");
    s.act(Action::CycleImportance);
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(frame.contains("importance · median Wanda score"), "{frame}");
    // Back to none after the last overlay allocation.
    for _ in 1..dlpx::app::params::overlays().count() {
        s.act(Action::CycleOverlay);
    }
    assert_eq!(s.overlay_alloc, None);
}

#[test]
fn compare_rows_mark_where_the_pruned_text_departs_and_scroll() {
    use ratatui::style::Modifier;
    let s = compared();
    let mut term = ratatui::Terminal::new(ratatui::backend::TestBackend::new(100, 30)).unwrap();
    term.draw(|f| dlpx::ui::draw(f, &s, &Theme::mono()))
        .unwrap();
    let buf = term.backend().buffer().clone();
    // Prompt 0: dense " Paris.", pruned " a city, the.": they part at the second character.
    let (x, y) = (0..30u16)
        .flat_map(|y| (0..88u16).map(move |x| (x, y)))
        .find(|&(x, y)| {
            (0..12u16)
                .all(|i| buf[(x + i, y)].symbol() == &" a city, the."[i as usize..i as usize + 1])
        })
        .expect("the pruned text of prompt 0");
    assert!(
        !buf[(x, y)].modifier.contains(Modifier::REVERSED),
        "the shared space"
    );
    assert!(
        buf[(x + 1, y)].modifier.contains(Modifier::REVERSED),
        "the departure"
    );
    assert!(
        buf[(x + 11, y)].modifier.contains(Modifier::REVERSED),
        "the rest"
    );
    assert_eq!(dlpx::app::first_difference(" Paris.", " a city"), Some(1));
    assert_eq!(
        dlpx::app::first_difference(" the cat", " the cat sat"),
        None
    );

    // Four prompts with long continuations at 80×24: selecting the last scrolls to it.
    let mut s = compared();
    for i in 0..2 {
        s.act(Action::AddPrompt);
        s.overlay = None;
        s.prompts.push(Default::default());
        let p = s.prompts.last_mut().unwrap();
        p.prompt = format!("Long prompt {i}");
        p.dense = "word ".repeat(120);
        p.pruned = "word ".repeat(60) + &"other ".repeat(50);
    }
    s.prompts.retain(|p| !p.prompt.is_empty());
    assert_eq!(s.prompts.len(), 4);
    s.act(Action::PromptNext);
    s.act(Action::PromptNext);
    s.act(Action::PromptNext);
    let frame = render_to_string(&s, &Theme::mono(), 80, 24);
    assert!(frame.contains("▸ Long prompt 1"), "{frame}");
}

#[test]
fn alpha_auto_in_the_explorer_sets_alpha_and_shows_its_trace() {
    use dlpx::experiment::{AlphaSearch, AlphaTrial};
    let mut s = calibrated();
    let jobs = s.act(Action::AlphaAuto);
    assert!(
        matches!(jobs.as_slice(), [Effect::Job(Job::AlphaAuto { .. })]),
        "{jobs:?}"
    );
    let trace: Vec<AlphaTrial> = (0..13)
        .map(|i| {
            let alpha = dlpx::experiment::alpha_grid(&PruneParams::default(), 30)[i];
            AlphaTrial {
                alpha,
                ppl: 300.0 + 5000.0 * (alpha - 0.075_f64).powi(2),
            }
        })
        .collect();
    let mut heldout = summary().data.calib;
    heldout.windows = 16;
    heldout.offset = 32;
    s.on_msg(Msg::AlphaSearched(Box::new(AlphaSearch {
        heldout,
        trace,
        chosen: 0.075,
    })));
    s.on_msg(Msg::Idle);
    assert_eq!(s.params.alloc.alpha, 0.075);
    assert_eq!(s.view, View::Sweep);
    let frame = render_to_string(&s, &Theme::mono(), 100, 30);
    assert!(
        frame.contains("preview on 16 held-out calibration windows · 13/13"),
        "{frame}"
    );
    assert!(frame.contains("▸★ 0.075"), "{frame}");
    assert!(frame.contains("   0.150"), "{frame}");
}

#[test]
fn calibration_draws_in_the_explorer_show_their_spread() {
    let mut s = calibrated();
    let jobs = s.act(Action::CalibDraws);
    assert!(
        matches!(
            jobs.as_slice(),
            [Effect::Job(Job::CalibDraws { draws: 4, .. })]
        ),
        "{jobs:?}"
    );
    let base = s.plan.as_ref().unwrap().block.clone();
    for (k, ppl) in [354.97, 364.12, 358.64, 346.35].into_iter().enumerate() {
        let block: Vec<f64> = base.iter().map(|b| b + 0.002 * k as f64).collect();
        s.on_msg(Msg::Draw {
            k,
            block,
            ppl: Some(ppl),
        });
    }
    s.on_msg(Msg::Idle);
    let d = s.draw_spread().unwrap();
    assert_eq!(d.draws, 4);
    assert!((d.ppl_mean - 356.02).abs() < 1e-9);
    assert!((d.ppl_sd - 7.4625).abs() < 1e-3, "{}", d.ppl_sd);
    assert!((d.block_range[0].1 - d.block_range[0].0 - 0.006).abs() < 1e-12);
    let frame = render_to_string(&s, &Theme::mono(), 100, 30);
    assert!(frame.contains("4 draws        356.0 ± 7.5"), "{frame}");
    assert!(frame.contains("4 draws Δ≤0.006"), "{frame}");
    // Another parameter: the draws no longer describe it.
    s.act(Action::Inc);
    assert!(s.draw_spread().is_none());
}

/// The depth-linear allocation: in the panel's allocation cycle (after AlphaPruning), with α as
/// its range, and among the overlays of DLP's chart.
#[test]
fn depth_allocation_in_the_cycle_and_the_overlay() {
    use dlpx::prune::allocate::Allocation;
    use dlpx::prune::params::Param;
    let mut s = calibrated();
    while s.field != Param::Allocation {
        s.act(Action::FieldNext);
    }
    s.act(Action::Inc); // AlphaPruning
    s.act(Action::Inc); // depth
    assert_eq!(s.params.alloc.allocation, Allocation::Depth);
    // Equal blocks: p − α = 0.55 up to p + α = 0.85 in equal steps, whatever the scores.
    let block = &s.plan.as_ref().unwrap().block;
    let step = 0.3 / (BLOCKS - 1) as f64;
    for (i, b) in block.iter().enumerate() {
        assert!((b - (0.55 + step * i as f64)).abs() < 1e-9, "{block:?}");
    }
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    assert!(frame.contains("depth"), "{frame}");
    s.last_allocate_us = 21.0;
    check("depth", &s);
    // Back on DLP, v reaches depth after the other overlays.
    s.act(Action::Dec);
    s.act(Action::Dec);
    assert_eq!(s.params.alloc.allocation, Allocation::Dlp);
    for _ in 0..4 {
        s.act(Action::CycleOverlay); // uniform, OWL, AlphaPruning, depth
    }
    assert_eq!(s.overlay_alloc, Some(Allocation::Depth));
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(frame.contains("◆ depth"), "{frame}");
}

#[test]
fn overlay_cycles_to_the_applied_entry() {
    let mut s = compared();
    s.act(Action::ToggleCompare); // back to the charts
    for _ in dlpx::app::params::overlays() {
        s.act(Action::CycleOverlay); // uniform, OWL, AlphaPruning, depth
    }
    assert!(s.overlay_alloc.is_some() && s.overlay_entry.is_none());
    s.act(Action::CycleOverlay);
    assert_eq!((s.overlay_alloc, s.overlay_entry), (None, Some(1)));
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    assert!(frame.contains("◆ applied #1"), "{frame}");
    s.act(Action::CycleOverlay);
    assert_eq!((s.overlay_alloc, s.overlay_entry), (None, None));
    assert!(s.overlay_plan.is_none());
}

/// Q and F (compare view) quantize and LoRA-recover the applied model; the history shows both.
#[test]
fn quantized_and_recovered_entries_show_in_the_history() {
    let mut s = calibrated();
    // Nothing applied yet: a hint, no job.
    assert!(s.act(Action::Quantize).is_empty());
    let target = s.plan.as_ref().unwrap().block.clone();
    s.act(Action::Apply);
    s.on_msg(Msg::Applied {
        id: 1,
        achieved: target,
        seconds: 1.0,
    });
    s.on_msg(Msg::PrunedPpl {
        id: 1,
        ppl: 354.97,
        window_nll: vec![],
    });
    s.on_msg(Msg::Idle);
    s.act(Action::ToggleCompare);
    let fx = s.act(Action::Quantize);
    assert!(
        matches!(fx.as_slice(), [Effect::Job(Job::Quantize { id: 1 })]),
        "{fx:?}"
    );
    for (format, ppl) in [
        (dlpx::model::quant::QuantFormat::Q8_0, 356.60),
        (dlpx::model::quant::QuantFormat::Q4K, 381.13),
    ] {
        s.on_msg(Msg::Quantized { id: 1, format, ppl });
    }
    s.on_msg(Msg::Idle);
    let fx = s.act(Action::Recover);
    assert!(
        matches!(
            fx.as_slice(),
            [Effect::Job(Job::Recover { id: 1, steps: 20 })]
        ),
        "{fx:?}"
    );
    s.on_msg(Msg::Recovered {
        id: 1,
        ppl: 193.46,
        steps_run: 20,
        best_step: 20,
    });
    s.on_msg(Msg::Idle);
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    let line = frame.lines().find(|l| l.contains("354.97")).unwrap();
    assert!(
        line.contains("q8_0 356.6 q4_k 381.1 LoRA(20) 193.5"),
        "{line}"
    );
}

/// The linears of the demo model pruned at p 0.7 under `--sparse auto` (fixed figures).
fn footprint(mode: dlpx::sparse::SparseMode) -> dlpx::app::Footprint {
    let on = mode != dlpx::sparse::SparseMode::Off;
    dlpx::app::Footprint {
        mode,
        sparse_linears: if on { 210 } else { 0 },
        linears: 210,
        bytes: if on { 163_470_080 } else { 425_066_496 },
        dense_bytes: 425_066_496,
    }
}

/// The compare view after an apply whose dense rows came from the cache: each finished row
/// shows its real token count and the decode speed the worker measured (for a cached dense row,
/// when it was generated), and the history pane the pruned linears' bytes against the dense.
fn compared_with_speeds() -> State {
    let mut s = calibrated();
    s.act(Action::Apply);
    let target = s.plan.as_ref().unwrap().block.clone();
    s.on_msg(Msg::Applied {
        id: 1,
        achieved: target.iter().map(|t| t - 0.0007).collect(),
        seconds: 2.5,
    });
    s.on_msg(Msg::Footprint {
        id: 1,
        footprint: footprint(dlpx::sparse::SparseMode::Auto),
    });
    s.on_msg(Msg::PrunedPpl {
        id: 1,
        ppl: 355.03,
        window_nll: vec![],
    });
    let rows = [
        (" Paris, the capital and largest city of France.", 40, 61.37),
        (" 100 degrees Celsius at sea level.", 12, 58.9),
    ];
    for (i, (dense, tokens, rate)) in rows.into_iter().enumerate() {
        // The dense continuation from the cache: one piece, then its stored figures.
        s.on_msg(Msg::GenStart {
            pruned: false,
            prompt: i,
        });
        s.on_msg(Msg::Token {
            pruned: false,
            prompt: i,
            text: dense.into(),
        });
        s.on_msg(Msg::GenDone {
            pruned: false,
            prompt: i,
            tokens,
            tokens_per_s: rate,
        });
        s.on_msg(Msg::GenStart {
            pruned: true,
            prompt: i,
        });
        for w in [" a", " city", ",", " the", " the"] {
            s.on_msg(Msg::Token {
                pruned: true,
                prompt: i,
                text: w.into(),
            });
        }
        s.on_msg(Msg::GenDone {
            pruned: true,
            prompt: i,
            tokens,
            tokens_per_s: rate * 1.73,
        });
    }
    s.on_msg(Msg::Idle);
    s.act(Action::ToggleCompare);
    s
}

#[test]
fn compare_rows_show_real_counts_and_speeds_and_the_linears_footprint() {
    let s = compared_with_speeds();
    // The cached dense row: its real count and rate, not "dense 1 tok".
    let p = &s.prompts[0];
    assert_eq!((p.dense_tokens, p.dense_tok_s), (40, Some(61.37)));
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    let row = frame
        .lines()
        .find(|l| l.contains("The capital of France is"))
        .unwrap();
    assert!(
        row.contains("dense 40 tok · 61 tok/s  │  pruned 40 tok · 106 tok/s"),
        "{row}"
    );
    let row = frame
        .lines()
        .find(|l| l.contains("Water boils at"))
        .unwrap();
    assert!(
        row.contains("dense 12 tok · 59 tok/s  │  pruned 12 tok · 102 tok/s"),
        "{row}"
    );
    assert!(
        frame.contains("linears #1 163 MB (0.38×) · dense 425 MB · sparse auto (210 of 210, X)"),
        "{frame}"
    );
    check("compare_speeds", &s);

    // A generation that starts again forgets the finished figures until it finishes.
    let mut s = s;
    s.on_msg(Msg::GenStart {
        pruned: true,
        prompt: 0,
    });
    assert_eq!(
        (s.prompts[0].pruned_tokens, s.prompts[0].pruned_tok_s),
        (0, None)
    );

    // The charts' side panel: how the applied model's linears run, and their bytes.
    s.act(Action::ToggleCompare);
    let frame = render_to_string(&s, &Theme::mono(), 160, 48);
    for want in [
        "sparse exec. (X)       auto, 210/210",
        "linears #1              163 MB 0.38×",
        "linears dense                 425 MB",
    ] {
        assert!(frame.contains(want), "`{want}`:\n{frame}");
    }
    let narrow = render_to_string(&s, &Theme::mono(), 80, 24);
    assert!(narrow.contains("sparse exec. (X)      auto"), "{narrow}");
}

/// X switches the applied model between sparse (auto) and dense execution: a job for the
/// worker, the state showing the requested mode until the worker's footprint confirms it.
#[test]
fn sparse_toggle_sends_jobs_once_a_model_is_applied() {
    use dlpx::sparse::SparseMode;
    let mut s = calibrated();
    assert!(s.act(Action::ToggleSparse).is_empty(), "nothing applied");
    assert!(s.status.0.contains("apply first (a)"), "{:?}", s.status);
    let mut s = compared_with_speeds();
    assert_eq!(s.sparse, Some(SparseMode::Auto));
    for want in [SparseMode::Off, SparseMode::Auto] {
        let fx = s.act(Action::ToggleSparse);
        assert!(
            matches!(fx.as_slice(), [Effect::Job(Job::Sparse { mode })] if *mode == want),
            "{fx:?}"
        );
        assert_eq!(s.sparse, Some(want));
        s.on_msg(Msg::Footprint {
            id: 1,
            footprint: footprint(want),
        });
        s.on_msg(Msg::Idle);
        assert_eq!(s.history[0].footprint, Some(footprint(want)));
    }
    // Started with --sparse on, X turns it off.
    s.on_msg(Msg::Footprint {
        id: 1,
        footprint: footprint(SparseMode::On),
    });
    let fx = s.act(Action::ToggleSparse);
    assert!(
        matches!(
            fx.as_slice(),
            [Effect::Job(Job::Sparse {
                mode: SparseMode::Off
            })]
        ),
        "{fx:?}"
    );
    let frame = render_to_string(&s, &Theme::mono(), 200, 60);
    assert!(
        frame.contains("X sparse"),
        "the footer names the key:\n{frame}"
    );
}

/// Shift+P, the chart key.
fn press_p(s: &mut State) -> Vec<Effect> {
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    s.on_key(KeyEvent::new(KeyCode::Char('P'), KeyModifiers::SHIFT))
}

/// The written chart, parsed: per stroke colour the polylines, and the texts.
fn chart(path: &std::path::Path) -> (std::collections::HashMap<String, usize>, Vec<String>) {
    let svg = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let mut lines = std::collections::HashMap::new();
    for n in doc.descendants().filter(|n| n.has_tag_name("polyline")) {
        *lines
            .entry(n.attribute("stroke").unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    let texts = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    (lines, texts)
}

/// P writes the current view's chart as SVG beside the export (the folder and name of the path
/// the export dialog proposes) with dlpx plot's drawing: the allocation with its overlay (two
/// series), the sweep view's points; what cannot be drawn or written is a status message.
#[test]
fn p_writes_the_current_chart_beside_the_export() {
    use dlpx::app::Tone;
    let dir = tempfile::tempdir().unwrap();
    let mut s = calibrating();
    s.export_path = dir.path().join("study.json").to_str().unwrap().into();
    assert!(press_p(&mut s).is_empty());
    assert_eq!(s.status.1, Tone::Error, "{:?}", s.status);
    assert!(s.status.0.contains("before calibration"), "{:?}", s.status);

    let mut s = calibrated();
    s.export_path = dir.path().join("study.json").to_str().unwrap().into();
    s.act(Action::CycleOverlay); // uniform over DLP
    press_p(&mut s);
    let path = dir.path().join("study-allocation.svg");
    let want = format!("wrote the chart to {}", path.display());
    assert_eq!(s.status, (want, Tone::Good));
    // The dark palette's first two series: DLP, then the overlay. Each has its target line, its
    // legend sample and its score line.
    let (lines, texts) = chart(&path);
    assert_eq!(lines.get("#5FAFFF"), Some(&3), "{lines:?}");
    assert_eq!(lines.get("#FFD75F"), Some(&3), "{lines:?}");
    let series: Vec<&String> = texts.iter().filter(|t| t.ends_with(" target")).collect();
    assert_eq!(series.len(), 2, "{texts:?}");
    assert!(series[0].starts_with("DLP α=") && series[1].starts_with("uniform p="));

    // The sweep view: one line (and its legend sample), a dot per finished point, the best named.
    s.act(Action::FieldNext); // α
    s.act(Action::ToggleSweep);
    for v in [0.0, 0.05, 0.1, 0.15] {
        s.on_msg(Msg::SweepPoint {
            value: v,
            ppl: 380.0 + 40_000.0 * (v - 0.1_f64).powi(2),
        });
    }
    press_p(&mut s);
    let path = dir.path().join("study-sweep.svg");
    assert_eq!(s.status.1, Tone::Good, "{:?}", s.status);
    let (lines, texts) = chart(&path);
    assert_eq!(lines.get("#5FAFFF"), Some(&2), "{lines:?}");
    assert!(!lines.contains_key("#FFD75F"), "one series: {lines:?}");
    assert!(
        texts.contains(&"best: alpha=0.1 (380.00)".to_string()),
        "{texts:?}"
    );
    assert!(texts.contains(&"DLP".to_string()), "{texts:?}");

    // A folder that does not exist: the reason on the status line, nothing written.
    s.export_path = dir.path().join("nope/study.json").to_str().unwrap().into();
    press_p(&mut s);
    assert_eq!(s.status.1, Tone::Error, "{:?}", s.status);
    assert!(
        s.status.0.starts_with("chart not written:") && s.status.0.contains("nope"),
        "{:?}",
        s.status
    );
}
