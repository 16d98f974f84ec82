//! The RPC methods answered by the core's operator queries
//! ([`crate::node::node_api`]) and the node's own controls: transactions
//! and proofs by txid, the mempool, the peers, the registry, `unban` and
//! `stop`.

use serde_json::{json, Value};

use super::{
    bad_params, code, err, overloaded, param_str, setban, RpcCtx, RpcError, QUERY_TIMEOUT,
};
use crate::node::node_api::{NodeAnswer, NodeQuery, TxInfo, TxState};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::Txid;

/// Asks the core one operator query.
async fn ask_node(ctx: &RpcCtx, query: NodeQuery) -> Result<NodeAnswer, RpcError> {
    let rx = ctx.wallets.node_query(query).ok_or_else(overloaded)?;
    match tokio::time::timeout(QUERY_TIMEOUT, rx).await {
        Ok(Ok(Ok(a))) => Ok(a),
        Ok(Ok(Err(e))) => Err(err(code::INTERNAL, format!("storage: {e}"))),
        Ok(Err(_)) => Err(err(code::INTERNAL, "the core stopped")),
        Err(_) => Err(overloaded()),
    }
}

pub(super) fn param_txid(p: &[Value], i: usize) -> Result<Txid, RpcError> {
    param_str(p, i, "txid")?
        .parse()
        .map_err(|_| bad_params(format!("parameter {} (txid) must be 64 hex digits", i + 1)))
}

fn at_most(p: &[Value], n: usize, usage: &str) -> Result<(), RpcError> {
    if p.len() > n {
        return Err(bad_params(format!("takes {usage}")));
    }
    Ok(())
}

/// An optional boolean parameter (bitcoind's `verbose`).
fn param_bool(p: &[Value], i: usize, name: &str) -> Result<bool, RpcError> {
    match p.get(i) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_params(format!(
            "parameter {} ({name}) must be true or false",
            i + 1
        ))),
    }
}

async fn tx_info(ctx: &RpcCtx, txid: Txid) -> Result<TxInfo, RpcError> {
    match ask_node(ctx, NodeQuery::Transaction(txid)).await? {
        NodeAnswer::Transaction(t) => Ok(*t),
        other => Err(err(code::INTERNAL, format!("unexpected answer {other:?}"))),
    }
}

fn not_found(txid: &Txid) -> RpcError {
    err(
        code::INVALID_ADDRESS_OR_KEY,
        format!("no transaction {txid} on this masternode (never seen here, or undecided before a restart)"),
    )
}

fn state_json(s: &TxState) -> Value {
    match s {
        TxState::Final => json!({"state": "final"}),
        TxState::Pending => json!({"state": "pending"}),
        TxState::Rejected { reason, detail } => json!({
            "state": "rejected",
            "reason": reason.describe(),
            "reason_code": reason.code(),
            "detail": detail,
        }),
        TxState::Unknown => json!({"state": "unknown"}),
    }
}

/// A TimeProof's summary: voters, their weight against the quorum, and
/// whether it verifies against this node's registry.
pub(super) fn proof_summary(ctx: &RpcCtx, proof: &TimeProof) -> Value {
    let reg = &ctx.registry;
    let weight: u64 = proof
        .votes
        .iter()
        .filter_map(|v| reg.weight_of(&v.voter))
        .sum();
    let verified = proof.verify(ctx.chain_id, reg);
    json!({
        "votes": proof.votes.len(),
        "voters": proof.votes.iter().map(|v| v.voter.to_string()).collect::<Vec<_>>(),
        "approve_weight": weight,
        "quorum": reg.quorum(),
        "epoch": proof.votes.first().map(|v| v.epoch),
        "verifies": verified.is_ok(),
        "verify_error": verified.err().map(|e| e.to_string()),
    })
}

fn transaction_json(tx: &crate::protocol::types::Transaction) -> Value {
    json!({
        "version": tx.version,
        "chain_id": tx.chain_id,
        "inputs": tx.inputs.iter().map(|i| json!({"txid": i.prev.txid.to_string(), "vout": i.prev.vout})).collect::<Vec<_>>(),
        "outputs": tx.outputs.iter().enumerate().map(|(n, o)| json!({"vout": n, "address": o.address.to_string(), "amount": o.amount})).collect::<Vec<_>>(),
    })
}

/// The methods of this module, or None for a method it does not have.
pub(super) async fn call(
    ctx: &RpcCtx,
    method: &str,
    p: &[Value],
) -> Option<Result<Value, RpcError>> {
    Some(match method {
        "getrawtransaction" => getrawtransaction(ctx, p).await,
        "gettransaction" => gettransaction(ctx, p).await,
        "gettimeproof" => gettimeproof(ctx, p).await,
        "getrawmempool" => getrawmempool(ctx, p).await,
        "getpeerinfo" => getpeerinfo(ctx, p).await,
        "masternodelist" => masternodelist(ctx, p).await,
        "unban" => unban(ctx, p),
        "stop" => stop(ctx, p),
        _ => return None,
    })
}

/// `[txid, verbose?]`: the transaction's hex, or (verbose) its fields.
async fn getrawtransaction(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let txid = param_txid(p, 0)?;
    let verbose = param_bool(p, 1, "verbose")?;
    at_most(p, 2, "[txid, verbose?]")?;
    let info = tx_info(ctx, txid).await?;
    let tx = info.tx.ok_or_else(|| not_found(&txid))?;
    let hex = hex::encode(tx.to_bytes());
    if !verbose {
        return Ok(json!(hex));
    }
    let mut v = transaction_json(&tx);
    v["txid"] = json!(txid.to_string());
    v["hex"] = json!(hex);
    Ok(v)
}

/// `[txid]`: the transaction, its state here and its TimeProof's summary.
async fn gettransaction(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let txid = param_txid(p, 0)?;
    at_most(p, 1, "[txid]")?;
    let info = tx_info(ctx, txid).await?;
    if info.tx.is_none() && info.state == TxState::Unknown {
        return Err(not_found(&txid));
    }
    let mut v = json!({"txid": txid.to_string()});
    if let (Value::Object(o), Value::Object(s)) = (&mut v, state_json(&info.state)) {
        o.extend(s);
    }
    if let Some(tx) = &info.tx {
        v["hex"] = json!(hex::encode(tx.to_bytes()));
        v["transaction"] = transaction_json(tx);
    }
    v["timeproof"] = match &info.proof {
        Some(proof) => proof_summary(ctx, proof),
        None => Value::Null,
    };
    Ok(v)
}

/// `[txid]`: the TimeProof's bytes in hex and its voters; verify it with
/// the genesis registry (`TimeProof::from_bytes` then `verify`).
async fn gettimeproof(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let txid = param_txid(p, 0)?;
    at_most(p, 1, "[txid]")?;
    let info = tx_info(ctx, txid).await?;
    let Some(proof) = info.proof else {
        let why = match info.state {
            TxState::Pending => "is not final yet (pending); waittransactionfinality waits for it",
            TxState::Rejected { .. } => "was rejected: it has no TimeProof",
            _ => "is not known here",
        };
        return Err(err(
            code::INVALID_ADDRESS_OR_KEY,
            format!("transaction {txid} {why}"),
        ));
    };
    let mut v = proof_summary(ctx, &proof);
    v["txid"] = json!(txid.to_string());
    v["chain_id"] = json!(proof.chain_id);
    v["hex"] = json!(hex::encode(proof.to_bytes()));
    Ok(v)
}

/// `[verbose?]`: pending txids (verbose: with the count and the cap).
async fn getrawmempool(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let verbose = param_bool(p, 0, "verbose")?;
    at_most(p, 1, "[verbose?]")?;
    let NodeAnswer::Mempool { mut txids, total } = ask_node(ctx, NodeQuery::Mempool).await? else {
        return Err(err(code::INTERNAL, "unexpected answer"));
    };
    txids.sort();
    let list: Vec<Value> = txids.iter().map(|t| json!(t.to_string())).collect();
    if !verbose {
        return Ok(Value::Array(list));
    }
    Ok(json!({
        "size": total,
        "listed": list.len(),
        "max_listed": crate::node::node_api::MAX_MEMPOOL_LISTING,
        "txids": list,
    }))
}

/// The registered peer masternodes: address, tier, link up, reputation, ban.
async fn getpeerinfo(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    at_most(p, 0, "no parameters")?;
    let NodeAnswer::Peers(peers) = ask_node(ctx, NodeQuery::Peers).await? else {
        return Err(err(code::INTERNAL, "unexpected answer"));
    };
    Ok(Value::Array(
        peers
            .into_iter()
            .map(|pi| {
                json!({
                    "key": pi.key.to_string(),
                    "address": pi.address,
                    "tier": pi.tier,
                    "weight": pi.weight,
                    "connected": pi.connected,
                    "reputation": pi.reputation,
                    "banned_for_s": pi.banned_for_ms.map(|ms| ms.div_ceil(1_000)),
                })
            })
            .collect(),
    ))
}

/// Every registered masternode, with the registry's epoch and quorum.
async fn masternodelist(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    at_most(p, 0, "no parameters")?;
    let NodeAnswer::Masternodes {
        epoch,
        total_weight,
        quorum,
        nodes,
    } = ask_node(ctx, NodeQuery::Masternodes).await?
    else {
        return Err(err(code::INTERNAL, "unexpected answer"));
    };
    Ok(json!({
        "epoch": epoch,
        "total_weight": total_weight,
        "quorum": quorum,
        "masternodes": nodes.into_iter().map(|m| json!({
            "key": m.key.to_string(),
            "address": m.address,
            "tier": m.tier,
            "weight": m.weight,
            "self": m.is_self,
            "connected": m.connected,
        })).collect::<Vec<_>>(),
    }))
}

/// `[key]`: `setban [key, "remove"]`.
fn unban(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    let key = param_str(p, 0, "key")?;
    at_most(p, 1, "[key]")?;
    setban(ctx, &[json!(key), json!("remove")])
}

/// Stops the node the way SIGTERM does (its run loop's shutdown path),
/// after this answer has gone out.
fn stop(ctx: &RpcCtx, p: &[Value]) -> Result<Value, RpcError> {
    at_most(p, 0, "no parameters")?;
    let stop = ctx.stop.clone();
    tokio::spawn(async move {
        // Let the answer be written before the runtime winds down.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.notify_one();
    });
    tracing::info!("stop requested over RPC");
    Ok(json!("TIME Coin masternode stopping"))
}
