//! The masternode runtime: drives the pure [`Engine`] from a dedicated core
//! thread, persists each round in one LMDB transaction before releasing its
//! messages, and carries messages over persistent, authenticated TCP
//! connections (one outbound link per peer masternode for sending; inbound
//! connections for receiving and for wallets).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel as cb;
use ed25519_dalek::SigningKey;
use time_net::{FrameError, FrameReader, FrameWriter, MAX_FRAME_LEN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::node::config::NodeConfig;
use crate::node::fastpath::{
    FastPath, FastPathMode, FastPathReceiver, FastPathSender, FastPathSink, FastPathStats,
    RepairRing, VOTES_PER_DATAGRAM,
};
use crate::node::genesis_file::GenesisFile;
use crate::node::keyfile::KeyFile;
use crate::node::peer_net::{priority_of, PeerNet};
use crate::node::verifier::Verifier;
use crate::node::vote_threads::{VoteThreadConfig, VoteThreads};
use crate::protocol::engine::{EngineConfig, Event};
use crate::protocol::message::{
    sign_handshake, verify_handshake, Hello, Message, NodeStatus, Role, HANDSHAKE_FRAME_CAP,
    PROTOCOL_VERSION,
};
use crate::protocol::registry::Registry;
use crate::protocol::tally::TallyEvent;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, ChainId, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::validation::{RejectCode, TxError};
use crate::storage::{LmdbStore, Store, StoreError};
use time_net::pool::{Pool, PoolConfig};
use time_net::priority::Priority;
use timecoin_core::masternode::{Dest, Masternode, MasternodeConfig, Transmit};

/// Frames queued per peer link before new ones are dropped (and counted).
const PEER_QUEUE: usize = 1 << 16;
/// Inputs queued for the core thread.
const CORE_QUEUE: usize = 1 << 18;
/// Most inputs the core handles before it commits and sends a round.
const MAX_ROUND_INPUTS: usize = 8_192;
const TICK: Duration = Duration::from_millis(10);

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
    #[error("genesis is for network {genesis:?} but the node is configured for {configured:?}")]
    NetworkMismatch { genesis: String, configured: String },
    #[error("peer pool: {0}")]
    Pool(String),
    #[error("fast path: {0}")]
    FastPath(crate::node::fastpath::FastPathError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Work for the core thread.
enum CoreInput {
    Tx {
        tx: Transaction,
        /// Stateless checks and signatures already passed.
        prechecked: bool,
    },
    /// From a wallet session, which hears the outcome.
    WalletTx {
        tx: Transaction,
        to: mpsc::Sender<Bytes>,
    },
    /// Outcomes from the vote threads.
    Tally(Vec<TallyEvent>),
    Proof {
        tx: Transaction,
        proof: TimeProof,
    },
    ProofRequest {
        txid: Txid,
        from: PublicKey,
    },
    /// Catch-up requests and pages from a peer masternode.
    Peer {
        from: PublicKey,
        msg: Message,
    },
    UtxoQuery(Vec<OutPoint>, oneshot::Sender<Message>),
    AddressQuery(Address, oneshot::Sender<Message>),
    Status(oneshot::Sender<Message>),
    Shutdown,
}

/// Counters of the transport layer.
#[derive(Default, Debug)]
pub struct NetStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub malformed_frames: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub peer_queue_drops: AtomicU64,
    pub core_queue_drops: AtomicU64,
    pub peers_connected: AtomicU32,
}

/// Where wallet notifications go.
#[derive(Default)]
struct Router {
    by_txid: HashMap<Txid, Vec<mpsc::Sender<Bytes>>>,
    by_address: HashMap<Address, Vec<(u64, mpsc::Sender<Bytes>)>>,
}

fn encode(m: &Message) -> Bytes {
    Bytes::from(m.to_bytes())
}

struct Shared {
    chain_id: ChainId,
    key: SigningKey,
    me: PublicKey,
    registry: Registry,
    core: cb::Sender<CoreInput>,
    router: Mutex<Router>,
    net: PeerNet,
    peer_count: usize,
    stats: NetStats,
    stopping: AtomicBool,
    next_session: AtomicU64,
    /// Peers whose plain outbound link is up (links transport only).
    links_up: Mutex<std::collections::HashSet<PublicKey>>,
    verifier: std::sync::OnceLock<Verifier<Source>>,
    /// Fast-path pieces the network tasks need (repairs in and out).
    fast_ring: Option<Arc<Mutex<RepairRing>>>,
    fast_rx: Option<Arc<Mutex<FastPathReceiver>>>,
    fast_stats: Option<Arc<FastPathStats>>,
    weak: std::sync::OnceLock<std::sync::Weak<Shared>>,
    votes: std::sync::OnceLock<VoteThreads>,
}

/// Delivers fast-path messages into the node.
struct Sink(std::sync::Weak<Shared>);

impl FastPathSink for Sink {
    fn deliver(&self, _from: PublicKey, msg: Message) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        match msg {
            Message::TransactionBroadcast(tx) => {
                if let Some(v) = shared.verifier.get() {
                    let _ = v.submit(tx, Source::Peer);
                }
            }
            Message::VoteBatch(b) => {
                if let Some(v) = shared.votes.get() {
                    v.submit(b);
                }
            }
            _ => {}
        }
    }

    fn request_repair(&self, to: PublicKey, first: u64, last: u64) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        shared.net.send(
            &to,
            Priority::High,
            encode(&Message::RepairRequest { first, last }),
            &shared.stats.peer_queue_drops,
        );
    }
}

/// Who sent a transaction that is being verified.
enum Source {
    Peer,
    Wallet(mpsc::Sender<Bytes>),
}

/// Where a verified transaction goes next (runs on a verifier thread).
fn after_verify(
    shared: &Shared,
    tx: Transaction,
    txid: Txid,
    verdict: Result<(), TxError>,
    src: Source,
) {
    match (src, verdict) {
        (Source::Peer, v) => {
            // An invalid relayed transaction still goes to the engine, which
            // re-checks it and votes reject with the reason.
            shared.to_core(CoreInput::Tx {
                tx,
                prechecked: v.is_ok(),
            });
        }
        (Source::Wallet(to), Err(e)) => {
            let _ = to.try_send(encode(&Message::TransactionRejected {
                txid,
                reason: e.code(),
                detail: e.to_string(),
                rejecters: vec![(shared.me, e.code())],
            }));
        }
        (Source::Wallet(to), Ok(())) => {
            shared
                .router
                .lock()
                .expect("router lock")
                .by_txid
                .entry(txid)
                .or_default()
                .push(to.clone());
            if !shared.to_core(CoreInput::WalletTx { tx, to: to.clone() }) {
                let _ = to.try_send(encode(&Message::TransactionRejected {
                    txid,
                    reason: RejectCode::MempoolFull,
                    detail: "masternode is overloaded; retry".into(),
                    rejecters: vec![(shared.me, RejectCode::MempoolFull)],
                }));
            }
        }
    }
}

impl Shared {
    /// A lock broadcast or vote batch from a peer, by TCP or fast path:
    /// transactions to the verifier pool, votes to the vote threads, both
    /// off the core thread. Returns the message if it is neither.
    fn ingest(&self, msg: Message) -> Option<Message> {
        match msg {
            Message::TransactionBroadcast(tx) => {
                if let Some(v) = self.verifier.get() {
                    let _ = v.submit(tx, Source::Peer);
                }
                None
            }
            Message::VoteBatch(b) => {
                if let Some(v) = self.votes.get() {
                    v.submit(b);
                }
                None
            }
            other => Some(other),
        }
    }

    fn self_weak(&self) -> std::sync::Weak<Shared> {
        self.weak.get().cloned().unwrap_or_default()
    }

    fn to_core(&self, input: CoreInput) -> bool {
        match self.core.try_send(input) {
            Ok(()) => true,
            Err(_) => {
                self.stats.core_queue_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// A running masternode.
pub struct Node {
    pub local_addr: SocketAddr,
    shared: Arc<Shared>,
    core: Option<std::thread::JoinHandle<Result<(), StoreError>>>,
}

impl Node {
    /// Opens storage, binds the listener and starts every task. Call from
    /// inside a tokio runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let gfile = GenesisFile::load(&cfg.genesis)?;
        if !gfile.network.eq_ignore_ascii_case(cfg.network.name()) {
            return Err(NodeError::NetworkMismatch {
                genesis: gfile.network.clone(),
                configured: cfg.network.name().into(),
            });
        }
        let genesis = gfile.to_genesis()?;
        let key = KeyFile::load(&cfg.key_file)?;
        let me = PublicKey::from_signing(&key);
        if genesis.registry.get(&me).is_none() {
            warn!(key = %me, "this key is not a registered masternode: its votes will not count");
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| NodeError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        // One process per data directory: two processes sharing a vote log
        // could sign conflicting votes.
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
        let mut store = LmdbStore::open(
            &cfg.data_dir.join("db"),
            crate::storage::lmdb::LmdbOptions {
                no_sync: cfg.no_sync,
                ..Default::default()
            },
        )?;
        store.init(&genesis)?;
        let snap = store.load()?;
        info!(
            utxos = snap.utxos.len(),
            pending = snap.pending_transactions.len(),
            finalized = snap.finalized.len(),
            own_vote_batches = snap.own_votes.len(),
            "state loaded"
        );
        let mut ecfg = EngineConfig::new(genesis.chain_id);
        ecfg.lock_timeout_ms = cfg.lock_timeout_ms;
        ecfg.mempool_limit = cfg.mempool_limit;
        // Votes are verified and tallied on the vote threads.
        ecfg.external_tally = true;
        if cfg.fast_path != FastPathMode::Off {
            // One vote batch per datagram item.
            ecfg.max_vote_batch_items = VOTES_PER_DATAGRAM;
        }
        let masternode = Masternode::new(
            MasternodeConfig::new(ecfg),
            key.clone(),
            genesis.registry.clone(),
            snap,
            0,
        );

        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| NodeError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: cfg.listen,
            source,
        })?;

        let mut fast = FastPath::start(
            &cfg.fast_path,
            cfg.io_backend,
            local_addr,
            key.clone(),
            &genesis.registry,
        )
        .map_err(NodeError::FastPath)?;
        let (core_tx, core_rx) = cb::bounded(CORE_QUEUE);
        let mut links = HashMap::new();
        let mut peer_rxs = Vec::new();
        let mut pool_inbox = None;
        let net = match cfg.peer_transport.pool_transport() {
            Some(transport) => {
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
                let pcfg = PoolConfig::new(
                    transport,
                    cfg.peer_transport.peer_addr(local_addr),
                    key.to_bytes(),
                    table,
                );
                let (pool, inbox) = Pool::start(pcfg)
                    .await
                    .map_err(|e| NodeError::Pool(e.to_string()))?;
                info!(transport = ?transport, addr = %pool.local_addr(), "peer pool listening");
                pool_inbox = Some(inbox);
                PeerNet::Pool(pool)
            }
            None => {
                for m in genesis.registry.masternodes() {
                    if m.key == me {
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(PEER_QUEUE);
                    links.insert(m.key, tx);
                    peer_rxs.push((m.clone(), rx));
                }
                PeerNet::Links(links)
            }
        };
        let peer_count = genesis.registry.len().saturating_sub(1);
        let shared = Arc::new(Shared {
            chain_id: genesis.chain_id,
            key,
            me,
            registry: genesis.registry.clone(),
            core: core_tx,
            router: Mutex::new(Router::default()),
            net,
            peer_count,
            stats: NetStats::default(),
            stopping: AtomicBool::new(false),
            next_session: AtomicU64::new(1),
            links_up: Mutex::new(std::collections::HashSet::new()),
            verifier: std::sync::OnceLock::new(),
            fast_ring: fast.as_ref().map(|f| f.sender.ring.clone()),
            fast_rx: fast.as_ref().map(|f| f.receiver.clone()),
            fast_stats: fast.as_ref().map(|f| f.stats.clone()),
            weak: std::sync::OnceLock::new(),
            votes: std::sync::OnceLock::new(),
        });
        let core_in = shared.core.clone();
        let dropped = Arc::downgrade(&shared);
        let votes = VoteThreads::start(
            VoteThreadConfig {
                threads: cfg.vote_threads,
                cores: cfg.vote_cores.clone(),
                chain_id: genesis.chain_id,
                me,
                quorum: genesis.registry.quorum(),
                max_age_ms: cfg.lock_timeout_ms.max(1_000) * 2,
            },
            genesis.registry.clone(),
            move |events| {
                // Outcomes must reach the core: block rather than drop.
                if core_in.send(CoreInput::Tally(events)).is_err() {
                    if let Some(s) = dropped.upgrade() {
                        s.stats.core_queue_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
            },
        );
        let _ = shared.votes.set(votes);
        let _ = shared.weak.set(Arc::downgrade(&shared));
        let fast_sender = match fast.as_mut() {
            Some(f) => {
                f.spawn_receiver(Arc::new(Sink(Arc::downgrade(&shared))));
                fast.map(|f| f.sender)
            }
            None => None,
        };
        let weak = Arc::downgrade(&shared);
        let verifier = Verifier::start(
            cfg.verify_threads,
            CORE_QUEUE,
            genesis.chain_id,
            crate::protocol::validation::Limits::default(),
            move |tx, txid, verdict, src| {
                if let Some(s) = weak.upgrade() {
                    after_verify(&s, tx, txid, verdict, src);
                }
            },
        );
        let _ = shared.verifier.set(verifier);
        let core_shared = shared.clone();
        let round_window = Duration::from_micros(cfg.round_window_us);
        let core = std::thread::Builder::new()
            .name("core".into())
            .spawn(move || {
                let _lock = lock; // held for the life of the core
                core_loop(
                    masternode,
                    store,
                    core_rx,
                    core_shared,
                    fast_sender,
                    round_window,
                )
            })
            .expect("spawn core thread");
        for (peer, rx) in peer_rxs {
            tokio::spawn(peer_link(
                shared.clone(),
                peer.key,
                peer.address.clone(),
                rx,
            ));
        }
        if let Some(mut inbox) = pool_inbox {
            let s = shared.clone();
            tokio::spawn(async move {
                while let Some((peer, _prio, frame)) = inbox.recv().await {
                    s.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    let peer = PublicKey(peer);
                    let r = match Message::decode(&frame) {
                        Ok(m) => handle_peer_message(&s, peer, m),
                        Err(e) => Err(LinkError::Decode(e)),
                    };
                    if let Err(e) = r {
                        // The pool authenticated the peer; a bad message is
                        // counted and dropped, the connection stays.
                        s.stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
                        warn!(%peer, "bad message from peer: {e}");
                    }
                }
            });
        }
        tokio::spawn(accept_loop(shared.clone(), listener));
        info!(%local_addr, key = %me, chain = genesis.chain_id, "masternode listening");
        Ok(Node {
            local_addr,
            shared,
            core: Some(core),
        })
    }

    pub fn stats(&self) -> &NetStats {
        &self.shared.stats
    }

    /// Stops the core after its current round (which commits) and waits.
    pub fn shutdown(mut self) -> Result<(), StoreError> {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = self.shared.core.send(CoreInput::Shutdown);
        match self.core.take() {
            Some(h) => h.join().unwrap_or(Ok(())),
            None => Ok(()),
        }
    }

    /// True once the core thread ended (a storage failure stops it).
    pub fn core_finished(&self) -> bool {
        self.core.as_ref().is_none_or(|h| h.is_finished())
    }
}

fn core_loop(
    mut mn: Masternode,
    mut store: LmdbStore,
    rx: cb::Receiver<CoreInput>,
    shared: Arc<Shared>,
    mut fast: Option<FastPathSender>,
    round_window: Duration,
) -> Result<(), StoreError> {
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut last_log = 0;
    let mut last_announce = 0;
    let mut peers_up = std::collections::HashSet::new();
    let mut inputs = Vec::with_capacity(MAX_ROUND_INPUTS);
    loop {
        inputs.clear();
        collect_round(&rx, &mut inputs, round_window)?;
        let now = now_ms();
        let mut stop = false;
        for input in inputs.drain(..) {
            stop |= handle_input(&mut mn, &store, &shared, now, input)?;
        }
        if now >= mn.poll_timeout() {
            track_peers(&mut mn, &shared, now, &mut peers_up);
            mn.handle_timeout(now, &store)?;
        }
        let round = mn.end_round(now);
        if !round.writes.is_empty() {
            // Durable before anything of this round leaves the node. A
            // failed commit stops the core: sending votes we could not
            // persist would break the no-conflicting-votes guarantee.
            if let Err(e) = store.apply(&round.writes) {
                error!("storage commit failed, stopping the masternode core: {e}");
                shared.stopping.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        dispatch(&shared, round.transmits, fast.as_mut());
        for ev in round.events {
            route_event(&shared, ev);
        }
        if let Some(f) = fast.as_mut() {
            f.flush();
            f.heartbeat(Duration::from_millis(20));
            // Tell peers where our datagram stream is, over the reliable
            // path, so a receiver that missed its start can still repair.
            if now.saturating_sub(last_announce) >= 250 {
                last_announce = now;
                broadcast(
                    &shared,
                    Priority::Normal,
                    encode(&Message::FastPathSeq { next: f.next_seq() }),
                );
            }
        }
        if now.saturating_sub(last_log) >= 10_000 {
            last_log = now;
            log_status(&mn, &shared);
        }
        if stop {
            info!("core stopped");
            return Ok(());
        }
    }
}

/// Waits for the first input (or a tick), then holds the round open up to
/// `round_window`: a round costs one vote signature, one datagram signature
/// and one fsync whatever its size, so arrivals close together share them.
fn collect_round(
    rx: &cb::Receiver<CoreInput>,
    inputs: &mut Vec<CoreInput>,
    round_window: Duration,
) -> Result<(), StoreError> {
    match rx.recv_timeout(TICK) {
        Ok(i) => inputs.push(i),
        Err(cb::RecvTimeoutError::Timeout) => return Ok(()),
        Err(cb::RecvTimeoutError::Disconnected) => {
            inputs.push(CoreInput::Shutdown);
            return Ok(());
        }
    }
    let opened = Instant::now();
    while inputs.len() < MAX_ROUND_INPUTS {
        match rx.try_recv() {
            Ok(i) => inputs.push(i),
            Err(_) => {
                let left = round_window.saturating_sub(opened.elapsed());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

/// One input into the state machine. Returns true on shutdown.
fn handle_input(
    mn: &mut Masternode,
    store: &LmdbStore,
    shared: &Shared,
    now: u64,
    input: CoreInput,
) -> Result<bool, StoreError> {
    match input {
        CoreInput::Tx { tx, prechecked, .. } => mn.handle_peer_transaction(now, tx, prechecked),
        CoreInput::Tally(events) => mn.handle_tally_events(now, events),
        CoreInput::Proof { tx, proof } => mn.handle_proof(now, tx, proof),
        CoreInput::ProofRequest { txid, from } => {
            mn.handle_peer_message(now, from, Message::ProofRequest(txid), store)?
        }
        CoreInput::Peer { from, msg } => mn.handle_peer_message(now, from, msg, store)?,
        CoreInput::WalletTx { tx, to } => {
            let txid = tx.txid();
            if let Some(answer) = mn.handle_wallet_transaction(now, tx, true, store)? {
                if !matches!(answer, Message::TransactionAccepted(_)) {
                    // Settled: no event will come for it, so the session's
                    // registration would never be removed.
                    shared
                        .router
                        .lock()
                        .expect("router lock")
                        .by_txid
                        .remove(&txid);
                }
                let _ = to.try_send(encode(&answer));
            }
        }
        CoreInput::UtxoQuery(ops, reply) => {
            let v = ops
                .into_iter()
                .map(|op| (op, mn.engine().utxo(&op).copied()))
                .collect();
            let _ = reply.send(Message::UtxoStateResponse(v));
        }
        CoreInput::AddressQuery(addr, reply) => {
            let v = mn
                .engine()
                .utxos_of(&addr)
                .into_iter()
                .take(crate::protocol::message::MAX_QUERY_OUTPOINTS)
                .map(|(op, e)| (op, Some(e)))
                .collect();
            let _ = reply.send(Message::UtxoStateResponse(v));
        }
        CoreInput::Status(reply) => {
            let m = mn.metrics();
            let _ = reply.send(Message::Status(NodeStatus {
                public_key: shared.me,
                peers_connected: shared
                    .net
                    .connected(shared.stats.peers_connected.load(Ordering::Relaxed)),
                peers_total: shared.peer_count as u32,
                pending: mn.engine().pending_count() as u32,
                finalized: m.tx_finalized,
                rejected: m.tx_rejected,
                catching_up: mn.is_catching_up(),
            }));
        }
        CoreInput::Shutdown => return Ok(true),
    }
    Ok(false)
}

/// Tells the state machine which peer connections came up or went down.
fn track_peers(
    mn: &mut Masternode,
    shared: &Shared,
    now: u64,
    up: &mut std::collections::HashSet<PublicKey>,
) {
    let current: std::collections::HashSet<PublicKey> = match &shared.net {
        PeerNet::Pool(p) => p.connected_peers().into_iter().map(PublicKey).collect(),
        PeerNet::Links(_) => shared.links_up.lock().expect("links lock").clone(),
    };
    for p in current.difference(up) {
        mn.handle_peer_up(now, *p);
    }
    for p in up.difference(&current) {
        mn.handle_peer_down(now, p);
    }
    *up = current;
}

fn log_status(mn: &Masternode, shared: &Shared) {
    let m = mn.metrics();
    let st = mn.stats();
    info!(
        finalized = m.tx_finalized,
        rejected = m.tx_rejected,
        pending = mn.engine().pending_count(),
        awaiting = mn.awaiting(),
        catching_up = mn.is_catching_up(),
        reannounced = st.reannounced,
        catchup_pages = st.catchup.pages_received,
        catchup_proofs = st.catchup.proofs_requested,
        votes_in = m.votes_received,
        peers = shared
            .net
            .connected(shared.stats.peers_connected.load(Ordering::Relaxed)),
        malformed = shared.stats.malformed_frames.load(Ordering::Relaxed),
        drops = shared.stats.peer_queue_drops.load(Ordering::Relaxed)
            + shared.stats.core_queue_drops.load(Ordering::Relaxed),
        "status"
    );
    if let Some(fs) = &shared.fast_stats {
        info!(
            sent = fs.datagrams_sent.load(Ordering::Relaxed),
            received = fs.datagrams_received.load(Ordering::Relaxed),
            bad = fs.bad_datagrams.load(Ordering::Relaxed),
            repair_requests = fs.repair_requests_sent.load(Ordering::Relaxed),
            repaired = fs.repaired.load(Ordering::Relaxed),
            lost = fs.lost_seqs.load(Ordering::Relaxed),
            "fast path"
        );
    }
}

fn broadcast(shared: &Shared, prio: Priority, frame: Bytes) {
    shared
        .net
        .broadcast(prio, frame, &shared.stats.peer_queue_drops);
}

/// Sends a round's messages. Lock broadcasts and votes to all peers take the
/// fast path when they fit a datagram; everything else, and everything when
/// the fast path is off, goes over the reliable path in its priority class.
fn dispatch(shared: &Shared, transmits: Vec<Transmit>, mut fast: Option<&mut FastPathSender>) {
    for Transmit { dest, msg } in transmits {
        let prio = priority_of(&msg);
        if let (Dest::AllPeers, Message::VoteBatch(b)) = (&dest, &msg) {
            if let Some(v) = shared.votes.get() {
                v.own(b.clone());
            }
        }
        let frame = encode(&msg);
        match dest {
            Dest::Peer(p) => {
                shared
                    .net
                    .send(&p, prio, frame, &shared.stats.peer_queue_drops);
            }
            Dest::AllPeers => match (&mut fast, &msg) {
                (Some(f), Message::TransactionBroadcast(_) | Message::VoteBatch(_))
                    if FastPathSender::fits(frame.len()) =>
                {
                    f.push(&frame)
                }
                _ => broadcast(shared, prio, frame),
            },
        }
    }
}

fn route_event(shared: &Shared, ev: Event) {
    let mut router = shared.router.lock().expect("router lock");
    match ev {
        Event::Accepted { txid } => {
            if let Some(subs) = router.by_txid.get(&txid) {
                let f = encode(&Message::TransactionAccepted(txid));
                for s in subs {
                    let _ = s.try_send(f.clone());
                }
            }
        }
        Event::Finalized {
            txid,
            proof,
            tx,
            addresses,
            spent,
        } => {
            let f = encode(&Message::TimeProof {
                tx: (*tx).clone(),
                proof: (*proof).clone(),
            });
            if let Some(subs) = router.by_txid.remove(&txid) {
                for s in subs {
                    let _ = s.try_send(f.clone());
                }
            }
            if router.by_address.is_empty() {
                return;
            }
            // Subscribers of an address hear the transaction, then the
            // state of each of their outputs it spent or created.
            let note = encode(&Message::NewTransactionNotification {
                txid,
                tx: (*tx).clone(),
            });
            let created = tx.outputs.iter().enumerate().map(|(v, o)| {
                (
                    OutPoint {
                        txid,
                        vout: v as u32,
                    },
                    crate::protocol::utxo::UtxoEntry {
                        output: *o,
                        state: crate::protocol::utxo::UtxoState::Unspent,
                    },
                )
            });
            let changes: Vec<(OutPoint, crate::protocol::utxo::UtxoEntry)> =
                spent.into_iter().chain(created).collect();
            for a in &addresses {
                if let Some(subs) = router.by_address.get_mut(a) {
                    subs.retain(|(_, s)| !s.is_closed());
                    let mine: Vec<Bytes> = changes
                        .iter()
                        .filter(|(_, e)| e.output.address == *a)
                        .map(|(op, e)| {
                            encode(&Message::UtxoStateNotification {
                                outpoint: *op,
                                entry: *e,
                            })
                        })
                        .collect();
                    for (_, s) in subs.iter() {
                        let _ = s.try_send(note.clone());
                        for m in &mine {
                            let _ = s.try_send(m.clone());
                        }
                    }
                }
            }
        }
        Event::Rejected {
            txid,
            reason,
            detail,
            rejecters,
        } => {
            if let Some(subs) = router.by_txid.remove(&txid) {
                let f = encode(&Message::TransactionRejected {
                    txid,
                    reason,
                    detail,
                    rejecters,
                });
                for s in subs {
                    let _ = s.try_send(f.clone());
                }
            }
        }
        Event::Equivocation { voter, txid } => {
            warn!(%voter, %txid, "masternode equivocated (two decisions on one transaction)");
        }
        Event::ConflictingProofs(rec) => {
            error!(
                ?rec,
                "conflicting TimeProofs: Byzantine weight at or above 1/3?"
            );
        }
    }
}

/// Dials one peer for ever (with backoff and jitter), authenticates, and
/// writes its queue.
async fn peer_link(
    shared: Arc<Shared>,
    peer: PublicKey,
    address: String,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut pending: Option<Bytes> = None;
    while !shared.stopping.load(Ordering::Relaxed) {
        match dial(&shared, &peer, &address).await {
            Ok(mut w) => {
                backoff = Duration::from_millis(50);
                shared.stats.peers_connected.fetch_add(1, Ordering::Relaxed);
                shared.links_up.lock().expect("links lock").insert(peer);
                info!(%peer, %address, "peer link up");
                let r = write_queue(&shared, &mut w, &mut rx, &mut pending).await;
                shared.links_up.lock().expect("links lock").remove(&peer);
                shared.stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(()) => return, // queue closed: node stopping
                    Err(e) => info!(%peer, "peer link down: {e}"),
                }
            }
            Err(e) => debug!(%peer, %address, "dial failed: {e}"),
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("decode: {0}")]
    Decode(#[from] time_net::DecodeError),
    #[error("timed out")]
    Timeout,
}

async fn dial(
    shared: &Shared,
    peer: &PublicKey,
    address: &str,
) -> Result<FrameWriter<tokio::net::tcp::OwnedWriteHalf>, LinkError> {
    let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(address))
        .await
        .map_err(|_| LinkError::Timeout)??;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_CAP);
    let mut writer = FrameWriter::new(w);
    let nonce: [u8; 32] = rand::random();
    writer
        .send(&Message::Hello(hello(shared, Role::Masternode, nonce)).to_bytes())
        .await?;
    let fut = async {
        let their = match Message::decode(reader.read_frame().await?)? {
            Message::Hello(h) => h,
            _ => return Err(LinkError::Handshake("expected hello")),
        };
        check_hello(shared, &their)?;
        if their.public_key != *peer {
            return Err(LinkError::Handshake("peer answered with another key"));
        }
        let sig = match Message::decode(reader.read_frame().await?)? {
            Message::HelloAuth(s) => s,
            _ => return Err(LinkError::Handshake("expected hello-auth")),
        };
        if !verify_handshake(shared.chain_id, &nonce, peer, &sig) {
            return Err(LinkError::Handshake("peer's key proof does not verify"));
        }
        Ok(their.nonce)
    };
    let their_nonce = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| LinkError::Timeout)??;
    writer
        .send(
            &Message::HelloAuth(sign_handshake(&shared.key, shared.chain_id, &their_nonce))
                .to_bytes(),
        )
        .await?;
    // The peer never writes on this connection after the handshake; keep
    // the read half alive so the socket stays open, and notice a close.
    tokio::spawn(async move {
        let mut r = reader;
        let _ = r.read_frame().await;
    });
    Ok(writer)
}

fn hello(shared: &Shared, role: Role, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id: shared.chain_id,
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: shared.me,
        nonce,
    }
}

fn check_hello(shared: &Shared, h: &Hello) -> Result<(), LinkError> {
    if h.chain_id != shared.chain_id {
        return Err(LinkError::Handshake("wrong chain id"));
    }
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(LinkError::Handshake("unsupported protocol version"));
    }
    Ok(())
}

async fn write_queue<W: tokio::io::AsyncWrite + Unpin>(
    shared: &Shared,
    w: &mut FrameWriter<W>,
    rx: &mut mpsc::Receiver<Bytes>,
    pending: &mut Option<Bytes>,
) -> Result<(), LinkError> {
    loop {
        let first = match pending.take() {
            Some(f) => f,
            None => match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                // Idle: a ping keeps the link checked.
                Err(_) => encode(&Message::Ping(0)),
            },
        };
        *pending = Some(first.clone());
        w.push(&first)?;
        let mut n = 1;
        // Batch whatever else is queued into the same write.
        while w.buffered() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    w.push(&f)?;
                    n += 1;
                }
                Err(_) => break,
            }
        }
        w.flush().await?;
        *pending = None;
        shared.stats.frames_out.fetch_add(n, Ordering::Relaxed);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let s = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(s.clone(), stream).await {
                        match e {
                            LinkError::Frame(FrameError::Closed) => debug!(%addr, "closed"),
                            LinkError::Handshake(_) | LinkError::Timeout => {
                                s.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                warn!(%addr, "connection refused: {e}");
                            }
                            _ => {
                                s.stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
                                warn!(%addr, "connection closed: {e}");
                            }
                        }
                    }
                });
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_CAP);
    let mut writer = FrameWriter::new(w);
    let their = tokio::time::timeout(Duration::from_secs(5), reader.read_frame())
        .await
        .map_err(|_| LinkError::Timeout)??;
    let their = match Message::decode(their)? {
        Message::Hello(h) => h,
        _ => return Err(LinkError::Handshake("expected hello")),
    };
    check_hello(&shared, &their)?;
    let nonce: [u8; 32] = rand::random();
    writer.push(&Message::Hello(hello(&shared, Role::Masternode, nonce)).to_bytes())?;
    writer.push(
        &Message::HelloAuth(sign_handshake(&shared.key, shared.chain_id, &their.nonce)).to_bytes(),
    )?;
    writer.flush().await?;
    match their.role {
        Role::Masternode => {
            if shared.registry.get(&their.public_key).is_none() || their.public_key == shared.me {
                return Err(LinkError::Handshake("not a registered peer masternode"));
            }
            let sig = tokio::time::timeout(Duration::from_secs(5), reader.read_frame())
                .await
                .map_err(|_| LinkError::Timeout)??;
            match Message::decode(sig)? {
                Message::HelloAuth(s)
                    if verify_handshake(shared.chain_id, &nonce, &their.public_key, &s) => {}
                _ => return Err(LinkError::Handshake("masternode key proof does not verify")),
            }
            reader.set_cap(MAX_FRAME_LEN);
            serve_peer(&shared, their.public_key, reader).await
        }
        Role::Wallet => {
            reader.set_cap(2 * 1024 * 1024);
            serve_wallet(shared, reader, writer).await
        }
    }
}

async fn serve_peer(
    shared: &Shared,
    peer: PublicKey,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
) -> Result<(), LinkError> {
    loop {
        let frame = reader.read_frame().await?;
        shared.stats.frames_in.fetch_add(1, Ordering::Relaxed);
        handle_peer_message(shared, peer, Message::decode(frame)?)?;
    }
}

/// One message from an authenticated peer masternode, from whichever transport.
fn handle_peer_message(shared: &Shared, peer: PublicKey, msg: Message) -> Result<(), LinkError> {
    let Some(msg) = shared.ingest(msg) else {
        return Ok(());
    };
    match msg {
        Message::TimeProof { tx, proof } => {
            shared.to_core(CoreInput::Proof { tx, proof });
        }
        Message::ProofRequest(txid) => {
            shared.to_core(CoreInput::ProofRequest { txid, from: peer });
        }
        Message::RepairRequest { first, last } => {
            let Some(ring) = &shared.fast_ring else {
                return Ok(());
            };
            // Bounded: at most 1024 datagrams per request.
            let last = last.min(first.saturating_add(1023));
            let found: Vec<Bytes> = {
                let ring = ring.lock().expect("repair ring");
                (first..=last).filter_map(|s| ring.get(s)).collect()
            };
            for d in found {
                shared.net.send(
                    &peer,
                    Priority::High,
                    encode(&Message::Repair(d.to_vec())),
                    &shared.stats.peer_queue_drops,
                );
            }
        }
        Message::Repair(d) => {
            if let Some(rx) = &shared.fast_rx {
                let sink = Sink(shared.self_weak());
                rx.lock()
                    .expect("fast path receiver")
                    .handle(&d, true, &sink);
            }
        }
        Message::FastPathSeq { next } => {
            if let Some(rx) = &shared.fast_rx {
                rx.lock().expect("fast path receiver").announce(&peer, next);
            }
        }
        m @ (Message::FinalityLogRequest { .. } | Message::FinalityLogPage { .. }) => {
            shared.to_core(CoreInput::Peer { from: peer, msg: m });
        }
        Message::Ping(_) | Message::Pong(_) => {}
        Message::Hello(_) => return Err(LinkError::Handshake("second hello")),
        _ => {
            return Err(LinkError::Handshake(
                "message not allowed from a masternode",
            ))
        }
    }
    Ok(())
}

async fn serve_wallet(
    shared: Arc<Shared>,
    mut reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
) -> Result<(), LinkError> {
    let (tx_out, mut rx_out) = mpsc::channel::<Bytes>(4096);
    let session = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let writer_shared = shared.clone();
    let writer_task = tokio::spawn(async move {
        let _ = write_frames(&mut writer, &mut rx_out, &writer_shared.stats).await;
    });
    let result = async {
        loop {
            let frame = reader.read_frame().await?;
            shared.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            match Message::decode(frame)? {
                Message::SubmitTransaction(tx) => {
                    let txid = tx.txid();
                    let queued = match shared.verifier.get() {
                        Some(v) => v.submit(tx, Source::Wallet(tx_out.clone())).is_ok(),
                        None => false,
                    };
                    if !queued {
                        let _ = tx_out
                            .send(encode(&Message::TransactionRejected {
                                txid,
                                reason: RejectCode::MempoolFull,
                                detail: "masternode is overloaded; retry".into(),
                                rejecters: vec![(shared.me, RejectCode::MempoolFull)],
                            }))
                            .await;
                    }
                }
                Message::UtxoStateQuery(ops) => {
                    let (r, w) = oneshot::channel();
                    shared.to_core(CoreInput::UtxoQuery(ops, r));
                    if let Ok(m) = w.await {
                        let _ = tx_out.send(encode(&m)).await;
                    }
                }
                Message::AddressQuery(a) => {
                    let (r, w) = oneshot::channel();
                    shared.to_core(CoreInput::AddressQuery(a, r));
                    if let Ok(m) = w.await {
                        let _ = tx_out.send(encode(&m)).await;
                    }
                }
                Message::StatusQuery => {
                    let (r, w) = oneshot::channel();
                    shared.to_core(CoreInput::Status(r));
                    if let Ok(m) = w.await {
                        let _ = tx_out.send(encode(&m)).await;
                    }
                }
                Message::WalletSubscribe(addrs) => {
                    let mut router = shared.router.lock().expect("router lock");
                    for a in addrs {
                        router
                            .by_address
                            .entry(a)
                            .or_default()
                            .push((session, tx_out.clone()));
                    }
                }
                Message::Ping(n) => {
                    let _ = tx_out.send(encode(&Message::Pong(n))).await;
                }
                _ => return Err(LinkError::Handshake("message not allowed from a wallet")),
            }
        }
    }
    .await;
    {
        let mut router = shared.router.lock().expect("router lock");
        for subs in router.by_address.values_mut() {
            subs.retain(|(s, _)| *s != session);
        }
        router.by_address.retain(|_, v| !v.is_empty());
    }
    drop(tx_out);
    writer_task.abort();
    result
}

async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    rx: &mut mpsc::Receiver<Bytes>,
    stats: &NetStats,
) -> Result<(), LinkError> {
    while let Some(f) = rx.recv().await {
        w.push(&f)?;
        while w.buffered() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => w.push(&f)?,
                Err(_) => break,
            }
        }
        w.flush().await?;
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
