//! `time-ingest` on a small load: every payment is finalized, in both
//! storage modes, and the JSON report carries the figures it promises.

use std::process::Command;

#[test]
fn small_ingest_run_finalizes_everything() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = Command::new(env!("CARGO_BIN_EXE_time-ingest"))
        .args([
            "--txs",
            "3000",
            "--round-inputs",
            "512",
            "--vote-lag",
            "256",
        ])
        .args(["--crypto-secs", "0.1", "--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("run time-ingest");
    assert!(
        out.status.success(),
        "time-ingest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["finalized"], 3000, "{r}");
        assert!(r["finalized_per_cpu_s"].as_f64().unwrap() > 0.0);
    }
    assert!(doc["crypto"]["bound_tx_per_cpu_s"].as_f64().unwrap() > 0.0);
}
