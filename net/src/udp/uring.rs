//! The io_uring backend (the `io-uring` crate, not `tokio-uring`).
//!
//! - Receive: one multishot `recvmsg` drawing from a ring of provided
//!   buffers; each completion is copied out and its buffer handed straight
//!   back, so the kernel rarely runs dry (`recv_no_buffers` counts when it does).
//! - Send: one `sendmsg` per (datagram, destination), as many as there are
//!   free send slots, submitted together with a single `io_uring_enter`.
//! - Wake-up: a multishot poll on the handle's eventfd.
//!
//! Every buffer, `msghdr` and `iovec` the kernel may touch lives in memory
//! owned by [`UringDriver`] at a fixed address, and is freed only after every
//! operation has completed (or is leaked if the kernel does not confirm that
//! within a deadline).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::types::{BufRingEntry, CancelBuilder, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, register::Probe, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::socket::{parse_sockaddr, Opened};
use super::{Counters, IoContext, UdpConfig};

const BGID: u16 = 0;
const K_RECV: u64 = 1;
const K_WAKE: u64 = 2;
const K_SEND: u64 = 3;
const K_CANCEL: u64 = 4;
const K_PROBE: u64 = 5;
/// How long shutdown waits for the kernel to confirm every cancellation.
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// Space reserved for the source address in each receive buffer
/// (a sockaddr_in6 fits; IPv4 sources use the first 16 bytes).
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();
/// `struct io_uring_recvmsg_out`: namelen, controllen, payloadlen, flags (u32 each).
const RECVMSG_OUT_LEN: usize = 16;

fn ud(kind: u64, index: u32) -> u64 {
    (kind << 56) | index as u64
}

fn ud_kind(ud: u64) -> u64 {
    ud >> 56
}

fn ud_index(ud: u64) -> usize {
    (ud & 0xffff_ffff) as usize
}

/// Checks that io_uring can be set up and has the operations we use.
pub(super) fn probe() -> io::Result<()> {
    let ring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::RecvMsgMulti::CODE, "recvmsg"),
        (opcode::PollAdd::CODE, "poll_add"),
        (opcode::AsyncCancel2::CODE, "async_cancel"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    Ok(())
}

/// A ring of provided receive buffers (IORING_REGISTER_PBUF_RING).
struct BufRing {
    entries: *mut BufRingEntry,
    entries_layout: Layout,
    data: *mut u8,
    data_layout: Layout,
    count: u16,
    buf_len: usize,
    tail: u16,
}

impl BufRing {
    fn new(count: u16, buf_len: usize) -> io::Result<Self> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recv_buffers must be a power of two <= 32768",
            ));
        }
        let oom = || io::Error::new(io::ErrorKind::OutOfMemory, "provided buffers");
        let entries_layout =
            Layout::from_size_align(count as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|_| oom())?;
        let data_layout =
            Layout::from_size_align(count as usize * buf_len, 64).map_err(|_| oom())?;
        // SAFETY: both layouts have non-zero size (count >= 1, buf_len > 0).
        let entries = unsafe { alloc_zeroed(entries_layout) } as *mut BufRingEntry;
        if entries.is_null() {
            return Err(oom());
        }
        // SAFETY: as above.
        let data = unsafe { alloc_zeroed(data_layout) };
        if data.is_null() {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(entries.cast(), entries_layout) };
            return Err(oom());
        }
        let mut ring = BufRing {
            entries,
            entries_layout,
            data,
            data_layout,
            count,
            buf_len,
            tail: 0,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// Queues buffer `bid` for the kernel (visible after `publish`).
    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: slot < count, inside the entries allocation; bid < count so
        // the address is inside the data allocation.
        unsafe {
            let e = &mut *self.entries.add(slot);
            e.set_addr(self.data.add(bid as usize * self.buf_len) as u64);
            e.set_len(self.buf_len as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `entries` is the page-aligned base of the ring; the tail
        // field overlays entry 0's reserved field, which the kernel reads
        // with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    fn filled(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if bid >= self.count || len > self.buf_len {
            return None;
        }
        // SAFETY: in bounds (checked); the kernel finished writing this buffer
        // when it posted the completion that named it, and does not touch it
        // again until we push it back.
        Some(unsafe { std::slice::from_raw_parts(self.data.add(bid as usize * self.buf_len), len) })
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; the driver drops the
        // ring (or leaks this) only once no operation can reference it.
        unsafe {
            dealloc(self.entries.cast(), self.entries_layout);
            dealloc(self.data, self.data_layout);
        }
    }
}

struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    /// Keeps the bytes `iov` points at alive until the completion.
    data: Option<Bytes>,
}

pub(super) struct UringDriver {
    // Field order matters: the ring is dropped first.
    ring: IoUring,
    bufs: BufRing,
    recv_hdr: Box<libc::msghdr>,
    slots: Box<[SendSlot]>,
    free: Vec<u32>,
    targets: Vec<SockAddr>,
    recv_armed: bool,
    wake_armed: bool,
    recv_failures: u32,
    cqes: Vec<(u64, i32, u32)>,
}

// SAFETY: the raw pointers inside (msghdr, iovec, buffer ring) point only
// into memory this struct owns; the driver is moved to its I/O thread once,
// before any operation is submitted, and used only there afterwards.
unsafe impl Send for UringDriver {}

impl UringDriver {
    /// Sets up the ring, registers the provided buffers and checks that
    /// multishot recvmsg works. Any failure means "use epoll instead".
    pub(super) fn new(opened: &Opened, cfg: &UdpConfig) -> io::Result<Self> {
        probe()?;
        let entries = cfg.ring_entries.clamp(16, 4096).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 4)
            .build(entries)?;
        let buf_len = RECVMSG_OUT_LEN + NAME_LEN + cfg.max_datagram_len.max(1);
        let bufs = BufRing::new(cfg.recv_buffers, buf_len)?;
        // SAFETY: the ring memory is page aligned, `count` entries long and
        // outlives the registration (unregistered or ring closed first).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                bufs.count,
                BGID,
                0,
            )?;
        }
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as _;
        let n_slots = (entries / 2) as usize;
        let slots: Box<[SendSlot]> = (0..n_slots)
            .map(|_| SendSlot {
                // SAFETY: as above.
                hdr: unsafe { std::mem::zeroed() },
                iov: libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                },
                data: None,
            })
            .collect();
        let mut d = UringDriver {
            ring,
            bufs,
            recv_hdr,
            slots,
            free: (0..n_slots as u32).rev().collect(),
            targets: opened.targets.clone(),
            recv_armed: false,
            wake_armed: false,
            recv_failures: 0,
            cqes: Vec::with_capacity(entries as usize * 4),
        };
        d.check_multishot_recv()?;
        Ok(d)
    }

    /// Arms a multishot recvmsg on a fresh, unbound socket and cancels it:
    /// kernels without multishot recvmsg (< 6.0) fail it with EINVAL.
    fn check_multishot_recv(&mut self) -> io::Result<()> {
        let probe_sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        let recv =
            opcode::RecvMsgMulti::new(types::Fd(probe_sock.as_raw_fd()), &*self.recv_hdr, BGID)
                .build()
                .user_data(ud(K_PROBE, 0));
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::user_data(ud(K_PROBE, 0)))
            .build()
            .user_data(ud(K_CANCEL, 0));
        // SAFETY: `recv_hdr` and the buffer ring are owned by self and outlive
        // the operation (we wait for its final completion below).
        unsafe {
            let mut sq = self.ring.submission();
            sq.push(&recv)
                .map_err(|_| io::Error::other("submission queue full"))?;
            sq.push(&cancel)
                .map_err(|_| io::Error::other("submission queue full"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut verdict = None;
        while verdict.is_none() {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "io_uring multishot recvmsg probe did not complete",
                ));
            }
            let ts = Timespec::from(Duration::from_millis(50));
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(e),
            }
            for cqe in self.ring.completion() {
                if ud_kind(cqe.user_data()) != K_PROBE {
                    continue;
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    self.bufs.push(bid);
                }
                if !cqueue::more(cqe.flags()) {
                    verdict = Some(cqe.result());
                }
            }
        }
        self.bufs.publish();
        drop(probe_sock);
        match verdict {
            Some(r) if r == -libc::ECANCELED || r >= 0 => Ok(()),
            Some(r) => Err(io::Error::from_raw_os_error(-r)),
            None => Ok(()),
        }
    }

    fn arm_recv(&mut self, fd: types::Fd) -> bool {
        let e = opcode::RecvMsgMulti::new(fd, &*self.recv_hdr, BGID)
            .build()
            .user_data(ud(K_RECV, 0));
        // SAFETY: `recv_hdr` and the buffer ring outlive the operation.
        self.recv_armed = unsafe { self.ring.submission().push(&e).is_ok() };
        self.recv_armed
    }

    fn arm_wake(&mut self, wake_fd: types::Fd) -> bool {
        let e = opcode::PollAdd::new(wake_fd, libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_WAKE, 0));
        // SAFETY: no user memory involved.
        self.wake_armed = unsafe { self.ring.submission().push(&e).is_ok() };
        self.wake_armed
    }

    /// Queues a sendmsg of `data` to target `t` in a free slot.
    fn queue_send(&mut self, fd: types::Fd, data: &Bytes, t: usize) -> bool {
        if self.ring.submission().is_full() {
            return false;
        }
        let Some(i) = self.free.pop() else {
            return false;
        };
        let target = &self.targets[t];
        let slot = &mut self.slots[i as usize];
        slot.data = Some(data.clone());
        slot.iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        slot.hdr.msg_name = target.as_ptr() as *mut libc::c_void;
        slot.hdr.msg_namelen = target.len();
        slot.hdr.msg_iov = &mut slot.iov;
        slot.hdr.msg_iovlen = 1;
        let e = opcode::SendMsg::new(fd, &slot.hdr)
            .build()
            .user_data(ud(K_SEND, i));
        // SAFETY: the slot (msghdr, iovec), the target address and the bytes
        // (kept alive by `slot.data`) stay put until the completion frees the
        // slot; slots never move (boxed slice).
        if unsafe { self.ring.submission().push(&e).is_err() } {
            slot.data = None;
            self.free.push(i);
            return false;
        }
        true
    }

    fn in_flight(&self) -> bool {
        self.recv_armed || self.wake_armed || self.free.len() < self.slots.len()
    }

    /// Submits queued entries and, if `wait` is given, blocks for one
    /// completion (at most that long). Then moves every completion into
    /// `self.cqes`.
    fn submit(&mut self, wait: Option<Duration>) -> io::Result<()> {
        let r = if let Some(wait) = wait {
            let ts = Timespec::from(wait);
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit()
        };
        match r {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        Ok(())
    }

    /// Handles the completions; true if any datagram was received.
    fn handle_completions(&mut self, ctx: &IoContext) -> bool {
        let c = &ctx.shared.counters;
        let mut received = false;
        let cqes = std::mem::take(&mut self.cqes);
        for &(user_data, res, flags) in &cqes {
            match ud_kind(user_data) {
                K_RECV => {
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if res >= 0 {
                            self.recv_failures = 0;
                            let parsed = self
                                .bufs
                                .filled(bid, res as usize)
                                .and_then(|b| RecvMsgOut::parse(b, &self.recv_hdr).ok());
                            match parsed {
                                Some(out) => {
                                    let from = parse_sockaddr(out.name_data())
                                        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                                    ctx.deliver(
                                        from,
                                        out.payload_data(),
                                        out.is_payload_truncated(),
                                    );
                                    received = true;
                                }
                                None => Counters::add(&c.recv_errors, 1),
                            }
                        }
                        self.bufs.push(bid);
                    } else if res == -libc::ENOBUFS {
                        Counters::add(&c.recv_no_buffers, 1);
                    } else if res < 0 && res != -libc::ECANCELED {
                        self.recv_failures += 1;
                        Counters::add(&c.recv_errors, 1);
                    }
                    if !cqueue::more(flags) {
                        self.recv_armed = false;
                    }
                }
                K_WAKE => {
                    ctx.shared.drain_wake();
                    if !cqueue::more(flags) {
                        self.wake_armed = false;
                    }
                }
                K_SEND => {
                    let i = ud_index(user_data);
                    if let Some(slot) = self.slots.get_mut(i) {
                        slot.data = None;
                        self.free.push(i as u32);
                    }
                    if res >= 0 {
                        Counters::add(&c.sent, 1);
                    } else {
                        Counters::add(&c.send_errors, 1);
                    }
                }
                _ => {}
            }
        }
        self.cqes = cqes;
        self.bufs.publish();
        received
    }

    pub(super) fn run(mut self, opened: Opened, ctx: IoContext) {
        if let Err(e) = self.run_inner(&opened, &ctx) {
            tracing::error!(error = %e, "UDP io_uring I/O thread failed");
            Counters::add(&ctx.shared.counters.recv_errors, 1);
        }
        self.shutdown(&ctx);
        // `opened` (the socket) is closed only after every operation on it
        // has completed.
        drop(opened);
    }

    fn run_inner(&mut self, opened: &Opened, ctx: &IoContext) -> io::Result<()> {
        // io_uring polls internally; a blocking socket is what it expects.
        opened.socket.set_nonblocking(false)?;
        let fd = types::Fd(opened.socket.as_raw_fd());
        let wake_fd = types::Fd(ctx.shared.wake_fd.as_raw_fd());
        self.arm_recv(fd);
        self.arm_wake(wake_fd);
        // The datagram being fanned out, and its next target.
        let mut current: Option<(Bytes, usize)> = None;
        let n_targets = self.targets.len();
        while !ctx.shared.stopping() {
            let mut queued = 0usize;
            loop {
                let (d, t) = match current.take() {
                    Some(x) => x,
                    None => match ctx.outbound.try_recv() {
                        Ok(d) => (d, 0),
                        Err(_) => break,
                    },
                };
                if t >= n_targets {
                    continue;
                }
                if !self.queue_send(fd, &d, t) {
                    current = Some((d, t));
                    break;
                }
                queued += 1;
                current = Some((d, t + 1));
            }
            let blocked_on_slots = current.is_some();
            let idle = queued == 0 && self.ring.completion().is_empty();
            let wait = idle && (blocked_on_slots || ctx.shared.park(&ctx.outbound));
            let r = self.submit(wait.then(|| ctx.max_wait()));
            ctx.shared.unpark();
            r?;
            let received = self.handle_completions(ctx);
            ctx.turn_end(received);
            if !self.recv_armed && !ctx.shared.stopping() {
                if self.recv_failures >= 8 {
                    // Persistent errors: do not spin.
                    std::thread::sleep(Duration::from_millis(1));
                }
                self.arm_recv(fd);
            }
            if !self.wake_armed && !ctx.shared.stopping() {
                self.arm_wake(wake_fd);
            }
        }
        Ok(())
    }

    /// Cancels everything and waits (bounded) until the kernel has finished
    /// with our memory; leaks the memory if it does not confirm in time.
    fn shutdown(mut self, ctx: &IoContext) {
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(ud(K_CANCEL, 0));
        // SAFETY: no user memory involved.
        let _ = unsafe { self.ring.submission().push(&cancel) };
        let deadline = Instant::now() + DRAIN_DEADLINE;
        while self.in_flight() && Instant::now() < deadline {
            if self.submit(Some(super::MAX_WAIT)).is_err() {
                break;
            }
            self.handle_completions(ctx);
        }
        if self.in_flight() {
            tracing::error!(
                "io_uring operations still in flight at shutdown; leaking their buffers"
            );
            std::mem::forget(self);
            return;
        }
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
    }
}
