//! The masternode registry: who may vote, with what weight, and the quorum.

use std::collections::HashMap;

use crate::protocol::types::{PublicKey, COIN};

/// Collateral tiers. Weights grow tenfold per tier. The seeds' unpaid "Free"
/// tier is deliberately absent: a vote that costs nothing invites Sybils.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    Bronze,
    Silver,
    Gold,
}

impl Tier {
    pub fn weight(self) -> u64 {
        match self {
            Tier::Bronze => 1,
            Tier::Silver => 10,
            Tier::Gold => 100,
        }
    }
    pub fn collateral(self) -> u64 {
        match self {
            Tier::Bronze => 1_000 * COIN,
            Tier::Silver => 10_000 * COIN,
            Tier::Gold => 100_000 * COIN,
        }
    }
    pub fn code(self) -> u8 {
        match self {
            Tier::Bronze => 1,
            Tier::Silver => 2,
            Tier::Gold => 3,
        }
    }
    pub fn from_code(c: u8) -> Option<Tier> {
        match c {
            1 => Some(Tier::Bronze),
            2 => Some(Tier::Silver),
            3 => Some(Tier::Gold),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Tier::Bronze => "bronze",
            Tier::Silver => "silver",
            Tier::Gold => "gold",
        }
    }
    pub fn from_name(s: &str) -> Option<Tier> {
        match s.to_ascii_lowercase().as_str() {
            "bronze" => Some(Tier::Bronze),
            "silver" => Some(Tier::Silver),
            "gold" => Some(Tier::Gold),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masternode {
    pub key: PublicKey,
    /// Where its P2P port listens, `host:port`.
    pub address: String,
    pub tier: Tier,
}

/// Stake-weighted quorum: strictly more than two thirds of the total weight,
/// `q = floor(2W/3) + 1`, never lowered. Two quorums overlap in more than W/3,
/// so with less than W/3 Byzantine weight they share an honest voter.
pub fn quorum_threshold(total_weight: u64) -> u64 {
    (2 * total_weight) / 3 + 1
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("masternode key {0} is registered twice")]
    DuplicateKey(PublicKey),
    #[error("the registry is empty")]
    Empty,
}

#[derive(Clone, Debug)]
pub struct Registry {
    epoch: u64,
    nodes: Vec<Masternode>,
    index: HashMap<PublicKey, usize>,
    total_weight: u64,
}

impl Registry {
    pub fn new(epoch: u64, nodes: Vec<Masternode>) -> Result<Self, RegistryError> {
        if nodes.is_empty() {
            return Err(RegistryError::Empty);
        }
        let mut index = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if index.insert(n.key, i).is_some() {
                return Err(RegistryError::DuplicateKey(n.key));
            }
        }
        let total_weight = nodes.iter().map(|n| n.tier.weight()).sum();
        Ok(Registry {
            epoch,
            nodes,
            index,
            total_weight,
        })
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn masternodes(&self) -> &[Masternode] {
        &self.nodes
    }
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }
    pub fn quorum(&self) -> u64 {
        quorum_threshold(self.total_weight)
    }
    /// Index of a registered key (dense, 0..len): used as a voter bitmap slot.
    pub fn position(&self, key: &PublicKey) -> Option<usize> {
        self.index.get(key).copied()
    }
    pub fn weight_of(&self, key: &PublicKey) -> Option<u64> {
        self.position(key).map(|i| self.nodes[i].tier.weight())
    }
    pub fn get(&self, key: &PublicKey) -> Option<&Masternode> {
        self.position(key).map(|i| &self.nodes[i])
    }
    pub fn len(&self) -> usize {
        self.nodes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_strictly_more_than_two_thirds() {
        for w in 1..2000u64 {
            let q = quorum_threshold(w);
            assert!(3 * q > 2 * w, "w={w} q={q}");
            assert!(3 * (q - 1) <= 2 * w, "w={w}: q is not the least such");
            // Two quorums overlap in more than W/3.
            assert!(3 * (2 * q - w) > w);
        }
        assert_eq!(quorum_threshold(4), 3);
        assert_eq!(quorum_threshold(3), 3);
        assert_eq!(quorum_threshold(6), 5);
    }

    #[test]
    fn duplicate_keys_refused() {
        let n = Masternode {
            key: PublicKey([1; 32]),
            address: "127.0.0.1:1".into(),
            tier: Tier::Gold,
        };
        assert!(matches!(
            Registry::new(0, vec![n.clone(), n]),
            Err(RegistryError::DuplicateKey(_))
        ));
        assert!(matches!(
            Registry::new(0, vec![]),
            Err(RegistryError::Empty)
        ));
    }
}
