//! One-way latency of 64-byte High messages through the peer pool, QUIC vs
//! TCP, idle and under a flood of 1 KiB Low messages. Two pools in one
//! process on 127.0.0.1; bounded in count and time, stops by itself.
//!
//! cargo run --release -p time-net --example pool_latency -- \
//!     [--transport quic|tcp|both] [--count N] [--interval-us U] [--flood N]
//!     [--flood-rate MSGS_PER_SEC]
//!
//! For each transport: `count` High messages, one every `interval-us`, each
//! carrying its send time; the receiver records `now - sent` (same clock, same
//! process) in an HDR histogram. First with nothing else on the link, then
//! while a producer pushes up to `flood` Low messages as fast as the pool
//! takes them (it waits for room in the queue), then with the flood paced at
//! `flood-rate` messages per second. Prints p50/p99/p99.9/max and how many
//! Low messages per second got through meanwhile.
//!
//! Both pools, the producer and the consumer share one runtime of two worker
//! threads: the unpaced flood saturates the CPU, so its tail is mostly
//! scheduling delay, not the transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use time_net::pool::{peer_id_from_secret, Pool, PoolConfig, Transport};
use time_net::Priority;

struct Args {
    transports: Vec<Transport>,
    count: u32,
    interval: Duration,
    flood: u32,
    flood_rate: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        transports: vec![Transport::Quic, Transport::Tcp],
        count: 5_000,
        interval: Duration::from_micros(200),
        flood: 200_000,
        flood_rate: 50_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--transport" => {
                a.transports = match val()?.as_str() {
                    "quic" => vec![Transport::Quic],
                    "tcp" => vec![Transport::Tcp],
                    "both" => vec![Transport::Quic, Transport::Tcp],
                    other => return Err(format!("unknown transport {other}")),
                }
            }
            "--count" => a.count = val()?.parse().map_err(|e| format!("{e}"))?,
            "--interval-us" => {
                a.interval = Duration::from_micros(val()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--flood" => a.flood = val()?.parse().map_err(|e| format!("{e}"))?,
            "--flood-rate" => a.flood_rate = val()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    a.count = a.count.min(1_000_000);
    a.flood = a.flood.min(10_000_000);
    Ok(a)
}

struct Outcome {
    hist: Histogram<u64>,
    low_delivered: u64,
    elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    Idle,
    /// Low messages as fast as the pool takes them.
    Flood,
    /// Low messages at this many per second.
    Paced(u32),
}

async fn run(transport: Transport, args: &Args, load: Load) -> Outcome {
    // The dialer must hold the smaller key; b starts first so a knows its address.
    let (mut sa, mut sb) = ([1u8; 32], [2u8; 32]);
    if peer_id_from_secret(&sa) > peer_id_from_secret(&sb) {
        std::mem::swap(&mut sa, &mut sb);
    }
    let (ida, idb) = (peer_id_from_secret(&sa), peer_id_from_secret(&sb));
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (b, mut rx) = Pool::start(PoolConfig::new(
        transport,
        local,
        sb,
        HashMap::from([(ida, "127.0.0.1:9".parse().unwrap())]),
    ))
    .await
    .expect("pool b");
    let (a, _rx_a) = Pool::start(PoolConfig::new(
        transport,
        local,
        sa,
        HashMap::from([(idb, b.local_addr())]),
    ))
    .await
    .expect("pool a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.connected_peers().is_empty() || b.connected_peers().is_empty() {
        assert!(Instant::now() < deadline, "pools did not connect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = (load != Load::Idle).then(|| {
        let (a, stop, n) = (a.clone(), stop.clone(), args.flood);
        let body = Bytes::from(vec![0x5a; 1024]);
        // Paced: a burst every millisecond.
        let (burst, mut tick) = match load {
            Load::Paced(rate) => (
                (rate / 1000).max(1),
                Some(tokio::time::interval(Duration::from_millis(1))),
            ),
            _ => (u32::MAX, None),
        };
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < n && !stop.load(Ordering::Relaxed) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                for _ in 0..burst.min(n - sent) {
                    if a.send_wait(&idb, Priority::Low, body.clone())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    sent += 1;
                }
            }
        })
    });
    if load != Load::Idle {
        // Let the flood fill the pipe first.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let count = args.count;
    let receiver = tokio::spawn(async move {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let mut high = 0u32;
        let mut low = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while high < count {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((_, Priority::High, m))) => {
                    let sent = u64::from_le_bytes(m[..8].try_into().unwrap());
                    let now = clock.elapsed().as_micros() as u64;
                    hist.saturating_record(now.saturating_sub(sent).max(1));
                    high += 1;
                }
                Ok(Some(_)) => low += 1,
                _ => break,
            }
        }
        (hist, low, rx)
    });

    let started = Instant::now();
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..count {
        tick.tick().await;
        let mut m = [0u8; 64];
        m[..8].copy_from_slice(&(clock.elapsed().as_micros() as u64).to_le_bytes());
        a.send(&idb, Priority::High, Bytes::copy_from_slice(&m))
            .expect("High queue has room");
    }
    let (hist, low_delivered, _rx) = receiver.await.unwrap();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooder {
        f.abort();
    }
    a.shutdown().await;
    b.shutdown().await;
    Outcome {
        hist,
        low_delivered,
        elapsed,
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{} High messages of 64 B, one every {:?}; flood: up to {} Low messages of 1 KiB",
        args.count, args.interval, args.flood
    );
    println!(
        "{:<5} {:<8} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "", "load", "p50 us", "p99 us", "p99.9 us", "max us", "Low/s"
    );
    for &t in &args.transports {
        for load in [Load::Idle, Load::Flood, Load::Paced(args.flood_rate)] {
            let o = rt.block_on(run(t, &args, load));
            let h = &o.hist;
            println!(
                "{:<5} {:<8} {:>9} {:>9} {:>9} {:>9} {:>12.0}",
                format!("{t:?}"),
                match load {
                    Load::Idle => "idle".to_string(),
                    Load::Flood => "flood".to_string(),
                    Load::Paced(r) => format!("{r}/s"),
                },
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                o.low_delivered as f64 / o.elapsed.as_secs_f64(),
            );
            assert_eq!(h.len(), args.count as u64, "every High message arrived");
        }
    }
}
