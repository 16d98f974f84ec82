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
    #[error("cannot read genesis file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("genesis file {path} is not valid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("masternode {index}: public key is not 64 hex digits of a valid ed25519 key")]
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
            if key.verifying_key().is_none() {
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
