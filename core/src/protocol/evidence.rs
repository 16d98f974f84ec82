//! Equivocation evidence: two certificates signed by one registered voter
//! that contradict each other (two different decisions on one transaction).
//! Anyone holding the registry can check it offline; a masternode keeps it
//! durably (`Write::PutEvidence`) and shows it to the operator.

use crate::codec::{DecodeError, Reader};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey, Txid};
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
