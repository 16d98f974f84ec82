//! Round trips for every message, a frozen golden encoding, and garbage.

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::*;
use crate::protocol::types::TxOutput;
use crate::protocol::utxo::UtxoState;
use crate::protocol::vote::{Decision, VoteItem};

/// One of every message, built deterministically.
pub(crate) fn samples() -> Vec<Message> {
    let k = SigningKey::from_bytes(&[3; 32]);
    let pk = PublicKey::from_signing(&k);
    let op = OutPoint {
        txid: Txid([1; 32]),
        vout: 2,
    };
    let tx = Transaction::build_signed(
        9,
        &k,
        &[op],
        vec![TxOutput {
            amount: 1_000,
            address: Address([4; 20]),
        }],
    );
    let batch = VoteBatch::sign(
        9,
        1,
        &k,
        vec![
            VoteItem {
                txid: tx.txid(),
                decision: Decision::Approve,
            },
            VoteItem {
                txid: Txid([5; 32]),
                decision: Decision::Reject(RejectCode::InputLocked),
            },
        ],
    );
    let levels = batch.verify().unwrap();
    let proof = TimeProof {
        chain_id: 9,
        txid: tx.txid(),
        votes: vec![batch.cert(&levels, 0)],
    };
    let entry = UtxoEntry {
        output: tx.outputs[0],
        state: UtxoState::SpentPending {
            txid: Txid([6; 32]),
            weight: 3,
        },
    };
    vec![
        Message::Hello(Hello {
            chain_id: 9,
            protocol_version: PROTOCOL_VERSION,
            role: Role::Masternode,
            public_key: pk,
            nonce: [7; 32],
        }),
        Message::HelloAuth(sign_handshake(&k, 9, &[7; 32])),
        Message::Ping(42),
        Message::Pong(43),
        Message::SubmitTransaction(tx.clone()),
        Message::TransactionBroadcast(tx.clone()),
        Message::VoteBatch(batch),
        Message::TimeProof {
            tx: tx.clone(),
            proof,
        },
        Message::ProofRequest(Txid([8; 32])),
        Message::TransactionAccepted(Txid([8; 32])),
        Message::TransactionRejected {
            txid: Txid([9; 32]),
            reason: RejectCode::InputLocked,
            detail: "locked by x".into(),
            rejecters: vec![(pk, RejectCode::InputLocked)],
        },
        Message::UtxoStateQuery(vec![op]),
        Message::AddressQuery(Address([4; 20])),
        Message::UtxoStateResponse(vec![(op, Some(entry)), (op, None)]),
        Message::WalletSubscribe(vec![Address([4; 20])]),
        Message::UtxoStateNotification {
            outpoint: op,
            entry,
        },
        Message::NewTransactionNotification {
            txid: tx.txid(),
            tx,
        },
        Message::RepairRequest { first: 5, last: 9 },
        Message::Repair(vec![1, 2, 3]),
        Message::FastPathSeq { next: 77 },
        Message::StatusQuery,
        Message::Status(NodeStatus {
            public_key: pk,
            peers_connected: 3,
            peers_total: 3,
            pending: 1,
            finalized: 2,
            rejected: 3,
            catching_up: true,
        }),
        Message::FinalityLogRequest { from: 9 },
        Message::FinalityLogPage {
            from: 9,
            head: 12,
            txids: vec![Txid([0x44; 32]), Txid([0x45; 32])],
        },
        Message::Error {
            code: 1,
            detail: "bye".into(),
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for m in samples() {
        let b = m.to_bytes();
        assert_eq!(Message::decode(&b).unwrap(), m, "{}", m.name());
        // Every strict prefix fails cleanly; one extra byte fails too.
        for cut in 0..b.len() {
            assert!(
                Message::decode(&b[..cut]).is_err(),
                "{} cut {cut}",
                m.name()
            );
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
    }
}

/// Freezes the wire format: a change to any encoding changes this digest.
/// Update it only with a deliberate, versioned format change.
#[test]
fn golden_wire_bytes() {
    let mut h = blake3::Hasher::new();
    for m in samples() {
        let b = m.to_bytes();
        h.update(&(b.len() as u32).to_le_bytes());
        h.update(&b);
    }
    assert_eq!(h.finalize().to_hex().as_str(), GOLDEN);
    // And the first bytes of a hello, spelled out.
    let hello = samples()[0].to_bytes();
    assert_eq!(hex::encode(&hello[..8]), "0109000000010001");
}

const GOLDEN: &str = "0215c4674acb7f6bfac635ed877f66ae902521cfdf4561745df9496dc1f993ac";

#[test]
fn handshake_binds_nonce_and_key() {
    let k = SigningKey::from_bytes(&[3; 32]);
    let pk = PublicKey::from_signing(&k);
    let sig = sign_handshake(&k, 9, &[1; 32]);
    assert!(verify_handshake(9, &[1; 32], &pk, &sig));
    assert!(!verify_handshake(9, &[2; 32], &pk, &sig));
    assert!(!verify_handshake(8, &[1; 32], &pk, &sig));
    let other = PublicKey::from_signing(&SigningKey::from_bytes(&[4; 32]));
    assert!(!verify_handshake(9, &[1; 32], &other, &sig));
}

proptest! {
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic(idx in 0usize..23, pos in any::<usize>(), val in any::<u8>()) {
        let s = samples();
        let mut b = s[idx % s.len()].to_bytes();
        let p = pos % b.len();
        b[p] = val;
        let _ = Message::decode(&b);
    }
}
