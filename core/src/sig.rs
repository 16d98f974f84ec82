//! Ed25519 signature verification: the one place in the workspace where a
//! signature is checked, under one rule, [ZIP 215], as implemented by
//! `ed25519-zebra`.
//!
//! The rule, for a public key `A_bytes`, a message `M` and a signature
//! `R_bytes || s_bytes`:
//!
//! - `A_bytes` and `R_bytes` must each decode to a point of the Edwards curve.
//!   Non-canonical encodings (a `y` coordinate of `p` or more, or `x = 0` with
//!   the sign bit set) are accepted, and so are points of small order or with
//!   a small-order component: nothing checks the order.
//! - `s_bytes` must be the canonical encoding of a scalar: `s < L`.
//! - `k = SHA-512(R_bytes || A_bytes || M) mod L`, hashing the bytes as
//!   received.
//! - The signature is valid iff `[8]([s]B - R - [k]A)` is the identity
//!   (the cofactored equation).
//!
//! Because the equation is cofactored, batch verification accepts exactly the
//! signatures that single verification accepts (an invalid one slips through a
//! batch only with probability about 2^-128). So a node that verifies a
//! TimeProof in a batch and a wallet that verifies it signature by signature
//! always agree, which `ed25519_dalek::verify_batch` (not cofactored) and
//! `verify_strict` (refuses small-order components) did not.
//!
//! Signing stays with `ed25519_dalek::SigningKey`: RFC 8032 signatures are
//! deterministic and the same bytes in every library, and every honest
//! signature is valid under ZIP 215.
//!
//! Whether a *key* may be registered is a separate question: a small-order
//! key has no secret and anyone can "sign" for it under ZIP 215, so key
//! admission (genesis, peer tables) refuses them with [`is_small_order`].
//!
//! [ZIP 215]: https://zips.z.cash/zip-0215

use std::convert::Infallible;

use ed25519_zebra::{batch, Signature, VerificationKey, VerificationKeyBytes};

/// One signature to check: the public key, the signed message, the signature.
pub type Item<'a> = (&'a [u8; 32], &'a [u8], &'a [u8; 64]);

/// Verifies one signature under ZIP 215.
pub fn verify(key: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    VerificationKey::try_from(VerificationKeyBytes::from(*key))
        .and_then(|vk| vk.verify(&Signature::from(*sig), msg))
        .is_ok()
}

/// Whether every item is valid. Several items go through one ZIP 215 batch
/// verification, which accepts a set exactly when [`verify`] accepts each of
/// its members. True for an empty slice.
pub fn verify_all(items: &[Item<'_>]) -> bool {
    match items {
        [] => true,
        [(k, m, s)] => verify(k, m, s),
        _ => batch_verify(items),
    }
}

/// The verdict of [`verify`] on each item, at the cost of one batch
/// verification when all are valid. If the batch fails, each item is checked
/// alone to find the bad ones.
pub fn verify_batch_with_fallback(items: &[Item<'_>]) -> Vec<bool> {
    if verify_all(items) {
        return vec![true; items.len()];
    }
    items.iter().map(|(k, m, s)| verify(k, m, s)).collect()
}

/// A public key decoded once, for a key whose signatures are checked again
/// and again (a registered masternode's): [`verify`] decodes `A` on every
/// call, and that point decompression (a field square root) is about a
/// tenth of a single verification (`cargo bench -p time-bench --bench micro
/// -- ed25519_one`: 36.4 against 32.2 µs on the machine of
/// docs/BENCHMARKS.md, 2026-12-04). Same rule, same verdict as [`verify`]
/// with the key's bytes (a key that is not a point verifies nothing).
#[derive(Clone, Debug)]
pub struct DecodedKey(Option<VerificationKey>);

impl DecodedKey {
    pub fn new(key: &[u8; 32]) -> Self {
        DecodedKey(VerificationKey::try_from(VerificationKeyBytes::from(*key)).ok())
    }

    /// [`verify`] under this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.0
            .as_ref()
            .is_some_and(|vk| vk.verify(&Signature::from(*sig), msg).is_ok())
    }
}

/// Whether `key` decodes to a curve point (the check ZIP 215 makes on `A`).
pub fn is_point(key: &[u8; 32]) -> bool {
    VerificationKey::try_from(VerificationKeyBytes::from(*key)).is_ok()
}

/// Whether `key` is a curve point of small order (8 such points, 14
/// encodings). No secret key has such a public key, and under ZIP 215 a
/// signature `(R, s) = (T, 0)` for any small-order `T` is valid for it and
/// every message, so keys like this must not be admitted as identities. Not
/// part of the signature rule: [`verify`] accepts such signatures.
pub fn is_small_order(key: &[u8; 32]) -> bool {
    curve25519_dalek::edwards::CompressedEdwardsY(*key)
        .decompress()
        .is_some_and(|p| p.is_small_order())
}

/// One ZIP 215 batch over all items, no fallback.
fn batch_verify(items: &[Item<'_>]) -> bool {
    let mut b = batch::Verifier::new();
    for (k, m, s) in items {
        b.queue((VerificationKeyBytes::from(**k), Signature::from(**s), *m));
    }
    b.verify(ThreadRng(rand::thread_rng())).is_ok()
}

/// `rand::thread_rng()` for `ed25519-zebra`, which wants a `rand_core` 0.10
/// RNG. The batch coefficients are random, but the outcome is not: a batch of
/// valid signatures always passes (the cofactored equation holds term by term)
/// and a batch with an invalid one fails except with probability ~2^-128, so
/// the simulator stays deterministic.
struct ThreadRng(rand::rngs::ThreadRng);

impl rand_core_zebra::TryRng for ThreadRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(rand::RngCore::next_u32(&mut self.0))
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(rand::RngCore::next_u64(&mut self.0))
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        rand::RngCore::fill_bytes(&mut self.0, dst);
        Ok(())
    }
}

impl rand_core_zebra::TryCryptoRng for ThreadRng {}

#[cfg(test)]
mod tests {
    //! Test vectors. Every vector is checked alone, as a batch of one, inside
    //! batches with valid signatures around it, and through the fallback: all
    //! must give the same verdict, and the verdict is pinned.

    use super::*;
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT as B, EIGHT_TORSION};
    use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::{Signer, SigningKey};
    use sha2::{Digest, Sha512};

    /// The group order L, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    struct Vector {
        name: String,
        key: [u8; 32],
        msg: Vec<u8>,
        sig: [u8; 64],
    }

    fn good(i: u8) -> Vector {
        let k = SigningKey::from_bytes(&[i; 32]);
        let msg = vec![i; 40];
        Vector {
            name: format!("filler {i}"),
            key: k.verifying_key().to_bytes(),
            sig: k.sign(&msg).to_bytes(),
            msg,
        }
    }

    /// The verdict on `v`, after asserting that every way of checking it
    /// agrees.
    fn verdict(v: &Vector) -> bool {
        let item: Item = (&v.key, &v.msg, &v.sig);
        let single = verify(&v.key, &v.msg, &v.sig);
        assert_eq!(batch_verify(&[item]), single, "batch of one: {}", v.name);
        assert_eq!(
            DecodedKey::new(&v.key).verify(&v.msg, &v.sig),
            single,
            "decoded key: {}",
            v.name
        );
        let (a, b) = (good(201), good(202));
        let batch: Vec<Item> = vec![(&a.key, &a.msg, &a.sig), item, (&b.key, &b.msg, &b.sig)];
        for _ in 0..2 {
            // Fresh batch coefficients each time.
            assert_eq!(batch_verify(&batch), single, "batch of three: {}", v.name);
            assert_eq!(verify_all(&batch), single, "verify_all: {}", v.name);
        }
        assert_eq!(
            verify_batch_with_fallback(&batch),
            vec![true, single, true],
            "fallback: {}",
            v.name
        );
        single
    }

    /// What `ed25519_dalek::VerifyingKey::verify_strict` (the old single
    /// rule) says.
    fn legacy_strict(v: &Vector) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&v.key).is_ok_and(|k| {
            k.verify_strict(&v.msg, &ed25519_dalek::Signature::from_bytes(&v.sig))
                .is_ok()
        })
    }

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }
    fn hex64(s: &str) -> [u8; 64] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 8032 section 7.1, TEST 1 (empty message).
    fn rfc8032_test1() -> Vector {
        Vector {
            name: "RFC 8032 TEST 1".into(),
            key: hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
            msg: vec![],
            sig: hex64(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
                 5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
        }
    }

    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let t = a[i] as u16 + b[i] as u16 + carry;
            out[i] = t as u8;
            carry = t >> 8;
        }
        assert_eq!(carry, 0);
        out
    }

    fn hram(r: &[u8; 32], a: &[u8; 32], m: &[u8]) -> Scalar {
        let mut h = Sha512::new();
        h.update(r);
        h.update(a);
        h.update(m);
        Scalar::from_bytes_mod_order_wide(&h.finalize().into())
    }

    /// The secret scalar of a signing key (RFC 8032 section 5.1.5).
    fn secret_scalar(k: &SigningKey) -> Scalar {
        let h = Sha512::digest(k.to_bytes());
        let mut a = [0u8; 32];
        a.copy_from_slice(&h[..32]);
        a[0] &= 248;
        a[31] &= 127;
        a[31] |= 64;
        Scalar::from_bytes_mod_order(a)
    }

    /// Signs `msg` with secret `a` under public key bytes `key`, with nonce
    /// point `[r]B + t`.
    fn sign_raw(a: Scalar, key: &[u8; 32], msg: &[u8], r: Scalar, t: EdwardsPoint) -> [u8; 64] {
        let big_r = (r * B + t).compress().to_bytes();
        let s = r + hram(&big_r, key, msg) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(s.as_bytes());
        sig
    }

    #[test]
    fn valid_signatures_are_accepted() {
        let v = rfc8032_test1();
        // dalek signs the same bytes (signing is unchanged).
        let k = SigningKey::from_bytes(&hex32(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        ));
        assert_eq!(k.verifying_key().to_bytes(), v.key);
        assert_eq!(k.sign(&[]).to_bytes(), v.sig);
        assert!(verdict(&v));
        assert!(legacy_strict(&v));
        for i in 0..5 {
            assert!(verdict(&good(i)));
        }
    }

    #[test]
    fn wrong_message_key_or_garbage_is_refused() {
        let mut v = rfc8032_test1();
        v.msg = vec![0];
        v.name = "wrong message".into();
        assert!(!verdict(&v));

        let mut v = rfc8032_test1();
        v.key = good(9).key;
        v.name = "wrong key".into();
        assert!(!verdict(&v));

        // A key and an R that are not curve points.
        let not_point = (2u8..)
            .map(|i| {
                let mut e = [0u8; 32];
                e[0] = i;
                e
            })
            .find(|e| CompressedEdwardsY(*e).decompress().is_none())
            .unwrap();
        assert!(!is_point(&not_point));
        let mut v = rfc8032_test1();
        v.key = not_point;
        v.name = "key not a point".into();
        assert!(!verdict(&v));
        let mut v = rfc8032_test1();
        v.sig[..32].copy_from_slice(&not_point);
        v.name = "R not a point".into();
        assert!(!verdict(&v));
    }

    /// `s >= L` is refused, even though `s - L` would make the equation hold.
    #[test]
    fn non_canonical_s_is_refused() {
        let base = rfc8032_test1();
        let s: [u8; 32] = base.sig[32..].try_into().unwrap();
        for (name, bad_s) in [
            ("s + L", add_le(&s, &L)),
            ("L", L),
            ("2^256 - 1", [0xff; 32]),
        ] {
            let mut v = rfc8032_test1();
            v.sig[32..].copy_from_slice(&bad_s);
            v.name = name.into();
            assert!(!verdict(&v), "{name}");
            assert!(!legacy_strict(&v), "{name}");
        }
        // s + L for a small-order (R, A) too: (T, 0) is valid, (T, L) is not.
        let t = EIGHT_TORSION[1].compress().to_bytes();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&t);
        sig[32..].copy_from_slice(&L);
        let v = Vector {
            name: "small order, s = L".into(),
            key: t,
            msg: b"Zcash".to_vec(),
            sig,
        };
        assert!(!verdict(&v));
    }

    /// A valid signature whose R carries a torsion component `T`:
    /// `R = [r]B + T`, `s = r + k a`. The cofactored equation kills `T`, so
    /// ZIP 215 accepts it for every `T`, alone and in any batch. The old
    /// `verify_strict` refused all seven.
    #[test]
    fn torsion_in_r_is_accepted() {
        let k = SigningKey::from_bytes(&[42; 32]);
        let a = secret_scalar(&k);
        let key = k.verifying_key().to_bytes();
        assert_eq!((a * B).compress().to_bytes(), key);
        let msg = b"TIMECOIN torsion in R".to_vec();
        let r = Scalar::from(123_456_789u64);
        // T = identity: an ordinary valid signature.
        let plain = Vector {
            name: "R torsion-free".into(),
            key,
            msg: msg.clone(),
            sig: sign_raw(a, &key, &msg, r, EIGHT_TORSION[0]),
        };
        assert!(verdict(&plain));
        assert!(legacy_strict(&plain));
        for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
            let v = Vector {
                name: format!("R + torsion[{i}]"),
                key,
                msg: msg.clone(),
                sig: sign_raw(a, &key, &msg, r, *t),
            };
            assert!(verdict(&v), "{}", v.name);
            assert!(!legacy_strict(&v), "{}", v.name);
        }
    }

    /// A key with a torsion component: `A = [a]B + T`. Signatures made with
    /// `a` satisfy the cofactored equation, so ZIP 215 accepts them.
    #[test]
    fn torsion_in_a_is_accepted() {
        let k = SigningKey::from_bytes(&[43; 32]);
        let a = secret_scalar(&k);
        let msg = b"TIMECOIN torsion in A".to_vec();
        for (i, t) in EIGHT_TORSION.iter().enumerate().skip(1) {
            let key = (a * B + t).compress().to_bytes();
            assert!(is_point(&key) && !is_small_order(&key));
            let v = Vector {
                name: format!("A + torsion[{i}]"),
                key,
                msg: msg.clone(),
                sig: sign_raw(
                    a,
                    &key,
                    &msg,
                    Scalar::from(99u64 + i as u64),
                    EIGHT_TORSION[0],
                ),
            };
            assert!(verdict(&v), "{}", v.name);
        }
    }

    /// The small-order encodings of ZIP 215's test data (ed25519-zebra
    /// `tests/small_order.rs`): the 8 canonical encodings of the 8-torsion
    /// points and the 6 non-canonical encodings of small-order points.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        let mut e: Vec<[u8; 32]> = EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect();
        // (0, 1) and (0, -1) with the sign bit set (x = 0, so "-0").
        let mut y1 = [0u8; 32];
        y1[0] = 1;
        y1[31] = 0x80;
        e.push(y1);
        let mut ym1 = [0xff; 32];
        ym1[0] = 0xec;
        e.push(ym1);
        // y = p + 0 and p + 1 (non-canonical 0 and 1), each sign bit.
        for i in 0..2u8 {
            let mut y = [0xff; 32];
            y[0] = 0xed + i;
            y[31] = 0x7f;
            e.push(y);
            y[31] = 0xff;
            e.push(y);
        }
        e
    }

    /// ZIP 215's 196 small-order cases: `A` and `R` both among the 14
    /// small-order encodings (6 of them non-canonical), `s = 0`, message
    /// "Zcash". All valid under ZIP 215 (both sides of the equation are 0
    /// after multiplying by 8); `verify_strict` refused every one.
    #[test]
    fn zip215_small_order_grid_is_accepted() {
        let enc = small_order_encodings();
        assert_eq!(enc.len(), 14);
        for e in &enc {
            let p = CompressedEdwardsY(*e).decompress().expect("a point");
            assert!(p.is_small_order());
            assert!(is_point(e) && is_small_order(e));
        }
        let canonical = |e: &[u8; 32]| {
            CompressedEdwardsY(*e)
                .decompress()
                .unwrap()
                .compress()
                .to_bytes()
                == *e
        };
        assert_eq!(enc.iter().filter(|e| !canonical(e)).count(), 6);
        let mut cases = 0;
        for a in &enc {
            for r in &enc {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(r);
                let v = Vector {
                    name: format!("A={} R={}", hex::encode(a), hex::encode(r)),
                    key: *a,
                    msg: b"Zcash".to_vec(),
                    sig,
                };
                assert!(verdict(&v), "{}", v.name);
                assert!(!legacy_strict(&v), "{}", v.name);
                cases += 1;
            }
        }
        assert_eq!(cases, 196);
    }

    #[test]
    fn fallback_names_exactly_the_bad_ones() {
        let mut vs: Vec<Vector> = (0..12).map(good).collect();
        vs[3].msg[0] ^= 1;
        vs[7].sig[40] ^= 1;
        vs[11].key = vs[0].key;
        let items: Vec<Item> = vs.iter().map(|v| (&v.key, &v.msg[..], &v.sig)).collect();
        let got = verify_batch_with_fallback(&items);
        let want: Vec<bool> = (0..12).map(|i| ![3, 7, 11].contains(&i)).collect();
        assert_eq!(got, want);
        assert!(!verify_all(&items));
        assert!(verify_all(&items[..3]));
        assert!(verify_all(&[]));
        assert!(verify_batch_with_fallback(&[]).is_empty());
    }

    /// Several signatures under one key (the batch coalesces their terms).
    #[test]
    fn same_key_many_messages() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let key = k.verifying_key().to_bytes();
        let msgs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 3]).collect();
        let mut sigs: Vec<[u8; 64]> = msgs.iter().map(|m| k.sign(m).to_bytes()).collect();
        let items: Vec<Item> = msgs
            .iter()
            .zip(&sigs)
            .map(|(m, s)| (&key, &m[..], s))
            .collect();
        assert!(verify_all(&items));
        sigs.swap(2, 5);
        let items: Vec<Item> = msgs
            .iter()
            .zip(&sigs)
            .map(|(m, s)| (&key, &m[..], s))
            .collect();
        let got = verify_batch_with_fallback(&items);
        assert_eq!(got, (0..10).map(|i| i != 2 && i != 5).collect::<Vec<_>>());
    }

    #[test]
    fn ordinary_keys_are_not_small_order() {
        for i in 0..5 {
            let k = good(i).key;
            assert!(is_point(&k) && !is_small_order(&k));
        }
    }
}
