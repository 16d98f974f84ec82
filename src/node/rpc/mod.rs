//! JSON-RPC 2.0 over HTTP (`rpc_listen`, 127.0.0.1 unless configured
//! otherwise), bitcoind style: POST a request object, Basic auth with the
//! cookie in the data directory (`.cookie`, `__cookie__:<secret>`, mode
//! 0600, new at every start).
//!
//! Every method that touches node state goes through the typed wallet API
//! ([`WalletRequest`]/[`WalletReply`]) of an in-process session
//! ([`LocalSession`]), routed to the core thread exactly like a TCP wallet's
//! requests: no second copy of the logic. Methods that need block data are
//! absent until the block layer exists.
//!
//! Push events (finality with its TimeProof, rejection, UTXO changes) are
//! served over a WebSocket at [`ws::WS_PATH`] on the same port, with the
//! same credentials; see [`ws`].
//!
//! Limits: [`MAX_RPC_CONNECTIONS`] connections, [`MAX_BODY`] bytes per
//! request, a token bucket per method class (writes at a quarter of the
//! reads' rate), [`MAX_WAIT`] for a finality wait. Bad input gets a JSON-RPC
//! error with a code, never a panic or a hang.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::node::core_input::Clock;
use crate::node::wallet_server::{LocalSession, WalletCtx};
use crate::protocol::audience::{WalletReply, WalletRequest};
use crate::protocol::types::{Address, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use timecoin_core::masternode::PeerGate;

pub(crate) mod blocks;
pub mod client;
mod node_methods;
pub mod ws;

/// RPC connections served at once; more wait in the accept backlog.
pub const MAX_RPC_CONNECTIONS: usize = 64;
/// Largest request body (a raw transaction is at most 1 MB of hex x2).
pub const MAX_BODY: usize = 2 << 20 | 4096;
/// Kernel send buffer of an RPC connection (Linux doubles it for its own
/// bookkeeping): what a stalled reader can leave queued in the kernel.
pub const RPC_SEND_BUFFER: usize = 256 * 1024;
/// Longest `waittransactionfinality` wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// How long a query waits on the core before it is answered "overloaded".
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// JSON-RPC error codes: the standard ones and bitcoind's.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    /// Over the method's rate limit (also HTTP 429).
    pub const RATE_LIMITED: i64 = -32005;
    /// The node's queues are full; retry.
    pub const OVERLOADED: i64 = -32006;
    /// bitcoind's RPC_INVALID_ADDRESS_OR_KEY.
    pub const INVALID_ADDRESS_OR_KEY: i64 = -5;
    /// bitcoind's RPC_DESERIALIZATION_ERROR.
    pub const DESERIALIZATION: i64 = -22;
    /// bitcoind's RPC_VERIFY_REJECTED.
    pub const REJECTED: i64 = -26;
    /// Waited for finality and it did not come in time.
    pub const TIMEOUT: i64 = -32007;
}

/// A JSON-RPC error.
#[derive(Debug)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

pub(super) fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
        data: None,
    }
}

pub(super) fn bad_params(message: impl Into<String>) -> RpcError {
    err(code::INVALID_PARAMS, message)
}

/// The methods and their classes, for `help` and rate limits.
pub const METHODS: &[(&str, Class, &str)] = &[
    ("help", Class::Read, "List the methods"),
    (
        "getbanlist",
        Class::Read,
        "Banned peer masternodes: key, seconds left, reputation",
    ),
    (
        "setban",
        Class::Write,
        "[key, \"add\"|\"remove\", seconds?]: ban a peer masternode (default 600 s) or lift its ban",
    ),
    (
        "uptime",
        Class::Read,
        "Seconds since the RPC server started",
    ),
    (
        "getblockchaininfo",
        Class::Read,
        "Network, chain height and tip, finalized payments, catching up",
    ),
    (
        "getnetworkinfo",
        Class::Read,
        "Version and peer connections",
    ),
    (
        "getconnectioncount",
        Class::Read,
        "Peer masternodes connected",
    ),
    ("getmempoolinfo", Class::Read, "Undecided transactions held"),
    (
        "masternodestatus",
        Class::Read,
        "This masternode: key, peers, pending, finalized, rejected",
    ),
    (
        "gettxout",
        Class::Read,
        "[txid, vout]: the output and its state, or null",
    ),
    (
        "listunspent",
        Class::Read,
        "[address]: the address's outputs and their states",
    ),
    (
        "getbalance",
        Class::Read,
        "[address]: spendable, locked and pending base units",
    ),
    (
        "getblockcount",
        Class::Read,
        "Height of the last committed block",
    ),
    (
        "getbestblockhash",
        Class::Read,
        "Hash of the last committed block",
    ),
    (
        "getblockhash",
        Class::Read,
        "[height]: the hash of the committed block at that height",
    ),
    (
        "getblock",
        Class::Read,
        "[blockhash, verbosity?]: 0 hex, 1 (default) JSON with txids, 2 JSON with transactions",
    ),
    (
        "getconsensusinfo",
        Class::Read,
        "Block consensus: height, round, leader, sync state, view changes",
    ),
    (
        "sendrawtransaction",
        Class::Write,
        "[hex]: submit a signed transaction; its txid once locked here",
    ),
    (
        "waittransactionfinality",
        Class::Write,
        "[hex, timeout_ms?]: submit (idempotent) and wait for its TimeProof",
    ),
    (
        "getrawtransaction",
        Class::Read,
        "[txid, verbose?]: the transaction's hex (verbose: its fields too)",
    ),
    (
        "gettransaction",
        Class::Read,
        "[txid]: the transaction, its state here (final, pending, rejected) and its TimeProof's summary",
    ),
    (
        "gettimeproof",
        Class::Read,
        "[txid]: the TimeProof (hex) and its voters, to verify against the genesis registry",
    ),
    (
        "getrawmempool",
        Class::Write,
        "[verbose?]: txids pending here (at most 10000 listed)",
    ),
    (
        "getpeerinfo",
        Class::Read,
        "Peer masternodes: address, tier, connected, reputation, ban",
    ),
    (
        "masternodelist",
        Class::Read,
        "Every registered masternode, with the registry's epoch and quorum",
    ),
    (
        "unban",
        Class::Write,
        "[key]: lift a peer masternode's ban",
    ),
    (
        "stop",
        Class::Write,
        "Stop the masternode cleanly (as SIGTERM does)",
    ),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
}

/// A token bucket per method class.
#[derive(Debug)]
struct Buckets {
    rate: [f64; 2],
    tokens: [f64; 2],
    last: Instant,
}

impl Buckets {
    fn new(reads_per_s: u32) -> Self {
        let r = reads_per_s.max(1) as f64;
        let rate = [r, (r / 4.0).max(1.0)];
        Buckets {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn take(&mut self, class: Class) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        for i in 0..2 {
            self.tokens[i] = (self.tokens[i] + dt * self.rate[i]).min(self.rate[i]);
        }
        let i = class as usize;
        if self.tokens[i] >= 1.0 {
            self.tokens[i] -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What the RPC server needs, handed over at startup.
pub(super) struct RpcCtx {
    pub wallets: Arc<WalletCtx>,
    pub network: &'static str,
    pub chain_id: u32,
    pub p2p: SocketAddr,
    started: Instant,
    /// The `Authorization` header value that the cookie gives.
    expected_auth: String,
    rpcauth: Vec<RpcAuth>,
    allow: Vec<AllowIp>,
    buckets: Mutex<Buckets>,
    /// The state machine's peer book (bans), on its clock.
    peers: (PeerGate, Clock),
    /// The block methods' view of the chain.
    pub chain: Option<crate::node::rpc::blocks::ChainCtx>,
    /// The registry TimeProofs are checked against.
    registry: crate::protocol::registry::Registry,
    /// Told when `stop` is called; the node's run loop shuts down.
    stop: Arc<tokio::sync::Notify>,
    /// WebSocket connections open now (at most [`ws::MAX_WS_CONNECTIONS`]).
    ws_slots: Arc<Semaphore>,
}

/// Writes a fresh cookie (`__cookie__:<64 hex>`, mode 0600) into `dir`.
pub fn write_cookie(dir: &Path) -> std::io::Result<(PathBuf, String)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let secret: [u8; 32] = rand::random();
    let cookie = format!("__cookie__:{}", hex::encode(secret));
    let path = dir.join(".cookie");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(cookie.as_bytes())?;
    Ok((path, cookie))
}

/// The `Authorization: Basic ...` value for `user:password`.
pub fn basic_auth(user_pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// One `rpcauth` credential: `user:salt$hmac`, where hmac is
/// HMAC-SHA256 keyed by the salt over the password, in hex (bitcoind's
/// format; `time-cli rpcauth USER` makes one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcAuth {
    pub user: String,
    pub salt: String,
    pub hmac: Vec<u8>,
}

impl std::str::FromStr for RpcAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "rpcauth {s:?}: expected user:salt$hmac (make one with `time-cli rpcauth USER`)"
            )
        };
        let (user, rest) = s.split_once(':').ok_or_else(bad)?;
        let (salt, mac) = rest.split_once('$').ok_or_else(bad)?;
        let hmac = hex::decode(mac).map_err(|_| bad())?;
        if user.is_empty() || salt.is_empty() || hmac.len() != 32 {
            return Err(bad());
        }
        Ok(RpcAuth {
            user: user.into(),
            salt: salt.into(),
            hmac,
        })
    }
}

fn hmac_of(salt: &str, password: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(salt.as_bytes())
        .expect("HMAC takes any key length");
    m.update(password.as_bytes());
    m
}

impl RpcAuth {
    /// A new credential for `user` with `password`, and its config line.
    pub fn generate(user: &str, password: &str) -> (RpcAuth, String) {
        use hmac::Mac;
        let salt = hex::encode(rand::random::<[u8; 16]>());
        let hmac = hmac_of(&salt, password).finalize().into_bytes().to_vec();
        let line = format!("{user}:{salt}${}", hex::encode(&hmac));
        (
            RpcAuth {
                user: user.into(),
                salt,
                hmac,
            },
            line,
        )
    }

    fn accepts(&self, user: &str, password: &str) -> bool {
        use hmac::Mac;
        same(user.as_bytes(), self.user.as_bytes())
            && hmac_of(&self.salt, password)
                .verify_slice(&self.hmac)
                .is_ok()
    }
}

/// Which source addresses may call: loopback always, plus `rpcallowip`
/// entries (an address, or address/prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowIp {
    net: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for AllowIp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("rpcallowip {s:?}: expected an IP address or address/prefix, e.g. 10.0.0.0/8")
        };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: std::net::IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(AllowIp { net, prefix })
    }
}

impl AllowIp {
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let bits = |ip: std::net::IpAddr| -> (u128, u8) {
            match ip {
                std::net::IpAddr::V4(v) => (u32::from(v) as u128, 32),
                std::net::IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(v4) => (u32::from(v4) as u128, 32),
                    None => (u128::from(v), 128),
                },
            }
        };
        let ((n, nw), (a, aw)) = (bits(self.net), bits(ip));
        if nw != aw {
            return false;
        }
        let shift = (nw - self.prefix) as u32;
        shift >= 128 || (n >> shift) == (a >> shift)
    }
}

/// May `ip` call at all?
fn allowed_ip(allow: &[AllowIp], ip: std::net::IpAddr) -> bool {
    let loopback = match ip {
        std::net::IpAddr::V6(v) => {
            v.is_loopback() || v.to_ipv4_mapped().is_some_and(|v| v.is_loopback())
        }
        v4 => v4.is_loopback(),
    };
    loopback || allow.iter().any(|a| a.contains(ip))
}

/// Equal without an early exit (the comparison time does not leak the prefix).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the RPC server is told about the node it serves.
pub(super) struct RpcNode {
    pub chain_id: u32,
    /// The genesis registry (TimeProofs are checked against it).
    pub registry: crate::protocol::registry::Registry,
    /// The P2P address.
    pub p2p: SocketAddr,
    /// Told by `stop`; the node's run loop then shuts down.
    pub stop: Arc<tokio::sync::Notify>,
}

impl RpcCtx {
    /// `cfg` gives the network, the rate limit, `rpcauth` and `rpcallowip`.
    pub(super) fn new(
        wallets: Arc<WalletCtx>,
        cfg: &crate::node::config::NodeConfig,
        node: RpcNode,
        cookie: &str,
        peers: (PeerGate, Clock),
    ) -> Self {
        let RpcNode {
            chain_id,
            registry,
            p2p,
            stop,
        } = node;
        RpcCtx {
            peers,
            registry,
            stop,
            ws_slots: Arc::new(Semaphore::new(ws::MAX_WS_CONNECTIONS)),
            wallets,
            network: cfg.network.name(),
            chain_id,
            p2p,
            started: Instant::now(),
            expected_auth: basic_auth(cookie),
            rpcauth: cfg.rpcauth.clone(),
            allow: cfg.rpcallowip.clone(),
            buckets: Mutex::new(Buckets::new(cfg.rpc_rate_limit)),
            chain: None,
        }
    }
}

impl RpcCtx {
    /// The cookie, or an `rpcauth` user with the right password.
    fn authorized(&self, header: &[u8]) -> bool {
        use base64::Engine;
        if same(header, self.expected_auth.as_bytes()) {
            return true;
        }
        let Some(b64) = header.strip_prefix(b"Basic ") else {
            return false;
        };
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        self.rpcauth.iter().any(|a| a.accepts(user, password))
    }
}

/// Why the RPC's TLS certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    #[error("rpc_tls_cert {path}: {why} (a PEM certificate chain, leaf first)")]
    Cert { path: String, why: String },
    #[error("rpc_tls_key {path}: {why} (a PEM private key: PKCS#8, PKCS#1 or SEC1)")]
    Key { path: String, why: String },
    #[error("rpc_tls_cert and rpc_tls_key do not fit together: {0}")]
    Config(String),
}

/// The TLS acceptor of `rpc_tls_cert`/`rpc_tls_key` (rustls, ring, TLS 1.2
/// and 1.3, no client certificates).
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_err = |why: String| TlsSetupError::Cert {
        path: cert.display().to_string(),
        why,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
        path: key.display().to_string(),
        why: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Serves JSON-RPC on `listener` until the runtime stops; over TLS when
/// `tls` is given.
pub(super) async fn serve_rpc(
    listener: TcpListener,
    ctx: Arc<RpcCtx>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    if let Ok(a) = listener.local_addr() {
        let scheme = if tls.is_some() { "https" } else { "http" };
        info!(addr = %a, "JSON-RPC on {scheme}://{a}/");
    }
    let slots = Arc::new(Semaphore::new(MAX_RPC_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, from) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("rpc accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !allowed_ip(&ctx.allow, from.ip()) {
            // Closed before a byte is read: not in rpcallowip.
            warn!(%from, "rpc connection refused: not loopback and not in rpcallowip");
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Not autotuned up to 4 MB: a WebSocket reader that stalls shows up
        // as a write stuck for ws::WS_SEND_TIMEOUT after about this much.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(RPC_SEND_BUFFER);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_http(ctx, stream).await,
                Some(acceptor) => {
                    // The TLS handshake within the header timeout.
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_http(ctx, s).await,
                        Ok(Err(e)) => tracing::debug!(%from, "rpc TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%from, "rpc TLS handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// One HTTP/1.1 connection (upgradable to a WebSocket).
async fn serve_http<S>(ctx: Arc<RpcCtx>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle_http(&ctx, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn http(code: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error_body(id: Value, e: RpcError) -> Value {
    let mut o = json!({"code": e.code, "message": e.message});
    if let Some(d) = e.data {
        o["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id, "error": o})
}

async fn handle_http(ctx: &Arc<RpcCtx>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| ctx.authorized(v.as_bytes()));
    if !authorized {
        let mut r = http(
            StatusCode::UNAUTHORIZED,
            json!({"error": "authentication required: Basic auth with the cookie in the data directory (.cookie)"}),
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"jsonrpc\""),
        );
        return r;
    }
    if req.uri().path() == ws::WS_PATH {
        return ws::upgrade(ctx, req);
    }
    if req.method() != Method::POST {
        return http(
            StatusCode::METHOD_NOT_ALLOWED,
            error_body(Value::Null, err(code::INVALID_REQUEST, "use POST")),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return http(
                StatusCode::PAYLOAD_TOO_LARGE,
                error_body(
                    Value::Null,
                    err(
                        code::INVALID_REQUEST,
                        format!("request body refused: {e} (at most {MAX_BODY} bytes)"),
                    ),
                ),
            )
        }
    };
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return http(
                StatusCode::OK,
                error_body(
                    Value::Null,
                    err(code::PARSE_ERROR, format!("parse error: {e}")),
                ),
            )
        }
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = v.get("method").and_then(Value::as_str) else {
        let e = if v.is_array() {
            err(
                code::INVALID_REQUEST,
                "batch requests are not supported: send one request per call",
            )
        } else {
            err(
                code::INVALID_REQUEST,
                "invalid request: needs a string \"method\"",
            )
        };
        return http(StatusCode::OK, error_body(id, e));
    };
    let params = match v.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return http(
                StatusCode::OK,
                error_body(id, bad_params("params must be an array (positional)")),
            )
        }
    };
    let Some((_, class, _)) = METHODS.iter().find(|(m, _, _)| *m == method) else {
        return http(
            StatusCode::OK,
            error_body(
                id,
                err(
                    code::METHOD_NOT_FOUND,
                    format!("method not found: {method} (see help)"),
                ),
            ),
        );
    };
    let allowed = ctx
        .buckets
        .lock()
        .map(|mut b| b.take(*class))
        .unwrap_or(false);
    if !allowed {
        return http(
            StatusCode::TOO_MANY_REQUESTS,
            error_body(
                id,
                err(
                    code::RATE_LIMITED,
                    format!("rate limit of {method}'s class reached; retry later"),
                ),
            ),
        );
    }
    match call(ctx, method, &params).await {
        Ok(result) => http(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": result}),
        ),
        Err(e) => http(StatusCode::OK, error_body(id, e)),
    }
}

fn param_str<'a>(params: &'a [Value], i: usize, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(i)
        .and_then(Value::as_str)
        .ok_or_else(|| bad_params(format!("parameter {} ({name}) must be a string", i + 1)))
}

fn param_tx(params: &[Value]) -> Result<Transaction, RpcError> {
    let h = param_str(params, 0, "hex of a signed transaction")?;
    let bytes = hex::decode(h.trim()).map_err(|e| {
        err(
            code::DESERIALIZATION,
            format!("transaction is not hex: {e}"),
        )
    })?;
    Transaction::from_bytes(&bytes).map_err(|e| {
        err(
            code::DESERIALIZATION,
            format!("transaction does not decode: {e}"),
        )
    })
}

fn param_address(params: &[Value]) -> Result<Address, RpcError> {
    let a = param_str(params, 0, "address")?;
    a.parse().map_err(|e| {
        err(
            code::INVALID_ADDRESS_OR_KEY,
            format!("invalid address {a:?}: {e}"),
        )
    })
}

fn state_json(s: &UtxoState) -> Value {
    match s {
        UtxoState::Unspent => json!({"state": "unspent"}),
        UtxoState::Locked { txid } => json!({"state": "locked", "by": txid.to_string()}),
        UtxoState::SpentPending { txid, .. } => {
            json!({"state": "spent_pending", "by": txid.to_string()})
        }
        UtxoState::SpentFinalized { txid } => {
            json!({"state": "spent_final", "by": txid.to_string()})
        }
        // Spent for good, and the spend is in a committed block.
        UtxoState::Confirmed { txid, height } => {
            json!({"state": "spent_confirmed", "by": txid.to_string(), "height": height})
        }
        #[allow(unreachable_patterns)]
        other => json!({"state": format!("{other:?}")}),
    }
}

fn entry_json(op: &OutPoint, e: &UtxoEntry) -> Value {
    let mut v = json!({
        "txid": op.txid.to_string(),
        "vout": op.vout,
        "address": e.output.address.to_string(),
        "amount": e.output.amount,
    });
    if let (Value::Object(o), Value::Object(s)) = (&mut v, state_json(&e.state)) {
        o.extend(s);
    }
    v
}

fn overloaded() -> RpcError {
    err(code::OVERLOADED, "masternode is overloaded; retry")
}

/// One session, one request, the first answer that is not a notification.
async fn ask(ctx: &RpcCtx, request: WalletRequest) -> Result<WalletReply, RpcError> {
    let mut s = LocalSession::open(&ctx.wallets).ok_or_else(overloaded)?;
    s.request(request).await;
    match tokio::time::timeout(QUERY_TIMEOUT, s.reply()).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(err(code::INTERNAL, "the core closed the session")),
        Err(_) => Err(overloaded()),
    }
}

fn reply_error(r: WalletReply) -> RpcError {
    match r {
        WalletReply::Error { code: c, detail } => {
            let mut e = err(code::OVERLOADED, detail);
            e.data = Some(json!({"wallet_error_code": c}));
            e
        }
        WalletReply::TransactionRejected {
            txid,
            reason,
            detail,
            rejecters,
        } => RpcError {
            code: code::REJECTED,
            message: format!(
                "transaction {txid} rejected: {} ({detail})",
                reason.describe()
            ),
            data: Some(json!({
                "txid": txid.to_string(),
                "reason_code": reason.code(),
                "rejecters": rejecters.iter().map(|(k, c)| json!({"masternode": k.to_string(), "reason_code": c.code()})).collect::<Vec<_>>(),
            })),
        },
        other => err(code::INTERNAL, format!("unexpected answer: {other:?}")),
    }
}

async fn status(ctx: &RpcCtx) -> Result<crate::protocol::message::NodeStatus, RpcError> {
    match ask(ctx, WalletRequest::StatusQuery).await? {
        WalletReply::Status(s) => Ok(s),
        other => Err(reply_error(other)),
    }
}

async fn utxos(ctx: &RpcCtx, addr: Address) -> Result<Vec<(OutPoint, UtxoEntry)>, RpcError> {
    match ask(ctx, WalletRequest::AddressQuery(addr)).await? {
        WalletReply::UtxoStateResponse(v) => Ok(v
            .into_iter()
            .filter_map(|(op, e)| e.map(|e| (op, e)))
            .collect()),
        other => Err(reply_error(other)),
    }
}

/// Submits `tx` and waits for what the method needs: the node's lock
/// (`final_only` false) or its TimeProof.
async fn submit(
    ctx: &RpcCtx,
    tx: Transaction,
    final_only: bool,
    wait: Duration,
) -> Result<Value, RpcError> {
    let txid: Txid = tx.txid();
    tracing::debug!(%txid, final_only, "payment submitted over RPC");
    let mut s = LocalSession::open(&ctx.wallets).ok_or_else(overloaded)?;
    s.request(WalletRequest::SubmitTransaction(tx)).await;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let r = match tokio::time::timeout_at(deadline, s.reply()).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(err(code::INTERNAL, "the core closed the session")),
            Err(_) => {
                return Err(err(
                    code::TIMEOUT,
                    format!(
                        "transaction {txid} not final within {} ms",
                        wait.as_millis()
                    ),
                ))
            }
        };
        match r {
            WalletReply::TransactionAccepted(t) if t == txid && !final_only => {
                return Ok(json!(txid.to_string()))
            }
            WalletReply::TimeProof { tx, proof } if tx.txid() == txid => {
                if !final_only {
                    return Ok(json!(txid.to_string()));
                }
                return Ok(json!({
                    "txid": txid.to_string(),
                    "final": true,
                    "timeproof": hex::encode(proof.to_bytes()),
                    "votes": proof.votes.len(),
                }));
            }
            r @ (WalletReply::TransactionRejected { .. } | WalletReply::Error { .. }) => {
                return Err(reply_error(r))
            }
            _ => {}
        }
    }
}

/// `setban [key, "add"|"remove", seconds?]`: the operator's ban and unban
/// of a registered peer masternode, in the state machine's peer book.
fn setban(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let key: PublicKey = param_str(p, 0, "key")?
        .parse()
        .map_err(|_| bad_params("parameter 1 (key) must be a masternode key, 64 hex digits"))?;
    let secs = match p.get(2) {
        None => 600,
        Some(v) => v
            .as_u64()
            .filter(|s| (1..=365 * 86_400).contains(s))
            .ok_or_else(|| bad_params("parameter 3 (seconds) must be 1..31536000"))?,
    };
    if p.len() > 3 {
        return Err(bad_params(
            "setban takes [key, \"add\"|\"remove\", seconds?]",
        ));
    }
    let (gate, clock) = &ctx.peers;
    let mut book = gate.book();
    match param_str(p, 1, "command")? {
        "add" => {
            if !book.ban(clock.now_ms(), &key, secs * 1_000) {
                return Err(err(
                    code::INVALID_ADDRESS_OR_KEY,
                    "not a registered peer masternode",
                ));
            }
            Ok(json!({"banned": key.to_string(), "seconds": secs}))
        }
        "remove" => {
            if !book.unban(&key) {
                return Err(err(code::INVALID_ADDRESS_OR_KEY, "that peer is not banned"));
            }
            Ok(json!({"unbanned": key.to_string()}))
        }
        _ => Err(bad_params(
            "parameter 2 (command) must be \"add\" or \"remove\"",
        )),
    }
}

async fn call(ctx: &RpcCtx, method: &str, p: &[Value]) -> Result<Value, RpcError> {
    let no_params = |p: &[Value]| {
        if p.is_empty() {
            Ok(())
        } else {
            Err(bad_params(format!("{method} takes no parameters")))
        }
    };
    if let Some(r) = match &ctx.chain {
        Some(c) => c.call(method, p).await,
        None => None,
    } {
        return r;
    }
    match method {
        "help" => {
            no_params(p)?;
            Ok(Value::Object(
                METHODS
                    .iter()
                    .map(|(m, _, h)| (m.to_string(), json!(h)))
                    .collect(),
            ))
        }
        "getbanlist" => {
            no_params(p)?;
            let (gate, clock) = &ctx.peers;
            let now = clock.now_ms();
            let bans = gate.book().bans(now);
            Ok(Value::Array(
                bans.into_iter()
                    .map(|b| {
                        json!({
                            "key": b.peer.to_string(),
                            "banned_for_s": b.until_ms.saturating_sub(now).div_ceil(1_000),
                            "reputation": b.reputation,
                        })
                    })
                    .collect(),
            ))
        }
        "setban" => setban(ctx, p),
        "uptime" => {
            no_params(p)?;
            Ok(json!(ctx.started.elapsed().as_secs()))
        }
        "getblockchaininfo" => {
            no_params(p)?;
            let s = status(ctx).await?;
            let b = s.blocks;
            Ok(json!({
                "chain": ctx.network,
                "chain_id": ctx.chain_id,
                "blocks": b.map(|b| b.height),
                "bestblockhash": b.map(|b| b.tip.to_string()),
                "tip_time_ms": b.map(|b| b.tip_time_ms),
                "syncing": b.map(|b| b.syncing),
                "unconfirmed_transactions": b.map(|b| b.unconfirmed),
                "blocks_note": if b.is_some() {
                    "payments are final by TimeProof; blocks confirm them"
                } else {
                    "block layer off (block_interval_ms = 0): payments are final by TimeProof, no blocks"
                },
                "finalized_transactions": s.finalized,
                "rejected_transactions": s.rejected,
                "pending_transactions": s.pending,
                "catching_up": s.catching_up,
            }))
        }
        "getnetworkinfo" => {
            no_params(p)?;
            let s = status(ctx).await?;
            Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "protocol_version": crate::protocol::message::PROTOCOL_VERSION,
                "p2p": ctx.p2p.to_string(),
                "connections": s.peers_connected,
                "peers_total": s.peers_total,
            }))
        }
        "getconnectioncount" => {
            no_params(p)?;
            Ok(json!(status(ctx).await?.peers_connected))
        }
        "getmempoolinfo" => {
            no_params(p)?;
            Ok(json!({"size": status(ctx).await?.pending}))
        }
        "masternodestatus" => {
            no_params(p)?;
            let s = status(ctx).await?;
            Ok(json!({
                "public_key": s.public_key.to_string(),
                "peers_connected": s.peers_connected,
                "peers_total": s.peers_total,
                "pending": s.pending,
                "finalized": s.finalized,
                "rejected": s.rejected,
                "catching_up": s.catching_up,
            }))
        }
        "gettxout" => {
            let txid: Txid = param_str(p, 0, "txid")?
                .parse()
                .map_err(|_| bad_params("parameter 1 (txid) must be 64 hex digits"))?;
            let vout = p
                .get(1)
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad_params("parameter 2 (vout) must be an integer 0..2^32"))?;
            if p.len() > 2 {
                return Err(bad_params("gettxout takes [txid, vout]"));
            }
            let op = OutPoint { txid, vout };
            match ask(ctx, WalletRequest::UtxoStateQuery(vec![op])).await? {
                WalletReply::UtxoStateResponse(v) => Ok(v
                    .first()
                    .and_then(|(op, e)| e.as_ref().map(|e| entry_json(op, e)))
                    .unwrap_or(Value::Null)),
                other => Err(reply_error(other)),
            }
        }
        "listunspent" => {
            let addr = param_address(p)?;
            let v = utxos(ctx, addr).await?;
            Ok(Value::Array(
                v.iter().map(|(op, e)| entry_json(op, e)).collect(),
            ))
        }
        "getbalance" => {
            let addr = param_address(p)?;
            let (mut spendable, mut locked) = (0u64, 0u64);
            for (_, e) in utxos(ctx, addr).await? {
                match e.state {
                    UtxoState::Unspent => spendable = spendable.saturating_add(e.output.amount),
                    UtxoState::Locked { .. } | UtxoState::SpentPending { .. } => {
                        locked = locked.saturating_add(e.output.amount)
                    }
                    _ => {}
                }
            }
            Ok(json!({
                "address": addr.to_string(),
                "spendable": spendable,
                "locked": locked,
                "unit": "base units (1 TIME = 100000000)",
            }))
        }
        "sendrawtransaction" => {
            let tx = param_tx(p)?;
            if p.len() > 1 {
                return Err(bad_params("sendrawtransaction takes [hex]"));
            }
            submit(ctx, tx, false, QUERY_TIMEOUT).await
        }
        "waittransactionfinality" => {
            let tx = param_tx(p)?;
            let wait = match p.get(1) {
                None | Some(Value::Null) => MAX_WAIT,
                Some(v) => Duration::from_millis(
                    v.as_u64()
                        .filter(|ms| *ms > 0 && *ms <= MAX_WAIT.as_millis() as u64)
                        .ok_or_else(|| {
                            bad_params(format!(
                                "parameter 2 (timeout_ms) must be 1..={}",
                                MAX_WAIT.as_millis()
                            ))
                        })?,
                ),
            };
            submit(ctx, tx, true, wait).await
        }
        _ => match node_methods::call(ctx, method, p).await {
            Some(r) => r,
            None => Err(err(
                code::METHOD_NOT_FOUND,
                format!("method not found: {method}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcauth_lines_round_trip_and_check_the_password() {
        let (a, line) = RpcAuth::generate("alice", "s3cret");
        let parsed: RpcAuth = line.parse().unwrap();
        assert_eq!(parsed, a);
        assert!(a.accepts("alice", "s3cret"));
        assert!(!a.accepts("alice", "s3cret2"));
        assert!(!a.accepts("bob", "s3cret"));
        for bad in [
            "alice",
            "alice:salt",
            "alice:salt$zz",
            ":s$00",
            "alice:s$0011",
        ] {
            assert!(bad.parse::<RpcAuth>().is_err(), "{bad}");
        }
    }

    #[test]
    fn allowip_matches_addresses_and_prefixes() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let net: AllowIp = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        let one: AllowIp = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: AllowIp = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("198.51.100.1")));
        assert!(!all.contains(ip("2001:db8::1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x"] {
            assert!(bad.parse::<AllowIp>().is_err(), "{bad}");
        }
        assert!(allowed_ip(&[], ip("127.0.0.2")));
        assert!(allowed_ip(&[], ip("::1")));
        assert!(!allowed_ip(&[], ip("192.0.2.7")));
        assert!(allowed_ip(&[one], ip("192.0.2.7")));
    }
}
