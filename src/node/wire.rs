//! What every connection task of the node shares: the encoding of a message
//! into a frame, the error that ends a connection, and the transport
//! counters ([`NetStats`]).
//!
//! Owns no connection, task or state of its own; it must never grow
//! behaviour beyond these shared definitions.

use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use time_net::FrameError;

use crate::protocol::message::Message;

/// Counters of the transport layer.
#[derive(Default, Debug)]
pub struct NetStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub peer_queue_drops: AtomicU64,
    pub core_queue_drops: AtomicU64,
    /// Peer messages and bytes per class and direction, drops per class.
    pub traffic: crate::node::metrics::Traffic,
}

/// Why a connection (inbound, outbound or pool message) was ended or refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// We refuse the other side's handshake; it is told with an `Error`
    /// frame (`code` from [`crate::protocol::message::refusal`]).
    #[error("refusing: {} (code {code}): {detail}", crate::protocol::message::refusal::describe(*.code))]
    Refusing { code: u16, detail: String },
    /// The other side refused our handshake with an `Error` frame.
    #[error("refused by the peer: {} (code {code}): {detail}", crate::protocol::message::refusal::describe(*.code))]
    RefusedBy { code: u16, detail: String },
    #[error("decode: {0}")]
    Decode(#[from] time_net::DecodeError),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    NotAllowed(#[from] crate::protocol::audience::NotAllowed),
}

pub(super) fn encode(m: &Message) -> Bytes {
    Bytes::from(m.to_bytes())
}
