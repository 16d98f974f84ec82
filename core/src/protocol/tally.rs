//! Stake-weighted vote tallying: the one implementation of "quorum reached"
//! and "approval impossible". Pure and shardable: a `VoteAggregator` may own
//! every txid (inside the engine) or only the txids of one shard (on a
//! dedicated thread in the node); a txid's votes always land in one place, so
//! no lock is shared.
//!
//! It rejects nothing by itself: the caller hands it batches whose signature
//! it verified and whose voter is registered. It counts each voter once per
//! txid, reports a voter that changes its decision, and yields each
//! transaction's outcome exactly once.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::evidence::Equivocation;
use crate::protocol::registry::Registry;
use crate::protocol::types::{PublicKey, Txid};
use crate::protocol::validation::RejectCode;
use crate::protocol::vote::{Decision, VoteBatch, VoteCert};

/// A signed batch whose signature has been checked, with its Merkle levels
/// kept so certificates can be cut without hashing again.
#[derive(Debug)]
pub struct VerifiedBatch {
    pub batch: VoteBatch,
    pub levels: Vec<Vec<[u8; 32]>>,
}

impl VerifiedBatch {
    /// Verifies the signature ([`crate::sig`], ZIP 215) and keeps the tree.
    pub fn verify(batch: VoteBatch) -> Option<VerifiedBatch> {
        let levels = batch.verify()?;
        Some(VerifiedBatch { batch, levels })
    }

    /// For a batch this node signed itself: no verification needed.
    pub fn own(batch: VoteBatch) -> VerifiedBatch {
        let levels =
            crate::protocol::vote::merkle_levels(batch.items.iter().map(|i| i.leaf()).collect());
        VerifiedBatch { batch, levels }
    }
}

/// What a tally produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TallyEvent {
    /// Approve weight reached the quorum: these certificates form a TimeProof.
    Quorum {
        txid: Txid,
        votes: Vec<VoteCert>,
        weight: u64,
    },
    /// Reject weight exceeds `W - q`: approval can no longer reach the quorum.
    Impossible {
        txid: Txid,
        reject_weight: u64,
        rejecters: Vec<(PublicKey, RejectCode)>,
    },
    /// The first approval arrived (the inputs move to SpentPending).
    Approving { txid: Txid, weight: u64 },
    /// An approval of a watched transaction ([`VoteAggregator::watch`]):
    /// one side of a double spend. The engine compares approvers across the
    /// sides (the tallies do not see inputs, and the sides may be tallied on
    /// different shards).
    Approval { txid: Txid, cert: VoteCert },
    /// A voter signed two different decisions on one transaction.
    Equivocation {
        voter: PublicKey,
        txid: Txid,
        /// The two signed certificates that contradict each other.
        evidence: Box<Equivocation>,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TallyStats {
    pub votes: u64,
    pub duplicates: u64,
    pub equivocations: u64,
    /// Votes for new txids refused because `max_open` tallies were open.
    pub dropped_full: u64,
    /// Watches refused because [`MAX_WATCHED`] transactions were watched.
    pub watch_refused: u64,
}

#[derive(Debug, Default)]
struct Tally {
    approve: u64,
    reject: u64,
    /// Each voter's decision and where its certificate comes from.
    voters: HashMap<PublicKey, (Decision, Arc<VerifiedBatch>, u32)>,
    approvals: Vec<(Arc<VerifiedBatch>, u32)>,
    rejecters: Vec<(PublicKey, RejectCode)>,
    first_vote_ms: u64,
    /// The voter whose vote opened this tally (counted in `opened_by`).
    opener: PublicKey,
}

pub struct VoteAggregator {
    registry: Registry,
    quorum: u64,
    tallies: HashMap<Txid, Tally>,
    /// Transactions whose outcome was produced, and when: a compact record
    /// (not counted against `max_open`) so late votes cannot start a second
    /// tally for them.
    finished: HashMap<Txid, u64>,
    max_open: usize,
    /// Open tallies per voter that opened them: no voter may open more than
    /// its share (`max_open / voters`), so one Byzantine voter's flood of
    /// votes for made-up txids cannot take the room real payments need.
    opened_by: HashMap<PublicKey, usize>,
    /// Most tallies one voter may open (default `max_open / voters`).
    voter_share: usize,
    /// A voter without that limit: this node, whose own votes open the
    /// tallies of the transactions it knows (bounded by its mempool).
    unlimited: Option<PublicKey>,
    /// Transactions whose approvals are reported ([`TallyEvent::Approval`]),
    /// and since when.
    watched: HashMap<Txid, u64>,
    stats: TallyStats,
}

/// Most transactions watched at once per aggregator: the sides of double
/// spends this node saw (two per conflict). A flood of conflicts beyond it
/// is not watched (counted in [`TallyStats::watch_refused`]); nothing else
/// depends on the watch.
pub const MAX_WATCHED: usize = 16_384;

impl VoteAggregator {
    /// `quorum` is the registry's, except in the simulator's planted-bug runs.
    pub fn new(registry: Registry, quorum: u64, max_open: usize) -> Self {
        let voter_share = (max_open / registry.len().max(1)).max(1);
        VoteAggregator {
            registry,
            quorum,
            tallies: HashMap::new(),
            finished: HashMap::new(),
            max_open,
            opened_by: HashMap::new(),
            voter_share,
            unlimited: None,
            watched: HashMap::new(),
            stats: TallyStats::default(),
        }
    }

    /// From now on, reports every approval of `txid` as a
    /// [`TallyEvent::Approval`], starting with those its open tally holds.
    /// Approvals counted before and already dropped with a finished tally
    /// are not reported (the engine has the proof of a final one).
    pub fn watch(&mut self, now: u64, txid: Txid, out: &mut Vec<TallyEvent>) {
        if self.watched.contains_key(&txid) {
            return;
        }
        if self.watched.len() >= MAX_WATCHED {
            self.stats.watch_refused += 1;
            return;
        }
        self.watched.insert(txid, now);
        if let Some(t) = self.tallies.get(&txid) {
            for (vb, i) in &t.approvals {
                out.push(TallyEvent::Approval {
                    txid,
                    cert: vb.batch.cert(&vb.levels, *i as usize),
                });
            }
        }
    }

    fn report_approval(
        &self,
        txid: Txid,
        decision: Decision,
        vb: &VerifiedBatch,
        index: u32,
        out: &mut Vec<TallyEvent>,
    ) {
        if decision.is_approve() && self.watched.contains_key(&txid) {
            out.push(TallyEvent::Approval {
                txid,
                cert: vb.batch.cert(&vb.levels, index as usize),
            });
        }
    }

    /// Caps the tallies any voter but `me` may open at `share`: those are
    /// tallies of transactions this node does not know (yet), and `share`
    /// bounds what one Byzantine voter's flood of votes for made-up txids
    /// holds here (memory), whatever the total cap.
    pub fn with_voter_share(mut self, share: usize, me: PublicKey) -> Self {
        self.voter_share = share.max(1);
        self.unlimited = Some(me);
        self
    }

    pub fn stats(&self) -> TallyStats {
        self.stats
    }

    pub fn open(&self) -> usize {
        self.tallies.len()
    }

    /// Current approve weight for `txid`.
    pub fn approve_weight(&self, txid: &Txid) -> u64 {
        self.tallies.get(txid).map_or(0, |t| t.approve)
    }

    /// Whether an outcome was already produced for `txid`.
    pub fn is_done(&self, txid: &Txid) -> bool {
        self.finished.contains_key(txid)
    }

    /// Counts items `indices` of a verified batch (all items when `None`).
    /// The voter must be registered; unregistered voters are ignored.
    pub fn add(
        &mut self,
        now: u64,
        vb: &Arc<VerifiedBatch>,
        indices: Option<&[u32]>,
        out: &mut Vec<TallyEvent>,
    ) {
        let voter = vb.batch.voter;
        let Some(weight) = self.registry.weight_of(&voter) else {
            return;
        };
        let all: Vec<u32>;
        let indices = match indices {
            Some(i) => i,
            None => {
                all = (0..vb.batch.items.len() as u32).collect();
                &all
            }
        };
        for &i in indices {
            let Some(item) = vb.batch.items.get(i as usize) else {
                continue;
            };
            self.add_one(now, vb, i, item.txid, item.decision, voter, weight, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_one(
        &mut self,
        now: u64,
        vb: &Arc<VerifiedBatch>,
        index: u32,
        txid: Txid,
        decision: Decision,
        voter: PublicKey,
        weight: u64,
        out: &mut Vec<TallyEvent>,
    ) {
        if self.finished.contains_key(&txid) {
            self.stats.duplicates += 1;
            // A late approval of a decided side still shows a double vote.
            self.report_approval(txid, decision, vb, index, out);
            return;
        }
        if !self.tallies.contains_key(&txid) {
            let opened = self.opened_by.get(&voter).copied().unwrap_or(0);
            let limited = self.unlimited != Some(voter);
            if self.tallies.len() >= self.max_open || (limited && opened >= self.voter_share) {
                self.stats.dropped_full += 1;
                return;
            }
            *self.opened_by.entry(voter).or_default() += 1;
        }
        let (quorum, total) = (self.quorum, self.registry.total_weight());
        let t = self.tallies.entry(txid).or_insert_with(|| Tally {
            first_vote_ms: now,
            opener: voter,
            ..Tally::default()
        });
        match t.voters.get(&voter) {
            Some((d, _, _)) if *d == decision => {
                self.stats.duplicates += 1;
                return;
            }
            Some((_, first_vb, first_i)) => {
                self.stats.equivocations += 1;
                let evidence = Box::new(Equivocation {
                    txid,
                    first: first_vb.batch.cert(&first_vb.levels, *first_i as usize),
                    second: vb.batch.cert(&vb.levels, index as usize),
                });
                out.push(TallyEvent::Equivocation {
                    voter,
                    txid,
                    evidence,
                });
                return;
            }
            None => {}
        }
        self.stats.votes += 1;
        t.voters.insert(voter, (decision, vb.clone(), index));
        if decision.is_approve() && self.watched.contains_key(&txid) {
            out.push(TallyEvent::Approval {
                txid,
                cert: vb.batch.cert(&vb.levels, index as usize),
            });
        }
        match decision {
            Decision::Approve => {
                t.approve += weight;
                t.approvals.push((vb.clone(), index));
            }
            Decision::Reject(code) => {
                t.reject += weight;
                t.rejecters.push((voter, code));
            }
        }
        if t.approve >= quorum {
            let votes = t
                .approvals
                .iter()
                .map(|(vb, i)| vb.batch.cert(&vb.levels, *i as usize))
                .collect();
            out.push(TallyEvent::Quorum {
                txid,
                votes,
                weight: t.approve,
            });
            self.finish(now, txid);
        } else if t.reject > total.saturating_sub(quorum) {
            out.push(TallyEvent::Impossible {
                txid,
                reject_weight: t.reject,
                rejecters: std::mem::take(&mut t.rejecters),
            });
            self.finish(now, txid);
        } else if decision.is_approve() && t.approve == weight {
            out.push(TallyEvent::Approving {
                txid,
                weight: t.approve,
            });
        }
    }

    /// An outcome was produced: drop the tally (and the batches it holds),
    /// remember only that it is done.
    fn finish(&mut self, now: u64, txid: Txid) {
        if let Some(t) = self.tallies.remove(&txid) {
            self.closed(&t.opener);
        }
        self.finished.insert(txid, now);
    }

    /// A tally opened by `opener` closed (finished or expired).
    fn closed(&mut self, opener: &PublicKey) {
        if let Some(n) = self.opened_by.get_mut(opener) {
            *n -= 1;
            if *n == 0 {
                self.opened_by.remove(opener);
            }
        }
    }

    /// Like [`VoteAggregator::expire`], but never forgets an open tally that
    /// holds a vote of `voter` (this node): a transaction this node voted on
    /// stays pending here until it is decided, and so does its tally. Tallies
    /// for transactions it never voted on (unknown txids, floods) expire.
    pub fn expire_unvoted(
        &mut self,
        now: u64,
        max_age_ms: u64,
        done_age_ms: u64,
        voter: &PublicKey,
    ) {
        let mut gone = Vec::new();
        self.tallies.retain(|_, t| {
            let keep =
                now.saturating_sub(t.first_vote_ms) < max_age_ms || t.voters.contains_key(voter);
            if !keep {
                gone.push(t.opener);
            }
            keep
        });
        for o in gone {
            self.closed(&o);
        }
        self.finished
            .retain(|_, at| now.saturating_sub(*at) < done_age_ms);
        self.watched
            .retain(|_, at| now.saturating_sub(*at) < done_age_ms);
    }

    /// Forgets open tallies older than `max_age_ms` for which `keep` is
    /// false, and finished records older than `done_age_ms`.
    pub fn expire(
        &mut self,
        now: u64,
        max_age_ms: u64,
        done_age_ms: u64,
        keep: impl Fn(&Txid) -> bool,
    ) {
        let mut gone = Vec::new();
        self.tallies.retain(|txid, t| {
            let k = now.saturating_sub(t.first_vote_ms) < max_age_ms || keep(txid);
            if !k {
                gone.push(t.opener);
            }
            k
        });
        for o in gone {
            self.closed(&o);
        }
        self.finished
            .retain(|_, at| now.saturating_sub(*at) < done_age_ms);
        self.watched
            .retain(|_, at| now.saturating_sub(*at) < done_age_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::registry::{Masternode, Tier};
    use crate::protocol::vote::VoteItem;
    use ed25519_dalek::SigningKey;

    fn setup(tiers: &[Tier]) -> (Vec<SigningKey>, Registry) {
        let keys: Vec<SigningKey> = (0..tiers.len())
            .map(|i| SigningKey::from_bytes(&[i as u8 + 1; 32]))
            .collect();
        let reg = Registry::new(
            1,
            keys.iter()
                .zip(tiers)
                .map(|(k, t)| Masternode {
                    key: PublicKey::from_signing(k),
                    address: "127.0.0.1:1".into(),
                    tier: *t,
                })
                .collect(),
        )
        .unwrap();
        (keys, reg)
    }

    fn vote(k: &SigningKey, txid: Txid, d: Decision) -> Arc<VerifiedBatch> {
        Arc::new(
            VerifiedBatch::verify(VoteBatch::sign(
                1,
                1,
                k,
                vec![VoteItem { txid, decision: d }],
            ))
            .unwrap(),
        )
    }

    #[test]
    fn quorum_exactly_once_with_a_verifying_proof() {
        let (keys, reg) = setup(&[Tier::Bronze; 4]);
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 100);
        let t = Txid([1; 32]);
        let mut out = Vec::new();
        for k in &keys[..2] {
            agg.add(0, &vote(k, t, Decision::Approve), None, &mut out);
        }
        assert!(matches!(out[..], [TallyEvent::Approving { .. }]));
        out.clear();
        agg.add(0, &vote(&keys[2], t, Decision::Approve), None, &mut out);
        let TallyEvent::Quorum { votes, weight, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(*weight, 3);
        let proof = crate::protocol::timeproof::TimeProof {
            chain_id: 1,
            txid: t,
            votes: votes.clone(),
        };
        assert_eq!(proof.verify(1, &reg), Ok(3));
        out.clear();
        agg.add(0, &vote(&keys[3], t, Decision::Approve), None, &mut out);
        assert!(out.is_empty(), "a second outcome: {out:?}");
    }

    #[test]
    fn watches_are_capped_and_expire() {
        let (_, reg) = setup(&[Tier::Bronze, Tier::Bronze, Tier::Bronze]);
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 1_000);
        let mut out = Vec::new();
        for i in 0..=MAX_WATCHED as u64 {
            let mut t = [0u8; 32];
            t[..8].copy_from_slice(&i.to_le_bytes());
            agg.watch(0, Txid(t), &mut out);
        }
        assert_eq!(agg.watched.len(), MAX_WATCHED);
        assert_eq!(agg.stats().watch_refused, 1);
        agg.expire(10_000, 5_000, 5_000, |_| false);
        assert!(
            agg.watched.is_empty(),
            "watches expire with finished records"
        );
    }

    #[test]
    fn duplicates_equivocation_and_impossible() {
        let (keys, reg) = setup(&[Tier::Bronze; 4]);
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 100);
        let t = Txid([2; 32]);
        let mut out = Vec::new();
        let a = vote(&keys[0], t, Decision::Approve);
        agg.add(0, &a, None, &mut out);
        agg.add(0, &a, None, &mut out);
        assert_eq!(agg.stats().duplicates, 1);
        agg.add(
            0,
            &vote(&keys[0], t, Decision::Reject(RejectCode::InputLocked)),
            None,
            &mut out,
        );
        let ev = out
            .iter()
            .find_map(|e| match e {
                TallyEvent::Equivocation {
                    voter,
                    txid,
                    evidence,
                } if *voter == PublicKey::from_signing(&keys[0]) && *txid == t => {
                    Some(evidence.clone())
                }
                _ => None,
            })
            .expect("equivocation reported");
        assert!(ev.verify(1, &reg), "the evidence verifies offline");
        let mut forged = (*ev).clone();
        forged.second.signature[0] ^= 1;
        assert!(!forged.verify(1, &reg));
        out.clear();
        // W=4, q=3: two rejects make approval impossible.
        agg.add(
            0,
            &vote(&keys[1], t, Decision::Reject(RejectCode::InputLocked)),
            None,
            &mut out,
        );
        assert!(out.is_empty());
        agg.add(
            0,
            &vote(&keys[2], t, Decision::Reject(RejectCode::InputSpent)),
            None,
            &mut out,
        );
        assert!(
            matches!(&out[..], [TallyEvent::Impossible { reject_weight: 2, rejecters, .. }] if rejecters.len() == 2)
        );
    }

    #[test]
    fn weights_follow_tiers() {
        // W = 100 + 10 + 1 = 111, q = 75: silver and bronze together are not
        // enough; gold alone is.
        let (keys, reg) = setup(&[Tier::Gold, Tier::Silver, Tier::Bronze]);
        assert_eq!(reg.quorum(), 75);
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 100);
        let t = Txid([3; 32]);
        let mut out = Vec::new();
        agg.add(0, &vote(&keys[1], t, Decision::Approve), None, &mut out);
        agg.add(0, &vote(&keys[2], t, Decision::Approve), None, &mut out);
        assert!(!out.iter().any(|e| matches!(e, TallyEvent::Quorum { .. })));
        agg.add(0, &vote(&keys[0], t, Decision::Approve), None, &mut out);
        assert!(out
            .iter()
            .any(|e| matches!(e, TallyEvent::Quorum { weight: 111, .. })));
    }

    #[test]
    fn full_aggregator_counts_drops() {
        let (keys, reg) = setup(&[Tier::Bronze; 4]);
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 1);
        let mut out = Vec::new();
        agg.add(
            0,
            &vote(&keys[0], Txid([1; 32]), Decision::Approve),
            None,
            &mut out,
        );
        agg.add(
            0,
            &vote(&keys[0], Txid([2; 32]), Decision::Approve),
            None,
            &mut out,
        );
        assert_eq!(agg.stats().dropped_full, 1);
        agg.expire(100, 50, 50, |_| false);
        assert_eq!(agg.open(), 0);
    }

    #[test]
    fn one_voter_cannot_take_every_open_tally() {
        let (keys, reg) = setup(&[Tier::Bronze; 4]);
        // Room for 8 open tallies: 2 per voter.
        let mut agg = VoteAggregator::new(reg.clone(), reg.quorum(), 8);
        let mut out = Vec::new();
        for n in 0..100u8 {
            agg.add(
                0,
                &vote(&keys[0], Txid([n; 32]), Decision::Approve),
                None,
                &mut out,
            );
        }
        assert_eq!(agg.open(), 2, "the flooding voter got its share only");
        assert_eq!(agg.stats().dropped_full, 98);
        // A real payment's votes from the others still open and finish it.
        let real = Txid([200; 32]);
        for k in &keys[1..] {
            agg.add(1, &vote(k, real, Decision::Approve), None, &mut out);
        }
        assert!(out
            .iter()
            .any(|e| matches!(e, TallyEvent::Quorum { txid, .. } if *txid == real)));
        // Finished and expired tallies give their share back.
        agg.expire(100_000, 1_000, 1_000, |_| false);
        assert_eq!(agg.open(), 0);
        agg.add(
            100_001,
            &vote(&keys[0], Txid([150; 32]), Decision::Approve),
            None,
            &mut out,
        );
        assert_eq!(agg.open(), 1);
    }
}
