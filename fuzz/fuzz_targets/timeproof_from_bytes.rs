//! `TimeProof::from_bytes`: decode, round trip, and run the certificate
//! path arithmetic (`VoteCert::signed_message`) on whatever decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timecoin::protocol::timeproof::TimeProof;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = TimeProof::from_bytes(data) {
        let again = TimeProof::from_bytes(&p.to_bytes()).expect("re-encoded proof decodes");
        assert_eq!(again, p);
        for v in &p.votes {
            let _ = v.signed_message(p.chain_id, &p.txid);
        }
    }
});
