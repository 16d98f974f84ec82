//! Runs one step against the masternodes: a writer and a reader task per
//! wallet connection, and a scheduler that hands each due transaction to its
//! connection's writer. For every transaction it records when it was
//! submitted and when the masternode's outcome (TimeProof or rejection)
//! arrived. Nothing here waits on an outcome before sending more: the load
//! is open loop.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use time_net::{FrameReader, FrameWriter};
use timecoin::protocol::message::Message;
use timecoin::protocol::registry::Registry;
use timecoin::protocol::types::{ChainId, Txid};
use timecoin::wallet::WalletClient;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};

use crate::plan::StepPlan;
use crate::AnyError;

/// Outcome flags of one transaction.
pub const ACCEPTED: u8 = 1;
pub const REJECTED: u8 = 2;
pub const FINALIZED: u8 = 4;
/// A TimeProof that did not verify (not counted as final).
pub const BAD_PROOF: u8 = 8;

/// Per-transaction times (nanoseconds from the step's start, plus one so
/// zero means "not yet") and outcome flags. Indexed like `StepPlan::subs`.
pub struct Records {
    pub submit_ns: Vec<AtomicU64>,
    pub finalized_ns: Vec<AtomicU64>,
    pub rejected_ns: Vec<AtomicU64>,
    /// When the confirmation watcher first saw the payment's coin
    /// `Confirmed` by it (resolution: [`CONFIRM_POLL`]).
    pub confirmed_ns: Vec<AtomicU64>,
    pub flags: Vec<AtomicU8>,
}

impl Records {
    fn new(n: usize) -> Self {
        let z = |_| AtomicU64::new(0);
        Records {
            submit_ns: (0..n).map(z).collect(),
            finalized_ns: (0..n).map(z).collect(),
            rejected_ns: (0..n).map(z).collect(),
            confirmed_ns: (0..n).map(z).collect(),
            flags: (0..n).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    pub fn get(v: &[AtomicU64], i: usize) -> Option<u64> {
        match v[i].load(Ordering::Acquire) {
            0 => None,
            t => Some(t - 1),
        }
    }
}

/// Live counters, for the progress line.
#[derive(Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub finalized: AtomicU64,
    pub rejected: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VerifyProofs {
    /// Proofs of double-spend sides only (a safety claim rests on them).
    Pairs,
    All,
}

pub struct DriveOpts {
    pub endpoints: Vec<SocketAddr>,
    pub conn_target: Vec<usize>,
    pub chain_id: ChainId,
    pub registry: Arc<Registry>,
    pub verify: VerifyProofs,
    /// A transaction without an outcome this long after its submission is lost.
    pub timeout: Duration,
    /// Set on Ctrl-C: stop sending and waiting.
    pub stop: Arc<AtomicBool>,
    pub progress: ProgressBar,
    pub label: String,
    /// How long after the step's last outcome to keep waiting for blocks to
    /// confirm its payments (zero: do not watch).
    pub confirm_wait: Duration,
}

/// What a step observed.
pub struct Observed {
    pub records: Records,
    pub started: Instant,
    pub ended: Instant,
    pub reasons: BTreeMap<String, u64>,
    pub conn_errors: Vec<String>,
    pub bad_proofs: u64,
    pub duplicate_outcomes: u64,
    pub unexpected_messages: u64,
    pub interrupted: bool,
}

struct Shared {
    plan: Arc<StepPlan>,
    index: HashMap<Txid, u32>,
    records: Records,
    counters: Counters,
    resolved: AtomicU64,
    started: Instant,
    chain_id: ChainId,
    registry: Arc<Registry>,
    verify: VerifyProofs,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
struct ReaderStats {
    reasons: HashMap<String, u64>,
    bad_proofs: u64,
    duplicates: u64,
    unexpected: u64,
}

/// Connects, runs the schedule, waits for outcomes (up to the timeout after
/// the last submission), and returns the records.
pub async fn run_step(plan: Arc<StepPlan>, opts: &DriveOpts) -> Result<Observed, AnyError> {
    let n = plan.subs.len();
    let index: HashMap<Txid, u32> = plan
        .subs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.txid, i as u32))
        .collect();
    // Connect everything before the clock starts.
    let mut conns = Vec::with_capacity(opts.conn_target.len());
    for &t in &opts.conn_target {
        let addr = opts.endpoints[t];
        let c = WalletClient::connect(addr, opts.chain_id)
            .await
            .map_err(|e| format!("wallet connection to masternode {addr}: {e}"))?;
        conns.push(c.into_split());
    }
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        index,
        records: Records::new(n),
        counters: Counters::default(),
        resolved: AtomicU64::new(0),
        started: Instant::now(),
        chain_id: opts.chain_id,
        registry: opts.registry.clone(),
        verify: opts.verify,
        errors: Mutex::new(Vec::new()),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut writers = Vec::new();
    let mut batch_txs = Vec::new();
    let mut readers = Vec::new();
    for (c, (r, w)) in conns.into_iter().enumerate() {
        let (btx, brx) = mpsc::unbounded_channel::<Vec<u32>>();
        batch_txs.push(btx);
        writers.push(tokio::spawn(writer(shared.clone(), c, w, brx)));
        readers.push(tokio::spawn(reader(
            shared.clone(),
            c,
            r,
            shutdown_rx.clone(),
        )));
    }
    let confirm_done = Arc::new(AtomicBool::new(false));
    let watcher = (!opts.confirm_wait.is_zero()).then(|| {
        tokio::spawn(watch_confirmations(
            shared.clone(),
            opts.endpoints[0],
            confirm_done.clone(),
            opts.confirm_wait,
        ))
    });
    let progress = tokio::spawn(show_progress(
        shared.clone(),
        opts.progress.clone(),
        opts.label.clone(),
        plan.profile.total(),
    ));

    // The schedule: every due transaction goes to its connection's writer in
    // the same pass, so both sides of a pair leave at the same moment.
    let started = shared.started;
    let mut next = 0usize;
    let mut batches: Vec<Vec<u32>> = vec![Vec::new(); batch_txs.len()];
    let mut interrupted = false;
    while next < n {
        if opts.stop.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let now = shared.now_ns();
        while next < n && plan.subs[next].at_ns <= now {
            batches[plan.subs[next].conn].push(next as u32);
            next += 1;
        }
        for (c, b) in batches.iter_mut().enumerate() {
            if !b.is_empty() {
                let _ = batch_txs[c].send(std::mem::take(b));
            }
        }
        if next < n {
            let due = started + Duration::from_nanos(plan.subs[next].at_ns);
            // Wake at least every 20 ms to notice Ctrl-C.
            let cap = Instant::now() + Duration::from_millis(20);
            tokio::time::sleep_until(due.min(cap).into()).await;
        }
    }
    drop(batch_txs);
    // The write halves stay open until the readers are done: closing one
    // ends the masternode's wallet session, and its notifications with it.
    let mut open_writers = Vec::new();
    for w in writers {
        if let Ok(Some(w)) = w.await {
            open_writers.push(w);
        }
    }
    let sent = shared.counters.sent.load(Ordering::Relaxed);
    let last_submit = (0..n)
        .filter_map(|i| Records::get(&shared.records.submit_ns, i))
        .max()
        .unwrap_or(0);
    let mut deadline = started + Duration::from_nanos(last_submit) + opts.timeout;
    if interrupted {
        // Still hear what is in flight, briefly.
        deadline = deadline.min(Instant::now() + Duration::from_secs(2));
    }
    while Instant::now() < deadline {
        if !interrupted && opts.stop.load(Ordering::Relaxed) {
            interrupted = true;
            deadline = deadline.min(Instant::now() + Duration::from_secs(2));
        }
        if shared.resolved.load(Ordering::Acquire) >= sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ended = Instant::now();
    confirm_done.store(true, Ordering::Release);
    if let Some(w) = watcher {
        if let Ok(Err(e)) = w.await {
            shared.errors.lock().expect("errors lock").push(e);
        }
    }
    let _ = shutdown_tx.send(true);
    let mut stats = ReaderStats::default();
    for r in readers {
        if let Ok(s) = r.await {
            for (k, v) in s.reasons {
                *stats.reasons.entry(k).or_default() += v;
            }
            stats.bad_proofs += s.bad_proofs;
            stats.duplicates += s.duplicates;
            stats.unexpected += s.unexpected;
        }
    }
    progress.abort();
    let _ = progress.await;
    drop(open_writers);
    let shared = match Arc::try_unwrap(shared) {
        Ok(s) => s,
        Err(_) => return Err("step tasks still hold the records".into()),
    };
    Ok(Observed {
        records: shared.records,
        started,
        ended,
        reasons: stats.reasons.into_iter().collect(),
        conn_errors: shared.errors.into_inner().unwrap_or_default(),
        bad_proofs: stats.bad_proofs,
        duplicate_outcomes: stats.duplicates,
        unexpected_messages: stats.unexpected,
        interrupted,
    })
}

/// How often the confirmation watcher asks.
pub const CONFIRM_POLL: Duration = Duration::from_millis(100);

/// Watches finalized payments until a committed block confirms them: every
/// [`CONFIRM_POLL`] it asks one masternode for the coins of payments final
/// but not yet seen confirmed, and records when it first sees each coin
/// `Confirmed` by that payment (so finality-to-confirmation is measured to
/// one poll plus a query's round trip). After `done` it keeps watching for
/// at most `wait` (less once everything is confirmed), then stops.
async fn watch_confirmations(
    shared: Arc<Shared>,
    endpoint: SocketAddr,
    done: Arc<AtomicBool>,
    wait: Duration,
) -> Result<(), String> {
    use timecoin::protocol::message::MAX_QUERY_OUTPOINTS;
    use timecoin::protocol::utxo::UtxoState;
    // Coins asked about per poll at most (bounds the load on the node).
    const MAX_PER_POLL: usize = 32 * MAX_QUERY_OUTPOINTS;
    let mut c = WalletClient::connect(endpoint, shared.chain_id)
        .await
        .map_err(|e| format!("confirmation watcher: connect to {endpoint}: {e}"))?;
    let rec = &shared.records;
    let subs = &shared.plan.subs;
    let mut done_at: Option<Instant> = None;
    let mut from = 0usize;
    loop {
        let now = Instant::now();
        if done_at.is_none() && done.load(Ordering::Acquire) {
            done_at = Some(now);
        }
        // Oldest first; `from` skips the settled prefix.
        while from < subs.len()
            && (rec.confirmed_ns[from].load(Ordering::Acquire) != 0
                || (rec.submit_ns[from].load(Ordering::Acquire) != 0
                    && rec.flags[from].load(Ordering::Acquire) & (FINALIZED | REJECTED)
                        == REJECTED))
        {
            from += 1;
        }
        let waiting: Vec<usize> = (from..subs.len())
            .filter(|&i| {
                rec.flags[i].load(Ordering::Acquire) & FINALIZED != 0
                    && rec.confirmed_ns[i].load(Ordering::Acquire) == 0
            })
            .take(MAX_PER_POLL)
            .collect();
        if let Some(t) = done_at {
            if waiting.is_empty() || now >= t + wait {
                return Ok(());
            }
        }
        for chunk in waiting.chunks(MAX_QUERY_OUTPOINTS) {
            let coins = chunk.iter().map(|&i| subs[i].coin).collect();
            let states = c
                .utxo_states(coins)
                .await
                .map_err(|e| format!("confirmation watcher: query {endpoint}: {e}"))?;
            let seen = shared.now_ns() + 1;
            for (&i, (_, e)) in chunk.iter().zip(states) {
                if let Some(UtxoState::Confirmed { txid, .. }) = e.map(|e| e.state) {
                    if txid == subs[i].txid {
                        rec.confirmed_ns[i].store(seen, Ordering::Release);
                    }
                }
            }
        }
        tokio::time::sleep(CONFIRM_POLL).await;
    }
}

async fn writer(
    shared: Arc<Shared>,
    conn: usize,
    mut w: FrameWriter<OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Vec<u32>>,
) -> Option<FrameWriter<OwnedWriteHalf>> {
    while let Some(batch) = rx.recv().await {
        let t = shared.now_ns() + 1;
        for &i in &batch {
            let i = i as usize;
            shared.records.submit_ns[i].store(t, Ordering::Release);
            if let Err(e) = w.push(&shared.plan.subs[i].frame) {
                shared.records.submit_ns[i].store(0, Ordering::Release);
                shared
                    .errors
                    .lock()
                    .expect("errors lock")
                    .push(format!("connection {conn}: {e}"));
                return None;
            }
        }
        if let Err(e) = w.flush().await {
            // What was in the buffer may or may not have left: it stays
            // counted as sent, and is lost unless an outcome comes back.
            shared
                .errors
                .lock()
                .expect("errors lock")
                .push(format!("connection {conn}: write failed: {e}"));
            return None;
        }
        shared
            .counters
            .sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Some(w)
}

/// Marks an outcome; the first outcome of a transaction resolves it.
fn mark(shared: &Shared, i: usize, flag: u8, times: &[AtomicU64]) -> bool {
    let t = shared.now_ns() + 1;
    let _ = times[i].compare_exchange(0, t, Ordering::AcqRel, Ordering::Relaxed);
    let before = shared.records.flags[i].fetch_or(flag, Ordering::AcqRel);
    if before & flag != 0 {
        return false;
    }
    if before & (REJECTED | FINALIZED) == 0 {
        shared.resolved.fetch_add(1, Ordering::Release);
    }
    true
}

async fn reader(
    shared: Arc<Shared>,
    conn: usize,
    mut r: FrameReader<OwnedReadHalf>,
    mut shutdown: watch::Receiver<bool>,
) -> ReaderStats {
    let mut st = ReaderStats::default();
    loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            f = r.read_frame() => f,
        };
        let msg = match frame
            .map_err(|e| e.to_string())
            .and_then(|f| Message::decode(f).map_err(|e| format!("malformed message: {e}")))
        {
            Ok(m) => m,
            Err(e) => {
                if !*shutdown.borrow() {
                    shared
                        .errors
                        .lock()
                        .expect("errors lock")
                        .push(format!("connection {conn}: {e}"));
                }
                break;
            }
        };
        match msg {
            Message::TimeProof { tx, proof } => {
                let Some(&i) = shared.index.get(&proof.txid) else {
                    st.unexpected += 1;
                    continue;
                };
                let i = i as usize;
                let check =
                    shared.verify == VerifyProofs::All || shared.plan.subs[i].pair.is_some();
                if check
                    && (tx.txid() != proof.txid
                        || proof.verify(shared.chain_id, &shared.registry).is_err())
                {
                    st.bad_proofs += 1;
                    shared.records.flags[i].fetch_or(BAD_PROOF, Ordering::AcqRel);
                    continue;
                }
                if mark(&shared, i, FINALIZED, &shared.records.finalized_ns) {
                    shared.counters.finalized.fetch_add(1, Ordering::Relaxed);
                } else {
                    st.duplicates += 1;
                }
            }
            Message::TransactionRejected { txid, reason, .. } => {
                let Some(&i) = shared.index.get(&txid) else {
                    st.unexpected += 1;
                    continue;
                };
                *st.reasons.entry(format!("{reason:?}")).or_default() += 1;
                if mark(&shared, i as usize, REJECTED, &shared.records.rejected_ns) {
                    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                } else {
                    st.duplicates += 1;
                }
            }
            Message::TransactionAccepted(txid) => {
                if let Some(&i) = shared.index.get(&txid) {
                    shared.records.flags[i as usize].fetch_or(ACCEPTED, Ordering::AcqRel);
                }
            }
            Message::Error { code, detail } => {
                shared.errors.lock().expect("errors lock").push(format!(
                    "connection {conn}: masternode closed it ({code}): {detail}"
                ));
                break;
            }
            _ => st.unexpected += 1,
        }
    }
    st
}

async fn show_progress(shared: Arc<Shared>, bar: ProgressBar, label: String, total: Duration) {
    let plain = bar.is_hidden();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_plain = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        tick.tick().await;
        let c = &shared.counters;
        let sent = c.sent.load(Ordering::Relaxed);
        let fin = c.finalized.load(Ordering::Relaxed);
        let rej = c.rejected.load(Ordering::Relaxed);
        let dt = last.0.elapsed().as_secs_f64();
        if dt >= 1.0 {
            rate = (fin - last.1) as f64 / dt;
            last = (Instant::now(), fin);
        }
        let t = shared.started.elapsed().as_secs_f64();
        let msg = format!(
            "{label} t={t:.1}/{:.0}s sent {sent} finalized {fin} rejected {rej} in flight {} | {rate:.0} finalized/s",
            total.as_secs_f64(),
            sent.saturating_sub(fin + rej),
        );
        if plain {
            if last_plain.elapsed() >= Duration::from_secs(5) {
                eprintln!("{msg}");
                last_plain = Instant::now();
            }
        } else {
            bar.set_message(msg);
        }
    }
}
