//! The worker's job queue: one job runs at a time, a newer request replaces a queued one of the
//! same kind (latest wins), and a panic inside a job ends that job, not the worker. Independent
//! of what the jobs are, so it is tested on its own (as gitui tests its async jobs).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;

/// Jobs of the same kind replace each other while queued.
pub trait Keyed {
    fn same_kind(&self, other: &Self) -> bool;
}

/// Queued jobs, oldest first, at most one of each kind.
#[derive(Debug)]
pub struct LatestWins<J> {
    queue: VecDeque<J>,
}

impl<J> Default for LatestWins<J> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
        }
    }
}

impl<J: Keyed> LatestWins<J> {
    /// Queue `job`; returns the queued job of the same kind it replaced (it keeps that job's
    /// place in the queue).
    pub fn push(&mut self, job: J) -> Option<J> {
        match self.queue.iter_mut().find(|q| q.same_kind(&job)) {
            Some(q) => Some(std::mem::replace(q, job)),
            None => {
                self.queue.push_back(job);
                None
            }
        }
    }

    pub fn pop(&mut self) -> Option<J> {
        self.queue.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// What [`serve`] drives.
pub trait Runner<J> {
    fn run(&mut self, job: J);
    /// A queued job was replaced by a newer one of its kind before it ran.
    fn superseded(&mut self, old: J);
    /// A job panicked; `what` is the panic's message.
    fn panicked(&mut self, what: String);
    /// Nothing is queued or running.
    fn idle(&mut self);
}

/// Run jobs from `rx` until every sender is gone.
pub fn serve<J: Keyed>(rx: &Receiver<J>, runner: &mut impl Runner<J>) {
    let mut queue = LatestWins::default();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(j) => {
                    queue.push(j);
                }
                Err(_) => return,
            }
        }
        drain(rx, &mut queue, runner);
        let Some(job) = queue.pop() else { continue };
        if let Err(what) = guard(|| runner.run(job)) {
            runner.panicked(what);
        }
        drain(rx, &mut queue, runner);
        if queue.is_empty() {
            runner.idle();
        }
    }
}

fn drain<J: Keyed>(rx: &Receiver<J>, queue: &mut LatestWins<J>, runner: &mut impl Runner<J>) {
    while let Ok(j) = rx.try_recv() {
        if let Some(old) = queue.push(j) {
            runner.superseded(old);
        }
    }
}

/// Run `f`; a panic becomes `Err` with its message.
pub fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[derive(Debug, Clone, PartialEq)]
    enum J {
        A(u32),
        B(u32),
        Boom,
    }

    impl Keyed for J {
        fn same_kind(&self, o: &Self) -> bool {
            std::mem::discriminant(self) == std::mem::discriminant(o)
        }
    }

    #[derive(Default)]
    struct Log(Vec<String>);

    impl Runner<J> for Log {
        fn run(&mut self, j: J) {
            if j == J::Boom {
                panic!("boom in a job");
            }
            self.0.push(format!("run {j:?}"));
        }
        fn superseded(&mut self, j: J) {
            self.0.push(format!("superseded {j:?}"));
        }
        fn panicked(&mut self, what: String) {
            self.0.push(format!("panicked {what}"));
        }
        fn idle(&mut self) {
            self.0.push("idle".into());
        }
    }

    #[test]
    fn latest_wins_keeps_place_and_returns_the_replaced() {
        let mut q = LatestWins::default();
        assert_eq!(q.push(J::A(1)), None);
        assert_eq!(q.push(J::B(1)), None);
        assert_eq!(q.push(J::A(2)), Some(J::A(1)));
        assert_eq!(q.pop(), Some(J::A(2)));
        assert_eq!(q.pop(), Some(J::B(1)));
        assert!(q.is_empty());
    }

    #[test]
    fn serve_runs_newest_of_each_kind_survives_panics_and_says_idle() {
        let (tx, rx) = mpsc::channel();
        // Sent before serving starts: the first recv takes A(1); the drain replaces it by A(2),
        // queues B(1), and Boom; the panic is reported and the queue goes on.
        for j in [J::A(1), J::B(1), J::A(2), J::Boom, J::B(2)] {
            tx.send(j).unwrap();
        }
        drop(tx);
        let mut log = Log::default();
        serve(&rx, &mut log);
        assert_eq!(
            log.0,
            vec![
                "superseded A(1)",
                "superseded B(1)",
                "run A(2)",
                "run B(2)",
                "panicked boom in a job",
                "idle"
            ]
        );
    }

    #[test]
    fn guard_returns_the_panic_message() {
        assert_eq!(guard(|| 3), Ok(3));
        assert_eq!(guard(|| panic!("at {}", 7)), Err::<(), _>("at 7".into()));
    }
}
