//! Leader selection: deterministic by (chain, epoch, height, round) and
//! stake-weighted. A blake3 draw picks a point in `[0, W)`; the masternode
//! whose cumulative weight range holds it leads. Every node computes the same
//! leader from the registry alone; a Gold node leads 100 times as often as a
//! Bronze one.

use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey};

const DOMAIN_LEADER: &[u8] = b"TIMECOIN/block-leader/v1";

pub fn leader(chain_id: ChainId, registry: &Registry, height: u64, round: u32) -> PublicKey {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_LEADER);
    h.update(&chain_id.to_le_bytes());
    h.update(&registry.epoch().to_le_bytes());
    h.update(&height.to_le_bytes());
    h.update(&round.to_le_bytes());
    let d = h.finalize();
    let draw = u128::from_le_bytes(d.as_bytes()[..16].try_into().expect("16 bytes"));
    // u128 modulo keeps the bias below 2^-64 for any realistic total weight.
    let point = (draw % registry.total_weight() as u128) as u64;
    let mut acc = 0u64;
    for m in registry.masternodes() {
        acc += m.tier.weight();
        if point < acc {
            return m.key;
        }
    }
    // Unreachable: point < total weight = the final acc.
    registry.masternodes()[registry.len() - 1].key
}
