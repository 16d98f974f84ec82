//! Wallet sessions: reading a wallet's requests ([`serve_wallet`]), and the
//! wallet-interest [`Router`] that carries the core's events back to the
//! sessions that asked ([`route_event`]).
//!
//! Owns the router and each session's outbound queue. It must never touch
//! the state machine or storage directly: transactions go to the verifier
//! pool, queries to the core queue, and a full queue is answered with
//! `MempoolFull` rather than waited on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use time_net::{FrameReader, FrameWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

use crate::node::core_input::{CoreInput, CoreTx};
use crate::node::ingest::{Source, TxVerifier};
use crate::node::wire::{encode, LinkError, NetStats};
use crate::protocol::audience::WalletRequest;
use crate::protocol::engine::Event;
use crate::protocol::message::Message;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::validation::RejectCode;

/// Where wallet notifications go.
#[derive(Default)]
pub(super) struct Router {
    by_txid: HashMap<Txid, Vec<mpsc::Sender<Bytes>>>,
    by_address: HashMap<Address, Vec<(u64, mpsc::Sender<Bytes>)>>,
}

impl Router {
    /// `to` hears the outcome of `txid`.
    pub(super) fn watch(&mut self, txid: Txid, to: mpsc::Sender<Bytes>) {
        self.by_txid.entry(txid).or_default().push(to);
    }

    /// Drops the registrations for a transaction no event will come for.
    pub(super) fn forget(&mut self, txid: &Txid) {
        self.by_txid.remove(txid);
    }

    fn subscribe(&mut self, session: u64, addrs: Vec<Address>, to: &mpsc::Sender<Bytes>) {
        for a in addrs {
            self.by_address
                .entry(a)
                .or_default()
                .push((session, to.clone()));
        }
    }

    fn end_session(&mut self, session: u64) {
        for subs in self.by_address.values_mut() {
            subs.retain(|(s, _)| *s != session);
        }
        self.by_address.retain(|_, v| !v.is_empty());
    }

    fn accepted(&self, txid: Txid) {
        if let Some(subs) = self.by_txid.get(&txid) {
            let f = encode(&Message::TransactionAccepted(txid));
            for s in subs {
                let _ = s.try_send(f.clone());
            }
        }
    }

    fn finalized(
        &mut self,
        txid: Txid,
        proof: &TimeProof,
        tx: &Transaction,
        addresses: &[Address],
        spent: Vec<(OutPoint, UtxoEntry)>,
    ) {
        let f = encode(&Message::TimeProof {
            tx: tx.clone(),
            proof: proof.clone(),
        });
        if let Some(subs) = self.by_txid.remove(&txid) {
            for s in subs {
                let _ = s.try_send(f.clone());
            }
        }
        if self.by_address.is_empty() {
            return;
        }
        self.notify_addresses(txid, tx, addresses, spent);
    }

    /// Subscribers of an address hear the transaction, then the state of
    /// each of their outputs it spent or created.
    fn notify_addresses(
        &mut self,
        txid: Txid,
        tx: &Transaction,
        addresses: &[Address],
        spent: Vec<(OutPoint, UtxoEntry)>,
    ) {
        let note = encode(&Message::NewTransactionNotification {
            txid,
            tx: tx.clone(),
        });
        let created = tx.outputs.iter().enumerate().map(|(v, o)| {
            (
                OutPoint {
                    txid,
                    vout: v as u32,
                },
                UtxoEntry {
                    output: *o,
                    state: UtxoState::Unspent,
                },
            )
        });
        let changes: Vec<(OutPoint, UtxoEntry)> = spent.into_iter().chain(created).collect();
        for a in addresses {
            if let Some(subs) = self.by_address.get_mut(a) {
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

    fn rejected(&mut self, rejection: Message, txid: &Txid) {
        if let Some(subs) = self.by_txid.remove(txid) {
            let f = encode(&rejection);
            for s in subs {
                let _ = s.try_send(f.clone());
            }
        }
    }
}

/// Hands one event of a round to the wallets that wait for it (core thread).
pub(super) fn route_event(router: &Mutex<Router>, ev: Event) {
    let mut router = router.lock().expect("router lock");
    match ev {
        Event::Accepted { txid } => router.accepted(txid),
        Event::Finalized {
            txid,
            proof,
            tx,
            addresses,
            spent,
        } => router.finalized(txid, &proof, &tx, &addresses, spent),
        Event::Rejected {
            txid,
            reason,
            detail,
            rejecters,
        } => {
            let m = Message::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            };
            router.rejected(m, &txid)
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

/// The answer to a wallet whose transaction found a queue full.
pub(super) fn overloaded(txid: Txid, me: PublicKey) -> Bytes {
    encode(&Message::TransactionRejected {
        txid,
        reason: RejectCode::MempoolFull,
        detail: "masternode is overloaded; retry".into(),
        rejecters: vec![(me, RejectCode::MempoolFull)],
    })
}

/// What a wallet session needs, handed over when the listener is built.
pub(super) struct WalletCtx {
    pub me: PublicKey,
    pub core: CoreTx,
    pub verifier: Arc<TxVerifier>,
    pub router: Arc<Mutex<Router>>,
    pub stats: Arc<NetStats>,
    pub next_session: AtomicU64,
}

/// Serves one authenticated wallet connection until it closes or misbehaves.
pub(super) async fn serve_wallet(
    ctx: Arc<WalletCtx>,
    mut reader: FrameReader<OwnedReadHalf>,
    mut writer: FrameWriter<OwnedWriteHalf>,
) -> Result<(), LinkError> {
    let (tx_out, mut rx_out) = mpsc::channel::<Bytes>(4096);
    let session = ctx.next_session.fetch_add(1, Ordering::Relaxed);
    let stats = ctx.stats.clone();
    let writer_task = tokio::spawn(async move {
        let _ = write_frames(&mut writer, &mut rx_out, &stats).await;
    });
    let result = async {
        loop {
            let frame = reader.read_frame().await?;
            ctx.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            let request = WalletRequest::try_from(Message::decode(frame)?)?;
            handle_wallet_request(&ctx, session, &tx_out, request).await;
        }
    }
    .await;
    ctx.router.lock().expect("router lock").end_session(session);
    drop(tx_out);
    writer_task.abort();
    result
}

/// One request of a wallet session: the typed wallet API of the node.
async fn handle_wallet_request(
    ctx: &WalletCtx,
    session: u64,
    tx_out: &mpsc::Sender<Bytes>,
    request: WalletRequest,
) {
    match request {
        WalletRequest::SubmitTransaction(tx) => {
            let txid = tx.txid();
            let queued = ctx
                .verifier
                .submit(tx, Source::Wallet(tx_out.clone()))
                .is_ok();
            if !queued {
                let _ = tx_out.send(overloaded(txid, ctx.me)).await;
            }
        }
        WalletRequest::UtxoStateQuery(ops) => {
            ask_core(ctx, tx_out, |r| CoreInput::UtxoQuery(ops, r)).await
        }
        WalletRequest::AddressQuery(a) => {
            ask_core(ctx, tx_out, |r| CoreInput::AddressQuery(a, r)).await
        }
        WalletRequest::StatusQuery => ask_core(ctx, tx_out, CoreInput::Status).await,
        WalletRequest::WalletSubscribe(addrs) => {
            ctx.router
                .lock()
                .expect("router lock")
                .subscribe(session, addrs, tx_out);
        }
        WalletRequest::Ping(n) => {
            let _ = tx_out.send(encode(&Message::Pong(n))).await;
        }
    }
}

/// A query the core answers; the answer goes back to the wallet.
async fn ask_core(
    ctx: &WalletCtx,
    tx_out: &mpsc::Sender<Bytes>,
    input: impl FnOnce(oneshot::Sender<Message>) -> CoreInput,
) {
    let (r, w) = oneshot::channel();
    ctx.core.offer(input(r));
    if let Ok(m) = w.await {
        let _ = tx_out.send(encode(&m)).await;
    }
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
