//! Vote verification and tallying on dedicated threads, optionally pinned to
//! cores, off the core thread.
//!
//! Each thread owns one shard of the tallies (the txids whose first bytes map
//! to it), so no lock is taken on the hot path: batches arrive through
//! crossbeam queues, a thread verifies the batches it received together with
//! one ed25519 batch verification ([`crate::sig`], ZIP 215; falling back to
//! one-by-one to find a bad signature), then sends each item to the shard owning its txid. The
//! moment a tally reaches the quorum (or approval becomes impossible) the
//! shard hands the outcome back to the node.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
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
    shards: Vec<mailbox::Sender<ShardMsg>>,
    next: AtomicUsize,
    cfg: VoteThreadConfig,
    registry: Registry,
    pub stats: Arc<VoteThreadStats>,
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
    pub fn start<F>(cfg: VoteThreadConfig, registry: Registry, deliver: F) -> VoteThreads
    where
        F: Fn(Vec<TallyEvent>) + Send + Sync + 'static,
    {
        let n = cfg.threads.max(1);
        let (own_cfg, own_registry) = (cfg.clone(), registry.clone());
        let stats = Arc::new(VoteThreadStats::default());
        let deliver = Arc::new(deliver);
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
                    Shard {
                        index: i,
                        agg: VoteAggregator::new(registry.clone(), cfg.quorum, 1 << 20)
                            .with_voter_share(MAX_UNKNOWN_TALLIES_PER_VOTER / n, cfg.me),
                        registry,
                        cfg,
                        peers,
                        stats,
                    }
                    .run(rx, &*deliver)
                })
                .expect("spawn vote thread");
        }
        VoteThreads {
            shards: txs,
            next: AtomicUsize::new(0),
            cfg: own_cfg,
            registry: own_registry,
            stats,
        }
    }

    fn send(&self, shard: usize, m: ShardMsg) {
        if self.shards[shard].try_send(0, m).is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A peer's batch: verified on the next thread in turn.
    pub fn submit(&self, batch: VoteBatch) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.send(i, ShardMsg::Verify(batch));
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

    /// A peer's admissible batch whose signature was checked by the caller
    /// (the fast path checks it in one batch with the datagram's other
    /// signatures): tallied on the next thread in turn, not verified again.
    pub fn verified(&self, vb: VerifiedBatch) {
        self.stats.batches_verified.fetch_add(1, Ordering::Relaxed);
        self.stats
            .votes_verified
            .fetch_add(vb.batch.items.len() as u64, Ordering::Relaxed);
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.send(i, ShardMsg::Own(Arc::new(vb)));
    }

    /// Report every approval of `txid` from now on, and those its tally
    /// holds (`TallyEvent::Approval`), on the shard that owns it.
    pub fn watch(&self, txid: Txid) {
        self.send(shard_of(&txid, self.shards.len()), ShardMsg::Watch(txid));
    }

    /// This node's own batch.
    pub fn own(&self, batch: VoteBatch) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        self.send(i, ShardMsg::Own(Arc::new(VerifiedBatch::own(batch))));
    }
}

struct Shard {
    index: usize,
    agg: VoteAggregator,
    registry: Registry,
    cfg: VoteThreadConfig,
    peers: Vec<mailbox::Sender<ShardMsg>>,
    stats: Arc<VoteThreadStats>,
}

impl Shard {
    fn run(mut self, rx: mailbox::Receiver<ShardMsg>, deliver: &dyn Fn(Vec<TallyEvent>)) {
        let start = Instant::now();
        let mut last_expire = 0;
        let mut to_verify = Vec::new();
        let mut events = Vec::new();
        loop {
            let mut msgs: Vec<ShardMsg> = Vec::new();
            // The only timed work is the expiry below, once a second.
            match rx.recv_many(&mut msgs, 1024, Duration::from_secs(1)) {
                Ok(_) | Err(mailbox::RecvTimeoutError::Timeout) => {}
                Err(mailbox::RecvTimeoutError::Disconnected) => return,
            }
            let now = start.elapsed().as_millis() as u64;
            for m in msgs {
                match m {
                    ShardMsg::Verify(b) => {
                        to_verify.push(b);
                        if to_verify.len() >= VERIFY_BATCH {
                            self.verify(now, std::mem::take(&mut to_verify), &mut events);
                        }
                    }
                    ShardMsg::Own(vb) => self.route(now, vb, &mut events),
                    ShardMsg::Items(vb, idx) => self.agg.add(now, &vb, Some(&idx), &mut events),
                    ShardMsg::Watch(txid) => self.agg.watch(now, txid, &mut events),
                }
            }
            if !to_verify.is_empty() {
                self.verify(now, std::mem::take(&mut to_verify), &mut events);
            }
            if !events.is_empty() {
                self.stats
                    .outcomes
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                deliver(std::mem::take(&mut events));
            }
            if now.saturating_sub(last_expire) >= 1_000 {
                last_expire = now;
                // Tallies holding this node's own vote stay until decided.
                self.agg.expire_unvoted(
                    now,
                    self.cfg.max_age_ms,
                    self.cfg.max_age_ms,
                    &self.cfg.me,
                );
            }
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
        let n = self.peers.len();
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

    /// Three vote threads for `keys[0]`; their outcomes arrive on the
    /// receiver.
    fn start(
        keys: &[SigningKey],
        reg: &Registry,
    ) -> (VoteThreads, crossbeam::channel::Receiver<TallyEvent>) {
        let (tx, rx) = crossbeam::channel::unbounded();
        let vt = VoteThreads::start(
            VoteThreadConfig {
                threads: 3,
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

    #[test]
    fn a_watched_transaction_reports_its_approvals_from_any_shard() {
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let reg = registry(&keys);
        let (vt, rx) = start(&keys, &reg);
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
        let deadline = Instant::now() + Duration::from_secs(10);
        while voters.len() < 2 && Instant::now() < deadline {
            if let Ok(TallyEvent::Approval { txid, cert }) =
                rx.recv_timeout(Duration::from_millis(100))
            {
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
        let keys: Vec<SigningKey> = (1..=4).map(|i| SigningKey::from_bytes(&[i; 32])).collect();
        let reg = registry(&keys);
        let (vt, rx) = start(&keys, &reg);
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
        let deadline = Instant::now() + Duration::from_secs(10);
        vt.submit(VoteBatch::sign(1, 1, &keys[3], items));
        while quorums.len() < 200 && Instant::now() < deadline {
            if let Ok(TallyEvent::Quorum { txid, votes, .. }) =
                rx.recv_timeout(Duration::from_millis(100))
            {
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
}
