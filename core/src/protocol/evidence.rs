//! Equivocation evidence: two certificates signed by one registered voter
//! that contradict each other: two different decisions on one transaction
//! ([`Equivocation`]), or approvals of two transactions that spend one output
//! ([`ConflictingApprovals`]). Anyone holding the registry can check either
//! offline; a masternode keeps them durably (`Write::PutEvidence`,
//! `Write::PutApprovalEvidence`) and shows them to the operator.

use crate::codec::{DecodeError, Reader};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::vote::VoteCert;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    pub txid: Txid,
    pub first: VoteCert,
    pub second: VoteCert,
}

impl Equivocation {
    pub fn voter(&self) -> PublicKey {
        self.first.voter
    }

    /// True if both certificates are by the same registered voter, on
    /// `txid`, with different decisions, and both signatures verify.
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> bool {
        let (a, b) = (&self.first, &self.second);
        if a.voter != b.voter || a.decision == b.decision || registry.weight_of(&a.voter).is_none()
        {
            return false;
        }
        let (Some(ma), Some(mb)) = (
            a.signed_message(chain_id, &self.txid),
            b.signed_message(chain_id, &self.txid),
        ) else {
            return false;
        };
        crate::sig::verify(&a.voter.0, &ma, &a.signature)
            && crate::sig::verify(&b.voter.0, &mb, &b.signature)
    }

    /// `txid ‖ first ‖ second` (certificates as in a TimeProof).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.txid.0);
        self.first.encode(out);
        self.second.encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Equivocation {
            txid: Txid(r.array()?),
            first: VoteCert::decode(r)?,
            second: VoteCert::decode(r)?,
        })
    }
}

/// One voter approved two different transactions that spend the same
/// output: the double spend an honest masternode never signs (it approves
/// at most one spender of each output, durably). Both transactions are kept
/// whole, so the conflict is checked from their txids, not taken on trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictingApprovals {
    /// The output both transactions spend.
    pub outpoint: OutPoint,
    pub first_tx: Transaction,
    pub first: VoteCert,
    pub second_tx: Transaction,
    pub second: VoteCert,
}

impl ConflictingApprovals {
    pub fn voter(&self) -> PublicKey {
        self.first.voter
    }

    /// True if both certificates are by the same registered voter, both
    /// approve, they name two different transactions that both spend
    /// `outpoint`, and both signatures verify over those txids.
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> bool {
        let (a, b) = (&self.first, &self.second);
        let (ta, tb) = (self.first_tx.txid(), self.second_tx.txid());
        let spends = |t: &Transaction| t.inputs.iter().any(|i| i.prev == self.outpoint);
        if a.voter != b.voter
            || !a.decision.is_approve()
            || !b.decision.is_approve()
            || ta == tb
            || !spends(&self.first_tx)
            || !spends(&self.second_tx)
            || registry.weight_of(&a.voter).is_none()
        {
            return false;
        }
        let (Some(ma), Some(mb)) = (
            a.signed_message(chain_id, &ta),
            b.signed_message(chain_id, &tb),
        ) else {
            return false;
        };
        crate::sig::verify(&a.voter.0, &ma, &a.signature)
            && crate::sig::verify(&b.voter.0, &mb, &b.signature)
    }

    /// `outpoint ‖ first_tx ‖ first ‖ second_tx ‖ second` (transactions as
    /// on the wire, certificates as in a TimeProof).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.outpoint.encode(out);
        self.first_tx.encode(out);
        self.first.encode(out);
        self.second_tx.encode(out);
        self.second.encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConflictingApprovals {
            outpoint: OutPoint::decode(r)?,
            first_tx: Transaction::decode(r)?,
            first: VoteCert::decode(r)?,
            second_tx: Transaction::decode(r)?,
            second: VoteCert::decode(r)?,
        })
    }
}
