//! Bytes on the wire for TIME Coin: bounded decoding primitives, length-prefixed
//! frames and the transports that carry them.
//!
//! This crate knows nothing about what a transaction or a vote means; the node
//! crate (`timecoin`) encodes its messages with [`reader::Reader`] and hands
//! whole frames or datagrams to a transport here.
//!
//! - [`frame`]: length-prefixed frames over async byte streams.
//! - [`priority`]: per-peer outbound queue with four priority classes.
//! - [`datagram`]: the compact, opaquely signed fast-path datagram.
//! - [`gap`]: per-sender sequence tracking, gap detection and repair lists.
//! - [`udp`]: the UDP fast path (multicast or unicast fan-out) on io_uring or epoll.
//! - [`pool`]: persistent authenticated connections to the other masternodes
//!   (QUIC, or TCP as a fallback), per-class queues, reconnection, health.

pub mod datagram;
pub mod frame;
pub mod gap;
pub mod mailbox;
pub mod pool;
pub mod priority;
pub mod udp;

pub use datagram::{Datagram, DatagramBuilder, DatagramError, MAX_DATAGRAM_LEN};
pub use frame::{FrameError, FrameReader, FrameWriter, MAX_FRAME_LEN};
pub use gap::{GapConfig, GapTracker, Receipt, SeqRange};
pub use priority::{PeerQueue, Priority, PriorityQueue, PushError, QueueLimits};
/// Bounded decoding primitives (they live in the protocol core, which the
/// transports must not be a dependency of).
pub use timecoin_core::codec as reader;
pub use timecoin_core::codec::{DecodeError, Reader};
