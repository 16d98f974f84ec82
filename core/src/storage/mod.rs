//! Durable state behind a narrow trait. The engine keeps its working set in
//! memory and emits [`Write`]s; the runtime makes each round's writes
//! durable as one unit (group commit) *before* releasing that round's
//! messages, so a vote is durable before it leaves the node. The node does
//! it with one write-ahead log record per round, applied to LMDB later;
//! [`Store::apply`] promises that later reads see the writes, and that they
//! survive a crash once it returns.

pub mod block_records;
pub mod memory;
pub mod records;

pub use crate::blocks::certificate::CommittedBlock;
use crate::blocks::certificate::ForkEvidence;
use crate::blocks::consensus::{Candidate, OwnBlockVote};
use crate::blocks::evidence::{BlockEvidence, Contradiction};
use crate::protocol::evidence::{ConflictingApprovals, Equivocation};
use crate::protocol::registry::Registry;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{ChainId, OutPoint, Transaction, Txid};
use crate::protocol::utxo::UtxoEntry;
use crate::protocol::vote::VoteBatch;

pub use memory::MemoryStore;

/// One durable change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    PutUtxo(OutPoint, UtxoEntry),
    PutTransaction(Txid, Transaction),
    PutProof(TimeProof),
    /// A batch of this node's own signed votes: the vote log.
    AppendOwnVotes(VoteBatch),
    /// A transaction this node finalized (its proof is stored in the same
    /// round): appended to the finality log peers catch up from.
    AppendFinality(Txid),
    /// A transaction this node approved that can no longer reach the quorum
    /// (its votes split): its locks stay, but after a restart it is not
    /// loaded as pending and does not count against the mempool limit.
    PutStuck(Txid),
    /// Two contradicting certificates of one voter (kept as evidence).
    PutEvidence(Equivocation),
    /// One voter's approvals of two transactions spending one output (kept
    /// as evidence, one record per voter and output).
    PutApprovalEvidence(Box<ConflictingApprovals>),
    /// A committed block and its certificate: the new tip.
    PutBlock(Box<CommittedBlock>),
    /// What this node signed in the block consensus (before it is sent).
    AppendOwnBlockVote(OwnBlockVote),
    /// A block this node proposed or locked on, until its height is decided.
    PutCandidate(Box<Candidate>),
    /// Two commit certificates at one height: block processing stops.
    PutForkEvidence(Box<ForkEvidence>),
    /// A proposer's or voter's misbehaviour in the block consensus (one
    /// record per [`crate::blocks::BlockEvidenceKey`]).
    PutBlockEvidence(Box<BlockEvidence>),
    /// A committed block contradicted a payment final here: block
    /// processing stops, and stays stopped across restarts (the first
    /// record is kept).
    PutBlockStop(Contradiction),
    /// Drops this node's own consensus records and candidates at heights
    /// below `below`, which is at least [`crate::masternode::blocks::BLOCK_RECORDS_KEPT`]
    /// below a committed block stored earlier or in the same transaction:
    /// no vote for those heights can ever be signed again.
    PruneBlockRecords {
        below: u64,
    },
    /// The operator resumes block processing (`time-masternode
    /// clear-block-stop`; never written by the state machine).
    ClearBlockStop,
    /// Every transaction of the committed blocks up to this height is
    /// confirmed in the UTXO set (a large block's are confirmed over
    /// several rounds after the one that stored it). Below the stored tip
    /// after a crash: the tip is confirmed again at start.
    PutConfirmedThrough(u64),
}

/// What a node needs in memory at start.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The outputs held for a transaction (`Locked`, `SpentPending`): the
    /// engine keeps them in memory; every other output is read from the
    /// store when needed ([`Store::utxo_source`]).
    pub held_utxos: Vec<(OutPoint, UtxoEntry)>,
    /// Transactions that are not yet final (their inputs are Locked/SpentPending),
    /// except the stuck ones.
    pub pending_transactions: Vec<Transaction>,
    /// Transactions holding locks that can no longer reach the quorum.
    pub stuck_transactions: Vec<Transaction>,
    /// Length of the finality log.
    pub finality_log_len: u64,
    /// Txids with a stored TimeProof.
    pub finalized: Vec<Txid>,
    /// Every vote batch this node signed, oldest first.
    pub own_votes: Vec<VoteBatch>,
    /// Final transactions not yet in a block (an input `SpentFinalized`),
    /// in no particular order: the block layer's queue after a restart.
    pub unconfirmed_transactions: Vec<Transaction>,
    /// Payments a committed block confirmed (an input `Confirmed` by them)
    /// whose TimeProof is not stored: the engine still wants their proofs
    /// after a restart (the catch-up fetches them; wallets resubmitting
    /// there get them).
    pub unproven_transactions: Vec<Transaction>,
    /// A finality-log position at or before the entry of every transaction
    /// in `unconfirmed_transactions` (0 if one is not in the log): where
    /// the block layer pages the ones it does not hold in memory from.
    pub unconfirmed_log_from: u64,
    /// The block layer's durable state.
    pub blocks: BlockSnapshot,
}

/// The block layer's state at start.
#[derive(Clone, Debug, Default)]
pub struct BlockSnapshot {
    /// The highest committed block.
    pub tip: Option<CommittedBlock>,
    /// Own consensus records above the tip, in key order.
    pub own_votes: Vec<OwnBlockVote>,
    /// Candidate blocks above the tip.
    pub candidates: Vec<Candidate>,
    /// Fork evidence, if block processing was stopped.
    pub fork: Option<ForkEvidence>,
    /// How many block evidence records the store holds.
    pub evidence_count: u64,
    /// Block processing was stopped by this contradiction.
    pub stop: Option<Contradiction>,
    /// The last [`Write::PutConfirmedThrough`] (none from a store written
    /// before it existed, which confirmed each block in the round that
    /// stored it).
    pub confirmed_through: Option<u64>,
}

/// Chain identity and registry, written once from the genesis.
#[derive(Clone, Debug)]
pub struct Genesis {
    pub chain_id: ChainId,
    pub registry: Registry,
    pub utxos: Vec<(OutPoint, UtxoEntry)>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Backend(String),
    #[error("database format version {found} is not supported (this build reads {supported})")]
    FormatVersion { found: u32, supported: u32 },
    #[error("database belongs to chain {found}, not {expected}")]
    WrongChain { found: ChainId, expected: ChainId },
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A write-ahead log record that is damaged but followed by good ones
    /// (or missing between two): not a torn last write, so records that
    /// may have been acknowledged are unreadable. The node refuses to
    /// start rather than forget votes it may have sent.
    #[error(
        "write-ahead log {segment} is damaged at byte {offset}: {detail}. This is not an \
         interrupted last write: records the node may have acted on are unreadable. Do not delete \
         the log; keep a copy of the data directory and see docs/OPERATING.md (\"write-ahead log \
         damaged\")"
    )]
    LogCorrupt {
        segment: String,
        offset: u64,
        detail: String,
    },
    /// A round too large for one log record.
    #[error("a round of {bytes} bytes exceeds the log record limit of {max} bytes")]
    RoundTooLarge { bytes: usize, max: usize },
}

/// Point reads of the UTXO set for the engine's cache
/// ([`crate::protocol::utxo_set::UtxoSet`]). It must answer with the newest
/// state of every write the store accepted (`apply`, or the node's
/// write-ahead log commit), also before a background writer put it in the
/// database.
pub trait UtxoSource: Send {
    fn utxo(&self, op: &OutPoint) -> Result<Option<UtxoEntry>, StoreError>;
}

pub trait Store: Send {
    /// Writes the genesis if the database is new; checks the chain id if not.
    fn init(&mut self, genesis: &Genesis) -> Result<(), StoreError>;
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// A reader of this store's UTXO set for the engine (see [`UtxoSource`]).
    fn utxo_source(&self) -> Box<dyn UtxoSource>;
    /// Applies all writes atomically and durably: once it returns they
    /// survive a crash, and every read sees them.
    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError>;
    fn get_proof(&self, txid: &Txid) -> Result<Option<TimeProof>, StoreError>;
    fn get_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, StoreError>;
    /// Up to `max` txids of the finality log from position `from`, and the
    /// log's length.
    fn finality_log(&self, from: u64, max: usize) -> Result<(Vec<Txid>, u64), StoreError>;
    /// Every equivocation kept as evidence, by voter then transaction.
    fn evidence(&self) -> Result<Vec<Equivocation>, StoreError>;
    /// Every conflicting-approvals record, by voter then output.
    fn approval_evidence(&self) -> Result<Vec<ConflictingApprovals>, StoreError>;
    /// Every block evidence record, by height, round, kind and offender.
    fn block_evidence(&self) -> Result<Vec<BlockEvidence>, StoreError>;
    /// The committed block at `height` with its certificate.
    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError>;
}
