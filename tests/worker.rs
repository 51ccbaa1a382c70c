//! The explorer's worker thread as a message adapter: a panic in loading or in a job reaches
//! the screen as an error, the worker goes on (r retries the load), and the user can quit.
//! The sessions here stand in for the model work; the thread, queue, panic handling and the
//! explorer state are the real ones.

use std::time::Duration;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use dlpx::app::params::explorer_defaults;
use dlpx::app::{Effect, Job, Msg, State, Tone};
use dlpx::worker::{spawn, Link, Session};

/// Panics while loading the first time; loads on the retry; panics in any Generate job.
struct Flaky {
    loads: usize,
}

impl Session for Flaky {
    fn start(&mut self, link: &Link) {
        self.loads += 1;
        if self.loads == 1 {
            panic!("tensor table is corrupt");
        }
        link.send(Msg::Status(format!("loaded on try {}", self.loads)));
    }

    fn run(&mut self, job: Job, link: &Link) {
        match job {
            Job::Calibrate => self.start(link),
            Job::Generate { .. } => {
                let v: Vec<u32> = vec![];
                let _ = v[3]; // an index out of bounds deep in a job
            }
            _ => link.send(Msg::Status("done".into())),
        }
    }
}

/// Messages until the worker says it is idle.
fn until_idle(rx: &mut UnboundedReceiver<Msg>, state: &mut State) -> Vec<String> {
    let mut seen = vec![];
    loop {
        let m = rx.blocking_recv().expect("the worker hung up");
        let idle = matches!(m, Msg::Idle);
        seen.push(format!("{m:?}"));
        state.on_msg(m);
        if idle {
            return seen;
        }
    }
}

fn key(s: &mut State, c: char) -> Vec<Effect> {
    s.on_key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
}

#[test]
fn panics_in_loading_and_in_jobs_reach_the_screen_and_the_explorer_quits() {
    let (tx, mut rx) = unbounded_channel();
    let handle = spawn(Flaky { loads: 0 }, tx).unwrap();
    let mut state = State::new(explorer_defaults(), vec!["x".into()]);

    // A panic while loading: an error on the status line, then idle (not "loading" forever).
    until_idle(&mut rx, &mut state);
    assert_eq!(state.status.1, Tone::Error, "{:?}", state.status);
    assert!(
        state.status.0.contains("tensor table is corrupt")
            && state.status.0.contains("r tries again"),
        "{:?}",
        state.status
    );
    assert!(!state.busy && state.job.is_none());
    let frame = dlpx::ui::render_to_string(&state, &dlpx::ui::theme::Theme::mono(), 80, 24);
    assert!(frame.contains("tensor table is corrupt"), "{frame}");

    // r tries again: the worker is alive and loads this time.
    let effects = key(&mut state, 'r');
    let [Effect::Job(job)] = effects.as_slice() else {
        panic!("r did not start a job: {effects:?}")
    };
    handle.jobs.send(job.clone()).unwrap();
    let seen = until_idle(&mut rx, &mut state);
    assert!(
        seen.iter().any(|m| m.contains("loaded on try 2")),
        "{seen:?}"
    );

    // A panic in a job: reported, and the worker still serves the next job.
    handle
        .jobs
        .send(Job::Generate {
            prompts: vec!["x".into()],
        })
        .unwrap();
    until_idle(&mut rx, &mut state);
    assert_eq!(state.status.1, Tone::Error);
    assert!(
        state.status.0.contains("internal error in the worker")
            && state.status.0.contains("index out of bounds"),
        "{:?}",
        state.status
    );
    handle
        .jobs
        .send(Job::SaveModel {
            dir: "unused".into(),
        })
        .unwrap();
    let seen = until_idle(&mut rx, &mut state);
    assert!(seen.iter().any(|m| m.contains("done")), "{seen:?}");

    // Idle after the errors: q quits at once.
    assert!(matches!(key(&mut state, 'q').as_slice(), [Effect::Quit]));
    drop(handle);
    // The worker thread ends when the explorer's end of the queue is gone: it drops the only
    // sender of the message channel, which then reads as closed (`None`), not merely empty. The
    // deadline only turns a worker that never ends into a failure instead of a hung test.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut after = vec![];
        while let Some(m) = rx.blocking_recv() {
            after.push(format!("{m:?}"));
        }
        let _ = done_tx.send(after);
    });
    let after = done_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the worker thread did not end after the explorer dropped its queue");
    assert!(after.is_empty(), "messages after quitting: {after:?}");
}

/// Shift+X, the sparse-execution toggle.
fn shift_x(s: &mut State) -> Vec<Effect> {
    s.on_key(KeyEvent::new(KeyCode::Char('X'), KeyModifiers::SHIFT))
}

/// Start the real session on the demo model and run it until the start-up work is done.
fn demo_session(
    spec: &dlpx::worker::Spec,
) -> (
    dlpx::worker::Handle,
    UnboundedReceiver<Msg>,
    State,
    Vec<String>,
) {
    let (tx, mut rx) = unbounded_channel();
    let handle = spawn(dlpx::worker::ExplorerSession::new(spec.clone()), tx).unwrap();
    let mut state = State::new(explorer_defaults(), spec.prompts.clone());
    let seen = until_idle(&mut rx, &mut state);
    assert!(state.cal.is_some(), "{:?} {seen:?}", state.status);
    (handle, rx, state, seen)
}

/// The real session on the demo model: each finished generation carries its token count and
/// decode speed to the state; a dense continuation restored from the cache carries the count
/// and speed measured when it was generated (a cache entry of the older, text-only shape is
/// generated again); an apply reports the pruned linears' bytes against the dense ones; X
/// switches the held model between sparse (auto) and dense execution.
#[test]
fn demo_session_reports_speeds_cached_rows_and_the_sparse_toggle() {
    use dlpx::experiment::{DataSpec, Setup};
    use dlpx::sparse::SparseMode;
    // A fresh cache for the dense results; the demo model from the usual one.
    let demo = dlpx::assets::cache_dir().unwrap().join("demo");
    let cache = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(&demo).unwrap();
    std::os::unix::fs::symlink(&demo, cache.path().join("demo")).unwrap();
    std::env::set_var("DLPX_CACHE", cache.path());
    let spec = dlpx::worker::Spec {
        setup: Setup {
            source: dlpx::model::ModelSource::Demo,
            device: candle_core::Device::Cpu,
            dtype: candle_core::DType::F32,
            place: dlpx::model::Placement::Resident,
            sparse: SparseMode::Auto,
            data: DataSpec {
                calib_samples: 8,
                eval_windows: 2,
                ..DataSpec::default()
            },
            stats_cache: true,
            dense_cache: true,
            metric: dlpx::prune::mask::Metric::Wanda,
            keeps_pruned_copy: true,
            recovery: None,
        },
        owl_m: 5.0,
        max_new_tokens: 12,
        prompts: vec!["The capital of France is".into()],
        zeroshot: dlpx::worker::ZeroShotSpec {
            tasks: vec![],
            source: dlpx::zeroshot::TaskSource::Demo,
            limit: None,
        },
    };

    // First session: the dense continuation is generated (the cache is empty).
    let (handle, mut rx, mut state, seen) = demo_session(&spec);
    let generated = state.prompts[0].clone();
    assert!(
        seen.iter().filter(|m| m.starts_with("Token")).count() > 1,
        "streamed piece by piece: {seen:?}"
    );
    assert!((2..=12).contains(&generated.dense_tokens), "{generated:?}");
    let dense_rate = generated.dense_tok_s.expect("the dense decode speed");
    assert!(dense_rate > 0.0);

    // X before an apply: a hint, no job.
    assert!(shift_x(&mut state).is_empty());
    assert!(state.status.0.contains("apply first"), "{:?}", state.status);

    // Apply (preview, p 0.7): the pruned linears run sparse under auto, at most 0.40× dense.
    let fx = key(&mut state, 'a');
    let [Effect::Job(job)] = fx.as_slice() else {
        panic!("{fx:?}")
    };
    handle.jobs.send(job.clone()).unwrap();
    until_idle(&mut rx, &mut state);
    let fp = state.history[0]
        .footprint
        .expect("the footprint after apply");
    assert_eq!(fp.mode, SparseMode::Auto);
    assert_eq!(fp.linears, 7 * 30);
    assert_eq!(fp.sparse_linears, fp.linears, "{fp:?}");
    assert!(fp.ratio() <= 0.40, "{fp:?}");
    assert_eq!(state.sparse, Some(SparseMode::Auto));
    let p = &state.prompts[0];
    assert!(p.pruned_tokens >= 1 && p.pruned_tok_s.is_some(), "{p:?}");

    // X: dense execution, the same bytes as the dense model; X again: sparse again.
    for (want, sparse) in [(SparseMode::Off, 0), (SparseMode::Auto, fp.linears)] {
        let fx = shift_x(&mut state);
        let [Effect::Job(job)] = fx.as_slice() else {
            panic!("{fx:?}")
        };
        assert!(
            matches!(job, Job::Sparse { mode } if *mode == want),
            "{job:?}"
        );
        handle.jobs.send(job.clone()).unwrap();
        until_idle(&mut rx, &mut state);
        let now = state.history[0].footprint.unwrap();
        assert_eq!((now.mode, now.sparse_linears), (want, sparse), "{now:?}");
        if want == SparseMode::Off {
            assert_eq!(now.bytes, now.dense_bytes);
        } else {
            assert_eq!(now.bytes, fp.bytes);
        }
        // The next generation runs that way and reports its speed.
        handle
            .jobs
            .send(Job::Generate {
                prompts: spec.prompts.clone(),
            })
            .unwrap();
        until_idle(&mut rx, &mut state);
        assert!(state.prompts[0].pruned_tok_s.is_some());
    }
    drop(handle);

    // Second session: the dense row from the cache, whole, with the count and speed measured
    // when it was generated (not "1 tok" without a rate).
    let (handle, _rx, mut state, seen) = demo_session(&spec);
    let cached = &state.prompts[0];
    assert_eq!(cached.dense, generated.dense);
    assert_eq!(
        seen.iter().filter(|m| m.starts_with("Token")).count(),
        1,
        "one piece from the cache: {seen:?}"
    );
    assert_eq!(cached.dense_tokens, generated.dense_tokens);
    let r = cached.dense_tok_s.unwrap();
    assert!(
        (r - dense_rate).abs() <= 1e-9 * dense_rate,
        "{r} vs {dense_rate}"
    );
    state.view = dlpx::app::View::Compare;
    let frame = dlpx::ui::render_to_string(&state, &dlpx::ui::theme::Theme::mono(), 200, 60);
    let want = format!(
        "dense {} tok · {:.0} tok/s",
        generated.dense_tokens, dense_rate
    );
    assert!(frame.contains(&want), "{want}\n{frame}");
    drop(handle);

    // A cache entry of the older shape (the bare text) is generated again, then stored whole.
    let dense_dir = cache.path().join("dense");
    let entry = std::fs::read_dir(&dense_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            v.get("tokens_per_s").is_some()
        })
        .expect("the cached generation");
    std::fs::write(&entry, serde_json::to_string(&generated.dense).unwrap()).unwrap();
    let (handle, _rx, state, seen) = demo_session(&spec);
    assert!(
        seen.iter().filter(|m| m.starts_with("Token")).count() > 1,
        "generated again: {seen:?}"
    );
    assert_eq!(state.prompts[0].dense, generated.dense);
    assert_eq!(state.prompts[0].dense_tokens, generated.dense_tokens);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
    assert_eq!(v["tokens"], generated.dense_tokens);
    drop(handle);
}
