//! Helpers to build a genesis and an in-process cluster of engines, for unit
//! tests, the simulator and benchmarks. No I/O.

use ed25519_dalek::SigningKey;

use crate::protocol::engine::{Engine, EngineConfig};
use crate::protocol::registry::{Masternode, Registry, Tier};
use crate::protocol::types::{Address, OutPoint, PublicKey, TxOutput, Txid, COIN};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::storage::{Genesis, MemoryStore, Store};

/// Deterministic key from a label (test and devnet use only).
pub fn key_from_seed(label: &str, i: u64) -> SigningKey {
    let mut h = blake3::Hasher::new();
    h.update(b"TIMECOIN/test-key/v1");
    h.update(label.as_bytes());
    h.update(&i.to_le_bytes());
    SigningKey::from_bytes(h.finalize().as_bytes())
}

pub fn address_of(key: &SigningKey) -> Address {
    Address::from_public_key(&PublicKey::from_signing(key))
}

/// A genesis with `n` equal-weight masternodes and `coins` funding outputs of
/// `amount` for each wallet key.
pub fn genesis(
    chain_id: u32,
    masternodes: &[SigningKey],
    tier: Tier,
    wallets: &[SigningKey],
    coins: u32,
    amount: u64,
) -> Genesis {
    let registry = Registry::new(
        1,
        masternodes
            .iter()
            .enumerate()
            .map(|(i, k)| Masternode {
                key: PublicKey::from_signing(k),
                address: format!("127.0.0.1:{}", 24000 + i),
                tier,
            })
            .collect(),
    )
    .expect("distinct keys");
    let mut utxos = Vec::new();
    for (w, k) in wallets.iter().enumerate() {
        for c in 0..coins {
            utxos.push((
                genesis_outpoint(w as u32, c),
                UtxoEntry {
                    output: TxOutput {
                        amount,
                        address: address_of(k),
                    },
                    state: UtxoState::Unspent,
                },
            ));
        }
    }
    Genesis {
        chain_id,
        registry,
        utxos,
    }
}

/// The outpoint of genesis allocation `allocation`, coin `coin`: txid =
/// blake3("TIMECOIN/genesis/v1" || allocation as u32 LE), vout = coin.
pub fn genesis_outpoint(allocation: u32, coin: u32) -> OutPoint {
    let mut h = blake3::Hasher::new();
    h.update(b"TIMECOIN/genesis/v1");
    h.update(&allocation.to_le_bytes());
    OutPoint {
        txid: Txid(*h.finalize().as_bytes()),
        vout: coin,
    }
}

pub fn engine_with_store(genesis: &Genesis, key: SigningKey, store: &mut MemoryStore) -> Engine {
    store.init(genesis).expect("memory store");
    let snap = store.load().expect("memory store");
    Engine::new(
        EngineConfig::new(genesis.chain_id),
        key,
        genesis.registry.clone(),
        snap,
        store.utxo_source(),
    )
}

pub const DEFAULT_AMOUNT: u64 = 10 * COIN;

/// A signature by `key` on `msg` whose `R` carries a small-order component:
/// `R = [r]B + T` with `T` a point of order 8
/// (`curve25519_dalek::constants::EIGHT_TORSION[1]`) and `s = r + k a`,
/// `k = SHA-512(R || A || msg)`. The nonce `r` is derived from the key and
/// the message, so the result is deterministic.
///
/// Before ZIP 215 this was the disagreement between a batch and a single
/// verifier: `ed25519_dalek::verify_strict` refuses it (it recomputes `R`
/// without the cofactor and lands `T` away), while
/// `ed25519_dalek::verify_batch` accepts it whenever its (transcript-derived)
/// coefficient for it is a multiple of 8, so the verdict depended on what
/// else was in the batch. The nonce is chosen so that a batch of just this
/// signature passes `verify_batch` (the function checks this and both
/// properties before returning).
///
/// Under ZIP 215 ([`crate::sig`]) the equation is cofactored,
/// `[8]([s]B - R - [k]A) = [8](-T) = 0`, so this signature is *valid*, for
/// single and batch verification alike, in any batch: there is no longer a
/// disagreement to exploit. A simulator can send it as an honest-but-odd
/// signature and expect every node and wallet to accept it.
pub fn torsion_signature(key: &SigningKey, msg: &[u8]) -> [u8; 64] {
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
    use curve25519_dalek::scalar::Scalar;
    use ed25519_dalek::Signature;
    use sha2::{Digest, Sha512};

    // The secret scalar and nonce prefix (RFC 8032 section 5.1.5).
    let h = Sha512::digest(key.to_bytes());
    let mut a = [0u8; 32];
    a.copy_from_slice(&h[..32]);
    a[0] &= 248;
    a[31] &= 127;
    a[31] |= 64;
    let a = Scalar::from_bytes_mod_order(a);
    let vk = key.verifying_key();
    let public = vk.to_bytes();
    let torsion = EIGHT_TORSION[1];
    for attempt in 0u32.. {
        let r = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(b"TIMECOIN/testkit/torsion-nonce/v1")
                .chain_update(&h[32..])
                .chain_update(attempt.to_le_bytes())
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let big_r = (r * ED25519_BASEPOINT_POINT + torsion)
            .compress()
            .to_bytes();
        let k = Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(big_r)
                .chain_update(public)
                .chain_update(msg)
                .finalize()
                .into(),
        );
        let s = r + k * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&big_r);
        sig[32..].copy_from_slice(s.as_bytes());
        let dalek = Signature::from_bytes(&sig);
        // About one nonce in eight passes the old batch check.
        if ed25519_dalek::verify_batch(&[msg], &[dalek], &[vk]).is_ok() {
            assert!(vk.verify_strict(msg, &dalek).is_err());
            assert!(crate::sig::verify(&public, msg, &sig));
            return sig;
        }
    }
    unreachable!("2^32 nonces without a batch-accepted one")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torsion_signature_splits_the_old_rules_and_not_the_new() {
        for i in 0..4 {
            let key = key_from_seed("torsion", i);
            let msg = format!("message {i}").into_bytes();
            let sig = torsion_signature(&key, &msg);
            assert_eq!(sig, torsion_signature(&key, &msg), "deterministic");
            let vk = key.verifying_key();
            let d = ed25519_dalek::Signature::from_bytes(&sig);
            assert!(ed25519_dalek::verify_batch(&[&msg[..]], &[d], &[vk]).is_ok());
            assert!(vk.verify_strict(&msg, &d).is_err());
            let pk = vk.to_bytes();
            assert!(crate::sig::verify(&pk, &msg, &sig));
            // Accepted in a batch with others, too.
            let other = key_from_seed("torsion-other", i);
            let (opk, osig) = (
                other.verifying_key().to_bytes(),
                ed25519_dalek::Signer::sign(&other, b"x").to_bytes(),
            );
            let items: Vec<crate::sig::Item> = vec![(&opk, b"x", &osig), (&pk, &msg, &sig)];
            assert!(crate::sig::verify_all(&items));
            assert_eq!(
                crate::sig::verify_batch_with_fallback(&items),
                vec![true; 2]
            );
            // The small-order component is really there.
            let r = curve25519_dalek::edwards::CompressedEdwardsY(sig[..32].try_into().unwrap())
                .decompress()
                .unwrap();
            assert!(!r.is_torsion_free());
        }
    }
}
