//! Bytes the pool puts inside frames (wire version 1), and the bounded zstd
//! codec for large message bodies.
//!
//! Every frame payload starts with one header byte:
//!
//! ```text
//! bit 0     body is zstd-compressed (data frames only)
//! bits 1-2  priority class (data frames; 0 otherwise)
//! bits 3-4  kind: 0 data, 1 ping, 2 pong
//! bits 5-7  zero
//! data:  header | seq u64 LE | body (non-empty)
//! ping:  header | nonce u64 LE
//! pong:  header | nonce u64 LE        (echoes the ping's nonce)
//! ```
//!
//! `seq` counts a sender's data frames per (receiver, class) for the life of
//! the sending pool, across reconnections; a receiver that sees it jump counts
//! the difference as lost in flight (never silently).
//!
//! The first frame of each QUIC unidirectional stream is a `StreamHello`;
//! a TCP pool connection runs TLS 1.3, then two frames per side inside it: a
//! `Hello` (pool epoch) and a one-byte confirmation (see
//! [`super::handshake`]).
//!
//! Formats are frozen by the golden-bytes tests at the end of this file.

use thiserror::Error;

use crate::priority::Priority;
use crate::reader::{DecodeError, Reader};

pub(crate) const WIRE_VERSION: u8 = 1;

const FLAG_ZSTD: u8 = 0b1;
const KIND_DATA: u8 = 0;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;

/// Bytes a data frame adds in front of the body.
pub const DATA_OVERHEAD: usize = 1 + 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Data {
        priority: Priority,
        seq: u64,
        compressed: bool,
        body: &'a [u8],
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

pub(crate) fn encode_data(
    out: &mut Vec<u8>,
    priority: Priority,
    seq: u64,
    compressed: bool,
    body: &[u8],
) {
    out.clear();
    out.reserve(DATA_OVERHEAD + body.len());
    let header = (KIND_DATA << 3) | ((priority.index() as u8) << 1) | compressed as u8;
    out.push(header);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

pub(crate) fn encode_ping(nonce: u64) -> [u8; 9] {
    control(KIND_PING, nonce)
}

pub(crate) fn encode_pong(nonce: u64) -> [u8; 9] {
    control(KIND_PONG, nonce)
}

fn control(kind: u8, nonce: u64) -> [u8; 9] {
    let mut out = [0u8; 9];
    out[0] = kind << 3;
    out[1..].copy_from_slice(&nonce.to_le_bytes());
    out
}

pub(crate) fn decode_frame(buf: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let header = r.u8()?;
    if header >> 5 != 0 {
        return Err(DecodeError::Invalid {
            what: "frame header reserved bits",
        });
    }
    let kind = (header >> 3) & 0b11;
    let class = ((header >> 1) & 0b11) as usize;
    let compressed = header & FLAG_ZSTD != 0;
    match kind {
        KIND_DATA => {
            let seq = r.u64()?;
            let body = r.bytes(r.remaining())?;
            if body.is_empty() {
                return Err(DecodeError::Invalid {
                    what: "empty message",
                });
            }
            Ok(Frame::Data {
                priority: Priority::ALL[class],
                seq,
                compressed,
                body,
            })
        }
        KIND_PING | KIND_PONG => {
            if header & 0b111 != 0 {
                return Err(DecodeError::Invalid {
                    what: "control frame flags",
                });
            }
            let nonce = r.u64()?;
            r.finish()?;
            Ok(if kind == KIND_PING {
                Frame::Ping { nonce }
            } else {
                Frame::Pong { nonce }
            })
        }
        tag => Err(DecodeError::UnknownTag {
            what: "frame kind",
            tag,
        }),
    }
}

/// What a QUIC unidirectional stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Data frames of one class only.
    Class(Priority),
    /// Pings and pongs.
    Control,
}

impl StreamKind {
    pub(crate) const CONTROL_TAG: u8 = 4;

    pub(crate) fn tag(self) -> u8 {
        match self {
            StreamKind::Class(p) => p.index() as u8,
            StreamKind::Control => Self::CONTROL_TAG,
        }
    }

    /// Slot in a per-connection table of the five streams.
    pub(crate) fn slot(self) -> usize {
        self.tag() as usize
    }
}

/// First frame on every QUIC unidirectional stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHello {
    pub kind: StreamKind,
    /// The sending pool's instance id (see [`Hello::epoch`]).
    pub epoch: u64,
}

impl StreamHello {
    pub(crate) const LEN: usize = 10;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = WIRE_VERSION;
        out[1] = self.kind.tag();
        out[2..].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnknownTag {
                what: "stream version",
                tag: version,
            });
        }
        let kind = match r.u8()? {
            t @ 0..=3 => StreamKind::Class(Priority::ALL[t as usize]),
            StreamKind::CONTROL_TAG => StreamKind::Control,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "stream kind",
                    tag,
                })
            }
        };
        let epoch = r.u64()?;
        r.finish()?;
        Ok(StreamHello { kind, epoch })
    }
}

/// Version byte of the TCP pool's [`Hello`]: 2 since the TCP pool runs over
/// TLS (version 1 carried a key and a nonce for the signed handshake).
pub(crate) const TCP_HELLO_VERSION: u8 = 2;

/// First frame inside TLS on a TCP pool connection, sent by both sides at
/// once. The key is the TLS certificate's; TLS gives the freshness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    /// Random id of the sending pool instance: a receiver counts sequence
    /// gaps only within one epoch (a restarted sender starts again at 0).
    pub epoch: u64,
}

impl Hello {
    pub(crate) const LEN: usize = 1 + 8;

    pub(crate) fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = TCP_HELLO_VERSION;
        out[1..].copy_from_slice(&self.epoch.to_le_bytes());
        out
    }

    pub(crate) fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != TCP_HELLO_VERSION {
            return Err(DecodeError::UnknownTag {
                what: "handshake version",
                tag: version,
            });
        }
        let epoch = r.u64()?;
        r.finish()?;
        Ok(Hello { epoch })
    }
}

/// Why a compressed body was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    #[error("compressed body does not declare its size")]
    UnknownSize,
    #[error("compressed body declares {declared} bytes, more than the cap of {cap}")]
    TooLarge { declared: u64, cap: usize },
    #[error("compressed body is corrupt")]
    Corrupt,
}

/// zstd level for outgoing bodies: fast, and most of the gain on blocks.
const ZSTD_LEVEL: i32 = 1;

/// Compresses `body` if it is larger than `threshold` and the result saves at
/// least an eighth; otherwise `None` (send it raw).
pub fn compress_if_pays(body: &[u8], threshold: usize) -> Option<Vec<u8>> {
    if body.len() <= threshold {
        return None;
    }
    let packed = zstd::bulk::compress(body, ZSTD_LEVEL).ok()?;
    (packed.len() <= body.len() - body.len() / 8).then_some(packed)
}

/// Decompresses a body that must declare its size, and at most `cap` bytes of
/// it: the buffer is sized from the declared size (checked against `cap`
/// first), and output beyond it is an error, so a small frame cannot make us
/// allocate or inflate more than `cap`.
pub fn decompress_bounded(packed: &[u8], cap: usize) -> Result<Vec<u8>, CodecError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(packed) {
        Ok(Some(n)) => n,
        Ok(None) => return Err(CodecError::UnknownSize),
        Err(_) => return Err(CodecError::Corrupt),
    };
    if declared > cap as u64 {
        return Err(CodecError::TooLarge { declared, cap });
    }
    let declared = declared as usize;
    let mut out = Vec::with_capacity(declared);
    let mut d = zstd::bulk::Decompressor::new().map_err(|_| CodecError::Corrupt)?;
    match d.decompress_to_buffer(packed, &mut out) {
        Ok(n) if n == declared && out.len() == declared => Ok(out),
        _ => Err(CodecError::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_data_frame() {
        let mut out = Vec::new();
        encode_data(&mut out, Priority::Normal, 0x0102, true, b"xy");
        assert_eq!(out, [0b0000_0101, 2, 1, 0, 0, 0, 0, 0, 0, b'x', b'y']);
        assert_eq!(
            decode_frame(&out).unwrap(),
            Frame::Data {
                priority: Priority::Normal,
                seq: 0x0102,
                compressed: true,
                body: b"xy"
            }
        );
        encode_data(&mut out, Priority::Low, 7, false, b"z");
        assert_eq!(out, [0b0000_0110, 7, 0, 0, 0, 0, 0, 0, 0, b'z']);
    }

    #[test]
    fn golden_control_frames() {
        assert_eq!(encode_ping(5), [0x08, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_pong(5), [0x10, 5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            decode_frame(&encode_pong(9)).unwrap(),
            Frame::Pong { nonce: 9 }
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        // Reserved bits, unknown kind, empty body, flags on a ping, trailing.
        assert!(decode_frame(&[0x20, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        assert!(decode_frame(&[0x18, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_frame(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_frame(&[0x09, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_frame(&[0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_frame(&[]).is_err());
    }

    #[test]
    fn golden_stream_hello_and_hello() {
        let h = StreamHello {
            kind: StreamKind::Class(Priority::High),
            epoch: 0xAA,
        };
        assert_eq!(h.encode(), [1, 1, 0xAA, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(StreamHello::decode(&h.encode()).unwrap(), h);
        let c = StreamHello {
            kind: StreamKind::Control,
            epoch: 1,
        };
        assert_eq!(c.encode()[1], 4);
        assert!(StreamHello::decode(&[1, 5, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(StreamHello::decode(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());

        let hello = Hello { epoch: 0x0506 };
        let bytes = hello.encode();
        assert_eq!(bytes, [2, 6, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Hello::decode(&bytes).unwrap(), hello);
        assert!(Hello::decode(&bytes[..8]).is_err());
        // A version-1 hello (key, nonce, epoch) is refused.
        let mut v1 = vec![1u8];
        v1.extend_from_slice(&[0; 72]);
        assert!(Hello::decode(&v1).is_err());
    }

    #[test]
    fn zstd_round_trip_only_when_it_pays() {
        let block: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let packed = compress_if_pays(&block, 16 * 1024).expect("compressible");
        assert!(packed.len() < block.len() / 10);
        assert_eq!(decompress_bounded(&packed, block.len()).unwrap(), block);
        // At or below the threshold: raw.
        assert!(compress_if_pays(&block[..16 * 1024], 16 * 1024).is_none());
        // Incompressible: raw.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..64 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress_if_pays(&noise, 16 * 1024).is_none());
    }

    #[test]
    fn zstd_bomb_is_refused_before_inflating() {
        // 64 MiB of zeros packs into a few KiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
        assert!(bomb.len() < 16 * 1024, "{}", bomb.len());
        assert_eq!(
            decompress_bounded(&bomb, 4 << 20),
            Err(CodecError::TooLarge {
                declared: 64 << 20,
                cap: 4 << 20
            })
        );
    }

    #[test]
    fn zstd_lying_or_missing_size_is_refused() {
        let body = vec![7u8; 100_000];
        // No declared size (streaming encoder without pledged size).
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &body).unwrap();
        let unsized_frame = enc.finish().unwrap();
        assert_eq!(
            decompress_bounded(&unsized_frame, 1 << 20),
            Err(CodecError::UnknownSize)
        );
        // A second frame appended after a small honest one: output would
        // exceed the declared size.
        let small = zstd::bulk::compress(&body[..1000], 1).unwrap();
        let mut two = small.clone();
        two.extend_from_slice(&zstd::bulk::compress(&body, 1).unwrap());
        assert_eq!(decompress_bounded(&two, 1 << 20), Err(CodecError::Corrupt));
        // Garbage.
        assert!(decompress_bounded(&[1, 2, 3, 4, 5], 1 << 20).is_err());
        assert_eq!(decompress_bounded(&small, 1 << 20).unwrap(), &body[..1000]);
    }
}
