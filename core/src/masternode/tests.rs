//! The masternode state machine with N in-process nodes over a lossy,
//! controllable network: catch-up after being cut off, the approval gate,
//! re-announcement after lost broadcasts and votes, and stuck transactions
//! across a restart.

use std::collections::VecDeque;

use ed25519_dalek::SigningKey;

use super::*;
use crate::protocol::audience::PeerMessage;
use crate::protocol::registry::Tier;
use crate::protocol::types::{Address, OutPoint, TxOutput, COIN};
use crate::protocol::utxo::UtxoEntry;
use crate::protocol::utxo::UtxoState;
use crate::storage::{Genesis, MemoryStore, Store};
use crate::testkit::{self, address_of, genesis_outpoint};

struct Net {
    genesis: Genesis,
    keys: Vec<SigningKey>,
    nodes: Vec<Option<Masternode>>,
    stores: Vec<MemoryStore>,
    /// `cut[i]`: node i hears nothing and nobody hears it.
    cut: Vec<bool>,
    /// Drop every message of this kind while set.
    drop_broadcasts: bool,
    /// Drop every block proposal and vote while set (a stalled block layer).
    drop_block_consensus: bool,
    /// Drop the payment catch-up (finality log, proofs) while set.
    drop_catchup: bool,
    /// Vote batches to this node are dropped (a node cut from the votes).
    drop_votes_to: Option<usize>,
    cfg: MasternodeConfig,
    inbox: VecDeque<(usize, usize, Message)>,
    events: Vec<Vec<Event>>,
    /// Wallet replies of each node's rounds.
    wallet: Vec<Vec<(SessionId, WalletReply)>>,
    now: u64,
}

fn cfg() -> MasternodeConfig {
    let mut e = EngineConfig::new(7);
    // Far below the UTXO set: outputs are read back from the store.
    e.utxo_cache = 4;
    MasternodeConfig::new(e)
}

impl Net {
    fn new(n: usize) -> Self {
        Self::with_config(n, cfg())
    }

    fn with_config(n: usize, cfg: MasternodeConfig) -> Self {
        let keys: Vec<_> = (0..n as u64)
            .map(|i| testkit::key_from_seed("mn", i))
            .collect();
        let genesis = testkit::genesis(7, &keys, Tier::Bronze, &[wallet()], 64, 10 * COIN);
        let mut stores = vec![MemoryStore::new(); n];
        for s in &mut stores {
            s.init(&genesis).unwrap();
        }
        let mut net = Net {
            nodes: (0..n).map(|_| None).collect(),
            genesis,
            keys,
            stores,
            cut: vec![false; n],
            drop_broadcasts: false,
            drop_block_consensus: false,
            drop_catchup: false,
            drop_votes_to: None,
            cfg,
            inbox: VecDeque::new(),
            events: vec![Vec::new(); n],
            wallet: vec![Vec::new(); n],
            now: 1_000,
        };
        for i in 0..n {
            net.start(i);
        }
        net.links();
        net
    }

    fn pk(&self, i: usize) -> PublicKey {
        PublicKey::from_signing(&self.keys[i])
    }

    fn start(&mut self, i: usize) {
        let snap = self.stores[i].load().unwrap();
        self.nodes[i] = Some(Masternode::new(
            self.cfg.clone(),
            self.keys[i].clone(),
            self.genesis.registry.clone(),
            snap,
            self.stores[i].utxo_source(),
            self.now,
        ));
    }

    /// Tells every node which links are up (both ends up and not cut).
    fn links(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let up = self.nodes[j].is_some() && !self.cut[i] && !self.cut[j];
                let pk = self.pk(j);
                let now = self.now;
                if let Some(m) = self.nodes[i].as_mut() {
                    match (up, m.catchup.is_connected(&pk)) {
                        (true, false) => m.handle_peer_up(now, pk),
                        (false, true) => m.handle_peer_down(now, &pk),
                        _ => {}
                    }
                }
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let Some(m) = self.nodes[i].as_mut() else {
            return;
        };
        let round = m.end_round(self.now);
        self.stores[i].apply(&round.writes).unwrap();
        for t in round.transmits {
            if self.cut[i] {
                continue;
            }
            if self.drop_broadcasts && matches!(t.msg, Message::TransactionBroadcast(_)) {
                continue;
            }
            if self.drop_block_consensus
                && matches!(t.msg, Message::BlockProposal(_) | Message::BlockVote(_))
            {
                continue;
            }
            if self.drop_catchup
                && matches!(
                    t.msg,
                    Message::FinalityLogRequest { .. }
                        | Message::FinalityLogPage { .. }
                        | Message::ProofRequest(_)
                        | Message::TimeProof { .. }
                )
            {
                continue;
            }
            let dests: Vec<usize> = match t.dest {
                Dest::AllPeers => (0..self.nodes.len()).filter(|j| *j != i).collect(),
                Dest::Peer(p) => (0..self.nodes.len()).filter(|j| self.pk(*j) == p).collect(),
            };
            for j in dests {
                if self.drop_votes_to == Some(j) && matches!(t.msg, Message::VoteBatch(_)) {
                    continue;
                }
                if !self.cut[j] {
                    self.inbox.push_back((i, j, t.msg.clone()));
                }
            }
        }
        self.events[i].extend(round.events);
        self.wallet[i].extend(round.wallet);
    }

    fn deliver_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.flush(i);
        }
        let mut steps = 0;
        while self.deliver_next() {
            steps += 1;
            assert!(steps < 1_000_000, "message storm");
        }
    }

    /// Delivers the oldest message in flight and ends its receiver's
    /// round; false when none is in flight.
    fn deliver_next(&mut self) -> bool {
        let Some((from, to, msg)) = self.inbox.pop_front() else {
            return false;
        };
        let (from_pk, now) = (self.pk(from), self.now);
        if let Some(m) = self.nodes[to].as_mut() {
            let msg = PeerMessage::try_from(msg).expect("peers send peer messages");
            m.handle_peer_message(now, from_pk, msg, &self.stores[to])
                .unwrap();
            self.flush(to);
        }
        true
    }

    /// Advances the clock by `ms` in ticks, delivering everything each tick.
    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            for i in 0..self.nodes.len() {
                let now = self.now;
                if let Some(m) = self.nodes[i].as_mut() {
                    m.handle_timeout(now, &self.stores[i]).unwrap();
                }
            }
            self.deliver_all();
        }
    }

    fn submit(&mut self, i: usize, tx: Transaction) -> Option<WalletReply> {
        let now = self.now;
        let m = self.nodes[i].as_mut().unwrap();
        let answer = m
            .handle_wallet_transaction(now, SessionId(0), tx, false, &self.stores[i])
            .unwrap();
        self.deliver_all();
        answer
    }

    fn is_final(&self, i: usize, txid: &Txid) -> bool {
        self.nodes[i]
            .as_ref()
            .is_some_and(|m| m.engine().known_final(txid))
            && self.stores[i]
                .get_proof(txid)
                .unwrap()
                .is_some_and(|p| p.verify(7, &self.genesis.registry).is_ok())
    }

    fn rejected(&self, i: usize, txid: &Txid) -> Option<RejectCode> {
        self.events[i].iter().find_map(|e| match e {
            Event::Rejected {
                txid: t, reason, ..
            } if t == txid => Some(*reason),
            _ => None,
        })
    }
}

fn wallet() -> SigningKey {
    testkit::key_from_seed("wallet", 0)
}

fn pay(coin: u32, amount: u64) -> Transaction {
    let w = wallet();
    Transaction::build_signed(
        7,
        &w,
        &[genesis_outpoint(0, coin)],
        vec![
            TxOutput {
                amount,
                address: address_of(&testkit::key_from_seed("payee", 0)),
            },
            TxOutput {
                amount: 10 * COIN - amount - COIN / 100,
                address: address_of(&w),
            },
        ],
    )
}

#[test]
fn payments_finalize_everywhere() {
    let mut net = Net::new(4);
    net.run_for(300);
    let tx = pay(0, COIN);
    let txid = tx.txid();
    net.submit(0, tx);
    net.run_for(200);
    for i in 0..4 {
        assert!(net.is_final(i, &txid), "node {i}");
    }
}

#[test]
fn a_node_cut_off_learns_every_payment_final_meanwhile() {
    let mut net = Net::new(4);
    net.run_for(300);
    net.cut[3] = true;
    net.links();
    let txids: Vec<Txid> = (0..20)
        .map(|c| {
            let tx = pay(c, COIN);
            let id = tx.txid();
            net.submit((c % 3) as usize, tx);
            id
        })
        .collect();
    net.run_for(500);
    for t in &txids {
        assert!(net.is_final(0, t));
        assert!(!net.is_final(3, t), "node 3 heard nothing");
    }
    net.cut[3] = false;
    net.links();
    net.run_for(1_000);
    for t in &txids {
        assert!(net.is_final(3, t), "node 3 caught up on {t}");
    }
    assert!(!net.nodes[3].as_ref().unwrap().is_catching_up());
}

#[test]
fn a_stale_node_does_not_approve_a_spend_of_a_coin_final_elsewhere() {
    let mut net = Net::new(4);
    net.run_for(300);
    net.cut[3] = true;
    net.links();
    let first = pay(5, COIN);
    net.submit(0, first.clone());
    net.run_for(300);
    assert!(net.is_final(0, &first.txid()));
    // Node 3 is reachable again, but the double spend arrives at the very
    // moment the links come up, before any page was answered.
    net.cut[3] = false;
    net.links();
    let second = pay(5, 2 * COIN);
    let now = net.now;
    let m = net.nodes[3].as_mut().unwrap();
    assert!(m.is_catching_up());
    m.handle_wallet_transaction(now, SessionId(0), second.clone(), false, &net.stores[3])
        .unwrap();
    net.deliver_all();
    assert_eq!(
        net.rejected(3, &second.txid()),
        Some(RejectCode::CatchingUp)
    );
    // Once caught up, the same double spend is refused for what it is.
    net.run_for(1_000);
    let again = pay(5, 3 * COIN);
    net.submit(3, again.clone());
    assert_eq!(net.rejected(3, &again.txid()), Some(RejectCode::InputSpent));
    let coin = genesis_outpoint(0, 5);
    for i in 0..4 {
        let e = net.nodes[i].as_ref().unwrap().engine().utxo(&coin);
        assert!(matches!(
            e.map(|e| e.state),
            Some(UtxoState::SpentFinalized { txid }) if txid == first.txid()
        ));
    }
}

#[test]
fn lost_lock_broadcasts_are_reannounced_until_final() {
    let mut net = Net::new(4);
    net.run_for(300);
    net.drop_broadcasts = true;
    let tx = pay(1, COIN);
    let txid = tx.txid();
    net.submit(0, tx);
    net.run_for(500);
    assert!(!net.is_final(0, &txid), "only the origin knows it");
    net.drop_broadcasts = false;
    net.run_for(5_000);
    for i in 0..4 {
        assert!(net.is_final(i, &txid), "node {i}");
    }
    assert!(net.nodes[0].as_ref().unwrap().stats().reannounced > 0);
}

#[test]
fn payment_made_while_a_third_is_down_is_refused_then_works() {
    let mut net = Net::new(4);
    net.run_for(300);
    net.cut[2] = true;
    net.cut[3] = true;
    net.links();
    let tx = pay(2, COIN);
    net.submit(0, tx.clone());
    assert_eq!(net.rejected(0, &tx.txid()), Some(RejectCode::CatchingUp));
    let coin = genesis_outpoint(0, 2);
    let state = net.nodes[0]
        .as_ref()
        .unwrap()
        .engine()
        .utxo(&coin)
        .unwrap()
        .state;
    assert_eq!(
        state,
        UtxoState::Unspent,
        "refused before anything is locked"
    );
    net.cut[2] = false;
    net.cut[3] = false;
    net.links();
    net.run_for(1_000);
    net.submit(0, tx.clone());
    net.run_for(300);
    for i in 0..4 {
        assert!(net.is_final(i, &tx.txid()), "node {i}");
    }
}

#[test]
fn origin_crash_between_commit_and_send_still_finalizes() {
    let mut net = Net::new(4);
    net.run_for(300);
    let tx = pay(3, COIN);
    let txid = tx.txid();
    let now = net.now;
    let m = net.nodes[0].as_mut().unwrap();
    m.handle_wallet_transaction(now, SessionId(0), tx, false, &net.stores[0])
        .unwrap();
    let round = m.end_round(now);
    net.stores[0].apply(&round.writes).unwrap();
    // Crash: the round's sends never leave.
    net.nodes[0] = None;
    net.links();
    net.run_for(500);
    net.start(0);
    net.links();
    net.run_for(3_000);
    for i in 0..4 {
        assert!(net.is_final(i, &txid), "node {i}");
    }
}

#[test]
fn restart_with_a_mempool_of_stuck_double_spends_keeps_serving() {
    let mut net = Net::new(4);
    net.run_for(300);
    // Split double spends: A to nodes 0 and 1, B to nodes 2 and 3, at once.
    let mut stuck = Vec::new();
    for c in 10..30u32 {
        let a = pay(c, COIN);
        let b = pay(c, 2 * COIN);
        let now = net.now;
        for (i, tx) in [(0, &a), (1, &a), (2, &b), (3, &b)] {
            net.nodes[i]
                .as_mut()
                .unwrap()
                .handle_wallet_transaction(now, SessionId(0), tx.clone(), false, &net.stores[i])
                .unwrap();
        }
        stuck.push((a.txid(), b.txid()));
    }
    net.deliver_all();
    net.run_for(500);
    for (a, b) in &stuck {
        assert!(!net.is_final(0, a) && !net.is_final(0, b));
    }
    // A tiny mempool: if stuck ones counted, the node would refuse all.
    net.nodes[0] = None;
    let snap = net.stores[0].load().unwrap();
    assert!(
        snap.pending_transactions.is_empty(),
        "stuck are not pending"
    );
    assert_eq!(snap.stuck_transactions.len(), 20);
    let mut c = cfg();
    c.engine.mempool_limit = 5;
    net.nodes[0] = Some(Masternode::new(
        c,
        net.keys[0].clone(),
        net.genesis.registry.clone(),
        snap,
        net.stores[0].utxo_source(),
        net.now,
    ));
    net.links();
    net.run_for(1_000);
    let tx = pay(40, COIN);
    net.submit(0, tx.clone());
    net.run_for(300);
    assert!(net.is_final(0, &tx.txid()));
    // The stuck coins stay locked (no rule can release them safely).
    let coin = genesis_outpoint(0, 10);
    let st = net.nodes[0]
        .as_ref()
        .unwrap()
        .engine()
        .utxo(&coin)
        .unwrap()
        .state;
    assert!(matches!(
        st,
        UtxoState::Locked { .. } | UtxoState::SpentPending { .. }
    ));
}

#[test]
fn equivocation_is_kept_as_durable_evidence() {
    use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
    let mut net = Net::new(4);
    net.run_for(300);
    let tx = pay(6, COIN);
    let txid = tx.txid();
    // Node 0 holds the transaction but hears no votes yet.
    net.cut[1] = true;
    net.cut[2] = true;
    net.cut[3] = true;
    let now = net.now;
    net.nodes[0]
        .as_mut()
        .unwrap()
        .handle_peer_transaction(now, tx, false);
    net.deliver_all();
    // Masternode 3 signs an approval and then a rejection of the same txid.
    let k3 = net.keys[3].clone();
    let from = net.pk(3);
    for decision in [Decision::Approve, Decision::Reject(RejectCode::InputLocked)] {
        let b = VoteBatch::sign(7, 1, &k3, vec![VoteItem { txid, decision }]);
        let now = net.now;
        net.nodes[0]
            .as_mut()
            .unwrap()
            .handle_peer_message(now, from, PeerMessage::VoteBatch(b), &net.stores[0])
            .unwrap();
        net.flush(0);
    }
    let evidence = net.stores[0].evidence().unwrap();
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0].voter(), from);
    assert!(evidence[0].verify(7, &net.genesis.registry));
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::Equivocation { voter, .. } if *voter == from)));
}

/// Node 0 holds `a` and hears its conflicting spend `b`; masternode 3 signs
/// the approvals of `order` (in that order, one batch each). Returns the
/// conflicting-approvals evidence node 0 stored.
fn approvals_seen(
    a_final_first: bool,
    order: &[usize],
) -> (Net, Vec<crate::protocol::evidence::ConflictingApprovals>) {
    use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
    let mut net = Net::new(4);
    net.run_for(300);
    let a = pay(7, COIN);
    let b = pay(7, 2 * COIN);
    let txids = [a.txid(), b.txid()];
    let k3 = net.keys[3].clone();
    let from = net.pk(3);
    let vote = |net: &mut Net, txid| {
        let v = VoteBatch::sign(
            7,
            1,
            &k3,
            vec![VoteItem {
                txid,
                decision: Decision::Approve,
            }],
        );
        let now = net.now;
        net.nodes[0]
            .as_mut()
            .unwrap()
            .handle_peer_message(now, from, PeerMessage::VoteBatch(v), &net.stores[0])
            .unwrap();
        net.flush(0);
    };
    if a_final_first {
        // `a` is final (masternode 2 is away, so masternode 3's approval
        // is in its proof) before `b` shows up: its tally closed long ago.
        net.cut[2] = true;
        net.submit(0, a.clone());
        net.run_for(300);
        assert!(net.is_final(0, &txids[0]));
    }
    // From here node 0 hears only what the test hands it.
    net.cut[1] = true;
    net.cut[2] = true;
    net.cut[3] = true;
    let now = net.now;
    let m = net.nodes[0].as_mut().unwrap();
    if !a_final_first {
        m.handle_peer_transaction(now, a, false);
    }
    net.deliver_all();
    for &i in order {
        if i == 1 {
            let now = net.now;
            net.nodes[0]
                .as_mut()
                .unwrap()
                .handle_peer_transaction(now, b.clone(), false);
            net.flush(0);
        }
        vote(&mut net, txids[i]);
    }
    let evidence = net.stores[0].approval_evidence().unwrap();
    (net, evidence)
}

#[test]
fn approving_two_conflicting_transactions_is_kept_as_evidence() {
    // Approvals before and after the conflict is known, either order.
    for order in [[0, 1], [1, 0]] {
        let (net, evidence) = approvals_seen(false, &order);
        assert_eq!(evidence.len(), 1, "order {order:?}");
        let e = &evidence[0];
        let from = net.pk(3);
        assert_eq!(e.voter(), from);
        assert_eq!(e.outpoint, genesis_outpoint(0, 7));
        assert!(e.verify(7, &net.genesis.registry));
        assert_eq!(
            net.nodes[0]
                .as_ref()
                .unwrap()
                .engine()
                .metrics()
                .conflicting_approvals,
            1
        );
        assert!(net.events[0]
            .iter()
            .any(|ev| matches!(ev, Event::Equivocation { voter, .. } if *voter == from)));
        // Tampered evidence does not verify.
        let mut forged = e.clone();
        forged.second_tx = forged.first_tx.clone();
        assert!(!forged.verify(7, &net.genesis.registry));
        let mut other = e.clone();
        other.second.voter = net.pk(2);
        assert!(!other.verify(7, &net.genesis.registry));
    }
}

#[test]
fn an_approval_of_a_side_final_before_the_conflict_came_is_still_compared() {
    // Masternode 3's approval of `a` is only in `a`'s proof; its approval
    // of `b` comes after `b` was refused as a double spend.
    let (net, evidence) = approvals_seen(true, &[1]);
    assert_eq!(evidence.len(), 1);
    assert!(evidence[0].verify(7, &net.genesis.registry));
}

#[test]
fn one_approval_per_output_is_not_evidence() {
    // Masternode 3 approves `b` only (it saw `b` first): honest.
    let (_, evidence) = approvals_seen(false, &[1]);
    assert!(evidence.is_empty());
}

#[test]
fn a_wallet_session_hears_its_outcome_and_then_holds_nothing() {
    let mut net = Net::new(4);
    net.run_for(300);
    let s = SessionId(1);
    let payer = address_of(&wallet());
    let m = net.nodes[0].as_mut().unwrap();
    m.handle_wallet_open(s);
    assert_eq!(m.handle_wallet_subscribe(s, vec![payer, payer]), None);
    let tx = pay(4, COIN);
    let txid = tx.txid();
    let now = net.now;
    let answer = m
        .handle_wallet_transaction(now, s, tx.clone(), false, &net.stores[0])
        .unwrap();
    assert_eq!(answer, None);
    assert_eq!(m.stats().wallet.waiting, 1);
    net.deliver_all();
    net.run_for(300);
    assert!(net.is_final(0, &txid));
    let heard: Vec<&str> = net.wallet[0]
        .iter()
        .map(|(to, r)| {
            assert_eq!(*to, s);
            match r {
                WalletReply::TransactionAccepted(t) if *t == txid => "accepted",
                WalletReply::TimeProof { proof, .. } if proof.txid == txid => "proof",
                WalletReply::NewTransactionNotification { txid: t, .. } if *t == txid => "new-tx",
                WalletReply::UtxoStateNotification { entry, .. }
                    if entry.output.address == payer =>
                {
                    "utxo"
                }
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    // The payer's spent coin and its change.
    assert_eq!(heard, ["accepted", "proof", "new-tx", "utxo", "utxo"]);
    let m = net.nodes[0].as_mut().unwrap();
    assert_eq!(m.stats().wallet.waiting, 0);
    // Known now: the answer is immediate and nothing is held for it.
    let answer = m
        .handle_wallet_transaction(now, s, tx, false, &net.stores[0])
        .unwrap();
    assert!(matches!(answer, Some(WalletReply::TimeProof { .. })));
    assert_eq!(m.stats().wallet.waiting, 0);
    m.handle_wallet_close(s);
    let st = m.stats().wallet;
    assert_eq!((st.sessions, st.subscriptions, st.waiting), (0, 0, 0));
}

#[test]
fn a_session_watching_a_txid_hears_its_outcome_or_is_told_at_once() {
    let mut net = Net::new(4);
    net.run_for(300);
    let s = SessionId(5);
    let tx = pay(6, COIN);
    let txid = tx.txid();
    let m = net.nodes[1].as_mut().unwrap();
    m.handle_wallet_open(s);
    // Not known yet: nothing now, the session waits on it.
    assert_eq!(
        m.handle_wallet_watch(s, txid, &net.stores[1]).unwrap(),
        None
    );
    assert_eq!(m.stats().wallet.waiting, 1);
    // Submitted at another node: the watcher at node 1 hears the proof.
    net.submit(0, tx);
    net.run_for(300);
    assert!(net.is_final(1, &txid));
    let proofs = net.wallet[1]
        .iter()
        .filter(|(to, r)| {
            *to == s && matches!(r, WalletReply::TimeProof { proof, .. } if proof.txid == txid)
        })
        .count();
    assert_eq!(proofs, 1, "{:?}", net.wallet[1]);
    let m = net.nodes[1].as_mut().unwrap();
    assert_eq!(m.stats().wallet.waiting, 0);
    // Final already: answered at once, nothing held.
    let answer = m.handle_wallet_watch(s, txid, &net.stores[1]).unwrap();
    assert!(matches!(answer, Some(WalletReply::TimeProof { proof, .. }) if proof.txid == txid));
    assert_eq!(m.stats().wallet.waiting, 0);
    // A double spend of the same coin, rejected here: its rejection at once.
    let double = pay(6, 2 * COIN);
    let now = net.now;
    let m = net.nodes[1].as_mut().unwrap();
    let _ = m
        .handle_wallet_transaction(now, SessionId(0), double.clone(), false, &net.stores[1])
        .unwrap();
    let answer = m
        .handle_wallet_watch(s, double.txid(), &net.stores[1])
        .unwrap();
    assert!(
        matches!(answer, Some(WalletReply::TransactionRejected { txid: t, .. }) if t == double.txid()),
        "{answer:?}"
    );
    m.handle_wallet_close(s);
    assert_eq!(m.stats().wallet.waiting, 0);
}

#[test]
fn a_flooding_peer_is_rate_limited_and_banned_while_payments_go_on() {
    let mut net = Net::new(4);
    net.run_for(300);
    let from = net.pk(3);
    // Node 3 floods node 0 with proof requests far past its bucket.
    for i in 0..300_000u32 {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_le_bytes());
        let now = net.now;
        net.nodes[0]
            .as_mut()
            .unwrap()
            .handle_peer_message(
                now,
                from,
                PeerMessage::ProofRequest(Txid(t)),
                &net.stores[0],
            )
            .unwrap();
    }
    let st = net.nodes[0].as_ref().unwrap().stats().peers;
    assert!(st.refused_rate_limited > 0);
    assert!(net.nodes[0]
        .as_ref()
        .unwrap()
        .bans(net.now)
        .iter()
        .any(|b| b.peer == from));
    // The three others still make a quorum through node 0.
    net.deliver_all();
    let tx = pay(7, COIN);
    let txid = tx.txid();
    net.submit(0, tx);
    net.run_for(300);
    for i in 0..3 {
        assert!(net.is_final(i, &txid), "node {i}");
    }
}

/// An address's outputs not spent for good, by outpoint, as the store
/// holds them (the node answers `AddressQuery` from its store's index).
fn holdings(store: &MemoryStore, address: &Address) -> Vec<(OutPoint, UtxoEntry)> {
    let mut v: Vec<_> = store
        .utxos()
        .into_iter()
        .filter(|(_, e)| e.output.address == *address && !e.state.is_spent_for_good())
        .collect();
    v.sort_by_key(|(op, _)| *op);
    v
}

/// A final payment's writes move an address's holdings: the payee's new
/// output appears, the spent coin leaves, the change comes.
#[test]
fn a_final_payment_moves_the_stored_holdings() {
    let mut net = Net::new(4);
    net.run_for(300);
    let payee = address_of(&testkit::key_from_seed("payee", 0));
    assert!(holdings(&net.stores[1], &payee).is_empty());
    assert_eq!(holdings(&net.stores[1], &address_of(&wallet())).len(), 64);
    let tx = pay(9, COIN);
    let txid = tx.txid();
    net.submit(0, tx);
    net.run_for(300);
    let got = holdings(&net.stores[1], &payee);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, OutPoint { txid, vout: 0 });
    // The spent coin is gone from the wallet's list; its change is there.
    let mine = holdings(&net.stores[1], &address_of(&wallet()));
    assert_eq!(mine.len(), 64);
    assert!(mine.iter().all(|(op, _)| *op != genesis_outpoint(0, 9)));
    assert!(mine.iter().any(|(op, _)| *op == OutPoint { txid, vout: 1 }));
}

fn blocks_cfg() -> MasternodeConfig {
    let mut c = cfg();
    let mut b = crate::blocks::ConsensusConfig::devnet();
    b.block_interval_ms = 200;
    b.propose_timeout_ms = 300;
    b.vote_timeout_ms = 200;
    c.blocks = Some(b);
    c
}

impl Net {
    fn height(&self, i: usize) -> u64 {
        self.nodes[i].as_ref().unwrap().block_tip().unwrap().height
    }

    /// The payment's inputs are Confirmed at some height, in memory and on
    /// disk, and the block at that height holds it.
    fn confirmed_at(&self, i: usize, tx: &Transaction) -> Option<u64> {
        let txid = tx.txid();
        let op = tx.inputs[0].prev;
        let m = self.nodes[i].as_ref()?;
        let UtxoState::Confirmed { txid: t, height } = m.engine().utxo(&op)?.state else {
            return None;
        };
        assert_eq!(t, txid);
        let stored = self.stores[i].utxo(&op).unwrap().state;
        assert_eq!(stored, UtxoState::Confirmed { txid, height });
        let block = self.stores[i].block(height).unwrap().expect("block stored");
        assert!(block.block.txids().contains(&txid));
        Some(height)
    }

    /// Every pair of nodes stores the same block at every height both have.
    fn same_chain(&self) {
        let top = (0..self.nodes.len()).map(|i| self.height(i)).max().unwrap();
        for h in 1..=top {
            let hashes: std::collections::HashSet<_> = self
                .stores
                .iter()
                .filter_map(|s| s.block(h).unwrap())
                .map(|c| {
                    assert!(c.cert.verify(7, &self.genesis.registry).is_ok());
                    c.block.hash()
                })
                .collect();
            assert!(hashes.len() <= 1, "two blocks at height {h}");
        }
    }
}

#[test]
fn blocks_confirm_every_final_payment_on_every_node() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(1_000);
    assert!(net.height(0) >= 1, "blocks are committed");
    let txs: Vec<Transaction> = (0..10).map(|c| pay(c, COIN)).collect();
    for (k, tx) in txs.iter().enumerate() {
        net.submit(k % 4, tx.clone());
    }
    net.run_for(3_000);
    for i in 0..4 {
        for tx in &txs {
            assert!(net.is_final(i, &tx.txid()));
            assert!(
                net.confirmed_at(i, tx).is_some(),
                "node {i} confirmed {}",
                tx.txid()
            );
        }
    }
    net.same_chain();
    // Heights agree within one block interval.
    let hs: Vec<u64> = (0..4).map(|i| net.height(i)).collect();
    assert!(
        hs.iter().max().unwrap() - hs.iter().min().unwrap() <= 1,
        "{hs:?}"
    );
}

#[test]
fn payments_finalize_while_the_block_layer_is_stalled() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.drop_block_consensus = true;
    let before: Vec<u64> = (0..4).map(|i| net.height(i)).collect();
    let tx = pay(0, COIN);
    net.submit(1, tx.clone());
    net.run_for(2_000);
    for i in 0..4 {
        assert!(net.is_final(i, &tx.txid()), "final without blocks");
        assert_eq!(net.confirmed_at(i, &tx), None);
    }
    let stalled: Vec<u64> = (0..4).map(|i| net.height(i)).collect();
    assert!(stalled.iter().zip(&before).all(|(s, b)| s <= &(b + 1)));
    net.drop_block_consensus = false;
    net.run_for(8_000);
    for i in 0..4 {
        assert!(
            net.confirmed_at(i, &tx).is_some(),
            "node {i} confirms after the stall"
        );
    }
    net.same_chain();
}

#[test]
fn a_node_cut_off_syncs_the_blocks_it_missed_and_restarts_keep_one_chain() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.cut[3] = true;
    net.links();
    let tx = pay(2, COIN);
    net.submit(0, tx.clone());
    net.run_for(2_000);
    let h3 = net.height(3);
    assert!(net.height(0) >= h3 + 3, "the others went on");
    net.cut[3] = false;
    net.links();
    net.run_for(2_000);
    assert!(net.height(3) + 1 >= net.height(0), "node 3 synced");
    assert!(net.confirmed_at(3, &tx).is_some());
    // Crash and restart every node in turn from its store.
    for i in 0..4 {
        net.nodes[i] = None;
        net.links();
        net.run_for(300);
        net.start(i);
        net.links();
        net.run_for(700);
    }
    let h = net.height(0);
    net.run_for(2_000);
    assert!(net.height(0) > h, "blocks go on after restarts");
    net.same_chain();
    for i in 0..4 {
        let c = &net.nodes[i]
            .as_ref()
            .unwrap()
            .block_layer()
            .unwrap()
            .consensus;
        assert_eq!(c.stats().refused_conflicting, 0);
    }
}

/// Spends the change (output 1) of `parent`, paying the payee again.
fn pay_from_change(parent: &Transaction, amount: u64) -> Transaction {
    let w = wallet();
    let change = parent.outputs[1].amount;
    Transaction::build_signed(
        7,
        &w,
        &[OutPoint {
            txid: parent.txid(),
            vout: 1,
        }],
        vec![
            TxOutput {
                amount,
                address: address_of(&testkit::key_from_seed("payee", 0)),
            },
            TxOutput {
                amount: change - amount - COIN / 100,
                address: address_of(&w),
            },
        ],
    )
}

/// Every outpoint with its state, sorted.
fn utxo_states(m: &Masternode, store: &MemoryStore) -> Vec<(OutPoint, UtxoState)> {
    let mut v: Vec<_> = store
        .utxos()
        .into_iter()
        .map(|(op, e)| (op, e.state))
        .collect();
    v.sort_by_key(|(op, _)| *op);
    for (op, state) in &v {
        assert_eq!(m.engine().utxo(op).map(|e| e.state), Some(*state));
    }
    v
}

fn sync_from_empty(drop_catchup: bool) {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    // Parents and children, in several blocks.
    let parents: Vec<Transaction> = (0..4).map(|c| pay(c, COIN)).collect();
    for tx in &parents {
        net.submit(0, tx.clone());
    }
    net.run_for(600);
    let children: Vec<Transaction> = parents.iter().map(|p| pay_from_change(p, COIN)).collect();
    for tx in &children {
        net.submit(1, tx.clone());
    }
    net.run_for(1_500);
    for tx in parents.iter().chain(&children) {
        assert!(net.confirmed_at(0, tx).is_some());
    }
    // Node 3 loses its data directory and starts over from the genesis.
    net.nodes[3] = None;
    net.links();
    net.run_for(1_000);
    let mut fresh = MemoryStore::new();
    fresh.init(&net.genesis).unwrap();
    net.stores[3] = fresh;
    net.drop_catchup = drop_catchup;
    net.start(3);
    net.links();
    net.run_for(3_000);
    assert!(
        net.height(3) + 1 >= net.height(0),
        "node 3 synced the chain"
    );
    for tx in parents.iter().chain(&children) {
        assert!(
            net.confirmed_at(3, tx).is_some(),
            "node 3 confirmed {}",
            tx.txid()
        );
    }
    net.same_chain();
    // Compared at one moment: let the last block settle everywhere first.
    net.drop_block_consensus = true;
    net.run_for(1_000);
    let a = utxo_states(net.nodes[0].as_ref().unwrap(), &net.stores[0]);
    let b = utxo_states(net.nodes[3].as_ref().unwrap(), &net.stores[3]);
    assert_eq!(a, b, "the same UTXO set");
    let layer = net.nodes[3].as_ref().unwrap().block_layer().unwrap();
    assert_eq!(layer.stats.contradictions, 0);
    assert!(layer.sync.stats.requests > 0, "it asked peers for blocks");
    let synced = net.nodes[3]
        .as_ref()
        .unwrap()
        .engine()
        .metrics()
        .tx_synced_from_blocks;
    if drop_catchup {
        assert_eq!(synced, 8, "every payment learned from the blocks");
    }
}

#[test]
fn a_node_from_an_empty_store_syncs_the_chain_and_the_utxo_set() {
    sync_from_empty(false);
}

/// The same with the payment catch-up cut: the blocks alone carry it.
#[test]
fn a_node_from_an_empty_store_syncs_from_blocks_alone() {
    sync_from_empty(true);
}

#[test]
fn payments_final_before_a_restart_are_confirmed_after_it() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.drop_block_consensus = true;
    let parent = pay(5, COIN);
    net.submit(2, parent.clone());
    net.run_for(300);
    let child = pay_from_change(&parent, COIN);
    net.submit(2, child.clone());
    net.run_for(500);
    for i in 0..4 {
        assert!(net.is_final(i, &child.txid()));
        assert_eq!(net.confirmed_at(i, &parent), None);
    }
    // Every node restarts from its store while no block can be made.
    for i in 0..4 {
        net.nodes[i] = None;
        net.start(i);
    }
    net.links();
    net.drop_block_consensus = false;
    net.run_for(4_000);
    for i in 0..4 {
        let hp = net.confirmed_at(i, &parent).expect("parent confirmed");
        let hc = net.confirmed_at(i, &child).expect("child confirmed");
        assert!(hp <= hc, "a parent is never confirmed after its child");
    }
    net.same_chain();
}

/// A TimeProof for `tx` signed by the masternodes `signers` (a test stands
/// in for a Byzantine supermajority).
fn forged_proof(
    net: &Net,
    tx: &Transaction,
    signers: &[usize],
) -> crate::protocol::timeproof::TimeProof {
    use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
    let txid = tx.txid();
    let votes = signers
        .iter()
        .map(|&i| {
            let b = VoteBatch::sign(
                7,
                net.genesis.registry.epoch(),
                &net.keys[i],
                vec![VoteItem {
                    txid,
                    decision: Decision::Approve,
                }],
            );
            let levels = b.verify().unwrap();
            b.cert(&levels, 0)
        })
        .collect();
    crate::protocol::timeproof::TimeProof {
        chain_id: 7,
        txid,
        votes,
    }
}

#[test]
fn a_committed_block_contradicting_a_final_payment_stops_block_processing() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.cut[3] = true;
    net.links();
    // The others finalize and confirm A; node 3, cut off, is handed a proof
    // for B spending the same coin (only a supermajority of liars can sign
    // both).
    let a = pay(7, COIN);
    let b = pay(7, 2 * COIN);
    net.submit(0, a.clone());
    net.run_for(1_000);
    assert!(net.confirmed_at(0, &a).is_some());
    let proof = forged_proof(&net, &b, &[0, 1, 2]);
    let now = net.now;
    net.nodes[3]
        .as_mut()
        .unwrap()
        .handle_proof(now, b.clone(), proof);
    net.flush(3);
    assert!(net.is_final(3, &b.txid()));
    net.cut[3] = false;
    net.links();
    net.run_for(2_000);
    let m = net.nodes[3].as_ref().unwrap();
    let layer = m.block_layer().unwrap();
    assert_eq!(layer.stats().contradictions, 1, "A's block contradicts B");
    assert!(layer.stopped(), "block processing stopped");
    assert_eq!(
        m.engine().utxo(&b.inputs[0].prev).map(|e| e.state),
        Some(UtxoState::SpentFinalized { txid: b.txid() }),
        "node 3 keeps what is final here"
    );
    // Payments still finalize at node 3.
    let c = pay(8, COIN);
    net.submit(1, c.clone());
    net.run_for(500);
    assert!(net.is_final(3, &c.txid()));
    // The stop is durable, with what contradicted what.
    let stop = net.stores[3]
        .load()
        .unwrap()
        .blocks
        .stop
        .expect("stop stored");
    assert_eq!(stop.txid, a.txid());
    assert_eq!(
        stop.what,
        crate::blocks::Contradicted::FinalPayment(b.txid())
    );
    assert_eq!(
        net.stores[3]
            .block(stop.height)
            .unwrap()
            .unwrap()
            .block
            .hash(),
        stop.block
    );
    // A restart stays stopped for blocks; payments go on.
    net.nodes[3] = None;
    net.links();
    net.start(3);
    net.links();
    let h3 = net.height(3);
    net.run_for(2_000);
    let layer = net.nodes[3].as_ref().unwrap().block_layer().unwrap();
    assert!(layer.stopped(), "still stopped after the restart");
    assert_eq!(layer.stats().stop, Some(stop.clone()));
    assert_eq!(net.height(3), h3, "no block processed while stopped");
    assert!(net.height(0) > h3 + 1, "the others go on");
    let d = pay(12, COIN);
    net.submit(1, d.clone());
    net.run_for(500);
    assert!(net.is_final(3, &d.txid()), "payments go on at node 3");
    // The operator clears the stop (node down): the next start processes
    // blocks again and catches up with the chain.
    net.nodes[3] = None;
    net.links();
    net.stores[3].apply(&[Write::ClearBlockStop]).unwrap();
    net.start(3);
    net.links();
    net.run_for(3_000);
    let layer = net.nodes[3].as_ref().unwrap().block_layer().unwrap();
    assert!(!layer.stopped());
    assert!(net.height(3) + 1 >= net.height(0), "node 3 synced again");
    assert!(net.confirmed_at(3, &d).is_some());
    net.same_chain();
}

#[test]
fn a_payment_a_block_confirms_before_its_proof_is_still_announced_final() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    // Node 3 hears no votes: its wallet's payment becomes final elsewhere,
    // and node 3 first learns it from a committed block.
    net.drop_votes_to = Some(3);
    net.drop_catchup = true;
    let tx = pay(9, COIN);
    net.submit(3, tx.clone());
    net.run_for(1_500);
    assert!(
        net.confirmed_at(3, &tx).is_some(),
        "the block confirmed it at 3"
    );
    assert!(!net.is_final(3, &tx.txid()), "no proof at 3 yet");
    // The proof comes (the catch-up path opens again): stored, and the
    // finality announced to node 3's wallet session and its finality log.
    net.drop_catchup = false;
    net.run_for(2_000);
    assert!(net.is_final(3, &tx.txid()), "proof stored at 3");
    assert!(
        net.events[3]
            .iter()
            .any(|e| matches!(e, Event::Finalized { txid, .. } if *txid == tx.txid())),
        "finality announced at 3"
    );
    assert!(net.confirmed_at(3, &tx).is_some());
}

/// A payment a synced block confirmed before its proof came, then a crash:
/// after the restart the node still knows the proof is missing, and the
/// catch-up fetches it (a wallet resubmitting there gets the proof).
#[test]
fn a_payment_confirmed_without_its_proof_still_fetches_it_after_a_restart() {
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.drop_votes_to = Some(3);
    net.drop_catchup = true;
    let tx = pay(9, COIN);
    net.submit(3, tx.clone());
    net.run_for(1_500);
    assert!(net.confirmed_at(3, &tx).is_some(), "confirmed at 3");
    assert!(!net.is_final(3, &tx.txid()), "no proof at 3 yet");
    // Node 3 crashes before the proof comes, and starts from its store.
    net.nodes[3] = None;
    net.links();
    net.start(3);
    net.links();
    net.drop_votes_to = None;
    net.drop_catchup = false;
    net.run_for(3_000);
    assert!(net.is_final(3, &tx.txid()), "proof fetched and stored at 3");
    let answer = net.submit(3, tx.clone());
    assert!(
        matches!(answer, Some(WalletReply::TimeProof { .. })),
        "a resubmission gets the proof, not {answer:?}"
    );
}

/// The origin's admission window: a wallet payment beyond it is refused at
/// once as busy (not queued), peers' payments still find room in the
/// mempool, the window frees as payments become final, and one whose votes
/// never come stops counting after `origin_window_age_ms`.
#[test]
fn a_full_origin_window_refuses_wallet_payments_at_once_and_frees_with_finality() {
    let mut c = cfg();
    c.engine.origin_window = 4;
    c.engine.origin_window_age_ms = 3_000;
    let mut net = Net::with_config(4, c);
    net.run_for(300);
    // Nobody else hears node 0's payments: they stay in flight there.
    net.drop_broadcasts = true;
    let first: Vec<Transaction> = (0..6).map(|i| pay(i, COIN)).collect();
    for tx in &first {
        net.submit(0, tx.clone());
    }
    let busy_detail = |net: &Net, txid: &Txid| {
        net.events[0].iter().find_map(|e| match e {
            Event::Rejected {
                txid: t, detail, ..
            } if t == txid => Some(detail.clone()),
            _ => None,
        })
    };
    for tx in &first[..4] {
        assert_eq!(net.rejected(0, &tx.txid()), None, "inside the window");
    }
    for tx in &first[4..] {
        assert_eq!(net.rejected(0, &tx.txid()), Some(RejectCode::MempoolFull));
        let detail = busy_detail(&net, &tx.txid()).unwrap();
        assert!(detail.contains("busy"), "{detail}");
    }
    let engine = net.nodes[0].as_ref().unwrap().engine();
    assert_eq!(engine.wallet_in_flight(), 4);
    assert_eq!(engine.metrics().tx_busy, 2);
    // A refused payment locked nothing: its coin is still free.
    assert_eq!(
        engine.utxo(&genesis_outpoint(0, 4)).unwrap().state,
        UtxoState::Unspent
    );
    // A peer's payment is not a wallet payment of node 0: admitted there.
    net.drop_broadcasts = false;
    let peer_tx = pay(10, COIN);
    net.submit(1, peer_tx.clone());
    net.run_for(500);
    assert!(
        net.is_final(0, &peer_tx.txid()),
        "peer payment final at node 0"
    );
    // Re-announced, the four become final and leave the window.
    net.run_for(5_000);
    for tx in &first[..4] {
        assert!(net.is_final(0, &tx.txid()));
    }
    assert_eq!(
        net.nodes[0].as_ref().unwrap().engine().wallet_in_flight(),
        0
    );
    // The refused ones, resubmitted, are now admitted and final.
    for tx in &first[4..] {
        net.submit(0, tx.clone());
    }
    net.run_for(500);
    for tx in &first[4..] {
        assert!(net.is_final(0, &tx.txid()));
    }
    // Payments whose votes never come age out of the window (they keep
    // their locks): node 0 alone cannot finalize anything.
    for i in 1..4 {
        net.cut[i] = true;
    }
    for i in 20..24 {
        net.submit(0, pay(i, COIN));
    }
    let late = pay(24, COIN);
    net.submit(0, late.clone());
    assert_eq!(net.rejected(0, &late.txid()), Some(RejectCode::MempoolFull));
    net.run_for(3_500);
    assert_eq!(
        net.nodes[0].as_ref().unwrap().engine().wallet_in_flight(),
        0
    );
    let again = pay(25, COIN);
    net.submit(0, again.clone());
    assert_eq!(net.rejected(0, &again.txid()), None, "window freed by age");
    assert_eq!(
        net.nodes[0]
            .as_ref()
            .unwrap()
            .engine()
            .utxo(&genesis_outpoint(0, 20))
            .unwrap()
            .state
            .holder(),
        Some(pay(20, COIN).txid()),
        "an aged-out payment keeps its lock"
    );
}

/// A payment seen arriving is timed from its arrival to its proof; one
/// that was pending before a restart is not timed (its arrival time is not
/// known, and 0 would time it from the epoch).
#[test]
fn finality_is_timed_only_for_payments_seen_arriving_in_this_run() {
    let mut net = Net::new(4);
    net.run_for(300);
    let age = |net: &Net, txid: &Txid| {
        net.events[0].iter().find_map(|e| match e {
            Event::Finalized {
                txid: t, age_ms, ..
            } if t == txid => Some(*age_ms),
            _ => None,
        })
    };
    let seen = pay(1, COIN);
    net.submit(0, seen.clone());
    net.run_for(500);
    let timed = age(&net, &seen.txid()).expect("final");
    assert!(timed.is_some_and(|ms| ms < 10_000), "{timed:?}");
    // Pending at node 0 (nobody else heard it), then node 0 restarts.
    net.drop_broadcasts = true;
    let pending = pay(2, COIN);
    net.submit(0, pending.clone());
    net.run_for(300);
    net.nodes[0] = None;
    net.start(0);
    net.links();
    net.drop_broadcasts = false;
    net.run_for(5_000);
    assert!(net.is_final(0, &pending.txid()));
    assert_eq!(age(&net, &pending.txid()), Some(None), "not timed");
}

#[test]
fn a_proposal_conflicting_with_a_final_payment_is_kept_as_evidence() {
    use crate::blocks::{Block, BlockEvidence, Proposal, Slot};
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    net.cut[3] = true;
    net.links();
    // Node 3 holds B final (a forged proof: a Byzantine supermajority).
    let a = pay(11, COIN);
    let b = pay(11, 2 * COIN);
    let proof = forged_proof(&net, &b, &[0, 1, 2]);
    let now = net.now;
    net.nodes[3]
        .as_mut()
        .unwrap()
        .handle_proof(now, b.clone(), proof);
    net.flush(3);
    assert!(net.is_final(3, &b.txid()));
    // The leader of the round node 3 waits in proposes a block spending
    // B's coin with A.
    let reg = net.genesis.registry.clone();
    let (height, round, li) = loop {
        net.run_for(100);
        let c = net.nodes[3]
            .as_ref()
            .unwrap()
            .block_layer()
            .unwrap()
            .consensus();
        if let Some((h, r)) = c.awaiting_proposal() {
            let l = crate::blocks::leader::leader(7, &reg, h, r);
            if l != net.pk(3) {
                break (h, r, reg.position(&l).unwrap());
            }
        }
    };
    let tip = net.nodes[3].as_ref().unwrap().block_tip().unwrap();
    let block = Block::new(
        7,
        reg.epoch(),
        height,
        tip.hash,
        tip.time_ms + 1,
        net.pk(li),
        vec![a.clone()],
    );
    let slot = Slot {
        chain_id: 7,
        epoch: reg.epoch(),
        height,
        round,
    };
    let p = Proposal::sign(slot, None, block, &net.keys[li]);
    let (now, from) = (net.now, net.pk(li));
    net.nodes[3]
        .as_mut()
        .unwrap()
        .handle_peer_message(
            now,
            from,
            PeerMessage::BlockProposal(Box::new(p)),
            &net.stores[3],
        )
        .unwrap();
    net.flush(3);
    let ev = net.stores[3].block_evidence().unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(
        matches!(&ev[0], BlockEvidence::ConflictingProposal { final_tx, .. }
        if *final_tx == b.txid())
    );
    assert!(ev[0].verify(7, &reg));
    let final_tx = net.stores[3].get_transaction(&b.txid()).unwrap().unwrap();
    assert!(ev[0].conflicts_with(&final_tx));
    // The node prevoted nil at once and waits for no proof.
    let c = net.nodes[3]
        .as_ref()
        .unwrap()
        .block_layer()
        .unwrap()
        .consensus();
    assert_eq!(c.awaiting_proposal(), None);
    assert_eq!(c.stats().evidence_kept, 1);
    // The record survives a restart and is counted against the bound.
    net.nodes[3] = None;
    net.start(3);
    let c = net.nodes[3]
        .as_ref()
        .unwrap()
        .block_layer()
        .unwrap()
        .consensus();
    assert_eq!(c.evidence_stored(), 1);
}

/// More final payments than the block layer holds in memory, during a
/// block stall: the rest wait in the store only and are paged back in as
/// blocks drain the queue; every one is confirmed, parents never after
/// their children, with and without a restart in the stall.
fn unconfirmed_over_the_memory_cap(restart: bool) {
    let mut c = blocks_cfg();
    c.max_unconfirmed_in_memory = 4;
    let mut net = Net::with_config(4, c);
    net.run_for(600);
    net.drop_block_consensus = true;
    let parents: Vec<Transaction> = (20..30).map(|c| pay(c, COIN)).collect();
    for (k, tx) in parents.iter().enumerate() {
        net.submit(k % 4, tx.clone());
    }
    net.run_for(300);
    let children: Vec<Transaction> = parents.iter().map(|p| pay_from_change(p, COIN)).collect();
    for (k, tx) in children.iter().enumerate() {
        net.submit(k % 4, tx.clone());
    }
    net.run_for(500);
    for i in 0..4 {
        let layer = net.nodes[i].as_ref().unwrap().block_layer().unwrap();
        assert!(layer.unconfirmed.len() <= 4, "the memory cap holds");
        assert!(layer.unconfirmed.spilled(), "the rest is in the store only");
        for tx in parents.iter().chain(&children) {
            assert!(net.is_final(i, &tx.txid()));
        }
    }
    if restart {
        for i in 0..4 {
            net.nodes[i] = None;
            net.start(i);
            let layer = net.nodes[i].as_ref().unwrap().block_layer().unwrap();
            assert!(
                layer.unconfirmed.len() <= 4,
                "the cap holds after a restart"
            );
            assert!(layer.unconfirmed.spilled());
        }
        net.links();
    }
    net.drop_block_consensus = false;
    net.run_for(15_000);
    for i in 0..4 {
        for (p, ch) in parents.iter().zip(&children) {
            let hp = net.confirmed_at(i, p).expect("parent confirmed");
            let hc = net.confirmed_at(i, ch).expect("child confirmed");
            assert!(hp <= hc, "a parent is never confirmed after its child");
        }
        let layer = net.nodes[i].as_ref().unwrap().block_layer().unwrap();
        assert!(!layer.unconfirmed.spilled(), "everything paged back in");
        assert!(layer.unconfirmed.is_empty());
        assert_eq!(layer.stats().contradictions, 0);
    }
    net.same_chain();
}

#[test]
fn final_payments_over_the_memory_cap_are_all_confirmed_in_order() {
    unconfirmed_over_the_memory_cap(false);
}

#[test]
fn final_payments_over_the_memory_cap_are_all_confirmed_across_a_restart() {
    unconfirmed_over_the_memory_cap(true);
}

impl Net {
    /// Like [`Net::run_for`], one message at a time, until `stop` holds
    /// after some node's round; false if it never did.
    fn run_until(&mut self, ms: u64, mut stop: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now + ms;
        while self.now < end {
            self.now += 100;
            for i in 0..self.nodes.len() {
                let now = self.now;
                if let Some(m) = self.nodes[i].as_mut() {
                    m.handle_timeout(now, &self.stores[i]).unwrap();
                }
                self.flush(i);
                if stop(self) {
                    return true;
                }
            }
            while self.deliver_next() {
                if stop(self) {
                    return true;
                }
            }
        }
        false
    }
}

/// A committed block larger than a round's share of confirmations is
/// confirmed over the rounds after the one that stored it; a node that
/// crashes between those rounds confirms the rest after its restart, and
/// no payment of the block is ever put in a second block.
#[test]
fn a_large_block_is_confirmed_over_rounds_and_across_a_crash_between_them() {
    let mut c = blocks_cfg();
    c.confirmations_per_round = 2;
    let mut net = Net::with_config(4, c);
    net.run_for(600);
    net.drop_block_consensus = true;
    let txs: Vec<Transaction> = (30..39).map(|c| pay(c, COIN)).collect();
    for (k, tx) in txs.iter().enumerate() {
        net.submit(k % 4, tx.clone());
    }
    net.run_for(300);
    for tx in &txs {
        assert!(net.is_final(3, &tx.txid()));
    }
    let before = net.height(3);
    net.drop_block_consensus = false;
    // Node 3 stored a block of the nine and has not confirmed them all.
    let partial = net.run_until(5_000, |net| {
        let m = net.nodes[3].as_ref().unwrap();
        m.block_layer().unwrap().confirming() && net.height(3) > before
    });
    assert!(partial, "the block is confirmed over several rounds");
    let h = net.height(3);
    let stored = net.stores[3].load().unwrap().blocks;
    assert_eq!(stored.tip.as_ref().map(|t| t.block.height()), Some(h));
    assert!(stored.confirmed_through.is_some_and(|c| c < h));
    let confirmed = txs
        .iter()
        .filter(|tx| {
            matches!(
                net.stores[3].utxo(&tx.inputs[0].prev).unwrap().state,
                UtxoState::Confirmed { .. }
            )
        })
        .count();
    assert!(confirmed < txs.len(), "some are left for later rounds");
    // A crash now: the restart confirms the rest of its tip.
    net.nodes[3] = None;
    net.links();
    net.start(3);
    net.links();
    assert!(net.nodes[3]
        .as_ref()
        .unwrap()
        .block_layer()
        .unwrap()
        .confirming());
    net.run_for(3_000);
    for tx in &txs {
        assert_eq!(net.confirmed_at(3, tx), Some(h));
        assert_eq!(net.confirmed_at(0, tx), Some(h));
    }
    let stored = net.stores[3].load().unwrap().blocks;
    assert_eq!(stored.confirmed_through, Some(net.height(3)));
    for i in 0..4 {
        let layer = net.nodes[i].as_ref().unwrap().block_layer().unwrap();
        assert!(!layer.confirming());
        assert_eq!(layer.stats().contradictions, 0);
    }
    assert!(net.height(3) > h, "blocks go on");
    net.same_chain();
}

/// Rule 2 of confirming over rounds (docs/PROTOCOL.md): the next height's
/// start timer, firing while the tip is still partly confirmed, first
/// confirms the rest of the tip; so a proposal that puts one of the tip's
/// payments in a second block is refused as already confirmed instead of
/// prevoted. Fails with the timer path's `finish_confirming` removed.
#[test]
fn the_next_height_starts_only_after_the_tip_is_wholly_confirmed() {
    use crate::blocks::{leader::leader, Block, Proposal, Slot};
    let mut c = blocks_cfg();
    c.confirmations_per_round = 2;
    let mut net = Net::with_config(4, c);
    net.run_for(600);
    net.drop_block_consensus = true;
    let txs: Vec<Transaction> = (30..39).map(|c| pay(c, COIN)).collect();
    for (k, tx) in txs.iter().enumerate() {
        net.submit(k % 4, tx.clone());
    }
    net.run_for(300);
    let before = (0..4).map(|i| net.height(i)).max().unwrap();
    net.drop_block_consensus = false;
    let reg = net.genesis.registry.clone();
    // A node that committed the block of the nine, has not confirmed them
    // all, and does not lead the next height's first round.
    let mut node = None;
    let partial = net.run_until(5_000, |net| {
        node = (0..4).find(|&i| {
            let m = net.nodes[i].as_ref().unwrap();
            let h = net.height(i);
            m.block_layer().unwrap().confirming()
                && h > before
                && leader(7, &reg, h + 1, 0) != net.pk(i)
        });
        node.is_some()
    });
    assert!(partial, "a block confirmed over several rounds");
    let i = node.unwrap();
    let tip = net.nodes[i].as_ref().unwrap().block_tip().unwrap();
    let pending = txs
        .iter()
        .find(|tx| {
            matches!(
                net.nodes[i]
                    .as_ref()
                    .unwrap()
                    .engine()
                    .utxo(&tx.inputs[0].prev)
                    .map(|e| e.state),
                Some(UtxoState::SpentFinalized { .. })
            )
        })
        .expect("a payment of the tip not confirmed yet")
        .clone();
    // The next height starts (its timer) before the rounds that would
    // confirm the rest have run.
    let start = net.now + 10_000;
    let m = net.nodes[i].as_mut().unwrap();
    m.handle_timeout(start, &net.stores[i]).unwrap();
    let layer = m.block_layer().unwrap();
    assert!(!layer.confirming(), "the tip is wholly confirmed first");
    assert_eq!(
        layer.consensus().awaiting_proposal(),
        Some((tip.height + 1, 0))
    );
    assert!(matches!(
        m.engine().utxo(&pending.inputs[0].prev).map(|e| e.state),
        Some(UtxoState::Confirmed { .. })
    ));
    // The first round's leader proposes a block holding that payment again.
    let li = reg.position(&leader(7, &reg, tip.height + 1, 0)).unwrap();
    let block = Block::new(
        7,
        reg.epoch(),
        tip.height + 1,
        tip.hash,
        tip.time_ms + 1,
        net.pk(li),
        vec![pending],
    );
    let slot = Slot {
        chain_id: 7,
        epoch: reg.epoch(),
        height: tip.height + 1,
        round: 0,
    };
    let p = Proposal::sign(slot, None, block, &net.keys[li]);
    let invalid = |net: &Net| {
        let m = net.nodes[i].as_ref().unwrap();
        m.block_layer()
            .unwrap()
            .consensus()
            .stats()
            .invalid_proposals
    };
    let refused = invalid(&net);
    let from = net.pk(li);
    net.nodes[i]
        .as_mut()
        .unwrap()
        .handle_peer_message(
            start,
            from,
            PeerMessage::BlockProposal(Box::new(p)),
            &net.stores[i],
        )
        .unwrap();
    assert_eq!(invalid(&net), refused + 1, "refused: already confirmed");
    // It prevoted nil at once.
    assert_eq!(
        net.nodes[i]
            .as_ref()
            .unwrap()
            .block_layer()
            .unwrap()
            .consensus()
            .awaiting_proposal(),
        None
    );
}

/// Own consensus records far below the committed tip are pruned (a vote
/// for a height at or below the tip is never signed again); restarts still
/// never sign a conflicting vote and blocks go on.
#[test]
fn own_block_records_below_the_tip_are_pruned() {
    use crate::masternode::blocks::BLOCK_RECORDS_KEPT;
    let mut net = Net::with_config(4, blocks_cfg());
    let mut h = 0;
    while h < 2 * BLOCK_RECORDS_KEPT + 2 {
        net.run_for(1_000);
        h = (0..4).map(|i| net.height(i)).min().unwrap();
    }
    for i in 0..4 {
        let tip = net.height(i);
        let low = net.stores[i].lowest_block_record().unwrap();
        assert!(
            low > tip - 2 * BLOCK_RECORDS_KEPT,
            "node {i}: {low} of {tip}"
        );
        assert!(low >= BLOCK_RECORDS_KEPT, "records were pruned: {low}");
        net.nodes[i] = None;
        net.start(i);
    }
    net.links();
    net.run_for(3_000);
    assert!(
        (0..4).map(|i| net.height(i)).min().unwrap() > h,
        "blocks go on"
    );
    net.same_chain();
    for i in 0..4 {
        let c = net.nodes[i]
            .as_ref()
            .unwrap()
            .block_layer()
            .unwrap()
            .consensus();
        assert_eq!(c.stats().refused_conflicting, 0);
    }
}

#[test]
fn block_messages_are_checked_before_the_consensus_sees_them() {
    use crate::blocks::{BlockVote, Slot, VoteKind};
    let mut net = Net::with_config(4, blocks_cfg());
    net.run_for(600);
    let reg = net.genesis.registry.clone();
    let (now, from) = (net.now, net.pk(1));
    let height = net.nodes[0].as_ref().unwrap().block_tip().unwrap().height + 1;
    let slot = Slot {
        chain_id: 7,
        epoch: reg.epoch(),
        height,
        round: 0,
    };
    let refused = |net: &Net| {
        let m = net.nodes[0].as_ref().unwrap();
        let rep = m.peer_book.book().reputation(&from).unwrap_or(0);
        (m.block_layer().unwrap().stats().refused_messages, rep)
    };
    let (refused0, rep0) = refused(&net);
    // The inline path (the simulator's): a forged vote is refused and
    // costs its sender reputation.
    let mut forged = BlockVote::sign(slot, VoteKind::Prevote, None, &net.keys[1]);
    forged.signature[3] ^= 1;
    let m = net.nodes[0].as_mut().unwrap();
    m.handle_peer_message(
        now,
        from,
        PeerMessage::BlockVote(forged.clone()),
        &net.stores[0],
    )
    .unwrap();
    let (refused1, rep1) = refused(&net);
    assert_eq!(refused1, refused0 + 1);
    assert!(rep1 < rep0, "the sender lost reputation: {rep0} -> {rep1}");
    // The node's path: the check runs elsewhere, its verdict comes in.
    let verdict = blocks::check_block_message(7, &reg, PeerMessage::BlockVote(forged));
    let Some(Err(e)) = verdict else {
        panic!("a forged vote does not pass its check: {verdict:?}");
    };
    let m = net.nodes[0].as_mut().unwrap();
    m.handle_refused_block_message(now, &from, e);
    let (refused2, rep2) = refused(&net);
    assert_eq!(refused2, refused1 + 1);
    assert!(rep2 < rep1, "the same penalty: {rep1} -> {rep2}");
    // A genuine vote passes its check and is taken without a refusal.
    let genuine = BlockVote::sign(slot, VoteKind::Prevote, None, &net.keys[1]);
    let Some(Ok(checked)) = blocks::check_block_message(7, &reg, PeerMessage::BlockVote(genuine))
    else {
        panic!("a genuine vote passes its check");
    };
    let m = net.nodes[0].as_mut().unwrap();
    m.handle_checked_block_message(now, from, checked, &net.stores[0])
        .unwrap();
    assert_eq!(refused(&net).0, refused2, "no refusal for a genuine vote");
    assert!(
        blocks::check_block_message(7, &reg, PeerMessage::Ping(1)).is_none(),
        "not a block message"
    );
}

/// Only TimeProof replies leave before the round is durable, and a session
/// with a reply held for the sync hears the rest of its round after it, in
/// order.
#[test]
fn only_proofs_leave_before_the_sync_and_each_session_keeps_its_order() {
    use crate::protocol::audience::WalletReply;
    use crate::protocol::timeproof::TimeProof;
    use crate::protocol::types::Transaction;
    let proof = |n: u8| WalletReply::TimeProof {
        tx: Transaction::build_signed(1, &SigningKey::from_bytes(&[n; 32]), &[], vec![]),
        proof: TimeProof {
            chain_id: 1,
            txid: Txid([n; 32]),
            votes: vec![],
        },
    };
    let accepted = |n: u8| WalletReply::TransactionAccepted(Txid([n; 32]));
    let (a, b, c) = (SessionId(1), SessionId(2), SessionId(3));
    let mut round = Round {
        wallet: vec![
            (a, accepted(1)),
            (b, proof(2)),
            (a, proof(3)),
            (c, proof(4)),
            (b, accepted(5)),
            (b, proof(6)),
            (c, proof(7)),
        ],
        ..Round::default()
    };
    let early = round.take_replies_before_durable();
    assert_eq!(early, vec![(b, proof(2)), (c, proof(4)), (c, proof(7))]);
    assert_eq!(
        round.wallet,
        vec![
            (a, accepted(1)),
            (a, proof(3)),
            (b, accepted(5)),
            (b, proof(6))
        ]
    );
    let mut plain = Round {
        wallet: vec![(a, accepted(1))],
        ..Round::default()
    };
    assert!(plain.take_replies_before_durable().is_empty());
    assert_eq!(plain.wallet, vec![(a, accepted(1))]);
}
