//! Engine behaviour with N in-process masternodes and perfect delivery.

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;

use super::*;
use crate::protocol::registry::Tier;
use crate::protocol::types::{TxOutput, COIN};
use crate::storage::{Genesis, MemoryStore, Store};
use crate::testkit::{self, address_of, genesis_outpoint};

enum Msg {
    Tx(Transaction),
    Votes(VoteBatch),
    ProofRequest(Txid, usize),
    Proof(Transaction, TimeProof),
}

struct Cluster {
    genesis: Genesis,
    keys: Vec<SigningKey>,
    engines: Vec<Option<Engine>>,
    stores: Vec<MemoryStore>,
    inbox: VecDeque<(usize, Msg)>,
    events: Vec<Vec<Event>>,
    now: u64,
}

impl Cluster {
    fn new(n: usize, wallets: &[SigningKey]) -> Self {
        let keys: Vec<_> = (0..n as u64)
            .map(|i| testkit::key_from_seed("mn", i))
            .collect();
        let genesis = testkit::genesis(7, &keys, Tier::Bronze, wallets, 4, 10 * COIN);
        let mut stores = vec![MemoryStore::new(); n];
        let engines = (0..n)
            .map(|i| {
                Some(testkit::engine_with_store(
                    &genesis,
                    keys[i].clone(),
                    &mut stores[i],
                ))
            })
            .collect();
        Cluster {
            genesis,
            keys,
            engines,
            stores,
            inbox: VecDeque::new(),
            events: vec![Vec::new(); n],
            now: 1,
        }
    }

    fn crash(&mut self, i: usize) {
        self.engines[i] = None;
    }

    fn restart(&mut self, i: usize) {
        self.engines[i] = Some(testkit::engine_with_store(
            &self.genesis,
            self.keys[i].clone(),
            &mut self.stores[i],
        ));
    }

    fn flush(&mut self, i: usize) {
        let Some(e) = self.engines[i].as_mut() else {
            return;
        };
        let round = e.end_round(self.now);
        self.stores[i].apply(&round.writes).unwrap();
        for out in round.outputs {
            for j in 0..self.engines.len() {
                if j == i {
                    continue;
                }
                match &out {
                    Output::BroadcastTransaction(tx) => {
                        self.inbox.push_back((j, Msg::Tx((**tx).clone())))
                    }
                    Output::BroadcastVotes(b) => {
                        self.inbox.push_back((j, Msg::Votes((**b).clone())))
                    }
                    Output::RequestProof(t) => self.inbox.push_back((j, Msg::ProofRequest(*t, i))),
                    // The engine tallies itself here (no external tally).
                    Output::WatchApprovals(_) | Output::Event(_) => {}
                }
            }
            if let Output::Event(ev) = out {
                self.events[i].push(ev);
            }
        }
    }

    fn run(&mut self) {
        for i in 0..self.engines.len() {
            self.flush(i);
        }
        while let Some((to, msg)) = self.inbox.pop_front() {
            self.now += 1;
            let now = self.now;
            let Some(e) = self.engines[to].as_mut() else {
                continue;
            };
            match msg {
                Msg::Tx(tx) => e.handle_transaction(now, tx, Origin::Peer, false),
                Msg::Votes(b) => e.handle_votes(now, b),
                Msg::Proof(tx, p) => e.handle_proof(now, tx, p),
                Msg::ProofRequest(t, from) => {
                    if let (Ok(Some(p)), Ok(Some(tx))) = (
                        self.stores[to].get_proof(&t),
                        self.stores[to].get_transaction(&t),
                    ) {
                        self.inbox.push_back((from, Msg::Proof(tx, p)));
                    }
                }
            }
            self.flush(to);
        }
    }

    fn submit(&mut self, node: usize, tx: Transaction) {
        self.now += 1;
        let now = self.now;
        self.engines[node]
            .as_mut()
            .unwrap()
            .handle_transaction(now, tx, Origin::Wallet, false);
    }

    fn finalized_at(&self, i: usize, txid: &Txid) -> Option<Arc<TimeProof>> {
        self.events[i].iter().find_map(|e| match e {
            Event::Finalized { txid: t, proof, .. } if t == txid => Some(proof.clone()),
            _ => None,
        })
    }

    fn rejected_at(&self, i: usize, txid: &Txid) -> Option<RejectCode> {
        self.events[i].iter().find_map(|e| match e {
            Event::Rejected {
                txid: t, reason, ..
            } if t == txid => Some(*reason),
            _ => None,
        })
    }
}

fn wallet(i: u64) -> SigningKey {
    testkit::key_from_seed("wallet", i)
}

fn pay(
    from: &SigningKey,
    coin: u32,
    wallet_index: u32,
    to: &SigningKey,
    amount: u64,
) -> Transaction {
    Transaction::build_signed(
        7,
        from,
        &[genesis_outpoint(wallet_index, coin)],
        vec![
            TxOutput {
                amount,
                address: address_of(to),
            },
            TxOutput {
                amount: 10 * COIN - amount - COIN / 100,
                address: address_of(from),
            },
        ],
    )
}

#[test]
fn payment_finalizes_everywhere_with_a_verifying_proof() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    let tx = pay(&a, 0, 0, &b, COIN);
    let txid = tx.txid();
    c.submit(0, tx);
    c.run();
    for i in 0..4 {
        let proof = c.finalized_at(i, &txid).expect("finalized on every node");
        assert!(proof.verify(7, &c.genesis.registry).unwrap() >= 3);
        let e = c.engines[i].as_ref().unwrap();
        assert!(matches!(
            e.utxo(&genesis_outpoint(0, 0)).unwrap().state,
            UtxoState::SpentFinalized { txid: t } if t == txid
        ));
        assert_eq!(
            e.utxo(&OutPoint { txid, vout: 0 }).unwrap().state,
            UtxoState::Unspent
        );
        assert!(c.stores[i].get_proof(&txid).unwrap().is_some());
    }
    // Resubmitting is idempotent: no new vote, no second finality.
    c.submit(1, pay(&a, 0, 0, &b, COIN));
    c.run();
    assert_eq!(
        c.events[1]
            .iter()
            .filter(|e| matches!(e, Event::Finalized { .. }))
            .count(),
        1
    );
}

#[test]
fn conflicting_spends_never_both_finalize() {
    let (a, b, d) = (wallet(0), wallet(1), wallet(2));
    let mut both = 0;
    for round in 0..4u32 {
        let mut c = Cluster::new(4, &[a.clone(), b.clone(), d.clone()]);
        let t1 = pay(&a, round, 0, &b, COIN);
        let t2 = pay(&a, round, 0, &d, 2 * COIN);
        let (id1, id2) = (t1.txid(), t2.txid());
        // Same moment, two nodes; delivery order interleaves.
        c.submit(0, t1);
        c.submit((1 + round as usize) % 4, t2);
        c.run();
        for i in 0..4 {
            let f1 = c.finalized_at(i, &id1).is_some();
            let f2 = c.finalized_at(i, &id2).is_some();
            assert!(!(f1 && f2), "both finalized at node {i}");
            both += (f1 && f2) as u32;
        }
        // Each submitting node tells its wallet an outcome.
        let o2 = (1 + round as usize) % 4;
        assert!(c.finalized_at(0, &id1).is_some() || c.rejected_at(0, &id1).is_some());
        assert!(c.finalized_at(o2, &id2).is_some() || c.rejected_at(o2, &id2).is_some());
        // The second submission met a lock at its node or lost the vote.
        if c.finalized_at(0, &id1).is_some() {
            assert!(c.rejected_at(o2, &id2).is_some());
        }
    }
    assert_eq!(both, 0);
}

#[test]
fn restarted_node_never_votes_for_the_conflict() {
    let (a, b, d) = (wallet(0), wallet(1), wallet(2));
    let mut c = Cluster::new(4, &[a.clone(), b.clone(), d.clone()]);
    let t1 = pay(&a, 0, 0, &b, COIN);
    let t2 = pay(&a, 0, 0, &d, COIN);
    // Node 0 locks and votes for t1; its vote is durable; it crashes before
    // anyone else hears.
    c.submit(0, t1.clone());
    let round = c.engines[0].as_mut().unwrap().end_round(c.now);
    c.stores[0].apply(&round.writes).unwrap();
    c.crash(0);
    c.restart(0);
    let e = c.engines[0].as_mut().unwrap();
    assert_eq!(e.my_vote(&t1.txid()), Some(Decision::Approve));
    e.handle_transaction(100, t2.clone(), Origin::Peer, false);
    assert!(matches!(
        e.my_vote(&t2.txid()),
        Some(Decision::Reject(RejectCode::InputLocked))
    ));
    let round = e.end_round(101);
    for o in &round.outputs {
        if let Output::BroadcastVotes(b) = o {
            assert!(b
                .items
                .iter()
                .all(|i| i.txid != t2.txid() || !i.decision.is_approve()));
        }
    }
}

#[test]
fn forged_and_unregistered_votes_are_ignored() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    let tx = pay(&a, 0, 0, &b, COIN);
    let txid = tx.txid();
    // Only node 0 hears it; node 1 is absent; forged votes try to complete it.
    c.submit(0, tx);
    let r = c.engines[0].as_mut().unwrap().end_round(c.now);
    c.stores[0].apply(&r.writes).unwrap();
    let item = vec![VoteItem {
        txid,
        decision: Decision::Approve,
    }];
    let outsider = testkit::key_from_seed("outsider", 0);
    let unregistered = VoteBatch::sign(7, 1, &outsider, item.clone());
    let mut forged = VoteBatch::sign(7, 1, &outsider, item.clone());
    forged.voter = PublicKey::from_signing(&c.keys[2]);
    let wrong_chain = VoteBatch::sign(8, 1, &c.keys[3], item.clone());
    let e = c.engines[0].as_mut().unwrap();
    e.handle_votes(10, unregistered);
    e.handle_votes(11, forged);
    e.handle_votes(12, wrong_chain);
    // A genuine vote replayed twice counts once.
    let genuine = VoteBatch::sign(7, 1, &c.keys[1], item);
    e.handle_votes(13, genuine.clone());
    e.handle_votes(14, genuine);
    let m = e.metrics().clone();
    assert_eq!(m.vote_batches_unknown_voter, 1);
    assert_eq!(m.vote_batches_bad_signature, 1);
    assert_eq!(m.vote_batches_wrong_chain_or_epoch, 1);
    assert_eq!(m.votes_duplicate, 1);
    let r = e.end_round(15);
    assert!(!r
        .outputs
        .iter()
        .any(|o| matches!(o, Output::Event(Event::Finalized { .. }))));
}

#[test]
fn one_of_four_down_still_finalizes() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    c.crash(3);
    let tx = pay(&a, 0, 0, &b, COIN);
    let txid = tx.txid();
    c.submit(1, tx);
    c.run();
    for i in 0..3 {
        assert!(c.finalized_at(i, &txid).is_some());
    }
    // Two down: no quorum, nothing final.
    c.crash(2);
    let tx = pay(&a, 1, 0, &b, COIN);
    let txid = tx.txid();
    c.submit(0, tx);
    c.run();
    assert!(c.finalized_at(0, &txid).is_none());
}

#[test]
fn vote_collection_and_missed_votes_follow_the_quorum() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    let pos = |c: &Cluster, i: usize| {
        c.genesis
            .registry
            .position(&PublicKey::from_signing(&c.keys[i]))
            .unwrap()
    };
    c.crash(3);
    let tx = pay(&a, 0, 0, &b, COIN);
    let txid = tx.txid();
    c.submit(1, tx.clone());
    c.run();
    for i in 0..3 {
        let m = c.engines[i].as_ref().unwrap().metrics();
        assert!(c.finalized_at(i, &txid).is_some());
        // Its own tally reached the quorum after its approve vote: one
        // collection measured, on the engine's clock.
        assert_eq!(m.vote_collection.count(), 1, "node {i}");
        assert!(m.vote_collection.sum() <= c.now);
        // The proof holds the three live votes; the crashed node missed it.
        assert_eq!(m.proofs_held, 1);
        assert_eq!(m.missed_votes(pos(&c, 3)), 1, "node {i}");
        for j in 0..3 {
            assert_eq!(m.missed_votes(pos(&c, j)), 0, "node {i} on {j}");
        }
    }
    // A double spend is refused: no quorum, nothing measured or held.
    c.submit(1, pay(&a, 0, 0, &a, 2 * COIN));
    c.run();
    let m = c.engines[1].as_ref().unwrap().metrics();
    assert_eq!((m.vote_collection.count(), m.proofs_held), (1, 1));
    // The restarted node learns it from a peer's proof: it holds the proof
    // (which lacks its own vote) but collected no votes for it.
    c.restart(3);
    let proof = c.stores[0].get_proof(&txid).unwrap().unwrap();
    let (p0, p3) = (pos(&c, 0), pos(&c, 3));
    let e = c.engines[3].as_mut().unwrap();
    e.handle_proof(c.now + 1, tx, proof);
    let m = e.metrics();
    assert_eq!(m.vote_collection.count(), 0);
    assert_eq!(m.proofs_held, 1);
    assert_eq!(m.missed_votes(p3), 1);
    assert_eq!(m.missed_votes(p0), 0);
}

#[test]
fn chained_payment_and_catch_up_after_restart() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    c.crash(3);
    let t1 = pay(&a, 0, 0, &b, COIN);
    let id1 = t1.txid();
    c.submit(0, t1);
    c.run();
    // Node 3 missed t1; it comes back and sees a child spending t1's output.
    c.restart(3);
    let child = Transaction::build_signed(
        7,
        &b,
        &[OutPoint { txid: id1, vout: 0 }],
        vec![TxOutput {
            amount: COIN / 2,
            address: address_of(&a),
        }],
    );
    let cid = child.txid();
    c.submit(1, child);
    c.run();
    for i in 0..4 {
        assert!(c.finalized_at(i, &cid).is_some(), "node {i}");
    }
    assert!(
        c.finalized_at(3, &id1).is_some(),
        "catch-up through proof request"
    );
}

#[test]
fn invalid_transactions_are_refused_with_codes() {
    let (a, b) = (wallet(0), wallet(1));
    let mut c = Cluster::new(4, &[a.clone(), b.clone()]);
    // b tries to spend a's coin.
    let theft = Transaction::build_signed(
        7,
        &b,
        &[genesis_outpoint(0, 0)],
        vec![TxOutput {
            amount: COIN,
            address: address_of(&b),
        }],
    );
    let id = theft.txid();
    c.submit(0, theft);
    c.run();
    assert_eq!(c.rejected_at(0, &id), Some(RejectCode::WrongOwner));
    let mut bad = pay(&a, 1, 0, &b, COIN);
    bad.inputs[0].signature[5] ^= 0x40;
    let id = bad.txid();
    c.submit(0, bad);
    c.run();
    assert_eq!(c.rejected_at(0, &id), Some(RejectCode::BadSignature));
    // Nothing was broadcast for refused transactions: the others never saw them.
    assert!(c.events[1].is_empty());
}

/// Over `MAX_UNPROVEN` payments confirmed by blocks before their proofs
/// came: the ones over the limit are confirmed like the others, but this
/// node no longer fetches or stores their proofs (the catch-up counts them
/// settled, a late proof is ignored) and counts them; the tracked ones
/// still get their proofs stored and their finality announced.
#[test]
fn payments_confirmed_over_the_unproven_limit_are_confirmed_without_their_proofs() {
    use crate::protocol::types::TxInput;
    use std::sync::Arc;
    let keys: Vec<SigningKey> = (0..4).map(|i| testkit::key_from_seed("mn", i)).collect();
    let n = MAX_UNPROVEN + 1;
    let g = testkit::genesis(7, &keys, Tier::Bronze, &[wallet(0)], n as u32, 10 * COIN);
    let mut store = MemoryStore::new();
    let mut e = testkit::engine_with_store(&g, keys[0].clone(), &mut store);
    // Certified blocks carry them; signatures are the certificate's affair.
    let txs: Vec<Arc<Transaction>> = (0..n as u32)
        .map(|coin| {
            Arc::new(Transaction {
                version: 1,
                chain_id: 7,
                inputs: vec![TxInput {
                    prev: genesis_outpoint(0, coin),
                    public_key: PublicKey::from_signing(&wallet(0)),
                    signature: [0; 64],
                }],
                outputs: vec![TxOutput {
                    amount: COIN,
                    address: address_of(&wallet(1)),
                }],
                lock_time: 0,
            })
        })
        .collect();
    for tx in &txs {
        assert_eq!(e.apply_committed(1, tx, 1), Ok(1));
    }
    let _ = e.end_round(1);
    for tx in &txs {
        let st = e.utxo(&tx.inputs[0].prev).unwrap().state;
        assert!(matches!(st, UtxoState::Confirmed { height: 1, .. }));
        assert!(e.known_final(&tx.txid()));
    }
    let (first, last) = (&txs[0], &txs[n - 1]);
    assert!(!e.settled(&first.txid()), "a tracked one's proof is wanted");
    assert!(e.settled(&last.txid()), "over the limit: not fetched");
    assert_eq!(e.metrics().unproven_untracked, 1);
    let proof = |tx: &Transaction| {
        let txid = tx.txid();
        let votes = keys[..3]
            .iter()
            .map(|k| {
                let b = VoteBatch::sign(
                    7,
                    g.registry.epoch(),
                    k,
                    vec![VoteItem {
                        txid,
                        decision: Decision::Approve,
                    }],
                );
                let levels = b.verify().unwrap();
                b.cert(&levels, 0)
            })
            .collect();
        TimeProof {
            chain_id: 7,
            txid,
            votes,
        }
    };
    let stored = |e: &mut Engine| {
        e.end_round(2)
            .writes
            .iter()
            .filter(|w| matches!(w, crate::storage::Write::PutProof(_)))
            .count()
    };
    e.handle_proof(2, (**last).clone(), proof(last));
    assert_eq!(stored(&mut e), 0, "a late proof over the limit is ignored");
    e.handle_proof(2, (**first).clone(), proof(first));
    assert_eq!(stored(&mut e), 1, "a tracked one's proof is stored");
    assert!(e.settled(&first.txid()));
}
