//! The connection pool on 127.0.0.1: the same behaviour tests over QUIC and
//! over TCP. Every loop is bounded in count and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time_net::pool::{
    peer_id_from_secret, Inbox, Incoming, PeerId, Pool, PoolConfig, SendError, Transport,
};
use time_net::Priority;

/// Address given for peers with a smaller key: by the dial-direction rule
/// they dial us, so it is never used.
const NEVER_DIALED: &str = "127.0.0.1:9";

struct Node {
    pool: Pool,
    rx: Inbox,
    id: PeerId,
}

fn secret(i: u8) -> [u8; 32] {
    [i.wrapping_mul(37).wrapping_add(11); 32]
}

fn test_config(
    transport: Transport,
    secret: [u8; 32],
    peers: HashMap<PeerId, SocketAddr>,
) -> PoolConfig {
    let mut cfg = PoolConfig::new(transport, "127.0.0.1:0".parse().unwrap(), secret, peers);
    cfg.ping_interval = Duration::from_millis(100);
    cfg.ping_timeout = Duration::from_secs(3);
    cfg.backoff.initial = Duration::from_millis(20);
    cfg.backoff.max = Duration::from_millis(500);
    cfg
}

/// Starts one pool per secret, highest key first, so that every pool knows
/// the address of each peer it dials. Returns them in `secrets` order.
async fn cluster(
    transport: Transport,
    secrets: &[[u8; 32]],
    tweak: impl Fn(&mut PoolConfig),
) -> Vec<Node> {
    let ids: Vec<PeerId> = secrets.iter().map(peer_id_from_secret).collect();
    let mut order: Vec<usize> = (0..secrets.len()).collect();
    order.sort_by(|a, b| ids[*b].cmp(&ids[*a]));
    let mut addrs: HashMap<PeerId, SocketAddr> = HashMap::new();
    let mut nodes: Vec<Option<Node>> = (0..secrets.len()).map(|_| None).collect();
    for i in order {
        let peers = ids
            .iter()
            .filter(|id| **id != ids[i])
            .map(|id| {
                (
                    *id,
                    addrs
                        .get(id)
                        .copied()
                        .unwrap_or(NEVER_DIALED.parse().unwrap()),
                )
            })
            .collect();
        let mut cfg = test_config(transport, secrets[i], peers);
        tweak(&mut cfg);
        let (pool, rx) = Pool::start(cfg).await.expect("pool starts");
        addrs.insert(ids[i], pool.local_addr());
        nodes[i] = Some(Node {
            pool,
            rx,
            id: ids[i],
        });
    }
    nodes.into_iter().map(Option::unwrap).collect()
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn all_connected(nodes: &[Node]) {
    let n = nodes.len();
    wait_until("full mesh", Duration::from_secs(15), || {
        nodes
            .iter()
            .all(|x| x.pool.connected_peers().len() == n - 1)
    })
    .await;
}

/// `[sender index, class, seq u32 LE, filler..]`.
fn message(sender: u8, class: Priority, seq: u32, len: usize) -> Bytes {
    let mut m = vec![0u8; len.max(6)];
    m[0] = sender;
    m[1] = class.index() as u8;
    m[2..6].copy_from_slice(&seq.to_le_bytes());
    for (i, b) in m[6..].iter_mut().enumerate() {
        *b = (i % 7) as u8 ^ sender;
    }
    Bytes::from(m)
}

fn parse(m: &[u8]) -> (u8, usize, u32) {
    (
        m[0],
        m[1] as usize,
        u32::from_le_bytes(m[2..6].try_into().unwrap()),
    )
}

/// Receives exactly `n` messages within `limit`.
async fn collect(rx: &mut Inbox, n: usize, limit: Duration) -> Vec<Incoming> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => got.push(m),
            Ok(None) => panic!("receiver closed"),
            Err(_) => panic!("only {} of {n} messages arrived", got.len()),
        }
    }
    got
}

async fn shutdown_all(nodes: &[Node]) {
    for n in nodes {
        let report = n.pool.shutdown().await;
        assert!(
            report.unsent.is_empty(),
            "unsent at shutdown: {:?}",
            report.unsent
        );
    }
}

// ---------------------------------------------------------------------------

async fn mesh_delivers_every_class_in_fifo_order(transport: Transport) {
    const PER_CLASS: u32 = 150;
    let secrets: Vec<[u8; 32]> = (1..=4).map(secret).collect();
    let mut nodes = cluster(transport, &secrets, |_| {}).await;
    all_connected(&nodes).await;
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.id).collect();

    // Every node sends to every other, interleaving classes; every 25th
    // message is a compressible 40 KiB one.
    let mut senders = Vec::new();
    for (s, node) in nodes.iter().enumerate() {
        let pool = node.pool.clone();
        let ids = ids.clone();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_CLASS {
                for class in Priority::ALL {
                    for (r, peer) in ids.iter().enumerate() {
                        if r == s {
                            continue;
                        }
                        let len = if seq % 25 == 0 { 40 * 1024 } else { 64 };
                        pool.send_wait(peer, class, message(s as u8, class, seq, len))
                            .await
                            .unwrap();
                    }
                }
            }
        }));
    }
    let expected = 3 * 4 * PER_CLASS as usize;
    for (r, node) in nodes.iter_mut().enumerate() {
        let got = collect(&mut node.rx, expected, Duration::from_secs(60)).await;
        let mut next = [[0u32; 4]; 4];
        for (from, class, body) in &got {
            let (s, c, seq) = parse(body);
            assert_eq!(ids[s as usize], *from, "sender id");
            assert_ne!(s as usize, r);
            assert_eq!(c, class.index());
            assert_eq!(seq, next[s as usize][c], "FIFO within {class:?} from {s}");
            next[s as usize][c] += 1;
            assert_eq!(*body, message(s, *class, seq, body.len()), "payload intact");
            let want_len = if seq % 25 == 0 { 40 * 1024 } else { 64 };
            assert_eq!(body.len(), want_len);
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    for node in &nodes {
        for peer in ids.iter().filter(|p| **p != node.id) {
            // Counters are updated just after delivery: let them settle.
            wait_until("frame counters settle", Duration::from_secs(10), || {
                let st = node.pool.stats(peer).unwrap();
                st.frames_in == [PER_CLASS as u64; 4] && st.frames_out == [PER_CLASS as u64; 4]
            })
            .await;
            let st = node.pool.stats(peer).unwrap();
            assert_eq!(st.frames_in, [PER_CLASS as u64; 4]);
            assert_eq!(st.frames_out, [PER_CLASS as u64; 4]);
            assert_eq!(st.drops(), [0; 4]);
            assert!(st.compressed_in > 0 && st.compressed_out > 0, "{st:?}");
            assert_eq!(st.reconnects, 0);
        }
    }
    // Health: every link has measured a round trip.
    wait_until("RTT on every link", Duration::from_secs(10), || {
        nodes.iter().all(|n| {
            ids.iter()
                .filter(|p| **p != n.id)
                .all(|p| n.pool.stats(p).unwrap().rtt.is_some())
        })
    })
    .await;
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_mesh_delivers_every_class_in_fifo_order() {
    mesh_delivers_every_class_in_fifo_order(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_mesh_delivers_every_class_in_fifo_order() {
    mesh_delivers_every_class_in_fifo_order(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------

/// Secrets for two nodes such that the first has the smaller key (it dials).
fn dialer_and_acceptor() -> ([u8; 32], [u8; 32]) {
    let (a, b) = (secret(1), secret(2));
    if peer_id_from_secret(&a) < peer_id_from_secret(&b) {
        (a, b)
    } else {
        (b, a)
    }
}

async fn unknown_key_is_refused(transport: Transport) {
    // `outsider` is not in `node`'s table but has `node` in its own, and its
    // key is smaller, so it dials.
    let mut candidates: Vec<[u8; 32]> = (1..=3).map(secret).collect();
    candidates.sort_by_key(peer_id_from_secret);
    let (outsider_secret, node_secret, other_secret) =
        (candidates[0], candidates[1], candidates[2]);
    let node_id = peer_id_from_secret(&node_secret);
    let other_id = peer_id_from_secret(&other_secret);
    let (node, mut node_rx) = Pool::start(test_config(
        transport,
        node_secret,
        HashMap::from([(other_id, NEVER_DIALED.parse().unwrap())]),
    ))
    .await
    .unwrap();
    let (outsider, _rx) = Pool::start(test_config(
        transport,
        outsider_secret,
        HashMap::from([(node_id, node.local_addr())]),
    ))
    .await
    .unwrap();
    outsider
        .send(
            &node_id,
            Priority::Critical,
            Bytes::from_static(b"let me in"),
        )
        .unwrap();
    wait_until("refused handshakes", Duration::from_secs(10), || {
        node.pool_stats().handshake_failures >= 2
            && outsider.stats(&node_id).unwrap().dial_failures >= 1
    })
    .await;
    assert!(node.connected_peers().is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(200), node_rx.recv())
            .await
            .is_err(),
        "nothing from an unknown key is delivered"
    );
    outsider.shutdown().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_unknown_key_is_refused() {
    unknown_key_is_refused(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_unknown_key_is_refused() {
    unknown_key_is_refused(Transport::Tcp).await;
}

async fn registered_peer_cannot_impersonate_another(transport: Transport) {
    // `a` has the smallest key and dials both `b` and `c`. The address it has
    // for `b` is really `c`'s: `c` (a registered masternode) answers there
    // with its own key, and `a` must refuse it as `b` while accepting it as
    // `c`. And an unregistered key listening at `b`'s address is refused too.
    let mut s: Vec<[u8; 32]> = (1..=4).map(secret).collect();
    s.sort_by_key(peer_id_from_secret);
    let (a, b, c, stranger) = (s[0], s[1], s[2], s[3]);
    let (ida, idb, idc) = (
        peer_id_from_secret(&a),
        peer_id_from_secret(&b),
        peer_id_from_secret(&c),
    );
    let (pc, _rxc) = Pool::start(test_config(
        transport,
        c,
        HashMap::from([(ida, NEVER_DIALED.parse().unwrap())]),
    ))
    .await
    .unwrap();
    let (ps, _rxs) = Pool::start(test_config(
        transport,
        stranger,
        HashMap::from([(ida, NEVER_DIALED.parse().unwrap())]),
    ))
    .await
    .unwrap();
    let (pa, _rxa) = Pool::start(test_config(
        transport,
        a,
        HashMap::from([(idb, pc.local_addr()), (idc, pc.local_addr())]),
    ))
    .await
    .unwrap();
    let (pa2, _rxa2) = Pool::start(test_config(
        transport,
        a,
        HashMap::from([(idb, ps.local_addr())]),
    ))
    .await
    .unwrap();
    wait_until(
        "a connected to c, refused c and the stranger as b",
        Duration::from_secs(10),
        || {
            pa.connected_peers() == vec![idc]
                && pa.stats(&idb).unwrap().dial_failures >= 2
                && pa2.stats(&idb).unwrap().dial_failures >= 2
        },
    )
    .await;
    assert!(!pa.stats(&idb).unwrap().connected);
    assert_eq!(pa.stats(&idb).unwrap().connects, 0);
    assert_eq!(pa2.stats(&idb).unwrap().connects, 0);
    assert!(pa.pool_stats().handshake_failures >= 2);
    assert!(pa2.pool_stats().handshake_failures >= 2);
    assert!(pc.connected_peers() == vec![ida]);
    for p in [&pa, &pa2, &pc, &ps] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_registered_peer_cannot_impersonate_another() {
    registered_peer_cannot_impersonate_another(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_registered_peer_cannot_impersonate_another() {
    registered_peer_cannot_impersonate_another(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------

async fn reconnects_after_kill_and_counts_losses(transport: Transport) {
    const TOTAL: u32 = 3000;
    let (sa, sb) = dialer_and_acceptor();
    let mut nodes = cluster(transport, &[sa, sb], |c| {
        c.queue_limits.capacity = [512; 4];
    })
    .await;
    all_connected(&nodes).await;
    let (a, b) = (nodes[0].pool.clone(), nodes[1].pool.clone());
    let (ida, idb) = (nodes[0].id, nodes[1].id);

    // b's inbox holds all of it (High capacity 8192), so it is read at the
    // end; b's pool keeps delivering into it meanwhile.
    let accepted = Arc::new(AtomicU64::new(0));

    // Sender: a steady stream of High messages. At message 1000 the
    // connection is killed from a's side, at 2000 from b's side, each time
    // after b has accounted for everything so far; at 2500 from a's side
    // again, with messages in flight. While the link is down 50 more are
    // sent (they wait in the queue). `windows` are ranges sent on a healthy
    // link after a reconnection and before a synced kill (or the end): all of
    // those must arrive. Whatever the unsynced kill cut off must show up as
    // counted losses.
    let mut refused = 0u64;
    let mut next = 0u32;
    let mut windows: Vec<(u32, u32)> = Vec::new();
    let attempt = |seq: u32, refused: &mut u64| match a.send(
        &idb,
        Priority::High,
        message(0, Priority::High, seq, 64),
    ) {
        Ok(()) => {
            accepted.fetch_add(1, Ordering::AcqRel);
        }
        Err(SendError::QueueFull { .. }) => *refused += 1,
        Err(e) => panic!("{e}"),
    };
    for i in 0..TOTAL {
        if i == 1000 || i == 2000 || i == 2500 {
            let synced = i != 2500;
            match windows.last_mut() {
                Some(w) if synced => w.1 = next,
                // Messages just before an unsynced kill may be in flight.
                Some(_) => {
                    windows.pop();
                }
                None => {}
            }
        }
        if i == 1000 || i == 2000 {
            wait_until(
                "b caught up before the kill",
                Duration::from_secs(20),
                || {
                    let st = b.stats(&ida).unwrap();
                    let h = Priority::High.index();
                    st.frames_in[h] + st.lost_in_flight[h] == accepted.load(Ordering::Acquire)
                },
            )
            .await;
        }
        if i == 1000 || i == 2000 || i == 2500 {
            let before = a.stats(&idb).unwrap().connects;
            let killed = if i != 2000 {
                a.kill_connection(&idb).await
            } else {
                b.kill_connection(&ida).await
            };
            assert!(killed);
            for _ in 0..50 {
                attempt(next, &mut refused);
                next += 1;
            }
            wait_until("reconnection", Duration::from_secs(10), || {
                let st = a.stats(&idb).unwrap();
                st.connects > before && st.connected && b.stats(&ida).unwrap().connected
            })
            .await;
            windows.push((next, u32::MAX));
        }
        attempt(next, &mut refused);
        next += 1;
        if i % 16 == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    if let Some(w) = windows.last_mut() {
        w.1 = next;
    }
    // Read until everything accepted is either delivered or counted lost.
    let rx = &mut nodes[1].rx;
    let mut got: Vec<u32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let lost = b.stats(&ida).unwrap().lost_in_flight[Priority::High.index()];
        if got.len() as u64 + lost == accepted.load(Ordering::Acquire) {
            break lost;
        }
        assert!(
            Instant::now() < deadline,
            "receiver timed out with {}",
            got.len()
        );
        if let Ok(Some((_, p, m))) =
            tokio::time::timeout(Duration::from_millis(20), rx.recv()).await
        {
            assert_eq!(p, Priority::High);
            got.push(parse(&m).2);
        }
    };
    // FIFO, nothing duplicated.
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "FIFO across reconnections"
    );
    // Everything sent on a healthy link after each reconnection arrived.
    assert_eq!(windows.len(), 2);
    assert!(windows[1].0 > 2500);
    for &(from, until) in &windows {
        for seq in from..until {
            assert!(
                got.binary_search(&seq).is_ok(),
                "message {seq} sent after reconnection is missing"
            );
        }
    }
    // Nothing lost silently: delivered + lost in flight = accepted by send,
    // and refusals are counted on the sender.
    let total_attempts = next as u64;
    assert_eq!(got.len() as u64 + lost, accepted.load(Ordering::Acquire));
    assert_eq!(accepted.load(Ordering::Acquire) + refused, total_attempts);
    let sa_stats = a.stats(&idb).unwrap();
    assert_eq!(sa_stats.refused[Priority::High.index()], refused);
    assert!(sa_stats.reconnects >= 2, "{sa_stats:?}");
    assert!(b.stats(&ida).unwrap().reconnects >= 2);
    eprintln!(
        "{transport:?}: delivered {}, lost in flight {lost}, refused {refused}",
        got.len()
    );
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_reconnects_after_kill_and_counts_losses() {
    reconnects_after_kill_and_counts_losses(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reconnects_after_kill_and_counts_losses() {
    reconnects_after_kill_and_counts_losses(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------

async fn high_flows_under_a_low_flood(transport: Transport, flood: u32) {
    const HIGH: u32 = 50;
    let (sa, sb) = dialer_and_acceptor();
    let mut nodes = cluster(transport, &[sa, sb], |_| {}).await;
    all_connected(&nodes).await;
    let a = nodes[0].pool.clone();
    let idb = nodes[1].id;

    let flooder = {
        let a = a.clone();
        tokio::spawn(async move {
            for seq in 0..flood {
                a.send_wait(&idb, Priority::Low, message(0, Priority::Low, seq, 1024))
                    .await
                    .unwrap();
            }
        })
    };
    // Votes start once the flood is under way, in a quick burst (a paced
    // burst raced the flood on a fast, idle machine: the flood could finish
    // first, which says nothing about priority).
    let voter = {
        let a = a.clone();
        tokio::spawn(async move {
            while a.stats(&idb).unwrap().frames_out[Priority::Low.index()] < 1000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for seq in 0..HIGH {
                a.send(&idb, Priority::High, message(0, Priority::High, seq, 64))
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    // For each High: how many Low the transport had delivered into b's
    // inbox when the High was read. The inbox hands High out first, so the
    // order the application sees is not the claim; the transport's is.
    let ida = nodes[0].id;
    let b = nodes[1].pool.clone();
    let rx = &mut nodes[1].rx;
    let mut low_seen = 0u32;
    let mut high_next = 0u32;
    let mut low_delivered_at_last_high = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while low_seen < flood || high_next < HIGH {
        let (_, p, m) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("flood and votes delivered in time")
            .unwrap();
        let (_, _, seq) = parse(&m);
        match p {
            Priority::Low => {
                assert_eq!(seq, low_seen, "Low FIFO");
                low_seen += 1;
            }
            Priority::High => {
                assert_eq!(seq, high_next, "High FIFO");
                high_next += 1;
                low_delivered_at_last_high =
                    b.stats(&ida).unwrap().frames_in[Priority::Low.index()];
            }
            _ => unreachable!(),
        }
    }
    flooder.await.unwrap();
    voter.await.unwrap();
    // Every vote came through while the flood was still coming through.
    assert!(
        low_delivered_at_last_high < flood as u64,
        "last High arrived after the whole flood"
    );
    eprintln!("{transport:?}: last High arrived after {low_delivered_at_last_high} of {flood} Low");
    let st = a.stats(&idb).unwrap();
    assert_eq!(st.drops(), [0; 4]);
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_high_flows_under_a_low_flood() {
    high_flows_under_a_low_flood(Transport::Quic, 50_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_high_flows_under_a_low_flood() {
    high_flows_under_a_low_flood(Transport::Tcp, 50_000).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_large_normal_does_not_block_high() {
    // Deterministic on a loaded machine: the receiver's Normal inbox holds
    // one message, so once a small Normal filler sits in it, QUIC flow
    // control stops the 2 MiB block on its stream. High messages sent after
    // the block must still arrive, on their own stream, while the block
    // cannot. (Over one TCP stream they could not.)
    const BLOCK: usize = 2 << 20;
    const HIGH: u32 = 10; // below the inbox starvation limit (16)
    let (sa, sb) = dialer_and_acceptor();
    let mut nodes = cluster(Transport::Quic, &[sa, sb], |c| {
        c.compress_threshold = usize::MAX;
        c.inbox_limits.capacity[Priority::Normal.index()] = 1;
    })
    .await;
    all_connected(&nodes).await;
    let a = nodes[0].pool.clone();
    let idb = nodes[1].id;
    let ida = nodes[0].id;
    let b = nodes[1].pool.clone();

    a.send(&idb, Priority::Normal, Bytes::from_static(b"filler"))
        .unwrap();
    wait_until("filler in the inbox", Duration::from_secs(10), || {
        b.stats(&ida).unwrap().frames_in[Priority::Normal.index()] == 1
    })
    .await;
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let block: Vec<u8> = (0..BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let block = Bytes::from(block);
    a.send(&idb, Priority::Normal, block.clone()).unwrap();
    for seq in 0..HIGH {
        a.send(&idb, Priority::High, message(0, Priority::High, seq, 64))
            .unwrap();
    }
    // Every High comes through the transport while the block cannot.
    wait_until(
        "High past the held-back block",
        Duration::from_secs(30),
        || b.stats(&ida).unwrap().frames_in[Priority::High.index()] == HIGH as u64,
    )
    .await;
    assert_eq!(
        b.stats(&ida).unwrap().frames_in[Priority::Normal.index()],
        1,
        "the block came through before the High messages sent after it"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for seq in 0..HIGH {
        let m = tokio::time::timeout_at(deadline, nodes[1].rx.recv())
            .await
            .expect("High in the inbox")
            .unwrap();
        assert_eq!(m.1, Priority::High, "message {seq}");
        assert_eq!(m.2, message(0, Priority::High, seq, 64));
    }
    // Reading the filler frees the Normal class; the block follows intact.
    let mut normal = Vec::new();
    while normal.len() < 2 {
        let m = tokio::time::timeout_at(deadline, nodes[1].rx.recv())
            .await
            .expect("filler and block arrive")
            .unwrap();
        assert_eq!(m.1, Priority::Normal);
        normal.push(m.2);
    }
    assert_eq!(&normal[0][..], b"filler");
    assert_eq!(normal[1], block);
    shutdown_all(&nodes).await;
}

// ---------------------------------------------------------------------------

async fn broadcast_and_refusals(transport: Transport) {
    let secrets: Vec<[u8; 32]> = (1..=3).map(secret).collect();
    let mut nodes = cluster(transport, &secrets, |c| {
        c.queue_limits.capacity = [4; 4];
        c.max_message_len = 1000;
    })
    .await;
    all_connected(&nodes).await;
    let p = nodes[0].pool.clone();
    let report = p.broadcast(Priority::Critical, Bytes::from_static(b"tx"));
    assert_eq!(report.queued, 2);
    assert!(report.refused.is_empty());
    for n in &mut nodes[1..] {
        let got = collect(&mut n.rx, 1, Duration::from_secs(5)).await;
        assert_eq!(got[0].2, Bytes::from_static(b"tx"));
    }
    assert_eq!(
        p.send(&[0xEE; 32], Priority::Low, Bytes::from_static(b"x")),
        Err(SendError::UnknownPeer { peer: [0xEE; 32] })
    );
    assert_eq!(
        p.send(&nodes[1].id, Priority::Low, Bytes::from(vec![0u8; 1001])),
        Err(SendError::TooLarge {
            len: 1001,
            cap: 1000
        })
    );
    assert_eq!(
        p.send(&nodes[1].id, Priority::Low, Bytes::new()),
        Err(SendError::Empty)
    );
    shutdown_all(&nodes).await;
    assert_eq!(
        p.send(&nodes[1].id, Priority::Low, Bytes::from_static(b"late")),
        Err(SendError::Shutdown)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_broadcast_and_refusals() {
    broadcast_and_refusals(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_broadcast_and_refusals() {
    broadcast_and_refusals(Transport::Tcp).await;
}

// ---------------------------------------------------------------------------

async fn small_messages_are_batched(transport: Transport) {
    const N: u32 = 400;
    let (sa, sb) = dialer_and_acceptor();
    let mut nodes = cluster(transport, &[sa, sb], |c| {
        c.batch_window = Duration::from_millis(1);
    })
    .await;
    all_connected(&nodes).await;
    let a = nodes[0].pool.clone();
    let idb = nodes[1].id;
    let writes_before = a.stats(&idb).unwrap().writes;
    for seq in 0..N {
        a.send(&idb, Priority::High, message(0, Priority::High, seq, 64))
            .unwrap();
    }
    let got = collect(&mut nodes[1].rx, N as usize, Duration::from_secs(10)).await;
    for (i, (_, _, m)) in got.iter().enumerate() {
        assert_eq!(parse(m).2, i as u32);
    }
    let st = a.stats(&idb).unwrap();
    let writes = st.writes - writes_before;
    assert_eq!(st.frames_out[Priority::High.index()], N as u64);
    // 400 messages queued at once go out in a handful of writes (pings and
    // pongs may add a few).
    assert!(writes <= 20, "{writes} writes for {N} messages");
    eprintln!("{transport:?}: {N} messages in {writes} writes");
    shutdown_all(&nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_small_messages_are_batched() {
    small_messages_are_batched(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_small_messages_are_batched() {
    small_messages_are_batched(Transport::Tcp).await;
}

#[tokio::test]
async fn config_is_checked() {
    let mut cfg = test_config(Transport::Tcp, secret(1), HashMap::new());
    cfg.batch_window = Duration::from_millis(5);
    assert!(Pool::start(cfg).await.is_err());
    // A small-order point is not a usable peer key.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let cfg = test_config(
        Transport::Tcp,
        secret(1),
        HashMap::from([(weak, NEVER_DIALED.parse().unwrap())]),
    );
    assert!(Pool::start(cfg).await.is_err());
}

/// A pool in a runtime of its own, so the test can crash it: dropping the
/// runtime drops every task before it can send a close frame, as a killed
/// process would.
struct Crashable {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    _rx: Inbox,
}

fn start_crashable(
    secret: [u8; 32],
    listen: SocketAddr,
    peers: HashMap<PeerId, SocketAddr>,
) -> Crashable {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut cfg = test_config(Transport::Quic, secret, peers);
    cfg.listen = listen;
    cfg.ping_timeout = Duration::from_secs(60);
    let (pool, rx) = rt.block_on(Pool::start(cfg)).expect("pool starts");
    Crashable { rt, pool, _rx: rx }
}

/// A masternode that crashed and came back on its address with its key is
/// linked again at once, not after its peers' ping timeout. It does not dial
/// a peer with a smaller key, so it depends on that peer noticing the old
/// connection is dead: the restarted endpoint answers the old connection's
/// packets with a stateless reset, which needs its connection IDs and reset
/// key to be the same across restarts. The ping timeout here is 60 s and
/// the wait 20 s: without the reset the peer keeps the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_restarted_acceptor_is_redialed_without_waiting_for_the_ping_timeout() {
    let (sa, sb) = dialer_and_acceptor();
    let (ida, idb) = (peer_id_from_secret(&sa), peer_id_from_secret(&sb));
    let never: SocketAddr = NEVER_DIALED.parse().unwrap();
    let b = tokio::task::spawn_blocking(move || {
        start_crashable(
            sb,
            "127.0.0.1:0".parse().unwrap(),
            HashMap::from([(ida, never)]),
        )
    })
    .await
    .unwrap();
    let addr = b.pool.local_addr();
    let mut cfg = test_config(Transport::Quic, sa, HashMap::from([(idb, addr)]));
    cfg.ping_timeout = Duration::from_secs(60);
    let (a, _arx) = Pool::start(cfg).await.expect("pool starts");
    wait_until("a linked to b", Duration::from_secs(15), || {
        a.connected_peers().contains(&idb)
    })
    .await;

    let Crashable { rt, pool, _rx } = b;
    drop((pool, _rx));
    rt.shutdown_background();
    // The same port again (bounded: the old socket closes as the runtime's
    // tasks are dropped).
    let mut restarted = None;
    for _ in 0..100 {
        let r = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(|| start_crashable(sb, addr, HashMap::from([(ida, never)])))
        })
        .await
        .unwrap();
        if let Ok(b) = r {
            restarted = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = restarted.expect("b restarts on its port");
    wait_until("a redials the restarted b", Duration::from_secs(20), || {
        b.pool.connected_peers().contains(&ida)
    })
    .await;
    a.shutdown().await;
    let Crashable { rt, pool, _rx } = b;
    drop((pool, _rx));
    rt.shutdown_background();
}
