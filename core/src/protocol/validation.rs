//! Transaction validation: limits, signatures, amounts, fee, dust. Every
//! failure is a [`TxError`] with a stable [`RejectCode`] that travels to the
//! wallet and into reject votes.

use std::collections::HashSet;

use crate::sig;

use crate::protocol::types::{Address, ChainId, OutPoint, Transaction, Txid, COIN, TX_VERSION};
use crate::protocol::utxo::UtxoEntry;

/// Stable reason codes. Numbers never change meaning; new ones are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectCode {
    Oversized,
    NoInputs,
    NoOutputs,
    TooManyItems,
    DuplicateInput,
    UnknownInput,
    InputLocked,
    InputSpent,
    BadSignature,
    WrongOwner,
    InsufficientFunds,
    FeeTooLow,
    DustOutput,
    WrongChain,
    UnsupportedVersion,
    AmountOverflow,
    MempoolFull,
    ConflictFinalized,
    ApprovalImpossible,
    Expired,
    /// The masternode is catching up on payments finalized while it was
    /// away; retry shortly or send to another masternode.
    CatchingUp,
    /// A code this build does not know (sent by a newer peer).
    Other(u16),
}

impl RejectCode {
    pub fn code(self) -> u16 {
        use RejectCode::*;
        match self {
            Oversized => 1,
            NoInputs => 2,
            NoOutputs => 3,
            TooManyItems => 4,
            DuplicateInput => 5,
            UnknownInput => 6,
            InputLocked => 7,
            InputSpent => 8,
            BadSignature => 9,
            WrongOwner => 10,
            InsufficientFunds => 11,
            FeeTooLow => 12,
            DustOutput => 13,
            WrongChain => 14,
            UnsupportedVersion => 15,
            AmountOverflow => 16,
            MempoolFull => 17,
            ConflictFinalized => 18,
            ApprovalImpossible => 19,
            Expired => 20,
            CatchingUp => 21,
            Other(c) => c,
        }
    }

    pub fn from_code(c: u16) -> Self {
        use RejectCode::*;
        match c {
            1 => Oversized,
            2 => NoInputs,
            3 => NoOutputs,
            4 => TooManyItems,
            5 => DuplicateInput,
            6 => UnknownInput,
            7 => InputLocked,
            8 => InputSpent,
            9 => BadSignature,
            10 => WrongOwner,
            11 => InsufficientFunds,
            12 => FeeTooLow,
            13 => DustOutput,
            14 => WrongChain,
            15 => UnsupportedVersion,
            16 => AmountOverflow,
            17 => MempoolFull,
            18 => ConflictFinalized,
            19 => ApprovalImpossible,
            20 => Expired,
            21 => CatchingUp,
            c => Other(c),
        }
    }

    pub fn describe(self) -> &'static str {
        use RejectCode::*;
        match self {
            Oversized => "transaction too large",
            NoInputs => "transaction has no inputs",
            NoOutputs => "transaction has no outputs",
            TooManyItems => "too many inputs or outputs",
            DuplicateInput => "an input is spent twice",
            UnknownInput => "an input does not exist",
            InputLocked => "an input is locked by another transaction (double spend)",
            InputSpent => "an input is already spent",
            BadSignature => "invalid signature",
            WrongOwner => "input key does not own the output",
            InsufficientFunds => "outputs exceed inputs",
            FeeTooLow => "fee below the minimum",
            DustOutput => "an output is below the dust threshold",
            WrongChain => "transaction is for another network",
            UnsupportedVersion => "unsupported transaction version",
            AmountOverflow => "amounts overflow",
            MempoolFull => "masternode mempool is full",
            ConflictFinalized => "a conflicting transaction is final",
            ApprovalImpossible => "masternodes rejected it: approval can no longer reach quorum",
            Expired => "no decision before the lock timeout",
            CatchingUp => "masternode is catching up with the network; retry shortly",
            Other(_) => "unknown reason",
        }
    }
}

/// A validation failure with its detail. `code()` is what goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    #[error("transaction is {size} bytes, limit {max}")]
    Oversized { size: usize, max: usize },
    #[error("transaction has no inputs")]
    NoInputs,
    #[error("transaction has no outputs")]
    NoOutputs,
    #[error("input {0} spends an outpoint already spent by an earlier input")]
    DuplicateInput(OutPoint),
    #[error("input {0} does not exist")]
    UnknownInput(OutPoint),
    #[error("input {outpoint} is locked by transaction {holder}")]
    InputLocked { outpoint: OutPoint, holder: Txid },
    #[error("input {outpoint} is already spent by {holder}")]
    InputSpent { outpoint: OutPoint, holder: Txid },
    #[error("signature of input {0} does not verify")]
    BadSignature(usize),
    #[error("input {0}'s key does not own the output it spends")]
    WrongOwner(usize),
    #[error("outputs {outputs} + minimum fee {fee} exceed inputs {inputs}")]
    InsufficientFunds { inputs: u64, outputs: u64, fee: u64 },
    /// The inputs cover the outputs but leave less than the minimum fee.
    #[error("fee {fee} units is below the minimum {min} units: leave at least {min} units of the inputs unspent")]
    FeeTooLow { fee: u64, min: u64 },
    #[error("output {index} of {amount} units is below the dust threshold {dust}")]
    DustOutput {
        index: usize,
        amount: u64,
        dust: u64,
    },
    #[error("transaction is for chain {got}, this is chain {expected}")]
    WrongChain { got: ChainId, expected: ChainId },
    #[error("transaction version {0} is not supported")]
    UnsupportedVersion(u16),
    #[error("amounts overflow")]
    AmountOverflow,
    #[error("mempool holds {0} transactions, its limit")]
    MempoolFull(usize),
    /// The origin's admission window is full (see `EngineConfig::origin_window`).
    #[error("masternode busy: {0} payments from wallets are in flight here, its limit; retry in a moment")]
    Busy(usize),
    #[error("conflicting transaction {0} is final")]
    ConflictFinalized(Txid),
    #[error("catching up on payments finalized while this masternode was away; retry shortly")]
    CatchingUp,
}

impl TxError {
    pub fn code(&self) -> RejectCode {
        use TxError::*;
        match self {
            Oversized { .. } => RejectCode::Oversized,
            NoInputs => RejectCode::NoInputs,
            NoOutputs => RejectCode::NoOutputs,
            DuplicateInput(_) => RejectCode::DuplicateInput,
            UnknownInput(_) => RejectCode::UnknownInput,
            InputLocked { .. } => RejectCode::InputLocked,
            InputSpent { .. } => RejectCode::InputSpent,
            BadSignature(_) => RejectCode::BadSignature,
            WrongOwner(_) => RejectCode::WrongOwner,
            InsufficientFunds { .. } => RejectCode::InsufficientFunds,
            FeeTooLow { .. } => RejectCode::FeeTooLow,
            DustOutput { .. } => RejectCode::DustOutput,
            WrongChain { .. } => RejectCode::WrongChain,
            UnsupportedVersion(_) => RejectCode::UnsupportedVersion,
            AmountOverflow => RejectCode::AmountOverflow,
            MempoolFull(_) | Busy(_) => RejectCode::MempoolFull,
            ConflictFinalized(_) => RejectCode::ConflictFinalized,
            CatchingUp => RejectCode::CatchingUp,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_tx_bytes: usize,
    pub min_fee: u64,
    pub dust: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tx_bytes: 1_000_000,
            min_fee: COIN / 100,
            dust: 546,
        }
    }
}

/// Checks that need no UTXO set: version, chain, sizes, duplicates, dust,
/// amount overflow. Cheap; run before anything else.
pub fn check_stateless(
    tx: &Transaction,
    chain_id: ChainId,
    limits: &Limits,
) -> Result<(), TxError> {
    if tx.version != TX_VERSION {
        return Err(TxError::UnsupportedVersion(tx.version));
    }
    if tx.chain_id != chain_id {
        return Err(TxError::WrongChain {
            got: tx.chain_id,
            expected: chain_id,
        });
    }
    let size = tx.encoded_len();
    if size > limits.max_tx_bytes {
        return Err(TxError::Oversized {
            size,
            max: limits.max_tx_bytes,
        });
    }
    if tx.inputs.is_empty() {
        return Err(TxError::NoInputs);
    }
    if tx.outputs.is_empty() {
        return Err(TxError::NoOutputs);
    }
    let mut seen = HashSet::with_capacity(tx.inputs.len());
    for i in &tx.inputs {
        if !seen.insert(i.prev) {
            return Err(TxError::DuplicateInput(i.prev));
        }
    }
    let mut total: u64 = 0;
    for (index, o) in tx.outputs.iter().enumerate() {
        if o.amount < limits.dust {
            return Err(TxError::DustOutput {
                index,
                amount: o.amount,
                dust: limits.dust,
            });
        }
        total = total.checked_add(o.amount).ok_or(TxError::AmountOverflow)?;
    }
    Ok(())
}

/// Checks against the spent outputs (`spent[i]` is input i's entry, already
/// looked up and found): ownership, funds and fee. Does not check signatures
/// or lock states; see [`verify_signatures`] and the engine.
pub fn check_amounts_and_owners(
    tx: &Transaction,
    spent: &[UtxoEntry],
    limits: &Limits,
) -> Result<(), TxError> {
    let mut inputs: u64 = 0;
    for (i, (input, entry)) in tx.inputs.iter().zip(spent).enumerate() {
        if Address::from_public_key(&input.public_key) != entry.output.address {
            return Err(TxError::WrongOwner(i));
        }
        inputs = inputs
            .checked_add(entry.output.amount)
            .ok_or(TxError::AmountOverflow)?;
    }
    let outputs = tx
        .outputs
        .iter()
        .try_fold(0u64, |a, o| a.checked_add(o.amount))
        .ok_or(TxError::AmountOverflow)?;
    let needed = outputs
        .checked_add(limits.min_fee)
        .ok_or(TxError::AmountOverflow)?;
    if inputs >= outputs && inputs < needed {
        // Funded, but the fee left is short: say so, not "insufficient".
        return Err(TxError::FeeTooLow {
            fee: inputs - outputs,
            min: limits.min_fee,
        });
    }
    if inputs < needed {
        return Err(TxError::InsufficientFunds {
            inputs,
            outputs,
            fee: limits.min_fee,
        });
    }
    Ok(())
}

/// The message each input of `tx` signs, in input order.
pub fn input_messages(tx: &Transaction, txid: &Txid) -> Vec<[u8; 61]> {
    (0..tx.inputs.len())
        .map(|i| Transaction::input_sig_message(tx.chain_id, txid, i as u32))
        .collect()
}

/// Verifies every input signature ([`crate::sig`], ZIP 215), in one batch;
/// on failure names the first bad input.
pub fn verify_signatures(tx: &Transaction, txid: &Txid) -> Result<(), TxError> {
    let msgs = input_messages(tx, txid);
    let items: Vec<sig::Item> = tx
        .inputs
        .iter()
        .zip(&msgs)
        .map(|(input, m)| (&input.public_key.0, &m[..], &input.signature))
        .collect();
    match sig::verify_batch_with_fallback(&items)
        .iter()
        .position(|ok| !ok)
    {
        Some(i) => Err(TxError::BadSignature(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{PublicKey, TxOutput};
    use crate::protocol::utxo::UtxoState;
    use ed25519_dalek::SigningKey;

    fn setup(amount: u64, outs: &[u64]) -> (Transaction, Vec<UtxoEntry>) {
        let k = SigningKey::from_bytes(&[1; 32]);
        let me = Address::from_public_key(&PublicKey::from_signing(&k));
        let prevs: Vec<OutPoint> = (0..2)
            .map(|v| OutPoint {
                txid: Txid([5; 32]),
                vout: v,
            })
            .collect();
        let tx = Transaction::build_signed(
            1,
            &k,
            &prevs,
            outs.iter()
                .map(|&amount| TxOutput {
                    amount,
                    address: Address([9; 20]),
                })
                .collect(),
        );
        let entry = UtxoEntry {
            output: TxOutput {
                amount,
                address: me,
            },
            state: UtxoState::Unspent,
        };
        (tx, vec![entry; 2])
    }

    #[test]
    fn every_rule_has_its_error() {
        let l = Limits::default();
        let (tx, spent) = setup(COIN, &[COIN]);
        assert!(check_stateless(&tx, 1, &l).is_ok());
        assert!(check_amounts_and_owners(&tx, &spent, &l).is_ok());
        verify_signatures(&tx, &tx.txid()).unwrap();

        assert!(matches!(
            check_stateless(&tx, 2, &l),
            Err(TxError::WrongChain { .. })
        ));
        let (dust, _) = setup(COIN, &[100]);
        assert_eq!(
            check_stateless(&dust, 1, &l).unwrap_err().code(),
            RejectCode::DustOutput
        );

        // Outputs equal to the inputs: funded, but no fee left.
        let (greedy, spent) = setup(COIN, &[2 * COIN]);
        assert_eq!(
            check_amounts_and_owners(&greedy, &spent, &l)
                .unwrap_err()
                .code(),
            RejectCode::FeeTooLow
        );
        // Exactly no fee left: refused.
        let (nofee, spent) = setup(COIN, &[2 * COIN]);
        let _ = nofee;
        let (exact, _) = setup(COIN, &[2 * COIN - l.min_fee]);
        assert!(check_amounts_and_owners(&exact, &spent, &l).is_ok());
        let (over, _) = setup(COIN, &[2 * COIN - l.min_fee + 1]);
        assert_eq!(
            check_amounts_and_owners(&over, &spent, &l),
            Err(TxError::FeeTooLow {
                fee: l.min_fee - 1,
                min: l.min_fee
            })
        );
        // More out than in is short of funds, whatever the fee.
        let (short, _) = setup(COIN, &[2 * COIN + 1]);
        assert_eq!(
            check_amounts_and_owners(&short, &spent, &l)
                .unwrap_err()
                .code(),
            RejectCode::InsufficientFunds
        );

        let mut dup = tx.clone();
        dup.inputs[1].prev = dup.inputs[0].prev;
        assert_eq!(
            check_stateless(&dup, 1, &l).unwrap_err().code(),
            RejectCode::DuplicateInput
        );

        let mut badsig = tx.clone();
        badsig.inputs[1].signature[0] ^= 1;
        assert_eq!(
            verify_signatures(&badsig, &badsig.txid()),
            Err(TxError::BadSignature(1))
        );

        let mut thief = spent.clone();
        thief[0].output.address = Address([3; 20]);
        assert_eq!(
            check_amounts_and_owners(&tx, &thief, &l),
            Err(TxError::WrongOwner(0))
        );

        let mut huge = tx.clone();
        huge.outputs = vec![
            TxOutput {
                amount: u64::MAX,
                address: Address([1; 20])
            };
            2
        ];
        assert_eq!(check_stateless(&huge, 1, &l), Err(TxError::AmountOverflow));
        let mut empty = tx.clone();
        empty.inputs.clear();
        assert_eq!(check_stateless(&empty, 1, &l), Err(TxError::NoInputs));
        let mut small = l.clone();
        small.max_tx_bytes = 100;
        assert_eq!(
            check_stateless(&tx, 1, &small).unwrap_err().code(),
            RejectCode::Oversized
        );
    }

    #[test]
    fn codes_round_trip() {
        for c in 0..40u16 {
            assert_eq!(RejectCode::from_code(c).code(), c);
        }
    }
}

/// Verifies the input signatures of many transactions with one ed25519 batch
/// (about 2-3x the single-verify rate here, see ../shared/NOTES.md). If the
/// batch fails, each signature is checked alone so only the transactions
/// with a bad one fail, each naming its first bad input. Same verdicts as
/// [`verify_signatures`] on each (ZIP 215, [`crate::sig`]).
/// `txids[i]` must be `txs[i].txid()`.
pub fn verify_signatures_batch(txs: &[&Transaction], txids: &[Txid]) -> Vec<Result<(), TxError>> {
    let msgs: Vec<Vec<[u8; 61]>> = txs
        .iter()
        .zip(txids)
        .map(|(tx, txid)| input_messages(tx, txid))
        .collect();
    let items: Vec<sig::Item> = txs
        .iter()
        .zip(&msgs)
        .flat_map(|(tx, m)| {
            tx.inputs
                .iter()
                .zip(m)
                .map(|(input, m)| (&input.public_key.0, &m[..], &input.signature))
        })
        .collect();
    let ok = sig::verify_batch_with_fallback(&items);
    let mut at = 0;
    txs.iter()
        .map(|tx| {
            let mine = &ok[at..at + tx.inputs.len()];
            at += tx.inputs.len();
            match mine.iter().position(|ok| !ok) {
                Some(i) => Err(TxError::BadSignature(i)),
                None => Ok(()),
            }
        })
        .collect()
}

#[cfg(test)]
mod batch_tests {
    use super::*;
    use crate::protocol::types::{OutPoint, PublicKey, TxOutput};
    use ed25519_dalek::SigningKey;

    #[test]
    fn batch_finds_the_bad_transaction() {
        let txs: Vec<Transaction> = (0..20u8)
            .map(|i| {
                let k = SigningKey::from_bytes(&[i + 1; 32]);
                Transaction::build_signed(
                    1,
                    &k,
                    &[OutPoint {
                        txid: Txid([i; 32]),
                        vout: 0,
                    }],
                    vec![TxOutput {
                        amount: 1000,
                        address: Address::from_public_key(&PublicKey::from_signing(&k)),
                    }],
                )
            })
            .collect();
        let ids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
        let refs: Vec<&Transaction> = txs.iter().collect();
        assert!(verify_signatures_batch(&refs, &ids)
            .iter()
            .all(|r| r.is_ok()));
        let mut bad = txs.clone();
        bad[7].inputs[0].signature[3] ^= 1;
        let refs: Vec<&Transaction> = bad.iter().collect();
        let r = verify_signatures_batch(&refs, &ids);
        for (i, r) in r.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 7, "tx {i}");
        }
    }
}
