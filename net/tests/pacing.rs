//! Intake pacing ([`PoolConfig::intake_pacing`]) on 127.0.0.1, over QUIC and
//! over TCP: a message the application holds back is delivered later, not
//! dropped; a message held "forever" is delivered after `MAX_PACING_WAIT`;
//! over QUIC only the held message's class stream pauses. Every loop is
//! bounded in count and time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use time_net::pool::{peer_id_from_secret, Incoming, Pool, PoolConfig, Transport};
use time_net::Priority;

const HELD: usize = 20;
const QUICK: usize = 20;

async fn pair(transport: Transport) -> (Pool, time_net::pool::Inbox, Pool, [u8; 32]) {
    let (a, b) = ([3u8; 32], [4u8; 32]);
    let (dialer, acceptor) = if peer_id_from_secret(&a) < peer_id_from_secret(&b) {
        (a, b)
    } else {
        (b, a)
    };
    let (did, aid) = (peer_id_from_secret(&dialer), peer_id_from_secret(&acceptor));
    let mut acfg = PoolConfig::new(
        transport,
        "127.0.0.1:0".parse().unwrap(),
        acceptor,
        HashMap::from([(did, "127.0.0.1:9".parse().unwrap())]),
    );
    // Messages starting with 'H' are held once for 100 ms (like a bucket
    // that then has the tokens); 'X' asks for an hour every time.
    let held = Arc::new(Mutex::new(HashSet::new()));
    acfg.intake_pacing = Some(Arc::new(move |_peer, m: &Bytes| match m.first() {
        Some(b'H') if held.lock().unwrap().insert(m.clone()) => Some(Duration::from_millis(100)),
        Some(b'X') => Some(Duration::from_secs(3_600)),
        _ => None,
    }));
    let (acc, inbox) = Pool::start(acfg).await.unwrap();
    let mut dcfg = PoolConfig::new(
        transport,
        "127.0.0.1:0".parse().unwrap(),
        dialer,
        HashMap::from([(aid, acc.local_addr())]),
    );
    dcfg.backoff.initial = Duration::from_millis(20);
    let (dial, _rx) = Pool::start(dcfg).await.unwrap();
    for _ in 0..500 {
        if !dial.connected_peers().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!dial.connected_peers().is_empty(), "connected");
    (dial, inbox, acc, aid)
}

async fn paced_messages_arrive_late_never_dropped(transport: Transport) {
    let (dial, mut inbox, acc, aid) = pair(transport).await;
    dial.send_wait(&aid, Priority::Normal, Bytes::from_static(b"X forever"))
        .await
        .unwrap();
    for i in 0..HELD {
        let m = Bytes::from(format!("H{i:03}"));
        dial.send_wait(&aid, Priority::Normal, m).await.unwrap();
    }
    for i in 0..QUICK {
        let m = Bytes::from(format!("Q{i:03}"));
        dial.send_wait(&aid, Priority::Critical, m).await.unwrap();
    }
    let mut got: Vec<Incoming> = Vec::new();
    while got.len() < 1 + HELD + QUICK {
        let m = tokio::time::timeout(Duration::from_secs(20), inbox.recv())
            .await
            .expect("every paced message is delivered")
            .expect("pool running");
        got.push(m);
    }
    let texts: Vec<String> = got
        .iter()
        .map(|(_, _, m)| String::from_utf8_lossy(m).into_owned())
        .collect();
    // Per class in order, nothing lost.
    let normal: Vec<&String> = texts.iter().filter(|t| !t.starts_with('Q')).collect();
    assert_eq!(normal[0], "X forever");
    for (i, t) in normal[1..].iter().enumerate() {
        assert_eq!(**t, format!("H{i:03}"));
    }
    let quick: Vec<&String> = texts.iter().filter(|t| t.starts_with('Q')).collect();
    assert_eq!(quick.len(), QUICK);
    let st = acc.pool_stats();
    assert!(st.paced > HELD as u64, "{st:?}");
    if transport == Transport::Quic {
        // Only the Normal stream paused: the critical messages, sent after
        // all the held ones, overtook them.
        let last_quick = texts.iter().rposition(|t| t.starts_with('Q')).unwrap();
        let last_held = texts.iter().rposition(|t| t.starts_with('H')).unwrap();
        assert!(last_quick < last_held, "{texts:?}");
    }
    dial.shutdown().await;
    acc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_paced_messages_arrive_late_never_dropped() {
    paced_messages_arrive_late_never_dropped(Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_paced_messages_arrive_late_never_dropped() {
    paced_messages_arrive_late_never_dropped(Transport::Tcp).await;
}
