//! Many seeds on all cores. Each seed is an independent run, so the result
//! of a batch does not depend on how the seeds were spread over threads.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Options;
use crate::world::{run_seed, RunReport};

pub struct BatchReport {
    pub options: Options,
    /// One report per seed that ran, by seed.
    pub runs: Vec<RunReport>,
    pub elapsed: Duration,
}

impl BatchReport {
    pub fn failures(&self) -> Vec<&RunReport> {
        self.runs.iter().filter(|r| !r.ok()).collect()
    }
    pub fn first_failure(&self) -> Option<&RunReport> {
        self.runs.iter().find(|r| !r.ok())
    }
    /// The lowest seed whose failing violations include `kind`.
    pub fn first_with(&self, kind: crate::ViolationKind) -> Option<&RunReport> {
        self.runs
            .iter()
            .find(|r| r.failing().any(|v| v.kind == kind))
    }
}

/// Runs `seeds` on `jobs` threads. With `stop_at_first`, seeds above the
/// lowest failing one are skipped (every seed below it still runs, so the
/// first failing seed is the same whatever the thread count).
pub fn run_batch(
    seeds: Range<u64>,
    options: Options,
    jobs: usize,
    stop_at_first: bool,
    progress: Option<&(dyn Fn(&RunReport) + Sync)>,
) -> BatchReport {
    let failed = |r: &RunReport| !r.ok();
    run_batch_until(
        seeds,
        options,
        jobs,
        stop_at_first.then_some(&failed),
        progress,
    )
}

/// Like [`run_batch`], stopping at the lowest seed whose report satisfies `stop`.
pub fn run_batch_until(
    seeds: Range<u64>,
    options: Options,
    jobs: usize,
    stop: Option<&(dyn Fn(&RunReport) -> bool + Sync)>,
    progress: Option<&(dyn Fn(&RunReport) + Sync)>,
) -> BatchReport {
    let stop_at_first = stop.is_some();
    let start = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let lowest_fail = AtomicU64::new(u64::MAX);
    let out = Mutex::new(Vec::new());
    let jobs = jobs.max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end || (stop_at_first && seed > lowest_fail.load(Ordering::SeqCst))
                {
                    break;
                }
                let r = run_seed(seed, options);
                if stop.is_some_and(|f| f(&r)) {
                    lowest_fail.fetch_min(seed, Ordering::SeqCst);
                }
                if let Some(p) = progress {
                    p(&r);
                }
                out.lock().expect("no panics while held").push(r);
            });
        }
    });
    let mut runs = out.into_inner().expect("threads joined");
    runs.sort_by_key(|r| r.seed);
    if stop_at_first {
        let cut = lowest_fail.load(Ordering::SeqCst);
        runs.retain(|r| r.seed <= cut);
    }
    BatchReport {
        options,
        runs,
        elapsed: start.elapsed(),
    }
}

/// Threads to use by default: the machine's cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
