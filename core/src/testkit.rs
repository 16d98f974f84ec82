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
    )
}

pub const DEFAULT_AMOUNT: u64 = 10 * COIN;
