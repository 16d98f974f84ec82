//! Messages sorted by audience. The wire has one tag space ([`Message`]);
//! each connection role may send only some of them. These types make that a
//! compile-time fact instead of a run-time check scattered over handlers:
//!
//! - [`Handshake`]: before a connection is authenticated (`Hello`,
//!   `HelloAuth`, `Error`);
//! - [`PeerMessage`]: masternode to masternode, after the handshake;
//! - [`WalletRequest`]: wallet to masternode; [`WalletReply`]: masternode to
//!   wallet (answers and notifications).
//!
//! Conversions go through [`Message`], so the tag bytes are the same; a
//! message outside an audience comes back as [`NotAllowed`] naming it.

use crate::protocol::message::{Hello, Message, NodeStatus};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::UtxoEntry;
use crate::protocol::validation::RejectCode;
use crate::protocol::vote::VoteBatch;

/// A message that the sender's role may not send.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name} is not allowed from a {role}")]
pub struct NotAllowed {
    pub name: &'static str,
    pub role: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    Hello(Hello),
    HelloAuth([u8; 64]),
    /// The connection is being refused for this reason.
    Error {
        code: u16,
        detail: String,
    },
}

/// What an authenticated masternode may send another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    TransactionBroadcast(Transaction),
    VoteBatch(VoteBatch),
    TimeProof {
        tx: Transaction,
        proof: TimeProof,
    },
    ProofRequest(Txid),
    FinalityLogRequest {
        from: u64,
    },
    FinalityLogPage {
        from: u64,
        head: u64,
        txids: Vec<Txid>,
    },
    RepairRequest {
        first: u64,
        last: u64,
    },
    Repair(Vec<u8>),
    FastPathSeq {
        next: u64,
    },
    BlockProposal(Box<crate::blocks::Proposal>),
    BlockVote(crate::blocks::BlockVote),
    BlockRequest {
        from: u64,
    },
    CommittedBlock(Box<crate::blocks::CommittedBlock>),
    Ping(u64),
    Pong(u64),
}

/// What a wallet may ask a masternode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalletRequest {
    SubmitTransaction(Transaction),
    UtxoStateQuery(Vec<OutPoint>),
    AddressQuery(Address),
    WalletSubscribe(Vec<Address>),
    StatusQuery,
    Ping(u64),
}

/// What a masternode tells a wallet: answers and notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalletReply {
    TransactionAccepted(Txid),
    TransactionRejected {
        txid: Txid,
        reason: RejectCode,
        detail: String,
        rejecters: Vec<(PublicKey, RejectCode)>,
    },
    /// Final: the transaction and its proof.
    TimeProof {
        tx: Transaction,
        proof: TimeProof,
    },
    UtxoStateResponse(Vec<(OutPoint, Option<UtxoEntry>)>),
    UtxoStateNotification {
        outpoint: OutPoint,
        entry: UtxoEntry,
    },
    NewTransactionNotification {
        txid: Txid,
        tx: Transaction,
    },
    Status(NodeStatus),
    Pong(u64),
    Error {
        code: u16,
        detail: String,
    },
}

fn not_allowed(m: &Message, role: &'static str) -> NotAllowed {
    NotAllowed {
        name: m.name(),
        role,
    }
}

impl TryFrom<Message> for Handshake {
    type Error = NotAllowed;
    fn try_from(m: Message) -> Result<Self, NotAllowed> {
        Ok(match m {
            Message::Hello(h) => Handshake::Hello(h),
            Message::HelloAuth(s) => Handshake::HelloAuth(s),
            Message::Error { code, detail } => Handshake::Error { code, detail },
            m => return Err(not_allowed(&m, "connection before its handshake")),
        })
    }
}

impl From<Handshake> for Message {
    fn from(h: Handshake) -> Message {
        match h {
            Handshake::Hello(h) => Message::Hello(h),
            Handshake::HelloAuth(s) => Message::HelloAuth(s),
            Handshake::Error { code, detail } => Message::Error { code, detail },
        }
    }
}

impl TryFrom<Message> for PeerMessage {
    type Error = NotAllowed;
    fn try_from(m: Message) -> Result<Self, NotAllowed> {
        Ok(match m {
            Message::TransactionBroadcast(tx) => PeerMessage::TransactionBroadcast(tx),
            Message::VoteBatch(b) => PeerMessage::VoteBatch(b),
            Message::TimeProof { tx, proof } => PeerMessage::TimeProof { tx, proof },
            Message::ProofRequest(t) => PeerMessage::ProofRequest(t),
            Message::FinalityLogRequest { from } => PeerMessage::FinalityLogRequest { from },
            Message::FinalityLogPage { from, head, txids } => {
                PeerMessage::FinalityLogPage { from, head, txids }
            }
            Message::RepairRequest { first, last } => PeerMessage::RepairRequest { first, last },
            Message::Repair(d) => PeerMessage::Repair(d),
            Message::FastPathSeq { next } => PeerMessage::FastPathSeq { next },
            Message::BlockProposal(p) => PeerMessage::BlockProposal(p),
            Message::BlockVote(v) => PeerMessage::BlockVote(v),
            Message::BlockRequest { from } => PeerMessage::BlockRequest { from },
            Message::CommittedBlock(c) => PeerMessage::CommittedBlock(c),
            Message::Ping(n) => PeerMessage::Ping(n),
            Message::Pong(n) => PeerMessage::Pong(n),
            m => return Err(not_allowed(&m, "masternode")),
        })
    }
}

impl From<PeerMessage> for Message {
    fn from(p: PeerMessage) -> Message {
        match p {
            PeerMessage::TransactionBroadcast(tx) => Message::TransactionBroadcast(tx),
            PeerMessage::VoteBatch(b) => Message::VoteBatch(b),
            PeerMessage::TimeProof { tx, proof } => Message::TimeProof { tx, proof },
            PeerMessage::ProofRequest(t) => Message::ProofRequest(t),
            PeerMessage::FinalityLogRequest { from } => Message::FinalityLogRequest { from },
            PeerMessage::FinalityLogPage { from, head, txids } => {
                Message::FinalityLogPage { from, head, txids }
            }
            PeerMessage::RepairRequest { first, last } => Message::RepairRequest { first, last },
            PeerMessage::Repair(d) => Message::Repair(d),
            PeerMessage::FastPathSeq { next } => Message::FastPathSeq { next },
            PeerMessage::BlockProposal(p) => Message::BlockProposal(p),
            PeerMessage::BlockVote(v) => Message::BlockVote(v),
            PeerMessage::BlockRequest { from } => Message::BlockRequest { from },
            PeerMessage::CommittedBlock(c) => Message::CommittedBlock(c),
            PeerMessage::Ping(n) => Message::Ping(n),
            PeerMessage::Pong(n) => Message::Pong(n),
        }
    }
}

impl TryFrom<Message> for WalletRequest {
    type Error = NotAllowed;
    fn try_from(m: Message) -> Result<Self, NotAllowed> {
        Ok(match m {
            Message::SubmitTransaction(tx) => WalletRequest::SubmitTransaction(tx),
            Message::UtxoStateQuery(ops) => WalletRequest::UtxoStateQuery(ops),
            Message::AddressQuery(a) => WalletRequest::AddressQuery(a),
            Message::WalletSubscribe(a) => WalletRequest::WalletSubscribe(a),
            Message::StatusQuery => WalletRequest::StatusQuery,
            Message::Ping(n) => WalletRequest::Ping(n),
            m => return Err(not_allowed(&m, "wallet")),
        })
    }
}

impl From<WalletRequest> for Message {
    fn from(w: WalletRequest) -> Message {
        match w {
            WalletRequest::SubmitTransaction(tx) => Message::SubmitTransaction(tx),
            WalletRequest::UtxoStateQuery(ops) => Message::UtxoStateQuery(ops),
            WalletRequest::AddressQuery(a) => Message::AddressQuery(a),
            WalletRequest::WalletSubscribe(a) => Message::WalletSubscribe(a),
            WalletRequest::StatusQuery => Message::StatusQuery,
            WalletRequest::Ping(n) => Message::Ping(n),
        }
    }
}

impl TryFrom<Message> for WalletReply {
    type Error = NotAllowed;
    fn try_from(m: Message) -> Result<Self, NotAllowed> {
        Ok(match m {
            Message::TransactionAccepted(t) => WalletReply::TransactionAccepted(t),
            Message::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            } => WalletReply::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            },
            Message::TimeProof { tx, proof } => WalletReply::TimeProof { tx, proof },
            Message::UtxoStateResponse(v) => WalletReply::UtxoStateResponse(v),
            Message::UtxoStateNotification { outpoint, entry } => {
                WalletReply::UtxoStateNotification { outpoint, entry }
            }
            Message::NewTransactionNotification { txid, tx } => {
                WalletReply::NewTransactionNotification { txid, tx }
            }
            Message::Status(s) => WalletReply::Status(s),
            Message::Pong(n) => WalletReply::Pong(n),
            Message::Error { code, detail } => WalletReply::Error { code, detail },
            m => return Err(not_allowed(&m, "masternode to a wallet")),
        })
    }
}

impl From<WalletReply> for Message {
    fn from(w: WalletReply) -> Message {
        match w {
            WalletReply::TransactionAccepted(t) => Message::TransactionAccepted(t),
            WalletReply::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            } => Message::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters,
            },
            WalletReply::TimeProof { tx, proof } => Message::TimeProof { tx, proof },
            WalletReply::UtxoStateResponse(v) => Message::UtxoStateResponse(v),
            WalletReply::UtxoStateNotification { outpoint, entry } => {
                Message::UtxoStateNotification { outpoint, entry }
            }
            WalletReply::NewTransactionNotification { txid, tx } => {
                Message::NewTransactionNotification { txid, tx }
            }
            WalletReply::Status(s) => Message::Status(s),
            WalletReply::Pong(n) => Message::Pong(n),
            WalletReply::Error { code, detail } => Message::Error { code, detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::tests::samples;

    /// Every wire message belongs to at least one audience, converts back to
    /// itself (same tag bytes), and the audiences a role may not use refuse it.
    #[test]
    fn every_message_has_an_audience_and_round_trips() {
        for m in samples() {
            let bytes = m.to_bytes();
            let mut audiences = 0;
            if let Ok(h) = Handshake::try_from(m.clone()) {
                audiences += 1;
                assert_eq!(Message::from(h).to_bytes(), bytes);
            }
            if let Ok(p) = PeerMessage::try_from(m.clone()) {
                audiences += 1;
                assert_eq!(Message::from(p).to_bytes(), bytes);
            }
            if let Ok(w) = WalletRequest::try_from(m.clone()) {
                audiences += 1;
                assert_eq!(Message::from(w).to_bytes(), bytes);
            }
            if let Ok(w) = WalletReply::try_from(m.clone()) {
                audiences += 1;
                assert_eq!(Message::from(w).to_bytes(), bytes);
            }
            assert!(audiences >= 1, "{} belongs to no audience", m.name());
        }
    }

    #[test]
    fn roles_are_kept_apart() {
        let submit = Message::SubmitTransaction(samples_tx());
        assert!(PeerMessage::try_from(submit.clone()).is_err());
        assert!(WalletRequest::try_from(submit).is_ok());
        let bcast = Message::TransactionBroadcast(samples_tx());
        let err = WalletRequest::try_from(bcast.clone()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "transaction-broadcast is not allowed from a wallet"
        );
        assert!(PeerMessage::try_from(bcast).is_ok());
        assert!(PeerMessage::try_from(Message::StatusQuery).is_err());
    }

    fn samples_tx() -> Transaction {
        samples()
            .into_iter()
            .find_map(|m| match m {
                Message::SubmitTransaction(tx) => Some(tx),
                _ => None,
            })
            .expect("a sample transaction")
    }
}
