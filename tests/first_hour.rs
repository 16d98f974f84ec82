//! The first hour of a new operator (issue 11, item 7): each mistake they
//! made gets an error that names what is wrong and what to do, checked
//! here through the real binaries.

mod common;

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{address, Cluster, SERIAL};
use timecoin::devnet::{DevnetLayout, DevnetSpec};
use timecoin::node::genesis_file::genesis_outpoint;
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::types::{Transaction, TxOutput, COIN};

fn free_port_base(span: u16) -> u16 {
    for _ in 0..200 {
        let base = 20000 + (rand::random::<u16>() % 30000);
        if (0..span).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free ports");
}

/// A devnet's files (no process started) in a new temporary directory.
fn layout(nodes: usize) -> (tempfile::TempDir, DevnetLayout) {
    let dir = tempfile::tempdir().unwrap();
    let spec = DevnetSpec {
        nodes,
        base_port: free_port_base(DevnetSpec::span_for(nodes, 2) as u16),
        wallets: 2,
        coins_per_wallet: 4,
        port_stride: 2,
        ..Default::default()
    };
    let l = DevnetLayout::generate(dir.path(), &spec).unwrap();
    (dir, l)
}

/// `time-masternode run` on masternode 0's config with `edit` applied to it.
fn run_with(l: &DevnetLayout, edit: impl Fn(String) -> String) -> Output {
    let cfg = &l.node_configs[0];
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, edit(text)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_time-masternode"))
        .arg("run")
        .arg("--config")
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {}", stderr(&out));
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into()
}

fn replace_line(text: &str, key: &str, line: Option<&str>) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| l.split('=').next().map(str::trim) != Some(key))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(l) = line {
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[test]
fn a_missing_key_file_is_named_even_when_the_network_is_left_at_mainnet() {
    let (_d, l) = layout(1);
    let out = run_with(&l, |t| {
        let t = replace_line(&t, "network", None);
        replace_line(&t, "key_file", Some("key_file = \"/nonexistent/key.json\""))
    });
    let e = stderr(&out);
    assert!(
        e.contains("cannot read key file /nonexistent/key.json"),
        "{e}"
    );
    assert!(!e.contains("genesis is for network"), "{e}");
}

#[test]
fn a_network_mismatch_says_which_setting_to_change() {
    let (_d, l) = layout(1);
    let out = run_with(&l, |t| replace_line(&t, "network", None));
    let e = stderr(&out);
    assert!(e.contains("is for network \"devnet\""), "{e}");
    assert!(e.contains("set `network = \"devnet\"`"), "{e}");
}

#[test]
fn a_masternode_whose_key_is_not_in_the_genesis_refuses_to_start() {
    let (_d, l) = layout(1);
    let stranger = l.dir.join("stranger.json");
    KeyFile::save(&KeyFile::generate(), &stranger).unwrap();
    let line = format!("key_file = \"{}\"", stranger.display());
    let out = run_with(&l, |t| replace_line(&t, "key_file", Some(&line)));
    let e = stderr(&out);
    assert!(
        e.contains("is not a registered masternode in the genesis"),
        "{e}"
    );
    assert!(e.contains("stranger.json"), "{e}");
}

#[test]
fn out_of_range_config_values_are_refused_with_their_range() {
    let (_d, l) = layout(1);
    let out = run_with(&l, |t| format!("{t}round_window_us = 999999\n"));
    let e = stderr(&out);
    assert!(
        e.contains("round_window_us = 999999 is out of range: use 0 to 5000"),
        "{e}"
    );
    let out = run_with(&l, |t| {
        let t = replace_line(&t, "round_window_us", None);
        replace_line(&t, "verify_threads", Some("verify_threads = 0"))
    });
    assert!(
        stderr(&out).contains("verify_threads = 0 is out of range: use 1 to 64"),
        "{}",
        stderr(&out)
    );
}

/// Runs `cmd` with its stdout closed before it writes: it must not panic.
fn with_stdout_closed(mut cmd: Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone, like `| head` done
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap(), err)
}

#[test]
fn a_closed_stdout_does_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut mn = Command::new(env!("CARGO_BIN_EXE_time-masternode"));
    mn.args(["devnet", "--init-only", "--nodes", "1", "--base-port"])
        .arg(free_port_base(8).to_string())
        .arg("--data-dir")
        .arg(dir.path().join("d"));
    let (st, err) = with_stdout_closed(mn);
    assert!(!err.contains("panicked"), "{err}");
    assert!(st.success(), "{st}: {err}");
    let mut cli = Command::new(env!("CARGO_BIN_EXE_time-cli"));
    cli.args(["rpcauth", "alice"]);
    let (_, err) = with_stdout_closed(cli);
    assert!(!err.contains("panicked"), "{err}");
    let mut wallet = Command::new(env!("CARGO_BIN_EXE_time-wallet"));
    wallet
        .args(["keygen", "--out"])
        .arg(dir.path().join("k.json"));
    let (_, err) = with_stdout_closed(wallet);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_second_devnet_in_the_same_directory_fails_at_once() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let base = free_port_base(8).to_string();
    let devnet = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_time-masternode"));
        c.args(["devnet", "--nodes", "1", "--wallets", "1", "--coins", "2"])
            .args(["--base-port", &base, "--exit-after", "60"])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null());
        c
    };
    let mut first = devnet()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for "devnet is up" on its stdout.
    let (up, _keep_open) = wait_until_up(first.stdout.take().unwrap());
    assert!(up, "the first devnet did not come up");
    let t = Instant::now();
    let second = devnet().output().unwrap();
    let e = stderr(&second);
    let so = String::from_utf8_lossy(&second.stdout);
    // SAFETY: kill(2) of the child this test spawned.
    unsafe {
        libc::kill(first.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = first.wait();
    assert!(!second.status.success(), "second devnet exited 0: {so} {e}");
    assert!(e.contains("a devnet is already running in"), "{e}");
    assert!(!so.contains("devnet is up"), "{so}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// Reads a devnet's stdout until "devnet is up" (true) or its end (false);
/// returns the pipe so it stays open.
fn wait_until_up(mut out: std::process::ChildStdout) -> (bool, std::process::ChildStdout) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 {
        buf.push(byte[0]);
        if String::from_utf8_lossy(&buf).contains("devnet is up") {
            return (true, out);
        }
    }
    (false, out)
}

/// The devnet spaces its P2P ports by 2, so each masternode's TCP peer pool
/// (P2P port + 1) is free: with `--peer-transport=tcp` every masternode
/// binds it and connects to all others ("devnet is up" is printed only
/// then). Before the spacing, the second node failed with "Address already
/// in use".
#[test]
fn a_devnet_runs_the_tcp_peer_pool() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_time-masternode"))
        .args(["devnet", "--nodes", "3", "--wallets", "1", "--coins", "2"])
        .args(["--base-port", &free_port_base(16).to_string()])
        .args(["--exit-after", "60", "--node-arg=--peer-transport=tcp"])
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (up, _keep_open) = wait_until_up(child.stdout.take().unwrap());
    // SAFETY: kill(2) of the child this test spawned.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let _ = child.wait();
    let logs: String = (0..3)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("d/mn{i}/node.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(up, "the TCP-pool devnet did not come up: {err}\n{logs}");
    assert!(!logs.contains("Address already in use"), "{logs}");
    assert_eq!(
        logs.matches("peer pool listening transport=Tcp").count(),
        3,
        "{logs}"
    );
}

fn wallet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_time-wallet"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn wallet_mistakes_are_named_with_what_to_do() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(3);
    let genesis = c.layout.genesis.display().to_string();
    let key = c.layout.wallet_keys[0].display().to_string();
    let to = address(&c.wallet_key(1)).to_string();
    let node = c.addr(0).to_string();
    let send = |extra: &[&str]| {
        let mut a = vec![
            "send",
            "--key",
            &key,
            "--to",
            &to,
            "--genesis",
            &genesis,
            "--node",
            &node,
        ];
        a.extend_from_slice(extra);
        wallet(&a)
    };
    // --amount -1: not a clap puzzle, a clear refusal.
    let o = send(&["--amount", "-1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is negative"), "{}", stderr(&o));
    // A fee below the minimum, named as such.
    let o = send(&["--amount", "1", "--fee", "0.001"]);
    assert!(
        stderr(&o).contains("below the network's minimum 0.01000000 TIME"),
        "{}",
        stderr(&o)
    );
    // More than the wallet has: in TIME, not base units.
    let o = send(&["--amount", "999999"]);
    assert!(
        stderr(&o).contains("TIME spendable") && stderr(&o).contains("999999.01000000 TIME needed"),
        "{}",
        stderr(&o)
    );
    // `--node localhost:PORT` and an upper-case address are accepted.
    let port = c.addr(0).port();
    let upper = to.to_uppercase();
    let local = format!("localhost:{port}");
    let o = wallet(&[
        "balance",
        "--address",
        &upper,
        "--genesis",
        &genesis,
        "--node",
        &local,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&to),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // No genesis file where the default points (run from elsewhere than
    // the repository): told where to get one.
    let o = Command::new(env!("CARGO_BIN_EXE_time-wallet"))
        .args(["balance", "--address", &to, "--node", &node])
        .current_dir(c.dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot read genesis file devnet-data/genesis.json")
            && stderr(&o).contains("--genesis PATH"),
        "{}",
        stderr(&o)
    );
    // A node name that does not resolve: named.
    let o = wallet(&[
        "balance",
        "--address",
        &to,
        "--node",
        "no-such-host.invalid:1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not host:port"), "{}", stderr(&o));
    // The genesis of another network: told the chain is wrong, not just
    // "connection closed".
    let (_other_dir, other) = layout(1);
    let other_genesis = other.genesis.display().to_string();
    let o = wallet(&[
        "balance",
        "--address",
        &to,
        "--genesis",
        &other_genesis,
        "--node",
        &node,
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("wrong chain id"), "{e}");
    assert!(e.contains("--genesis"), "{e}");

    // Coins chosen by the wallet's user: exactly those are spent.
    let chosen = genesis_outpoint(0, 7);
    let coin = format!("{}:{}", chosen.txid, chosen.vout);
    let o = send(&["--amount", "2", "--coin", &coin]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
        .arg("--devnet")
        .arg(&c.layout.dir)
        .args([
            "gettxout",
            &chosen.txid.to_string(),
            &chosen.vout.to_string(),
        ])
        .output()
        .unwrap();
    let spent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        spent["state"] == "spent_final" || spent["state"] == "spent_confirmed",
        "{spent}"
    );
    // Another wallet's coin, or a spent one: named, with why.
    let theirs = genesis_outpoint(1, 0);
    let o = send(&["--amount", "1", "--coin", &format!("{}:0", theirs.txid)]);
    assert!(
        stderr(&o).contains("cannot be spent: it pays"),
        "{}",
        stderr(&o)
    );
    let o = send(&["--amount", "1", "--coin", &coin]);
    assert!(stderr(&o).contains("not unspent"), "{}", stderr(&o));
    let o = send(&["--amount", "1", "--coin", "zz"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give TXID:VOUT"), "{}", stderr(&o));

    // `watch` of the payer: its own payment is "sent", the change is not
    // shown as a payment received.
    let payer = address(&c.wallet_key(0)).to_string();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_time-wallet"))
        .args(["watch", "--address", &payer, "--seconds", "8"])
        .args(["--genesis", &genesis, "--node", &node])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut so = watch.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut all = String::new();
        let _ = so.read_to_string(&mut all);
        all
    });
    std::thread::sleep(Duration::from_millis(1_500)); // subscribed by then
    let o = send(&["--amount", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = watch.wait();
    let seen = lines.join().unwrap();
    assert!(
        seen.contains("sent 1.00000000 TIME from this address"),
        "{seen}"
    );
    assert!(!seen.contains("received by this address"), "{seen}");

    // A fee below the minimum at the node: reason "fee below the minimum"
    // (code 12), not "outputs exceed inputs".
    let k = c.wallet_key(0);
    let tx = Transaction::build_signed(
        c.chain_id(),
        &k,
        &[genesis_outpoint(0, 1)],
        vec![TxOutput {
            amount: 1_000 * COIN - COIN / 1_000,
            address: address(&c.wallet_key(1)),
        }],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_time-cli"))
        .arg("--devnet")
        .arg(&c.layout.dir)
        .args(["sendrawtransaction", &hex::encode(tx.to_bytes())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("fee below the minimum"),
        "{e}"
    );
    assert_eq!(e["data"]["reason_code"], 12, "{e}");
}

#[test]
fn run_help_shows_config_keys_the_config_takes() {
    let out = Command::new(env!("CARGO_BIN_EXE_time-masternode"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("listen = \"0.0.0.0:24000\""), "{help}");
    assert!(help.contains("listen_host = \"0.0.0.0\""), "{help}");
    // The example keys are real ones.
    let (_d, l) = layout(1);
    let cfg = &l.node_configs[0];
    let text = std::fs::read_to_string(cfg).unwrap();
    let text = replace_line(&text, "listen_host", Some("listen_host = \"0.0.0.0\""));
    std::fs::write(cfg, text).unwrap();
    let r = timecoin::node::config::RunArgs {
        config: Some(cfg.clone()),
        ..Default::default()
    }
    .resolve();
    assert!(r.is_ok(), "{:?}", r.err());
}

#[test]
fn a_payment_without_a_quorum_says_so_rather_than_no_answer() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(3);
    c.kill9(1);
    c.kill9(2);
    std::thread::sleep(Duration::from_secs(1));
    let genesis = c.layout.genesis.display().to_string();
    let key = c.layout.wallet_keys[0].display().to_string();
    let to = address(&c.wallet_key(1)).to_string();
    let node = c.addr(0).to_string();
    let o = wallet(&[
        "send",
        "--key",
        &key,
        "--to",
        &to,
        "--amount",
        "1",
        "--timeout",
        "6",
        "--genesis",
        &genesis,
        "--node",
        &node,
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("quorum"), "{e}");
    assert!(!e.contains("no answer within"), "{e}");
}
