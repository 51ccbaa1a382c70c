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
