//! A small pool of threads that spin between jobs, for the batch-1 products of a decode step.
//!
//! A decode step runs ~200 matrix–vector products of 20–200 µs each with a few small tensor
//! ops between them. Rayon's workers go to sleep between such calls, and waking them costs
//! tens of microseconds each time (measured: a fifth of a decode step on the 2-core machine).
//! These workers spin for [`SPIN`] after each job before they sleep, so a decode step keeps
//! them awake, and a long evaluation (which uses rayon) finds them asleep.
//!
//! Tasks are claimed one at a time from a single atomic word that also names the job, and
//! each task writes only its own outputs, so which thread runs a task never changes the bits.
//! The caller waits only for tasks a worker has claimed, never for a worker to show up: on a
//! loaded machine a worker that is not scheduled simply claims nothing, and the caller runs
//! the job alone instead of stalling for a time slice per product.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_micros(500);

type Job = dyn Fn(usize) + Sync;

/// The claim word: `generation << 40 | tasks << 20 | next`. One compare-and-swap claims task
/// `next` of exactly this job, so a worker that looked at an older job can never claim in a
/// newer one with a stale task count.
const FIELD: u64 = 20;
const MASK: u64 = (1 << FIELD) - 1;
/// Jobs with more tasks than the claim word holds run on the caller.
const MAX_TASKS: usize = MASK as usize;

fn generation(s: u64) -> u64 {
    s >> (2 * FIELD)
}
fn tasks_of(s: u64) -> usize {
    ((s >> FIELD) & MASK) as usize
}
fn next_of(s: u64) -> usize {
    (s & MASK) as usize
}

struct Shared {
    /// See [`FIELD`]: which job is current, how many tasks it has, the next unclaimed one.
    state: AtomicU64,
    /// The current job (a `*const &Job`), valid while any of its tasks is unfinished.
    job: AtomicPtr<&'static Job>,
    /// Tasks of the current job that have finished.
    done: AtomicUsize,
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
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
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

    /// The threads that run a job: the caller and the workers.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Run `f(0..tasks)` on the calling thread and the workers; returns when all are done.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match (self.workers, tasks, self.busy.try_lock()) {
            (0, _, _) | (_, 0..=1, _) | (_, _, Err(_)) => {
                (0..tasks).for_each(f);
                return;
            }
            _ if tasks > MAX_TASKS => {
                (0..tasks).for_each(f);
                return;
            }
            (_, _, Ok(g)) => g,
        };
        let s = &*self.shared;
        // SAFETY: the job pointer is published for this call only: a thread reads it only
        // after claiming one of its tasks, and this function returns only after every task
        // has finished, so the borrow of `f` outlives every use.
        let f_static: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) };
        let boxed: *mut &'static Job = Box::into_raw(Box::new(f_static));
        s.job.store(boxed, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        // Every task of the previous job was claimed and finished, so no claim is in flight
        // and a plain store may replace the word. SeqCst with the worker's `asleep` store and
        // `state` load: either the worker sees the new job, or this sees it asleep.
        let g = generation(s.state.load(Ordering::Relaxed)).wrapping_add(1);
        s.state.store(
            (g << (2 * FIELD)) | ((tasks as u64) << FIELD),
            Ordering::SeqCst,
        );
        if s.asleep.swap(false, Ordering::SeqCst) {
            for t in lock(&s.sleeping).drain(..) {
                t.unpark();
            }
        }
        claim_tasks(s, g & (u64::MAX >> (2 * FIELD)));
        while s.done.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        // SAFETY: made by `Box::into_raw` above; every task finished and no further task can
        // be claimed (`next == tasks`), so nobody reads the pointer any more.
        drop(unsafe { Box::from_raw(boxed) });
        drop(guard);
    }
}

/// The list of sleeping workers (a panic elsewhere cannot leave it half-written: pushes and
/// drains are single calls, so a poisoned lock's contents are still whole).
fn lock(m: &Mutex<Vec<Thread>>) -> std::sync::MutexGuard<'_, Vec<Thread>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Claim and run tasks of job `gen` until none is left (or a newer job replaced it).
fn claim_tasks(s: &Shared, gen: u64) {
    let mut cur = s.state.load(Ordering::Acquire);
    loop {
        if generation(cur) != gen || next_of(cur) >= tasks_of(cur) {
            return;
        }
        match s
            .state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: task `next_of(cur)` of this job is claimed and unfinished, so the
                // caller of `run` is still waiting and the job pointer it published is valid.
                let f: &Job = unsafe { *s.job.load(Ordering::Acquire) };
                f(next_of(cur));
                s.done.fetch_add(1, Ordering::Release);
                cur = s.state.load(Ordering::Acquire);
            }
            Err(now) => cur = now,
        }
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
            let g = generation(s.state.load(Ordering::SeqCst));
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            // No `yield_now` here: on a busy core it hands the core away until the next
            // scheduler tick (milliseconds), far longer than the gap between two products.
            if spins.is_multiple_of(64) && idle.elapsed() > SPIN {
                // Sleep until the next job unparks us (re-checking the job first, so one
                // posted meanwhile is not missed).
                if !listed {
                    lock(&s.sleeping).push(thread::current());
                    listed = true;
                }
                s.asleep.store(true, Ordering::SeqCst);
                if generation(s.state.load(Ordering::SeqCst)) == seen {
                    thread::park_timeout(Duration::from_millis(100));
                }
                idle = Instant::now();
            }
            std::hint::spin_loop();
        };
        seen = g;
        claim_tasks(s, g);
    }
}

/// The process-wide pool, as many threads as rayon's (`RAYON_NUM_THREADS`).
pub fn global() -> &'static SpinPool {
    static POOL: OnceLock<SpinPool> = OnceLock::new();
    POOL.get_or_init(|| SpinPool::new(rayon::current_num_threads()))
}

/// Fill `y` chunk by chunk (`f(first_index, chunk)`) on the spinning pool: a decode step's
/// products and attention are too short for rayon's wake-ups.
pub fn fill_chunks(y: &mut [f32], chunk: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let n = y.len();
    let base = SyncPtr(y.as_mut_ptr());
    let tasks = n.div_ceil(chunk);
    global().run(tasks, &|i| {
        let (a, b) = (i * chunk, ((i + 1) * chunk).min(n));
        // SAFETY: task `i` alone covers `[a, b)`, disjoint from every other task's range and
        // inside `y`, which outlives `run` (it returns after every task finished).
        let out = unsafe { std::slice::from_raw_parts_mut(base.get().add(a), b - a) };
        f(a, out);
    });
}

/// A raw output pointer shared by the pool's tasks, each writing its own disjoint range.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: tasks only write disjoint ranges through it (see `fill_chunks`).
unsafe impl Sync for SyncPtr {}
// SAFETY: as above.
unsafe impl Send for SyncPtr {}

impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
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

    #[test]
    fn back_to_back_jobs_never_lose_or_repeat_a_task() {
        // Thousands of short jobs: a worker still looking at an old job must never claim a
        // task of a newer one twice or out of range.
        let pool = SpinPool::new(4);
        for j in 0..3000usize {
            let tasks = 2 + j % 37;
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "job {j}"
            );
        }
    }
}
