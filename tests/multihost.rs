//! Multi-host test (issue 3): four masternodes, each in its own network
//! namespace, joined by a Linux bridge over veth pairs, talking real
//! multicast between namespaces. nftables in every host namespace drops a
//! fifth of the multicast datagrams it receives; every payment must still
//! finalize (through gap repair over TCP), on every masternode, and the
//! nodes' counters must show that repairs happened. The same test runs with
//! the io_uring and the epoll UDP backend.
//!
//! `late_multicast_receiver_repairs_what_it_missed`: a receiver whose
//! multicast starts late still learns what it missed (senders announce their
//! stream position over TCP, `FastPathSeq`).
//! `multicast_cut_receiver_catches_up_after_heal`: one host's multicast is
//! cut for `TIME_MULTIHOST_CUT_SECS` (120) while payments go on, then healed;
//! that masternode must end with every payment final.
//!
//! Multicast stays on the test link: every datagram goes out with TTL 1
//! (counted, and anything else dropped, in each host's nftables output hook),
//! and the namespaces have no route anywhere else.
//!
//! Needs root, iproute2 and nftables. Without them the tests fail when `CI`
//! is set and are skipped (loudly) otherwise. `TIME_NET_SKIP_URING=1` skips
//! the io_uring variant explicitly where io_uring is unavailable.

mod netns;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::Topology;
use time_net::udp::IoBackend;
use timecoin::node::genesis_file::{genesis_outpoint, Allocation, GenesisFile, MasternodeEntry};
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::types::{Address, OutPoint, PublicKey, Txid, COIN};
use timecoin::protocol::utxo::UtxoEntry;
use timecoin::wallet::WalletClient;

const NODES: usize = 4;
const P2P_PORT: u16 = 24100;
const GROUP_PORT: u16 = 24300;
/// Percentage of received multicast datagrams each host drops
/// (`TIME_MULTIHOST_LOSS` overrides, for stress runs).
const LOSS_PERCENT: u32 = 20;
/// Payment rounds; each round every wallet sends one payment, concurrently
/// (`TIME_MULTIHOST_ROUNDS` overrides, at most 40).
const ROUNDS: usize = 10;
/// Genesis coins of 1000 TIME per wallet.
const COINS: u32 = 50;
const WALLET: &str = env!("CARGO_BIN_EXE_time-wallet");
const MASTERNODE: &str = env!("CARGO_BIN_EXE_time-masternode");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn loss_percent() -> u32 {
    env_or("TIME_MULTIHOST_LOSS", LOSS_PERCENT).min(90)
}

fn rounds() -> usize {
    env_or("TIME_MULTIHOST_ROUNDS", ROUNDS).clamp(1, 40)
}

/// The two backends' tests share two cores: one cluster at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Children killed (by pid) when dropped, also on panic.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct MultiHost {
    // Field order matters for Drop: nodes die before the namespaces go.
    nodes: Procs,
    net: Topology,
    dir: tempfile::TempDir,
    genesis: PathBuf,
    chain_id: u32,
    group: SocketAddrV4,
    wallet_keys: Vec<PathBuf>,
    /// Receive-only addresses, one per wallet.
    sinks: Vec<String>,
}

impl MultiHost {
    /// Host `i` drops `loss[i]`% of the multicast it receives from the start.
    fn start(backend: &str, loss: &[u32]) -> MultiHost {
        let net = Topology::create(NODES).unwrap_or_else(|e| panic!("network setup: {e}"));
        let dir = tempfile::tempdir().unwrap();
        let chain_id = rand::random::<u32>() | 1;
        let group = SocketAddrV4::new(
            std::net::Ipv4Addr::new(239, 255, net.subnet, 1 + rand::random::<u8>() % 254),
            GROUP_PORT,
        );
        let mut masternodes = Vec::new();
        for i in 0..NODES {
            let nd = dir.path().join(format!("mn{i}"));
            std::fs::create_dir_all(&nd).unwrap();
            let key = KeyFile::generate();
            KeyFile::save(&key, &nd.join("key.json")).unwrap();
            let host = net.host_ip(i);
            masternodes.push(MasternodeEntry {
                public_key: PublicKey::from_signing(&key).to_string(),
                address: format!("{host}:{P2P_PORT}"),
                tier: "bronze".into(),
            });
            let cfg = format!(
                "data_dir = \"data\"\nkey_file = \"key.json\"\ngenesis = \"../genesis.json\"\n\
                 network = \"devnet\"\nlisten_host = \"{host}\"\np2p_port = {P2P_PORT}\n\
                 fast_path = \"multicast\"\nmulticast_group = \"{group}\"\n\
                 multicast_interface = \"{host}\"\nio_backend = \"{backend}\"\nlog = \"info\"\n"
            );
            std::fs::write(nd.join("node.toml"), cfg).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("wallets")).unwrap();
        let (mut wallet_keys, mut sinks, mut allocations) = (Vec::new(), Vec::new(), Vec::new());
        for w in 0..NODES {
            let key = KeyFile::generate();
            let p = dir.path().join("wallets").join(format!("wallet{w}.json"));
            KeyFile::save(&key, &p).unwrap();
            wallet_keys.push(p);
            allocations.push(Allocation {
                address: Address::from_public_key(&PublicKey::from_signing(&key)).to_string(),
                amount: 1_000 * COIN,
                count: COINS,
            });
            let sink = KeyFile::generate();
            sinks.push(Address::from_public_key(&PublicKey::from_signing(&sink)).to_string());
        }
        let g = GenesisFile {
            chain_id,
            network: "devnet".into(),
            epoch: 1,
            masternodes,
            allocations,
        };
        g.to_genesis().expect("valid genesis");
        let genesis = dir.path().join("genesis.json");
        g.save(&genesis).unwrap();
        assert_eq!(loss.len(), NODES);
        for (i, pct) in loss.iter().enumerate() {
            net.set_multicast_loss(i, group, *pct)
                .unwrap_or_else(|e| panic!("loss injection: {e}"));
            net.guard_multicast_ttl(i)
                .unwrap_or_else(|e| panic!("TTL guard: {e}"));
        }
        let mut mh = MultiHost {
            nodes: Procs(Vec::new()),
            net,
            dir,
            genesis,
            chain_id,
            group,
            wallet_keys,
            sinks,
        };
        for i in 0..NODES {
            let log = std::fs::File::create(mh.log_path(i)).unwrap();
            let child = mh
                .net
                .command(i, MASTERNODE)
                .arg("run")
                .arg("--config")
                .arg(mh.node_dir(i).join("node.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn time-masternode");
            mh.nodes.0.push(child);
        }
        mh
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("mn{i}"))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("node.log")
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (0..NODES)
            .map(|i| format!("--- masternode {i} ---\n{}", self.log(i)))
            .collect()
    }

    fn endpoint(&self, i: usize) -> String {
        format!("{}:{P2P_PORT}", self.net.host_ip(i))
    }

    fn assert_running(&mut self) {
        for (i, c) in self.nodes.0.iter_mut().enumerate() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("masternode {i} exited ({st}); logs:\n{}", self.logs());
            }
        }
    }

    /// `time-masternode status` of node `node`, run from namespace `from`.
    fn status(&self, from: usize, node: usize) -> Option<Status> {
        let (ok, out) = run_bounded(
            self.net
                .command(from, MASTERNODE)
                .arg("status")
                .arg("--node")
                .arg(self.endpoint(node))
                .arg("--chain-id")
                .arg(self.chain_id.to_string()),
            Duration::from_secs(10),
        );
        if !ok {
            return None;
        }
        Some(Status {
            peers: field(&out, "peers connected")?
                .split('/')
                .next()?
                .parse()
                .ok()?,
        })
    }

    /// Waits until every masternode has links to all the others.
    fn wait_connected(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..NODES {
            loop {
                self.assert_running();
                // Asked from the next namespace: crosses the bridge.
                if self
                    .status((i + 1) % NODES, i)
                    .is_some_and(|s| s.peers >= NODES - 1)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "masternode {i} did not connect to its peers in 60 s; logs:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Starts wallet `w`'s payment: from namespace `w`, through masternode
    /// `w + 1`, to wallet `w`'s sink.
    fn spawn_payment(&self, w: usize) -> Child {
        self.net
            .command(w, WALLET)
            .arg("send")
            .arg("--key")
            .arg(&self.wallet_keys[w])
            .arg("--to")
            .arg(&self.sinks[w])
            .arg("--amount")
            .arg("1.5")
            .arg("--timeout")
            .arg("30")
            .arg("--node")
            .arg(self.endpoint((w + 1) % NODES))
            .arg("--genesis")
            .arg(&self.genesis)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn time-wallet")
    }

    /// Waits until every masternode holds the payment output of every
    /// payment (it exists once the payment is final there). On timeout, says
    /// which are missing where and how the masternodes' views of the coins
    /// involved differ.
    fn wait_converged(&self, payments: &[Payment], limit: Duration) -> Result<(), String> {
        let endpoints: Vec<SocketAddr> = (0..NODES)
            .map(|i| self.endpoint(i).parse().unwrap())
            .collect();
        let chain = self.chain_id;
        self.net.run_in(0, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let outs: Vec<OutPoint> = payments
                    .iter()
                    .map(|p| OutPoint {
                        txid: p.txid,
                        vout: 0,
                    })
                    .collect();
                let deadline = Instant::now() + limit;
                loop {
                    let mut missing = Vec::new();
                    for (i, ep) in endpoints.iter().enumerate() {
                        match query(*ep, chain, outs.clone()).await {
                            Ok(st) => {
                                for (k, (_, e)) in st.iter().enumerate() {
                                    if e.is_none() {
                                        missing.push((i, k));
                                    }
                                }
                            }
                            Err(_) => missing.push((i, usize::MAX)),
                        }
                    }
                    if missing.is_empty() {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        return Err(diagnose(&endpoints, chain, payments, &missing).await);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
    }

    /// Waits until every host has let through at least one multicast
    /// datagram from every other host since the cluster was connected (so
    /// each node's fast-path receiver has heard from each sender).
    fn wait_fast_path_heard(&mut self, from: &[usize], to: &[usize]) {
        let count = |mh: &MultiHost, i: usize, j: usize| {
            mh.net
                .counter(i, &format!("from{j}"))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let mut before = Vec::new();
        for &i in to {
            for &j in from.iter().filter(|j| **j != i) {
                before.push((i, j, count(self, i, j)));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, j, n) in before {
            while count(self, i, j) <= n {
                self.assert_running();
                assert!(
                    Instant::now() < deadline,
                    "host {i} got no multicast datagram from host {j} in 20 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Wallet `w` pays its sink through masternode `w + 1`, from namespace
    /// `w`; waits for the outcome.
    fn pay(&self, w: usize) -> Result<Payment, String> {
        finish_payment(w, self.spawn_payment(w))
    }

    /// Every host sent multicast, all of it with TTL 1 (see
    /// [`Topology::guard_multicast_ttl`]).
    fn assert_multicast_ttl_1(&self) {
        for i in 0..NODES {
            let out = self
                .net
                .table_counter(i, netns::TTL_TABLE, "mcast_out")
                .unwrap_or_else(|e| panic!("{e}"));
            let bad = self
                .net
                .table_counter(i, netns::TTL_TABLE, "ttl_not_1")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out > 0, "host {i} sent no multicast at all");
            assert_eq!(
                bad, 0,
                "host {i} sent {bad} multicast datagrams with a TTL other than 1"
            );
        }
    }

    /// How many of `payments` are final at masternode `i` (their payment
    /// output exists there), asked from namespace `from`.
    fn final_count(&self, from: usize, i: usize, payments: &[Payment]) -> Result<usize, String> {
        let ep: SocketAddr = self.endpoint(i).parse().unwrap();
        let chain = self.chain_id;
        let outs: Vec<OutPoint> = payments
            .iter()
            .map(|p| OutPoint {
                txid: p.txid,
                vout: 0,
            })
            .collect();
        self.net.run_in(from, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let st = query(ep, chain, outs).await?;
                    Ok(st.iter().filter(|(_, e)| e.is_some()).count())
                })
        })
    }

    /// One round: every wallet pays once, all at once; the outcomes.
    fn pay_round(&self, round: usize, payments: &mut Vec<Payment>, failures: &mut Vec<String>) {
        let children: Vec<Child> = (0..NODES).map(|w| self.spawn_payment(w)).collect();
        for (w, c) in children.into_iter().enumerate() {
            match finish_payment(w, c) {
                Ok(p) => payments.push(p),
                Err(e) => failures.push(format!("round {round}: {e}")),
            }
        }
    }

    fn fast_path_lines(&self, i: usize) -> Vec<FastStats> {
        self.log(i).lines().filter_map(FastStats::parse).collect()
    }
}

struct Payment {
    wallet: usize,
    txid: Txid,
    ms: f64,
}

struct Status {
    peers: usize,
}

async fn query(
    ep: SocketAddr,
    chain: u32,
    ops: Vec<OutPoint>,
) -> Result<Vec<(OutPoint, Option<UtxoEntry>)>, String> {
    let mut c = WalletClient::connect(ep, chain)
        .await
        .map_err(|e| format!("connect {ep}: {e}"))?;
    c.utxo_states(ops)
        .await
        .map_err(|e| format!("query {ep}: {e}"))
}

/// What the masternodes say about the payments that are not final
/// everywhere, and about every coin of their wallets they disagree on.
async fn diagnose(
    endpoints: &[SocketAddr],
    chain: u32,
    payments: &[Payment],
    missing: &[(usize, usize)],
) -> String {
    let mut s = String::from("payments not final on every masternode:\n");
    let mut wallets = Vec::new();
    for &(i, k) in missing {
        match payments.get(k) {
            Some(p) => {
                s += &format!(
                    "  masternode {i} lacks the output of {} (wallet {}, final at the submitting masternode in {:.1} ms)\n",
                    p.txid, p.wallet, p.ms
                );
                if !wallets.contains(&p.wallet) {
                    wallets.push(p.wallet);
                }
            }
            None => s += &format!("  masternode {i} did not answer\n"),
        }
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let st = async {
            WalletClient::connect(*ep, chain)
                .await
                .ok()?
                .status()
                .await
                .ok()
        }
        .await;
        s += &format!("  masternode {i} status: {st:?}\n");
    }
    for w in wallets {
        let mut ops: Vec<OutPoint> = (0..COINS).map(|c| genesis_outpoint(w as u32, c)).collect();
        for p in payments.iter().filter(|p| p.wallet == w) {
            for vout in 0..2 {
                ops.push(OutPoint { txid: p.txid, vout });
            }
        }
        let mut views = Vec::new();
        for ep in endpoints {
            views.push(query(*ep, chain, ops.clone()).await.unwrap_or_default());
        }
        s += &format!("  coins of wallet {w} the masternodes disagree on:\n");
        for (k, op) in ops.iter().enumerate() {
            let states: Vec<String> = views
                .iter()
                .map(|v| match v.get(k) {
                    Some((_, Some(e))) => format!("{:?}", e.state),
                    Some((_, None)) => "absent".into(),
                    None => "?".into(),
                })
                .collect();
            if states.iter().any(|x| *x != states[0]) {
                s += &format!("    {op}: {}\n", states.join(" | "));
            }
        }
    }
    s
}

/// The value after `name` on a line of `time-masternode status` output.
fn field(out: &str, name: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .map(|v| v.trim().to_string())
}

/// A "fast path sent=.. received=.. repair_requests=.. repaired=.. lost=.."
/// line of a node's log.
#[derive(Debug, Default, Clone, Copy)]
struct FastStats {
    sent: u64,
    received: u64,
    bad: u64,
    repair_requests: u64,
    repaired: u64,
    lost: u64,
}

impl FastStats {
    fn parse(line: &str) -> Option<FastStats> {
        let rest = &line[line.find(" fast path sent=")? + " fast path ".len()..];
        let mut s = FastStats::default();
        for kv in rest.split_whitespace() {
            let (k, v) = kv.split_once('=')?;
            let v: u64 = v.parse().ok()?;
            match k {
                "sent" => s.sent = v,
                "received" => s.received = v,
                "bad" => s.bad = v,
                "repair_requests" => s.repair_requests = v,
                "repaired" => s.repaired = v,
                "lost" => s.lost = v,
                _ => {}
            }
        }
        Some(s)
    }
}

/// Waits for a `time-wallet send` of wallet `w` and reads its outcome.
fn finish_payment(w: usize, c: Child) -> Result<Payment, String> {
    let (code, out) = wait_bounded(c, Duration::from_secs(40));
    let txid = out
        .lines()
        .find_map(|l| l.strip_prefix("txid "))
        .and_then(|t| t.trim().parse::<Txid>().ok());
    let ms = out
        .lines()
        .find_map(|l| l.strip_prefix("finalized in "))
        .and_then(|l| l.split(" ms").next())
        .and_then(|v| v.parse::<f64>().ok());
    match (code, txid, ms) {
        (Some(0), Some(txid), Some(ms)) => Ok(Payment {
            wallet: w,
            txid,
            ms,
        }),
        _ => Err(format!(
            "wallet {w} via masternode {}: exit {code:?}:\n{out}",
            (w + 1) % NODES
        )),
    }
}

/// Runs to completion within `limit` (killed otherwise); (success, stdout+stderr).
fn run_bounded(cmd: &mut Command, limit: Duration) -> (bool, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (code, out) = wait_bounded(child, limit);
    (code == Some(0), out)
}

/// Waits for `child` at most `limit`, killing it after that; returns its
/// exit code (None if killed) and its output.
fn wait_bounded(child: Child, limit: Duration) -> (Option<i32>, String) {
    let mut guard = Procs(vec![child]);
    let deadline = Instant::now() + limit;
    let child = &mut guard.0[0];
    let code = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    use std::io::Read as _;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    (code, out)
}

/// Straight to the process's stderr, past the test harness's capture.
fn loud(msg: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Not root, or no `ip`/`nft`: a failure under CI, a loud skip elsewhere.
fn environment_ready(test: &str) -> bool {
    if let Err(why) = netns::preflight() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: cannot run the multi-host test: {why} (CI is set, so this is a failure; CI must run as root with iproute2 and nftables)");
        }
        loud(&format!("\n*** SKIPPED {test}: {why}; multi-host tests need root, iproute2 and nftables (under CI this is a failure) ***\n"));
        return false;
    }
    true
}

fn payments_finalize_under_multicast_loss(backend: IoBackend) {
    let (name, expect) = match backend {
        IoBackend::Uring => ("uring", "backend=Uring"),
        IoBackend::Epoll => ("epoll", "backend=Epoll"),
        IoBackend::Auto => unreachable!(),
    };
    let test = format!("multihost {name}");
    if !environment_ready(&test) {
        return;
    }
    if backend == IoBackend::Uring {
        if std::env::var_os("TIME_NET_SKIP_URING").is_some() {
            loud(&format!("SKIPPED: {test} (TIME_NET_SKIP_URING is set)"));
            return;
        }
        if let Err(e) = time_net::udp::probe_backend(IoBackend::Uring) {
            panic!("io_uring is unavailable here ({e}); set TIME_NET_SKIP_URING=1 to skip the io_uring variant explicitly");
        }
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let mut mh = MultiHost::start(name, &[loss_percent(); NODES]);
    mh.wait_connected();
    // Pay only once every node has heard from every other, so the loss
    // injection, not a late start, is what repair has to cover (late starts
    // are `late_multicast_receiver_repairs_what_it_missed`).
    let all: Vec<usize> = (0..NODES).collect();
    mh.wait_fast_path_heard(&all, &all);
    let connected = t0.elapsed();
    for i in 0..NODES {
        let log = mh.log(i);
        assert!(
            log.contains("UDP fast path up") && log.contains(expect),
            "masternode {i} runs no multicast fast path with {expect}; log:\n{log}"
        );
    }

    // The payments: every round, each wallet pays once, all four at once.
    let mut payments: Vec<Payment> = Vec::new();
    let mut failures = Vec::new();
    let pay_start = Instant::now();
    for round in 0..rounds() {
        let children: Vec<Child> = (0..NODES).map(|w| mh.spawn_payment(w)).collect();
        for (w, c) in children.into_iter().enumerate() {
            match finish_payment(w, c) {
                Ok(p) => payments.push(p),
                Err(e) => failures.push(format!("round {round}: {e}")),
            }
        }
    }
    let pay_time = pay_start.elapsed();
    let total = (rounds() * NODES) as u64;
    assert!(
        failures.is_empty(),
        "{} of {total} payments did not finalize:\n{}\nlogs:\n{}",
        failures.len(),
        failures.join("\n"),
        mh.logs()
    );

    // Every masternode finalized every payment (not just the one asked):
    // each payment's output exists everywhere.
    if let Err(e) = mh.wait_converged(&payments, Duration::from_secs(30)) {
        panic!("{e}\nlogs:\n{}", mh.logs());
    }

    // The loss bit: datagrams were dropped, including ones carrying lock
    // broadcasts and votes (longer than a heartbeat).
    let (mut seen, mut dropped, mut data_dropped) = (0, 0, 0);
    for i in 0..NODES {
        seen += mh.net.counter(i, "mcast_in").unwrap();
        dropped += mh.net.counter(i, "dropped").unwrap();
        data_dropped += mh.net.counter(i, "data_dropped").unwrap();
    }

    // Repairs happened: wait for a stats line logged after the payments
    // (the nodes log their fast-path counters every 10 s).
    let before: Vec<usize> = (0..NODES).map(|i| mh.fast_path_lines(i).len()).collect();
    let deadline = Instant::now() + Duration::from_secs(25);
    let stats: Vec<FastStats> = (0..NODES)
        .map(|i| loop {
            let lines = mh.fast_path_lines(i);
            if lines.len() > before[i] {
                break *lines.last().unwrap();
            }
            mh.assert_running();
            assert!(
                Instant::now() < deadline,
                "masternode {i} logged no fast-path counters; log:\n{}",
                mh.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        })
        .collect();
    let sum = |f: fn(&FastStats) -> u64| stats.iter().map(f).sum::<u64>();

    let mut latencies: Vec<f64> = payments.iter().map(|p| p.ms).collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "{test}: 4 namespaces on a bridge, subnet 10.231.{}.0/24, group {}, {}% multicast loss per host",
        mh.net.subnet,
        mh.group,
        loss_percent()
    );
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "{test}: {total} payments finalized in {:.1} s (cluster up in {:.1} s); latency ms p50 {:.1} p90 {:.1} max {:.1}; \
         multicast datagrams reaching the hosts' filters {seen}, dropped {dropped} ({:.1}%), of them carrying payments {data_dropped}; \
         fast path sent {} received {} bad {} repair requests {} repaired {} lost {}; total {:.1} s",
        pay_time.as_secs_f64(),
        connected.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        latencies[latencies.len() - 1],
        100.0 * dropped as f64 / seen.max(1) as f64,
        sum(|s| s.sent),
        sum(|s| s.received),
        sum(|s| s.bad),
        sum(|s| s.repair_requests),
        sum(|s| s.repaired),
        sum(|s| s.lost),
        t0.elapsed().as_secs_f64(),
    );
    for (i, s) in stats.iter().enumerate() {
        eprintln!("  masternode {i}: {s:?}");
    }
    assert!(
        seen > 0 && dropped > 0,
        "the loss injection did not bite: {seen} datagrams seen, {dropped} dropped"
    );
    assert!(
        data_dropped > 0,
        "no datagram carrying a lock broadcast or votes was dropped ({dropped} heartbeats were); \
         the test proves nothing about repair"
    );
    assert!(
        sum(|s| s.received) > 0,
        "no multicast datagram crossed the bridge"
    );
    assert!(
        sum(|s| s.repaired) > 0,
        "datagrams were dropped but the nodes repaired none: {stats:?}"
    );
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s.bad, 0, "masternode {i} counted bad datagrams: {s:?}");
        assert_eq!(
            s.lost,
            0,
            "masternode {i} gave up on datagrams: {s:?}; log:\n{}",
            mh.log(i)
        );
    }

    mh.assert_multicast_ttl_1();

    // Teardown leaves nothing behind.
    let name_prefix = mh.net.name.clone();
    drop(mh);
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !left.contains(&format!("{name_prefix}-")),
        "namespaces left behind:\n{left}"
    );
}

#[test]
fn multicast_loss_is_repaired_across_namespaces_uring() {
    payments_finalize_under_multicast_loss(IoBackend::Uring);
}

#[test]
fn multicast_loss_is_repaired_across_namespaces_epoll() {
    payments_finalize_under_multicast_loss(IoBackend::Epoll);
}

/// A masternode whose multicast reception starts late (here: host 3 drops
/// all of it until after a payment; on a real network, a slow IGMP join)
/// must still learn what it missed: the payment's lock broadcast and votes
/// are in the senders' repair rings, and the senders announce their stream
/// position over TCP (`FastPathSeq`), so the receiver knows where each
/// stream starts and repairs from there.
#[test]
fn late_multicast_receiver_repairs_what_it_missed() {
    let test = "multihost late receiver";
    if !environment_ready(test) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut mh = MultiHost::start("epoll", &[0, 0, 0, 100]);
    mh.wait_connected();
    mh.wait_fast_path_heard(&[0, 1, 2], &[0, 1, 2]);
    // Final with masternodes 0-2 alone (3 of 4 is a quorum).
    let p = mh
        .pay(0)
        .unwrap_or_else(|e| panic!("payment failed: {e}\nlogs:\n{}", mh.logs()));
    // Host 3 hears multicast again.
    mh.net
        .set_multicast_loss(3, mh.group, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    mh.wait_fast_path_heard(&[0, 1, 2], &[3]);
    let txid = p.txid;
    if let Err(e) = mh.wait_converged(&[p], Duration::from_secs(15)) {
        panic!(
            "{test}: masternode 3 never learned payment {txid}, which was final on the others \
             before its multicast came back:\n{e}\nlogs:\n{}",
            mh.logs()
        );
    }
}

/// How long host 3's multicast is cut in
/// `multicast_cut_receiver_catches_up_after_heal` (`TIME_MULTIHOST_CUT_SECS`
/// overrides, e.g. 20 for a quick local run).
const CUT_SECS: u64 = 120;
/// After the heal, how long masternode 3 gets to have every payment final.
const HEAL_WAIT: Duration = Duration::from_secs(30);

/// Host 3 receives no multicast at all for `CUT_SECS` (nftables drops the
/// group's datagrams in its namespace; TCP and its own sending are
/// untouched) while every wallet keeps paying, through every masternode
/// (wallet 2 through masternode 3 itself). Then its multicast is healed and
/// one more round is paid. Within `HEAL_WAIT` of the heal, masternode 3 (and
/// every other) must have every payment final: the lock broadcasts and votes
/// it missed are in the senders' repair rings, and the proofs are with its
/// peers.
#[test]
fn multicast_cut_receiver_catches_up_after_heal() {
    let test = "multihost multicast cut";
    if !environment_ready(test) {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cut = Duration::from_secs(env_or("TIME_MULTIHOST_CUT_SECS", CUT_SECS).clamp(1, 3600));
    let t0 = Instant::now();
    let mut mh = MultiHost::start("epoll", &[0; NODES]);
    mh.wait_connected();
    let all: Vec<usize> = (0..NODES).collect();
    mh.wait_fast_path_heard(&all, &all);
    let (mut payments, mut failures) = (Vec::new(), Vec::new());
    // Before the cut: one round, final everywhere.
    mh.pay_round(0, &mut payments, &mut failures);
    if let Err(e) = mh.wait_converged(&payments, Duration::from_secs(15)) {
        panic!("{test}: before the cut: {e}\nlogs:\n{}", mh.logs());
    }
    let before = payments.len();

    // The cut: payment rounds spread over it, at most 40 (the coins last).
    mh.net
        .set_multicast_loss(3, mh.group, 100)
        .unwrap_or_else(|e| panic!("{e}"));
    let cut_start = Instant::now();
    let max_rounds = (cut.as_secs() as usize).clamp(1, 40);
    let pace = cut / max_rounds as u32;
    let mut round = 1;
    while cut_start.elapsed() < cut && round <= max_rounds {
        let slot = cut_start + pace * (round as u32 - 1);
        std::thread::sleep(slot.saturating_duration_since(Instant::now()));
        mh.assert_running();
        mh.pay_round(round, &mut payments, &mut failures);
        round += 1;
    }
    std::thread::sleep(cut.saturating_sub(cut_start.elapsed()));
    let during = payments.len() - before;
    // The cut bit: host 3 let no datagram of the others through, and dropped some.
    let through: u64 = (0..3)
        .map(|j| mh.net.counter(3, &format!("from{j}")).unwrap())
        .sum();
    let dropped = mh.net.counter(3, "dropped").unwrap();
    assert_eq!(through, 0, "the cut let {through} datagrams through");
    assert!(dropped > 0, "the cut dropped nothing");
    let final_at_heal = mh
        .final_count(0, 3, &payments[before..])
        .unwrap_or_else(|e| panic!("{e}"));

    // Heal, one more round, and masternode 3 must catch up.
    mh.net
        .set_multicast_loss(3, mh.group, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let healed = Instant::now();
    mh.pay_round(round, &mut payments, &mut failures);
    let converged = mh.wait_converged(&payments, HEAL_WAIT);
    let heal_ms = healed.elapsed().as_millis();
    let final_at_3 = mh.final_count(0, 3, &payments).unwrap_or(0);
    let stats = mh.fast_path_lines(3).last().copied().unwrap_or_default();
    eprintln!(
        "{test}: host 3's multicast cut for {:.0} s ({dropped} datagrams dropped); {} payments before, {during} during, {} after the cut, {} failed; \
         masternode 3 had {final_at_heal} of the {during} cut-time payments final at the heal and {final_at_3} of {} in the end; {}; \
         masternode 3 fast path (last logged) {stats:?}; total {:.1} s",
        cut.as_secs_f64(),
        before,
        payments.len() - before - during,
        failures.len(),
        payments.len(),
        match &converged {
            Ok(()) => format!("every masternode had every payment final {heal_ms} ms after the heal"),
            Err(_) => format!("NOT converged within {HEAL_WAIT:?} of the heal"),
        },
        t0.elapsed().as_secs_f64()
    );
    mh.assert_multicast_ttl_1();
    if let Err(e) = converged {
        panic!(
            "{test}: after a {:.0} s multicast cut and {HEAL_WAIT:?} of healing, payments are not final everywhere:\n{e}\nfailed payments: {failures:?}\nlog of masternode 3:\n{}",
            cut.as_secs_f64(),
            mh.log(3)
        );
    }
    assert!(
        failures.is_empty(),
        "{} payments did not finalize:\n{}\nlogs:\n{}",
        failures.len(),
        failures.join("\n"),
        mh.logs()
    );
}
