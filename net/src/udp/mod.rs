//! The UDP fast path: one socket, one dedicated I/O thread, two backends.
//!
//! Owns socket setup (multicast group membership on an explicit interface, or
//! a unicast fan-out list) and moving whole datagrams between that socket and
//! the node. It never looks inside a datagram: signing, sequence numbers
//! and repair belong to the node ([`crate::datagram`], [`crate::gap`]).
//! Received datagrams go to an [`Inbound`] that runs on the I/O thread
//! ([`UdpFastPath::start_with`]: the node checks them there, one batch per
//! receive burst, with no hand-off to another thread), or to a bounded
//! queue ([`UdpFastPath::start`]).
//!
//! Backends ([`IoBackend`]):
//! - `Uring`: the `io-uring` crate; sends are batched `sendmsg` submissions,
//!   receives are one multishot `recvmsg` over a ring of provided buffers.
//! - `Epoll`: `mio`, non-blocking `send_to` / `recv_from`.
//! - `Auto`: tries to set up io_uring (it may be missing or blocked by a
//!   seccomp policy) and falls back to epoll.
//!
//! Nothing is lost silently: a full send queue refuses with
//! [`SendError::Full`], a full receive queue or an oversized datagram is
//! counted in [`UdpStats`].
//!
//! Network safety: the multicast interface is always set explicitly (never
//! the default route's), TTL defaults to 1, and with
//! [`UdpConfig::loopback_only`] (the default) every address must be on
//! 127.0.0.0/8.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};

use crate::mailbox;
use thiserror::Error;

use crate::datagram::MAX_DATAGRAM_LEN;

mod epoll;
mod socket;
mod uring;

/// Which I/O backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    Uring,
    Epoll,
    /// io_uring if it can be set up here, otherwise epoll.
    Auto,
}

/// The backend actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveBackend {
    Uring,
    Epoll,
}

/// Where datagrams go and come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Send to and receive from `group` (address and port) on the local
    /// interface whose address is `interface`. Several sockets on one host can
    /// join the same group and port.
    Multicast {
        group: SocketAddrV4,
        interface: Ipv4Addr,
    },
    /// Bind `bind`, send every datagram to each of `peers`, receive from anyone.
    Unicast {
        bind: SocketAddrV4,
        peers: Vec<SocketAddrV4>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    pub transport: Transport,
    /// Multicast TTL. 1 keeps datagrams on the local link.
    pub multicast_ttl: u32,
    /// Whether this host's own group members (this socket included) receive
    /// what it sends. On so that several processes on one host can talk.
    pub multicast_loop: bool,
    /// Refuse any address outside 127.0.0.0/8 (tests, benchmarks).
    pub loopback_only: bool,
    /// Larger datagrams are refused on send and counted as truncated on receive.
    pub max_datagram_len: usize,
    /// Capacity of the channel into the I/O thread.
    pub send_queue: usize,
    /// Capacity of the channel out of the I/O thread.
    pub recv_queue: usize,
    /// SO_RCVBUF and SO_SNDBUF request (the kernel may cap it).
    pub socket_buffer: usize,
    /// io_uring: submission queue entries (power of two).
    pub ring_entries: u32,
    /// io_uring: provided receive buffers (power of two, at most 32768).
    pub recv_buffers: u16,
}

impl UdpConfig {
    fn with(transport: Transport) -> Self {
        UdpConfig {
            transport,
            multicast_ttl: 1,
            multicast_loop: true,
            loopback_only: true,
            max_datagram_len: MAX_DATAGRAM_LEN,
            send_queue: 8192,
            recv_queue: 65536,
            socket_buffer: 4 << 20,
            ring_entries: 512,
            recv_buffers: 1024,
        }
    }

    pub fn multicast(group: SocketAddrV4, interface: Ipv4Addr) -> Self {
        Self::with(Transport::Multicast { group, interface })
    }

    pub fn unicast(bind: SocketAddrV4, peers: Vec<SocketAddrV4>) -> Self {
        Self::with(Transport::Unicast { bind, peers })
    }
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UdpError {
    #[error("{what} {addr} is outside 127.0.0.0/8 and loopback_only is set")]
    NotLoopback { what: &'static str, addr: Ipv4Addr },
    #[error("{0} is not a multicast address")]
    NotMulticast(Ipv4Addr),
    #[error("unicast peer {0} is a multicast or unspecified address")]
    NotUnicast(Ipv4Addr),
    #[error("the multicast interface must be an explicit address, not 0.0.0.0")]
    UnspecifiedInterface,
    #[error("multicast TTL {0} out of range 1..=255")]
    BadTtl(u32),
    #[error("io_uring unavailable: {0}")]
    UringUnavailable(#[source] io::Error),
    #[error("socket setup ({op}): {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("starting the I/O thread: {0}")]
    Thread(#[source] io::Error),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    #[error("datagram of {len} bytes exceeds {max}")]
    Oversize { len: usize, max: usize },
    #[error("send queue full")]
    Full(Bytes),
    #[error("fast path stopped")]
    Stopped(Bytes),
}

/// Counters since start. `sent` and `send_errors` count (datagram,
/// destination) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpStats {
    pub sent: u64,
    pub send_errors: u64,
    /// Sends refused because the send queue was full.
    pub send_queue_full: u64,
    /// Datagrams taken from the socket within the size limit, including
    /// those then dropped for a full receive queue.
    pub received: u64,
    /// Received datagrams longer than `max_datagram_len`, dropped.
    pub truncated: u64,
    pub recv_errors: u64,
    /// Received datagrams dropped because the receive queue was full.
    pub recv_queue_full: u64,
    /// io_uring: the multishot receive ran out of provided buffers.
    pub recv_no_buffers: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    send_errors: AtomicU64,
    send_queue_full: AtomicU64,
    received: AtomicU64,
    truncated: AtomicU64,
    recv_errors: AtomicU64,
    recv_queue_full: AtomicU64,
    recv_no_buffers: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> UdpStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        UdpStats {
            sent: g(&self.sent),
            send_errors: g(&self.send_errors),
            send_queue_full: g(&self.send_queue_full),
            received: g(&self.received),
            truncated: g(&self.truncated),
            recv_errors: g(&self.recv_errors),
            recv_queue_full: g(&self.recv_queue_full),
            recv_no_buffers: g(&self.recv_no_buffers),
        }
    }
}

/// State shared by the handle and the I/O thread.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    /// The I/O thread is about to block and wants a wake-up on the next send.
    parked: AtomicBool,
    /// eventfd that wakes the I/O thread.
    wake_fd: OwnedFd,
    counters: Counters,
}

impl Shared {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned by the OwnedFd from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Shared {
            stop: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake_fd,
            counters: Counters::default(),
        })
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A failure
        // (counter saturated) means a wake-up is already pending.
        unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    /// Resets the eventfd counter (non-blocking).
    fn drain_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        unsafe {
            libc::read(
                self.wake_fd.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Called by the I/O thread before blocking. Returns false if it must not
    /// block because work arrived (or stop was requested) meanwhile.
    fn park(&self, outbound: &Receiver<Bytes>) -> bool {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !outbound.is_empty() || self.stopping() {
            self.parked.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
    }
}

/// Longest the I/O thread sleeps in one wait (an [`Inbound`] may ask for
/// less). Sends and `stop` wake it through its eventfd, so this only bounds
/// how late an [`Inbound::tick`] that asked for nothing sooner runs; an
/// idle I/O thread wakes once a second, not ten times.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// Where received datagrams go, on the I/O thread itself. Whatever it does
/// delays this socket's sends, so it should be short and bounded; a
/// consumer that needs its own thread uses [`UdpFastPath::start`] and its
/// queue instead.
pub trait Inbound: Send + 'static {
    /// One datagram within the size limit; the bytes are only lent (the
    /// receive buffer is reused). False: dropped, and counted in
    /// [`UdpStats::recv_queue_full`].
    fn datagram(&mut self, from: SocketAddr, payload: &[u8]) -> bool;
    /// The end of a receive burst: work done once per batch goes here.
    fn burst_end(&mut self) {}
    /// Called on every turn of the I/O loop, at least every [`Inbound::wait`].
    fn tick(&mut self) {}
    /// Longest the I/O thread may sleep before the next [`Inbound::tick`];
    /// at most [`MAX_WAIT`] is used.
    fn wait(&self) -> Duration {
        MAX_WAIT
    }
}

/// [`UdpFastPath::start`]'s consumer: a bounded queue another thread reads.
struct Queue(mailbox::Sender<(SocketAddr, Bytes)>);

impl Inbound for Queue {
    fn datagram(&mut self, from: SocketAddr, payload: &[u8]) -> bool {
        // A consumer that went away is the same as a full queue to us;
        // either way the datagram is dropped and counted.
        self.0
            .try_send(0, (from, Bytes::copy_from_slice(payload)))
            .is_ok()
    }
}

/// What the I/O thread works with.
struct IoContext {
    shared: Arc<Shared>,
    outbound: Receiver<Bytes>,
    /// Only the I/O thread touches it; the cell lets the backends keep
    /// borrowing the context immutably.
    inbound: std::cell::RefCell<Box<dyn Inbound>>,
    max_len: usize,
}

impl IoContext {
    /// Hands a received datagram to the consumer, counting what cannot be.
    fn deliver(&self, from: SocketAddr, payload: &[u8], truncated: bool) {
        let c = &self.shared.counters;
        if truncated || payload.len() > self.max_len {
            Counters::add(&c.truncated, 1);
            return;
        }
        Counters::add(&c.received, 1);
        if !self.inbound.borrow_mut().datagram(from, payload) {
            Counters::add(&c.recv_queue_full, 1);
        }
    }

    /// After a turn's receives: the burst ends, timers run.
    fn turn_end(&self, received: bool) {
        let mut i = self.inbound.borrow_mut();
        if received {
            i.burst_end();
        }
        i.tick();
    }

    /// How long the next blocking wait may last.
    fn max_wait(&self) -> Duration {
        self.inbound.borrow().wait().min(MAX_WAIT)
    }
}

/// Entry point.
pub struct UdpFastPath;

impl UdpFastPath {
    /// Opens the socket, picks the backend and starts the I/O thread.
    /// Received datagrams come out of the returned receiver as
    /// `(source address, bytes)`; it disconnects when the handle is dropped.
    pub fn start(
        config: UdpConfig,
        backend: IoBackend,
    ) -> Result<(FastPathHandle, mailbox::Receiver<(SocketAddr, Bytes)>), UdpError> {
        // The consumer parks on this one (see `mailbox`); the I/O thread
        // only ever polls the outbound channel.
        let (in_tx, in_rx) = mailbox::bounded(1, config.recv_queue.max(1));
        let handle = Self::start_with(config, backend, Box::new(Queue(in_tx)))?;
        Ok((handle, in_rx))
    }

    /// Like [`UdpFastPath::start`], with received datagrams handed to
    /// `inbound` on the I/O thread.
    pub fn start_with(
        config: UdpConfig,
        backend: IoBackend,
        inbound: Box<dyn Inbound>,
    ) -> Result<FastPathHandle, UdpError> {
        let opened = socket::open(&config)?;
        let local_addr = opened.local_addr;
        let shared = Arc::new(Shared::new().map_err(|source| UdpError::Socket {
            op: "eventfd",
            source,
        })?);
        let (out_tx, out_rx) = channel::bounded::<Bytes>(config.send_queue.max(1));
        let ctx = IoContext {
            shared: shared.clone(),
            outbound: out_rx,
            inbound: std::cell::RefCell::new(inbound),
            max_len: config.max_datagram_len,
        };

        let uring = match backend {
            IoBackend::Epoll => None,
            IoBackend::Uring => Some(
                uring::UringDriver::new(&opened, &config).map_err(UdpError::UringUnavailable)?,
            ),
            IoBackend::Auto => match uring::UringDriver::new(&opened, &config) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable, using epoll for the UDP fast path");
                    None
                }
            },
        };
        let (active, thread) = match uring {
            Some(driver) => (
                ActiveBackend::Uring,
                std::thread::Builder::new()
                    .name("time-net-udp-uring".into())
                    .spawn(move || driver.run(opened, ctx)),
            ),
            None => (
                ActiveBackend::Epoll,
                std::thread::Builder::new()
                    .name("time-net-udp-epoll".into())
                    .spawn(move || epoll::run(opened, ctx)),
            ),
        };
        let thread = thread.map_err(UdpError::Thread)?;
        Ok(FastPathHandle {
            tx: Some(out_tx),
            shared,
            thread: Some(thread),
            backend: active,
            max_len: config.max_datagram_len,
            local_addr,
        })
    }
}

/// Sends datagrams and stops the I/O thread when dropped.
pub struct FastPathHandle {
    tx: Option<Sender<Bytes>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    backend: ActiveBackend,
    max_len: usize,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for FastPathHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPathHandle")
            .field("backend", &self.backend)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl FastPathHandle {
    /// Queues one datagram for every destination. Never blocks. With no
    /// destination (a unicast list left empty) the datagram is discarded:
    /// `sent` counts (datagram, destination) pairs.
    pub fn send(&self, datagram: impl Into<Bytes>) -> Result<(), SendError> {
        let d: Bytes = datagram.into();
        if d.len() > self.max_len {
            return Err(SendError::Oversize {
                len: d.len(),
                max: self.max_len,
            });
        }
        let Some(tx) = &self.tx else {
            return Err(SendError::Stopped(d));
        };
        match tx.try_send(d) {
            Ok(()) => {}
            Err(TrySendError::Full(d)) => {
                Counters::add(&self.shared.counters.send_queue_full, 1);
                return Err(SendError::Full(d));
            }
            Err(TrySendError::Disconnected(d)) => return Err(SendError::Stopped(d)),
        }
        fence(Ordering::SeqCst);
        // Only a parked I/O thread needs the (syscall-costing) wake-up.
        if self.shared.parked.load(Ordering::SeqCst)
            && self.shared.parked.swap(false, Ordering::SeqCst)
        {
            self.shared.wake();
        }
        Ok(())
    }

    pub fn stats(&self) -> UdpStats {
        self.shared.counters.snapshot()
    }

    pub fn backend(&self) -> ActiveBackend {
        self.backend
    }

    /// The bound address (the group address and port in multicast mode).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the I/O thread and waits for it. Datagrams still queued are
    /// not sent.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("UDP fast path I/O thread panicked");
            }
        }
    }
}

impl Drop for FastPathHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `requested` can run here, and which backend it resolves to; the
/// same decision `start` makes, without opening a socket.
pub fn probe_backend(requested: IoBackend) -> Result<ActiveBackend, UdpError> {
    match requested {
        IoBackend::Epoll => Ok(ActiveBackend::Epoll),
        IoBackend::Uring => uring::probe()
            .map(|_| ActiveBackend::Uring)
            .map_err(UdpError::UringUnavailable),
        IoBackend::Auto => Ok(match uring::probe() {
            Ok(()) => ActiveBackend::Uring,
            Err(_) => ActiveBackend::Epoll,
        }),
    }
}

#[cfg(test)]
mod tests;
