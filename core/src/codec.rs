//! A bounded, explicit decoder over a byte slice.
//!
//! Every length or count read from the wire is checked against a caller-given
//! cap *and* against the bytes actually left before anything is allocated, so a
//! peer cannot make us reserve memory it did not send.

use thiserror::Error;

/// Largest fast-path datagram, so it fits one IPv4/IPv6 packet on any
/// path without fragmentation. The fast path's datagram format lives with the
/// transports; repairs carry datagrams inside peer messages, so the bound is
/// shared here.
pub const MAX_DATAGRAM_LEN: usize = 1200;

/// Why a byte sequence could not be decoded. Never a panic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("unexpected end of input: needed {needed} bytes, {remaining} left")]
    Truncated { needed: usize, remaining: usize },
    #[error("{what}: count {count} exceeds the limit {max}")]
    TooMany {
        what: &'static str,
        count: u64,
        max: u64,
    },
    #[error("{what}: unknown tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("invalid {what}")]
    Invalid { what: &'static str },
}

/// Cursor over untrusted bytes. Integers are little-endian.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid { what: "bool" }),
        }
    }

    /// Reads a u32 element count, checks it against `max` and against the bytes
    /// left (each element takes at least `min_elem_len` bytes).
    pub fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_elem_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = self.u32()? as u64;
        if n > max as u64 {
            return Err(DecodeError::TooMany {
                what,
                count: n,
                max: max as u64,
            });
        }
        let need = n.saturating_mul(min_elem_len as u64);
        if need > self.buf.len() as u64 {
            return Err(DecodeError::Truncated {
                needed: need as usize,
                remaining: self.buf.len(),
            });
        }
        Ok(n as usize)
    }

    /// A u32-length-prefixed byte string of at most `max` bytes.
    pub fn var_bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.count(what, max, 1)?;
        self.bytes(n)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Writes a u32 length prefix followed by the bytes.
pub fn put_var_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_checked_before_allocation() {
        // Claims 2^32-1 elements with 4 bytes present.
        let bytes = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.count("x", usize::MAX, 8),
            Err(DecodeError::Truncated { .. })
        ));
        let mut r = Reader::new(&bytes);
        assert!(matches!(
            r.count("x", 10, 1),
            Err(DecodeError::TooMany { .. })
        ));
    }

    #[test]
    fn truncation_and_trailing_are_errors() {
        let mut r = Reader::new(&[1, 2]);
        assert!(r.u32().is_err());
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
        assert!(Reader::new(&[2]).bool().is_err());
    }
}
