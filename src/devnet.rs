//! A local testnet on 127.0.0.1: keys, genesis, per-node configs, funded
//! wallets, and (in the binary) the masternode processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::node::genesis_file::{Allocation, GenesisFile, MasternodeEntry};
use crate::node::keyfile::{KeyFile, KeyFileError};
use crate::protocol::types::{Address, PublicKey, COIN};

#[derive(Clone, Debug)]
pub struct DevnetSpec {
    pub nodes: usize,
    pub base_port: u16,
    pub wallets: usize,
    /// Funding outputs per wallet.
    pub coins_per_wallet: u32,
    /// Base units per funding output.
    pub coin_amount: u64,
    pub tier: String,
    /// UDP fast path: "multicast" (on lo), "unicast" or "off".
    pub fast_path: String,
    /// Distance between consecutive masternodes' P2P ports. The default 2
    /// leaves room for what listens at P2P port + 1 (the TCP peer pool,
    /// `--peer-transport tcp`, and the unicast fast path): with 1, that port
    /// is the next masternode's P2P port and the TCP pool cannot bind.
    pub port_stride: u16,
}

impl DevnetSpec {
    /// Ports a devnet of `nodes` uses from its base port: P2P (and P2P + 1)
    /// per node at `stride`, the multicast group port, then one metrics port
    /// per node, then one RPC port per node (reserved).
    pub fn span_for(nodes: usize, stride: u16) -> usize {
        nodes * stride.max(1) as usize + 1 + 2 * nodes
    }

    pub fn port_span(&self) -> usize {
        Self::span_for(self.nodes, self.port_stride)
    }

    /// Masternode `i`'s `/metrics` port: after the multicast group port.
    pub fn metrics_port(&self, i: usize) -> u16 {
        (self.base_port as usize + self.nodes * self.port_stride.max(1) as usize + 1 + i) as u16
    }

    /// Masternode `i`'s JSON-RPC port: after the metrics ports.
    pub fn rpc_port(&self, i: usize) -> u16 {
        self.metrics_port(i) + self.nodes as u16
    }
}

impl Default for DevnetSpec {
    fn default() -> Self {
        DevnetSpec {
            nodes: 4,
            base_port: 24200,
            wallets: 4,
            coins_per_wallet: 100,
            coin_amount: 1_000 * COIN,
            tier: "bronze".into(),
            fast_path: "multicast".into(),
            port_stride: 2,
        }
    }
}

/// Where everything of a generated devnet lives.
#[derive(Clone, Debug)]
pub struct DevnetLayout {
    pub dir: PathBuf,
    pub genesis: PathBuf,
    pub chain_id: u32,
    pub node_configs: Vec<PathBuf>,
    pub endpoints: Vec<SocketAddr>,
    /// Each masternode's `/metrics` address (from its node.toml), if on.
    pub metrics: Vec<Option<SocketAddr>>,
    /// Each masternode's JSON-RPC address (from its node.toml), if on, and
    /// the cookie file its RPC clients read.
    pub rpc: Vec<Option<SocketAddr>>,
    pub cookies: Vec<PathBuf>,
    pub wallet_keys: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevnetError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyFileError),
    #[error(transparent)]
    Genesis(#[from] crate::node::genesis_file::GenesisError),
    #[error(
        "{dir} holds a devnet of {found} masternodes, not {wanted}; use --fresh to replace it"
    )]
    Mismatch {
        dir: String,
        found: usize,
        wanted: usize,
    },
    #[error("port range {0}..{1} does not fit")]
    Ports(u16, usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevnetError + '_ {
    move |source| DevnetError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl DevnetLayout {
    fn paths(dir: &Path, nodes: usize, wallets: usize, genesis: &GenesisFile) -> DevnetLayout {
        let node_configs: Vec<PathBuf> = (0..nodes)
            .map(|i| dir.join(format!("mn{i}")).join("node.toml"))
            .collect();
        let metrics = node_configs
            .iter()
            .map(|p| listen_of(p, "metrics_listen"))
            .collect();
        let rpc = node_configs
            .iter()
            .map(|p| listen_of(p, "rpc_listen"))
            .collect();
        let cookies = node_configs
            .iter()
            .map(|p| p.with_file_name("data").join(".cookie"))
            .collect();
        DevnetLayout {
            dir: dir.to_path_buf(),
            genesis: dir.join("genesis.json"),
            chain_id: genesis.chain_id,
            node_configs,
            metrics,
            rpc,
            cookies,
            endpoints: genesis
                .masternodes
                .iter()
                .filter_map(|m| m.address.parse().ok())
                .collect(),
            wallet_keys: (0..wallets)
                .map(|i| dir.join("wallets").join(format!("wallet{i}.json")))
                .collect(),
        }
    }

    /// Reuses a devnet already generated in `dir` (keeping its state), or
    /// generates a new one.
    pub fn open_or_generate(dir: &Path, spec: &DevnetSpec) -> Result<DevnetLayout, DevnetError> {
        let g = dir.join("genesis.json");
        if g.exists() {
            let genesis = GenesisFile::load(&g)?;
            genesis.to_genesis()?;
            if genesis.masternodes.len() != spec.nodes {
                return Err(DevnetError::Mismatch {
                    dir: dir.display().to_string(),
                    found: genesis.masternodes.len(),
                    wanted: spec.nodes,
                });
            }
            let wallets = std::fs::read_dir(dir.join("wallets"))
                .map(|d| d.count())
                .unwrap_or(0);
            let layout = Self::paths(dir, spec.nodes, wallets, &genesis);
            layout.write_endpoints()?;
            return Ok(layout);
        }
        Self::generate(dir, spec)
    }

    /// Writes `endpoints.json`: per masternode its P2P address, metrics
    /// URL, config, data directory and log, for tools and tests.
    pub fn write_endpoints(&self) -> Result<(), DevnetError> {
        let nodes: Vec<serde_json::Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, p2p)| {
                let cfg = &self.node_configs[i];
                serde_json::json!({
                    "masternode": i,
                    "p2p": p2p.to_string(),
                    "metrics_url": self.metrics.get(i).copied().flatten()
                        .map(|a| format!("http://{a}/metrics")),
                    "rpc_url": self.rpc.get(i).copied().flatten()
                        .map(|a| format!("http://{a}/")),
                    "cookie": self.cookies[i].display().to_string(),
                    "config": cfg.display().to_string(),
                    "data_dir": cfg.with_file_name("data").display().to_string(),
                    "log": cfg.with_file_name("node.log").display().to_string(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "chain_id": self.chain_id,
            "genesis": self.genesis.display().to_string(),
            "masternodes": nodes,
        });
        let p = self.dir.join("endpoints.json");
        let text = serde_json::to_string_pretty(&doc).expect("json of plain values");
        std::fs::write(&p, text + "\n").map_err(io(&p))
    }

    pub fn generate(dir: &Path, spec: &DevnetSpec) -> Result<DevnetLayout, DevnetError> {
        if spec.base_port as usize + spec.port_span() > u16::MAX as usize {
            return Err(DevnetError::Ports(spec.base_port, spec.nodes));
        }
        std::fs::create_dir_all(dir.join("wallets")).map_err(io(dir))?;
        let chain_id = rand::random::<u32>() | 1;
        // The multicast group port sits right after the P2P ports; the group
        // address comes from the chain id so two devnets do not share one.
        let fast = match spec.fast_path.as_str() {
            "multicast" => format!(
                "fast_path = \"multicast\"\nmulticast_group = \"239.255.{}.{}:{}\"\nmulticast_interface = \"127.0.0.1\"\n",
                (chain_id >> 8) & 0xff,
                chain_id & 0xff,
                spec.base_port as usize + spec.nodes * spec.port_stride.max(1) as usize
            ),
            other => format!("fast_path = \"{other}\"\n"),
        };
        let mut masternodes = Vec::new();
        for i in 0..spec.nodes {
            let nd = dir.join(format!("mn{i}"));
            std::fs::create_dir_all(&nd).map_err(io(&nd))?;
            let key = KeyFile::generate();
            KeyFile::save(&key, &nd.join("key.json"))?;
            let port = spec.base_port + i as u16 * spec.port_stride.max(1);
            let metrics = spec.metrics_port(i);
            let rpc = spec.rpc_port(i);
            masternodes.push(MasternodeEntry {
                public_key: PublicKey::from_signing(&key).to_string(),
                address: format!("127.0.0.1:{port}"),
                tier: spec.tier.clone(),
            });
            let cfg = format!(
                "# masternode {i} of a local devnet\n\
                 data_dir = \"data\"\nkey_file = \"key.json\"\ngenesis = \"../genesis.json\"\n\
                 network = \"devnet\"\nlisten_host = \"127.0.0.1\"\np2p_port = {port}\n{fast}\
                 # all masternodes share this machine: one verifier and one\n\
                 # network thread each, votes tallied where they arrive\n\
                 verify_threads = 1\n\
                 net_threads = 1\n\
                 vote_threads = 0\n\
                 metrics_listen = \"127.0.0.1:{metrics}\"\n\
                 rpc_listen = \"127.0.0.1:{rpc}\"\n"
            );
            let p = nd.join("node.toml");
            std::fs::write(&p, cfg).map_err(io(&p))?;
        }
        let mut allocations = Vec::new();
        for i in 0..spec.wallets {
            let key = KeyFile::generate();
            let p = dir.join("wallets").join(format!("wallet{i}.json"));
            KeyFile::save(&key, &p)?;
            allocations.push(Allocation {
                address: Address::from_public_key(&PublicKey::from_signing(&key)).to_string(),
                amount: spec.coin_amount,
                count: spec.coins_per_wallet,
            });
        }
        let genesis = GenesisFile {
            chain_id,
            network: "devnet".into(),
            epoch: 1,
            masternodes,
            allocations,
        };
        genesis.to_genesis()?;
        let g = dir.join("genesis.json");
        genesis.save(&g).map_err(io(&g))?;
        let layout = Self::paths(dir, spec.nodes, spec.wallets, &genesis);
        layout.write_endpoints()?;
        Ok(layout)
    }
}

/// An address key (`metrics_listen`, `rpc_listen`) of a node.toml, if it
/// sets one (a devnet made before they existed has none).
fn listen_of(cfg: &Path, key: &str) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(cfg).ok()?;
    let v: toml::Value = toml::from_str(&text).ok()?;
    v.get(key)?.as_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_reopen() {
        let d = tempfile::tempdir().unwrap();
        let spec = DevnetSpec {
            nodes: 3,
            wallets: 2,
            coins_per_wallet: 5,
            base_port: 31000,
            ..Default::default()
        };
        let a = DevnetLayout::generate(d.path(), &spec).unwrap();
        assert_eq!(a.endpoints.len(), 3);
        // Every P2P port + 1 (TCP pool) is free of the other P2P ports.
        let ports: Vec<u16> = a.endpoints.iter().map(|e| e.port()).collect();
        assert_eq!(ports, [31000, 31002, 31004]);
        assert!(ports.iter().all(|p| !ports.contains(&(p + 1))));
        // Metrics ports come after the multicast port, inside the span.
        let m: Vec<u16> = a.metrics.iter().map(|m| m.unwrap().port()).collect();
        assert_eq!(m, [31007, 31008, 31009]);
        let ep: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("endpoints.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            ep["masternodes"][1]["metrics_url"],
            "http://127.0.0.1:31008/metrics"
        );
        assert_eq!(ep["masternodes"][2]["p2p"], "127.0.0.1:31004");
        let r: Vec<u16> = a.rpc.iter().map(|m| m.unwrap().port()).collect();
        assert_eq!(r, [31010, 31011, 31012]);
        assert!(31000 + spec.port_span() > 31012);
        assert_eq!(ep["masternodes"][0]["rpc_url"], "http://127.0.0.1:31010/");
        let g = GenesisFile::load(&a.genesis).unwrap().to_genesis().unwrap();
        assert_eq!(g.utxos.len(), 10);
        assert_eq!(g.registry.len(), 3);
        let b = DevnetLayout::open_or_generate(d.path(), &spec).unwrap();
        assert_eq!(a.chain_id, b.chain_id);
        assert_eq!(b.wallet_keys.len(), 2);
        let wrong = DevnetSpec { nodes: 4, ..spec };
        assert!(matches!(
            DevnetLayout::open_or_generate(d.path(), &wrong),
            Err(DevnetError::Mismatch { .. })
        ));
    }
}
