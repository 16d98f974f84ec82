//! Prometheus metrics of a running cluster: `/metrics` over HTTP, checked by
//! `promtool check metrics`; counters that follow a payment; state gauges
//! that survive a restart; the shipped alert rules checked and unit-tested
//! by promtool; a real Prometheus server scraping the cluster.
//!
//! promtool and prometheus come from Debian's `prometheus` package
//! (`.ci/run` installs it); without them those checks are skipped, saying so.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{address, pay, Cluster, SERIAL};
use timecoin::protocol::types::COIN;
use timecoin::wallet::Outcome;

const WAIT: Duration = Duration::from_secs(20);

fn metrics_addr(c: &Cluster, i: usize) -> SocketAddr {
    c.layout.metrics[i].expect("devnet nodes serve metrics")
}

fn scrape(addr: SocketAddr) -> String {
    ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics body")
}

/// `name{labels} value` lines, by the full series text before the value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(text: &str, series: &str) -> f64 {
    *samples(text)
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// Scrapes until `series` satisfies `pred` (gauges refresh once a second).
fn wait_value(addr: SocketAddr, series: &str, pred: impl Fn(f64) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let t = scrape(addr);
        if samples(&t).get(series).is_some_and(|v| pred(*v)) || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?;
    let p = p.trim();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

fn skip(name: &str) {
    eprintln!(
        "SKIPPED: {name} not found; install Debian's `prometheus` package (apt-get install prometheus) to run this check"
    );
}

fn promtool_check_metrics(text: &str) {
    let Some(promtool) = tool("promtool") else {
        return skip("promtool");
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool also prints lint problems with a zero exit; there must be none.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "promtool lint: {said}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn metrics_follow_a_payment_pass_promtool_and_state_survives_a_restart() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(3);
    let m0 = metrics_addr(&c, 0);

    // Before any payment: peers connected, nothing final.
    let before = wait_value(m0, "timecoin_peers_connected", |v| v == 2.0);
    assert_eq!(value(&before, "timecoin_peers_connected"), 2.0);
    assert_eq!(value(&before, "timecoin_peers_known"), 2.0);
    assert_eq!(value(&before, "timecoin_transactions_finalized_total"), 0.0);
    assert_eq!(
        value(&before, "timecoin_finalized_transactions_stored"),
        0.0
    );
    promtool_check_metrics(&before);

    // One payment and one double spend of the same coin.
    rt().block_on(async {
        let (a, b) = (c.wallet_key(0), c.wallet_key(1));
        let tx = pay(c.chain_id(), &a, 0, 0, address(&b), 5 * COIN);
        let mut w = c.client(0).await;
        match w.submit(&tx, WAIT).await.unwrap() {
            Outcome::Finalized { .. } => {}
            Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
        }
        let double = pay(c.chain_id(), &a, 0, 0, address(&a), 4 * COIN);
        match w.submit(&double, WAIT).await.unwrap() {
            Outcome::Rejected { .. } => {}
            Outcome::Finalized { .. } => panic!("a double spend finalized"),
        }
    });

    let after = wait_value(m0, "timecoin_finalized_transactions_stored", |v| v >= 1.0);
    assert_eq!(value(&after, "timecoin_transactions_finalized_total"), 1.0);
    assert_eq!(value(&after, "timecoin_finality_seconds_count"), 1.0);
    assert_eq!(value(&after, "timecoin_finalized_transactions_stored"), 1.0);
    assert!(value(&after, "timecoin_finality_seconds_sum") > 0.0);
    // The payment's rounds (lock and vote, finality) each synced a record.
    assert!(value(&after, "timecoin_round_sync_seconds_count") >= 2.0);
    assert!(value(&after, "timecoin_round_sync_seconds_sum") > 0.0);
    assert_eq!(value(&after, "timecoin_double_spends_prevented_total"), 1.0);
    let rejected: f64 = samples(&after)
        .iter()
        .filter(|(k, _)| k.starts_with("timecoin_transactions_rejected_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejected, 1.0);
    // Votes travelled both ways, and peer traffic is counted per class.
    assert!(value(&after, "timecoin_votes_sent_total") >= 1.0);
    let votes_in = wait_value(m0, "timecoin_votes_received_total", |v| v >= 2.0);
    assert!(value(&votes_in, "timecoin_votes_received_total") >= 2.0);
    assert!(
        value(
            &after,
            "timecoin_peer_messages_total{class=\"normal\",direction=\"in\"}"
        ) > 0.0
    );
    assert!(value(&after, "timecoin_utxo_set_size") > 0.0);
    // Payments read their inputs; the genesis outputs start in the store.
    assert!(value(&after, "timecoin_utxo_cache_entries") > 0.0);
    assert!(value(&after, "timecoin_utxo_cache_misses_total") > 0.0);
    assert!(value(&after, "timecoin_database_size_bytes") > 0.0);
    assert!(
        value(&after, "timecoin_database_limit_bytes")
            >= value(&after, "timecoin_database_size_bytes")
    );
    new_families_on_a_healthy_cluster(m0);
    promtool_check_metrics(&after);
    every_shipped_metric_exists(&after);

    // Other nodes finalized it too (their store says so).
    for i in 1..3 {
        let t = wait_value(
            metrics_addr(&c, i),
            "timecoin_finalized_transactions_stored",
            |v| v >= 1.0,
        );
        assert_eq!(
            value(&t, "timecoin_finalized_transactions_stored"),
            1.0,
            "masternode {i}"
        );
    }

    // A restart resets the process's counters but not the stored state.
    c.kill9(0);
    c.spawn(0);
    c.wait_connected(3);
    let restarted = wait_value(m0, "timecoin_finalized_transactions_stored", |v| v >= 1.0);
    assert_eq!(
        value(&restarted, "timecoin_finalized_transactions_stored"),
        1.0
    );
    assert_eq!(
        value(&restarted, "timecoin_transactions_finalized_total"),
        0.0
    );
    // Restarted, it syncs the blocks it missed: no longer behind its peers.
    let synced = wait_value(m0, "timecoin_block_sync_lag_blocks", |v| v == 0.0);
    assert_eq!(value(&synced, "timecoin_block_sync_lag_blocks"), 0.0);

    // Anything but GET /metrics is refused with a status, not a hang.
    let err = ureq::get(&format!("http://{m0}/other")).call().unwrap_err();
    assert!(matches!(err, ureq::Error::StatusCode(404)), "{err:?}");
    let err = ureq::post(&format!("http://{m0}/metrics"))
        .send("x")
        .unwrap_err();
    assert!(matches!(err, ureq::Error::StatusCode(405)), "{err:?}");
}

/// The series of a family: `name{labels}` -> value.
fn family(text: &str, name: &str) -> HashMap<String, f64> {
    let open = format!("{name}{{");
    samples(text)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&open))
        .collect()
}

/// Vote collection, missed votes, Byzantine detections, block commit time
/// and rounds, sync and catch-up lag, after the one payment at node 0 of a
/// healthy 3-masternode devnet.
fn new_families_on_a_healthy_cluster(m0: SocketAddr) {
    // Node 0 approved the payment; its tally reached the quorum: one
    // vote collection measured.
    let t = wait_value(m0, "timecoin_vote_collection_seconds_count", |v| v >= 1.0);
    assert_eq!(value(&t, "timecoin_vote_collection_seconds_count"), 1.0);
    assert_eq!(
        value(&t, "timecoin_vote_collection_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert!(value(&t, "timecoin_vote_collection_seconds_sum") >= 0.0);
    // One series per registered masternode; with 3 of weight 3 the quorum
    // needs every vote, so nobody missed one.
    let missed = family(&t, "timecoin_missed_votes_total");
    assert_eq!(missed.len(), 3, "{missed:?}");
    assert!(missed.values().all(|v| *v == 0.0), "{missed:?}");
    // Every kind of Byzantine detection exists, and none happened.
    let byz = family(&t, "timecoin_byzantine_detections_total");
    for kind in [
        "payment_equivocation",
        "conflicting_proofs",
        "forged_vote_signature",
        "block_equivocation",
        "block_fork",
        "block_contradiction",
    ] {
        let s = format!("timecoin_byzantine_detections_total{{kind=\"{kind}\"}}");
        assert_eq!(byz.get(&s), Some(&0.0), "{s}: {byz:?}");
    }
    assert_eq!(
        value(
            &t,
            "timecoin_invalid_vote_batches_total{reason=\"bad_signature\"}"
        ),
        0.0
    );
    // Blocks commit on the devnet (1 s interval): their time and round.
    let t = wait_value(m0, "timecoin_block_commit_seconds_count", |v| v >= 1.0);
    let commits = value(&t, "timecoin_block_commit_seconds_count");
    assert!(commits >= 1.0);
    assert_eq!(value(&t, "timecoin_block_rounds_count"), commits);
    assert!(value(&t, "timecoin_block_sync_lag_blocks") >= 0.0);
    assert!(value(&t, "timecoin_catchup_lag_entries") >= 0.0);
    assert!(value(&t, "timecoin_catchup_proofs_fetching") >= 0.0);
    assert_eq!(value(&t, "timecoin_catchup_held"), 0.0, "in step: not held");
    promtool_check_metrics(&t);
}

/// Metric names a scrape declares (`# TYPE`, histograms with their series).
fn declared(text: &str) -> std::collections::HashSet<String> {
    let mut names = std::collections::HashSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Every `timecoin_*` name the alert rules and the Grafana dashboard use is
/// one the node serves (a renamed metric cannot silently blind them).
fn every_shipped_metric_exists(scrape: &str) {
    let names = declared(scrape);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/timecoin-dashboard.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut used = 0;
        for (i, _) in text.match_indices("timecoin_") {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // Alert names and uids ("TimecoinX", "timecoin-masternodes") are not metrics.
            if name.len() <= "timecoin_".len() {
                continue;
            }
            used += 1;
            assert!(
                names.contains(&name),
                "{file} uses {name}, which the node does not serve"
            );
        }
        assert!(used > 5, "{file}: only {used} metric names found");
    }
}

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/prometheus")
        .join(file)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return skip("promtool");
    };
    for args in [
        vec!["check", "rules", deploy("alerts.yml").to_str().unwrap()],
        vec!["test", "rules", deploy("alerts_test.yml").to_str().unwrap()],
    ] {
        let out = Command::new(&promtool).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server this test started; killed (by its pid) when dropped.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_prometheus_server_scrapes_the_cluster() {
    let Some(prometheus) = tool("prometheus") else {
        return skip("prometheus");
    };
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = (0..3)
        .map(|i| format!("'{}'", metrics_addr(&c, i)))
        .collect();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: timecoin\n    static_configs:\n      - targets: [{}]\n",
            deploy("alerts.yml").display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _server = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    // Every target up, and a node metric queried back through the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let query = |q: &str| -> Option<serde_json::Value> {
        let body = ureq::get(&format!("http://{web}/api/v1/query"))
            .query("query", q)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        serde_json::from_str(&body).ok()
    };
    loop {
        let up = query("sum(up{job=\"timecoin\"})");
        let peers = query("min(timecoin_peers_connected)");
        let num = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .and_then(|v| v["data"]["result"][0]["value"][1].as_str())
                .and_then(|s| s.parse::<f64>().ok())
        };
        if num(&up) == Some(3.0) && num(&peers) == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not scrape all 3 masternodes: up={up:?} peers={peers:?}; log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // The rules loaded, and no alert fires on a healthy cluster.
    let rules = ureq::get(&format!("http://{web}/api/v1/rules"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(rules.contains("TimecoinQuorumLost"), "{rules}");
    let alerts = query("ALERTS{alertstate=\"firing\"}").unwrap();
    assert_eq!(alerts["data"]["result"], serde_json::json!([]), "{alerts}");
}
