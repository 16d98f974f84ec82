//! The wallet-interest router: which wallet session hears what. Pure: a
//! session is a [`SessionId`] the driver chose (never reused); the router
//! holds no channel, and its answers come out as `(SessionId, WalletReply)`
//! pairs, in [`Round::wallet`](super::Round::wallet).
//!
//! A session hears:
//! - the outcome of each transaction it submitted and is waiting on
//!   (`TransactionAccepted`, then `TimeProof` or `TransactionRejected`; the
//!   entry is removed with the final outcome);
//! - for each finalized transaction touching an address it subscribed:
//!   `NewTransactionNotification`, then one `UtxoStateNotification` per
//!   output paying that address that the transaction spent or created.
//!
//! Everything a wallet controls here is capped ([`MAX_SUBSCRIPTIONS_PER_SESSION`],
//! [`MAX_SUBSCRIPTIONS_TOTAL`], [`MAX_WAITING_PER_SESSION`]); each refusal is
//! counted in [`RouterStats`]. Closing a session frees all it held;
//! [`Router::unsubscribe`] and [`Router::unwatch`] free one entry each.

use std::collections::{HashMap, HashSet};

use crate::protocol::audience::WalletReply;
use crate::protocol::engine::Event;
use crate::protocol::types::{Address, OutPoint, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};

/// A wallet session, numbered by the driver. Ids must not be reused: an
/// input for a closed (or never opened) session is ignored, so a late input
/// (a transaction still in the verifier when its session closed) cannot
/// bring a session's state back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Distinct addresses one session may subscribe. Further addresses are
/// refused (the session is told with an `Error` of code
/// [`error_code::SUBSCRIPTION_LIMIT`]) and counted in
/// [`RouterStats::subscriptions_refused_session`]; duplicates cost nothing.
pub const MAX_SUBSCRIPTIONS_PER_SESSION: usize = 1_024;

/// (address, session) subscriptions the node holds over all sessions. Over
/// it, new subscriptions are refused like those over the session cap and
/// counted in [`RouterStats::subscriptions_refused_total`].
pub const MAX_SUBSCRIPTIONS_TOTAL: usize = 100_000;

/// Submitted transactions one session may wait on at once (outcome not yet
/// sent). A new submission over it is refused with `TransactionRejected
/// {MempoolFull}` before the engine sees it, and counted in
/// [`RouterStats::submissions_refused`].
pub const MAX_WAITING_PER_SESSION: usize = 4_096;

/// Codes of the `Error {code, detail}` frames a masternode sends a wallet
/// session after its handshake (documented in docs/PROTOCOL.md, "Limits").
/// They start at 0x0101, apart from the handshake refusal codes.
pub mod error_code {
    /// Some addresses of a `WalletSubscribe` were refused (session or node
    /// cap); the others are subscribed. The session stays open.
    pub const SUBSCRIPTION_LIMIT: u16 = 0x0101;
    /// A query was refused: the session has too many waiting for answers.
    /// The session stays open.
    pub const QUERY_LIMIT: u16 = 0x0102;
    /// The connection is refused: too many wallet connections (in total or
    /// from this IP). The connection is closed.
    pub const CONNECTION_LIMIT: u16 = 0x0103;
    /// The session sent no frame for the idle timeout. The connection is
    /// closed.
    pub const IDLE_TIMEOUT: u16 = 0x0104;
    /// The masternode's core queue is full: the request was not handled;
    /// retry. The session stays open (closed if it was the session's start).
    pub const OVERLOADED: u16 = 0x0105;
    /// A `UtxoStateQuery` or `AddressQuery` could not be read from the
    /// masternode's store (a damaged record, say); nothing else changed.
    /// The session stays open.
    pub const QUERY_FAILED: u16 = 0x0106;
}

/// What the router holds and refused. The first three are gauges (now),
/// the rest counters (since start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub sessions: u64,
    /// (address, session) subscriptions held.
    pub subscriptions: u64,
    /// (txid, session) entries waiting on an outcome.
    pub waiting: u64,
    /// Addresses refused because their session had
    /// [`MAX_SUBSCRIPTIONS_PER_SESSION`].
    pub subscriptions_refused_session: u64,
    /// Addresses refused because the node had [`MAX_SUBSCRIPTIONS_TOTAL`].
    pub subscriptions_refused_total: u64,
    /// Submissions refused because their session waited on
    /// [`MAX_WAITING_PER_SESSION`].
    pub submissions_refused: u64,
}

/// What [`Router::watch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// The session now waits on the txid.
    Added,
    /// It already did.
    Already,
    /// No such session (never opened, or closed): nothing is routed.
    NoSession,
    /// The session waits on [`MAX_WAITING_PER_SESSION`] already: refused.
    Full,
}

#[derive(Default)]
struct Session {
    addresses: HashSet<Address>,
    waiting: HashSet<Txid>,
}

/// Wallet interest by txid and by address, per session.
#[derive(Default)]
pub struct Router {
    sessions: HashMap<SessionId, Session>,
    by_txid: HashMap<Txid, Vec<SessionId>>,
    /// Subscribers of an address, in the order they subscribed.
    by_address: HashMap<Address, Vec<SessionId>>,
    subscriptions: usize,
    waiting: usize,
    out: Vec<(SessionId, WalletReply)>,
    stats: RouterStats,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// A session opened (opening an open session does nothing).
    pub fn open(&mut self, s: SessionId) {
        self.sessions.entry(s).or_default();
    }

    /// A session closed: its subscriptions, the txids it waited on and its
    /// replies not yet taken are dropped.
    pub fn close(&mut self, s: SessionId) {
        let Some(state) = self.sessions.remove(&s) else {
            return;
        };
        for a in &state.addresses {
            remove_from(&mut self.by_address, a, s);
        }
        for t in &state.waiting {
            remove_from(&mut self.by_txid, t, s);
        }
        self.subscriptions -= state.addresses.len();
        self.waiting -= state.waiting.len();
        self.out.retain(|(to, _)| *to != s);
    }

    pub fn is_open(&self, s: SessionId) -> bool {
        self.sessions.contains_key(&s)
    }

    /// Subscribes `s` to `addrs` (duplicates, within the request or with
    /// earlier ones, are ignored). Returns the `Error` to send when some
    /// were refused over a cap.
    pub fn subscribe(&mut self, s: SessionId, addrs: Vec<Address>) -> Option<WalletReply> {
        let state = self.sessions.get_mut(&s)?;
        let asked = addrs.len();
        let mut refused: HashSet<Address> = HashSet::new();
        let (mut over_session, mut over_total) = (0u64, 0u64);
        for a in addrs {
            if state.addresses.contains(&a) || refused.contains(&a) {
                continue;
            }
            if state.addresses.len() >= MAX_SUBSCRIPTIONS_PER_SESSION {
                over_session += 1;
                refused.insert(a);
            } else if self.subscriptions >= MAX_SUBSCRIPTIONS_TOTAL {
                over_total += 1;
                refused.insert(a);
            } else {
                state.addresses.insert(a);
                self.by_address.entry(a).or_default().push(s);
                self.subscriptions += 1;
            }
        }
        if refused.is_empty() {
            return None;
        }
        self.stats.subscriptions_refused_session += over_session;
        self.stats.subscriptions_refused_total += over_total;
        Some(WalletReply::Error {
            code: error_code::SUBSCRIPTION_LIMIT,
            detail: format!(
                "subscription limit: {} of {asked} addresses refused; this session \
                 has {} (at most {MAX_SUBSCRIPTIONS_PER_SESSION}), this node {} \
                 (at most {MAX_SUBSCRIPTIONS_TOTAL})",
                refused.len(),
                state.addresses.len(),
                self.subscriptions,
            ),
        })
    }

    /// Unsubscribes `s` from `addrs`; returns how many it was subscribed
    /// to. Each frees its place under both caps.
    pub fn unsubscribe(&mut self, s: SessionId, addrs: &[Address]) -> usize {
        let Some(state) = self.sessions.get_mut(&s) else {
            return 0;
        };
        let mut removed = 0;
        for a in addrs {
            if state.addresses.remove(a) {
                remove_from(&mut self.by_address, a, s);
                removed += 1;
            }
        }
        self.subscriptions -= removed;
        removed
    }

    /// `s` no longer waits on `txid` (its outcome is not sent); returns
    /// whether it did.
    pub fn unwatch(&mut self, s: SessionId, txid: &Txid) -> bool {
        let Some(state) = self.sessions.get_mut(&s) else {
            return false;
        };
        if !state.waiting.remove(txid) {
            return false;
        }
        remove_from(&mut self.by_txid, txid, s);
        self.waiting -= 1;
        true
    }

    /// `s` waits on the outcome of `txid`.
    pub fn watch(&mut self, s: SessionId, txid: Txid) -> Watch {
        let Some(state) = self.sessions.get_mut(&s) else {
            return Watch::NoSession;
        };
        if state.waiting.contains(&txid) {
            return Watch::Already;
        }
        if state.waiting.len() >= MAX_WAITING_PER_SESSION {
            self.stats.submissions_refused += 1;
            return Watch::Full;
        }
        state.waiting.insert(txid);
        self.by_txid.entry(txid).or_default().push(s);
        self.waiting += 1;
        Watch::Added
    }

    /// Queues the replies `ev` calls for, in the order sessions must hear
    /// them.
    pub fn on_event(&mut self, ev: &Event) {
        match ev {
            Event::Accepted { txid } => {
                if let Some(subs) = self.by_txid.get(txid) {
                    for s in subs {
                        self.out.push((*s, WalletReply::TransactionAccepted(*txid)));
                    }
                }
            }
            Event::Finalized {
                txid,
                proof,
                tx,
                addresses,
                spent,
                ..
            } => {
                for s in self.settle(txid) {
                    self.out.push((
                        s,
                        WalletReply::TimeProof {
                            tx: (**tx).clone(),
                            proof: (**proof).clone(),
                        },
                    ));
                }
                if !self.by_address.is_empty() {
                    self.notify_addresses(*txid, tx, addresses, spent);
                }
            }
            Event::Rejected {
                txid,
                reason,
                detail,
                rejecters,
            } => {
                for s in self.settle(txid) {
                    self.out.push((
                        s,
                        WalletReply::TransactionRejected {
                            txid: *txid,
                            reason: *reason,
                            detail: detail.clone(),
                            rejecters: rejecters.clone(),
                        },
                    ));
                }
            }
            Event::Equivocation { .. } | Event::ConflictingProofs(_) => {}
        }
    }

    /// The replies queued since the last call.
    pub fn take_output(&mut self) -> Vec<(SessionId, WalletReply)> {
        std::mem::take(&mut self.out)
    }

    pub fn stats(&self) -> RouterStats {
        RouterStats {
            sessions: self.sessions.len() as u64,
            subscriptions: self.subscriptions as u64,
            waiting: self.waiting as u64,
            ..self.stats.clone()
        }
    }

    /// The sessions waiting on `txid`, no longer waiting.
    fn settle(&mut self, txid: &Txid) -> Vec<SessionId> {
        let subs = self.by_txid.remove(txid).unwrap_or_default();
        for s in &subs {
            if let Some(state) = self.sessions.get_mut(s) {
                state.waiting.remove(txid);
            }
        }
        self.waiting -= subs.len();
        subs
    }

    /// Subscribers of an address hear the transaction, then the state of
    /// each of their outputs it spent or created.
    fn notify_addresses(
        &mut self,
        txid: Txid,
        tx: &Transaction,
        addresses: &[Address],
        spent: &[(OutPoint, UtxoEntry)],
    ) {
        let created = tx.outputs.iter().enumerate().map(|(v, o)| {
            (
                OutPoint {
                    txid,
                    vout: v as u32,
                },
                UtxoEntry {
                    output: *o,
                    state: UtxoState::Unspent,
                },
            )
        });
        let changes: Vec<(OutPoint, UtxoEntry)> = spent.iter().copied().chain(created).collect();
        for a in addresses {
            let Some(subs) = self.by_address.get(a) else {
                continue;
            };
            let mine: Vec<&(OutPoint, UtxoEntry)> = changes
                .iter()
                .filter(|(_, e)| e.output.address == *a)
                .collect();
            for s in subs {
                self.out.push((
                    *s,
                    WalletReply::NewTransactionNotification {
                        txid,
                        tx: tx.clone(),
                    },
                ));
                for (op, e) in &mine {
                    self.out.push((
                        *s,
                        WalletReply::UtxoStateNotification {
                            outpoint: *op,
                            entry: *e,
                        },
                    ));
                }
            }
        }
    }
}

fn remove_from<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<SessionId>>, k: &K, s: SessionId) {
    if let Some(v) = map.get_mut(k) {
        v.retain(|x| *x != s);
        if v.is_empty() {
            map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::protocol::timeproof::TimeProof;
    use crate::protocol::types::{TxInput, TxOutput};
    use crate::protocol::validation::RejectCode;

    fn addr(i: u32) -> Address {
        let mut a = [0u8; 20];
        a[..4].copy_from_slice(&i.to_le_bytes());
        Address(a)
    }

    fn txid(i: u8) -> Txid {
        Txid([i; 32])
    }

    const S1: SessionId = SessionId(1);
    const S2: SessionId = SessionId(2);

    /// A transaction spending one output of `from` and paying `to`.
    fn payment(seed: u8, to: &[Address]) -> Transaction {
        Transaction {
            version: 1,
            chain_id: 7,
            inputs: vec![TxInput {
                prev: OutPoint {
                    txid: txid(seed),
                    vout: 0,
                },
                public_key: Default::default(),
                signature: [0; 64],
            }],
            outputs: to
                .iter()
                .map(|a| TxOutput {
                    amount: 1_000,
                    address: *a,
                })
                .collect(),
            lock_time: 0,
        }
    }

    fn finalized(
        tx: &Transaction,
        addresses: Vec<Address>,
        spent: Vec<(OutPoint, UtxoEntry)>,
    ) -> Event {
        Event::Finalized {
            txid: tx.txid(),
            proof: Arc::new(TimeProof {
                chain_id: 7,
                txid: tx.txid(),
                votes: vec![],
            }),
            tx: Arc::new(tx.clone()),
            age_ms: Some(0),
            addresses,
            spent,
        }
    }

    fn names(out: &[(SessionId, WalletReply)]) -> Vec<(u64, &'static str)> {
        out.iter()
            .map(|(s, r)| {
                let n = match r {
                    WalletReply::TransactionAccepted(_) => "accepted",
                    WalletReply::TransactionRejected { .. } => "rejected",
                    WalletReply::TimeProof { .. } => "proof",
                    WalletReply::NewTransactionNotification { .. } => "new-tx",
                    WalletReply::UtxoStateNotification { .. } => "utxo",
                    WalletReply::Error { .. } => "error",
                    _ => "other",
                };
                (s.0, n)
            })
            .collect()
    }

    #[test]
    fn subscriptions_are_deduplicated_and_capped_per_session() {
        let mut r = Router::new();
        r.open(S1);
        let mut addrs: Vec<Address> = (0..1_000).map(addr).collect();
        addrs.extend((0..500).map(addr)); // duplicates within the request
        assert_eq!(r.subscribe(S1, addrs), None);
        assert_eq!(r.stats().subscriptions, 1_000);
        // 1,000 more distinct, plus the first ones again: 24 fit.
        let mut more: Vec<Address> = (1_000..2_000).map(addr).collect();
        more.extend((0..1_000).map(addr));
        more.extend((1_500..1_600).map(addr)); // refused twice, counted once
        match r.subscribe(S1, more) {
            Some(WalletReply::Error { code, detail }) => {
                assert_eq!(code, error_code::SUBSCRIPTION_LIMIT);
                assert!(detail.contains("976 of 2100"), "{detail}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let st = r.stats();
        assert_eq!(st.subscriptions, MAX_SUBSCRIPTIONS_PER_SESSION as u64);
        assert_eq!(st.subscriptions_refused_session, 976);
        assert_eq!(st.subscriptions_refused_total, 0);
        // Already subscribed: no refusal.
        assert_eq!(r.subscribe(S1, vec![addr(3), addr(1_010)]), None);
    }

    #[test]
    fn subscriptions_are_capped_in_total() {
        let mut r = Router::new();
        let per = MAX_SUBSCRIPTIONS_PER_SESSION as u32;
        let full = (MAX_SUBSCRIPTIONS_TOTAL as u32).div_ceil(per);
        for s in 0..full {
            r.open(SessionId(s as u64));
            let reply = r.subscribe(
                SessionId(s as u64),
                (s * per..(s + 1) * per).map(addr).collect(),
            );
            if s + 1 < full {
                assert_eq!(reply, None);
            } else {
                assert!(matches!(
                    reply,
                    Some(WalletReply::Error {
                        code: error_code::SUBSCRIPTION_LIMIT,
                        ..
                    })
                ));
            }
        }
        let st = r.stats();
        assert_eq!(st.subscriptions, MAX_SUBSCRIPTIONS_TOTAL as u64);
        assert_eq!(
            st.subscriptions_refused_total,
            (full * per) as u64 - MAX_SUBSCRIPTIONS_TOTAL as u64
        );
        // Unsubscribing makes room again, one for one.
        assert_eq!(r.unsubscribe(SessionId(1), &[addr(per)]), 1);
        r.open(SessionId(999_998));
        assert_eq!(
            r.subscribe(SessionId(999_998), vec![addr(u32::MAX - 1)]),
            None
        );
        assert!(r
            .subscribe(SessionId(999_998), vec![addr(u32::MAX - 2)])
            .is_some());
        // Closing a session makes room again.
        r.close(SessionId(0));
        r.open(SessionId(999_999));
        assert_eq!(r.subscribe(SessionId(999_999), vec![addr(u32::MAX)]), None);
    }

    #[test]
    fn unsubscribe_and_unwatch_free_their_places_and_silence_the_session() {
        let (a, b) = (addr(1), addr(2));
        let t = payment(1, &[a]);
        let mut r = Router::new();
        r.open(S1);
        r.open(S2);
        assert_eq!(r.subscribe(S1, vec![a, b]), None);
        assert_eq!(r.subscribe(S2, vec![a]), None);
        assert_eq!(r.watch(S1, t.txid()), Watch::Added);
        assert_eq!(r.stats().subscriptions, 3);
        // Only what was subscribed counts; a second time is a no-op.
        assert_eq!(r.unsubscribe(S1, &[a, addr(9)]), 1);
        assert_eq!(r.unsubscribe(S1, &[a]), 0);
        assert_eq!(r.unsubscribe(SessionId(99), &[a]), 0);
        assert_eq!(r.stats().subscriptions, 2);
        assert!(r.unwatch(S1, &t.txid()));
        assert!(!r.unwatch(S1, &t.txid()));
        assert!(!r.unwatch(SessionId(99), &t.txid()));
        assert_eq!(r.stats().waiting, 0);
        // S1 hears nothing of the payment any more; S2 still hears a.
        r.on_event(&finalized(&t, vec![a], vec![]));
        assert_eq!(names(&r.take_output()), vec![(2, "new-tx"), (2, "utxo")]);
        // Closing frees what is left, without counting a freed place twice.
        r.close(S1);
        r.close(S2);
        assert_eq!(r.stats().subscriptions, 0);
    }

    #[test]
    fn unknown_sessions_hold_nothing() {
        let mut r = Router::new();
        assert_eq!(r.subscribe(S1, vec![addr(1)]), None);
        assert_eq!(r.watch(S1, txid(1)), Watch::NoSession);
        r.open(S1);
        r.close(S1);
        assert_eq!(r.watch(S1, txid(1)), Watch::NoSession);
        r.on_event(&Event::Accepted { txid: txid(1) });
        assert!(r.take_output().is_empty());
        assert_eq!(r.stats(), RouterStats::default());
    }

    #[test]
    fn waiting_txids_are_capped_and_freed_by_their_outcome() {
        let mut r = Router::new();
        r.open(S1);
        for i in 0..MAX_WAITING_PER_SESSION as u32 {
            let mut t = [0u8; 32];
            t[..4].copy_from_slice(&i.to_le_bytes());
            assert_eq!(r.watch(S1, Txid(t)), Watch::Added);
        }
        let first = Txid([0; 32]);
        assert_eq!(r.watch(S1, first), Watch::Already);
        assert_eq!(r.watch(S1, txid(0xee)), Watch::Full);
        assert_eq!(r.stats().submissions_refused, 1);
        // Accepted keeps the entry; the rejection frees it.
        r.on_event(&Event::Accepted { txid: first });
        assert_eq!(r.stats().waiting, MAX_WAITING_PER_SESSION as u64);
        r.on_event(&Event::Rejected {
            txid: first,
            reason: RejectCode::InputSpent,
            detail: "spent".into(),
            rejecters: vec![],
        });
        assert_eq!(
            names(&r.take_output()),
            vec![(1, "accepted"), (1, "rejected")]
        );
        assert_eq!(r.stats().waiting, MAX_WAITING_PER_SESSION as u64 - 1);
        assert_eq!(r.watch(S1, txid(0xee)), Watch::Added);
        // A second rejection of the same txid goes to nobody.
        r.on_event(&Event::Rejected {
            txid: first,
            reason: RejectCode::InputSpent,
            detail: "spent".into(),
            rejecters: vec![],
        });
        assert!(r.take_output().is_empty());
    }

    #[test]
    fn outcomes_and_notifications_in_order() {
        let (a, b, c) = (addr(1), addr(2), addr(3));
        let mut r = Router::new();
        r.open(S1);
        r.open(S2);
        // S1 submitted the payment and watches b; S2 watches a and b.
        let tx = payment(9, &[b, a]);
        assert_eq!(r.watch(S1, tx.txid()), Watch::Added);
        assert_eq!(r.subscribe(S1, vec![b]), None);
        assert_eq!(r.subscribe(S2, vec![a, b, c]), None);
        let spent_op = OutPoint {
            txid: txid(9),
            vout: 0,
        };
        let spent_entry = UtxoEntry {
            output: TxOutput {
                amount: 2_000,
                address: a,
            },
            state: UtxoState::SpentFinalized { txid: tx.txid() },
        };
        r.on_event(&Event::Accepted { txid: tx.txid() });
        r.on_event(&finalized(&tx, vec![a, b], vec![(spent_op, spent_entry)]));
        let out = r.take_output();
        assert_eq!(
            names(&out),
            vec![
                (1, "accepted"),
                (1, "proof"),
                // address a: S2 only; the spent output and the change
                (2, "new-tx"),
                (2, "utxo"),
                (2, "utxo"),
                // address b: S1 then S2 (subscription order)
                (1, "new-tx"),
                (1, "utxo"),
                (2, "new-tx"),
                (2, "utxo"),
            ]
        );
        let ops: Vec<OutPoint> = out
            .iter()
            .filter_map(|(_, m)| match m {
                WalletReply::UtxoStateNotification { outpoint, .. } => Some(*outpoint),
                _ => None,
            })
            .collect();
        let created = |vout| OutPoint {
            txid: tx.txid(),
            vout,
        };
        assert_eq!(ops, vec![spent_op, created(1), created(0), created(0)]);
        assert_eq!(r.stats().waiting, 0);
    }

    #[test]
    fn closing_a_session_frees_everything() {
        let mut r = Router::new();
        r.open(S1);
        r.open(S2);
        r.subscribe(S1, (0..100).map(addr).collect());
        r.subscribe(S2, (50..60).map(addr).collect());
        for i in 0..10 {
            r.watch(S1, txid(i));
        }
        r.watch(S2, txid(3));
        r.on_event(&Event::Accepted { txid: txid(3) });
        r.close(S1);
        // S1's queued reply is gone, S2's stays.
        assert_eq!(names(&r.take_output()), vec![(2, "accepted")]);
        let st = r.stats();
        assert_eq!((st.sessions, st.subscriptions, st.waiting), (1, 10, 1));
        r.close(S2);
        let st = r.stats();
        assert_eq!((st.sessions, st.subscriptions, st.waiting), (0, 0, 0));
        assert!(r.by_address.is_empty() && r.by_txid.is_empty());
        // Nothing is routed to a closed session.
        let tx = payment(1, &[addr(55)]);
        r.on_event(&finalized(&tx, vec![addr(55)], vec![]));
        assert!(r.take_output().is_empty());
    }
}
