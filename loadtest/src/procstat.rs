//! CPU and memory of processes, read from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux). A background thread samples the masternodes
//! this tool started, and itself, for the report's time series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One reading of one process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// User + system CPU time, in seconds.
    pub cpu_s: f64,
    /// The system (kernel) part of it.
    pub sys_s: f64,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Peak resident set size (`VmHWM`), bytes.
    pub peak_rss: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads a process's CPU time and memory; `None` once it is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted after the last ')'. utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / clock_ticks(),
        sys_s: stime as f64 / clock_ticks(),
        rss: kb("VmRSS:"),
        peak_rss: kb("VmHWM:"),
    })
}

/// CPU time the whole machine has been busy (all processes, all cores),
/// in seconds, from `/proc/stat`.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    Some(busy as f64 / clock_ticks())
}

/// The 1-minute load average: how busy the machine was with other work too.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A watched process: a name for the report and its pid.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Samples of every watched process at one instant.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub at: Instant,
    pub procs: Vec<Option<ProcSample>>,
    pub machine_busy_s: Option<f64>,
}

pub fn snapshot(watched: &[Watched]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        procs: watched.iter().map(|w| sample(w.pid)).collect(),
        machine_busy_s: machine_busy_s(),
    }
}

/// CPU of the whole machine between two snapshots; 100 is one core busy.
pub fn machine_cpu_pct(a: &Snapshot, b: &Snapshot) -> Option<f64> {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    match (a.machine_busy_s, b.machine_busy_s) {
        (Some(x), Some(y)) if wall > 0.0 => Some(100.0 * (y - x).max(0.0) / wall),
        _ => None,
    }
}

/// Usage of one process between two snapshots.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Usage {
    pub name: String,
    pub pid: u32,
    /// Average CPU over the window; 100 is one core busy.
    pub cpu_pct: f64,
    pub cpu_seconds: f64,
    /// Kernel share of `cpu_pct` (system calls: sockets, fsync).
    pub sys_pct: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
}

pub fn usage(watched: &[Watched], a: &Snapshot, b: &Snapshot) -> Vec<Usage> {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    watched
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (x, y) = (a.procs[i].unwrap_or_default(), b.procs[i]);
            let y = y.unwrap_or(x);
            let cpu = (y.cpu_s - x.cpu_s).max(0.0);
            Usage {
                name: w.name.clone(),
                pid: w.pid,
                cpu_pct: 100.0 * cpu / wall,
                cpu_seconds: cpu,
                sys_pct: 100.0 * (y.sys_s - x.sys_s).max(0.0) / wall,
                rss_mb: y.rss as f64 / 1e6,
                peak_rss_mb: y.peak_rss as f64 / 1e6,
            }
        })
        .collect()
}

/// Samples the watched processes every `every` until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<Snapshot>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(watched: Vec<Watched>, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), series.clone());
        let thread = std::thread::Builder::new()
            .name("procstat".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let snap = snapshot(&watched);
                    v.lock().expect("sampler lock").push(snap);
                    std::thread::sleep(every);
                }
            })
            .expect("spawn sampler thread");
        Sampler {
            stop,
            series,
            thread: Some(thread),
        }
    }

    /// Snapshots taken in `[from, to]`.
    pub fn between(&self, from: Instant, to: Instant) -> Vec<Snapshot> {
        self.series
            .lock()
            .expect("sampler lock")
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .cloned()
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let a = sample(me).expect("own /proc entry");
        // Burn a little CPU so the counter can move.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = sample(me).unwrap();
        assert!(a.rss > 0 && b.peak_rss >= b.rss);
        assert!(b.cpu_s >= a.cpu_s);
        assert!(sample(u32::MAX).is_none());
        assert!(machine_busy_s().is_some_and(|s| s > 0.0));
        assert!(load_average().is_some());
    }
}
