//! Catch-up (anti-entropy) from each peer's finality log.
//!
//! Every masternode appends each transaction it finalizes to a durable,
//! append-only finality log. A peer is asked for its log from a cursor
//! (`FinalityLogRequest { from }`); it answers with a page of txids and its
//! log's length (`FinalityLogPage`). For each txid this node does not know as
//! final it asks that peer for the proof (`ProofRequest`), verifies it and
//! finalizes. Pages are asked for again every `poll_ms`, so a node cut off
//! from the fast path, or whose votes and proofs were lost, converges within
//! a poll interval once the reliable path works.
//!
//! A peer counts as *synced* once this node has walked its log to the head it
//! reported and fetched every proof listed. Until peers carrying (with this
//! node) a quorum of weight are synced, the masternode approves nothing (see
//! [`CatchUp::caught_up`]), so a stale node never locks coins that are
//! already spent elsewhere.
//!
//! Pure: time is passed in; the effects are the requests returned.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::message::Message;
use crate::protocol::types::{PublicKey, Txid};

#[derive(Clone, Debug)]
pub struct CatchUpConfig {
    /// How often a synced peer's log is polled for new entries.
    pub poll_ms: u64,
    /// A page or proof not answered in this long is asked for again.
    pub retry_ms: u64,
    /// Most proofs asked of one peer and not yet received.
    pub max_fetching: usize,
    /// A proof asked this many times without an answer is given up (and
    /// counted); the next poll from position 0 after a restart lists it again.
    pub max_tries: u32,
    /// How long a freshly connected peer is waited for before the gate opens
    /// without it (a silent or Byzantine peer cannot hold the node closed).
    pub sync_wait_ms: u64,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        CatchUpConfig {
            poll_ms: 1_000,
            retry_ms: 2_000,
            max_fetching: 2_048,
            max_tries: 30,
            sync_wait_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    pub pages_received: u64,
    pub proofs_requested: u64,
    pub proofs_given_up: u64,
    pub stale_pages: u64,
    pub peer_log_resets: u64,
    pub sync_timeouts: u64,
}

#[derive(Debug)]
struct PeerSync {
    connected: bool,
    connected_at: u64,
    /// Next log position wanted from this peer.
    cursor: u64,
    /// The peer's log length, as last reported.
    head: u64,
    /// Walked to the reported head with every listed proof fetched, since
    /// this connection came up (or waited for longer than `sync_wait_ms`).
    synced: bool,
    page_sent_at: Option<u64>,
    last_poll: u64,
    /// Proofs asked of this peer: when last asked, how many times.
    fetching: BTreeMap<Txid, (u64, u32)>,
}

impl PeerSync {
    fn new() -> Self {
        PeerSync {
            connected: false,
            connected_at: 0,
            cursor: 0,
            head: 0,
            synced: false,
            page_sent_at: None,
            last_poll: 0,
            fetching: BTreeMap::new(),
        }
    }
}

/// A `FinalityLogPage` as received.
#[derive(Clone, Copy, Debug)]
pub struct LogPage<'a> {
    pub from: u64,
    pub head: u64,
    pub txids: &'a [Txid],
}

pub struct CatchUp {
    cfg: CatchUpConfig,
    peers: HashMap<PublicKey, PeerSync>,
    stats: CatchUpStats,
    /// The walk waits ([`CatchUp::set_held`]).
    held: bool,
}

impl CatchUp {
    pub fn new(cfg: CatchUpConfig, peers: impl IntoIterator<Item = PublicKey>) -> Self {
        CatchUp {
            cfg,
            peers: peers.into_iter().map(|p| (p, PeerSync::new())).collect(),
            stats: CatchUpStats::default(),
            held: false,
        }
    }

    /// Holds the walk of peers' logs (no pages asked, so no new proofs)
    /// while `held`, for as long as the block sync runs: block answers
    /// travel below proofs and would starve behind a fresh node's thousands
    /// of proof answers, and the blocks confirm most of the same payments.
    /// Proofs already asked are still asked again and applied. The wait for
    /// a peer's sync ([`CatchUpConfig::sync_wait_ms`]) counts from the end
    /// of the hold, so the approval gate does not open on a timeout the
    /// hold caused.
    pub fn set_held(&mut self, now: u64, held: bool) {
        if held {
            for p in self.peers.values_mut().filter(|p| p.connected) {
                p.connected_at = now;
            }
        }
        self.held = held;
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    pub fn stats(&self) -> &CatchUpStats {
        &self.stats
    }

    pub fn is_connected(&self, peer: &PublicKey) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected)
    }

    pub fn connected(&self) -> impl Iterator<Item = &PublicKey> {
        self.peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(k, _)| k)
    }

    /// A connection to `peer` came up: walk its log again from the cursor.
    pub fn connected_peer(&mut self, now: u64, peer: PublicKey) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.connected {
            return;
        }
        p.connected = true;
        p.connected_at = now;
        p.synced = false;
        p.page_sent_at = None;
        p.last_poll = 0;
    }

    pub fn disconnected_peer(&mut self, peer: &PublicKey) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.connected = false;
            p.synced = false;
            p.page_sent_at = None;
            // Asked proofs may never come over a dead connection.
            p.fetching.clear();
        }
    }

    /// True when peers that are connected and synced carry, with
    /// `my_weight`, at least `quorum`. A peer that reconnects does not close
    /// the gate while the others still make a quorum: what it knows that they
    /// do not, it cannot have finalized without them.
    pub fn caught_up(
        &self,
        my_weight: u64,
        quorum: u64,
        weight_of: impl Fn(&PublicKey) -> u64,
    ) -> bool {
        let synced: u64 = self
            .peers
            .iter()
            .filter(|(_, p)| p.connected && p.synced)
            .map(|(k, _)| weight_of(k))
            .sum();
        my_weight + synced >= quorum
    }

    /// Timers: pages to ask for, proofs to ask again. `known_final` tells
    /// which txids need nothing more.
    pub fn poll(
        &mut self,
        now: u64,
        known_final: impl Fn(&Txid) -> bool,
        out: &mut Vec<(PublicKey, Message)>,
    ) {
        let mut keys: Vec<PublicKey> = self.peers.keys().copied().collect();
        keys.sort();
        for key in keys {
            let p = self.peers.get_mut(&key).expect("listed");
            if !p.connected {
                continue;
            }
            p.fetching.retain(|t, _| !known_final(t));
            let mut again = Vec::new();
            let mut give_up = Vec::new();
            for (txid, (at, tries)) in p.fetching.iter_mut() {
                if now.saturating_sub(*at) >= self.cfg.retry_ms {
                    if *tries >= self.cfg.max_tries {
                        give_up.push(*txid);
                    } else {
                        *at = now;
                        *tries += 1;
                        again.push(*txid);
                    }
                }
            }
            for t in give_up {
                p.fetching.remove(&t);
                self.stats.proofs_given_up += 1;
            }
            for t in again {
                self.stats.proofs_requested += 1;
                out.push((key, Message::ProofRequest(t)));
            }
            if !p.synced && now.saturating_sub(p.connected_at) >= self.cfg.sync_wait_ms {
                // Waited long enough: stop holding the gate for this peer
                // (keep fetching from it in the background).
                p.synced = true;
                self.stats.sync_timeouts += 1;
            }
            if self.held {
                continue;
            }
            let page_due = match p.page_sent_at {
                Some(at) => now.saturating_sub(at) >= self.cfg.retry_ms,
                None => p.cursor < p.head || now.saturating_sub(p.last_poll) >= self.cfg.poll_ms,
            };
            if page_due && p.fetching.len() < self.cfg.max_fetching / 2 {
                p.page_sent_at = Some(now);
                p.last_poll = now.max(1);
                out.push((key, Message::FinalityLogRequest { from: p.cursor }));
            }
        }
    }

    /// A page of `peer`'s finality log. Pushes the proofs to ask it for.
    pub fn on_page(
        &mut self,
        now: u64,
        peer: PublicKey,
        page: LogPage<'_>,
        known_final: impl Fn(&Txid) -> bool,
        out: &mut Vec<(PublicKey, Message)>,
    ) {
        let LogPage { from, head, txids } = page;
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.connected || p.page_sent_at.is_none() || from != p.cursor {
            self.stats.stale_pages += 1;
            return;
        }
        self.stats.pages_received += 1;
        p.page_sent_at = None;
        if head < p.cursor {
            // The peer's log is shorter than what we walked: its database was
            // replaced. Walk it again from the start.
            self.stats.peer_log_resets += 1;
            p.cursor = 0;
            p.head = head;
            return;
        }
        let room = self.cfg.max_fetching.saturating_sub(p.fetching.len());
        let mut taken = 0;
        for txid in txids {
            if taken == room {
                break;
            }
            taken += 1;
            if known_final(txid) || p.fetching.contains_key(txid) {
                continue;
            }
            p.fetching.insert(*txid, (now, 1));
            self.stats.proofs_requested += 1;
            out.push((peer, Message::ProofRequest(*txid)));
        }
        p.cursor = from + taken as u64;
        p.head = head.max(p.cursor);
        if p.cursor < p.head && p.fetching.len() < self.cfg.max_fetching / 2 && !self.held {
            // More to walk: ask for the next page at once.
            p.page_sent_at = Some(now);
            out.push((peer, Message::FinalityLogRequest { from: p.cursor }));
        } else if p.fetching.is_empty() && p.cursor >= p.head {
            p.synced = true;
        }
    }

    /// A proof for `txid` was applied (or found known): nothing more to fetch.
    pub fn resolved(&mut self, txid: &Txid) {
        for p in self.peers.values_mut() {
            if p.fetching.remove(txid).is_some()
                && p.connected
                && p.fetching.is_empty()
                && p.cursor >= p.head
                && p.page_sent_at.is_none()
            {
                p.synced = true;
            }
        }
    }

    /// Whether any proof is being fetched (for tests and status).
    pub fn fetching(&self) -> usize {
        self.peers.values().map(|p| p.fetching.len()).sum()
    }

    /// The payment catch-up lag: the most finality-log entries one connected
    /// peer reported that this node has not walked yet.
    pub fn log_lag(&self) -> u64 {
        self.peers
            .values()
            .filter(|p| p.connected)
            .map(|p| p.head.saturating_sub(p.cursor))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lag_is_what_a_connected_peer_listed_beyond_the_walk() {
        let (a, b) = (PublicKey([1; 32]), PublicKey([2; 32]));
        let mut c = CatchUp::new(
            CatchUpConfig {
                max_fetching: 4,
                ..CatchUpConfig::default()
            },
            [a, b],
        );
        assert_eq!(c.log_lag(), 0);
        c.connected_peer(1, a);
        let mut out = Vec::new();
        c.poll(1_000, |_| false, &mut out);
        assert!(matches!(
            out[..],
            [(_, Message::FinalityLogRequest { from: 0 })]
        ));
        // A page of 4 entries of a 10-entry log, all unknown here: all 4
        // fetched, and the walk pauses (the fetch cap is full) with 6 left.
        let txids: Vec<Txid> = (0..4u8).map(|i| Txid([i; 32])).collect();
        out.clear();
        let page = LogPage {
            from: 0,
            head: 10,
            txids: &txids,
        };
        c.on_page(1_001, a, page, |_| false, &mut out);
        assert_eq!(c.log_lag(), 10 - 4);
        assert_eq!(c.fetching(), 4);
        // A disconnected peer's log says nothing about this node's lag.
        c.disconnected_peer(&a);
        assert_eq!(c.log_lag(), 0);
    }

    #[test]
    fn a_held_walk_asks_no_pages_and_its_sync_wait_starts_after() {
        let a = PublicKey([1; 32]);
        let cfg = CatchUpConfig::default();
        let wait = cfg.sync_wait_ms;
        let mut c = CatchUp::new(cfg, [a]);
        c.connected_peer(0, a);
        let mut out = Vec::new();
        c.poll(1_000, |_| false, &mut out);
        assert_eq!(out.len(), 1, "first page asked: {out:?}");
        // The page lists 4 of 100 entries. Held meanwhile: its proofs are
        // asked, but not the next page.
        c.set_held(1_001, true);
        let txids: Vec<Txid> = (0..4u8).map(|i| Txid([i; 32])).collect();
        out.clear();
        let page = LogPage {
            from: 0,
            head: 100,
            txids: &txids,
        };
        c.on_page(1_001, a, page, |_| false, &mut out);
        assert!(
            out.iter()
                .all(|(_, m)| matches!(m, Message::ProofRequest(_))),
            "{out:?}"
        );
        assert_eq!(out.len(), 4);
        // Held for longer than the sync wait: no page, and the gate stays
        // closed (the peer is not counted as synced on a timeout).
        for now in (2_000..=wait + 5_000).step_by(1_000) {
            c.set_held(now, true);
            out.clear();
            c.poll(now, |_| false, &mut out);
            assert!(
                !out.iter()
                    .any(|(_, m)| matches!(m, Message::FinalityLogRequest { .. })),
                "at {now}: {out:?}"
            );
        }
        assert!(!c.caught_up(0, 1, |_| 1));
        // Released: the walk goes on from where it stopped.
        let released = wait + 6_000;
        c.set_held(released, false);
        out.clear();
        c.poll(released, |t| txids.contains(t), &mut out);
        assert!(
            out.iter()
                .any(|(_, m)| matches!(m, Message::FinalityLogRequest { from: 4 })),
            "{out:?}"
        );
        assert!(
            !c.caught_up(0, 1, |_| 1),
            "the sync wait restarted at the release"
        );
    }
}
