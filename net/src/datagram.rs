//! The compact datagram of the UDP fast path.
//!
//! ```text
//! offset size field
//!      0    2 magic        u16 LE, b"TC" on the wire
//!      2    1 version      u8  (DATAGRAM_VERSION)
//!      3    1 kind         u8  (opaque here; the node defines kinds)
//!      4    4 sender_id    u32 LE, the sender's index in the registry
//!      8    8 sequence     u64 LE, per sender, one per datagram
//!     16    2 item_count   u16 LE
//!     18    . items        item_count x (len u16 LE, len bytes), len >= 1
//!    end-64 64 signature   opaque; covers every byte before it
//! ```
//!
//! At most [`MAX_DATAGRAM_LEN`] bytes, so it fits one IPv4/IPv6 packet on any
//! path without fragmentation. This module carries the signature field
//! opaquely: the node signs [`UnsignedDatagram::signed_bytes`] and verifies
//! [`Datagram::signed_bytes`] against [`Datagram::signature`]. It must never
//! interpret items or kinds.
//!
//! The fixed header is a `zerocopy` struct of unaligned little-endian
//! integers: its layout *is* the wire layout, and reading it is one bounds
//! check. Items are variable-length and go through [`Reader`].

use thiserror::Error;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::reader::{DecodeError, Reader};

/// `b"TC"` read as a little-endian u16.
pub const MAGIC: u16 = u16::from_le_bytes(*b"TC");
pub const DATAGRAM_VERSION: u8 = 1;
/// Fits the IPv6 minimum MTU (1280) minus IPv6 and UDP headers, with room.
pub use timecoin_core::codec::MAX_DATAGRAM_LEN;
pub const HEADER_LEN: usize = 18;
pub const SIGNATURE_LEN: usize = 64;
/// Room for items (including their length prefixes) in one datagram.
pub const MAX_ITEMS_LEN: usize = MAX_DATAGRAM_LEN - HEADER_LEN - SIGNATURE_LEN;
/// The largest single item that fits.
pub const MAX_ITEM_LEN: usize = MAX_ITEMS_LEN - 2;
/// Each item takes at least 3 bytes (prefix + one byte).
pub const MAX_ITEMS: usize = MAX_ITEMS_LEN / 3;
pub const MIN_DATAGRAM_LEN: usize = HEADER_LEN + SIGNATURE_LEN;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawHeader {
    magic: U16,
    version: u8,
    kind: u8,
    sender_id: U32,
    sequence: U64,
    item_count: U16,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_LEN);

/// The fixed header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatagramHeader {
    pub version: u8,
    pub kind: u8,
    pub sender_id: u32,
    pub sequence: u64,
    pub item_count: u16,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatagramError {
    #[error("datagram of {len} bytes exceeds {max}")]
    TooLong { len: usize, max: usize },
    #[error("datagram of {len} bytes is shorter than the minimum {min}")]
    TooShort { len: usize, min: usize },
    #[error("bad magic {found:#06x}")]
    BadMagic { found: u16 },
    #[error("unsupported datagram version {found} (supported: {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
    #[error("item {index} is empty")]
    EmptyItem { index: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A decoded, structurally valid datagram borrowing the received bytes.
/// The signature has *not* been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    header: DatagramHeader,
    bytes: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Checks the length, magic, version, every item prefix and that the items
    /// end exactly where the signature begins. Never panics, never allocates.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DatagramError> {
        let len = bytes.len();
        if len > MAX_DATAGRAM_LEN {
            return Err(DatagramError::TooLong {
                len,
                max: MAX_DATAGRAM_LEN,
            });
        }
        if len < MIN_DATAGRAM_LEN {
            return Err(DatagramError::TooShort {
                len,
                min: MIN_DATAGRAM_LEN,
            });
        }
        let (raw, _) = RawHeader::ref_from_prefix(bytes).map_err(|_| DatagramError::TooShort {
            len,
            min: MIN_DATAGRAM_LEN,
        })?;
        if raw.magic.get() != MAGIC {
            return Err(DatagramError::BadMagic {
                found: raw.magic.get(),
            });
        }
        if raw.version != DATAGRAM_VERSION {
            return Err(DatagramError::UnsupportedVersion {
                found: raw.version,
                supported: DATAGRAM_VERSION,
            });
        }
        let header = DatagramHeader {
            version: raw.version,
            kind: raw.kind,
            sender_id: raw.sender_id.get(),
            sequence: raw.sequence.get(),
            item_count: raw.item_count.get(),
        };
        let count = header.item_count as usize;
        if count > MAX_ITEMS {
            return Err(DecodeError::TooMany {
                what: "datagram items",
                count: count as u64,
                max: MAX_ITEMS as u64,
            }
            .into());
        }
        let mut r = Reader::new(&bytes[HEADER_LEN..len - SIGNATURE_LEN]);
        for index in 0..count {
            let n = r.u16()? as usize;
            if n == 0 {
                return Err(DatagramError::EmptyItem { index });
            }
            r.bytes(n)?;
        }
        r.finish()?;
        Ok(Datagram { header, bytes })
    }

    pub fn header(&self) -> &DatagramHeader {
        &self.header
    }

    pub fn kind(&self) -> u8 {
        self.header.kind
    }

    pub fn sender_id(&self) -> u32 {
        self.header.sender_id
    }

    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    pub fn item_count(&self) -> usize {
        self.header.item_count as usize
    }

    /// The items, in order.
    pub fn items(&self) -> Items<'a> {
        Items {
            reader: Reader::new(&self.bytes[HEADER_LEN..self.bytes.len() - SIGNATURE_LEN]),
            left: self.item_count(),
        }
    }

    /// Everything the signature covers: header and items.
    pub fn signed_bytes(&self) -> &'a [u8] {
        &self.bytes[..self.bytes.len() - SIGNATURE_LEN]
    }

    pub fn signature(&self) -> &'a [u8; SIGNATURE_LEN] {
        let tail = &self.bytes[self.bytes.len() - SIGNATURE_LEN..];
        // Length is exactly SIGNATURE_LEN by construction.
        tail.try_into().unwrap_or(&[0; SIGNATURE_LEN])
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Iterator over a decoded datagram's items.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    reader: Reader<'a>,
    left: usize,
}

impl<'a> Iterator for Items<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // Already validated by `decode`; a failure here just ends the iterator.
        let n = self.reader.u16().ok()? as usize;
        self.reader.bytes(n).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    #[error("item of {len} bytes does not fit: {left} bytes left in this datagram")]
    Full { len: usize, left: usize },
    #[error("item of {len} bytes exceeds the largest possible item ({max})")]
    ItemTooLarge { len: usize, max: usize },
    #[error("empty item")]
    EmptyItem,
}

/// Packs items into one datagram until it is full.
#[derive(Debug, Clone)]
pub struct DatagramBuilder {
    buf: Vec<u8>,
    item_count: u16,
}

impl DatagramBuilder {
    pub fn new(kind: u8, sender_id: u32, sequence: u64) -> Self {
        let raw = RawHeader {
            magic: U16::new(MAGIC),
            version: DATAGRAM_VERSION,
            kind,
            sender_id: U32::new(sender_id),
            sequence: U64::new(sequence),
            item_count: U16::new(0),
        };
        let mut buf = Vec::with_capacity(MAX_DATAGRAM_LEN);
        buf.extend_from_slice(raw.as_bytes());
        DatagramBuilder { buf, item_count: 0 }
    }

    /// Bytes still available for items, prefixes included.
    pub fn remaining(&self) -> usize {
        MAX_DATAGRAM_LEN - SIGNATURE_LEN - self.buf.len()
    }

    /// Whether an item of `len` bytes would fit now.
    pub fn fits(&self, len: usize) -> bool {
        len >= 1 && len + 2 <= self.remaining()
    }

    pub fn item_count(&self) -> usize {
        self.item_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.item_count == 0
    }

    /// Appends an item, or says why not; on error the builder is unchanged.
    pub fn push(&mut self, item: &[u8]) -> Result<(), BuildError> {
        let len = item.len();
        if len == 0 {
            return Err(BuildError::EmptyItem);
        }
        if len > MAX_ITEM_LEN {
            return Err(BuildError::ItemTooLarge {
                len,
                max: MAX_ITEM_LEN,
            });
        }
        if !self.fits(len) {
            return Err(BuildError::Full {
                len,
                left: self.remaining(),
            });
        }
        // len <= MAX_ITEM_LEN < u16::MAX, and item_count <= MAX_ITEMS.
        self.buf.extend_from_slice(&(len as u16).to_le_bytes());
        self.buf.extend_from_slice(item);
        self.item_count += 1;
        Ok(())
    }

    /// Closes the item list; the result still needs its signature.
    pub fn finish(mut self) -> UnsignedDatagram {
        self.buf[16..18].copy_from_slice(&self.item_count.to_le_bytes());
        UnsignedDatagram { buf: self.buf }
    }
}

/// A datagram with its header and items fixed, waiting for its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedDatagram {
    buf: Vec<u8>,
}

impl UnsignedDatagram {
    /// The bytes to sign.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Appends the signature and returns the wire bytes.
    pub fn sign_with(mut self, signature: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
        self.buf.extend_from_slice(signature);
        self.buf
    }
}

/// Packs `items` into as few datagrams as possible, in order, numbering them
/// from `*next_sequence` (which is advanced). Fails before producing anything
/// if an item is empty or can never fit.
pub fn pack<'i>(
    kind: u8,
    sender_id: u32,
    next_sequence: &mut u64,
    items: impl IntoIterator<Item = &'i [u8]> + Clone,
) -> Result<Vec<UnsignedDatagram>, BuildError> {
    for item in items.clone() {
        if item.is_empty() {
            return Err(BuildError::EmptyItem);
        }
        if item.len() > MAX_ITEM_LEN {
            return Err(BuildError::ItemTooLarge {
                len: item.len(),
                max: MAX_ITEM_LEN,
            });
        }
    }
    let mut out = Vec::new();
    let mut current: Option<DatagramBuilder> = None;
    for item in items {
        let b = match &mut current {
            Some(b) if b.fits(item.len()) => b,
            _ => {
                if let Some(done) = current.take() {
                    out.push(done.finish());
                }
                let seq = *next_sequence;
                *next_sequence = next_sequence.wrapping_add(1);
                current.insert(DatagramBuilder::new(kind, sender_id, seq))
            }
        };
        b.push(item)?;
    }
    if let Some(done) = current {
        out.push(done.finish());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_bytes_freeze_the_layout() {
        let mut b = DatagramBuilder::new(0x07, 0x0102_0304, 0x1122_3344_5566_7788);
        b.push(b"abc").unwrap();
        b.push(&[0xff]).unwrap();
        let unsigned = b.finish();
        assert_eq!(
            hex(unsigned.signed_bytes()),
            concat!(
                "5443",             // magic b"TC"
                "01",               // version
                "07",               // kind
                "04030201",         // sender_id LE
                "8877665544332211", // sequence LE
                "0200",             // item_count
                "0300616263",       // item "abc"
                "0100ff",           // item [0xff]
            )
        );
        let wire = unsigned.sign_with(&[0xAA; SIGNATURE_LEN]);
        assert_eq!(wire.len(), HEADER_LEN + 5 + 3 + SIGNATURE_LEN);
        let d = Datagram::decode(&wire).unwrap();
        assert_eq!(
            *d.header(),
            DatagramHeader {
                version: 1,
                kind: 7,
                sender_id: 0x0102_0304,
                sequence: 0x1122_3344_5566_7788,
                item_count: 2
            }
        );
        assert_eq!(d.items().collect::<Vec<_>>(), [&b"abc"[..], &[0xff][..]]);
        assert_eq!(d.signature(), &[0xAA; SIGNATURE_LEN]);
        assert_eq!(d.signed_bytes(), &wire[..wire.len() - SIGNATURE_LEN]);
    }

    #[test]
    fn builder_fills_to_exactly_the_limit() {
        let mut b = DatagramBuilder::new(1, 2, 3);
        assert_eq!(b.remaining(), MAX_ITEMS_LEN);
        b.push(&vec![1u8; MAX_ITEM_LEN]).unwrap();
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.push(&[1]), Err(BuildError::Full { len: 1, left: 0 }));
        let wire = b.finish().sign_with(&[0; 64]);
        assert_eq!(wire.len(), MAX_DATAGRAM_LEN);
        Datagram::decode(&wire).unwrap();

        let mut b = DatagramBuilder::new(1, 2, 3);
        assert!(matches!(
            b.push(&vec![1u8; MAX_ITEM_LEN + 1]),
            Err(BuildError::ItemTooLarge { .. })
        ));
        assert_eq!(b.push(&[]), Err(BuildError::EmptyItem));
        // Smallest items: MAX_ITEMS of them fit.
        for _ in 0..MAX_ITEMS {
            b.push(&[9]).unwrap();
        }
        assert!(b.push(&[9]).is_err());
        let wire = b.finish().sign_with(&[0; 64]);
        assert_eq!(Datagram::decode(&wire).unwrap().item_count(), MAX_ITEMS);
    }

    #[test]
    fn pack_splits_in_order_with_consecutive_sequences() {
        let items: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 100]).collect();
        let mut seq = 10;
        let dgs = pack(3, 4, &mut seq, items.iter().map(|v| &v[..])).unwrap();
        // 102 bytes per item, 1118 bytes of room: 10 per datagram.
        assert_eq!(dgs.len(), 4);
        assert_eq!(seq, 14);
        let mut all = Vec::new();
        for (i, u) in dgs.into_iter().enumerate() {
            let wire = u.sign_with(&[0; 64]);
            let d = Datagram::decode(&wire).unwrap();
            assert_eq!(d.sequence(), 10 + i as u64);
            all.extend(d.items().map(|x| x.to_vec()));
        }
        assert_eq!(all, items);
        let mut seq = 0;
        assert!(pack(0, 0, &mut seq, [&b""[..]]).is_err());
        assert_eq!(seq, 0);
    }

    #[test]
    fn decoder_rejects_malformed_input() {
        let good = {
            let mut b = DatagramBuilder::new(1, 2, 3);
            b.push(b"hello").unwrap();
            b.finish().sign_with(&[5; 64])
        };
        assert!(Datagram::decode(&good).is_ok());
        let e = |f: fn(&mut Vec<u8>)| {
            let mut v = good.clone();
            f(&mut v);
            Datagram::decode(&v).unwrap_err()
        };
        assert!(matches!(e(|v| v[0] = 0), DatagramError::BadMagic { .. }));
        assert!(matches!(
            e(|v| v[2] = 2),
            DatagramError::UnsupportedVersion { found: 2, .. }
        ));
        // Count says 2 items, only one present.
        assert!(matches!(
            e(|v| v[16] = 2),
            DatagramError::Decode(DecodeError::Truncated { .. })
        ));
        // Count says 0: item bytes left over before the signature.
        assert!(matches!(
            e(|v| v[16] = 0),
            DatagramError::Decode(DecodeError::TrailingBytes(7))
        ));
        // Item length overruns into the signature.
        assert!(matches!(
            e(|v| v[18] = 60),
            DatagramError::Decode(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            e(|v| {
                v[18] = 0;
                v[19] = 0
            }),
            DatagramError::EmptyItem { index: 0 }
        ));
        assert!(matches!(
            e(|v| v.truncate(MIN_DATAGRAM_LEN - 1)),
            DatagramError::TooShort { .. }
        ));
        assert!(matches!(
            e(|v| v.resize(MAX_DATAGRAM_LEN + 1, 0)),
            DatagramError::TooLong { .. }
        ));
        assert!(matches!(
            e(|v| v[17] = 0xff),
            DatagramError::Decode(DecodeError::TooMany { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(
            kind: u8,
            sender: u32,
            seq: u64,
            sig in prop::array::uniform32(any::<u8>()),
            items in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..12),
        ) {
            let mut sig64 = [0u8; 64];
            sig64[..32].copy_from_slice(&sig);
            sig64[32..].copy_from_slice(&sig);
            let mut b = DatagramBuilder::new(kind, sender, seq);
            let mut packed = Vec::new();
            for it in &items {
                if b.push(it).is_ok() {
                    packed.push(it.clone());
                }
            }
            let unsigned = b.finish();
            let signed = unsigned.signed_bytes().to_vec();
            let wire = unsigned.sign_with(&sig64);
            prop_assert!(wire.len() <= MAX_DATAGRAM_LEN);
            let d = Datagram::decode(&wire).unwrap();
            prop_assert_eq!(d.kind(), kind);
            prop_assert_eq!(d.sender_id(), sender);
            prop_assert_eq!(d.sequence(), seq);
            prop_assert_eq!(d.signed_bytes(), &signed[..]);
            prop_assert_eq!(d.signature(), &sig64);
            let got: Vec<Vec<u8>> = d.items().map(|x| x.to_vec()).collect();
            prop_assert_eq!(got, packed);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1400)) {
            let _ = Datagram::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_mutated_valid(
            pos in 0usize..400,
            val: u8,
            n in 1usize..5,
        ) {
            let mut b = DatagramBuilder::new(1, 2, 3);
            for _ in 0..n { b.push(&[7u8; 50]).unwrap(); }
            let mut wire = b.finish().sign_with(&[1; 64]);
            let pos = pos % wire.len();
            wire[pos] = val;
            if let Ok(d) = Datagram::decode(&wire) {
                // Any accepted datagram must iterate exactly its item count.
                prop_assert_eq!(d.items().count(), d.item_count());
            }
        }
    }
}
