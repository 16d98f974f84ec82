//! `Transaction::from_bytes`: the encoding is canonical, so whatever decodes
//! must encode back to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use timecoin::protocol::types::Transaction;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = Transaction::from_bytes(data) {
        assert_eq!(tx.to_bytes(), data);
        assert_eq!(tx.encoded_len(), data.len());
        let _ = tx.txid();
    }
});
