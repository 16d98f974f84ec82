//! The Byzantine "torsion" behaviour signs vote batches with a small-order
//! component in `R`. Under ZIP 215 those batches are valid (they must count
//! at every node, and a proof carrying one must verify as a whole and
//! certificate by certificate); the old strict rule refused them.

use timecoin_core::protocol::types::Txid;
use timecoin_core::protocol::vote::{Decision, VoteBatch, VoteItem};
use timecoin_core::testkit::{key_from_seed, torsion_signature};

#[test]
fn torsion_signed_vote_batches_verify_alone_and_in_certificates() {
    let key = key_from_seed("mn", 3);
    let items: Vec<VoteItem> = (0..5u8)
        .map(|i| VoteItem {
            txid: Txid([i; 32]),
            decision: Decision::Approve,
        })
        .collect();
    let mut b = VoteBatch::sign(7, 1, &key, items);
    let (_, msg) = b.levels_and_message();
    b.signature = torsion_signature(&key, &msg);
    let vk = key.verifying_key();
    let sig = ed25519_dalek::Signature::from_bytes(&b.signature);
    assert!(
        vk.verify_strict(&msg, &sig).is_err(),
        "not a torsion signature"
    );
    let levels = b.verify().expect("valid under ZIP 215");
    for i in 0..b.items.len() {
        let cert = b.cert(&levels, i);
        let m = cert
            .signed_message(7, &b.items[i].txid)
            .expect("path checks");
        assert!(timecoin_core::sig::verify(&b.voter.0, &m, &cert.signature));
    }
}
