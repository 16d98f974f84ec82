//! The genesis file (JSON): chain id, masternode registry and funding
//! allocations. Every masternode and wallet of a network reads the same file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::registry::{Masternode, Registry, Tier};
use crate::protocol::types::{Address, PublicKey, TxOutput};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::storage::Genesis;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenesisFile {
    pub chain_id: u32,
    pub network: String,
    pub epoch: u64,
    pub masternodes: Vec<MasternodeEntry>,
    pub allocations: Vec<Allocation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MasternodeEntry {
    /// ed25519 public key, hex.
    pub public_key: String,
    /// P2P endpoint, `host:port`.
    pub address: String,
    /// bronze, silver or gold.
    pub tier: String,
}

/// `count` outputs of `amount` base units each, paying `address`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Allocation {
    pub address: String,
    pub amount: u64,
    pub count: u32,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenesisError {
    #[error("cannot read genesis file {path}: {source} (give the network's genesis file: --genesis PATH, or `genesis` in the config; `time-masternode devnet` writes DIR/genesis.json)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("genesis file {path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("masternode {index}: public key is not 64 hex digits of a usable ed25519 key (a curve point not of small order)")]
    BadKey { index: usize },
    #[error("masternode {index}: unknown tier {tier:?} (bronze, silver or gold)")]
    BadTier { index: usize, tier: String },
    #[error("allocation {index}: {source}")]
    BadAddress {
        index: usize,
        source: crate::protocol::types::AddressError,
    },
    #[error("allocation {index}: amount must be positive")]
    ZeroAmount { index: usize },
    #[error("registry: {0}")]
    Registry(#[from] crate::protocol::registry::RegistryError),
}

/// Genesis outputs live under a synthetic txid per allocation.
pub use timecoin_core::testkit::genesis_outpoint;

impl GenesisFile {
    pub fn load(path: &Path) -> Result<Self, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| GenesisError::Json {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            serde_json::to_string_pretty(self).expect("serializable") + "\n",
        )
    }

    /// Checks everything and builds the typed genesis.
    pub fn to_genesis(&self) -> Result<Genesis, GenesisError> {
        let mut nodes = Vec::with_capacity(self.masternodes.len());
        for (index, m) in self.masternodes.iter().enumerate() {
            let key: PublicKey = m
                .public_key
                .parse()
                .map_err(|_| GenesisError::BadKey { index })?;
            // Not a point, or a small-order key anyone could sign for.
            if !key.is_point() || key.is_small_order() {
                return Err(GenesisError::BadKey { index });
            }
            let tier = Tier::from_name(&m.tier).ok_or_else(|| GenesisError::BadTier {
                index,
                tier: m.tier.clone(),
            })?;
            nodes.push(Masternode {
                key,
                address: m.address.clone(),
                tier,
            });
        }
        let registry = Registry::new(self.epoch, nodes)?;
        let mut utxos = Vec::new();
        for (index, a) in self.allocations.iter().enumerate() {
            let address: Address = a
                .address
                .parse()
                .map_err(|source| GenesisError::BadAddress { index, source })?;
            if a.amount == 0 {
                return Err(GenesisError::ZeroAmount { index });
            }
            for c in 0..a.count {
                utxos.push((
                    genesis_outpoint(index as u32, c),
                    UtxoEntry {
                        output: TxOutput {
                            amount: a.amount,
                            address,
                        },
                        state: UtxoState::Unspent,
                    },
                ));
            }
        }
        Ok(Genesis {
            chain_id: self.chain_id,
            registry,
            utxos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(keys: &[String]) -> GenesisFile {
        GenesisFile {
            chain_id: 1,
            network: "test".into(),
            epoch: 1,
            masternodes: keys
                .iter()
                .map(|k| MasternodeEntry {
                    public_key: k.clone(),
                    address: "127.0.0.1:1".into(),
                    tier: "bronze".into(),
                })
                .collect(),
            allocations: vec![],
        }
    }

    #[test]
    fn small_order_keys_are_refused() {
        let good = PublicKey::from_signing(&crate::testkit::key_from_seed("g", 0)).to_string();
        assert!(file(std::slice::from_ref(&good)).to_genesis().is_ok());
        // The identity (0, 1) and the order-2 point (0, -1): small order,
        // anyone can sign for them under ZIP 215.
        let identity = format!("01{}", "00".repeat(31));
        let order2 = format!("ec{}7f", "ff".repeat(30));
        for bad in [identity, order2] {
            let r = file(&[good.clone(), bad]).to_genesis();
            assert!(matches!(r, Err(GenesisError::BadKey { index: 1 })), "{r:?}");
        }
    }
}
