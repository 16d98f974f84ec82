//! `VoteBatch::decode` on a reader that must be consumed exactly; decoded
//! batches round-trip and their Merkle levels and certificates are built.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time_net::Reader;
use timecoin::protocol::vote::VoteBatch;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let Ok(b) = VoteBatch::decode(&mut r) else {
        return;
    };
    if r.finish().is_err() {
        return;
    }
    let mut out = Vec::new();
    b.encode(&mut out);
    assert_eq!(out, data);
    let (levels, _) = b.levels_and_message();
    for i in 0..b.items.len().min(64) {
        let c = b.cert(&levels, i);
        let _ = c.signed_message(b.chain_id, &b.items[i].txid);
    }
});
