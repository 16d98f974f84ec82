//! Turns a step's raw records into its summary: counts, the finality
//! histogram, the time series, and the text and JSON forms of the report.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::drive::{Observed, Records, FINALIZED, REJECTED};
use crate::plan::StepPlan;
use crate::procstat::{Snapshot, Usage, Watched};

/// Latencies are recorded in microseconds, up to an hour.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// One slice of the step's timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    /// Start of the slice, seconds from the step's start.
    pub t_s: f64,
    /// Transactions submitted in the slice.
    pub sent: u64,
    /// Outcomes that arrived in the slice.
    pub finalized: u64,
    pub rejected: u64,
    /// Finality latency of the transactions submitted in the slice.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Percentiles {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
        }
    }
}

/// CPU of each watched process over a slice of the step.
#[derive(Clone, Debug, Serialize)]
pub struct CpuPoint {
    pub t_s: f64,
    pub cpu_pct: Vec<f64>,
}

/// Everything measured in one step.
pub struct StepResult {
    pub target_tps: f64,
    pub ramp: Duration,
    pub steady: Duration,
    pub payments: usize,
    pub planned: usize,
    pub sent: u64,
    pub finalized: u64,
    pub rejected: u64,
    pub lost: u64,
    /// Lost ones whose outcome did come, but after the timeout.
    pub late: u64,
    pub double_spend_pairs: u64,
    pub double_spend_both_finalized: u64,
    pub double_spend_both_rejected: u64,
    pub double_spend_one_finalized: u64,
    /// Told "rejected", then a TimeProof came: a protocol anomaly.
    pub rejected_then_finalized: u64,
    /// Rejected payments that were not part of a conflicting pair: the
    /// masternodes refused a valid payment (overload, or a bug).
    pub rejected_single: u64,
    /// Finalized transactions per second in the full-rate window.
    pub tps: f64,
    /// Transactions submitted per second in the full-rate window.
    pub offered_tps: f64,
    pub finality: Histogram<u64>,
    /// The devnet's crypto bound measured before the run (payments/s).
    pub crypto_bound_tps: Option<f64>,
    /// Finalized payments a committed block confirmed by the end of the
    /// confirmation wait (seen by the watcher at one masternode).
    pub confirmed: u64,
    /// From a payment's TimeProof to the watcher seeing it confirmed (us).
    pub confirmation: Histogram<u64>,
    pub rejection: Histogram<u64>,
    /// How late each submission left against its schedule.
    pub send_lag: Histogram<u64>,
    pub reasons: BTreeMap<String, u64>,
    pub conn_errors: Vec<String>,
    pub bad_proofs: u64,
    pub duplicate_outcomes: u64,
    pub unexpected_messages: u64,
    pub interrupted: bool,
    pub bucket_s: f64,
    pub series: Vec<Bucket>,
    pub usage: Vec<Usage>,
    pub cpu_series: Vec<CpuPoint>,
    pub wall_s: f64,
    /// Whole-machine CPU during the step (every process, others' too).
    pub machine_cpu_pct: Option<f64>,
    /// 1-minute load average when the step started.
    pub load_average: Option<f64>,
    pub cores: usize,
    /// The masternodes' view of the spent coins after the step.
    pub audit: Option<crate::audit::Audit>,
}

pub fn analyze(
    plan: &StepPlan,
    obs: &Observed,
    timeout: Duration,
    usage: Vec<Usage>,
    snaps: &[Snapshot],
) -> StepResult {
    let rec: &Records = &obs.records;
    let n = plan.subs.len();
    let timeout_ns = timeout.as_nanos() as u64;
    let ramp_ns = plan.profile.ramp.as_nanos() as u64;
    let steady_end_ns = ramp_ns + plan.profile.steady.as_nanos() as u64;
    let wall_ns = obs.ended.duration_since(obs.started).as_nanos() as u64;
    let bucket_ns: u64 = if plan.profile.total() <= Duration::from_secs(30) {
        500_000_000
    } else {
        1_000_000_000
    };
    let nb = (wall_ns / bucket_ns + 1) as usize;
    let mut series: Vec<(Bucket, Histogram<u64>)> = (0..nb)
        .map(|b| {
            (
                Bucket {
                    t_s: (b as u64 * bucket_ns) as f64 / 1e9,
                    sent: 0,
                    finalized: 0,
                    rejected: 0,
                    p50_ms: None,
                    p99_ms: None,
                },
                new_hist(),
            )
        })
        .collect();
    let slot = |t: u64| ((t / bucket_ns) as usize).min(nb - 1);

    let mut r = StepResult {
        target_tps: plan.profile.rate,
        ramp: plan.profile.ramp,
        steady: plan.profile.steady,
        payments: plan.payments,
        planned: n,
        sent: 0,
        finalized: 0,
        rejected: 0,
        lost: 0,
        late: 0,
        double_spend_pairs: 0,
        double_spend_both_finalized: 0,
        double_spend_both_rejected: 0,
        double_spend_one_finalized: 0,
        rejected_then_finalized: 0,
        rejected_single: 0,
        tps: 0.0,
        offered_tps: 0.0,
        finality: new_hist(),
        crypto_bound_tps: None,
        confirmed: 0,
        confirmation: new_hist(),
        rejection: new_hist(),
        send_lag: new_hist(),
        reasons: obs.reasons.clone(),
        conn_errors: obs.conn_errors.clone(),
        bad_proofs: obs.bad_proofs,
        duplicate_outcomes: obs.duplicate_outcomes,
        unexpected_messages: obs.unexpected_messages,
        interrupted: obs.interrupted,
        bucket_s: bucket_ns as f64 / 1e9,
        series: Vec::new(),
        usage,
        cpu_series: Vec::new(),
        wall_s: wall_ns as f64 / 1e9,
        machine_cpu_pct: None,
        load_average: None,
        cores: std::thread::available_parallelism().map_or(1, |p| p.get()),
        audit: None,
    };
    // Window for the achieved rate: the full-rate phase, or what ran of it.
    let win_end = steady_end_ns.min(wall_ns);
    let (win_start, win_end) = if win_end > ramp_ns {
        (ramp_ns, win_end)
    } else {
        (0, wall_ns.max(1))
    };
    let mut fin_in_window = 0u64;
    let mut sent_in_window = 0u64;
    // Final classification of each transaction, for the pair counts.
    let mut fin = vec![false; n];
    let mut rej = vec![false; n];
    for i in 0..n {
        let Some(sub) = Records::get(&rec.submit_ns, i) else {
            continue;
        };
        r.sent += 1;
        let _ = r
            .send_lag
            .record((sub.saturating_sub(plan.subs[i].at_ns) / 1000).max(1));
        series[slot(sub)].0.sent += 1;
        if (win_start..win_end).contains(&sub) {
            sent_in_window += 1;
        }
        let flags = rec.flags[i].load(std::sync::atomic::Ordering::Acquire);
        let f = Records::get(&rec.finalized_ns, i);
        let j = Records::get(&rec.rejected_ns, i);
        if flags & FINALIZED != 0 && flags & REJECTED != 0 {
            r.rejected_then_finalized += 1;
        }
        match (f, j) {
            (Some(t), _) if t.saturating_sub(sub) <= timeout_ns => {
                r.finalized += 1;
                fin[i] = true;
                if let Some(c) = Records::get(&rec.confirmed_ns, i) {
                    r.confirmed += 1;
                    r.confirmation
                        .saturating_record((c.saturating_sub(t) / 1000).max(1));
                }
                let us = (t.saturating_sub(sub) / 1000).max(1);
                r.finality.saturating_record(us);
                series[slot(sub)].1.saturating_record(us);
                series[slot(t)].0.finalized += 1;
                if (win_start..win_end).contains(&t) {
                    fin_in_window += 1;
                }
            }
            (_, Some(t)) if t.saturating_sub(sub) <= timeout_ns => {
                r.rejected += 1;
                rej[i] = true;
                if plan.subs[i].pair.is_none() {
                    r.rejected_single += 1;
                }
                r.rejection
                    .saturating_record((t.saturating_sub(sub) / 1000).max(1));
                series[slot(t)].0.rejected += 1;
            }
            (None, None) => r.lost += 1,
            _ => {
                r.lost += 1;
                r.late += 1;
            }
        }
    }
    let window_s = (win_end - win_start) as f64 / 1e9;
    r.tps = fin_in_window as f64 / window_s;
    r.offered_tps = sent_in_window as f64 / window_s;

    let mut sides: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, s) in plan.subs.iter().enumerate() {
        if let Some(p) = s.pair {
            sides.entry(p).or_default().push(i);
        }
    }
    for v in sides.values() {
        if v.iter().any(|&i| Records::get(&rec.submit_ns, i).is_none()) {
            continue; // Not sent as a pair (interrupted).
        }
        r.double_spend_pairs += 1;
        // Safety: any TimeProof counts, however late it came.
        let finals = v
            .iter()
            .filter(|&&i| rec.flags[i].load(std::sync::atomic::Ordering::Acquire) & FINALIZED != 0)
            .count();
        if finals >= 2 {
            r.double_spend_both_finalized += 1;
        } else if v.iter().all(|&i| rej[i]) {
            r.double_spend_both_rejected += 1;
        } else if v.iter().any(|&i| fin[i]) {
            r.double_spend_one_finalized += 1;
        }
    }

    r.series = series
        .into_iter()
        .map(|(mut b, h)| {
            if !h.is_empty() {
                b.p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
                b.p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
            }
            b
        })
        .collect();
    for w in snaps.windows(2) {
        let dt = w[1].at.duration_since(w[0].at).as_secs_f64();
        if dt <= 0.0 {
            continue;
        }
        r.cpu_series.push(CpuPoint {
            t_s: w[1].at.saturating_duration_since(obs.started).as_secs_f64(),
            cpu_pct: w[0]
                .procs
                .iter()
                .zip(&w[1].procs)
                .map(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => 100.0 * (b.cpu_s - a.cpu_s).max(0.0) / dt,
                    _ => 0.0,
                })
                .collect(),
        });
    }
    r
}

/// The summary written by `--json`: exactly these keys.
#[derive(Serialize)]
pub struct JsonSummary {
    pub sent: u64,
    pub finalized: u64,
    pub rejected: u64,
    pub lost: u64,
    pub double_spend_pairs: u64,
    pub double_spend_both_finalized: u64,
    pub tps: f64,
    pub finality_ms: Percentiles,
    /// Finalized payments seen confirmed by a block before the wait ended.
    pub confirmed: u64,
    /// TimeProof to confirmation, measured to one watcher poll (100 ms).
    pub confirmation_ms: Percentiles,
    /// Payments/s the machine's cores could verify (see the run's first line).
    pub crypto_bound_tps: f64,
    /// `tps` / `crypto_bound_tps`.
    pub fraction_of_bound: f64,
}

impl JsonSummary {
    pub fn of(r: &StepResult) -> Self {
        JsonSummary {
            sent: r.sent,
            finalized: r.finalized,
            rejected: r.rejected,
            lost: r.lost,
            double_spend_pairs: r.double_spend_pairs,
            double_spend_both_finalized: r.double_spend_both_finalized,
            tps: round3(r.tps),
            finality_ms: round_p(Percentiles::of(&r.finality)),
            confirmed: r.confirmed,
            confirmation_ms: round_p(Percentiles::of(&r.confirmation)),
            crypto_bound_tps: r.crypto_bound_tps.map_or(0.0, |b| b.round()),
            fraction_of_bound: r
                .crypto_bound_tps
                .filter(|b| *b > 0.0)
                .map_or(0.0, |b| (r.tps / b * 1e4).round() / 1e4),
        }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round_p(p: Percentiles) -> Percentiles {
    Percentiles {
        p50: round3(p.p50),
        p90: round3(p.p90),
        p99: round3(p.p99),
        p999: round3(p.p999),
        max: round3(p.max),
    }
}

/// Everything, for `--json-detail`.
#[derive(Serialize)]
pub struct StepDetail {
    #[serde(flatten)]
    pub summary: JsonSummary,
    pub target_tps: f64,
    pub ramp_s: f64,
    pub steady_s: f64,
    pub payments: usize,
    pub late: u64,
    pub double_spend_both_rejected: u64,
    pub double_spend_one_finalized: u64,
    pub rejected_then_finalized: u64,
    pub rejected_single: u64,
    pub offered_tps: f64,
    pub rejection_ms: Percentiles,
    pub send_lag_ms: Percentiles,
    pub reject_reasons: BTreeMap<String, u64>,
    pub connection_errors: Vec<String>,
    pub bad_proofs: u64,
    pub duplicate_outcomes: u64,
    pub unexpected_messages: u64,
    pub interrupted: bool,
    pub wall_s: f64,
    pub machine_cpu_pct: Option<f64>,
    pub load_average: Option<f64>,
    pub processes: Vec<Usage>,
    pub audit: Option<crate::audit::Audit>,
    pub series: Vec<Bucket>,
    pub verdict: Option<String>,
}

impl StepDetail {
    pub fn of(r: &StepResult, verdict: Option<String>) -> Self {
        StepDetail {
            summary: JsonSummary::of(r),
            target_tps: r.target_tps,
            ramp_s: r.ramp.as_secs_f64(),
            steady_s: r.steady.as_secs_f64(),
            payments: r.payments,
            late: r.late,
            double_spend_both_rejected: r.double_spend_both_rejected,
            double_spend_one_finalized: r.double_spend_one_finalized,
            rejected_then_finalized: r.rejected_then_finalized,
            rejected_single: r.rejected_single,
            offered_tps: round3(r.offered_tps),
            rejection_ms: round_p(Percentiles::of(&r.rejection)),
            send_lag_ms: round_p(Percentiles::of(&r.send_lag)),
            reject_reasons: r.reasons.clone(),
            connection_errors: r.conn_errors.clone(),
            bad_proofs: r.bad_proofs,
            duplicate_outcomes: r.duplicate_outcomes,
            unexpected_messages: r.unexpected_messages,
            interrupted: r.interrupted,
            wall_s: round3(r.wall_s),
            machine_cpu_pct: r.machine_cpu_pct,
            load_average: r.load_average,
            processes: r.usage.clone(),
            audit: r.audit.clone(),
            series: r.series.clone(),
            verdict,
        }
    }
}

fn ms(p: &Percentiles) -> String {
    format!(
        "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        p.p50, p.p90, p.p99, p.p999, p.max
    )
}

/// The human-readable summary of one step.
pub fn text(r: &StepResult, title: &str, watched: &[Watched]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{title}");
    let _ = writeln!(
        s,
        "  target        {:.0} payments/s for {:.1}s after a {:.1}s ramp{}",
        r.target_tps,
        r.steady.as_secs_f64(),
        r.ramp.as_secs_f64(),
        if r.interrupted { " (interrupted)" } else { "" }
    );
    let _ = writeln!(
        s,
        "  sent          {} transactions ({} payments, {} of them conflicting pairs)",
        r.sent, r.payments, r.double_spend_pairs
    );
    if r.planned as u64 > r.sent {
        let _ = writeln!(s, "  not sent      {}", r.planned as u64 - r.sent);
    }
    let _ = writeln!(s, "  finalized     {}", r.finalized);
    if let Some(b) = r.crypto_bound_tps.filter(|b| *b > 0.0) {
        let _ = writeln!(
            s,
            "  of the bound  {:.1}% ({:.0} finalized/s of a {:.0}/s crypto bound)",
            100.0 * r.tps / b,
            r.tps,
            b
        );
    }
    if r.confirmed > 0 {
        let c = Percentiles::of(&r.confirmation);
        let _ = writeln!(
            s,
            "  confirmed     {} by blocks (finality to confirmation p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; polled every 100 ms)",
            r.confirmed, c.p50, c.p99, c.max
        );
    } else if r.finalized > 0 {
        let _ = writeln!(s, "  confirmed     0 (no block confirmed them within the wait: block layer off or stalled?)");
    }
    let reasons: Vec<String> = r.reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        s,
        "  rejected      {}{}",
        r.rejected,
        if reasons.is_empty() {
            String::new()
        } else {
            format!("  ({})", reasons.join(", "))
        }
    );
    if r.rejected_single > 0 {
        let _ = writeln!(
            s,
            "  of which      {} plain payments (not double spends) refused",
            r.rejected_single
        );
    }
    let _ = writeln!(
        s,
        "  lost          {}{}",
        r.lost,
        if r.late > 0 {
            format!("  ({} answered after the timeout)", r.late)
        } else {
            String::new()
        }
    );
    if r.double_spend_pairs > 0 {
        let _ = writeln!(
            s,
            "  double spends {} pairs: one side final {}, both rejected {}, BOTH FINAL {}",
            r.double_spend_pairs,
            r.double_spend_one_finalized,
            r.double_spend_both_rejected,
            r.double_spend_both_finalized
        );
    }
    if r.rejected_then_finalized > 0 || r.bad_proofs > 0 {
        let _ = writeln!(
            s,
            "  ANOMALIES     rejected then finalized {}, proofs that do not verify {}",
            r.rejected_then_finalized, r.bad_proofs
        );
    }
    let _ = writeln!(
        s,
        "  achieved      {:.1} finalized/s ({:.1} transactions/s offered, full-rate window)",
        r.tps, r.offered_tps
    );
    let _ = writeln!(s, "  finality ms   {}", ms(&Percentiles::of(&r.finality)));
    if !r.rejection.is_empty() {
        let _ = writeln!(s, "  rejection ms  {}", ms(&Percentiles::of(&r.rejection)));
    }
    let lag = Percentiles::of(&r.send_lag);
    let _ = writeln!(
        s,
        "  send lag ms   p99 {:.2}  max {:.2} (submission behind schedule)",
        lag.p99, lag.max
    );
    for e in r.conn_errors.iter().take(5) {
        let _ = writeln!(s, "  connection error: {e}");
    }
    if let Some(a) = &r.audit {
        for (name, c) in &a.groups {
            let behind: Vec<String> = c
                .behind_states
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                s,
                "  node audit    {name} {}: final on all masternodes {} (confirmed on all {}), not converged {}{}, locked for good {}, free {}, CONFLICTING FINALITY {}",
                c.coins,
                c.final_everywhere,
                c.confirmed_everywhere,
                c.not_converged,
                if behind.is_empty() {
                    String::new()
                } else {
                    format!(" (behind: {})", behind.join(", "))
                },
                c.locked_for_good,
                c.free,
                c.conflicting_finality
            );
        }
        for e in &a.errors {
            let _ = writeln!(s, "  node audit    error: {e}");
        }
    }
    if let Some(m) = r.machine_cpu_pct {
        let ours: f64 = r.usage.iter().map(|u| u.cpu_pct).sum();
        let _ = writeln!(
            s,
            "  machine       cpu {m:.0}% of {}% (this run {ours:.0}%, other work {:.0}%), load average {:.2} at start",
            100 * r.cores,
            (m - ours).max(0.0),
            r.load_average.unwrap_or(0.0)
        );
    }
    if !r.usage.is_empty() {
        let _ = writeln!(
            s,
            "  {:<16} {:>7} {:>7} {:>9} {:>10} {:>8}",
            "process", "cpu %", "sys %", "cpu s", "rss MB", "peak MB"
        );
        for (u, w) in r.usage.iter().zip(watched) {
            let _ = writeln!(
                s,
                "  {:<16} {:>7.1} {:>7.1} {:>9.2} {:>10.1} {:>8.1}",
                w.name, u.cpu_pct, u.sys_pct, u.cpu_seconds, u.rss_mb, u.peak_rss_mb
            );
        }
    }
    s
}
