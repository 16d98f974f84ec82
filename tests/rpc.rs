//! JSON-RPC over HTTP against a running 3-masternode cluster: every method
//! with valid and invalid parameters, authentication (401), the rate limit
//! (429), a payment by `sendrawtransaction` followed to its TimeProof by
//! `waittransactionfinality` (the proof verifies against the registry), and
//! `time-cli` round trips with their exit codes.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{address, pay, Cluster, SERIAL};
use serde_json::{json, Value};
use timecoin::node::genesis_file::genesis_outpoint;
use timecoin::node::rpc::{basic_auth, code};
use timecoin::protocol::timeproof::TimeProof;
use timecoin::protocol::types::COIN;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(70)))
        .build()
        .into()
}

struct Rpc {
    url: String,
    auth: String,
    agent: ureq::Agent,
}

impl Rpc {
    fn new(c: &Cluster, i: usize) -> Rpc {
        let addr: SocketAddr = c.layout.rpc[i].expect("devnet nodes serve RPC");
        let cookie = std::fs::read_to_string(&c.layout.cookies[i]).expect("cookie written");
        Rpc {
            url: format!("http://{addr}/"),
            auth: basic_auth(cookie.trim()),
            agent: agent(),
        }
    }

    /// (HTTP status, JSON body) of a raw body.
    fn raw(&self, auth: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self.agent.post(&self.url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let mut r = req.send(body.to_string()).expect("http");
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, Value> {
        let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        let (status, v) = self.raw(Some(&self.auth), &body.to_string());
        assert_eq!(status, 200, "{method}: HTTP {status} {v}");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 7);
        match v.get("error") {
            Some(e) => Err(e.clone()),
            None => Ok(v["result"].clone()),
        }
    }

    fn error_code(&self, method: &str, params: Value) -> i64 {
        match self.call(method, params.clone()) {
            Err(e) => e["code"].as_i64().unwrap(),
            Ok(v) => panic!("{method} {params} succeeded: {v}"),
        }
    }
}

#[test]
fn every_method_answers_valid_and_invalid_params_and_a_payment_reaches_its_proof() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(3);
    let rpc = Rpc::new(&c, 0);

    // Reads.
    let help = rpc.call("help", json!([])).unwrap();
    for m in [
        "sendrawtransaction",
        "gettxout",
        "getbalance",
        "masternodestatus",
    ] {
        assert!(help.get(m).is_some(), "help lacks {m}: {help}");
    }
    assert!(rpc.call("uptime", json!([])).unwrap().as_u64().is_some());
    assert_eq!(rpc.call("getconnectioncount", json!([])).unwrap(), 2);
    let info = rpc.call("getblockchaininfo", json!([])).unwrap();
    assert_eq!(info["chain"], "devnet");
    assert_eq!(info["chain_id"], c.chain_id());
    // The devnet runs the block layer: a height and the tip's hash.
    assert!(info["blocks"].as_u64().is_some(), "{info}");
    assert!(info["bestblockhash"].is_string(), "{info}");
    let net = rpc.call("getnetworkinfo", json!([])).unwrap();
    assert_eq!(net["connections"], 2);
    assert_eq!(net["p2p"], c.addr(0).to_string());
    assert_eq!(rpc.call("getmempoolinfo", json!([])).unwrap()["size"], 0);
    let st = rpc.call("masternodestatus", json!([])).unwrap();
    assert_eq!(st["peers_total"], 2);
    assert_eq!(st["catching_up"], false);

    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let (addr_a, addr_b) = (address(&a).to_string(), address(&b).to_string());
    let bal = rpc.call("getbalance", json!([addr_a])).unwrap();
    assert_eq!(bal["spendable"], 200 * 1_000 * COIN);
    let coins = rpc.call("listunspent", json!([addr_a])).unwrap();
    assert_eq!(coins.as_array().unwrap().len(), 200);
    let g = genesis_outpoint(0, 0);
    let out = rpc
        .call("gettxout", json!([g.txid.to_string(), g.vout]))
        .unwrap();
    assert_eq!(out["state"], "unspent");
    assert_eq!(out["amount"], 1_000 * COIN);
    assert_eq!(
        rpc.call("gettxout", json!([g.txid.to_string(), 9999]))
            .unwrap(),
        Value::Null
    );

    // Bans: listed, set and lifted by the operator in the node's peer book.
    assert_eq!(rpc.call("getbanlist", json!([])).unwrap(), json!([]));
    let peer = timecoin::protocol::types::PublicKey::from_signing(&c.masternode_key(1));
    let set = rpc
        .call("setban", json!([peer.to_string(), "add", 60]))
        .unwrap();
    assert_eq!(set["seconds"], 60);
    let bans = rpc.call("getbanlist", json!([])).unwrap();
    assert_eq!(bans[0]["key"], peer.to_string(), "{bans}");
    assert!(bans[0]["banned_for_s"].as_u64().unwrap() <= 60);
    rpc.call("setban", json!([peer.to_string(), "remove"]))
        .unwrap();
    assert_eq!(rpc.call("getbanlist", json!([])).unwrap(), json!([]));
    let stranger = timecoin::protocol::types::PublicKey([7; 32]).to_string();
    assert_eq!(
        rpc.error_code("setban", json!([stranger, "add"])),
        code::INVALID_ADDRESS_OR_KEY
    );
    assert_eq!(
        rpc.error_code("setban", json!([peer.to_string(), "remove"])),
        code::INVALID_ADDRESS_OR_KEY
    );
    assert_eq!(
        rpc.error_code("setban", json!([peer.to_string(), "maybe"])),
        code::INVALID_PARAMS
    );
    assert_eq!(
        rpc.error_code("setban", json!([peer.to_string(), "add", 0])),
        code::INVALID_PARAMS
    );

    // Invalid parameters: JSON-RPC errors with codes.
    assert_eq!(rpc.error_code("uptime", json!([1])), code::INVALID_PARAMS);
    assert_eq!(
        rpc.error_code("gettxout", json!(["zz", 0])),
        code::INVALID_PARAMS
    );
    assert_eq!(
        rpc.error_code("gettxout", json!([g.txid.to_string(), -1])),
        code::INVALID_PARAMS
    );
    assert_eq!(rpc.error_code("gettxout", json!([])), code::INVALID_PARAMS);
    assert_eq!(
        rpc.error_code("getbalance", json!(["nope"])),
        code::INVALID_ADDRESS_OR_KEY
    );
    assert_eq!(
        rpc.error_code("listunspent", json!([5])),
        code::INVALID_PARAMS
    );
    assert_eq!(
        rpc.error_code("sendrawtransaction", json!(["not hex"])),
        code::DESERIALIZATION
    );
    assert_eq!(
        rpc.error_code("sendrawtransaction", json!(["00ff"])),
        code::DESERIALIZATION
    );
    assert_eq!(
        rpc.error_code("waittransactionfinality", json!(["00", 0])),
        code::DESERIALIZATION
    );
    assert_eq!(
        rpc.error_code("nosuchmethod", json!([])),
        code::METHOD_NOT_FOUND
    );
    // Malformed requests.
    let (s, v) = rpc.raw(Some(&rpc.auth), "{not json");
    assert_eq!(
        (s, v["error"]["code"].as_i64()),
        (200, Some(code::PARSE_ERROR))
    );
    let (_, v) = rpc.raw(Some(&rpc.auth), "[1,2]");
    assert_eq!(v["error"]["code"].as_i64(), Some(code::INVALID_REQUEST));
    let (_, v) = rpc.raw(
        Some(&rpc.auth),
        r#"{"id":1,"method":"uptime","params":{"a":1}}"#,
    );
    assert_eq!(v["error"]["code"].as_i64(), Some(code::INVALID_PARAMS));
    // An oversized body is refused: 413, or the connection closed under
    // the sender's feet; the server keeps answering.
    let big = format!("\"{}\"", "a".repeat(5 << 20));
    match rpc
        .agent
        .post(&rpc.url)
        .header("Authorization", &rpc.auth)
        .send(big)
    {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(ureq::Error::Io(_)) => {}
        Err(e) => panic!("oversized body: {e:?}"),
    }
    assert_eq!(rpc.call("getconnectioncount", json!([])).unwrap(), 2);

    // A payment: sendrawtransaction, then its proof.
    let tx = pay(c.chain_id(), &a, 0, 0, address(&b), 5 * COIN);
    let hex_tx = hex::encode(tx.to_bytes());
    let txid = rpc.call("sendrawtransaction", json!([hex_tx])).unwrap();
    assert_eq!(txid, tx.txid().to_string());
    let fin = rpc
        .call("waittransactionfinality", json!([hex_tx, 20_000]))
        .unwrap();
    assert_eq!(fin["txid"], tx.txid().to_string());
    assert_eq!(fin["final"], true);
    let proof =
        TimeProof::from_bytes(&hex::decode(fin["timeproof"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(proof.txid, tx.txid());
    let weight = proof.verify(c.chain_id(), &c.registry).unwrap();
    assert!(weight >= c.registry.quorum());
    // The recipient's balance at another node, and the spent coin's state.
    let rpc2 = Rpc::new(&c, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let bal = rpc2.call("getbalance", json!([addr_b])).unwrap();
        if bal["spendable"] == 200 * 1_000 * COIN + 5 * COIN {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "balance never arrived: {bal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let spent = rpc2
        .call("gettxout", json!([g.txid.to_string(), g.vout]))
        .unwrap();
    // Final, and maybe in a block already (the devnet makes one a second).
    assert!(
        spent["state"] == "spent_final" || spent["state"] == "spent_confirmed",
        "{spent}"
    );
    assert_eq!(spent["by"], tx.txid().to_string());
    // A double spend is refused with bitcoind's "rejected" code.
    let double = pay(c.chain_id(), &a, 0, 0, address(&a), 3 * COIN);
    let e = rpc
        .call(
            "sendrawtransaction",
            json!([hex::encode(double.to_bytes())]),
        )
        .unwrap_err();
    assert_eq!(e["code"], code::REJECTED, "{e}");
    assert!(e["data"]["reason_code"].as_u64().is_some(), "{e}");
    assert_eq!(
        rpc.call("getblockchaininfo", json!([])).unwrap()["finalized_transactions"],
        1
    );
}

#[test]
fn unauthenticated_and_wrong_password_get_401_and_floods_get_429() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // An rpcauth credential made by `time-cli rpcauth`.
    let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
        .args(["rpcauth", "alice", "wonderland"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = made["config_line"].as_str().unwrap();
    assert!(line.starts_with("rpcauth = [\"alice:"), "{line}");
    let c = Cluster::start_with(3, &format!("rpc_rate_limit = 8\n{line}\n"));
    let rpc = Rpc::new(&c, 1);
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"uptime"}"#;
    let (s, v) = rpc.raw(Some(&basic_auth("alice:wonderland")), body);
    assert_eq!(s, 200, "{v}");
    let (s, _) = rpc.raw(Some(&basic_auth("alice:wonderlan")), body);
    assert_eq!(s, 401);
    let (s, _) = rpc.raw(Some(&basic_auth("bob:wonderland")), body);
    assert_eq!(s, 401);
    let (s, _) = rpc.raw(None, body);
    assert_eq!(s, 401);
    let (s, _) = rpc.raw(Some(&basic_auth("__cookie__:wrong")), body);
    assert_eq!(s, 401);
    let (s, _) = rpc.raw(Some("Bearer x"), body);
    assert_eq!(s, 401);
    // A GET is refused too (after auth).
    let r = rpc
        .agent
        .get(&rpc.url)
        .header("Authorization", &rpc.auth)
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // 8 reads per second with a burst of 8: the 9th at once is refused.
    let mut refused = 0;
    for _ in 0..20 {
        let (s, v) = rpc.raw(Some(&rpc.auth), body);
        if s == 429 {
            assert_eq!(v["error"]["code"], code::RATE_LIMITED);
            refused += 1;
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused");
    // The bucket refills.
    std::thread::sleep(Duration::from_millis(500));
    let (s, _) = rpc.raw(Some(&rpc.auth), body);
    assert_eq!(s, 200);
}

fn cli(c: &Cluster, node: usize, args: &[&str]) -> (i32, String, String) {
    let node = node.to_string();
    let mut all: Vec<&std::ffi::OsStr> = vec![
        "--devnet".as_ref(),
        c.layout.dir.as_os_str(),
        "--node".as_ref(),
        node.as_ref(),
    ];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    common::time_cli(all)
}

/// Issue 11's methods: each is served, and every served method has a
/// `time-cli` subcommand with `--help` (and time-cli has none the node
/// lacks).
#[test]
fn every_rpc_method_is_served_and_has_a_time_cli_subcommand_with_help() {
    const ISSUE_11: &[&str] = &[
        "getblockchaininfo",
        "getblockcount",
        "getbestblockhash",
        "getblockhash",
        "getblock",
        "getrawtransaction",
        "gettransaction",
        "sendrawtransaction",
        "gettxout",
        "getbalance",
        "listunspent",
        "getmempoolinfo",
        "getrawmempool",
        "gettimeproof",
        "waittransactionfinality",
        "getpeerinfo",
        "getnetworkinfo",
        "getconnectioncount",
        "masternodelist",
        "masternodestatus",
        "getconsensusinfo",
        "getbanlist",
        "setban",
        "unban",
        "uptime",
        "stop",
    ];
    let served: Vec<&str> = timecoin::node::rpc::METHODS
        .iter()
        .map(|(m, _, _)| *m)
        .collect();
    for m in ISSUE_11 {
        assert!(served.contains(m), "{m} is not served");
    }
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    for m in &served {
        let (code, out) = run(&[m, "--help"]);
        assert_eq!(code, Some(0), "time-cli {m} --help");
        assert!(out.contains(&format!("Usage: time-cli {m}")), "{m}: {out}");
    }
    let (code, out) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let commands: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for c in &commands {
        assert!(
            *c == "rpcauth" || served.contains(c),
            "time-cli {c} calls no served method"
        );
    }
    assert_eq!(commands.len(), served.len() + 1, "{commands:?}");
}

#[test]
fn time_cli_round_trips_with_exit_codes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // This cluster also logs JSON: one object per line.
    // The payment path at debug for one module: its lines carry the txid.
    let c = Cluster::start_with(
        3,
        "log_format = \"json\"\nlog = \"info,timecoin::node::core_thread=debug\"\n",
    );
    let log = c.log(0);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "masternode listening" && v["level"] == "INFO"),
        "{log}"
    );
    let (code0, out, err) = cli(&c, 1, &["masternodestatus"]);
    assert_eq!(code0, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["peers_connected"], 2);
    let (code0, out, _) = cli(&c, 0, &["getconnectioncount"]);
    assert_eq!((code0, out.trim()), (0, "2"));
    // `help` is the node's method list, not clap's usage.
    let (code0, out, err) = cli(&c, 0, &["help"]);
    assert_eq!(code0, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["waittransactionfinality"].is_string(), "{v}");
    // A payment through the CLI, then its proof.
    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(c.chain_id(), &a, 0, 1, address(&b), COIN);
    let h = hex::encode(tx.to_bytes());
    let (code0, out, err) = cli(&c, 2, &["sendrawtransaction", &h]);
    assert_eq!(code0, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        tx.txid().to_string()
    );
    let (code0, out, err) = cli(&c, 2, &["waittransactionfinality", &h, "20000"]);
    assert_eq!(code0, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["final"], true);
    let txid = tx.txid().to_string();
    let steps: Vec<String> = c
        .log(2)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["txid"] == txid.as_str())
        .map(|v| v["fields"]["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        steps
            .iter()
            .any(|m| m == "payment locked and approved here")
            && steps.iter().any(|m| m == "payment final (TimeProof)"),
        "payment path lines with txid {txid}: {steps:?}"
    );
    // A JSON-RPC error: exit 1, the error as JSON on stderr.
    let (code1, _, err) = cli(&c, 0, &["getbalance", "nope"]);
    assert_eq!(code1, 1);
    let e: Value = serde_json::from_str(&err).unwrap();
    assert_eq!(e["code"], code::INVALID_ADDRESS_OR_KEY);
    // Bad usage: exit 2 (clap), with help available for each method.
    let (code2, _, _) = cli(&c, 0, &["gettxout", "abc", "notanumber"]);
    assert_eq!(code2, 2);
    let (code0, out, _) = cli(&c, 0, &["gettxout", "--help"]);
    assert_eq!(code0, 0);
    assert!(out.contains("state"), "{out}");
    // A wrong cookie: exit 3.
    let bad = c.layout.dir.join("bad.cookie");
    std::fs::write(&bad, "__cookie__:nope").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
        .arg("--rpc")
        .arg(format!("http://{}/", c.layout.rpc[0].unwrap()))
        .arg("--cookie")
        .arg(&bad)
        .arg("uptime")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the credentials"));
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Latency and throughput of a cheap call and of `sendrawtransaction`, one
/// client on one keep-alive connection, then 4 clients. Not run by default
/// (a measurement, not a check):
/// `cargo test --release --test rpc -- --ignored --nocapture measure`
#[test]
#[ignore]
fn measure_rpc_latency_and_throughput() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(3, "rpc_rate_limit = 1000000\n");
    let report = |what: &str, mut lat: Vec<Duration>, wall: Duration| {
        let n = lat.len();
        println!(
            "{what}: {n} calls in {:.2} s = {:.0}/s; p50 {:?} p99 {:?} max {:?}",
            wall.as_secs_f64(),
            n as f64 / wall.as_secs_f64(),
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 1.0)
        );
    };
    const CHEAP: usize = 2_000;
    let rpc = Rpc::new(&c, 0);
    let t = std::time::Instant::now();
    let lat: Vec<Duration> = (0..CHEAP)
        .map(|_| {
            let s = std::time::Instant::now();
            rpc.call("getconnectioncount", json!([])).unwrap();
            s.elapsed()
        })
        .collect();
    report("getconnectioncount, 1 client", lat, t.elapsed());
    let t = std::time::Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let rpc = Rpc::new(&c, 0);
                    (0..CHEAP / 4)
                        .map(|_| {
                            let s = std::time::Instant::now();
                            rpc.call("getconnectioncount", json!([])).unwrap();
                            s.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    report("getconnectioncount, 4 clients", lat, t.elapsed());

    // Payments: wallet w's coin k, 200 coins per wallet.
    let txs: Vec<Vec<String>> = (0..4)
        .map(|w| {
            let k = c.wallet_key(w);
            let to = address(&c.wallet_key((w + 1) % 4));
            (0..200)
                .map(|coin| hex::encode(pay(c.chain_id(), &k, w as u32, coin, to, COIN).to_bytes()))
                .collect()
        })
        .collect();
    let t = std::time::Instant::now();
    let lat: Vec<Duration> = txs[0]
        .iter()
        .map(|h| {
            let s = std::time::Instant::now();
            rpc.call("sendrawtransaction", json!([h])).unwrap();
            s.elapsed()
        })
        .collect();
    report(
        "sendrawtransaction (until locked here), 1 client",
        lat,
        t.elapsed(),
    );
    let t = std::time::Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = txs[1..]
            .iter()
            .map(|batch| {
                s.spawn(|| {
                    let rpc = Rpc::new(&c, 0);
                    batch
                        .iter()
                        .map(|h| {
                            let s = std::time::Instant::now();
                            rpc.call("sendrawtransaction", json!([h])).unwrap();
                            s.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    report(
        "sendrawtransaction (until locked here), 3 clients",
        lat,
        t.elapsed(),
    );
    // Every one of them reaches its proof.
    for batch in &txs {
        for h in batch.iter().step_by(50) {
            let v = rpc
                .call("waittransactionfinality", json!([h, 20_000]))
                .unwrap();
            assert_eq!(v["final"], true);
        }
    }
}

#[test]
fn transaction_proof_mempool_peer_and_registry_methods_then_stop() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(3);
    let rpc = Rpc::new(&c, 0);
    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(c.chain_id(), &a, 0, 3, address(&b), 2 * COIN);
    let hex_tx = hex::encode(tx.to_bytes());
    let txid = tx.txid().to_string();
    let unknown = timecoin::protocol::types::Txid([9; 32]).to_string();
    // Before it is sent, nobody knows it.
    for m in ["getrawtransaction", "gettransaction", "gettimeproof"] {
        assert_eq!(
            rpc.error_code(m, json!([unknown])),
            code::INVALID_ADDRESS_OR_KEY,
            "{m}"
        );
        assert_eq!(
            rpc.error_code(m, json!(["zz"])),
            code::INVALID_PARAMS,
            "{m}"
        );
        assert_eq!(rpc.error_code(m, json!([])), code::INVALID_PARAMS, "{m}");
        assert_eq!(rpc.error_code(m, json!([5])), code::INVALID_PARAMS, "{m}");
    }
    assert_eq!(
        rpc.error_code("gettransaction", json!([txid, 1])),
        code::INVALID_PARAMS
    );
    assert_eq!(
        rpc.error_code("getrawtransaction", json!([txid, "yes"])),
        code::INVALID_PARAMS
    );
    let fin = rpc
        .call("waittransactionfinality", json!([hex_tx, 20_000]))
        .unwrap();
    assert_eq!(fin["final"], true);

    // Read back at another masternode than the one it was sent to.
    let rpc1 = Rpc::new(&c, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let t = loop {
        let t = rpc1.call("gettransaction", json!([txid]));
        if let Ok(t) = &t {
            if t["state"] == "final" {
                break t.clone();
            }
        }
        assert!(std::time::Instant::now() < deadline, "never final: {t:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(t["hex"], hex_tx);
    assert_eq!(t["transaction"]["outputs"][0]["amount"], 2 * COIN);
    assert_eq!(
        t["transaction"]["outputs"][0]["address"],
        address(&b).to_string()
    );
    assert_eq!(t["timeproof"]["verifies"], true, "{t}");
    assert!(t["timeproof"]["approve_weight"].as_u64().unwrap() >= c.registry.quorum());
    assert_eq!(t["timeproof"]["quorum"], c.registry.quorum());
    assert_eq!(
        rpc1.call("getrawtransaction", json!([txid])).unwrap(),
        hex_tx
    );
    let verbose = rpc1.call("getrawtransaction", json!([txid, true])).unwrap();
    assert_eq!(verbose["txid"], txid);
    assert_eq!(
        verbose["inputs"][0]["txid"],
        genesis_outpoint(0, 3).txid.to_string()
    );
    let p = rpc1.call("gettimeproof", json!([txid])).unwrap();
    let proof = TimeProof::from_bytes(&hex::decode(p["hex"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(proof.txid, tx.txid());
    assert!(proof.verify(c.chain_id(), &c.registry).unwrap() >= c.registry.quorum());
    let voters: Vec<String> = proof.votes.iter().map(|v| v.voter.to_string()).collect();
    assert_eq!(p["voters"], json!(voters));
    // The devnet's blocks confirm the spend: the coin says where.
    let coin = genesis_outpoint(0, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = rpc1
            .call("gettxout", json!([coin.txid.to_string(), coin.vout]))
            .unwrap();
        if out["state"] == "spent_confirmed" {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never confirmed: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out["by"], txid);
    assert!(out["height"].as_u64().is_some(), "{out}");
    // A double spend of the same coin: rejected, and said so with the reason.
    let double = pay(c.chain_id(), &a, 0, 3, address(&a), COIN);
    let e = rpc
        .call(
            "sendrawtransaction",
            json!([hex::encode(double.to_bytes())]),
        )
        .unwrap_err();
    assert_eq!(e["code"], code::REJECTED, "{e}");
    let d = rpc
        .call("gettransaction", json!([double.txid().to_string()]))
        .unwrap();
    assert_eq!(d["state"], "rejected", "{d}");
    assert_eq!(d["reason_code"], e["data"]["reason_code"], "{d} {e}");
    assert_eq!(d["timeproof"], Value::Null);
    assert_eq!(
        rpc.error_code("gettimeproof", json!([double.txid().to_string()])),
        code::INVALID_ADDRESS_OR_KEY
    );

    // Mempool: nothing undecided once the payment is final.
    assert_eq!(rpc.call("getrawmempool", json!([])).unwrap(), json!([]));
    let m = rpc.call("getrawmempool", json!([true])).unwrap();
    assert_eq!(
        (m["size"].clone(), m["listed"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(
        rpc.error_code("getrawmempool", json!([3])),
        code::INVALID_PARAMS
    );
    assert_eq!(
        rpc.error_code("getrawmempool", json!([true, 1])),
        code::INVALID_PARAMS
    );

    // Peers and the registry.
    let keys: Vec<String> = (0..3)
        .map(|i| {
            timecoin::protocol::types::PublicKey::from_signing(&c.masternode_key(i)).to_string()
        })
        .collect();
    let peers = rpc.call("getpeerinfo", json!([])).unwrap();
    let peers = peers.as_array().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for (pi, i) in peers.iter().zip(1..) {
        let k = keys
            .iter()
            .position(|k| pi["key"] == *k)
            .expect("a registered key");
        assert_ne!(k, 0, "ourselves listed as a peer");
        assert_eq!(pi["connected"], true, "{pi}");
        assert_eq!(pi["banned_for_s"], Value::Null);
        assert!(i <= 2);
    }
    assert_eq!(
        rpc.error_code("getpeerinfo", json!([1])),
        code::INVALID_PARAMS
    );
    let list = rpc.call("masternodelist", json!([])).unwrap();
    let mns = list["masternodes"].as_array().unwrap();
    assert_eq!(mns.len(), 3);
    assert_eq!(list["quorum"], c.registry.quorum());
    let me: Vec<&Value> = mns.iter().filter(|m| m["self"] == true).collect();
    assert_eq!(me.len(), 1);
    assert_eq!(me[0]["key"], keys[0]);
    assert_eq!(
        rpc.error_code("masternodelist", json!(["x"])),
        code::INVALID_PARAMS
    );

    // unban: lifts a ban set by setban; a peer not banned is an error.
    rpc.call("setban", json!([keys[1], "add", 60])).unwrap();
    let banned = rpc.call("getpeerinfo", json!([])).unwrap();
    assert!(
        banned
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["key"] == keys[1] && p["banned_for_s"].as_u64().is_some()),
        "{banned}"
    );
    assert_eq!(
        rpc.call("unban", json!([keys[1]])).unwrap()["unbanned"],
        keys[1]
    );
    assert_eq!(rpc.call("getbanlist", json!([])).unwrap(), json!([]));
    assert_eq!(
        rpc.error_code("unban", json!([keys[1]])),
        code::INVALID_ADDRESS_OR_KEY
    );
    assert_eq!(rpc.error_code("unban", json!(["zz"])), code::INVALID_PARAMS);
    assert_eq!(rpc.error_code("unban", json!([])), code::INVALID_PARAMS);

    // time-cli has each of them, with --help.
    for sub in [
        "getrawtransaction",
        "gettransaction",
        "gettimeproof",
        "getrawmempool",
        "getpeerinfo",
        "masternodelist",
        "unban",
        "stop",
    ] {
        let (code0, out, err) = cli(&c, 0, &[sub, "--help"]);
        assert_eq!(code0, 0, "{sub}: {err}");
        assert!(out.contains("Usage"), "{sub}: {out}");
    }
    let (code0, out, err) = cli(&c, 1, &["gettimeproof", &txid]);
    assert_eq!(code0, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["hex"],
        p["hex"]
    );
    let (code0, out, _) = cli(&c, 0, &["masternodelist"]);
    assert_eq!(code0, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["masternodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (code1, _, _) = cli(&c, 0, &["gettransaction", &unknown]);
    assert_eq!(code1, 1);

    // stop: refused with parameters; else the node shuts down as on
    // SIGTERM and exits 0.
    let rpc2 = Rpc::new(&c, 2);
    assert_eq!(rpc2.error_code("stop", json!([1])), code::INVALID_PARAMS);
    let (code0, out, err) = cli(&c, 2, &["stop"]);
    assert_eq!(code0, 0, "{err}");
    assert!(out.contains("stopping"), "{out}");
    let mut child = c.children[2].take().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stop did not stop the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let log = c.log(2);
    assert!(log.contains("stop requested over RPC"), "{log}");
    assert!(log.contains("core stopped"), "{log}");
}

type WsClient = tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>;

/// Masternode `i`'s `timecoin_wallet_subscriptions` gauge, read until it
/// is `want` (10 s at most; the snapshot behind it is refreshed by the core).
fn wallet_subscriptions(c: &Cluster, i: usize, want: i64) -> i64 {
    let url = format!("http://{}/metrics", c.layout.metrics[i].unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = agent()
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("timecoin_wallet_subscriptions "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the gauge");
        if v == want || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A WebSocket client on `/ws` of masternode `i`, with `auth` (or none).
fn ws_connect(
    c: &Cluster,
    i: usize,
    auth: Option<&str>,
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let addr: SocketAddr = c.layout.rpc[i].unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("Authorization", a.parse().unwrap());
    }
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match tokio_tungstenite::tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(e) => panic!("handshake: {e}"),
    }
}

fn ws_send(ws: &mut WsClient, v: Value) {
    ws.send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
        .unwrap();
}

/// The next JSON message within `limit`, or None.
fn ws_next(ws: &mut WsClient, limit: Duration) -> Option<Value> {
    use tokio_tungstenite::tungstenite::{Error, Message};
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Message::Close(f)) => panic!("closed by the node: {f:?}"),
            Ok(_) => {}
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("websocket: {e}"),
        }
    }
    None
}

/// The answer to request `id` (events read on the way are kept).
fn ws_answer(ws: &mut WsClient, id: u64, events: &mut Vec<Value>) -> Value {
    loop {
        let v = ws_next(ws, Duration::from_secs(10)).expect("an answer");
        if v["id"] == id {
            return v;
        }
        events.push(v);
    }
}

#[test]
fn a_payment_is_followed_to_finality_over_websocket_events() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(3, "rpc_rate_limit = 100000\n");
    let rpc = Rpc::new(&c, 0);
    let auth = Rpc::new(&c, 1).auth;
    // Authenticated like the RPC.
    use tokio_tungstenite::tungstenite::Error as WsError;
    match ws_connect(&c, 1, None) {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("unauthenticated websocket: {:?}", other.map(|_| ())),
    }
    match ws_connect(&c, 1, Some(&basic_auth("__cookie__:wrong"))) {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("wrong cookie: {:?}", other.map(|_| ())),
    }
    let mut ws = ws_connect(&c, 1, Some(&auth)).unwrap();
    let mut events = Vec::new();

    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(c.chain_id(), &a, 0, 5, address(&b), 3 * COIN);
    let txid = tx.txid().to_string();
    // Bad requests: JSON-RPC errors with codes, and the socket stays open.
    for (req, want) in [
        (
            json!({"id": 1, "method": "subscribe_txid", "params": ["zz"]}),
            code::INVALID_PARAMS,
        ),
        (
            json!({"id": 1, "method": "subscribe_txid", "params": []}),
            code::INVALID_PARAMS,
        ),
        (
            json!({"id": 1, "method": "subscribe_address", "params": ["nope"]}),
            code::INVALID_ADDRESS_OR_KEY,
        ),
        (
            json!({"id": 1, "method": "subscribe_everything", "params": [1]}),
            code::METHOD_NOT_FOUND,
        ),
        (json!({"id": 1, "params": [1]}), code::INVALID_REQUEST),
    ] {
        ws_send(&mut ws, req.clone());
        let v = ws_answer(&mut ws, 1, &mut events);
        assert_eq!(v["error"]["code"], want, "{req} -> {v}");
    }
    ws.send(tokio_tungstenite::tungstenite::Message::text("{nope"))
        .unwrap();
    let v = ws_next(&mut ws, Duration::from_secs(5)).unwrap();
    assert_eq!(v["error"]["code"], code::PARSE_ERROR);

    // Subscribed by txid (before it exists) and by the payee's address.
    ws_send(
        &mut ws,
        json!({"id": 2, "method": "subscribe_txid", "params": [txid]}),
    );
    assert_eq!(
        ws_answer(&mut ws, 2, &mut events)["result"]["subscribed"],
        txid
    );
    let addr_b = address(&b).to_string();
    ws_send(
        &mut ws,
        json!({"id": 3, "method": "subscribe_address", "params": [addr_b]}),
    );
    assert_eq!(
        ws_answer(&mut ws, 3, &mut events)["result"]["subscribed"],
        addr_b
    );

    // Sent by sendrawtransaction at another masternode.
    let sent = rpc
        .call("sendrawtransaction", json!([hex::encode(tx.to_bytes())]))
        .unwrap();
    assert_eq!(sent, txid);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (mut fin, mut utxo) = (Vec::new(), Vec::new());
    while std::time::Instant::now() < deadline && (fin.is_empty() || utxo.is_empty()) {
        if let Some(v) = ws_next(&mut ws, Duration::from_millis(200)) {
            events.push(v);
        }
        for v in events.drain(..) {
            match v["method"].as_str() {
                Some("tx_notification") => fin.push(v),
                Some("utxo_finalized") => utxo.push(v),
                _ => panic!("unexpected: {v}"),
            }
        }
    }
    // Nothing more: subscribed twice, told once.
    if let Some(v) = ws_next(&mut ws, Duration::from_millis(500)) {
        panic!("a second event: {v}");
    }
    assert_eq!(fin.len(), 1, "{fin:?}");
    let f = &fin[0]["params"];
    assert_eq!(f["txid"], txid);
    assert_eq!(f["final"], true);
    assert_eq!(f["hex"], hex::encode(tx.to_bytes()));
    let proof =
        TimeProof::from_bytes(&hex::decode(f["timeproof"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(proof.txid, tx.txid());
    assert!(proof.verify(c.chain_id(), &c.registry).unwrap() >= c.registry.quorum());
    assert_eq!(utxo.len(), 1, "{utxo:?}");
    let u = &utxo[0]["params"];
    assert_eq!(
        (u["txid"].clone(), u["vout"].clone()),
        (json!(txid), json!(0))
    );
    assert_eq!(u["amount"], 3 * COIN);
    assert_eq!(u["address"], addr_b);
    assert_eq!(u["state"], "unspent");

    // A rejection, with its reason.
    let double = pay(c.chain_id(), &a, 0, 5, address(&a), COIN);
    let dtxid = double.txid().to_string();
    ws_send(
        &mut ws,
        json!({"id": 4, "method": "subscribe_txid", "params": [dtxid]}),
    );
    assert_eq!(
        ws_answer(&mut ws, 4, &mut events)["result"]["subscribed"],
        dtxid
    );
    // At the masternode serving the socket: the one that rejects it.
    let e = Rpc::new(&c, 1)
        .call(
            "sendrawtransaction",
            json!([hex::encode(double.to_bytes())]),
        )
        .unwrap_err();
    assert_eq!(e["code"], code::REJECTED);
    let v = ws_next(&mut ws, Duration::from_secs(10)).expect("tx_declined");
    assert_eq!(v["method"], "tx_declined", "{v}");
    assert_eq!(v["params"]["txid"], dtxid);
    assert_eq!(v["params"]["reason_code"], e["data"]["reason_code"]);
    // A txid already final is told at once.
    ws_send(
        &mut ws,
        json!({"id": 5, "method": "subscribe_txid", "params": [txid]}),
    );
    let _ = ws_answer(&mut ws, 5, &mut events);
    let v = match events.pop() {
        Some(v) => v,
        None => ws_next(&mut ws, Duration::from_secs(5)).expect("its proof at once"),
    };
    assert_eq!(v["method"], "tx_notification", "{v}");
    assert_eq!(v["params"]["txid"], txid);

    // Unsubscribed from the payee's address: the node's subscription is
    // freed, and a payment to it is told only by its txid subscription.
    assert_eq!(wallet_subscriptions(&c, 1, 1), 1);
    for (id, was) in [(6, true), (7, false)] {
        ws_send(
            &mut ws,
            json!({"id": id, "method": "unsubscribe_address", "params": [addr_b]}),
        );
        assert_eq!(
            ws_answer(&mut ws, id, &mut events)["result"],
            json!({"unsubscribed": addr_b, "was_subscribed": was})
        );
    }
    assert_eq!(wallet_subscriptions(&c, 1, 0), 0);
    let tx2 = pay(c.chain_id(), &a, 0, 6, address(&b), COIN);
    let txid2 = tx2.txid().to_string();
    ws_send(
        &mut ws,
        json!({"id": 8, "method": "subscribe_txid", "params": [txid2]}),
    );
    let _ = ws_answer(&mut ws, 8, &mut events);
    let v = rpc
        .call(
            "waittransactionfinality",
            json!([hex::encode(tx2.to_bytes()), 20_000]),
        )
        .unwrap();
    assert_eq!(v["final"], true);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && !events.iter().any(|v| v["params"]["txid"] == txid2)
    {
        events.extend(ws_next(&mut ws, Duration::from_millis(200)));
    }
    events.extend(ws_next(&mut ws, Duration::from_millis(500)));
    let methods: Vec<&str> = events.iter().filter_map(|v| v["method"].as_str()).collect();
    assert_eq!(methods, vec!["tx_notification"], "{events:?}");
    events.clear();
    // A subscription ends with its transaction's outcome.
    ws_send(
        &mut ws,
        json!({"id": 9, "method": "unsubscribe_txid", "params": [txid2]}),
    );
    assert_eq!(
        ws_answer(&mut ws, 9, &mut events)["result"]["was_subscribed"],
        false
    );

    // At most MAX_WS_SUBSCRIPTIONS per connection.
    use timecoin::node::rpc::ws::{MAX_WS_CONNECTIONS, MAX_WS_SUBSCRIPTIONS};
    let mut ws2 = ws_connect(&c, 1, Some(&auth)).unwrap();
    for n in 0..MAX_WS_SUBSCRIPTIONS as u64 {
        let mut t = [0u8; 32];
        t[..8].copy_from_slice(&n.to_le_bytes());
        let t = timecoin::protocol::types::Txid(t).to_string();
        ws_send(
            &mut ws2,
            json!({"id": n + 10, "method": "subscribe_txid", "params": [t]}),
        );
        let v = ws_answer(&mut ws2, n + 10, &mut events);
        assert!(v.get("error").is_none(), "{n}: {v}");
    }
    ws_send(
        &mut ws2,
        json!({"id": 1, "method": "subscribe_address", "params": [address(&a).to_string()]}),
    );
    let v = ws_answer(&mut ws2, 1, &mut events);
    assert_eq!(v["error"]["code"], code::INVALID_REQUEST, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&MAX_WS_SUBSCRIPTIONS.to_string()));
    // An unsubscription frees its place at once.
    let first = timecoin::protocol::types::Txid([0; 32]).to_string();
    ws_send(
        &mut ws2,
        json!({"id": 2, "method": "unsubscribe_txid", "params": [first]}),
    );
    assert_eq!(
        ws_answer(&mut ws2, 2, &mut events)["result"],
        json!({"unsubscribed": first, "was_subscribed": true})
    );
    ws_send(
        &mut ws2,
        json!({"id": 3, "method": "subscribe_address", "params": [address(&a).to_string()]}),
    );
    let v = ws_answer(&mut ws2, 3, &mut events);
    assert_eq!(v["result"]["subscribed"], address(&a).to_string(), "{v}");
    ws_send(
        &mut ws2,
        json!({"id": 4, "method": "subscribe_txid", "params": [first]}),
    );
    let v = ws_answer(&mut ws2, 4, &mut events);
    assert_eq!(v["error"]["code"], code::INVALID_REQUEST, "{v}");
    // Bad parameters get the same errors as a subscription's.
    ws_send(
        &mut ws2,
        json!({"id": 5, "method": "unsubscribe_address", "params": ["nope"]}),
    );
    let v = ws_answer(&mut ws2, 5, &mut events);
    assert_eq!(v["error"]["code"], code::INVALID_ADDRESS_OR_KEY, "{v}");
    // At most MAX_WS_CONNECTIONS at once: one more is told 503.
    let mut open = vec![ws, ws2];
    while open.len() < MAX_WS_CONNECTIONS {
        open.push(ws_connect(&c, 1, Some(&auth)).unwrap());
    }
    match ws_connect(&c, 1, Some(&auth)) {
        Err(WsError::Http(r)) => assert_eq!(r.status().as_u16(), 503),
        other => panic!("connection over the cap: {:?}", other.map(|_| ())),
    }
    // Closing one frees its place.
    let mut one = open.pop().unwrap();
    one.close(None).unwrap();
    // Until the node's close answer (then the socket ends).
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until && one.read().is_ok() {}
    drop(one);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match ws_connect(&c, 1, Some(&auth)) {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("place never freed: {e}"),
        }
    }
    assert_eq!(rpc.call("getconnectioncount", json!([])).unwrap(), 2);
}

/// A WebSocket client that hardly reads: a tiny receive buffer, then no
/// reads while payments to its address finalize. The node closes it as a
/// slow consumer (a write stuck for WS_SEND_TIMEOUT) and keeps serving.
#[test]
fn a_websocket_client_that_does_not_read_is_closed_as_a_slow_consumer() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(3, "rpc_rate_limit = 100000\n");
    let rpc = Rpc::new(&c, 0);
    let addr: SocketAddr = c.layout.rpc[0].unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    sock.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", rpc.auth.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::tungstenite::client(req, stream).unwrap();
    let payee = address(&c.wallet_key(1));
    let mut events = Vec::new();
    for w in 0..4 {
        let a = address(&c.wallet_key(w)).to_string();
        ws_send(
            &mut ws,
            json!({"id": w + 1, "method": "subscribe_address", "params": [a]}),
        );
        assert!(ws_answer(&mut ws, w as u64 + 1, &mut events)["result"]["subscribed"].is_string());
    }
    // 800 payments touching them (about 2 KB of events each); the client
    // reads nothing meanwhile.
    for w in 0..4 {
        let k = c.wallet_key(w);
        for coin in 0..200 {
            let tx = pay(c.chain_id(), &k, w as u32, coin, payee, COIN);
            rpc.call("sendrawtransaction", json!([hex::encode(tx.to_bytes())]))
                .unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !c.log(0).contains("slow consumer") {
        if std::time::Instant::now() > deadline {
            let mut n = 0;
            let mut bytes = 0;
            while let Some(v) = ws_next(&mut ws, Duration::from_secs(2)) {
                n += 1;
                bytes += v.to_string().len();
            }
            panic!("never closed as a slow consumer; {n} events ({bytes} bytes) read after");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // What was written before reads out, then the connection ends.
    let mut read = 0;
    let ended = loop {
        match ws.read() {
            Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => break true,
            Ok(_) => read += 1,
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still open after {read}"
                );
            }
            Err(_) => break true,
        }
    };
    assert!(ended);
    assert!(read < 3_200, "{read} events: all of them got through");
    // The node goes on serving.
    assert_eq!(rpc.call("getconnectioncount", json!([])).unwrap(), 2);
}

#[test]
fn block_methods_answer_valid_and_invalid_params() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(3);
    let rpc = Rpc::new(&c, 1);
    // A payment, so a block holds a transaction.
    let key = c.wallet_key(0);
    let tx = pay(c.chain_id(), &key, 0, 5, address(&c.wallet_key(1)), COIN);
    let hex_tx = hex::encode(tx.to_bytes());
    rpc.call("waittransactionfinality", json!([hex_tx]))
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let height = loop {
        let g = tx.inputs[0].prev;
        let out = rpc
            .call("gettxout", json!([g.txid.to_string(), g.vout]))
            .unwrap();
        if let Some(h) = out["height"].as_u64() {
            break h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never confirmed: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let count = rpc
        .call("getblockcount", json!([]))
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(count >= height && height >= 1);
    let best = rpc.call("getbestblockhash", json!([])).unwrap();
    assert_eq!(best.as_str().unwrap().len(), 64);
    let hash = rpc.call("getblockhash", json!([height])).unwrap();
    let b = rpc.call("getblock", json!([hash])).unwrap();
    assert_eq!(b["height"], height);
    assert_eq!(b["hash"], hash);
    assert!(
        b["tx"]
            .as_array()
            .unwrap()
            .contains(&json!(tx.txid().to_string())),
        "{b}"
    );
    assert!(
        b["certificate"]["weight"].as_u64().unwrap() * 3 > 2 * 3,
        "{b}"
    );
    assert!(b["confirmations"].as_u64().unwrap() >= 1);
    let full = rpc.call("getblock", json!([hash, 2])).unwrap();
    assert!(full["tx"][0]["txid"].is_string(), "{full}");
    let raw = rpc.call("getblock", json!([hash, 0])).unwrap();
    let bytes = hex::decode(raw.as_str().unwrap()).unwrap();
    let decoded = timecoin_core::blocks::Block::from_bytes(&bytes).unwrap();
    assert_eq!(decoded.hash().to_string(), hash.as_str().unwrap());
    // The genesis hash at height 0, and the previous block links back.
    let zero = rpc.call("getblockhash", json!([0])).unwrap();
    if height == 1 {
        assert_eq!(b["previousblockhash"], zero);
    }
    let info = rpc.call("getconsensusinfo", json!([])).unwrap();
    assert!(info["height"].as_u64().unwrap() >= height, "{info}");
    assert_eq!(info["halted"], false);
    assert_eq!(info["stopped"], false);
    assert_eq!(info["evidence_kept"], 0);
    assert_eq!(info["total_weight"], 3);
    assert!(info["leader"].is_string());
    // Invalid parameters: typed JSON-RPC errors.
    assert_eq!(rpc.error_code("getblockcount", json!([1])), -32602);
    assert_eq!(rpc.error_code("getbestblockhash", json!(["x"])), -32602);
    assert_eq!(rpc.error_code("getblockhash", json!([])), -32602);
    assert_eq!(rpc.error_code("getblockhash", json!(["one"])), -32602);
    assert_eq!(rpc.error_code("getblockhash", json!([-1])), -32602);
    assert_eq!(rpc.error_code("getblockhash", json!([1u64 << 60])), -8);
    assert_eq!(rpc.error_code("getblock", json!([])), -32602);
    assert_eq!(rpc.error_code("getblock", json!(["zz"])), -32602);
    assert_eq!(rpc.error_code("getblock", json!([hash, 3])), -32602);
    assert_eq!(rpc.error_code("getblock", json!(["00".repeat(32)])), -5);
    assert_eq!(rpc.error_code("getconsensusinfo", json!([1])), -32602);
}
