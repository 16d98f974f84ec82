//! A report path in a missing directory fails before the load test runs
//! (it used to run the whole test, then fail writing the report).

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn a_report_path_in_a_missing_directory_fails_at_once() {
    for flag in ["--json", "--json-detail", "--html"] {
        let t = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_time-loadtest"))
            .args([
                flag,
                "/missing/dir/x.json",
                "--duration",
                "30s",
                "--devnet",
                "3",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(
            err.contains("directory /missing/dir does not exist"),
            "{flag}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{flag}: {:?}",
            t.elapsed()
        );
    }
}
