//! Bytes on the wire for TIME Coin: bounded decoding primitives, length-prefixed
//! frames and the transports that carry them.
//!
//! This crate knows nothing about what a transaction or a vote means; the node
//! crate (`timecoin`) encodes its messages with [`reader::Reader`] and
//! [`writer`] helpers and hands whole frames to a transport here.

pub mod datagram;
pub mod frame;
pub mod gap;
pub mod priority;
pub mod reader;
pub mod udp;

pub use frame::{FrameError, FrameReader, FrameWriter, MAX_FRAME_LEN};
pub use reader::{DecodeError, Reader};
