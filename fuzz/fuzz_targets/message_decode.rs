//! `Message::decode` over one whole frame: every message kind (handshake,
//! transactions, vote batches, TimeProofs, wallet queries). It must return,
//! never panic, and what decodes must survive an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timecoin::protocol::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let again = Message::decode(&m.to_bytes()).expect("re-encoded message decodes");
        assert_eq!(again, m);
    }
});
