//! How this masternode reaches its peers: the persistent pool from `net/`
//! (QUIC by default, TCP as fallback, one long-lived TLS 1.3 connection per
//! peer with priority classes).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use time_net::pool::{Pool, Transport};
use time_net::priority::Priority;

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
}

/// Why a `peer_transport` value was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerTransportError {
    #[error(
        "peer_transport \"links\" was removed: plain TCP links had no integrity after the \
         handshake; use quic (the default, UDP on the P2P port) or tcp (TLS 1.3 on P2P port + 1)"
    )]
    LinksRemoved,
    #[error("peer_transport {0:?}: use quic (the default) or tcp")]
    Unknown(String),
}

impl PeerTransport {
    pub fn parse(s: &str) -> Result<Self, PeerTransportError> {
        match s {
            "quic" => Ok(PeerTransport::Quic),
            "tcp" => Ok(PeerTransport::Tcp),
            "links" => Err(PeerTransportError::LinksRemoved),
            _ => Err(PeerTransportError::Unknown(s.to_string())),
        }
    }

    /// Where a masternode whose P2P address is `p2p` listens for this transport.
    pub fn peer_addr(self, p2p: SocketAddr) -> SocketAddr {
        match self {
            PeerTransport::Tcp => SocketAddr::new(p2p.ip(), p2p.port().wrapping_add(1)),
            PeerTransport::Quic => p2p,
        }
    }

    pub fn pool_transport(self) -> Transport {
        match self {
            PeerTransport::Quic => Transport::Quic,
            PeerTransport::Tcp => Transport::Tcp,
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

/// The running pool, with the node's per-class traffic accounting.
pub struct PeerNet(pub Pool);

impl PeerNet {
    /// Queues `frame` (an encoded `msg`) for one peer; false if refused
    /// (counted). Counts what it queues per class in `stats.traffic`.
    pub fn send(&self, peer: &PublicKey, prio: Priority, frame: Bytes, stats: &NetStats) -> bool {
        let len = frame.len();
        let ok = self.0.send(&peer.0, prio, frame).is_ok();
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
        let r = self.0.broadcast(prio, frame);
        let (queued, refused) = (r.queued, r.refused.len());
        stats.traffic.sent(prio, len, queued);
        stats
            .peer_queue_drops
            .fetch_add(refused as u64, Ordering::Relaxed);
        stats.traffic.dropped(prio, refused);
    }

    /// Peers with a live authenticated connection.
    pub fn connected_set(&self) -> HashSet<PublicKey> {
        self.0
            .connected_peers()
            .into_iter()
            .map(PublicKey)
            .collect()
    }

    /// How many peers have a live authenticated connection.
    pub fn connected(&self) -> u32 {
        self.0.connected_peers().len() as u32
    }
}
