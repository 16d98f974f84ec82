//! The wire messages between masternodes and between wallets and
//! masternodes. One message per frame: a tag byte, then the body. Decoding is
//! explicit and bounded; unknown tags and trailing bytes are errors.

use crate::codec::put_var_bytes;
use crate::codec::{DecodeError, Reader};
use ed25519_dalek::{Signer, SigningKey};

use crate::blocks::{Block, BlockVote, CommitCertificate, CommittedBlock, Proposal};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, ChainId, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::UtxoEntry;
use crate::protocol::validation::RejectCode;
use crate::protocol::vote::VoteBatch;

/// Version 2: the node handshake signs a transcript of both `Hello`s
/// ([`handshake_message`]) instead of the peer's nonce alone.
pub const PROTOCOL_VERSION: u16 = 2;
const DOMAIN_HANDSHAKE: &[u8] = b"TIMECOIN/handshake/v2";

/// Caps on counts a peer may send.
pub const MAX_QUERY_OUTPOINTS: usize = 4_096;
pub const MAX_SUBSCRIBE_ADDRESSES: usize = 1_024;
pub const MAX_DETAIL_BYTES: usize = 1_024;
pub const MAX_REJECTERS: usize = 4_096;
/// Frame cap before the handshake completes.
pub const HANDSHAKE_FRAME_CAP: usize = 1_024;
/// Most txids in one finality log page.
pub const MAX_LOG_PAGE: usize = 1_024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Masternode,
    Wallet,
}

impl Role {
    /// The role byte of a `Hello`.
    pub fn code(self) -> u8 {
        match self {
            Role::Masternode => 1,
            Role::Wallet => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub chain_id: ChainId,
    pub protocol_version: u16,
    pub role: Role,
    /// The masternode key (zeros for a wallet).
    pub public_key: PublicKey,
    pub nonce: [u8; 32],
}

impl Hello {
    /// Encoded length, tag byte included.
    pub const LEN: usize = 72;
}

/// Which end of a connection a handshake signature speaks for: the side
/// that opened the TCP connection, or the listener that accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Dialer,
    Acceptor,
}

impl Side {
    fn code(self) -> u8 {
        match self {
            Side::Dialer => 1,
            Side::Acceptor => 2,
        }
    }
}

/// The transcript a masternode signs to prove its key on one connection:
///
/// ```text
/// "TIMECOIN/handshake/v2" ‖ side:u8 ‖ dialer Hello[72] ‖ acceptor Hello[72]
/// ```
///
/// (166 bytes). Each `Hello` is its frame exactly as sent (tag 0x01, chain
/// id, protocol version, role, key, nonce), the dialer's first. `side` is 1
/// when the dialer signs, 2 when the acceptor signs, so neither proof can be
/// reflected as the other. Both nonces are fresh per connection and both
/// keys and roles are bound, so a signature made on one connection verifies
/// on no other: a relay that splices two connections presents different
/// `Hello`s to each end.
pub fn handshake_message(side: Side, dialer: &Hello, acceptor: &Hello) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_HANDSHAKE.len() + 1 + 2 * Hello::LEN);
    m.extend_from_slice(DOMAIN_HANDSHAKE);
    m.push(side.code());
    Message::Hello(dialer.clone()).encode(&mut m);
    Message::Hello(acceptor.clone()).encode(&mut m);
    m
}

/// Signs `side`'s proof on the connection whose `Hello`s were `dialer` and
/// `acceptor`. Call only after both were sent and received.
pub fn sign_handshake(key: &SigningKey, side: Side, dialer: &Hello, acceptor: &Hello) -> [u8; 64] {
    key.sign(&handshake_message(side, dialer, acceptor))
        .to_bytes()
}

/// Whether `sig` is `side`'s proof on this connection, under the key in
/// `side`'s own `Hello`.
pub fn verify_handshake(side: Side, dialer: &Hello, acceptor: &Hello, sig: &[u8; 64]) -> bool {
    let signer = match side {
        Side::Dialer => &dialer.public_key,
        Side::Acceptor => &acceptor.public_key,
    };
    crate::sig::verify(&signer.0, &handshake_message(side, dialer, acceptor), sig)
}

/// Codes of the `Error` message that refuses a connection during the
/// handshake. The refusing side sends `Error {code, detail}` and closes; the
/// detail is human-readable text (e.g. which chain this node serves).
pub mod refusal {
    /// Not a handshake: the frame was not the expected `Hello` or
    /// `HelloAuth`, did not decode, or did not arrive in time.
    pub const PROTOCOL: u16 = 1;
    /// The `Hello`'s chain id is not this node's (wrong genesis).
    pub const WRONG_CHAIN: u16 = 2;
    /// The `Hello`'s protocol version is not [`super::PROTOCOL_VERSION`].
    pub const UNSUPPORTED_VERSION: u16 = 3;
    /// The masternode role was claimed with a key that is not in the
    /// registry (or is the refusing node's own key). Sent by the plain-link
    /// listener until links were removed; kept so the code is never reused.
    pub const NOT_REGISTERED: u16 = 4;
    /// The `HelloAuth` does not verify over this connection's transcript.
    /// Kept for the same reason.
    pub const BAD_SIGNATURE: u16 = 5;
    /// A registered masternode answered, but not the one that was dialed.
    /// Sent by the plain-link dialer; kept for the same reason.
    pub const WRONG_KEY: u16 = 6;
    /// The masternode role on the node TCP port: masternodes talk only over
    /// the peer pool (QUIC on the P2P port, or TCP with TLS 1.3 on P2P port
    /// + 1). Refused before the listener signs anything.
    pub const PEER_POOL_ONLY: u16 = 7;

    /// A short description of a refusal code.
    pub fn describe(code: u16) -> &'static str {
        match code {
            PROTOCOL => "handshake protocol violation",
            WRONG_CHAIN => "wrong chain id",
            UNSUPPORTED_VERSION => "unsupported protocol version",
            NOT_REGISTERED => "not a registered masternode",
            BAD_SIGNATURE => "handshake signature invalid",
            WRONG_KEY => "not the masternode that was dialed",
            PEER_POOL_ONLY => "masternodes connect through the peer pool, not this port",
            _ => "refused",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    HelloAuth([u8; 64]),
    Ping(u64),
    Pong(u64),
    /// Wallet -> masternode: please lock and get this finalized.
    SubmitTransaction(Transaction),
    /// Masternode -> masternodes: a transaction whose inputs the sender
    /// locked (the UTXO lock broadcast).
    TransactionBroadcast(Transaction),
    VoteBatch(VoteBatch),
    /// Consensus reached: the transaction and its TimeProof.
    TimeProof {
        tx: Transaction,
        proof: TimeProof,
    },
    ProofRequest(Txid),
    /// Locked and approved by the masternode the wallet talks to.
    TransactionAccepted(Txid),
    TransactionRejected {
        txid: Txid,
        reason: RejectCode,
        detail: String,
        rejecters: Vec<(PublicKey, RejectCode)>,
    },
    UtxoStateQuery(Vec<OutPoint>),
    /// Unspent (or locked) outputs paying an address.
    AddressQuery(Address),
    UtxoStateResponse(Vec<(OutPoint, Option<UtxoEntry>)>),
    WalletSubscribe(Vec<Address>),
    UtxoStateNotification {
        outpoint: OutPoint,
        entry: UtxoEntry,
    },
    NewTransactionNotification {
        txid: Txid,
        tx: Transaction,
    },
    /// Masternode -> masternode: resend your fast-path datagrams
    /// `first..=last` (they were lost on UDP).
    RepairRequest {
        first: u64,
        last: u64,
    },
    /// A fast-path datagram resent over the reliable path, as it was signed.
    Repair(Vec<u8>),
    /// Over the reliable path: "my next fast-path datagram has sequence
    /// `next`", so a receiver that has not heard this sender yet knows where
    /// its stream starts (and can repair what it missed since).
    FastPathSeq {
        next: u64,
    },
    /// Masternode -> masternode: "list the transactions you finalized, from
    /// position `from` of your finality log" (catch-up / anti-entropy).
    FinalityLogRequest {
        from: u64,
    },
    /// The answer: the txids at positions `from..from + txids.len()` of the
    /// sender's finality log, in the order it finalized them, and the log's
    /// length `head`. The receiver asks for the proofs it lacks.
    FinalityLogPage {
        from: u64,
        head: u64,
        txids: Vec<Txid>,
    },
    /// Block consensus: a round leader's proposal.
    BlockProposal(Box<Proposal>),
    /// Block consensus: a prevote or precommit.
    BlockVote(BlockVote),
    /// Masternode -> masternode: "send me your committed blocks from
    /// height `from` on" (a node that fell behind, or syncs).
    BlockRequest {
        from: u64,
    },
    /// A committed block and its commit certificate.
    CommittedBlock(Box<CommittedBlock>),
    /// Operator or devnet asks how the node is doing.
    StatusQuery,
    Status(NodeStatus),
    /// The connection is being closed for this reason.
    Error {
        code: u16,
        detail: String,
    },
}

/// What `StatusQuery` answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub public_key: PublicKey,
    /// Peer masternodes with an authenticated outbound connection.
    pub peers_connected: u32,
    pub peers_total: u32,
    pub pending: u32,
    pub finalized: u64,
    pub rejected: u64,
    /// The node approves nothing yet: it is catching up with its peers (or
    /// cannot reach a quorum of them). Encoded as one byte, 0 or 1.
    pub catching_up: bool,
    /// The block layer, if it runs (a byte 0/1, then the fields).
    pub blocks: Option<BlockStatus>,
}

/// Where a node's chain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStatus {
    pub height: u64,
    pub tip: crate::blocks::BlockHash,
    /// The tip block's time (ms since the epoch; 0 for the genesis).
    pub tip_time_ms: u64,
    /// A peer showed blocks above the tip: the node is syncing.
    pub syncing: bool,
    /// Final payments not yet in a block.
    pub unconfirmed: u32,
}

mod tag {
    pub const HELLO: u8 = 0x01;
    pub const HELLO_AUTH: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const PONG: u8 = 0x04;
    pub const SUBMIT_TX: u8 = 0x10;
    pub const TX_BROADCAST: u8 = 0x11;
    pub const VOTE_BATCH: u8 = 0x12;
    pub const TIME_PROOF: u8 = 0x13;
    pub const PROOF_REQUEST: u8 = 0x14;
    pub const TX_ACCEPTED: u8 = 0x15;
    pub const TX_REJECTED: u8 = 0x16;
    pub const UTXO_QUERY: u8 = 0x20;
    pub const ADDRESS_QUERY: u8 = 0x21;
    pub const UTXO_RESPONSE: u8 = 0x22;
    pub const SUBSCRIBE: u8 = 0x23;
    pub const UTXO_NOTIFICATION: u8 = 0x24;
    pub const NEW_TX_NOTIFICATION: u8 = 0x25;
    pub const REPAIR_REQUEST: u8 = 0x17;
    pub const REPAIR: u8 = 0x18;
    pub const FAST_PATH_SEQ: u8 = 0x19;
    pub const FINALITY_LOG_REQUEST: u8 = 0x1a;
    pub const FINALITY_LOG_PAGE: u8 = 0x1b;
    pub const BLOCK_PROPOSAL: u8 = 0x1c;
    pub const BLOCK_VOTE: u8 = 0x1d;
    pub const BLOCK_REQUEST: u8 = 0x1e;
    pub const COMMITTED_BLOCK: u8 = 0x1f;
    pub const STATUS_QUERY: u8 = 0x30;
    pub const STATUS: u8 = 0x31;
    pub const ERROR: u8 = 0x7f;
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    put_var_bytes(out, &b[..b.len().min(MAX_DETAIL_BYTES)]);
}

fn get_str(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let b = r.var_bytes("text", MAX_DETAIL_BYTES)?;
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Invalid { what: "utf-8 text" })
}

/// A byte that must be 0 (false) or 1 (true).
fn flag(r: &mut Reader<'_>, what: &'static str) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        tag => Err(DecodeError::UnknownTag { what, tag }),
    }
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAuth(_) => "hello-auth",
            Message::Ping(_) => "ping",
            Message::Pong(_) => "pong",
            Message::SubmitTransaction(_) => "submit-transaction",
            Message::TransactionBroadcast(_) => "transaction-broadcast",
            Message::VoteBatch(_) => "vote-batch",
            Message::TimeProof { .. } => "time-proof",
            Message::ProofRequest(_) => "proof-request",
            Message::TransactionAccepted(_) => "transaction-accepted",
            Message::TransactionRejected { .. } => "transaction-rejected",
            Message::UtxoStateQuery(_) => "utxo-state-query",
            Message::AddressQuery(_) => "address-query",
            Message::UtxoStateResponse(_) => "utxo-state-response",
            Message::WalletSubscribe(_) => "wallet-subscribe",
            Message::UtxoStateNotification { .. } => "utxo-state-notification",
            Message::NewTransactionNotification { .. } => "new-transaction-notification",
            Message::RepairRequest { .. } => "repair-request",
            Message::Repair(_) => "repair",
            Message::FastPathSeq { .. } => "fast-path-seq",
            Message::FinalityLogRequest { .. } => "finality-log-request",
            Message::FinalityLogPage { .. } => "finality-log-page",
            Message::BlockProposal(_) => "block-proposal",
            Message::BlockVote(_) => "block-vote",
            Message::BlockRequest { .. } => "block-request",
            Message::CommittedBlock(_) => "committed-block",
            Message::StatusQuery => "status-query",
            Message::Status(_) => "status",
            Message::Error { .. } => "error",
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello(h) => {
                out.push(tag::HELLO);
                out.extend_from_slice(&h.chain_id.to_le_bytes());
                out.extend_from_slice(&h.protocol_version.to_le_bytes());
                out.push(h.role.code());
                out.extend_from_slice(&h.public_key.0);
                out.extend_from_slice(&h.nonce);
            }
            Message::HelloAuth(sig) => {
                out.push(tag::HELLO_AUTH);
                out.extend_from_slice(sig);
            }
            Message::Ping(n) => {
                out.push(tag::PING);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Message::Pong(n) => {
                out.push(tag::PONG);
                out.extend_from_slice(&n.to_le_bytes());
            }
            Message::SubmitTransaction(tx) => {
                out.push(tag::SUBMIT_TX);
                tx.encode(out);
            }
            Message::TransactionBroadcast(tx) => {
                out.push(tag::TX_BROADCAST);
                tx.encode(out);
            }
            Message::VoteBatch(b) => {
                out.push(tag::VOTE_BATCH);
                b.encode(out);
            }
            Message::TimeProof { tx, proof } => {
                out.push(tag::TIME_PROOF);
                tx.encode(out);
                proof.encode(out);
            }
            Message::ProofRequest(t) => {
                out.push(tag::PROOF_REQUEST);
                out.extend_from_slice(&t.0);
            }
            Message::TransactionAccepted(t) => {
                out.push(tag::TX_ACCEPTED);
                out.extend_from_slice(&t.0);
            }
            Message::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            } => {
                out.push(tag::TX_REJECTED);
                out.extend_from_slice(&txid.0);
                out.extend_from_slice(&reason.code().to_le_bytes());
                put_str(out, detail);
                let n = rejecters.len().min(MAX_REJECTERS);
                out.extend_from_slice(&(n as u32).to_le_bytes());
                for (k, c) in &rejecters[..n] {
                    out.extend_from_slice(&k.0);
                    out.extend_from_slice(&c.code().to_le_bytes());
                }
            }
            Message::UtxoStateQuery(ops) => {
                out.push(tag::UTXO_QUERY);
                out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
                for op in ops {
                    op.encode(out);
                }
            }
            Message::AddressQuery(a) => {
                out.push(tag::ADDRESS_QUERY);
                out.extend_from_slice(&a.0);
            }
            Message::UtxoStateResponse(items) => {
                out.push(tag::UTXO_RESPONSE);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for (op, e) in items {
                    op.encode(out);
                    match e {
                        None => out.push(0),
                        Some(e) => {
                            out.push(1);
                            e.encode(out);
                        }
                    }
                }
            }
            Message::WalletSubscribe(addrs) => {
                out.push(tag::SUBSCRIBE);
                out.extend_from_slice(&(addrs.len() as u32).to_le_bytes());
                for a in addrs {
                    out.extend_from_slice(&a.0);
                }
            }
            Message::UtxoStateNotification { outpoint, entry } => {
                out.push(tag::UTXO_NOTIFICATION);
                outpoint.encode(out);
                entry.encode(out);
            }
            Message::NewTransactionNotification { txid, tx } => {
                out.push(tag::NEW_TX_NOTIFICATION);
                out.extend_from_slice(&txid.0);
                tx.encode(out);
            }
            Message::RepairRequest { first, last } => {
                out.push(tag::REPAIR_REQUEST);
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&last.to_le_bytes());
            }
            Message::Repair(d) => {
                out.push(tag::REPAIR);
                put_var_bytes(out, d);
            }
            Message::FastPathSeq { next } => {
                out.push(tag::FAST_PATH_SEQ);
                out.extend_from_slice(&next.to_le_bytes());
            }
            Message::FinalityLogRequest { from } => {
                out.push(tag::FINALITY_LOG_REQUEST);
                out.extend_from_slice(&from.to_le_bytes());
            }
            Message::FinalityLogPage { from, head, txids } => {
                out.push(tag::FINALITY_LOG_PAGE);
                out.extend_from_slice(&from.to_le_bytes());
                out.extend_from_slice(&head.to_le_bytes());
                let n = txids.len().min(MAX_LOG_PAGE);
                out.extend_from_slice(&(n as u32).to_le_bytes());
                for t in &txids[..n] {
                    out.extend_from_slice(&t.0);
                }
            }
            Message::BlockProposal(p) => {
                out.push(tag::BLOCK_PROPOSAL);
                p.encode(out);
            }
            Message::BlockVote(v) => {
                out.push(tag::BLOCK_VOTE);
                v.encode(out);
            }
            Message::BlockRequest { from } => {
                out.push(tag::BLOCK_REQUEST);
                out.extend_from_slice(&from.to_le_bytes());
            }
            Message::CommittedBlock(c) => {
                out.push(tag::COMMITTED_BLOCK);
                c.block.encode(out);
                c.cert.encode(out);
            }
            Message::StatusQuery => out.push(tag::STATUS_QUERY),
            Message::Status(st) => {
                out.push(tag::STATUS);
                out.extend_from_slice(&st.public_key.0);
                out.extend_from_slice(&st.peers_connected.to_le_bytes());
                out.extend_from_slice(&st.peers_total.to_le_bytes());
                out.extend_from_slice(&st.pending.to_le_bytes());
                out.extend_from_slice(&st.finalized.to_le_bytes());
                out.extend_from_slice(&st.rejected.to_le_bytes());
                out.push(st.catching_up as u8);
                match &st.blocks {
                    None => out.push(0),
                    Some(b) => {
                        out.push(1);
                        out.extend_from_slice(&b.height.to_le_bytes());
                        out.extend_from_slice(&b.tip.0);
                        out.extend_from_slice(&b.tip_time_ms.to_le_bytes());
                        out.push(b.syncing as u8);
                        out.extend_from_slice(&b.unconfirmed.to_le_bytes());
                    }
                }
            }
            Message::Error { code, detail } => {
                out.push(tag::ERROR);
                out.extend_from_slice(&code.to_le_bytes());
                put_str(out, detail);
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes one whole frame. Never panics; every count is capped.
    pub fn decode(frame: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(frame);
        let t = r.u8()?;
        let m = match t {
            tag::HELLO => Message::Hello(Hello {
                chain_id: r.u32()?,
                protocol_version: r.u16()?,
                role: match r.u8()? {
                    1 => Role::Masternode,
                    2 => Role::Wallet,
                    tag => return Err(DecodeError::UnknownTag { what: "role", tag }),
                },
                public_key: PublicKey(r.array()?),
                nonce: r.array()?,
            }),
            tag::HELLO_AUTH => Message::HelloAuth(r.array()?),
            tag::PING => Message::Ping(r.u64()?),
            tag::PONG => Message::Pong(r.u64()?),
            tag::SUBMIT_TX => Message::SubmitTransaction(Transaction::decode(&mut r)?),
            tag::TX_BROADCAST => Message::TransactionBroadcast(Transaction::decode(&mut r)?),
            tag::VOTE_BATCH => Message::VoteBatch(VoteBatch::decode(&mut r)?),
            tag::TIME_PROOF => Message::TimeProof {
                tx: Transaction::decode(&mut r)?,
                proof: TimeProof::decode(&mut r)?,
            },
            tag::PROOF_REQUEST => Message::ProofRequest(Txid(r.array()?)),
            tag::TX_ACCEPTED => Message::TransactionAccepted(Txid(r.array()?)),
            tag::TX_REJECTED => {
                let txid = Txid(r.array()?);
                let reason = RejectCode::from_code(r.u16()?);
                let detail = get_str(&mut r)?;
                let n = r.count("rejecters", MAX_REJECTERS, 34)?;
                let mut rejecters = Vec::with_capacity(n);
                for _ in 0..n {
                    rejecters.push((PublicKey(r.array()?), RejectCode::from_code(r.u16()?)));
                }
                Message::TransactionRejected {
                    txid,
                    reason,
                    detail,
                    rejecters,
                }
            }
            tag::UTXO_QUERY => {
                let n = r.count("outpoints", MAX_QUERY_OUTPOINTS, OutPoint::ENCODED_LEN)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(OutPoint::decode(&mut r)?);
                }
                Message::UtxoStateQuery(v)
            }
            tag::ADDRESS_QUERY => Message::AddressQuery(Address(r.array()?)),
            tag::UTXO_RESPONSE => {
                let n = r.count(
                    "utxo states",
                    MAX_QUERY_OUTPOINTS,
                    OutPoint::ENCODED_LEN + 1,
                )?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    let op = OutPoint::decode(&mut r)?;
                    let e = match r.u8()? {
                        0 => None,
                        1 => Some(UtxoEntry::decode(&mut r)?),
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                what: "option",
                                tag,
                            })
                        }
                    };
                    v.push((op, e));
                }
                Message::UtxoStateResponse(v)
            }
            tag::SUBSCRIBE => {
                let n = r.count("addresses", MAX_SUBSCRIBE_ADDRESSES, 20)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(Address(r.array()?));
                }
                Message::WalletSubscribe(v)
            }
            tag::UTXO_NOTIFICATION => Message::UtxoStateNotification {
                outpoint: OutPoint::decode(&mut r)?,
                entry: UtxoEntry::decode(&mut r)?,
            },
            tag::NEW_TX_NOTIFICATION => Message::NewTransactionNotification {
                txid: Txid(r.array()?),
                tx: Transaction::decode(&mut r)?,
            },
            tag::REPAIR_REQUEST => Message::RepairRequest {
                first: r.u64()?,
                last: r.u64()?,
            },
            tag::REPAIR => Message::Repair(
                r.var_bytes("datagram", crate::codec::MAX_DATAGRAM_LEN)?
                    .to_vec(),
            ),
            tag::FAST_PATH_SEQ => Message::FastPathSeq { next: r.u64()? },
            tag::FINALITY_LOG_REQUEST => Message::FinalityLogRequest { from: r.u64()? },
            tag::FINALITY_LOG_PAGE => {
                let from = r.u64()?;
                let head = r.u64()?;
                let n = r.count("finality log txids", MAX_LOG_PAGE, 32)?;
                let mut txids = Vec::with_capacity(n);
                for _ in 0..n {
                    txids.push(Txid(r.array()?));
                }
                Message::FinalityLogPage { from, head, txids }
            }
            tag::BLOCK_PROPOSAL => Message::BlockProposal(Box::new(Proposal::decode(&mut r)?)),
            tag::BLOCK_VOTE => Message::BlockVote(BlockVote::decode(&mut r)?),
            tag::BLOCK_REQUEST => Message::BlockRequest { from: r.u64()? },
            tag::COMMITTED_BLOCK => Message::CommittedBlock(Box::new(CommittedBlock {
                block: Block::decode(&mut r)?,
                cert: CommitCertificate::decode(&mut r)?,
            })),
            tag::STATUS_QUERY => Message::StatusQuery,
            tag::STATUS => Message::Status(NodeStatus {
                public_key: PublicKey(r.array()?),
                peers_connected: r.u32()?,
                peers_total: r.u32()?,
                pending: r.u32()?,
                finalized: r.u64()?,
                rejected: r.u64()?,
                catching_up: flag(&mut r, "catching-up flag")?,
                blocks: match r.u8()? {
                    0 => None,
                    1 => Some(BlockStatus {
                        height: r.u64()?,
                        tip: crate::blocks::BlockHash(r.array()?),
                        tip_time_ms: r.u64()?,
                        syncing: flag(&mut r, "syncing flag")?,
                        unconfirmed: r.u32()?,
                    }),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "block status",
                            tag,
                        })
                    }
                },
            }),
            tag::ERROR => Message::Error {
                code: r.u16()?,
                detail: get_str(&mut r)?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "message",
                    tag,
                })
            }
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
#[path = "message_tests.rs"]
pub(crate) mod tests;
