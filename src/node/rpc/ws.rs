//! Push events over a WebSocket at [`WS_PATH`] on the RPC port: the same
//! credentials (cookie or `rpcauth`, checked before the upgrade), the same
//! `rpcallowip`, the same rate limit (each request takes a read token).
//!
//! The WebSocket is `tokio-tungstenite` on the RPC server's own hyper
//! connection, upgraded in place (`hyper::upgrade`): no second listener or
//! auth path, and only the frame codec of the crate (no TLS, no client).
//!
//! Each connection is one in-process wallet session ([`LocalSession`]):
//! subscriptions go to the state machine's router exactly like a TCP
//! wallet's (addresses) or through `handle_wallet_watch` (a txid), and the
//! router's replies come back as events. Requests are JSON-RPC objects:
//! - `{"id":1,"method":"subscribe_txid","params":["<txid>"]}`
//! - `{"id":2,"method":"subscribe_address","params":["<address>"]}`
//! - `{"id":3,"method":"unsubscribe_txid","params":["<txid>"]}`
//! - `{"id":4,"method":"unsubscribe_address","params":["<address>"]}`
//!
//! A subscription is answered `{"subscribed": "<txid or address>"}`, an
//! unsubscription `{"unsubscribed": "<txid or address>", "was_subscribed":
//! true|false}`; either is idempotent. An unsubscription frees its place
//! under [`MAX_WS_SUBSCRIPTIONS`] and under the node's wallet-subscription
//! caps at once. Events the node queued before it may still arrive for an
//! address (a `tx_notification` of a payment final just before).
//!
//! Events are JSON-RPC notifications (`method` and `params`, no `id`):
//! - `tx_notification`: a subscribed transaction, or one touching a
//!   subscribed address, is final: `txid`, `hex`, `timeproof` (hex, verify
//!   it against the genesis registry), `voters`, `approve_weight`, `quorum`;
//! - `utxo_finalized`: an output of a subscribed address changed state at
//!   finality (spent, or created): `txid`, `vout`, `address`, `amount`,
//!   `state`, `by`;
//! - `tx_declined`: a subscribed transaction was rejected: `txid`, `reason`,
//!   `reason_code`, `detail`;
//! - `error`: the node refused something (a subscription over a cap).
//!
//! Limits: [`MAX_WS_CONNECTIONS`] connections at once (one more is answered
//! HTTP 503), [`MAX_WS_SUBSCRIPTIONS`] subscriptions per connection (one
//! more is a JSON-RPC error), [`MAX_WS_MESSAGE`] bytes per request; a slow
//! consumer (events queued over [`MAX_WS_BACKLOG`], or a write stuck for
//! [`WS_SEND_TIMEOUT`]) is closed with code 1008 and a reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, warn};

use super::node_methods::proof_summary;
use super::{code, err, http, state_json, Class, RpcCtx, RpcError};
use crate::node::wallet_server::LocalSession;
use crate::protocol::audience::{WalletReply, WalletRequest};
use crate::protocol::types::{Address, Txid};

/// Where the WebSocket is served on the RPC port.
pub const WS_PATH: &str = "/ws";
/// WebSocket connections open at once over all clients.
pub const MAX_WS_CONNECTIONS: usize = 32;
/// Subscriptions (txids and addresses) one connection may hold.
pub const MAX_WS_SUBSCRIPTIONS: usize = 256;
/// Events queued for one connection before it counts as a slow consumer
/// and is closed (the session's own queue holds more, so none is lost
/// silently before that).
pub const MAX_WS_BACKLOG: usize = 1_024;
/// Longest a single event write may take before the consumer is closed
/// (the kernel queues at most [`super::RPC_SEND_BUFFER`] before a write
/// waits).
pub const WS_SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request message (a subscription is ~100 bytes).
pub const MAX_WS_MESSAGE: usize = 16 * 1024;

fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    http(status, json!({"error": why}))
}

/// Answers an (authenticated) upgrade request and serves the socket.
pub(super) fn upgrade(ctx: &Arc<RpcCtx>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let h = req.headers();
    let is_upgrade = h
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = h.get(hyper::header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "this is the WebSocket endpoint: send a WebSocket upgrade (GET with Upgrade: websocket and Sec-WebSocket-Key)",
        );
    };
    let Ok(slot) = ctx.ws_slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{MAX_WS_CONNECTIONS} WebSocket connections are open already; retry later"),
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!("websocket upgrade failed: {e}");
                return;
            }
        };
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        serve(&ctx, ws).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    hs.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        hs.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// One connection's subscriptions and what it has been told.
#[derive(Default)]
struct Subs {
    txids: HashSet<Txid>,
    addresses: HashSet<Address>,
    /// Final transactions of subscribed addresses whose proof was asked.
    proofs_asked: HashSet<Txid>,
    /// The latest [`TOLD`] transactions a `tx_notification` went out for,
    /// so one that is both subscribed and pays a subscribed address is
    /// told once.
    told: std::collections::VecDeque<Txid>,
}

/// How many told txids a connection remembers.
const TOLD: usize = 1_024;

impl Subs {
    fn len(&self) -> usize {
        self.txids.len() + self.addresses.len()
    }
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why a connection ended on our side.
enum Close {
    /// The client closed, or the socket broke.
    Gone,
    /// Too slow to read its events.
    Slow(String),
    /// The core dropped the session (node stopping).
    NodeStopping,
}

async fn serve(ctx: &RpcCtx, mut ws: Ws) {
    let Some(mut session) = LocalSession::open(&ctx.wallets) else {
        let _ = close_with(&mut ws, CloseCode::Again, "masternode is overloaded; retry").await;
        return;
    };
    let mut subs = Subs::default();
    let end = loop {
        if session.backlog() > MAX_WS_BACKLOG {
            break Close::Slow(format!(
                "slow consumer: more than {MAX_WS_BACKLOG} events waiting; read faster or subscribe to less"
            ));
        }
        tokio::select! {
            m = ws.next() => {
                let text = match m {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Binary(_))) => {
                        if let Err(c) = send(&mut ws, error_reply(Value::Null, err(code::INVALID_REQUEST, "send JSON text frames"))).await { break c; }
                        continue;
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break Close::Gone,
                    Some(Ok(_)) => continue, // ping/pong handled by the codec
                };
                let answer = request(ctx, &session, &mut subs, &text).await;
                if let Err(c) = send(&mut ws, answer).await { break c; }
            }
            r = session.reply() => {
                let Some(r) = r else { break Close::NodeStopping };
                let Some(ev) = event(ctx, &session, &mut subs, r) else { continue };
                if let Err(c) = send(&mut ws, ev).await { break c; }
            }
        }
    };
    match end {
        Close::Gone => {}
        Close::Slow(why) => {
            warn!(
                limit = "MAX_WS_BACKLOG/WS_SEND_TIMEOUT",
                "websocket closed: {why}"
            );
            let _ = close_with(&mut ws, CloseCode::Policy, &why).await;
        }
        Close::NodeStopping => {
            let _ = close_with(&mut ws, CloseCode::Away, "masternode stopping").await;
        }
    }
}

async fn close_with(ws: &mut Ws, code: CloseCode, why: &str) -> Result<(), ()> {
    // A close reason is at most 123 bytes.
    let reason: String = why.chars().take(120).collect();
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    tokio::time::timeout(WS_SEND_TIMEOUT, ws.close(Some(frame)))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), Close> {
    match tokio::time::timeout(WS_SEND_TIMEOUT, ws.send(WsMessage::text(v.to_string()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Close::Gone),
        Err(_) => Err(Close::Slow(format!(
            "slow consumer: an event write took over {} s",
            WS_SEND_TIMEOUT.as_secs()
        ))),
    }
}

fn error_reply(id: Value, e: RpcError) -> Value {
    super::error_body(id, e)
}

/// One request frame: a subscription or an unsubscription.
async fn request(ctx: &RpcCtx, session: &LocalSession, subs: &mut Subs, text: &str) -> Value {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return error_reply(
                Value::Null,
                err(code::PARSE_ERROR, format!("parse error: {e}")),
            )
        }
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    match call(ctx, session, subs, &v).await {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_reply(id, e),
    }
}

async fn call(
    ctx: &RpcCtx,
    session: &LocalSession,
    subs: &mut Subs,
    v: &Value,
) -> Result<Value, RpcError> {
    let method = v.get("method").and_then(Value::as_str).ok_or_else(|| {
        err(
            code::INVALID_REQUEST,
            format!("invalid request: needs a string \"method\" ({METHODS})"),
        )
    })?;
    let params: &[Value] = match v.get("params") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => &[],
        Some(_) => return Err(super::bad_params("params must be an array (positional)")),
    };
    let allowed = ctx
        .buckets
        .lock()
        .map(|mut b| b.take(Class::Read))
        .unwrap_or(false);
    if !allowed {
        return Err(err(code::RATE_LIMITED, "rate limit reached; retry later"));
    }
    if params.len() != 1 {
        return Err(super::bad_params(format!("{method} takes one parameter")));
    }
    let full = || {
        err(
            code::INVALID_REQUEST,
            format!("this connection holds {MAX_WS_SUBSCRIPTIONS} subscriptions already (the most one may); open another connection"),
        )
    };
    match method {
        "subscribe_txid" => {
            let txid = super::node_methods::param_txid(params, 0)?;
            if subs.txids.contains(&txid) {
                return Ok(json!({"subscribed": txid.to_string()}));
            }
            if subs.len() >= MAX_WS_SUBSCRIPTIONS {
                return Err(full());
            }
            if !session.watch(txid) {
                return Err(super::overloaded());
            }
            subs.txids.insert(txid);
            Ok(json!({"subscribed": txid.to_string()}))
        }
        "subscribe_address" => {
            let addr = super::param_address(params)?;
            if subs.addresses.contains(&addr) {
                return Ok(json!({"subscribed": addr.to_string()}));
            }
            if subs.len() >= MAX_WS_SUBSCRIPTIONS {
                return Err(full());
            }
            session
                .request(WalletRequest::WalletSubscribe(vec![addr]))
                .await;
            subs.addresses.insert(addr);
            Ok(json!({"subscribed": addr.to_string()}))
        }
        "unsubscribe_txid" => {
            let txid = super::node_methods::param_txid(params, 0)?;
            let was = subs.txids.contains(&txid);
            // The router's watch stays while a subscribed address still
            // waits on this transaction's proof.
            if was && !subs.proofs_asked.contains(&txid) && !session.unwatch(txid) {
                return Err(super::overloaded());
            }
            subs.txids.remove(&txid);
            Ok(json!({"unsubscribed": txid.to_string(), "was_subscribed": was}))
        }
        "unsubscribe_address" => {
            let addr = super::param_address(params)?;
            let was = subs.addresses.contains(&addr);
            if was && !session.unsubscribe(addr) {
                return Err(super::overloaded());
            }
            subs.addresses.remove(&addr);
            Ok(json!({"unsubscribed": addr.to_string(), "was_subscribed": was}))
        }
        _ => Err(err(
            code::METHOD_NOT_FOUND,
            format!("method not found: {method} ({METHODS})"),
        )),
    }
}

/// The methods a WebSocket client may call.
const METHODS: &str = "subscribe_txid, subscribe_address, unsubscribe_txid or unsubscribe_address";

fn notification(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// The event a router reply makes, if any.
fn event(ctx: &RpcCtx, session: &LocalSession, subs: &mut Subs, r: WalletReply) -> Option<Value> {
    match r {
        WalletReply::TimeProof { tx, proof } => {
            let txid = tx.txid();
            let by_txid = subs.txids.remove(&txid);
            let by_address = subs.proofs_asked.remove(&txid);
            if !by_txid && !by_address {
                return None; // told already
            }
            if subs.told.len() >= TOLD {
                subs.told.pop_front();
            }
            subs.told.push_back(txid);
            let mut p = proof_summary(ctx, &proof);
            p["txid"] = json!(txid.to_string());
            p["final"] = json!(true);
            p["hex"] = json!(hex::encode(tx.to_bytes()));
            p["timeproof"] = json!(hex::encode(proof.to_bytes()));
            Some(notification("tx_notification", p))
        }
        WalletReply::NewTransactionNotification { txid, .. } => {
            // Final, touching a subscribed address: its proof is stored, and
            // a watch answers with it at once (then a tx_notification).
            if subs.told.contains(&txid) || subs.txids.contains(&txid) {
                return None;
            }
            if subs.proofs_asked.insert(txid) && !session.watch(txid) {
                subs.proofs_asked.remove(&txid);
                return Some(notification(
                    "error",
                    json!({"code": code::OVERLOADED, "detail": format!("proof of {txid} not fetched: masternode overloaded; use gettimeproof")}),
                ));
            }
            None
        }
        WalletReply::UtxoStateNotification { outpoint, entry } => {
            if !subs.addresses.contains(&entry.output.address) {
                return None; // queued before an unsubscribe_address
            }
            let mut p = json!({
                "txid": outpoint.txid.to_string(),
                "vout": outpoint.vout,
                "address": entry.output.address.to_string(),
                "amount": entry.output.amount,
            });
            if let (Value::Object(o), Value::Object(s)) = (&mut p, state_json(&entry.state)) {
                o.extend(s);
            }
            Some(notification("utxo_finalized", p))
        }
        WalletReply::TransactionRejected {
            txid,
            reason,
            detail,
            ..
        } => {
            if !subs.txids.remove(&txid) {
                return None; // queued before an unsubscribe_txid
            }
            Some(notification(
                "tx_declined",
                json!({
                    "txid": txid.to_string(),
                    "reason": reason.describe(),
                    "reason_code": reason.code(),
                    "detail": detail,
                }),
            ))
        }
        WalletReply::Error { code: c, detail } => Some(notification(
            "error",
            json!({"wallet_error_code": c, "detail": detail}),
        )),
        _ => None,
    }
}
