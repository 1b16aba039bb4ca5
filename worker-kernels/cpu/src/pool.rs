//! A small thread pool for the matrix products that behaves on a shared machine.
//!
//! Work is handed out in chunks from an atomic counter, so a thread that the OS has descheduled
//! simply takes fewer chunks. Between jobs the threads poll briefly with `yield_now` (which gives the
//! core away at once when anything else wants it) and then sleep on a condition variable: they never
//! burn a core another process needs, unlike pools that spin-wait. Every output is computed whole by
//! one thread, so results never depend on the thread count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before it sleeps: about the gap between two
/// products of one decode step, so a busy generation never pays a wake-up.
const POLL: Duration = Duration::from_micros(200);

type Task<'a> = &'a (dyn Fn(usize) + Sync);

/// The job being run: a task erased to `'static` for the workers' sake (see [`Pool::run`]).
#[derive(Clone, Copy)]
struct Job {
    task: Task<'static>,
    chunks: usize,
}

struct Shared {
    /// The current job; `None` between jobs. Workers join a job only under this lock.
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Bumped for every job, so an idle worker can notice one without the lock.
    epoch: AtomicU64,
    /// The next chunk to take.
    next: AtomicUsize,
    /// Workers inside the current job.
    inside: AtomicUsize,
    /// Workers asleep on `wake`.
    sleeping: AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
}

/// A fixed set of threads that run chunked jobs with the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    running: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Pool {
    /// A pool computing on `threads` threads in all: the caller's and `threads − 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared {
            job: Mutex::new(None),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            stop: false.into(),
        });
        let workers = (1..threads.max(1))
            .map(|i| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("hearth-cpu-{i}"))
                    .spawn(move || worker(&shared))
                    .expect("spawning a kernel thread")
            })
            .collect();
        Self {
            shared,
            workers,
            running: Mutex::new(()),
        }
    }

    /// Threads computing, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `task(chunk)` for every chunk in `0..chunks`, on all threads; returns when all are done.
    pub fn run(&self, chunks: usize, task: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || chunks <= 1 {
            (0..chunks).for_each(task);
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the erased reference is used only by workers inside this job; the job is cleared
        // under the lock before this function returns, and it waits until `inside` is zero, so no
        // worker touches `task` after `run` returns.
        let task: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(task) };
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            s.next.store(0, Ordering::SeqCst);
            *job = Some(Job { task, chunks });
            s.epoch.fetch_add(1, Ordering::SeqCst);
        }
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            s.wake.notify_all();
        }
        take_chunks(s, task, chunks);
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Workers that joined finish the chunk they hold; a descheduled one is waited for without
        // holding the core.
        let mut polls = 0u32;
        while s.inside.load(Ordering::SeqCst) != 0 {
            polls += 1;
            if polls < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

fn take_chunks(s: &Shared, task: Task<'_>, chunks: usize) {
    loop {
        let chunk = s.next.fetch_add(1, Ordering::SeqCst);
        if chunk >= chunks {
            return;
        }
        task(chunk);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Poll for a new job for a moment, then sleep.
        let started = Instant::now();
        while s.epoch.load(Ordering::SeqCst) == seen && started.elapsed() < POLL {
            std::thread::yield_now();
        }
        let job = {
            let mut guard = s.job.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let epoch = s.epoch.load(Ordering::SeqCst);
                if epoch != seen {
                    seen = epoch;
                    if let Some(job) = *guard {
                        s.inside.fetch_add(1, Ordering::SeqCst);
                        break Some(job);
                    }
                    // The job already ended: go back to polling.
                    break None;
                }
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if let Some(job) = job {
            take_chunks(s, job.task, job.chunks);
            s.inside.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let _guard = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.stop.store(true, Ordering::SeqCst);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_chunk_runs_once_on_any_thread_count() {
        for threads in [1, 2, 4] {
            let pool = Pool::new(threads);
            for chunks in [0, 1, 7, 1000] {
                let hits: Vec<AtomicU32> = (0..chunks).map(|_| AtomicU32::new(0)).collect();
                pool.run(chunks, &|c| {
                    hits[c].fetch_add(1, Ordering::SeqCst);
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::SeqCst) == 1),
                    "{threads} {chunks}"
                );
            }
        }
    }

    #[test]
    fn many_short_jobs_after_sleeping() {
        let pool = Pool::new(3);
        let total = AtomicU32::new(0);
        for round in 0..2000 {
            if round == 1000 {
                std::thread::sleep(POLL * 5);
            }
            pool.run(4, &|_| {
                total.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(total.load(Ordering::SeqCst), 8000);
    }
}
