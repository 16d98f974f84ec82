//! The payment data model: outpoints, inputs, outputs, transactions, addresses,
//! and their canonical byte encoding (the bytes that are hashed and signed).

use std::fmt;

use crate::codec::{DecodeError, Reader};
use ed25519_dalek::{Signature, Signer, SigningKey};

/// Base units per TIME.
pub const COIN: u64 = 100_000_000;
/// Current transaction format version.
pub const TX_VERSION: u16 = 1;

/// Which network a transaction, vote or proof belongs to. Signed into
/// everything so nothing replays across networks.
pub type ChainId = u32;

/// Domain separators: one per kind of hashed or signed message.
pub(crate) const DOMAIN_TXID: &[u8] = b"TIMECOIN/txid/v1";
pub(crate) const DOMAIN_INPUT_SIG: &[u8] = b"TIMECOIN/input-sig/v1";
pub(crate) const DOMAIN_ADDRESS: &[u8] = b"TIMECOIN/address/v1";

macro_rules! hash32 {
    ($name:ident) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 32]);

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(&self.0[..6]))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }
        impl std::str::FromStr for $name {
            type Err = DecodeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let v = hex::decode(s).map_err(|_| DecodeError::Invalid {
                    what: stringify!($name),
                })?;
                let a: [u8; 32] = v.try_into().map_err(|_| DecodeError::Invalid {
                    what: stringify!($name),
                })?;
                Ok($name(a))
            }
        }
    };
}

hash32!(Txid);
hash32!(PublicKey);

impl PublicKey {
    pub fn from_signing(key: &SigningKey) -> Self {
        PublicKey(key.verifying_key().to_bytes())
    }
    /// Whether the bytes decode to a curve point (see [`crate::sig::is_point`]).
    pub fn is_point(&self) -> bool {
        crate::sig::is_point(&self.0)
    }
    /// Whether this is a small-order key, one anyone can sign for (see
    /// [`crate::sig::is_small_order`]): never admit one as an identity.
    pub fn is_small_order(&self) -> bool {
        crate::sig::is_small_order(&self.0)
    }
}

/// A reference to one output of an earlier transaction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct OutPoint {
    pub txid: Txid,
    pub vout: u32,
}

impl OutPoint {
    pub const ENCODED_LEN: usize = 36;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.txid.0);
        out.extend_from_slice(&self.vout.to_le_bytes());
    }
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(OutPoint {
            txid: Txid(r.array()?),
            vout: r.u32()?,
        })
    }
    /// Sort-preserving key bytes (txid, then vout big-endian).
    pub fn key_bytes(&self) -> [u8; 36] {
        let mut k = [0u8; 36];
        k[..32].copy_from_slice(&self.txid.0);
        k[32..].copy_from_slice(&self.vout.to_be_bytes());
        k
    }
}

impl fmt::Display for OutPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.txid, self.vout)
    }
}

/// 20-byte address: blake3 of the public key, domain-separated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 20]);

impl Address {
    pub fn from_public_key(pk: &PublicKey) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_ADDRESS);
        h.update(&pk.0);
        let mut a = [0u8; 20];
        a.copy_from_slice(&h.finalize().as_bytes()[..20]);
        Address(a)
    }

    fn checksum(&self) -> [u8; 4] {
        let mut c = [0u8; 4];
        c.copy_from_slice(&blake3::hash(&self.0).as_bytes()[..4]);
        c
    }
}

/// Text form: `time1` + hex(20-byte hash) + hex(4-byte checksum).
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "time1{}{}",
            hex::encode(self.0),
            hex::encode(self.checksum())
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({self})")
    }
}

/// Why an address string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("an address starts with 'time1'")]
    Prefix,
    #[error("an address is 'time1' followed by 48 hex digits")]
    Format,
    #[error("address checksum does not match (typo?)")]
    Checksum,
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Case does not matter (`TIME1...` from a form that upper-cases is
        // the same address); shown in lower case.
        let body = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("time1"))
            .and_then(|_| s.get(5..))
            .ok_or(AddressError::Prefix)?;
        let raw = hex::decode(body).map_err(|_| AddressError::Format)?;
        if raw.len() != 24 {
            return Err(AddressError::Format);
        }
        let mut a = [0u8; 20];
        a.copy_from_slice(&raw[..20]);
        let addr = Address(a);
        if addr.checksum() != raw[20..] {
            return Err(AddressError::Checksum);
        }
        Ok(addr)
    }
}

/// Spends one output: names it, and proves ownership with the key whose
/// address the output pays and a signature over (chain id, txid, index).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TxInput {
    pub prev: OutPoint,
    pub public_key: PublicKey,
    pub signature: [u8; 64],
}

impl TxInput {
    pub const ENCODED_LEN: usize = OutPoint::ENCODED_LEN + 32 + 64;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TxOutput {
    pub amount: u64,
    pub address: Address,
}

impl TxOutput {
    pub const ENCODED_LEN: usize = 8 + 20;
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.address.0);
    }
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(TxOutput {
            amount: r.u64()?,
            address: Address(r.array()?),
        })
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transaction {
    pub version: u16,
    pub chain_id: ChainId,
    pub inputs: Vec<TxInput>,
    pub outputs: Vec<TxOutput>,
    pub lock_time: u64,
}

/// Decoding caps. A transaction is at most 1 MB, so these counts are generous.
pub const MAX_TX_INPUTS: usize = 1_000;
pub const MAX_TX_OUTPUTS: usize = 1_000;

impl Transaction {
    /// Canonical bytes; without signatures they are what the txid commits to.
    fn encode_parts(&self, out: &mut Vec<u8>, signatures: bool) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&(self.inputs.len() as u32).to_le_bytes());
        for i in &self.inputs {
            i.prev.encode(out);
            out.extend_from_slice(&i.public_key.0);
            if signatures {
                out.extend_from_slice(&i.signature);
            }
        }
        out.extend_from_slice(&(self.outputs.len() as u32).to_le_bytes());
        for o in &self.outputs {
            o.encode(out);
        }
        out.extend_from_slice(&self.lock_time.to_le_bytes());
    }

    /// blake3 over the domain and the canonical unsigned bytes: signatures
    /// cannot change a txid (no malleability).
    pub fn txid(&self) -> Txid {
        let mut buf = Vec::with_capacity(64 + self.inputs.len() * 68 + self.outputs.len() * 28);
        self.encode_parts(&mut buf, false);
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_TXID);
        h.update(&buf);
        Txid(*h.finalize().as_bytes())
    }

    /// Full wire encoding, signatures included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_parts(out, true);
    }

    pub fn encoded_len(&self) -> usize {
        2 + 4
            + 4
            + self.inputs.len() * TxInput::ENCODED_LEN
            + 4
            + self.outputs.len() * TxOutput::ENCODED_LEN
            + 8
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u16()?;
        let chain_id = r.u32()?;
        let n_in = r.count("tx inputs", MAX_TX_INPUTS, TxInput::ENCODED_LEN)?;
        let mut inputs = Vec::with_capacity(n_in);
        for _ in 0..n_in {
            inputs.push(TxInput {
                prev: OutPoint::decode(r)?,
                public_key: PublicKey(r.array()?),
                signature: r.array()?,
            });
        }
        let n_out = r.count("tx outputs", MAX_TX_OUTPUTS, TxOutput::ENCODED_LEN)?;
        let mut outputs = Vec::with_capacity(n_out);
        for _ in 0..n_out {
            outputs.push(TxOutput::decode(r)?);
        }
        Ok(Transaction {
            version,
            chain_id,
            inputs,
            outputs,
            lock_time: r.u64()?,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let tx = Self::decode(&mut r)?;
        r.finish()?;
        Ok(tx)
    }

    /// The message input `index` signs.
    pub fn input_sig_message(chain_id: ChainId, txid: &Txid, index: u32) -> [u8; 61] {
        let mut m = [0u8; 61];
        m[..21].copy_from_slice(DOMAIN_INPUT_SIG);
        m[21..25].copy_from_slice(&chain_id.to_le_bytes());
        m[25..57].copy_from_slice(&txid.0);
        m[57..61].copy_from_slice(&index.to_le_bytes());
        m
    }

    /// Builds and signs a transaction whose every input is owned by `key`.
    pub fn build_signed(
        chain_id: ChainId,
        key: &SigningKey,
        prevs: &[OutPoint],
        outputs: Vec<TxOutput>,
    ) -> Transaction {
        let public_key = PublicKey::from_signing(key);
        let mut tx = Transaction {
            version: TX_VERSION,
            chain_id,
            inputs: prevs
                .iter()
                .map(|p| TxInput {
                    prev: *p,
                    public_key,
                    signature: [0; 64],
                })
                .collect(),
            outputs,
            lock_time: 0,
        };
        let txid = tx.txid();
        for (i, input) in tx.inputs.iter_mut().enumerate() {
            let sig: Signature = key.sign(&Self::input_sig_message(chain_id, &txid, i as u32));
            input.signature = sig.to_bytes();
        }
        tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn domain_len_matches_message_layout() {
        assert_eq!(DOMAIN_INPUT_SIG.len(), 21);
    }

    #[test]
    fn txid_excludes_signatures() {
        let k = key(1);
        let to = Address::from_public_key(&PublicKey::from_signing(&key(2)));
        let prev = OutPoint {
            txid: Txid([9; 32]),
            vout: 0,
        };
        let tx = Transaction::build_signed(
            7,
            &k,
            &[prev],
            vec![TxOutput {
                amount: 5,
                address: to,
            }],
        );
        let mut mangled = tx.clone();
        mangled.inputs[0].signature = [1; 64];
        assert_eq!(tx.txid(), mangled.txid());
        let mut other_chain = tx.clone();
        other_chain.chain_id = 8;
        assert_ne!(tx.txid(), other_chain.txid());
    }

    #[test]
    fn tx_round_trip_and_len() {
        let k = key(3);
        let tx = Transaction::build_signed(
            1,
            &k,
            &[OutPoint {
                txid: Txid([1; 32]),
                vout: 3,
            }],
            vec![TxOutput {
                amount: 10,
                address: Address([4; 20]),
            }],
        );
        let b = tx.to_bytes();
        assert_eq!(b.len(), tx.encoded_len());
        assert_eq!(Transaction::from_bytes(&b).unwrap(), tx);
        assert!(Transaction::from_bytes(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn address_text_checksum() {
        let a = Address::from_public_key(&PublicKey::from_signing(&key(5)));
        let s = a.to_string();
        assert_eq!(s.parse::<Address>().unwrap(), a);
        let mut bad = s.clone().into_bytes();
        let last = bad.len() - 10;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            String::from_utf8(bad).unwrap().parse::<Address>(),
            Err(AddressError::Checksum)
        );
        assert_eq!("xx".parse::<Address>(), Err(AddressError::Prefix));
        // Upper case is the same address.
        assert_eq!(s.to_uppercase().parse::<Address>().unwrap(), a);
        assert_eq!("é".parse::<Address>(), Err(AddressError::Prefix));
    }
}
