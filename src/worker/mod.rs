//! The explorer's compute thread: a message adapter over the experiment layer. Jobs come in
//! from the explorer's state, typed messages go out; one job runs at a time through the
//! latest-wins queue ([`queue`]); Esc sets a shared flag that the running job's observer turns
//! into a typed cancellation. A panic anywhere in the thread — in loading as well as in a job —
//! reaches the screen as an error, and the explorer stays usable (quit, or `r` to try again).

pub mod queue;
mod session;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::mpsc::UnboundedSender;

pub use crate::app::jobs::{Spec, ZeroShotSpec};
use crate::app::{Job, Msg};
pub use session::ExplorerSession;

impl queue::Keyed for Job {
    fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The explorer's end of the worker.
pub struct Handle {
    pub jobs: mpsc::Sender<Job>,
    pub cancel: Arc<AtomicBool>,
}

/// What a session has to talk back with: messages out, the cancel flag in.
#[derive(Clone)]
pub struct Link {
    out: UnboundedSender<Msg>,
    cancel: Arc<AtomicBool>,
}

impl Link {
    pub fn send(&self, m: Msg) {
        // The UI may be gone (quitting); nothing to do then.
        let _ = self.out.send(m);
    }

    /// False once the user asked to cancel the running job.
    pub fn go_on(&self) -> bool {
        !self.cancel.load(Ordering::Relaxed)
    }
}

/// The work behind the messages. [`ExplorerSession`] is the real one; tests use others.
pub trait Session: Send + 'static {
    /// Load the model and do the start-up work (calibrate, dense results).
    fn start(&mut self, link: &Link);
    fn run(&mut self, job: Job, link: &Link);
}

/// Start the worker thread over `session`.
pub fn spawn<S: Session>(session: S, out: UnboundedSender<Msg>) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let link = Link {
        out,
        cancel: cancel.clone(),
    };
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || serve(session, link, rx))?;
    Ok(Handle { jobs: tx, cancel })
}

/// The worker thread's name (its panics are shown in the explorer, not printed over it).
pub const THREAD_NAME: &str = "dlpx-worker";

fn serve<S: Session>(mut session: S, link: Link, rx: mpsc::Receiver<Job>) {
    link.cancel.store(false, Ordering::Relaxed);
    if let Err(what) = queue::guard(|| session.start(&link)) {
        link.send(Msg::Failed(format!(
            "internal error while loading: {what} (q quits, r tries again)"
        )));
    }
    link.send(Msg::Idle);
    queue::serve(&rx, &mut Adapter { session, link });
}

struct Adapter<S> {
    session: S,
    link: Link,
}

impl<S: Session> queue::Runner<Job> for Adapter<S> {
    fn run(&mut self, job: Job) {
        self.link.cancel.store(false, Ordering::Relaxed);
        self.session.run(job, &self.link);
    }

    fn superseded(&mut self, old: Job) {
        if let Job::Apply { id, .. } = old {
            self.link.send(Msg::Superseded(id));
        }
    }

    fn panicked(&mut self, what: String) {
        self.link
            .send(Msg::Failed(format!("internal error in the worker: {what}")));
    }

    fn idle(&mut self) {
        self.link.send(Msg::Idle);
    }
}
