//! Floods against a cluster of real masternode processes (issue 9), over
//! QUIC and over the TCP pool. Masternode 3 is killed and its registered key
//! taken over by the test, which dials the others as that (Byzantine)
//! masternode through `time_net`'s pool and floods them:
//!
//! - vote batches for made-up txids at full rate, half of them signed with
//!   a torsion component in R (valid under ZIP 215);
//! - oversized TimeProofs (a transaction of about 1 MB, certificates that
//!   claim other voters);
//! - a forged stream announcement (its own stream pushed to the end of the
//!   sequence space) and a repair datagram forged for another sender;
//! - block messages with forged signatures: prevotes, proposals for rounds
//!   it leads, committed blocks whose certificates claim every masternode
//!   (checked off the core thread; the sender is banned after a few).
//!
//! Then wallets flood masternode 0: 512 connections from 8 source addresses
//! of 127.0.0.0/8, each subscribing 1,000 made-up addresses and keeping 16
//! address queries outstanding.
//!
//! Through every flood, payments keep finalizing through the attacked node
//! (masternodes 0, 1 and 2 are the quorum), and the attacked node's RSS grows
//! by at most [`RSS_BOUND_MB`]. Each attack prints the payments' latencies
//! and the RSS growth (`--nocapture` shows them).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{address, pay, Cluster, SERIAL};
use time_net::pool::{Pool, PoolConfig};
use time_net::priority::Priority;
use time_net::DatagramBuilder;
use timecoin::node::peer_net::PeerTransport;
use timecoin::protocol::message::Message;
use timecoin::protocol::timeproof::TimeProof;
use timecoin::protocol::types::{Address, OutPoint, PublicKey, Transaction, TxOutput, Txid, COIN};
use timecoin::protocol::vote::{Decision, VoteBatch, VoteItem, MAX_VOTE_ITEMS};
use timecoin::wallet::{Outcome, WalletClient};
use timecoin_core::blocks::leader::leader;
use timecoin_core::blocks::{
    Block, BlockHash, BlockVote, CommitCertificate, CommittedBlock, Proposal, Slot, VoteKind,
};
use timecoin_core::testkit::torsion_signature;

/// The stated bound: under any one of these floods a masternode's RSS grows
/// by at most this much (docs/PROTOCOL.md, "Limits").
const RSS_BOUND_MB: f64 = 64.0;
const WAIT: Duration = Duration::from_secs(30);
const BYZANTINE: usize = 3;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn rss_mb(c: &Cluster, i: usize) -> f64 {
    let pid = c.children[i].as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// The test holding masternode `BYZANTINE`'s key, connected to the others
/// through the same pool the node runs.
struct Impostor {
    pool: Arc<Pool>,
    key: ed25519_dalek::SigningKey,
    targets: Vec<[u8; 32]>,
}

async fn impostor(c: &mut Cluster, transport: PeerTransport) -> Impostor {
    c.kill9(BYZANTINE);
    let key = c.masternode_key(BYZANTINE);
    let mut peers = HashMap::new();
    let mut targets = Vec::new();
    for i in 0..c.children.len() {
        if i != BYZANTINE {
            let k = PublicKey::from_signing(&c.masternode_key(i));
            peers.insert(k.0, transport.peer_addr(c.addr(i)));
            targets.push(k.0);
        }
    }
    let listen = transport.peer_addr(c.addr(BYZANTINE));
    let cfg = PoolConfig::new(transport.pool_transport(), listen, key.to_bytes(), peers);
    let (pool, mut inbox) = Pool::start(cfg).await.expect("impostor pool");
    // What the honest nodes send us is read and dropped.
    tokio::spawn(async move { while inbox.recv().await.is_some() {} });
    let deadline = Instant::now() + WAIT;
    while pool.connected_peers().len() < targets.len() {
        assert!(
            Instant::now() < deadline,
            "impostor connected to every peer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Impostor {
        pool: Arc::new(pool),
        key,
        targets,
    }
}

/// Sends `frames` round-robin to every target for `dur` (bounded in time
/// and count); a full queue waits a millisecond. Returns frames sent.
fn spawn_flood(
    imp: &Impostor,
    frames: Vec<Bytes>,
    prio: Priority,
    dur: Duration,
) -> tokio::task::JoinHandle<u64> {
    let (pool, targets) = (imp.pool.clone(), imp.targets.clone());
    tokio::spawn(async move {
        let end = Instant::now() + dur;
        let mut sent = 0u64;
        let mut i = 0usize;
        while Instant::now() < end && sent < 50_000_000 {
            let mut full = false;
            for t in &targets {
                match pool.send(t, prio, frames[i % frames.len()].clone()) {
                    Ok(()) => sent += 1,
                    Err(_) => full = true,
                }
            }
            i += 1;
            if full || i.is_multiple_of(64) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sent
    })
}

fn made_up_txid(n: u64) -> Txid {
    Txid(*blake3::hash(&n.to_le_bytes()).as_bytes())
}

/// `count` vote batches of `MAX_VOTE_ITEMS` approvals of made-up txids,
/// every other one with a torsion component in its signature.
fn vote_flood_frames(key: &ed25519_dalek::SigningKey, chain: u32, count: u64) -> Vec<Bytes> {
    (0..count)
        .map(|b| {
            let items = (0..MAX_VOTE_ITEMS as u64)
                .map(|i| VoteItem {
                    txid: made_up_txid(b * MAX_VOTE_ITEMS as u64 + i),
                    decision: Decision::Approve,
                })
                .collect();
            let mut batch = VoteBatch::sign(chain, 1, key, items);
            if b % 2 == 1 {
                let (_, msg) = batch.levels_and_message();
                batch.signature = torsion_signature(key, &msg);
            }
            Bytes::from(Message::VoteBatch(batch).to_bytes())
        })
        .collect()
}

/// Block messages signed by our key with the signature spoiled: prevotes,
/// proposals for rounds our key leads, and committed blocks whose
/// certificates relabel our precommit as every masternode's (signers and
/// weight pass; the signatures do not).
fn forged_block_frames(c: &Cluster, key: &ed25519_dalek::SigningKey) -> Vec<Bytes> {
    let (chain, reg) = (c.chain_id(), &c.registry);
    let me = PublicKey::from_signing(key);
    let mut frames = Vec::new();
    for height in 1..=32u64 {
        let slot = |round| Slot {
            chain_id: chain,
            epoch: reg.epoch(),
            height,
            round,
        };
        let block = Block::new(
            chain,
            reg.epoch(),
            height,
            BlockHash([height as u8; 32]),
            height * 1_000,
            me,
            vec![],
        );
        let mut vote = BlockVote::sign(slot(0), VoteKind::Prevote, Some(block.hash()), key);
        vote.signature[9] ^= 1;
        frames.push(Message::BlockVote(vote));
        if let Some(round) = (0..64).find(|r| leader(chain, reg, height, *r) == me) {
            let mut p = Proposal::sign(slot(round), None, block.clone(), key);
            p.signature[9] ^= 1;
            frames.push(Message::BlockProposal(Box::new(p)));
        }
        let pre = BlockVote::sign(slot(0), VoteKind::Precommit, Some(block.hash()), key);
        let cert = CommitCertificate {
            slot: slot(0),
            block: block.hash(),
            precommits: reg
                .masternodes()
                .iter()
                .map(|m| (m.key, pre.signature))
                .collect(),
        };
        frames.push(Message::CommittedBlock(Box::new(CommittedBlock {
            block,
            cert,
        })));
    }
    frames
        .into_iter()
        .map(|m| Bytes::from(m.to_bytes()))
        .collect()
}

/// A TimeProof of about 1 MB: a transaction of 7,500 made-up inputs, and
/// certificates by our key relabelled as two other voters (the structure
/// and weight pass; the signatures do not).
fn oversized_proof_frame(c: &Cluster, key: &ed25519_dalek::SigningKey) -> Bytes {
    let chain = c.chain_id();
    let ins: Vec<OutPoint> = (0..7_500)
        .map(|i| OutPoint {
            txid: made_up_txid(1 << 40 | i),
            vout: 0,
        })
        .collect();
    let tx = Transaction::build_signed(
        chain,
        key,
        &ins,
        vec![TxOutput {
            amount: COIN,
            address: address(key),
        }],
    );
    let txid = tx.txid();
    let batch = VoteBatch::sign(
        chain,
        1,
        key,
        vec![VoteItem {
            txid,
            decision: Decision::Approve,
        }],
    );
    let (levels, _) = batch.levels_and_message();
    let votes = (0..3)
        .map(|i| {
            let mut cert = batch.cert(&levels, 0);
            if i < 2 {
                cert.voter = PublicKey::from_signing(&c.masternode_key(i));
            }
            cert
        })
        .collect();
    let proof = TimeProof {
        chain_id: chain,
        txid,
        votes,
    };
    Bytes::from(Message::TimeProof { tx, proof }.to_bytes())
}

/// Payments through masternode 0 while a flood runs: their latencies.
struct Payer {
    client: WalletClient,
    from: ed25519_dalek::SigningKey,
    /// The genesis allocation of `from`.
    alloc: u32,
    to: Address,
    next_coin: u32,
}

impl Payer {
    async fn pay(&mut self, c: &Cluster) -> Duration {
        let tx = pay(
            c.chain_id(),
            &self.from,
            self.alloc,
            self.next_coin,
            self.to,
            COIN,
        );
        self.next_coin += 1;
        let t = Instant::now();
        match self.client.submit(&tx, WAIT).await.expect("an outcome") {
            Outcome::Finalized { proof, .. } => {
                assert!(proof.verify(c.chain_id(), &c.registry).unwrap() >= c.registry.quorum());
            }
            Outcome::Rejected { detail, .. } => panic!("payment rejected under flood: {detail}"),
        }
        t.elapsed()
    }

    /// Pays every 200 ms while `running`; at least `min` payments.
    async fn pay_while(&mut self, c: &Cluster, running: &AtomicBool, min: usize) -> Vec<Duration> {
        let mut lat = Vec::new();
        while running.load(Ordering::Relaxed) || lat.len() < min {
            lat.push(self.pay(c).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lat
    }
}

struct Report {
    attack: &'static str,
    transport: &'static str,
    sent: u64,
    latencies: Vec<Duration>,
    rss_growth_mb: f64,
}

impl Report {
    fn check(&self) {
        assert!(
            self.rss_growth_mb <= RSS_BOUND_MB,
            "{} over {}: RSS grew {:.1} MB (bound {RSS_BOUND_MB} MB)",
            self.attack,
            self.transport,
            self.rss_growth_mb
        );
    }

    fn print(&self) {
        let mut l = self.latencies.clone();
        l.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        eprintln!(
            "flood report: {} over {}: {} sent; {} payments through masternode 0, p50 {:.1} ms, max {:.1} ms; RSS of masternode 0 +{:.1} MB",
            self.attack,
            self.transport,
            self.sent,
            l.len(),
            ms(l[l.len() / 2]),
            ms(*l.last().unwrap()),
            self.rss_growth_mb
        );
    }
}

/// Runs one peer flood for `dur` while paying through masternode 0.
async fn peer_flood(
    c: &Cluster,
    imp: &Impostor,
    payer: &mut Payer,
    (attack, transport): (&'static str, &'static str),
    (frames, prio): (Vec<Bytes>, Priority),
    dur: Duration,
) -> Report {
    let before = rss_mb(c, 0);
    let flood = spawn_flood(imp, frames, prio, dur);
    let running = Arc::new(AtomicBool::new(true));
    let r = running.clone();
    let stop = tokio::spawn(async move {
        tokio::time::sleep(dur).await;
        r.store(false, Ordering::Relaxed);
    });
    let latencies = payer.pay_while(c, &running, 3).await;
    stop.await.unwrap();
    let sent = flood.await.unwrap();
    let r = Report {
        attack,
        transport,
        sent,
        latencies,
        rss_growth_mb: rss_mb(c, 0) - before,
    };
    r.print();
    r
}

/// 512 wallet connections from 8 source addresses: subscriptions and
/// outstanding address queries, while paying through the same node.
async fn wallet_flood(c: &Cluster, payer: &mut Payer, transport: &'static str) -> Report {
    let before = rss_mb(c, 0);
    let queried = payer.to;
    let answers = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for ip in 0..8u8 {
        for k in 0..64u32 {
            let (addr, chain, answers) = (c.addr(0), c.chain_id(), answers.clone());
            let local = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + ip));
            tasks.push(tokio::spawn(async move {
                let mut w = WalletClient::connect_from(local, addr, chain).await.ok()?;
                let n = (ip as u32) << 16 | k << 6;
                let subs: Vec<Address> = (0..1_000u32)
                    .map(|i| {
                        let h = blake3::hash(&(n << 10 | i).to_le_bytes());
                        Address(h.as_bytes()[..20].try_into().unwrap())
                    })
                    .collect();
                w.send(&Message::WalletSubscribe(subs)).await.ok()?;
                for _ in 0..3 {
                    for _ in 0..16 {
                        w.push(&Message::AddressQuery(queried)).ok()?;
                    }
                    w.flush().await.ok()?;
                    for _ in 0..16 {
                        // Answers, or an over-cap error for subscriptions.
                        if w.recv_timeout(WAIT).await.is_ok() {
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(w) // held open until the end of the flood
            }));
        }
    }
    let running = AtomicBool::new(true);
    let pay = async {
        let lat = payer.pay_while(c, &running, 5).await;
        lat
    };
    let gather = async {
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await.unwrap());
        }
        running.store(false, Ordering::Relaxed);
        held
    };
    let (latencies, held) = tokio::join!(pay, gather);
    let served = held.iter().filter(|h| h.is_some()).count();
    let growth = rss_mb(c, 0) - before;
    drop(held);
    assert!(
        served >= 500,
        "the wallet connections were served: {served}"
    );
    let r = Report {
        attack: "wallet connections, subscriptions and address queries",
        transport,
        sent: answers.load(Ordering::Relaxed),
        latencies,
        rss_growth_mb: growth,
    };
    r.print();
    r
}

/// The forged announcement and repair: masternode 1's datagrams must still
/// be taken afterwards (its payments finalize through masternode 0).
async fn forged_stream_announcement(c: &Cluster, imp: &Impostor) {
    let victim = PublicKey::from_signing(&c.masternode_key(1));
    let victim_index = c.registry.position(&victim).unwrap() as u32;
    let announce = Message::FastPathSeq { next: u64::MAX - 1 };
    // A datagram claiming to be masternode 1's, far ahead, signed by us.
    let mut b = DatagramBuilder::new(1, victim_index, u64::MAX - 2);
    b.push(&Message::Ping(7).to_bytes()).unwrap();
    let unsigned = b.finish();
    let sig = ed25519_dalek::Signer::sign(&imp.key, unsigned.signed_bytes()).to_bytes();
    let forged = unsigned.sign_with(&sig);
    // After the floods the queues may still be full: wait for room.
    for t in &imp.targets {
        for m in [announce.clone(), Message::Repair(forged.clone())] {
            tokio::time::timeout(
                WAIT,
                imp.pool
                    .send_wait(t, Priority::High, Bytes::from(m.to_bytes())),
            )
            .await
            .expect("room in the queue")
            .unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Lifts a ban of the impostor's key at masternode 0, as an operator would
/// to let a repaired masternode back in (`time-cli setban KEY remove`; the
/// floods earn bans, and the next attack needs the key heard), then waits
/// until the impostor is connected to every target again. Returns whether
/// the key was banned.
async fn lift_ban(c: &Cluster, imp: &Impostor) -> bool {
    let me = PublicKey::from_signing(&imp.key).to_string();
    let dir = c.layout.dir.as_os_str().to_owned();
    let (code, out, err) = common::time_cli([
        "--devnet".as_ref(),
        dir.as_os_str(),
        "--node".as_ref(),
        "0".as_ref(),
        "setban".as_ref(),
        me.as_ref(),
        "remove".as_ref(),
    ]);
    println!("setban {me} remove at masternode 0: exit {code}: {out}{err}");
    let deadline = Instant::now() + WAIT;
    while imp.pool.connected_peers().len() < imp.targets.len() {
        assert!(Instant::now() < deadline, "impostor connected again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    code == 0
}

/// The Byzantine key approves two transactions spending one coin, each
/// after masternode 0 holds it (the second is refused there as a double
/// spend). Masternode 0 must detect it and keep both certificates with
/// both transactions; `time-masternode evidence` shows the record (checked
/// at the end of the suite, once the node is stopped).
async fn conflicting_approvals(c: &Cluster, imp: &Impostor) -> (Txid, Txid) {
    let to = address(&c.wallet_key(1));
    let key = c.wallet_key(3);
    let a = pay(c.chain_id(), &key, 3, 7, to, COIN);
    let b = pay(c.chain_id(), &key, 3, 7, to, 2 * COIN);
    let approve = |t: &Transaction| VoteItem {
        txid: t.txid(),
        decision: Decision::Approve,
    };
    let votes = VoteBatch::sign(c.chain_id(), 1, &imp.key, vec![approve(&a), approve(&b)]);
    let target = PublicKey::from_signing(&c.masternode_key(0)).0;
    let txids = (a.txid(), b.txid());
    let messages = [
        Message::TransactionBroadcast(a),
        Message::TransactionBroadcast(b),
        Message::VoteBatch(votes),
    ];
    // The floods before may have got the key banned, and flood messages
    // still queued at masternode 0 when the ban is lifted can earn it again
    // before these arrive (they are then refused unread). So: lift, send,
    // and if the evidence does not show up, lift and send again. A resent
    // transaction or batch is a duplicate to the node, never a new fact.
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        lift_ban(c, imp).await;
        for m in &messages {
            tokio::time::timeout(
                WAIT,
                imp.pool
                    .send_wait(&target, Priority::Critical, Bytes::from(m.to_bytes())),
            )
            .await
            .expect("room in the queue")
            .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + WAIT / ATTEMPTS;
        while Instant::now() < deadline {
            if c.log(0).contains("masternode equivocated") {
                return txids;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("attempt {attempt}: no equivocation reported yet");
    }
    panic!(
        "masternode 0 did not report the conflicting approvals: {}",
        c.log(0)
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What `time-masternode evidence` prints for masternode `i`'s data
/// directory (the node must be stopped).
fn evidence_listing(c: &Cluster, i: usize) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_time-masternode"))
        .arg("evidence")
        .arg("--data-dir")
        .arg(common::data_dir(c, i))
        .output()
        .expect("run time-masternode evidence");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_suite(transport: PeerTransport, name: &'static str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let extra = format!("peer_transport = \"{name}\"\n");
    let mut c = Cluster::start_with(4, &extra);
    let reports = rt().block_on(async {
        let imp = impostor(&mut c, transport).await;
        let mut payer = Payer {
            client: c.client(0).await,
            from: c.wallet_key(0),
            alloc: 0,
            to: address(&c.wallet_key(1)),
            next_coin: 0,
        };
        // Warm up: allocations of a working node are not the flood's.
        for _ in 0..5 {
            payer.pay(&c).await;
        }
        let mut reports = Vec::new();
        // First, while the key's buckets are full: forged block messages
        // reach the check thread and get the key banned.
        let frames = forged_block_frames(&c, &imp.key);
        reports.push(
            peer_flood(
                &c,
                &imp,
                &mut payer,
                ("block messages with forged signatures", name),
                (frames, Priority::Normal),
                Duration::from_secs(4),
            )
            .await,
        );
        assert!(
            lift_ban(&c, &imp).await,
            "forged block messages got the key banned at masternode 0"
        );
        let frames = vote_flood_frames(&imp.key, c.chain_id(), 64);
        reports.push(
            peer_flood(
                &c,
                &imp,
                &mut payer,
                ("votes for made-up txids (half torsion-signed)", name),
                (frames, Priority::High),
                Duration::from_secs(8),
            )
            .await,
        );
        let frames = vec![oversized_proof_frame(&c, &imp.key)];
        reports.push(
            peer_flood(
                &c,
                &imp,
                &mut payer,
                ("oversized TimeProofs (1 MB, forged certificates)", name),
                (frames, Priority::High),
                Duration::from_secs(5),
            )
            .await,
        );
        forged_stream_announcement(&c, &imp).await;
        let double = conflicting_approvals(&c, &imp).await;
        // Masternode 1's payments still finalize through masternode 0's
        // view: pay from wallet 2 through masternode 1, read at 0.
        let mut via1 = Payer {
            client: c.client(1).await,
            from: c.wallet_key(2),
            alloc: 2,
            to: address(&c.wallet_key(3)),
            next_coin: 0,
        };
        for _ in 0..3 {
            via1.pay(&c).await;
        }
        let txid = pay(
            c.chain_id(),
            &c.wallet_key(2),
            2,
            2,
            address(&c.wallet_key(3)),
            COIN,
        )
        .txid();
        c.wait_state(0, OutPoint { txid, vout: 0 }, |e| e.is_some())
            .await;
        reports.push(wallet_flood(&c, &mut payer, name).await);
        // And a plain payment after everything.
        payer.pay(&c).await;
        (reports, double)
    });
    let (reports, (a, b)) = reports;
    for r in &reports {
        r.check();
    }
    let log = c.log(0);
    assert!(
        log.contains("peer messages refused") || log.contains("pushed back"),
        "floods are logged"
    );
    assert!(
        log.contains("peers over their rate pushed back"),
        "the vote flood was paced before anything was refused"
    );
    assert!(
        log.contains("block message refused by its check: signature does not verify")
            || log.contains("block message refused by its check: certificate: a precommit"),
        "forged block messages were refused by the check thread: {}",
        log.lines()
            .filter(|l| l.contains("refused") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    c.kill9(0);
    let listing = evidence_listing(&c, 0);
    println!("{listing}");
    assert!(
        listing.contains("1 conflicting-approvals record(s)")
            && listing.contains(&a.to_string())
            && listing.contains(&b.to_string()),
        "the conflicting approvals are kept as evidence: {listing}"
    );
}

#[test]
fn floods_over_quic_leave_payments_finalizing_within_the_memory_bound() {
    run_suite(PeerTransport::Quic, "quic");
}

#[test]
fn floods_over_the_tcp_pool_leave_payments_finalizing_within_the_memory_bound() {
    run_suite(PeerTransport::Tcp, "tcp");
}
