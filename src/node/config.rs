//! Node configuration: a TOML file, the seed's environment variables
//! (`MASTERNODE_WALLET`, `NETWORK_TYPE`, `P2P_PORT`) and command-line flags.
//! Flags override the environment, which overrides the file (clap reads the
//! environment for each flag; the file fills in what neither set).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

/// The options of `time-masternode run`.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML configuration file; its keys are the long option names below with
    /// '_' for '-', e.g. `listen_host = "0.0.0.0"` and `p2p_port = 24000`
    /// (deploy/node.toml lists every key). Relative paths in it are
    /// relative to the file's directory.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Directory for the LMDB database and the lock file.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This masternode's key file (JSON, from `time-wallet keygen`).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// The network's genesis file (JSON: chain id, registry, allocations).
    #[arg(long)]
    pub genesis: Option<PathBuf>,
    /// Address to listen on for masternodes and wallets [default: 127.0.0.1].
    #[arg(long)]
    pub listen_host: Option<String>,
    /// P2P port [default: 24000 mainnet, 24100 testnet, 24200 devnet].
    #[arg(long, env = "P2P_PORT")]
    pub p2p_port: Option<u16>,
    /// mainnet, testnet or devnet; must match the genesis file.
    #[arg(long, env = "NETWORK_TYPE")]
    pub network: Option<String>,
    /// Address paid this masternode's rewards (recorded, informational until
    /// the block layer exists).
    #[arg(long, env = "MASTERNODE_WALLET")]
    pub masternode_wallet: Option<String>,
    /// Lock timeout in milliseconds: state for transactions this node never
    /// voted on is dropped after it. Voted locks are never released.
    #[arg(long)]
    pub lock_timeout_ms: Option<u64>,
    /// Most undecided transactions held at once.
    #[arg(long)]
    pub mempool_limit: Option<usize>,
    /// Most payments from this node's wallets and RPC undecided at once
    /// (16 to 65536); one more is refused at once as busy [default: 512].
    #[arg(long)]
    pub origin_window: Option<usize>,
    /// Most UTXO entries kept in memory (4096 to 67108864, about 160 bytes
    /// each); the rest are read from the database [default: 1048576].
    #[arg(long)]
    pub utxo_cache: Option<usize>,
    /// Pause after a committed block before the next one is proposed, in
    /// milliseconds (100 to 3600000), or 0 to run without the block layer
    /// [default: 600000 mainnet and testnet, 1000 devnet].
    #[arg(long)]
    pub block_interval_ms: Option<u64>,
    /// UDP fast path for lock broadcasts and votes: off, multicast or
    /// unicast [default: off]. Losses are repaired over the peer pool.
    #[arg(long)]
    pub fast_path: Option<String>,
    /// Multicast group and port for the fast path [default: 239.255.24.1:24300].
    #[arg(long)]
    pub multicast_group: Option<String>,
    /// Address of the interface multicast goes out of and is joined on
    /// [default: the listen address]. Always explicit, never the default route.
    #[arg(long)]
    pub multicast_interface: Option<String>,
    /// UDP I/O backend: auto (io_uring if available, else epoll), uring or epoll.
    #[arg(long)]
    pub io_backend: Option<String>,
    /// Peer transport: quic (pool over QUIC on UDP at the P2P port, mutual
    /// TLS 1.3 bound to masternode keys) or tcp (pool over TCP at the P2P
    /// port + 1, the same TLS 1.3) [default: quic].
    #[arg(long)]
    pub peer_transport: Option<String>,
    /// Threads that verify transaction signatures [default: one per core,
    /// at most 8].
    #[arg(long)]
    pub verify_threads: Option<usize>,
    /// Network threads (sockets, QUIC, RPC, wallet sessions) [default: one
    /// per core, at most 4].
    #[arg(long)]
    pub net_threads: Option<usize>,
    /// Threads that verify and tally votes (sharded by txid); 0 tallies
    /// them on the threads that receive them [default: 0 on a host of at
    /// most 2 cores, else 1].
    #[arg(long)]
    pub vote_threads: Option<usize>,
    /// Cores to pin the vote threads to, e.g. "2,3" [default: no pinning].
    #[arg(long)]
    pub vote_cores: Option<String>,
    /// How long the core holds a round open for more arrivals, in
    /// microseconds (at most 5000): each round costs one fsync and one vote
    /// signature [default: 500].
    #[arg(long)]
    pub round_window_us: Option<u64>,
    /// Skip fsync on commit. Benchmarks only: a crash can lose votes.
    #[arg(long)]
    pub unsafe_no_sync: bool,
    /// Log filter (tracing syntax) [default: info].
    #[arg(long, env = "RUST_LOG")]
    pub log: Option<String>,
    /// Log output: text, or json (one object per line, for log shippers)
    /// [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics: host:port, or a
    /// port alone for 127.0.0.1 [default: off].
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Serve JSON-RPC at http://ADDR/ (Basic auth with the data directory's
    /// `.cookie`): host:port, or a port alone for 127.0.0.1 [default: off].
    #[arg(long)]
    pub rpc_listen: Option<String>,
    /// Serve RPC (and its WebSocket) over TLS with this certificate chain
    /// (PEM); needs --rpc-tls-key [default: plain HTTP].
    #[arg(long)]
    pub rpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --rpc-tls-cert.
    #[arg(long)]
    pub rpc_tls_key: Option<PathBuf>,
    /// RPC read calls allowed per second (writes: a quarter) [default: 1000].
    #[arg(long)]
    pub rpc_rate_limit: Option<u32>,
    /// RPC credentials besides the cookie, `user:salt$hmac` from
    /// `time-cli rpcauth USER` (repeatable; a list in the file).
    #[arg(long)]
    pub rpcauth: Vec<String>,
    /// Source addresses allowed to connect to RPC besides loopback: an IP
    /// or IP/prefix (repeatable; a list in the file).
    #[arg(long)]
    pub rpcallowip: Vec<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    key_file: Option<PathBuf>,
    genesis: Option<PathBuf>,
    listen_host: Option<String>,
    p2p_port: Option<u16>,
    network: Option<String>,
    masternode_wallet: Option<String>,
    lock_timeout_ms: Option<u64>,
    mempool_limit: Option<usize>,
    origin_window: Option<usize>,
    utxo_cache: Option<usize>,
    block_interval_ms: Option<u64>,
    log: Option<String>,
    log_format: Option<String>,
    fast_path: Option<String>,
    multicast_group: Option<String>,
    multicast_interface: Option<String>,
    io_backend: Option<String>,
    vote_threads: Option<usize>,
    vote_cores: Option<String>,
    peer_transport: Option<String>,
    round_window_us: Option<u64>,
    verify_threads: Option<usize>,
    net_threads: Option<usize>,
    metrics_listen: Option<String>,
    rpc_listen: Option<String>,
    rpc_tls_cert: Option<PathBuf>,
    rpc_tls_key: Option<PathBuf>,
    rpc_rate_limit: Option<u32>,
    #[serde(default)]
    rpcauth: Vec<String>,
    #[serde(default)]
    rpcallowip: Vec<String>,
}

/// `value` if it is within `min..=max`, else the error naming the range
/// (a config value is refused, never silently clamped).
fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    key: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::OutOfRange {
            key,
            value: value.to_string(),
            min: min.to_string(),
            max: max.to_string(),
        });
    }
    Ok(value)
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Toml {
        path: String,
        source: toml::de::Error,
    },
    #[error("missing setting {0} (flag --{1}, or `{2}` in the config file)")]
    Missing(&'static str, &'static str, &'static str),
    #[error("{key} = {value} is out of range: use {min} to {max}")]
    OutOfRange {
        key: &'static str,
        value: String,
        min: String,
        max: String,
    },
    #[error("unknown network {0:?}: use mainnet, testnet or devnet")]
    Network(String),
    #[error("listen address {0}:{1} is not a valid socket address")]
    Listen(String, u16),
    #[error("fast_path {0:?}: use off, multicast or unicast")]
    FastPath(String),
    #[error(transparent)]
    PeerTransport(#[from] crate::node::peer_net::PeerTransportError),
    #[error("io_backend {0:?}: use auto, uring or epoll")]
    IoBackend(String),
    #[error("{what} {value:?} is not a valid {expected}")]
    Address {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("multicast group {0} is not a multicast address")]
    NotMulticast(String),
    #[error("{0}")]
    Invalid(String),
    #[error("masternode wallet: {0}")]
    Wallet(crate::protocol::types::AddressError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    Mainnet,
    Testnet,
    Devnet,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        match s.to_ascii_lowercase().as_str() {
            "mainnet" => Some(Network::Mainnet),
            "testnet" => Some(Network::Testnet),
            "devnet" => Some(Network::Devnet),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Devnet => "devnet",
        }
    }
    /// The block interval a network runs at unless configured: the deployed
    /// network's 600 s, and about a second on a devnet.
    pub fn default_block_interval_ms(self) -> u64 {
        match self {
            Network::Mainnet | Network::Testnet => 600_000,
            Network::Devnet => 1_000,
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Network::Mainnet => 24000,
            Network::Testnet => 24100,
            Network::Devnet => 24200,
        }
    }
}

/// Shortest block interval a node accepts (each block costs three signed
/// messages per masternode).
pub const MIN_BLOCK_INTERVAL_MS: u64 = 100;
/// Longest block interval a node accepts (an hour).
pub const MAX_BLOCK_INTERVAL_MS: u64 = 3_600_000;

/// Everything resolved and checked.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub key_file: PathBuf,
    pub genesis: PathBuf,
    pub listen: SocketAddr,
    pub network: Network,
    pub masternode_wallet: Option<crate::protocol::types::Address>,
    pub lock_timeout_ms: u64,
    pub mempool_limit: usize,
    /// The origin's admission window (`EngineConfig::origin_window`).
    pub origin_window: usize,
    /// UTXO entries kept in memory (`EngineConfig::utxo_cache`).
    pub utxo_cache: usize,
    /// Block interval in milliseconds; `None`: no block layer.
    pub block_interval_ms: Option<u64>,
    pub no_sync: bool,
    pub log: String,
    /// JSON log lines instead of text.
    pub log_json: bool,
    pub fast_path: crate::node::fastpath::FastPathMode,
    pub io_backend: time_net::udp::IoBackend,
    pub vote_threads: usize,
    pub vote_cores: Vec<usize>,
    pub peer_transport: crate::node::peer_net::PeerTransport,
    pub round_window_us: u64,
    pub verify_threads: usize,
    /// Tokio worker threads of the node's runtime.
    pub net_threads: usize,
    /// `/metrics` address; `None`: metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// JSON-RPC address; `None`: RPC off.
    pub rpc_listen: Option<SocketAddr>,
    /// RPC over TLS: (certificate chain, private key), PEM files.
    pub rpc_tls: Option<(PathBuf, PathBuf)>,
    pub rpc_rate_limit: u32,
    pub rpcauth: Vec<crate::node::rpc::RpcAuth>,
    pub rpcallowip: Vec<crate::node::rpc::AllowIp>,
}

/// `host:port`, `[v6]:port`, or a port alone (127.0.0.1).
fn listen_addr(what: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    let bad = || ConfigError::Address {
        what,
        value: value.to_string(),
        expected: "host:port, or a port for 127.0.0.1",
    };
    if let Ok(port) = value.trim().parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    value.trim().parse().map_err(|_| bad())
}

fn rel(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

impl RunArgs {
    pub fn resolve(self) -> Result<NodeConfig, ConfigError> {
        let (file, base) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let f: FileConfig = toml::from_str(&text).map_err(|source| ConfigError::Toml {
                    path: path.display().to_string(),
                    source,
                })?;
                let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
                (f, base)
            }
            None => (FileConfig::default(), PathBuf::from(".")),
        };
        let network_name = self
            .network
            .or(file.network)
            .unwrap_or_else(|| "mainnet".into());
        let network =
            Network::parse(&network_name).ok_or(ConfigError::Network(network_name.clone()))?;
        let port = self
            .p2p_port
            .or(file.p2p_port)
            .unwrap_or(network.default_port());
        let host = self
            .listen_host
            .or(file.listen_host)
            .unwrap_or_else(|| "127.0.0.1".into());
        let listen: SocketAddr = format!("{host}:{port}")
            .parse()
            .or_else(|_| format!("[{host}]:{port}").parse())
            .map_err(|_| ConfigError::Listen(host.clone(), port))?;
        let masternode_wallet = match self.masternode_wallet.or(file.masternode_wallet) {
            Some(s) => Some(s.parse().map_err(ConfigError::Wallet)?),
            None => None,
        };
        let fast_path = match self
            .fast_path
            .or(file.fast_path)
            .unwrap_or_else(|| "off".into())
            .as_str()
        {
            "off" => crate::node::fastpath::FastPathMode::Off,
            "unicast" => crate::node::fastpath::FastPathMode::Unicast,
            "multicast" => {
                let g = self
                    .multicast_group
                    .or(file.multicast_group)
                    .unwrap_or_else(|| "239.255.24.1:24300".into());
                let group: std::net::SocketAddrV4 =
                    g.parse().map_err(|_| ConfigError::Address {
                        what: "multicast group",
                        value: g.clone(),
                        expected: "IPv4 address:port",
                    })?;
                if !group.ip().is_multicast() {
                    return Err(ConfigError::NotMulticast(g));
                }
                let iface = self
                    .multicast_interface
                    .or(file.multicast_interface)
                    .unwrap_or_else(|| listen.ip().to_string());
                let interface: std::net::Ipv4Addr =
                    iface.parse().map_err(|_| ConfigError::Address {
                        what: "multicast interface",
                        value: iface.clone(),
                        expected: "IPv4 interface address",
                    })?;
                if interface.is_unspecified() {
                    return Err(ConfigError::Address {
                        what: "multicast interface",
                        value: iface,
                        expected: "specific interface address (not 0.0.0.0)",
                    });
                }
                crate::node::fastpath::FastPathMode::Multicast { group, interface }
            }
            other => return Err(ConfigError::FastPath(other.into())),
        };
        let io_backend = match self
            .io_backend
            .or(file.io_backend)
            .unwrap_or_else(|| "auto".into())
            .as_str()
        {
            "auto" => time_net::udp::IoBackend::Auto,
            "uring" | "io_uring" => time_net::udp::IoBackend::Uring,
            "epoll" => time_net::udp::IoBackend::Epoll,
            other => return Err(ConfigError::IoBackend(other.into())),
        };
        let vote_cores = match self.vote_cores.or(file.vote_cores) {
            None => vec![],
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|c| {
                    c.trim().parse::<usize>().map_err(|_| ConfigError::Address {
                        what: "vote core",
                        value: c.to_string(),
                        expected: "core number",
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let pt = self
            .peer_transport
            .or(file.peer_transport)
            .unwrap_or_else(|| "quic".into());
        let peer_transport = crate::node::peer_net::PeerTransport::parse(&pt)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen) {
            Some(v) => Some(listen_addr("metrics_listen", &v)?),
            None => None,
        };
        let rpc_listen = match self.rpc_listen.or(file.rpc_listen) {
            Some(v) => Some(listen_addr("rpc_listen", &v)?),
            None => None,
        };
        let rpc_tls = match (
            self.rpc_tls_cert
                .or(file.rpc_tls_cert.map(|p| rel(&base, p))),
            self.rpc_tls_key.or(file.rpc_tls_key.map(|p| rel(&base, p))),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "rpc_tls_cert and rpc_tls_key go together: set both (PEM files) or neither"
                        .into(),
                ))
            }
        };
        let pick =
            |flags: Vec<String>, file: Vec<String>| if flags.is_empty() { file } else { flags };
        let rpcauth = pick(self.rpcauth, file.rpcauth)
            .iter()
            .map(|s| s.parse().map_err(ConfigError::Invalid))
            .collect::<Result<_, _>>()?;
        let rpcallowip = pick(self.rpcallowip, file.rpcallowip)
            .iter()
            .map(|s| s.parse().map_err(ConfigError::Invalid))
            .collect::<Result<_, _>>()?;
        let log_json = match self
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into())
            .as_str()
        {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "log_format {other:?}: use text or json"
                )))
            }
        };
        let block_interval_ms = match self
            .block_interval_ms
            .or(file.block_interval_ms)
            .unwrap_or(network.default_block_interval_ms())
        {
            0 => None,
            ms @ MIN_BLOCK_INTERVAL_MS..=MAX_BLOCK_INTERVAL_MS => Some(ms),
            other => {
                return Err(ConfigError::Invalid(format!(
                    "block_interval_ms {other}: use 0 (no blocks) or \
                     {MIN_BLOCK_INTERVAL_MS} to {MAX_BLOCK_INTERVAL_MS}"
                )))
            }
        };
        // Without vote threads votes are tallied on the threads that
        // receive them: nothing to pin.
        let vote_threads = self
            .vote_threads
            .or(file.vote_threads)
            .map_or(Ok(usize::from(cores > 2)), |v| {
                in_range("vote_threads", v, 0, 256)
            })?;
        if vote_threads == 0 && !vote_cores.is_empty() {
            return Err(ConfigError::Invalid(
                "vote_cores pins vote threads, but vote_threads is 0 (votes tallied on the \
                 threads that receive them): set vote_threads to 1 or more, or drop vote_cores"
                    .into(),
            ));
        }
        Ok(NodeConfig {
            block_interval_ms,
            log_json,
            metrics_listen,
            rpc_listen,
            rpc_tls,
            rpcauth,
            rpcallowip,
            rpc_rate_limit: self
                .rpc_rate_limit
                .or(file.rpc_rate_limit)
                .map_or(Ok(1_000), |v| in_range("rpc_rate_limit", v, 1, u32::MAX))?,
            verify_threads: self
                .verify_threads
                .or(file.verify_threads)
                .map_or(Ok(cores.min(8)), |v| in_range("verify_threads", v, 1, 64))?,
            net_threads: self
                .net_threads
                .or(file.net_threads)
                .map_or(Ok(cores.min(4)), |v| in_range("net_threads", v, 1, 64))?,
            round_window_us: self
                .round_window_us
                .or(file.round_window_us)
                .map_or(Ok(500), |v| in_range("round_window_us", v, 0, 5_000))?,
            peer_transport,
            vote_threads,
            vote_cores,
            fast_path,
            io_backend,
            data_dir: self
                .data_dir
                .or(file.data_dir.map(|p| rel(&base, p)))
                .ok_or(ConfigError::Missing(
                    "data directory",
                    "data-dir",
                    "data_dir",
                ))?,
            key_file: self
                .key_file
                .or(file.key_file.map(|p| rel(&base, p)))
                .ok_or(ConfigError::Missing("key file", "key-file", "key_file"))?,
            genesis: self
                .genesis
                .or(file.genesis.map(|p| rel(&base, p)))
                .ok_or(ConfigError::Missing("genesis file", "genesis", "genesis"))?,
            listen,
            network,
            masternode_wallet,
            lock_timeout_ms: self
                .lock_timeout_ms
                .or(file.lock_timeout_ms)
                .unwrap_or(30_000),
            mempool_limit: self.mempool_limit.or(file.mempool_limit).unwrap_or(10_000),
            origin_window: self
                .origin_window
                .or(file.origin_window)
                .map_or(Ok(crate::protocol::engine::ORIGIN_WINDOW), |v| {
                    in_range("origin_window", v, 16, 65_536)
                })?,
            utxo_cache: self
                .utxo_cache
                .or(file.utxo_cache)
                .map_or(Ok(crate::protocol::engine::UTXO_CACHE), |v| {
                    in_range("utxo_cache", v, 4_096, 1 << 26)
                })?,
            no_sync: self.unsafe_no_sync,
            log: self.log.or(file.log).unwrap_or_else(|| "info".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config file's keys, read from `FileConfig` itself.
    fn file_keys() -> Vec<&'static str> {
        let src = include_str!("config.rs");
        let body = src
            .split("struct FileConfig {")
            .nth(1)
            .and_then(|b| b.split("\n}").next())
            .expect("FileConfig in config.rs");
        body.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#') && !l.starts_with("//"))
            .filter_map(|l| l.split_once(':').map(|(k, _)| k))
            .collect()
    }

    #[test]
    fn config_every_file_key_is_in_the_readme_and_the_example_node_toml() {
        let keys = file_keys();
        assert!(keys.len() > 20, "{keys:?}");
        let readme = include_str!("../../README.md");
        let toml = include_str!("../../deploy/node.toml");
        for k in keys {
            assert!(
                readme.contains(&format!("`{k}`")),
                "README's config key list lacks `{k}`"
            );
            assert!(
                toml.contains(&format!("\n{k} =")) || toml.contains(&format!("\n# {k} =")),
                "deploy/node.toml does not document {k}"
            );
        }
    }

    #[test]
    fn flags_override_file_and_file_paths_are_relative() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"data\"\nkey_file = \"key.json\"\ngenesis = \"/g.json\"\np2p_port = 1111\nnetwork = \"devnet\"\n",
        )
        .unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            p2p_port: Some(2222),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 2222);
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.genesis, PathBuf::from("/g.json"));
        assert_eq!(c.network, Network::Devnet);
        let args = RunArgs {
            config: Some(path),
            ..Default::default()
        };
        assert_eq!(args.resolve().unwrap().listen.port(), 1111);
    }

    #[test]
    fn bad_config_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "bogus_key = 1\n").unwrap();
        let r = RunArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(r, Err(ConfigError::Toml { .. })));
        let r = RunArgs {
            network: Some("moonnet".into()),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(r, Err(ConfigError::Network(_))));
        let r = RunArgs::default().resolve();
        assert!(matches!(r, Err(ConfigError::Missing(..))));
    }

    /// `links` (plain TCP between masternodes) is gone: from the file or the
    /// command line it is a typed error that says what to use instead.
    #[test]
    fn removed_links_transport_is_a_typed_error_that_names_the_replacements() {
        use crate::node::peer_net::PeerTransportError;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "data_dir = \"d\"\nkey_file = \"k\"\ngenesis = \"g\"\npeer_transport = \"links\"\n",
        )
        .unwrap();
        let from_file = RunArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve();
        let from_flag = RunArgs {
            data_dir: Some("d".into()),
            key_file: Some("k".into()),
            genesis: Some("g".into()),
            peer_transport: Some("links".into()),
            ..Default::default()
        }
        .resolve();
        for r in [from_file, from_flag] {
            match r {
                Err(e @ ConfigError::PeerTransport(PeerTransportError::LinksRemoved)) => {
                    let m = e.to_string();
                    assert!(m.contains("\"links\" was removed"), "{m}");
                    assert!(m.contains("use quic (the default"), "{m}");
                    assert!(m.contains("tcp (TLS 1.3 on P2P port + 1)"), "{m}");
                }
                other => panic!("peer_transport = links: {other:?}"),
            }
        }
        let r = RunArgs {
            data_dir: Some("d".into()),
            key_file: Some("k".into()),
            genesis: Some("g".into()),
            peer_transport: Some("udp".into()),
            ..Default::default()
        }
        .resolve();
        assert!(matches!(
            r,
            Err(ConfigError::PeerTransport(PeerTransportError::Unknown(_)))
        ));
    }

    #[test]
    fn block_interval_defaults_by_network_and_is_range_checked() {
        let base = || RunArgs {
            data_dir: Some("d".into()),
            key_file: Some("k".into()),
            genesis: Some("g".into()),
            network: Some("devnet".into()),
            ..Default::default()
        };
        assert_eq!(base().resolve().unwrap().block_interval_ms, Some(1_000));
        let mainnet = RunArgs {
            network: Some("mainnet".into()),
            ..base()
        };
        assert_eq!(mainnet.resolve().unwrap().block_interval_ms, Some(600_000));
        let off = RunArgs {
            block_interval_ms: Some(0),
            ..base()
        };
        assert_eq!(off.resolve().unwrap().block_interval_ms, None);
        for bad in [1, 99, 3_600_001] {
            let r = RunArgs {
                block_interval_ms: Some(bad),
                ..base()
            }
            .resolve();
            match r {
                Err(ConfigError::Invalid(m)) => assert!(m.contains("100 to 3600000"), "{m}"),
                other => panic!("block_interval_ms {bad}: {other:?}"),
            }
        }
    }

    /// deploy/node.toml parses, and names every option `run` takes (set or
    /// commented out), so operators see every key.
    #[test]
    fn example_node_toml_parses_and_documents_every_key() {
        use clap::{Args, Command};
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/node.toml");
        let cfg = RunArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(cfg.network, Network::Testnet);
        assert_eq!(cfg.metrics_listen, Some("127.0.0.1:24102".parse().unwrap()));
        assert_eq!(cfg.rpc_listen, Some("127.0.0.1:24101".parse().unwrap()));
        let text = std::fs::read_to_string(&path).unwrap();
        let cmd = RunArgs::augment_args(Command::new("run"));
        for arg in cmd.get_arguments() {
            let key = arg.get_id().as_str();
            if key == "config" || key == "unsafe_no_sync" {
                continue; // the file itself; a benchmark-only flag
            }
            assert!(
                text.lines().any(|l| {
                    let l = l.trim_start_matches('#').trim_start();
                    l.starts_with(&format!("{key} ="))
                }),
                "deploy/node.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn listen_addresses_take_a_port_or_an_address() {
        assert_eq!(
            listen_addr("metrics_listen", "9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            listen_addr("rpc_listen", "[::1]:8332").unwrap(),
            "[::1]:8332".parse().unwrap()
        );
        assert!(listen_addr("rpc_listen", "localhost:x").is_err());
    }
}
