//! The UTXO state machine: Unspent -> Locked -> SpentPending -> SpentFinalized
//! -> Confirmed. Every transition goes through [`UtxoState::transition`], which
//! refuses anything else with a typed error.

use crate::protocol::types::{TxOutput, Txid};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UtxoState {
    Unspent,
    /// Inputs locked by a transaction this node validated first (first seen wins).
    Locked {
        txid: Txid,
    },
    /// Approve votes are arriving; `weight` is the approve weight seen so far.
    SpentPending {
        txid: Txid,
        weight: u64,
    },
    /// A TimeProof exists for `txid`; the proof is stored under that txid.
    SpentFinalized {
        txid: Txid,
    },
    /// A block included `txid` (block layer; kept for the format).
    Confirmed {
        txid: Txid,
        height: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtxoEntry {
    pub output: TxOutput,
    pub state: UtxoState,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("output is held by transaction {holder}, not {requested}")]
    HeldByOther { holder: Txid, requested: Txid },
    #[error("illegal transition from {from} to {to}")]
    Illegal {
        from: &'static str,
        to: &'static str,
    },
}

impl UtxoState {
    /// Spent by a final transaction (`SpentFinalized`, `Confirmed`): the
    /// output can never be spent again, so an address's holdings (wallet
    /// `AddressQuery`, the store's address index) leave it out.
    pub fn is_spent_for_good(&self) -> bool {
        matches!(
            self,
            UtxoState::SpentFinalized { .. } | UtxoState::Confirmed { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            UtxoState::Unspent => "unspent",
            UtxoState::Locked { .. } => "locked",
            UtxoState::SpentPending { .. } => "spent-pending",
            UtxoState::SpentFinalized { .. } => "spent-finalized",
            UtxoState::Confirmed { .. } => "confirmed",
        }
    }

    /// The transaction that holds this output, if any.
    pub fn holder(&self) -> Option<Txid> {
        match *self {
            UtxoState::Unspent => None,
            UtxoState::Locked { txid }
            | UtxoState::SpentPending { txid, .. }
            | UtxoState::SpentFinalized { txid }
            | UtxoState::Confirmed { txid, .. } => Some(txid),
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            UtxoState::Unspent => 0,
            UtxoState::Locked { .. } => 1,
            UtxoState::SpentPending { .. } => 2,
            UtxoState::SpentFinalized { .. } => 3,
            UtxoState::Confirmed { .. } => 4,
        }
    }

    /// Checks and returns the next state. Allowed:
    /// - Unspent -> Locked
    /// - Locked/SpentPending(t) -> SpentPending(t) (weight grows)
    /// - Unspent/Locked/SpentPending(any) -> SpentFinalized(t): a verified
    ///   TimeProof settles the output even if this node locked a loser
    /// - SpentFinalized(t) -> Confirmed(t)
    /// - Locked(t) -> Unspent: only through [`UtxoState::release`].
    pub fn transition(&self, next: UtxoState) -> Result<UtxoState, TransitionError> {
        use UtxoState::*;
        let illegal = || TransitionError::Illegal {
            from: self.name(),
            to: next.name(),
        };
        match (*self, next) {
            (Unspent, Locked { .. }) => Ok(next),
            (Locked { txid: a }, SpentPending { txid: b, .. })
            | (SpentPending { txid: a, .. }, SpentPending { txid: b, .. }) => {
                if a == b {
                    Ok(next)
                } else {
                    Err(TransitionError::HeldByOther {
                        holder: a,
                        requested: b,
                    })
                }
            }
            (Unspent | Locked { .. } | SpentPending { .. }, SpentFinalized { .. }) => Ok(next),
            (SpentFinalized { txid: a }, SpentFinalized { txid: b }) if a == b => Ok(next),
            (SpentFinalized { txid: a }, Confirmed { txid: b, .. }) if a == b => Ok(next),
            (SpentFinalized { txid: a } | Confirmed { txid: a, .. }, _) => match next.holder() {
                Some(b) if b != a => Err(TransitionError::HeldByOther {
                    holder: a,
                    requested: b,
                }),
                _ => Err(illegal()),
            },
            (Locked { txid: a } | SpentPending { txid: a, .. }, Locked { txid: b }) if a != b => {
                Err(TransitionError::HeldByOther {
                    holder: a,
                    requested: b,
                })
            }
            _ => Err(illegal()),
        }
    }

    /// Releases a lock back to Unspent. The caller must have established that
    /// this node never voted to approve the holder (see `engine`).
    pub fn release(&self) -> Result<UtxoState, TransitionError> {
        match self {
            UtxoState::Locked { .. } => Ok(UtxoState::Unspent),
            _ => Err(TransitionError::Illegal {
                from: self.name(),
                to: "unspent",
            }),
        }
    }
}

/// Canonical bytes of a UTXO entry (wire and disk): output, state tag,
/// holder txid (zeros for Unspent), then weight or height (u64).
impl UtxoEntry {
    pub const ENCODED_LEN: usize = TxOutput::ENCODED_LEN + 1 + 32 + 8;

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.output.encode(out);
        out.push(self.state.code());
        out.extend_from_slice(&self.state.holder().unwrap_or_default().0);
        let extra = match self.state {
            UtxoState::SpentPending { weight, .. } => weight,
            UtxoState::Confirmed { height, .. } => height,
            _ => 0,
        };
        out.extend_from_slice(&extra.to_le_bytes());
    }

    pub fn decode(r: &mut crate::codec::Reader<'_>) -> Result<Self, crate::codec::DecodeError> {
        let output = TxOutput::decode(r)?;
        let tag = r.u8()?;
        let txid = Txid(r.array()?);
        let extra = r.u64()?;
        let state = match tag {
            0 => UtxoState::Unspent,
            1 => UtxoState::Locked { txid },
            2 => UtxoState::SpentPending {
                txid,
                weight: extra,
            },
            3 => UtxoState::SpentFinalized { txid },
            4 => UtxoState::Confirmed {
                txid,
                height: extra,
            },
            t => {
                return Err(crate::codec::DecodeError::UnknownTag {
                    what: "utxo state",
                    tag: t,
                })
            }
        };
        Ok(UtxoEntry { output, state })
    }
}

#[cfg(test)]
mod tests {
    use super::UtxoState::*;
    use super::*;

    #[test]
    fn legal_path() {
        let t = Txid([1; 32]);
        let s = Unspent.transition(Locked { txid: t }).unwrap();
        let s = s.transition(SpentPending { txid: t, weight: 1 }).unwrap();
        let s = s.transition(SpentPending { txid: t, weight: 2 }).unwrap();
        let s = s.transition(SpentFinalized { txid: t }).unwrap();
        let s = s.transition(Confirmed { txid: t, height: 5 }).unwrap();
        assert_eq!(s.holder(), Some(t));
    }

    #[test]
    fn conflicts_and_backwards_refused() {
        let (a, b) = (Txid([1; 32]), Txid([2; 32]));
        let locked = Locked { txid: a };
        assert!(matches!(
            locked.transition(Locked { txid: b }),
            Err(TransitionError::HeldByOther { .. })
        ));
        assert!(locked
            .transition(SpentPending { txid: b, weight: 1 })
            .is_err());
        let fin = SpentFinalized { txid: a };
        assert!(fin.transition(Unspent).is_err());
        assert!(fin.transition(SpentFinalized { txid: b }).is_err());
        assert!(fin.transition(Locked { txid: a }).is_err());
        assert!(fin.release().is_err());
        assert!(Unspent
            .transition(Confirmed { txid: a, height: 1 })
            .is_err());
        assert_eq!(locked.release().unwrap(), Unspent);
    }
}
