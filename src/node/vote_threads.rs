//! Vote verification and tallying on dedicated threads, optionally pinned to
//! cores, off the core thread; or, with no vote threads (`vote_threads = 0`,
//! the default on a host of at most two cores), on the threads that hand the
//! votes over (see [`VoteThreads::start`]).
//!
//! Each thread owns one shard of the tallies (the txids whose first bytes map
//! to it), so no lock is taken on the hot path: batches arrive through
//! crossbeam queues, a thread verifies the batches it received together with
//! one ed25519 batch verification ([`crate::sig`], ZIP 215; falling back to
//! one-by-one to find a bad signature), then sends each item to the shard owning its txid. The
//! moment a tally reaches the quorum (or approval becomes impossible) the
//! shard hands the outcome back to the node.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time_net::mailbox;

use crate::protocol::registry::Registry;
use crate::protocol::tally::{TallyEvent, VerifiedBatch, VoteAggregator};
use crate::protocol::types::{ChainId, PublicKey, Txid};
use crate::protocol::vote::VoteBatch;

/// Most batches verified together.
const VERIFY_BATCH: usize = 64;

/// Most open tallies one peer's votes may open here (all shards together):
/// tallies of transactions this node has not voted on. An honest peer at
/// ten times the target load has about 10,000 votes a second in flight for
/// well under a second each; a Byzantine one flooding votes for made-up
/// txids holds at most this many tallies (about 400 bytes each), and the
/// other voters' tallies are untouched.
pub const MAX_UNKNOWN_TALLIES_PER_VOTER: usize = 32_768;

enum ShardMsg {
    /// A peer's batch, not yet verified.
    Verify(VoteBatch),
    /// This node's own batch (signed here), or a peer's verified already.
    Own(Arc<VerifiedBatch>),
    /// Items of a verified batch that belong to this shard.
    Items(Arc<VerifiedBatch>, Vec<u32>),
    /// Report the approvals of this transaction (a side of a double spend).
    Watch(Txid),
}

#[derive(Default, Debug)]
pub struct VoteThreadStats {
    pub batches_verified: AtomicU64,
    /// Vote items in the peer batches that verified.
    pub votes_verified: AtomicU64,
    pub bad_signatures: AtomicU64,
    pub refused: AtomicU64,
    pub batch_fallbacks: AtomicU64,
    pub queue_full: AtomicU64,
    pub outcomes: AtomicU64,
}

#[derive(Clone, Debug)]
pub struct VoteThreadConfig {
    pub threads: usize,
    /// Core ids to pin thread i to (`cores[i % len]`); empty: no pinning.
    pub cores: Vec<usize>,
    pub chain_id: ChainId,
    pub me: PublicKey,
    pub quorum: u64,
    /// Undecided tallies are dropped after this long.
    pub max_age_ms: u64,
}

pub struct VoteThreads {
    /// The vote threads' queues; empty when tallying inline.
    shards: Vec<mailbox::Sender<ShardMsg>>,
    /// No vote threads: the one shard, run by whichever thread hands a
    /// message over, under this lock.
    inline: Option<Inline>,
    next: AtomicUsize,
    cfg: VoteThreadConfig,
    registry: Registry,
    pub stats: Arc<VoteThreadStats>,
}

/// The tallies when there are no vote threads. On a host of two cores
/// running several masternodes a vote thread is one more thread woken for
/// every vote batch (about 2,000 times a second at 1,000 payments/s) only
/// to hand its outcome to the core; inline, the fast path's I/O thread,
/// which verified the batch, tallies it at once.
struct Inline {
    shard: Mutex<Shard>,
    deliver: Arc<dyn Fn(Vec<TallyEvent>) + Send + Sync>,
    /// Outcomes of the core thread's own calls ([`VoteThreads::own`],
    /// [`VoteThreads::watch`]), which must not go through `deliver`: it
    /// waits for room in the core's own queue. The core takes them
    /// ([`VoteThreads::take_held`]) at the start of its next round.
    held: Mutex<Vec<TallyEvent>>,
}

/// Whether a peer's batch may be tallied here at all (before its signature
/// is looked at): this chain, this epoch, a registered voter, not us.
fn admissible(cfg: &VoteThreadConfig, registry: &Registry, b: &VoteBatch) -> bool {
    b.chain_id == cfg.chain_id
        && b.epoch == registry.epoch()
        && b.voter != cfg.me
        && registry.weight_of(&b.voter).is_some()
}

fn shard_of(txid: &Txid, n: usize) -> usize {
    let mut b = [0u8; 8];
    b.copy_from_slice(&txid.0[..8]);
    (u64::from_le_bytes(b) % n as u64) as usize
}

/// Pins the calling thread to `core` (Linux).
fn pin_to(core: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; the call
    // only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

impl VoteThreads {
    /// Starts the threads. `deliver` receives each shard's outcomes.
    ///
    /// With `cfg.threads` 0 no thread starts: one shard is tallied by the
    /// caller of each method, under a lock, and `deliver` is called on that
    /// thread, except for the outcomes of [`VoteThreads::own`] and
    /// [`VoteThreads::watch`] (the core thread's calls), which are held for
    /// [`VoteThreads::take_held`].
    pub fn start<F>(cfg: VoteThreadConfig, registry: Registry, deliver: F) -> VoteThreads
    where
        F: Fn(Vec<TallyEvent>) + Send + Sync + 'static,
    {
        let (own_cfg, own_registry) = (cfg.clone(), registry.clone());
        let stats = Arc::new(VoteThreadStats::default());
        let deliver: Arc<dyn Fn(Vec<TallyEvent>) + Send + Sync> = Arc::new(deliver);
        if cfg.threads == 0 {
            let shard = Shard::new(0, 1, cfg, registry, Vec::new(), stats.clone());
            return VoteThreads {
                shards: Vec::new(),
                inline: Some(Inline {
                    shard: Mutex::new(shard),
                    deliver,
                    held: Mutex::new(Vec::new()),
                }),
                next: AtomicUsize::new(0),
                cfg: own_cfg,
                registry: own_registry,
                stats,
            };
        }
        let n = cfg.threads;
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mailbox::bounded(1, 1 << 16)).unzip();
        for (i, rx) in rxs.into_iter().enumerate() {
            let peers = txs.clone();
            let stats = stats.clone();
            let deliver = deliver.clone();
            let registry = registry.clone();
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name(format!("votes-{i}"))
                .spawn(move || {
                    if let Some(&core) =
                        (!cfg.cores.is_empty()).then(|| &cfg.cores[i % cfg.cores.len()])
                    {
                        if !pin_to(core) {
                            tracing::warn!(thread = i, core, "could not pin vote thread");
                        }
                    }
                    Shard::new(i, n, cfg, registry, peers, stats).run(rx, &*deliver)
                })
                .expect("spawn vote thread");
        }
        VoteThreads {
            shards: txs,
            inline: None,
            next: AtomicUsize::new(0),
            cfg: own_cfg,
            registry: own_registry,
            stats,
        }
    }

    /// Hands `m` to shard `shard`; inline, tallies it now, and delivers
    /// its outcomes (`hold`: keeps them for [`VoteThreads::take_held`]).
    fn send(&self, shard: usize, m: ShardMsg, hold: bool) {
        if self.inline.is_some() {
            return self.tally_inline(vec![m], hold);
        }
        if self.shards[shard].try_send(0, m).is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Inline: tallies `msgs` under the shard's lock, then delivers (or
    /// holds) their outcomes.
    fn tally_inline(&self, msgs: Vec<ShardMsg>, hold: bool) {
        let Some(inline) = &self.inline else {
            return;
        };
        let mut events = Vec::new();
        {
            // A poisoned lock means a tally panicked mid-update; the
            // aggregator's maps stay usable, so keep counting.
            inline
                .shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handle(msgs, &mut events);
        }
        if events.is_empty() {
            return;
        }
        self.stats
            .outcomes
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        if hold {
            inline
                .held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut events);
        } else {
            // After the shard's lock is released: `deliver` may wait
            // for room in the core's queue, and the core takes that
            // lock for its own batches.
            (inline.deliver)(events);
        }
    }

    /// The next vote thread in turn (0 inline).
    fn next_shard(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len().max(1)
    }

    /// Whether votes are tallied inline (no vote threads).
    pub fn inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Inline: the outcomes of the core thread's own calls since the last
    /// take, for its next round (always empty with vote threads).
    pub fn take_held(&self) -> Vec<TallyEvent> {
        match &self.inline {
            Some(i) => std::mem::take(&mut *i.held.lock().unwrap_or_else(|e| e.into_inner())),
            None => Vec::new(),
        }
    }

    /// Whether [`VoteThreads::take_held`] has something.
    pub fn has_held(&self) -> bool {
        self.inline
            .as_ref()
            .is_some_and(|i| !i.held.lock().unwrap_or_else(|e| e.into_inner()).is_empty())
    }

    /// A peer's batch: verified on the next thread in turn (inline: now).
    pub fn submit(&self, batch: VoteBatch) {
        self.send(self.next_shard(), ShardMsg::Verify(batch), false);
    }

    /// Whether a peer's batch may be tallied (see [`VoteThreads::verified`]);
    /// a refusal is counted.
    pub fn admissible(&self, b: &VoteBatch) -> bool {
        let ok = admissible(&self.cfg, &self.registry, b);
        if !ok {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Peers' admissible batches whose signatures were checked by the
    /// caller (the fast path checks them in one batch with the datagrams'
    /// other signatures): each tallied on the next thread in turn, not
    /// verified again (inline: all now, their outcomes delivered at once).
    pub fn verified(&self, batches: Vec<VerifiedBatch>) {
        let msgs: Vec<ShardMsg> = batches
            .into_iter()
            .map(|vb| {
                self.stats.batches_verified.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .votes_verified
                    .fetch_add(vb.batch.items.len() as u64, Ordering::Relaxed);
                ShardMsg::Own(Arc::new(vb))
            })
            .collect();
        if self.inline.is_some() {
            if !msgs.is_empty() {
                self.tally_inline(msgs, false);
            }
            return;
        }
        for m in msgs {
            self.send(self.next_shard(), m, false);
        }
    }

    /// Report every approval of `txid` from now on, and those its tally
    /// holds (`TallyEvent::Approval`), on the shard that owns it. Called by
    /// the core thread (inline, the outcomes are held).
    pub fn watch(&self, txid: Txid) {
        let shard = shard_of(&txid, self.shards.len().max(1));
        self.send(shard, ShardMsg::Watch(txid), true);
    }

    /// This node's own batch. Called by the core thread (inline, the
    /// outcomes are held).
    pub fn own(&self, batch: VoteBatch) {
        let m = ShardMsg::Own(Arc::new(VerifiedBatch::own(batch)));
        self.send(self.next_shard(), m, true);
    }
}

struct Shard {
    index: usize,
    /// Shards in all (1 inline).
    count: usize,
    agg: VoteAggregator,
    registry: Registry,
    cfg: VoteThreadConfig,
    /// Every shard's queue (empty inline).
    peers: Vec<mailbox::Sender<ShardMsg>>,
    stats: Arc<VoteThreadStats>,
    /// The shard's clock: tally ages only.
    start: Instant,
    last_expire: u64,
}

impl Shard {
    fn new(
        index: usize,
        count: usize,
        cfg: VoteThreadConfig,
        registry: Registry,
        peers: Vec<mailbox::Sender<ShardMsg>>,
        stats: Arc<VoteThreadStats>,
    ) -> Shard {
        Shard {
            index,
            count,
            agg: VoteAggregator::new(registry.clone(), cfg.quorum, 1 << 20)
                .with_voter_share(MAX_UNKNOWN_TALLIES_PER_VOTER / count, cfg.me),
            registry,
            cfg,
            peers,
            stats,
            start: Instant::now(),
            last_expire: 0,
        }
    }

    fn run(mut self, rx: mailbox::Receiver<ShardMsg>, deliver: &dyn Fn(Vec<TallyEvent>)) {
        let mut events = Vec::new();
        loop {
            let mut msgs: Vec<ShardMsg> = Vec::new();
            // The only timed work is the expiry, once a second.
            match rx.recv_many(&mut msgs, 1024, Duration::from_secs(1)) {
                Ok(_) | Err(mailbox::RecvTimeoutError::Timeout) => {}
                Err(mailbox::RecvTimeoutError::Disconnected) => return,
            }
            self.handle(msgs, &mut events);
            if !events.is_empty() {
                self.stats
                    .outcomes
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                deliver(std::mem::take(&mut events));
            }
        }
    }

    /// Tallies `msgs` (peers' batches verified together), the outcomes into
    /// `events`; then the once-a-second expiry if it is due (inline, it
    /// waits for the next message: no tally is opened meanwhile).
    fn handle(&mut self, msgs: impl IntoIterator<Item = ShardMsg>, events: &mut Vec<TallyEvent>) {
        let now = self.start.elapsed().as_millis() as u64;
        let mut to_verify = Vec::new();
        for m in msgs {
            match m {
                ShardMsg::Verify(b) => {
                    to_verify.push(b);
                    if to_verify.len() >= VERIFY_BATCH {
                        self.verify(now, std::mem::take(&mut to_verify), events);
                    }
                }
                ShardMsg::Own(vb) => self.route(now, vb, events),
                ShardMsg::Items(vb, idx) => self.agg.add(now, &vb, Some(&idx), events),
                ShardMsg::Watch(txid) => self.agg.watch(now, txid, events),
            }
        }
        if !to_verify.is_empty() {
            self.verify(now, to_verify, events);
        }
        if now.saturating_sub(self.last_expire) >= 1_000 {
            self.last_expire = now;
            // Tallies holding this node's own vote stay until decided.
            self.agg
                .expire_unvoted(now, self.cfg.max_age_ms, self.cfg.max_age_ms, &self.cfg.me);
        }
    }

    fn admissible(&self, b: &VoteBatch) -> bool {
        admissible(&self.cfg, &self.registry, b)
    }

    /// Verifies many batches with one ed25519 batch verification.
    fn verify(&mut self, now: u64, batches: Vec<VoteBatch>, events: &mut Vec<TallyEvent>) {
        let mut ok_shape = Vec::with_capacity(batches.len());
        for b in batches {
            if !self.admissible(&b) {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (levels, msg) = b.levels_and_message();
            ok_shape.push((b, levels, msg));
        }
        if ok_shape.is_empty() {
            return;
        }
        let items: Vec<crate::sig::Item> = ok_shape
            .iter()
            .map(|(b, _, m)| (&b.voter.0, &m[..], &b.signature))
            .collect();
        let ok = crate::sig::verify_batch_with_fallback(&items);
        if ok.contains(&false) {
            // Under ZIP 215 the batch fails exactly when one is bad.
            self.stats.batch_fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        for ((b, levels, _), ok) in ok_shape.into_iter().zip(ok) {
            if !ok {
                self.stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.batches_verified.fetch_add(1, Ordering::Relaxed);
            self.stats
                .votes_verified
                .fetch_add(b.items.len() as u64, Ordering::Relaxed);
            self.route(now, Arc::new(VerifiedBatch { batch: b, levels }), events);
        }
    }

    /// Sends each item to the shard that owns its txid.
    fn route(&mut self, now: u64, vb: Arc<VerifiedBatch>, events: &mut Vec<TallyEvent>) {
        let n = self.count;
        let mut per: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, item) in vb.batch.items.iter().enumerate() {
            per[shard_of(&item.txid, n)].push(i as u32);
        }
        for (s, idx) in per.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            if s == self.index {
                self.agg.add(now, &vb, Some(&idx), events);
            } else if self.peers[s]
                .try_send(0, ShardMsg::Items(vb.clone(), idx))
                .is_err()
            {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::registry::{Masternode, Tier};
    use crate::protocol::vote::{Decision, VoteItem};
    use ed25519_dalek::SigningKey;

    fn registry(keys: &[SigningKey]) -> Registry {
        Registry::new(
            1,
            keys.iter()
                .map(|k| Masternode {
                    key: PublicKey::from_signing(k),
                    address: "127.0.0.1:1".into(),
                    tier: Tier::Bronze,
                })
                .collect(),
        )
        .unwrap()
    }

    /// `threads` vote threads (0: inline) for `keys[0]`; their outcomes
    /// arrive on the receiver.
    fn start(
        keys: &[SigningKey],
        reg: &Registry,
        threads: usize,
    ) -> (VoteThreads, crossbeam::channel::Receiver<TallyEvent>) {
        let (tx, rx) = crossbeam::channel::unbounded();
        let vt = VoteThreads::start(
            VoteThreadConfig {
                threads,
                cores: vec![],
                chain_id: 1,
                me: PublicKey::from_signing(&keys[0]),
                quorum: reg.quorum(),
                max_age_ms: 60_000,
            },
            reg.clone(),
            move |ev| {
                for e in ev {
                    let _ = tx.send(e);
                }
            },
        );
        (vt, rx)
    }

    /// The next outcome: one the core would take from the held ones
    /// (inline), else from the delivered ones.
    fn next_event(
        vt: &VoteThreads,
        rx: &crossbeam::channel::Receiver<TallyEvent>,
        held: &mut Vec<TallyEvent>,
    ) -> Option<TallyEvent> {
        held.extend(vt.take_held());
        if !held.is_empty() {
            return Some(held.remove(0));
        }
        rx.recv_timeout(Duration::from_millis(100)).ok()
    }

    #[test]
    fn a_watched_transaction_reports_its_approvals_from_any_shard() {
        for threads in [3, 0] {
            a_watched_transaction_reports_its_approvals(threads);
        }
    }

    fn a_watched_transaction_reports_its_approvals(threads: usize) {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let reg = registry(&keys);
        let (vt, rx) = start(&keys, &reg, threads);
        assert_eq!(vt.inline(), threads == 0);
        let t = Txid([7; 32]);
        let approve = vec![VoteItem {
            txid: t,
            decision: Decision::Approve,
        }];
        // One approval counted before the watch, one after.
        vt.submit(VoteBatch::sign(1, 1, &keys[1], approve.clone()));
        std::thread::sleep(Duration::from_millis(300));
        vt.watch(t);
        vt.submit(VoteBatch::sign(1, 1, &keys[2], approve));
        let mut voters = std::collections::HashSet::new();
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while voters.len() < 2 && Instant::now() < deadline {
            if let Some(TallyEvent::Approval { txid, cert }) = next_event(&vt, &rx, &mut held) {
                assert_eq!(txid, t);
                assert!(cert.signed_message(1, &t).is_some());
                voters.insert(cert.voter);
            }
        }
        let expected: std::collections::HashSet<_> =
            keys[1..3].iter().map(PublicKey::from_signing).collect();
        assert_eq!(voters, expected);
    }

    #[test]
    fn sharded_threads_reach_quorum_once_per_transaction() {
        for threads in [3, 0] {
            reach_quorum_once_per_transaction(threads);
        }
    }

    fn reach_quorum_once_per_transaction(threads: usize) {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let reg = registry(&keys);
        let (vt, rx) = start(&keys, &reg, threads);
        let txids: Vec<Txid> = (0..200u32)
            .map(|i| {
                let mut t = [0u8; 32];
                t[..4].copy_from_slice(&i.to_le_bytes());
                t[31] = 9;
                Txid(t)
            })
            .collect();
        let items: Vec<VoteItem> = txids
            .iter()
            .map(|t| VoteItem {
                txid: *t,
                decision: Decision::Approve,
            })
            .collect();
        vt.own(VoteBatch::sign(1, 1, &keys[0], items.clone()));
        let mut forged = VoteBatch::sign(1, 1, &keys[3], items.clone());
        forged.voter = PublicKey::from_signing(&keys[2]);
        vt.submit(forged);
        vt.submit(VoteBatch::sign(1, 1, &keys[1], items.clone()));
        // Own + one peer = 2 of 4 so far: no quorum. The forged batch adds nothing.
        let mut quorums = std::collections::HashSet::new();
        let mut held = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        vt.submit(VoteBatch::sign(1, 1, &keys[3], items));
        while quorums.len() < 200 && Instant::now() < deadline {
            if let Some(TallyEvent::Quorum { txid, votes, .. }) = next_event(&vt, &rx, &mut held) {
                let p = crate::protocol::timeproof::TimeProof {
                    chain_id: 1,
                    txid,
                    votes,
                };
                assert!(p.verify(1, &reg).is_ok());
                assert!(quorums.insert(txid), "second quorum for {txid:?}");
            }
        }
        assert_eq!(quorums.len(), 200);
        assert!(vt.stats.bad_signatures.load(Ordering::Relaxed) >= 1);
    }

    /// Inline, this node's own batch completing a quorum: the outcome is
    /// held for the core (the core thread never waits on its own queue),
    /// not delivered, and taken once.
    #[test]
    fn inline_outcomes_of_the_cores_own_calls_are_held_for_it() {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let reg = registry(&keys);
        let (vt, rx) = start(&keys, &reg, 0);
        let t = Txid([3; 32]);
        let approve = vec![VoteItem {
            txid: t,
            decision: Decision::Approve,
        }];
        vt.submit(VoteBatch::sign(1, 1, &keys[1], approve.clone()));
        vt.submit(VoteBatch::sign(1, 1, &keys[2], approve.clone()));
        // Delivered (a peer's call): the first approval, no quorum yet.
        let early: Vec<TallyEvent> = rx.try_iter().collect();
        assert!(
            matches!(early.as_slice(), [TallyEvent::Approving { txid, .. }] if *txid == t),
            "two of four: {early:?}"
        );
        assert!(!vt.has_held());
        vt.own(VoteBatch::sign(1, 1, &keys[0], approve));
        assert!(rx.try_recv().is_err(), "not delivered");
        assert!(vt.has_held());
        let held = vt.take_held();
        assert!(
            matches!(held.as_slice(), [TallyEvent::Quorum { txid, .. }] if *txid == t),
            "{held:?}"
        );
        assert!(vt.take_held().is_empty());
    }
}
