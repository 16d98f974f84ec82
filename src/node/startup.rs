//! Starting and stopping a masternode: [`Node::start`] reads the config,
//! genesis and key, takes the data directory's lock, opens the store, builds
//! the state machine, and then builds every component in dependency order,
//! each handed at construction the channels and handles it needs (the core
//! queue first, then the peer transport, the verifier pool and vote threads,
//! the fast path, the core thread, the pool inbox and the
//! listener). [`Node::shutdown`] stops the core after its current round.
//!
//! Owns only the order of construction and the [`Node`] handle. It must
//! never contain protocol or connection logic, and never start a producer
//! before the queue it feeds exists.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use time_net::pool::{Inbox, Pool, PoolConfig};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::node::config::NodeConfig;
use crate::node::core_input::{Clock, CoreTx};
use crate::node::core_thread::{self, Core, CoreCtx};
use crate::node::fastpath::{
    FastPath, FastPathMode, FastPathSender, FastPathStats, VOTES_PER_DATAGRAM,
};
use crate::node::genesis_file::GenesisFile;
use crate::node::handshake::Identity;
use crate::node::ingest::{start_verifier, start_vote_threads, AfterVerify, Ingest, Sink};
use crate::node::keyfile::KeyFile;
use crate::node::listener::{accept_loop, ListenCtx};
use crate::node::metrics::{bind_metrics, serve_metrics, NodeMetrics, Sources};
use crate::node::peer_check::PeerCheck;
use crate::node::peer_glue::{spawn_pool_inbox, FastRepair, PeerCtx};
use crate::node::peer_net::PeerNet;
use crate::node::rpc::{serve_rpc, write_cookie, RpcCtx, RpcNode};
use crate::node::vote_threads::VoteThreadConfig;
use crate::node::wallet_server::{WalletCtx, WalletStats};
use crate::node::wire::NetStats;
use crate::protocol::engine::EngineConfig;
use crate::protocol::types::PublicKey;
use crate::storage::store_writer::{recover, wal_dir};
use crate::storage::{DurableStore, Genesis, Store, StoreError};
use timecoin_core::blocks::ConsensusConfig;
use timecoin_core::masternode::{Masternode, MasternodeConfig, PeerGate};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Genesis(#[from] crate::node::genesis_file::GenesisError),
    #[error(transparent)]
    Key(#[from] crate::node::keyfile::KeyFileError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("data directory {0} is in use by another masternode process")]
    Locked(String),
    #[error("genesis {path} is for network {genesis:?} but the node is configured for {configured:?}: set `network = \"{genesis}\"` in the config (or --network {genesis}), or point `genesis` at a {configured} genesis file")]
    NetworkMismatch {
        path: String,
        genesis: String,
        configured: String,
    },
    #[error("key {key} (key file {key_file}) is not a registered masternode in the genesis {genesis}: its votes would not count and it would serve balances it cannot vouch for. Use the key file of a masternode listed in that genesis, or register this key (add it to the genesis registry)")]
    NotRegistered {
        key: String,
        key_file: String,
        genesis: String,
    },
    #[error("peer pool: {0}")]
    Pool(String),
    #[error("fast path: {0}")]
    FastPath(crate::node::fastpath::FastPathError),
    #[error("cannot listen for metrics on {addr}: {source} (set metrics_listen to a free port, or leave it out to turn metrics off)")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for JSON-RPC on {addr}: {source} (set rpc_listen to a free port, or leave it out to turn RPC off)")]
    RpcListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    RpcTls(#[from] crate::node::rpc::TlsSetupError),
    #[error("cannot write the RPC cookie in {path}: {source}")]
    Cookie {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running masternode.
pub struct Node {
    pub local_addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// Where JSON-RPC is served, when `rpc_listen` is set, and its cookie.
    pub rpc_addr: Option<SocketAddr>,
    pub cookie_path: Option<std::path::PathBuf>,
    stats: Arc<NetStats>,
    wallet_stats: Arc<WalletStats>,
    stopping: Arc<AtomicBool>,
    core_tx: CoreTx,
    core: Option<JoinHandle<Result<(), StoreError>>>,
    /// Told by the RPC's `stop`.
    stop_requested: Arc<tokio::sync::Notify>,
}

/// The peer transport, before its tasks run.
struct PeerTransportParts {
    net: PeerNet,
    /// What the pool received.
    inbox: Inbox,
}

/// The pieces the components share, all created before any of them.
struct Wiring {
    id: Arc<Identity>,
    stats: Arc<NetStats>,
    stopping: Arc<AtomicBool>,
    core: CoreTx,
    wallet_stats: Arc<WalletStats>,
    net: Arc<PeerNet>,
    ingest: Ingest,
    origin_window: usize,
}

impl Node {
    /// Opens storage, binds the listener and starts every task. Call from
    /// inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let (genesis, key) = load_chain(&cfg)?;
        let lock = lock_data_dir(&cfg)?;
        let clock = Clock::start();
        let (store, masternode) = open_state(&cfg, &genesis, &key, clock.now_ms())?;
        let chain_reader = store.lmdb().chain_reader();
        let state_reader = store.state_reader();
        let (listener, local_addr) = bind_listener(cfg.listen).await?;
        let rpc_listener = match cfg.rpc_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::RpcListen { addr, source })?,
            ),
            None => None,
        };
        // Before anything starts: a bad certificate or key is refused here.
        let rpc_tls = match &cfg.rpc_tls {
            Some((cert, key)) if rpc_listener.is_some() => {
                Some(crate::node::rpc::tls_acceptor(cert, key)?)
            }
            _ => None,
        };
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                bind_metrics(addr)
                    .await
                    .map_err(|source| NodeError::MetricsListen { addr, source })?,
            ),
            None => None,
        };
        let fast = FastPath::start(
            &cfg.fast_path,
            cfg.io_backend,
            local_addr,
            key.clone(),
            &genesis.registry,
        )
        .map_err(NodeError::FastPath)?;
        // The core queue first: every producer gets a sender at construction.
        let stats = Arc::new(NetStats::default());
        let (core_tx, core_rx) = CoreTx::channel(stats.clone());
        let pacing = crate::node::ingest::intake_pacing(masternode.peer_gate(), clock);
        let transport = start_peer_transport(&cfg, &genesis, &key, local_addr, pacing).await?;
        let admission = (masternode.peer_gate(), clock);
        let w = build_wiring(
            &cfg,
            &genesis,
            key,
            transport.net,
            stats,
            core_tx,
            admission,
        );
        let fast = start_fast_receiver(fast, &w);
        let metrics = Arc::new(NodeMetrics::new(Sources {
            net: w.stats.clone(),
            wallet: w.wallet_stats.clone(),
            votes: w.ingest.votes.stats.clone(),
            verifier: w.ingest.verifier.stats.clone(),
            checks: w.ingest.checks.stats.clone(),
            fast: fast.stats.clone(),
        }));
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(l) = metrics_listener {
            tokio::spawn(serve_metrics(l, metrics.clone()));
        }
        let core = Core {
            mn: masternode,
            store,
            rx: core_rx,
            fast: fast.sender,
            round_window: Duration::from_micros(cfg.round_window_us),
            ctx: core_ctx(&w, &genesis, fast.stats, metrics.clone()),
        };
        let core = core_thread::spawn(core, lock);
        let wallets = spawn_network(&w, transport.inbox, fast.repair, listener, state_reader);
        let rpc_addr = rpc_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut cookie_path = None;
        let stop_requested = Arc::new(tokio::sync::Notify::new());
        if let Some(l) = rpc_listener {
            let (path, cookie) =
                write_cookie(&cfg.data_dir).map_err(|source| NodeError::Cookie {
                    path: cfg.data_dir.display().to_string(),
                    source,
                })?;
            let peers = (w.ingest.gate.clone(), w.ingest.clock);
            let node = RpcNode {
                chain_id: genesis.chain_id,
                registry: genesis.registry.clone(),
                p2p: local_addr,
                stop: stop_requested.clone(),
            };
            let mut ctx = RpcCtx::new(wallets, &cfg, node, &cookie, peers);
            ctx.chain = Some(crate::node::rpc::blocks::ChainCtx {
                reader: chain_reader,
                chain_id: genesis.chain_id,
                registry: genesis.registry.clone(),
                snapshot: metrics.snapshot.clone(),
                enabled: cfg.block_interval_ms.is_some(),
            });
            tokio::spawn(serve_rpc(l, Arc::new(ctx), rpc_tls));
            cookie_path = Some(path);
        }
        info!(%local_addr, key = %w.id.me, chain = genesis.chain_id, "masternode listening");
        Ok(Node {
            local_addr,
            metrics_addr,
            rpc_addr,
            cookie_path,
            stats: w.stats.clone(),
            wallet_stats: w.wallet_stats.clone(),
            stopping: w.stopping.clone(),
            core_tx: w.core.clone(),
            core: Some(core),
            stop_requested,
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Wallet sessions: connections served and the limits hit.
    pub fn wallet_stats(&self) -> &WalletStats {
        &self.wallet_stats
    }

    /// Stops the core after its current round (which commits) and waits.
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.stopping.store(true, Ordering::SeqCst);
        self.core_tx.shutdown();
        match self.core.take() {
            Some(h) => h.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// Resolves when an operator asked the node to stop (RPC `stop`): the
    /// caller then stops it as on SIGTERM, with [`Node::shutdown`].
    pub async fn stop_requested(&self) {
        self.stop_requested.notified().await
    }

    /// True once the core thread ended (a storage failure stops it).
    pub fn core_finished(&self) -> bool {
        self.core.as_ref().is_none_or(|h| h.is_finished())
    }
}

/// Genesis (checked against the configured network) and our signing key.
/// Files first, each error naming its own file (a missing key file is
/// reported as such, not as a network mismatch), then how they fit.
fn load_chain(cfg: &NodeConfig) -> Result<(Genesis, SigningKey), NodeError> {
    let key = KeyFile::load(&cfg.key_file)?;
    let gfile = GenesisFile::load(&cfg.genesis)?;
    if !gfile.network.eq_ignore_ascii_case(cfg.network.name()) {
        return Err(NodeError::NetworkMismatch {
            path: cfg.genesis.display().to_string(),
            genesis: gfile.network.clone(),
            configured: cfg.network.name().into(),
        });
    }
    let genesis = gfile.to_genesis()?;
    let me = PublicKey::from_signing(&key);
    if genesis.registry.get(&me).is_none() {
        return Err(NodeError::NotRegistered {
            key: me.to_string(),
            key_file: cfg.key_file.display().to_string(),
            genesis: cfg.genesis.display().to_string(),
        });
    }
    Ok((genesis, key))
}

/// One process per data directory: two processes sharing a vote log could
/// sign conflicting votes. The returned file holds the lock.
fn lock_data_dir(cfg: &NodeConfig) -> Result<File, NodeError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source,
    })?;
    let lock_path = cfg.data_dir.join("masternode.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| NodeError::DataDir {
            path: lock_path.display().to_string(),
            source,
        })?;
    if lock.try_lock().is_err() {
        return Err(NodeError::Locked(cfg.data_dir.display().to_string()));
    }
    Ok(lock)
}

/// Opens the store (initialised from genesis on first run) and builds the
/// state machine from what it holds.
fn open_state(
    cfg: &NodeConfig,
    genesis: &Genesis,
    key: &SigningKey,
    now: u64,
) -> Result<(DurableStore, Masternode), NodeError> {
    // The log's records LMDB lacks go in first (exactly once, by sequence
    // number); the snapshot below then sees everything acknowledged.
    let wal = wal_dir(&cfg.data_dir);
    let (mut store, next_seq) = recover(
        &cfg.data_dir.join("db"),
        &wal,
        crate::storage::lmdb::LmdbOptions {
            no_sync: cfg.no_sync,
            ..Default::default()
        },
    )?;
    store.init(genesis)?;
    let snap = store.load()?;
    info!(
        held_utxos = snap.held_utxos.len(),
        pending = snap.pending_transactions.len(),
        finalized = snap.finalized.len(),
        own_vote_batches = snap.own_votes.len(),
        "state loaded"
    );
    let mut ecfg = EngineConfig::new(genesis.chain_id);
    ecfg.lock_timeout_ms = cfg.lock_timeout_ms;
    ecfg.mempool_limit = cfg.mempool_limit;
    ecfg.origin_window = cfg.origin_window;
    ecfg.utxo_cache = cfg.utxo_cache;
    // Votes are verified and tallied on the vote threads.
    ecfg.external_tally = true;
    if cfg.fast_path != FastPathMode::Off {
        // One vote batch per datagram item.
        ecfg.max_vote_batch_items = VOTES_PER_DATAGRAM;
    }
    let mut mcfg = MasternodeConfig::new(ecfg);
    mcfg.blocks = cfg.block_interval_ms.map(|ms| ConsensusConfig {
        block_interval_ms: ms,
        ..ConsensusConfig::devnet()
    });
    let store = DurableStore::start(store, &wal, next_seq, !cfg.no_sync)?;
    let mn = Masternode::new(
        mcfg,
        key.clone(),
        genesis.registry.clone(),
        snap,
        store.utxo_source(),
        now,
    );
    Ok((store, mn))
}

async fn bind_listener(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), NodeError> {
    let listen_err = |source| NodeError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let local_addr = listener.local_addr().map_err(listen_err)?;
    Ok((listener, local_addr))
}

/// The pool, over QUIC or TCP as configured.
async fn start_peer_transport(
    cfg: &NodeConfig,
    genesis: &Genesis,
    key: &SigningKey,
    local_addr: SocketAddr,
    pacing: time_net::pool::IntakePacing,
) -> Result<PeerTransportParts, NodeError> {
    let transport = cfg.peer_transport.pool_transport();
    let mut table = HashMap::new();
    for m in genesis.registry.masternodes() {
        match m.address.parse::<SocketAddr>() {
            Ok(a) => {
                table.insert(m.key.0, cfg.peer_transport.peer_addr(a));
            }
            Err(_) => {
                warn!(peer = %m.key, address = %m.address, "unparsable masternode address; not dialed")
            }
        }
    }
    let mut pcfg = PoolConfig::new(
        transport,
        cfg.peer_transport.peer_addr(local_addr),
        key.to_bytes(),
        table,
    );
    pcfg.intake_pacing = Some(pacing);
    let (pool, inbox) = Pool::start(pcfg)
        .await
        .map_err(|e| NodeError::Pool(e.to_string()))?;
    info!(transport = ?transport, addr = %pool.local_addr(), "peer pool listening");
    Ok(PeerTransportParts {
        net: PeerNet(pool),
        inbox,
    })
}

/// The shared pieces, and the verifier pool and vote threads wired to the
/// core queue.
fn build_wiring(
    cfg: &NodeConfig,
    genesis: &Genesis,
    key: SigningKey,
    net: PeerNet,
    stats: Arc<NetStats>,
    core: CoreTx,
    (gate, clock): (PeerGate, Clock),
) -> Wiring {
    let me = PublicKey::from_signing(&key);
    let wallet_stats = Arc::new(WalletStats::default());
    let votes = start_vote_threads(
        VoteThreadConfig {
            threads: cfg.vote_threads,
            cores: cfg.vote_cores.clone(),
            chain_id: genesis.chain_id,
            me,
            quorum: genesis.registry.quorum(),
            max_age_ms: cfg.lock_timeout_ms.max(1_000) * 2,
        },
        genesis.registry.clone(),
        core.clone(),
    );
    let after = AfterVerify {
        me,
        core: core.clone(),
        wallet_stats: wallet_stats.clone(),
    };
    let verifier = start_verifier(cfg.verify_threads, genesis.chain_id, after);
    let checks = PeerCheck::start(genesis.chain_id, genesis.registry.clone(), core.clone());
    Wiring {
        id: Arc::new(Identity {
            chain_id: genesis.chain_id,
            key,
            me,
        }),
        stats,
        stopping: Arc::new(AtomicBool::new(false)),
        core: core.clone(),
        wallet_stats,
        net: Arc::new(net),
        origin_window: cfg.origin_window,
        ingest: Ingest {
            chain_id: genesis.chain_id,
            core: core.clone(),
            verifier: Arc::new(verifier),
            votes: Arc::new(votes),
            checks: Arc::new(checks),
            gate,
            clock,
        },
    }
}

/// The fast path once its receiver is attached: the sender and counters for
/// the core thread, the repair pieces for the reliable path.
#[derive(Default)]
struct FastParts {
    sender: Option<FastPathSender>,
    stats: Option<Arc<FastPathStats>>,
    repair: Option<FastRepair>,
}

fn start_fast_receiver(fast: Option<FastPath>, w: &Wiring) -> FastParts {
    let Some(f) = fast else {
        return FastParts::default();
    };
    let sink = Arc::new(Sink {
        ingest: w.ingest.clone(),
        net: w.net.clone(),
        stats: w.stats.clone(),
    });
    f.attach(sink.clone());
    let repair = FastRepair {
        ring: f.sender.ring.clone(),
        receiver: f.receiver.clone(),
        sink,
        budget: Default::default(),
    };
    FastParts {
        sender: Some(f.sender),
        stats: Some(f.stats),
        repair: Some(repair),
    }
}

fn core_ctx(
    w: &Wiring,
    genesis: &Genesis,
    fast_stats: Option<Arc<FastPathStats>>,
    metrics: Arc<NodeMetrics>,
) -> CoreCtx {
    CoreCtx {
        me: w.id.me,
        clock: w.ingest.clock,
        net: w.net.clone(),
        peer_count: genesis.registry.len().saturating_sub(1),
        stats: w.stats.clone(),
        stopping: w.stopping.clone(),
        wallet_stats: w.wallet_stats.clone(),
        votes: w.ingest.votes.clone(),
        fast_stats,
        metrics,
    }
}

/// The network tasks: the pool inbox, the listener.
fn spawn_network(
    w: &Wiring,
    inbox: Inbox,
    fast: Option<FastRepair>,
    listener: TcpListener,
    state: crate::storage::lmdb::StateReader,
) -> Arc<WalletCtx> {
    let peers = Arc::new(PeerCtx {
        ingest: w.ingest.clone(),
        core: w.core.clone(),
        net: w.net.clone(),
        stats: w.stats.clone(),
        fast,
    });
    spawn_pool_inbox(peers, inbox);
    let wallets = Arc::new(WalletCtx::new(
        w.id.me,
        w.core.clone(),
        w.ingest.verifier.clone(),
        w.stats.clone(),
        w.wallet_stats.clone(),
        w.origin_window,
        state,
    ));
    let listen = Arc::new(ListenCtx {
        id: w.id.clone(),
        stats: w.stats.clone(),
        stopping: w.stopping.clone(),
        wallets: wallets.clone(),
    });
    tokio::spawn(accept_loop(listen, listener));
    wallets
}
