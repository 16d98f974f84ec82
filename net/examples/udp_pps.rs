//! Datagrams per second through the UDP fast path, io_uring vs epoll, on
//! 127.0.0.1 only. Bounded in count and in time; stops by itself.
//!
//! cargo run --release -p time-net --example udp_pps -- \
//!     [--backend uring|epoll|both] [--count N] [--size BYTES] [--max-secs S]
//!
//! One fast path sends `count` datagrams of `size` bytes to another on
//! 127.0.0.1 (unicast, one destination). Each side runs its own I/O thread;
//! the sender retries when its queue is full (backpressure), the receiver's
//! consumer is the main thread. Reported: send rate, receive rate (end to
//! end, through both channels and the kernel), and what was lost and where.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use time_net::udp::{IoBackend, SendError, UdpConfig, UdpFastPath};

struct Args {
    backends: Vec<IoBackend>,
    count: u64,
    size: usize,
    max_secs: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        backends: vec![IoBackend::Uring, IoBackend::Epoll],
        count: 1_000_000,
        size: 200,
        max_secs: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                a.backends = match val()?.as_str() {
                    "uring" => vec![IoBackend::Uring],
                    "epoll" => vec![IoBackend::Epoll],
                    "both" => vec![IoBackend::Uring, IoBackend::Epoll],
                    other => return Err(format!("unknown backend {other}")),
                }
            }
            "--count" => a.count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--size" => a.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--max-secs" => a.max_secs = val()?.parse().map_err(|e| format!("--max-secs: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    a.count = a.count.min(100_000_000);
    a.max_secs = a.max_secs.clamp(1, 120);
    a.size = a.size.clamp(8, time_net::datagram::MAX_DATAGRAM_LEN);
    Ok(a)
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
    }
}

fn run(backend: IoBackend, args: &Args) -> Result<(), String> {
    let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    let mut rcfg = UdpConfig::unicast(lo, vec![]);
    rcfg.recv_queue = 1 << 16;
    let (rx_path, rx) = UdpFastPath::start(rcfg, backend).map_err(|e| e.to_string())?;
    let mut scfg = UdpConfig::unicast(lo, vec![v4(rx_path.local_addr())]);
    scfg.send_queue = 1 << 14;
    let (tx_path, _tx_rx) = UdpFastPath::start(scfg, backend).map_err(|e| e.to_string())?;

    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let (count, size) = (args.count, args.size);
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut buf = vec![0xA5u8; size];
        let mut sent = 0u64;
        let mut full_retries = 0u64;
        while sent < count && Instant::now() < deadline {
            buf[..8].copy_from_slice(&sent.to_le_bytes());
            let mut d = bytes::Bytes::copy_from_slice(&buf);
            loop {
                match tx_path.send(d) {
                    Ok(()) => break,
                    Err(SendError::Full(back)) => {
                        full_retries += 1;
                        d = back;
                        // Sleep rather than spin: on a 2-core machine a
                        // spinning producer steals the I/O threads' CPU.
                        std::thread::sleep(Duration::from_micros(50));
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    Err(e) => panic!("send: {e}"),
                }
            }
            sent += 1;
        }
        let queued_for = start.elapsed();
        // Let the I/O thread flush what is queued (bounded).
        let flush_deadline = Instant::now() + Duration::from_secs(2);
        while tx_path.stats().sent + tx_path.stats().send_errors < sent
            && Instant::now() < flush_deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        (sent, queued_for, start.elapsed(), full_retries, tx_path)
    });

    let mut received = 0u64;
    let mut last = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(300)) {
            Ok(_) => {
                received += 1;
                last = Instant::now();
                if received == count {
                    break;
                }
            }
            Err(_) => {
                if sender.is_finished() || Instant::now() >= deadline {
                    break;
                }
            }
        }
        if Instant::now() >= deadline + Duration::from_secs(1) {
            break;
        }
    }
    let recv_elapsed = last.duration_since(start);
    let (sent, _queued_for, send_elapsed, full_retries, tx_path) =
        sender.join().map_err(|_| "sender panicked".to_string())?;
    let ts = tx_path.stats();
    let rs = rx_path.stats();
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    println!(
        "{:>6}  {:>9} x {:>4} B  send {:>9.0}/s  recv {:>9.0}/s  lost {:>7} ({:.2}%)  \
         [kernel-sent {} send-err {} queue-full-retries {} rx-queue-full {} truncated {} no-bufs {}]",
        format!("{:?}", tx_path.backend()).to_lowercase(),
        sent,
        size,
        ts.sent as f64 / secs(send_elapsed),
        received as f64 / secs(recv_elapsed),
        sent.saturating_sub(received),
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
        ts.sent,
        ts.send_errors,
        full_retries,
        rs.recv_queue_full,
        rs.truncated,
        rs.recv_no_buffers,
    );
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "udp_pps: 127.0.0.1 unicast, {} datagrams of {} B per backend, at most {} s each",
        args.count, args.size, args.max_secs
    );
    for &b in &args.backends {
        if let Err(e) = run(b, &args) {
            println!("{b:?}: unavailable: {e}");
        }
    }
}
