//! Who this node is on the wire ([`Identity`]: chain, key, registry) and the
//! `Hello` it sends and checks in the signed handshake, shared by the
//! listener (inbound) and the plain links (outbound).
//!
//! Immutable after startup. It must never hold connections or counters.

use ed25519_dalek::SigningKey;

use crate::node::wire::LinkError;
use crate::protocol::message::{Hello, Role, PROTOCOL_VERSION};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey};

/// This masternode's identity, as the handshakes prove and check it.
pub(super) struct Identity {
    pub chain_id: ChainId,
    pub key: SigningKey,
    pub me: PublicKey,
    pub registry: Registry,
}

pub(super) fn hello(id: &Identity, role: Role, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id: id.chain_id,
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: id.me,
        nonce,
    }
}

pub(super) fn check_hello(id: &Identity, h: &Hello) -> Result<(), LinkError> {
    if h.chain_id != id.chain_id {
        return Err(LinkError::Handshake("wrong chain id"));
    }
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(LinkError::Handshake("unsupported protocol version"));
    }
    Ok(())
}
