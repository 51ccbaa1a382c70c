//! A small pool of threads that spin between jobs, for the batch-1 products of a decode step.
//!
//! A decode step runs ~200 matrix–vector products of 20–200 µs each with a few small tensor
//! ops between them. Rayon's workers go to sleep between such calls, and waking them costs
//! tens of microseconds each time (measured: a fifth of a decode step on the 2-core machine).
//! These workers spin for [`SPIN`] after each job before they sleep, so a decode step keeps
//! them awake, and a long evaluation (which uses rayon) finds them asleep.
//!
//! Tasks are taken from a shared counter, and each task writes only its own outputs, so which
//! thread runs a task never changes the bits.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped for every job; workers wait for it to change.
    generation: AtomicU64,
    /// The current job (a `*const &Job`, valid while `pending > 0`).
    job: AtomicPtr<&'static Job>,
    tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers still inside the current job.
    pending: AtomicUsize,
    /// Parked workers to unpark on the next job.
    sleeping: Mutex<Vec<Thread>>,
    asleep: AtomicBool,
}

pub struct SpinPool {
    shared: Arc<Shared>,
    workers: usize,
    /// One job at a time; a caller that finds the pool busy runs its tasks itself.
    busy: Mutex<()>,
}

impl SpinPool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            sleeping: Mutex::new(Vec::new()),
            asleep: AtomicBool::new(false),
        });
        // A thread the system refuses is one worker less (with none, jobs run on the caller).
        let workers = (0..threads.saturating_sub(1))
            .filter(|i| {
                let s = shared.clone();
                thread::Builder::new()
                    .name(format!("dlpx-spin-{i}"))
                    .spawn(move || worker(&s))
                    .is_ok()
            })
            .count();
        Self {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Run `f(0..tasks)` on the calling thread and the workers; returns when all are done.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match (self.workers, self.busy.try_lock()) {
            (0, _) | (_, Err(_)) => {
                (0..tasks).for_each(f);
                return;
            }
            (_, Ok(g)) => g,
        };
        let s = &*self.shared;
        // SAFETY: the job pointer is published for this call only: the workers read it after
        // seeing the new generation and finish with it before `pending` reaches zero, which
        // this function waits for before returning, so the borrow of `f` outlives every use.
        let f_static: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) };
        let boxed: *mut &'static Job = Box::into_raw(Box::new(f_static));
        s.job.store(boxed, Ordering::Release);
        s.tasks.store(tasks, Ordering::Release);
        s.next.store(0, Ordering::Release);
        s.pending.store(self.workers, Ordering::Release);
        // SeqCst with the worker's `asleep` store and `generation` load: either the worker sees
        // the new generation, or this sees it asleep and unparks it.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.asleep.swap(false, Ordering::SeqCst) {
            for t in lock(&s.sleeping).drain(..) {
                t.unpark();
            }
        }
        take_tasks(s, f);
        while s.pending.load(Ordering::Acquire) > 0 {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: made by `Box::into_raw` above; no worker uses it any more (pending == 0).
        drop(unsafe { Box::from_raw(boxed) });
        drop(guard);
    }
}

/// The list of sleeping workers (a panic elsewhere cannot leave it half-written: pushes and
/// drains are single calls, so a poisoned lock's contents are still whole).
fn lock(m: &Mutex<Vec<Thread>>) -> std::sync::MutexGuard<'_, Vec<Thread>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn take_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.tasks.load(Ordering::Acquire);
    loop {
        let i = s.next.fetch_add(1, Ordering::AcqRel);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut idle = Instant::now();
        let mut spins = 0u32;
        // At most one entry of this worker in `sleeping` per job (a stale one is drained by
        // the next job).
        let mut listed = false;
        let g = loop {
            let g = s.generation.load(Ordering::SeqCst);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                // Let a runnable thread (rayon's, the explorer's) have this core meanwhile.
                thread::yield_now();
            }
            if spins.is_multiple_of(64) && idle.elapsed() > SPIN {
                // Sleep until the next job unparks us (re-checking the generation first, so a
                // job posted meanwhile is not missed).
                if !listed {
                    lock(&s.sleeping).push(thread::current());
                    listed = true;
                }
                s.asleep.store(true, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen {
                    thread::park_timeout(Duration::from_millis(100));
                }
                idle = Instant::now();
            }
            std::hint::spin_loop();
        };
        seen = g;
        let job = s.job.load(Ordering::Acquire);
        if !job.is_null() {
            // SAFETY: a non-null job is valid until `pending` drops to zero, which needs this
            // worker's decrement below.
            let f: &Job = unsafe { *job };
            take_tasks(s, f);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process-wide pool, as many threads as rayon's (`RAYON_NUM_THREADS`).
pub fn global() -> &'static SpinPool {
    static POOL: OnceLock<SpinPool> = OnceLock::new();
    POOL.get_or_init(|| SpinPool::new(rayon::current_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_jobs() {
        let pool = SpinPool::new(3);
        for tasks in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // After the workers fell asleep, a job still runs.
        std::thread::sleep(Duration::from_millis(5));
        let sum = AtomicUsize::new(0);
        pool.run(10, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
