//! The epoll backend: `mio` readiness, non-blocking `send_to`/`recv_from`.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::Bytes;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::socket::Opened;
use super::{Counters, IoContext};

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
/// Work done per loop turn before looking at the other direction again.
const BATCH: usize = 256;

pub(super) fn run(opened: Opened, ctx: IoContext) {
    if let Err(e) = run_inner(opened, &ctx) {
        tracing::error!(error = %e, "UDP epoll I/O thread failed");
        Counters::add(&ctx.shared.counters.recv_errors, 1);
    }
}

fn run_inner(opened: Opened, ctx: &IoContext) -> std::io::Result<()> {
    let targets: Vec<SocketAddr> = opened
        .targets
        .iter()
        .filter_map(|t| t.as_socket())
        .collect();
    let sock: UdpSocket = opened.socket.into();
    let mut poll = Poll::new()?;
    let fd = sock.as_raw_fd();
    poll.registry().register(
        &mut SourceFd(&fd),
        SOCKET,
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let wake_fd = ctx.shared.wake_fd.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&wake_fd), WAKE, Interest::READABLE)?;
    let mut events = Events::with_capacity(16);
    let c = &ctx.shared.counters;
    // One byte more than the limit: a longer datagram shows up as oversize.
    let mut buf = vec![0u8; ctx.max_len + 1];
    // Datagrams taken from the channel, with the index of the next target.
    let mut pending: VecDeque<(Bytes, usize)> = VecDeque::new();
    // mio is edge-triggered: remember readiness until WouldBlock.
    let (mut readable, mut writable) = (true, true);

    while !ctx.shared.stopping() {
        // Send.
        while pending.len() < BATCH {
            match ctx.outbound.try_recv() {
                Ok(d) => pending.push_back((d, 0)),
                Err(_) => break,
            }
        }
        'send: while writable {
            let Some((d, next)) = pending.front_mut() else {
                break;
            };
            while *next < targets.len() {
                match sock.send_to(d, targets[*next]) {
                    Ok(_) => Counters::add(&c.sent, 1),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        writable = false;
                        break 'send;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => Counters::add(&c.send_errors, 1),
                }
                *next += 1;
            }
            pending.pop_front();
        }

        // Receive.
        let mut n = 0;
        let mut received = false;
        while readable && n < BATCH {
            match sock.recv_from(&mut buf) {
                Ok((len, from)) => {
                    ctx.deliver(from, &buf[..len], false);
                    n += 1;
                    received = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // e.g. ECONNREFUSED from an ICMP port unreachable for an
                    // earlier send; the socket stays usable.
                    Counters::add(&c.recv_errors, 1);
                    n += 1;
                }
            }
        }

        ctx.turn_end(received);
        let can_take = pending.len() < BATCH;
        let busy =
            readable || (writable && !pending.is_empty()) || (can_take && !ctx.outbound.is_empty());
        let timeout = if busy {
            Some(Duration::ZERO)
        } else if !can_take || ctx.shared.park(&ctx.outbound) {
            // With `pending` full we wait for the socket, not for the channel.
            Some(ctx.max_wait())
        } else {
            Some(Duration::ZERO)
        };
        let r = poll.poll(&mut events, timeout);
        ctx.shared.unpark();
        match r {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                SOCKET => {
                    readable |= ev.is_readable() || ev.is_error();
                    writable |= ev.is_writable();
                }
                WAKE => ctx.shared.drain_wake(),
                _ => {}
            }
        }
    }
    Ok(())
}
