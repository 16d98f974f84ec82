//! How this masternode reaches its peers: the persistent pool from `net/`
//! (QUIC by default, TCP as fallback, one long-lived connection per peer with
//! priority classes), or the plain TCP links of `links.rs` (one outbound
//! connection per peer, no priorities).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use time_net::pool::{Pool, Transport};
use time_net::priority::Priority;
use tokio::sync::mpsc;

use crate::node::wire::NetStats;
use crate::protocol::message::Message;
use crate::protocol::types::PublicKey;

/// Which peer transport to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerTransport {
    /// Pool over QUIC on UDP at the P2P port; mutual TLS bound to the
    /// masternode keys; one stream per priority class.
    Quic,
    /// Pool over TCP at the P2P port + 1; TLS 1.3 with the same key-bound
    /// certificates as QUIC; priority queue.
    Tcp,
    /// Plain authenticated TCP links on the P2P port (no priorities).
    Links,
}

impl PeerTransport {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "quic" => Some(PeerTransport::Quic),
            "tcp" => Some(PeerTransport::Tcp),
            "links" => Some(PeerTransport::Links),
            _ => None,
        }
    }

    /// Where a masternode whose P2P address is `p2p` listens for this transport.
    pub fn peer_addr(self, p2p: SocketAddr) -> SocketAddr {
        match self {
            PeerTransport::Tcp => SocketAddr::new(p2p.ip(), p2p.port().wrapping_add(1)),
            _ => p2p,
        }
    }

    pub fn pool_transport(self) -> Option<Transport> {
        match self {
            PeerTransport::Quic => Some(Transport::Quic),
            PeerTransport::Tcp => Some(Transport::Tcp),
            PeerTransport::Links => None,
        }
    }
}

/// The class a message travels in: transactions and locks first, then votes
/// and proofs, then bulk, then housekeeping.
pub fn priority_of(m: &Message) -> Priority {
    match m {
        Message::TransactionBroadcast(_) => Priority::Critical,
        Message::VoteBatch(_)
        | Message::TimeProof { .. }
        | Message::ProofRequest(_)
        | Message::RepairRequest { .. }
        | Message::Repair(_) => Priority::High,
        Message::Ping(_) | Message::Pong(_) => Priority::Low,
        _ => Priority::Normal,
    }
}

pub enum PeerNet {
    Pool(Pool),
    Links(HashMap<PublicKey, mpsc::Sender<Bytes>>),
}

impl PeerNet {
    /// Queues `frame` (an encoded `msg`) for one peer; false if refused
    /// (counted). Counts what it queues per class in `stats.traffic`.
    pub fn send(&self, peer: &PublicKey, prio: Priority, frame: Bytes, stats: &NetStats) -> bool {
        let len = frame.len();
        let ok = match self {
            PeerNet::Pool(p) => p.send(&peer.0, prio, frame).is_ok(),
            PeerNet::Links(l) => l.get(peer).is_some_and(|s| s.try_send(frame).is_ok()),
        };
        if ok {
            stats.traffic.sent(prio, len, 1);
        } else {
            stats.peer_queue_drops.fetch_add(1, Ordering::Relaxed);
            stats.traffic.dropped(prio, 1);
        }
        ok
    }

    pub fn broadcast(&self, prio: Priority, frame: Bytes, stats: &NetStats) {
        let len = frame.len();
        let (queued, refused) = match self {
            PeerNet::Pool(p) => {
                let r = p.broadcast(prio, frame);
                (r.queued, r.refused.len())
            }
            PeerNet::Links(l) => {
                let mut refused = 0;
                for s in l.values() {
                    if s.try_send(frame.clone()).is_err() {
                        refused += 1;
                    }
                }
                (l.len() - refused, refused)
            }
        };
        stats.traffic.sent(prio, len, queued);
        stats
            .peer_queue_drops
            .fetch_add(refused as u64, Ordering::Relaxed);
        stats.traffic.dropped(prio, refused);
    }

    /// Peers with a live authenticated connection (pool), or `links_up` for
    /// the plain links.
    pub fn connected(&self, links_up: u32) -> u32 {
        match self {
            PeerNet::Pool(p) => p.connected_peers().len() as u32,
            PeerNet::Links(_) => links_up,
        }
    }

    pub fn total(&self, registry_peers: usize) -> u32 {
        registry_peers as u32
    }
}
