//! Deterministic decoder smoke (the fallback for cargo-fuzz): mutated
//! encodings of every message kind into every peer-reachable decoder.

#[test]
fn decoders_never_panic_and_round_trip() {
    let n = std::env::var("TIME_SIM_DECODER_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let stats = time_sim::decoders::smoke(0, n);
    for s in &stats {
        println!(
            "{:<24} {} inputs, {} decoded, {} rejected",
            s.name, s.inputs, s.decoded, s.rejected
        );
        assert!(s.failures.is_empty(), "{}: {:?}", s.name, s.failures);
        assert!(
            s.decoded > 0,
            "{}: nothing decoded, the corpus is wrong",
            s.name
        );
    }
}
