//! An async client for one masternode's wallet port.
//!
//! The handshake (`docs/PROTOCOL.md`, Handshake): the wallet sends a `Hello`
//! with a fresh nonce and no key; the masternode answers with its `Hello` and
//! a proof of its key over both `Hello`s, which the client verifies (and,
//! with [`WalletClient::connect_registered`], checks the key against the
//! genesis registry). A refusal comes back as [`ClientError::Refused`] with
//! the masternode's reason.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use time_net::{FrameError, FrameReader, FrameWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::protocol::message::{
    refusal, verify_handshake, Hello, Message, NodeStatus, Role, Side, PROTOCOL_VERSION,
};
use crate::protocol::registry::Registry;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, ChainId, OutPoint, PublicKey, Transaction, TxOutput, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::validation::RejectCode;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connection: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed message from the masternode: {0}")]
    Decode(#[from] time_net::DecodeError),
    #[error("handshake: {0}")]
    Handshake(&'static str),
    /// The masternode refused the handshake with an `Error` frame (`code`
    /// from [`refusal`]).
    /// Locked at the masternode, but no TimeProof in time.
    #[error("transaction {txid} is locked but not final within {wait:?}: too few masternodes may be voting (quorum lost?). It may still finalize: ask again with the same transaction, or check the masternodes (time-cli getpeerinfo)")]
    NotFinal { txid: Txid, wait: Duration },
    /// The masternode kept answering "catching up": it reaches too few
    /// masternodes to finalize anything.
    #[error("no finality within {wait:?}: the masternode is catching up or reaches too few masternodes for a quorum; check that more than 2/3 of the masternode weight is running and connected (time-cli getpeerinfo), then retry")]
    NoQuorum { wait: Duration },
    /// A coin the wallet chose cannot be spent by its key.
    #[error("coin {outpoint} cannot be spent: {why}")]
    Coin { outpoint: OutPoint, why: String },
    /// The masternode serves another chain than the wallet's genesis.
    #[error("refused by {addr}: wrong chain id: {detail}. The masternode serves another network than the genesis file given: use that network's genesis (--genesis), or another masternode")]
    WrongChain { addr: SocketAddr, detail: String },
    #[error("refused by {addr}: {} (code {code}): {detail}", refusal::describe(*.code))]
    Refused {
        addr: SocketAddr,
        code: u16,
        detail: String,
    },
    #[error("{addr} proved the key {key}, which is not a masternode in the genesis registry")]
    NotRegistered { addr: SocketAddr, key: PublicKey },
    #[error("unexpected {0} message")]
    Unexpected(&'static str),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "not enough funds: {} TIME spendable, {} TIME needed (amount + fee); wait for pending payments or send less",
        crate::wallet::format_amount(*.have),
        crate::wallet::format_amount(*.need)
    )]
    InsufficientFunds { have: u64, need: u64 },
}

/// How a submitted transaction ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Finalized {
        tx: Transaction,
        proof: TimeProof,
    },
    Rejected {
        reason: RejectCode,
        detail: String,
        rejecters: Vec<(PublicKey, RejectCode)>,
    },
}

pub struct WalletClient {
    reader: FrameReader<OwnedReadHalf>,
    writer: FrameWriter<OwnedWriteHalf>,
    pub node_key: PublicKey,
    pub chain_id: ChainId,
}

/// How long [`WalletClient::submit`] waits before asking a catching-up
/// masternode again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(200);

impl WalletClient {
    /// Connects and runs the wallet side of the handshake: the masternode
    /// must prove its key over the transcript of this connection. Which key
    /// it is is not checked (see [`connect_registered`](Self::connect_registered)).
    pub async fn connect(addr: SocketAddr, chain_id: ChainId) -> Result<Self, ClientError> {
        Self::connect_with(addr, chain_id, None, None).await
    }

    /// [`connect`](Self::connect) from the local address `local` (a load
    /// generator spreading its connections over 127.0.0.0/8 sources).
    pub async fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        chain_id: ChainId,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, chain_id, None, Some(local)).await
    }

    /// [`connect`](Self::connect), and the proven key must be a masternode
    /// of `registry` (the genesis the wallet holds).
    pub async fn connect_registered(
        addr: SocketAddr,
        chain_id: ChainId,
        registry: &Registry,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, chain_id, Some(registry), None).await
    }

    async fn connect_with(
        addr: SocketAddr,
        chain_id: ChainId,
        registry: Option<&Registry>,
        local: Option<std::net::IpAddr>,
    ) -> Result<Self, ClientError> {
        let dial = async {
            let Some(ip) = local else {
                return TcpStream::connect(addr).await;
            };
            let socket = match ip {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), dial)
            .await
            .map_err(|_| ClientError::Timeout(Duration::from_secs(5)))?
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ClientError::Connect { addr, source })?;
        let (r, w) = stream.into_split();
        let mut c = WalletClient {
            reader: FrameReader::new(r, 4 * 1024 * 1024),
            writer: FrameWriter::new(w),
            node_key: PublicKey::default(),
            chain_id,
        };
        let ours = Hello {
            chain_id,
            protocol_version: PROTOCOL_VERSION,
            role: Role::Wallet,
            public_key: PublicKey::default(),
            nonce: rand::random(),
        };
        c.send(&Message::Hello(ours.clone())).await?;
        let refused = |code, detail| match code {
            refusal::WRONG_CHAIN => ClientError::WrongChain { addr, detail },
            _ => ClientError::Refused { addr, code, detail },
        };
        let theirs = match c.recv_timeout(Duration::from_secs(5)).await? {
            Message::Hello(h) => h,
            Message::Error { code, detail } => return Err(refused(code, detail)),
            m => return Err(ClientError::Unexpected(m.name())),
        };
        if theirs.chain_id != chain_id {
            return Err(ClientError::WrongChain {
                addr,
                detail: format!(
                    "it answered for chain {}, the genesis is chain {chain_id}",
                    theirs.chain_id
                ),
            });
        }
        if theirs.protocol_version != PROTOCOL_VERSION || theirs.role != Role::Masternode {
            return Err(ClientError::Handshake(
                "the masternode answered with another protocol version or role",
            ));
        }
        if registry.is_some_and(|r| r.get(&theirs.public_key).is_none()) {
            return Err(ClientError::NotRegistered {
                addr,
                key: theirs.public_key,
            });
        }
        match c.recv_timeout(Duration::from_secs(5)).await? {
            Message::HelloAuth(sig) if verify_handshake(Side::Acceptor, &ours, &theirs, &sig) => {}
            Message::Error { code, detail } => return Err(refused(code, detail)),
            _ => {
                return Err(ClientError::Handshake(
                    "masternode key proof does not verify",
                ))
            }
        }
        c.node_key = theirs.public_key;
        Ok(c)
    }

    pub async fn send(&mut self, m: &Message) -> Result<(), ClientError> {
        self.writer.send(&m.to_bytes()).await?;
        Ok(())
    }

    /// Queues without flushing (for pipelined submission).
    pub fn push(&mut self, m: &Message) -> Result<(), ClientError> {
        self.writer.push(&m.to_bytes())?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        Ok(Message::decode(self.reader.read_frame().await?)?)
    }

    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Message, ClientError> {
        tokio::time::timeout(d, self.recv())
            .await
            .map_err(|_| ClientError::Timeout(d))?
    }

    pub fn into_split(self) -> (FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }

    /// Submits and waits for finality or rejection.
    pub async fn submit(
        &mut self,
        tx: &Transaction,
        wait: Duration,
    ) -> Result<Outcome, ClientError> {
        let txid = tx.txid();
        self.send(&Message::SubmitTransaction(tx.clone())).await?;
        let deadline = tokio::time::Instant::now() + wait;
        // What the masternode said last, to explain a timeout.
        let mut heard = Heard::Nothing;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = match self.recv_timeout(left).await {
                Ok(m) => m,
                Err(ClientError::Timeout(_)) => {
                    return Err(match heard {
                        Heard::Nothing => ClientError::Timeout(wait),
                        Heard::Accepted => ClientError::NotFinal { txid, wait },
                        Heard::CatchingUp => ClientError::NoQuorum { wait },
                    })
                }
                Err(e) => return Err(e),
            };
            match m {
                Message::TransactionAccepted(t) if t == txid => heard = Heard::Accepted,
                Message::TimeProof { tx, proof } if proof.txid == txid => {
                    return Ok(Outcome::Finalized { tx, proof })
                }
                Message::TransactionRejected {
                    txid: t,
                    reason: RejectCode::CatchingUp,
                    ..
                } if t == txid && deadline > tokio::time::Instant::now() + CATCH_UP_RETRY => {
                    // The masternode is catching up with its peers (or
                    // reaches too few of them): nothing was locked; ask
                    // again shortly, within the caller's wait.
                    heard = Heard::CatchingUp;
                    tokio::time::sleep(CATCH_UP_RETRY).await;
                    self.send(&Message::SubmitTransaction(tx.clone())).await?;
                }
                Message::TransactionRejected {
                    txid: t,
                    reason,
                    detail,
                    rejecters,
                } if t == txid => {
                    return Ok(Outcome::Rejected {
                        reason,
                        detail,
                        rejecters,
                    })
                }
                _ => {} // Accepted, or notifications: keep waiting.
            }
        }
    }

    pub async fn request(&mut self, m: &Message) -> Result<Message, ClientError> {
        self.send(m).await?;
        self.recv_timeout(Duration::from_secs(10)).await
    }

    pub async fn status(&mut self) -> Result<NodeStatus, ClientError> {
        match self.request(&Message::StatusQuery).await? {
            Message::Status(s) => Ok(s),
            m => Err(ClientError::Unexpected(m.name())),
        }
    }

    pub async fn utxos(
        &mut self,
        address: Address,
    ) -> Result<Vec<(OutPoint, UtxoEntry)>, ClientError> {
        match self.request(&Message::AddressQuery(address)).await? {
            Message::UtxoStateResponse(v) => Ok(v
                .into_iter()
                .filter_map(|(op, e)| e.map(|e| (op, e)))
                .collect()),
            m => Err(ClientError::Unexpected(m.name())),
        }
    }

    pub async fn utxo_states(
        &mut self,
        ops: Vec<OutPoint>,
    ) -> Result<Vec<(OutPoint, Option<UtxoEntry>)>, ClientError> {
        match self.request(&Message::UtxoStateQuery(ops)).await? {
            Message::UtxoStateResponse(v) => Ok(v),
            m => Err(ClientError::Unexpected(m.name())),
        }
    }

    /// Builds and signs a payment of `amount` to `to` from `key`'s unspent
    /// coins, with change back to `key`.
    pub async fn build_payment(
        &mut self,
        key: &SigningKey,
        to: Address,
        amount: u64,
        fee: u64,
    ) -> Result<Transaction, ClientError> {
        let me = Address::from_public_key(&PublicKey::from_signing(key));
        let coins = self.utxos(me).await?;
        let need = amount.saturating_add(fee);
        let mut picked = Vec::new();
        let mut have = 0u64;
        for (op, e) in coins.iter().filter(|(_, e)| e.state == UtxoState::Unspent) {
            if have >= need {
                break;
            }
            picked.push(*op);
            have += e.output.amount;
        }
        self.sign_payment(key, picked, have, to, amount, fee)
    }

    /// [`build_payment`](Self::build_payment) from the coins `coins` the
    /// wallet chose: each must be unspent and paid to `key`'s address.
    pub async fn build_payment_from(
        &mut self,
        key: &SigningKey,
        coins: &[OutPoint],
        to: Address,
        amount: u64,
        fee: u64,
    ) -> Result<Transaction, ClientError> {
        let me = Address::from_public_key(&PublicKey::from_signing(key));
        let mut have = 0u64;
        for (op, e) in self.utxo_states(coins.to_vec()).await? {
            let why = match e {
                None => Some("no such output on this masternode".to_string()),
                Some(e) if e.output.address != me => {
                    Some(format!("it pays {}, not this key's {me}", e.output.address))
                }
                Some(e) if e.state != UtxoState::Unspent => {
                    Some(format!("it is {}, not unspent", e.state.name()))
                }
                Some(e) => {
                    have = have.saturating_add(e.output.amount);
                    None
                }
            };
            if let Some(why) = why {
                return Err(ClientError::Coin { outpoint: op, why });
            }
        }
        self.sign_payment(key, coins.to_vec(), have, to, amount, fee)
    }

    fn sign_payment(
        &self,
        key: &SigningKey,
        picked: Vec<OutPoint>,
        have: u64,
        to: Address,
        amount: u64,
        fee: u64,
    ) -> Result<Transaction, ClientError> {
        let me = Address::from_public_key(&PublicKey::from_signing(key));
        let need = amount.saturating_add(fee);
        if have < need {
            return Err(ClientError::InsufficientFunds { have, need });
        }
        let mut outputs = vec![TxOutput {
            amount,
            address: to,
        }];
        let change = have - need;
        if change >= 546 {
            outputs.push(TxOutput {
                amount: change,
                address: me,
            });
        }
        Ok(Transaction::build_signed(
            self.chain_id,
            key,
            &picked,
            outputs,
        ))
    }
}

/// What a submission heard before it timed out.
enum Heard {
    Nothing,
    Accepted,
    CatchingUp,
}

/// Verifies a proof against the registry, for wallets that hold the genesis.
pub fn verify_proof(
    proof: &TimeProof,
    chain_id: ChainId,
    registry: &Registry,
    txid: &Txid,
) -> bool {
    proof.txid == *txid && proof.verify(chain_id, registry).is_ok()
}
