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
        Message::HelloAuth(sign_handshake(
            &k,
            Side::Acceptor,
            &wallet_hello(9, [8; 32]),
            &mn_hello(9, pk, [7; 32]),
        )),
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
            blocks: None,
        }),
        Message::Status(NodeStatus {
            public_key: pk,
            peers_connected: 3,
            peers_total: 3,
            pending: 0,
            finalized: 9,
            rejected: 0,
            catching_up: false,
            blocks: Some(BlockStatus {
                height: 12,
                tip: crate::blocks::BlockHash([0x5a; 32]),
                tip_time_ms: 1_700_000_000_000,
                syncing: true,
                unconfirmed: 4,
            }),
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
    assert_eq!(hex::encode(&hello[..8]), "0109000000020001");
}

/// Protocol version 2 (handshake v2): changed from
/// `0215c467…93ac` only by the `Hello` sample's version (1 → 2) and the
/// `HelloAuth` sample, now a proof over the v2 transcript; every other sample
/// encodes to the same bytes as before. Then `86aca707…4112` changed only by
/// `Status`, which gained the block status (a 0 byte with no block layer).
const GOLDEN: &str = "cee868c99b749c3d8f4a9d359a274055f450c011c8d1f6b8dd2a4341f57a2fdb";

fn mn_hello(chain_id: ChainId, public_key: PublicKey, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id,
        protocol_version: PROTOCOL_VERSION,
        role: Role::Masternode,
        public_key,
        nonce,
    }
}

fn wallet_hello(chain_id: ChainId, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id,
        protocol_version: PROTOCOL_VERSION,
        role: Role::Wallet,
        public_key: PublicKey::default(),
        nonce,
    }
}

/// The transcript, spelled out byte by byte (docs/PROTOCOL.md, Handshake).
#[test]
fn golden_handshake_transcript() {
    let d = mn_hello(9, PublicKey([0xd1; 32]), [0xd2; 32]);
    let a = mn_hello(9, PublicKey([0xa1; 32]), [0xa2; 32]);
    let t = handshake_message(Side::Dialer, &d, &a);
    assert_eq!(t.len(), 166);
    assert_eq!(&t[..21], b"TIMECOIN/handshake/v2");
    assert_eq!(t[21], 1);
    let hello = |key: u8, nonce: u8| {
        let mut h = hex::decode("0109000000020001").unwrap();
        h.extend_from_slice(&[key; 32]);
        h.extend_from_slice(&[nonce; 32]);
        h
    };
    assert_eq!(&t[22..94], &hello(0xd1, 0xd2)[..]);
    assert_eq!(&t[94..], &hello(0xa1, 0xa2)[..]);
    assert_eq!(handshake_message(Side::Acceptor, &d, &a)[21], 2);
}

/// A proof verifies only on the connection (both hellos, this side) it was
/// made on: any other nonce, key, role, chain, version or side refuses it.
#[test]
fn handshake_proof_binds_the_whole_connection() {
    let k = SigningKey::from_bytes(&[3; 32]);
    let pk = PublicKey::from_signing(&k);
    let other = PublicKey::from_signing(&SigningKey::from_bytes(&[4; 32]));
    let d = mn_hello(9, other, [1; 32]);
    let a = mn_hello(9, pk, [2; 32]);
    let sig = sign_handshake(&k, Side::Acceptor, &d, &a);
    assert!(verify_handshake(Side::Acceptor, &d, &a, &sig));
    // Reflected as the other side's proof, or with the hellos swapped.
    assert!(!verify_handshake(Side::Dialer, &d, &a, &sig));
    assert!(!verify_handshake(Side::Dialer, &a, &d, &sig));
    let variants: Vec<(Hello, Hello)> = vec![
        (mn_hello(9, other, [9; 32]), a.clone()),
        (d.clone(), mn_hello(9, pk, [9; 32])),
        (mn_hello(9, PublicKey([5; 32]), [1; 32]), a.clone()),
        (wallet_hello(9, [1; 32]), a.clone()),
        (mn_hello(8, other, [1; 32]), mn_hello(8, pk, [2; 32])),
        (
            Hello {
                protocol_version: 1,
                ..d.clone()
            },
            Hello {
                protocol_version: 1,
                ..a.clone()
            },
        ),
    ];
    for (vd, va) in variants {
        assert!(
            !verify_handshake(Side::Acceptor, &vd, &va, &sig),
            "{vd:?} {va:?}"
        );
    }
    // The v1 relay: the listener's proof to a wallet that carried the
    // victim's nonce is no dialer proof on the victim's connection.
    let victim = PublicKey::from_signing(&SigningKey::from_bytes(&[6; 32]));
    let b_hello = mn_hello(9, victim, [7; 32]);
    let to_wallet = sign_handshake(&k, Side::Acceptor, &wallet_hello(9, [7; 32]), &a);
    assert!(!verify_handshake(
        Side::Dialer,
        &mn_hello(9, pk, [1; 32]),
        &b_hello,
        &to_wallet
    ));
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

/// The block layer's messages (kept apart from [`samples`], whose digest
/// freezes the instant-finality messages).
pub(crate) fn block_samples() -> Vec<Message> {
    use crate::blocks::{
        Block, BlockHash, BlockVote, CommitCertificate, CommittedBlock, Proposal, Slot, VoteKind,
    };
    let k = SigningKey::from_bytes(&[7; 32]);
    let slot = Slot {
        chain_id: 9,
        epoch: 1,
        height: 3,
        round: 1,
    };
    let block = Block::new(
        9,
        1,
        3,
        BlockHash([1; 32]),
        1_000,
        PublicKey::from_signing(&k),
        vec![],
    );
    let prevote = BlockVote::sign(
        Slot { round: 0, ..slot },
        VoteKind::Prevote,
        Some(block.hash()),
        &k,
    );
    let mut proposal = Proposal::sign(slot, Some(0), block.clone(), &k);
    proposal.polka = vec![prevote];
    let precommit = BlockVote::sign(slot, VoteKind::Precommit, Some(block.hash()), &k);
    vec![
        Message::BlockProposal(Box::new(proposal)),
        Message::BlockVote(precommit.clone()),
        Message::BlockVote(BlockVote::sign(slot, VoteKind::Prevote, None, &k)),
        Message::BlockRequest { from: 42 },
        Message::CommittedBlock(Box::new(CommittedBlock {
            cert: CommitCertificate {
                slot,
                block: block.hash(),
                precommits: vec![(precommit.voter, precommit.signature)],
            },
            block,
        })),
    ]
}

#[test]
fn block_messages_round_trip_are_peer_messages_and_frozen() {
    use crate::protocol::audience::PeerMessage;
    let mut h = blake3::Hasher::new();
    for m in block_samples() {
        let b = m.to_bytes();
        assert_eq!(Message::decode(&b).unwrap(), m, "{}", m.name());
        for n in 0..b.len() {
            assert!(Message::decode(&b[..n]).is_err());
        }
        let p = PeerMessage::try_from(m.clone()).expect("a peer message");
        assert_eq!(Message::from(p), m);
        h.update(&(b.len() as u32).to_le_bytes());
        h.update(&b);
    }
    let tags: Vec<u8> = block_samples().iter().map(|m| m.to_bytes()[0]).collect();
    assert_eq!(tags, [0x1c, 0x1d, 0x1d, 0x1e, 0x1f]);
    assert_eq!(h.finalize().to_hex().as_str(), BLOCK_GOLDEN);
}

const BLOCK_GOLDEN: &str = "cbbf38d4386c1bb0fc17838da8f74395da09af2aa8783665db435e8e186a3712";
