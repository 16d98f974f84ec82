//! Smoke test of the load generator against a real local devnet: a few
//! seconds at a modest rate with a double-spend mix. Asserts that nothing is
//! lost and no conflicting pair has both sides finalized; latencies are not
//! asserted.
//!
//! Release builds run `--tps 200`; the debug profile runs `--tps 10` (an
//! unoptimized masternode is far slower). It runs the masternode binary,
//! which must be built into the same target directory first. `cargo test --workspace` builds it (it is a binary of the
//! root package); with `cargo test -p time-loadtest`, run
//! `cargo build --workspace --bins` (same profile) before.

use std::path::PathBuf;
use std::process::Command;

const KEYS: [&str; 12] = [
    "sent",
    "finalized",
    "rejected",
    "lost",
    "double_spend_pairs",
    "double_spend_both_finalized",
    "tps",
    "finality_ms",
    "confirmed",
    "confirmation_ms",
    "crypto_bound_tps",
    "fraction_of_bound",
];
const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

fn masternode_bin(loadtest: &std::path::Path) -> PathBuf {
    let p = loadtest.with_file_name("time-masternode");
    assert!(
        p.is_file(),
        "{} is missing: build the masternode first in the same profile \
         (`cargo build --release --workspace --bins`, or run `cargo test --workspace`)",
        p.display()
    );
    p
}

/// Runs `time-loadtest ARGS --<json_flag> DIR/<file> --masternode-bin ...`:
/// its exit status, the JSON it wrote (parsed), and its output for
/// assertion messages.
fn run_loadtest(
    args: &[&str],
    json_flag: &str,
) -> (std::process::ExitStatus, serde_json::Value, String, String) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_time-loadtest"));
    let mn = masternode_bin(&exe);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(&exe)
        .args(args)
        .arg(json_flag)
        .arg(&json)
        .arg("--masternode-bin")
        .arg(&mn)
        .output()
        .expect("run time-loadtest");
    let log = format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text =
        std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON written ({e}):\n{log}"));
    let v = serde_json::from_str(&text).unwrap();
    (out.status, v, text, log)
}

#[test]
fn short_load_with_double_spends_loses_nothing() {
    // An unoptimized masternode verifies signatures some fifty times slower:
    // the debug profile runs the same check at a rate it can carry.
    let (tps, timeout) = if cfg!(debug_assertions) {
        ("10", "30s")
    } else {
        ("200", "10s")
    };
    let (status, v, text, log) = run_loadtest(
        &[
            "--devnet",
            "4",
            "--tps",
            tps,
            "--duration",
            "3s",
            "--double-spend-pct",
            "10",
            "--timeout",
            timeout,
            "--confirm-wait",
            "20s",
        ],
        "--json",
    );
    let obj = v.as_object().expect("a JSON object");
    for k in KEYS {
        assert!(obj.contains_key(k), "key {k} missing in {text}");
    }
    assert_eq!(obj.len(), KEYS.len(), "exactly the summary keys: {text}");
    for k in PERCENTILES {
        assert!(
            v["finality_ms"][k].is_number(),
            "finality_ms.{k} missing in {text}"
        );
    }
    assert_eq!(v["lost"], 0, "payments lost:\n{text}\n{log}");
    assert_eq!(
        v["double_spend_both_finalized"], 0,
        "a conflicting pair had both sides finalized:\n{text}\n{log}"
    );
    assert!(
        v["finalized"].as_u64().unwrap() > 0,
        "nothing finalized:\n{log}"
    );
    assert!(
        v["double_spend_pairs"].as_u64().unwrap() > 0,
        "no pair sent:\n{log}"
    );
    // The devnet runs blocks (1 s): every final payment gets confirmed.
    assert_eq!(
        v["confirmed"], v["finalized"],
        "final payments not confirmed by a block:\n{text}\n{log}"
    );
    assert!(
        v["crypto_bound_tps"].as_f64().unwrap() > 0.0,
        "the bound is measured:\n{text}"
    );
    let sent = v["sent"].as_u64().unwrap();
    let settled = v["finalized"].as_u64().unwrap() + v["rejected"].as_u64().unwrap();
    assert_eq!(sent, settled, "every transaction settled:\n{text}");
    assert!(status.success(), "time-loadtest failed:\n{log}");
}

/// Offered more than a tiny origin window lets through (16 payments in
/// flight per masternode), the devnet refuses the excess at once as busy
/// and finalizes the rest: nothing lost, every refusal a busy one, no
/// refused coin left locked.
#[test]
fn overload_is_refused_at_once_and_nothing_is_lost() {
    let tps = if cfg!(debug_assertions) {
        "100"
    } else {
        "4000"
    };
    let (status, v, _, log) = run_loadtest(
        &[
            "--devnet",
            "4",
            "--tps",
            tps,
            "--duration",
            "3s",
            "--timeout",
            "20s",
            "--confirm-wait",
            "0s",
            "--node-arg=--origin-window=16",
        ],
        "--json-detail",
    );
    let step = &v["steps"][0];
    assert_eq!(step["lost"], 0, "payments lost:\n{log}");
    assert!(
        step["finalized"].as_u64().unwrap() > 0,
        "nothing finalized:\n{log}"
    );
    let reasons = step["reject_reasons"].as_object().unwrap();
    assert!(
        reasons.keys().all(|k| k == "MempoolFull"),
        "refusals other than busy: {reasons:?}\n{log}"
    );
    if !cfg!(debug_assertions) {
        // 4,000/s through 64 payments in flight would need a mean finality
        // under 16 ms on a saturated 2-core machine: the window must bite.
        assert!(
            step["rejected_single"].as_u64().unwrap() > 0,
            "no payment refused as busy at 4,000/s through a window of 16:\n{log}"
        );
    }
    let refused = &step["audit"]["groups"]["refused or lost payments"];
    assert_eq!(
        refused["locked_for_good"], 0,
        "a refused coin stayed locked:\n{log}"
    );
    assert_eq!(refused["conflicting_finality"], 0, "{log}");
    assert!(status.success(), "time-loadtest failed:\n{log}");
}
