//! One peer link: what survives reconnections (outbound queues, sequence
//! numbers, counters) and the pieces every connection runner uses (batched
//! writing, delivery with loss accounting, ping/pong).
//!
//! At most one connection per link runs at a time: [`PeerLink::install`]
//! stops the previous connection and waits until all its tasks have ended
//! before the new one starts, so frames of an old connection can never be
//! delivered after frames of the new one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::priority::{PeerQueue, Priority, PushError, QueueLimits, QueueStats};
use crate::reader::DecodeError;

use super::identity::{PeerId, ShortId};
use super::stats::{LinkStats, PeerStats};
use super::wire::{self, CodecError, Frame};
use super::Shared;

/// Why a connection ended.
#[derive(Debug, Error)]
pub(crate) enum ConnError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    #[error("quic: {0}")]
    Quic(#[from] quinn::ConnectionError),
    #[error("quic stream closed")]
    StreamClosed,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("no pong within {0:?}")]
    PingTimeout(Duration),
    #[error("peer closed the connection")]
    PeerClosed,
    #[error("killed")]
    Killed,
    #[error("a connection task panicked")]
    Panicked,
}

impl From<quinn::ClosedStream> for ConnError {
    fn from(_: quinn::ClosedStream) -> Self {
        ConnError::StreamClosed
    }
}

/// Outbound messages waiting for the peer.
pub(crate) enum Outbox {
    /// TCP: one queue; strict priority with starvation protection decides
    /// what goes next on the single stream.
    Shared(PeerQueue<Bytes>),
    /// QUIC: one queue per class, each drained into its own stream.
    PerClass([PeerQueue<Bytes>; Priority::COUNT]),
}

impl Outbox {
    pub(crate) fn shared(limits: &QueueLimits) -> Self {
        Outbox::Shared(PeerQueue::new(limits.clone()))
    }

    pub(crate) fn per_class(limits: &QueueLimits) -> Self {
        Outbox::PerClass(std::array::from_fn(|_| PeerQueue::new(limits.clone())))
    }

    /// The queue `p` goes through (the same one for every class on TCP).
    pub(crate) fn queue(&self, p: Priority) -> &PeerQueue<Bytes> {
        match self {
            Outbox::Shared(q) => q,
            Outbox::PerClass(qs) => &qs[p.index()],
        }
    }

    pub(crate) fn try_push(&self, p: Priority, msg: Bytes) -> Result<(), PushError<Bytes>> {
        self.queue(p).try_push(p, msg)
    }

    pub(crate) async fn push(&self, p: Priority, msg: Bytes) -> Result<(), PushError<Bytes>> {
        self.queue(p).push(p, msg).await
    }

    pub(crate) fn close(&self) {
        match self {
            Outbox::Shared(q) => q.close(),
            Outbox::PerClass(qs) => qs.iter().for_each(PeerQueue::close),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Outbox::Shared(q) => q.len(),
            Outbox::PerClass(qs) => qs.iter().map(PeerQueue::len).sum(),
        }
    }

    pub(crate) fn stats(&self) -> QueueStats {
        match self {
            Outbox::Shared(q) => q.stats(),
            Outbox::PerClass(qs) => {
                let mut all = QueueStats::default();
                for q in qs {
                    let s = q.stats();
                    for i in 0..Priority::COUNT {
                        all.pushed[i] += s.pushed[i];
                        all.popped[i] += s.popped[i];
                        all.dropped[i] += s.dropped[i];
                        all.starvation_turns[i] += s.starvation_turns[i];
                    }
                }
                all
            }
        }
    }
}

/// The running connection of a link.
struct Active {
    kill: Arc<Notify>,
    done: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// Receiver-side sequence state of one class: the sender's epoch and the
/// next sequence number expected from it.
type RecvSeq = Option<(u64, u64)>;

pub(crate) struct PeerLink {
    pub id: PeerId,
    pub addr: SocketAddr,
    pub outbox: Outbox,
    pub stats: LinkStats,
    send_seq: [AtomicU64; Priority::COUNT],
    recv_seq: Mutex<[RecvSeq; Priority::COUNT]>,
    active: tokio::sync::Mutex<Option<Active>>,
}

/// Resolves when a connection's runner has finished.
pub(crate) struct Finished {
    done: watch::Receiver<bool>,
    was_up: watch::Receiver<bool>,
    started: Instant,
}

impl Finished {
    /// How long the connection lived, and whether the peer ever confirmed it
    /// (a QUIC client can finish its handshake before the server has checked
    /// the client's certificate and refused it).
    pub(crate) async fn wait(mut self) -> (Duration, bool) {
        let _ = self.done.wait_for(|d| *d).await;
        (self.started.elapsed(), *self.was_up.borrow())
    }
}

/// Sets `done` when dropped, i.e. when the runner returns or is aborted.
struct DoneGuard(watch::Sender<bool>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

impl PeerLink {
    pub(crate) fn new(id: PeerId, addr: SocketAddr, outbox: Outbox) -> Self {
        PeerLink {
            id,
            addr,
            outbox,
            stats: LinkStats::default(),
            send_seq: Default::default(),
            recv_seq: Mutex::new([None; Priority::COUNT]),
            active: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn snapshot(&self) -> PeerStats {
        self.stats.snapshot(self.outbox.stats(), self.outbox.len())
    }

    /// Stops the current connection (if any), waits for all its tasks, then
    /// spawns `runner` as the link's connection.
    pub(crate) async fn install<F, Fut>(self: &Arc<Self>, runner: F) -> Finished
    where
        F: FnOnce(Arc<Notify>) -> Fut,
        Fut: std::future::Future<Output = Result<(), ConnError>> + Send + 'static,
    {
        let mut slot = self.active.lock().await;
        if let Some(old) = slot.take() {
            old.kill.notify_one();
            let mut done = old.done;
            let _ = done.wait_for(|d| *d).await;
        }
        let kill = Arc::new(Notify::new());
        let (done_tx, done_rx) = watch::channel(false);
        let fut = runner(kill.clone());
        let link = self.clone();
        let up_before = self.stats.connects.load(Relaxed);
        let (up_tx, up_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let _done = DoneGuard(done_tx);
            let result = fut.await;
            if link.stats.connected.swap(false, Relaxed) {
                LinkStats::add(&link.stats.disconnects, 1);
            }
            let _ = up_tx.send(link.stats.connects.load(Relaxed) > up_before);
            match result {
                Ok(()) => tracing::debug!(peer = %ShortId(&link.id), "connection closed"),
                Err(e) => tracing::debug!(peer = %ShortId(&link.id), "connection ended: {e}"),
            }
        });
        *slot = Some(Active {
            kill,
            done: done_rx.clone(),
            task,
        });
        Finished {
            done: done_rx,
            was_up: up_rx,
            started: Instant::now(),
        }
    }

    /// The peer accepted us too: the connection counts as established.
    pub(crate) fn mark_up(&self) {
        if !self.stats.connected.swap(true, Relaxed) {
            LinkStats::add(&self.stats.connects, 1);
        }
    }

    /// Ends the current connection abruptly and waits until all its tasks
    /// have stopped. Returns whether there was one.
    pub(crate) async fn kill(&self) -> bool {
        let mut done = {
            let slot = self.active.lock().await;
            match slot.as_ref() {
                Some(a) if !*a.done.borrow() => {
                    a.kill.notify_one();
                    a.done.clone()
                }
                _ => return false,
            }
        };
        let _ = done.wait_for(|d| *d).await;
        true
    }

    /// Waits up to `timeout` for the current connection to finish by itself
    /// (queues closed and drained), then kills what is left.
    pub(crate) async fn wind_down(&self, timeout: Duration) {
        let Some(active) = self.active.lock().await.take() else {
            return;
        };
        let mut done = active.done.clone();
        if tokio::time::timeout(timeout, done.wait_for(|d| *d))
            .await
            .is_err()
        {
            active.kill.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(200), done.wait_for(|d| *d)).await;
        }
        active.task.abort();
    }

    /// Aborts the connection task without waiting (pool dropped).
    pub(crate) fn abort(&self) {
        if let Ok(mut slot) = self.active.try_lock() {
            if let Some(a) = slot.take() {
                a.task.abort();
            }
        }
    }

    fn next_send_seq(&self, p: Priority) -> u64 {
        self.send_seq[p.index()].fetch_add(1, Relaxed)
    }
}

/// Writes data and control frames into one frame writer, batching what is
/// already queued into one flush.
pub(crate) struct BatchWriter<W> {
    w: FrameWriter<W>,
    scratch: Vec<u8>,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    pending_frames: [u64; Priority::COUNT],
}

impl<W: AsyncWrite + Unpin> BatchWriter<W> {
    pub(crate) fn new(w: FrameWriter<W>, link: Arc<PeerLink>, shared: Arc<Shared>) -> Self {
        BatchWriter {
            w,
            scratch: Vec::with_capacity(16 * 1024),
            link,
            shared,
            pending_frames: [0; Priority::COUNT],
        }
    }

    /// Queues one message; its sequence number is taken now, so a message
    /// lost from here on shows up as a gap at the receiver.
    pub(crate) fn push_data(&mut self, p: Priority, msg: &Bytes) -> Result<(), ConnError> {
        let seq = self.link.next_send_seq(p);
        match wire::compress_if_pays(msg, self.shared.tun.compress_threshold) {
            Some(packed) => {
                wire::encode_data(&mut self.scratch, p, seq, true, &packed);
                LinkStats::add(&self.link.stats.compressed_out, 1);
            }
            None => wire::encode_data(&mut self.scratch, p, seq, false, msg),
        }
        self.w.push(&self.scratch)?;
        self.pending_frames[p.index()] += 1;
        Ok(())
    }

    pub(crate) fn push_control(&mut self, frame: &[u8]) -> Result<(), ConnError> {
        self.w.push(frame)?;
        Ok(())
    }

    pub(crate) fn buffered(&self) -> usize {
        self.w.buffered()
    }

    /// After a first message: adds what `queue` already holds (and, with a
    /// batch window, what arrives within it) until the batch is full.
    pub(crate) async fn fill_from(&mut self, queue: &PeerQueue<Bytes>) -> Result<(), ConnError> {
        let max = self.shared.tun.max_batch_bytes;
        let deadline = Instant::now() + self.shared.tun.batch_window;
        while self.buffered() < max {
            if let Some((p, msg)) = queue.try_pop() {
                self.push_data(p, &msg)?;
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, queue.pop()).await {
                Ok(Some((p, msg))) => self.push_data(p, &msg)?,
                _ => break,
            }
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), ConnError> {
        let bytes = self.w.buffered() as u64;
        self.w.flush().await?;
        LinkStats::add(&self.link.stats.bytes_out, bytes);
        if self.pending_frames.iter().any(|&n| n > 0) {
            LinkStats::add(&self.link.stats.writes, 1);
        }
        for (i, n) in self.pending_frames.iter_mut().enumerate() {
            LinkStats::add(&self.link.stats.frames_out[i], *n);
            *n = 0;
        }
        Ok(())
    }
}

/// Hands one data frame to the application and accounts for gaps in the
/// sender's sequence. The sequence state moves only after the message was
/// handed over, so a message cut off mid-delivery counts as lost too.
pub(crate) async fn deliver(
    link: &PeerLink,
    shared: &Shared,
    peer_epoch: u64,
    frame_len: usize,
    frame: Frame<'_>,
) -> Result<(), ConnError> {
    let Frame::Data {
        priority,
        seq,
        compressed,
        body,
    } = frame
    else {
        return Err(ConnError::Protocol("control frame on a data path"));
    };
    let msg = if compressed {
        LinkStats::add(&link.stats.compressed_in, 1);
        Bytes::from(wire::decompress_bounded(body, shared.tun.max_message_len)?)
    } else {
        if body.len() > shared.tun.max_message_len {
            return Err(ConnError::Protocol("message above the size cap"));
        }
        Bytes::copy_from_slice(body)
    };
    let c = priority.index();
    let expected = link.recv_seq.lock().unwrap_or_else(|p| p.into_inner())[c];
    let lost = match expected {
        Some((epoch, next)) if epoch == peer_epoch => {
            if seq < next {
                return Err(ConnError::Protocol("sequence went backwards"));
            }
            seq - next
        }
        // First frame from this sender instance: it sets the baseline.
        _ => 0,
    };
    if let Some(pace) = &shared.pacing {
        // Over the peer's rate: stop reading it for a while (pushback by
        // flow control), at most MAX_PACING_WAIT per message.
        let mut waited = Duration::ZERO;
        while let Some(d) = pace(&link.id, &msg) {
            let d = d.min(super::MAX_PACING_WAIT.saturating_sub(waited));
            if d.is_zero() {
                break;
            }
            LinkStats::add(&shared.counters.paced, 1);
            LinkStats::add(&shared.counters.paced_ms, d.as_millis() as u64);
            tokio::time::sleep(d).await;
            waited += d;
        }
    }
    if shared.inbound.push(priority, (link.id, msg)).await.is_err() {
        LinkStats::add(&shared.counters.undeliverable, 1);
    }
    link.recv_seq.lock().unwrap_or_else(|p| p.into_inner())[c] = Some((peer_epoch, seq + 1));
    if lost > 0 {
        tracing::debug!(peer = %ShortId(&link.id), ?priority, lost, "messages lost in flight");
        LinkStats::add(&link.stats.lost_in_flight[c], lost);
    }
    LinkStats::add(&link.stats.frames_in[c], 1);
    LinkStats::add(&link.stats.bytes_in, frame_len as u64 + 4);
    Ok(())
}

/// The one outstanding ping of a connection.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    outstanding: Mutex<Option<(u64, Instant)>>,
}

impl Probe {
    /// A new ping nonce, or `None` while one is still unanswered.
    fn start(&self, nonce: u64) -> bool {
        let mut o = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        if o.is_some() {
            return false;
        }
        *o = Some((nonce, Instant::now()));
        true
    }

    fn overdue(&self, timeout: Duration) -> bool {
        let o = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        o.is_some_and(|(_, at)| at.elapsed() > timeout)
    }

    /// The round trip, if `nonce` answers the outstanding ping.
    pub(crate) fn on_pong(&self, nonce: u64) -> Option<Duration> {
        let mut o = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        match *o {
            Some((n, at)) if n == nonce => {
                *o = None;
                Some(at.elapsed())
            }
            _ => None,
        }
    }
}

/// Sends a ping every `ping_interval`; ends the connection when one stays
/// unanswered for `ping_timeout`.
pub(crate) async fn pinger(
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    probe: Arc<Probe>,
    control: mpsc::Sender<[u8; 9]>,
) -> Result<(), ConnError> {
    let mut tick = tokio::time::interval(shared.tun.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if probe.overdue(shared.tun.ping_timeout) {
            return Err(ConnError::PingTimeout(shared.tun.ping_timeout));
        }
        let nonce = rand::random::<u64>();
        if probe.start(nonce) {
            if control.send(wire::encode_ping(nonce)).await.is_err() {
                return Ok(());
            }
            LinkStats::add(&link.stats.pings_sent, 1);
        }
    }
}

/// Answers a control frame read from the peer.
pub(crate) async fn on_control(
    link: &PeerLink,
    probe: &Probe,
    control: &mpsc::Sender<[u8; 9]>,
    frame: Frame<'_>,
) -> Result<(), ConnError> {
    match frame {
        Frame::Ping { nonce } => {
            // The writer is gone only when the connection is ending.
            let _ = control.send(wire::encode_pong(nonce)).await;
        }
        Frame::Pong { nonce } => {
            if let Some(rtt) = probe.on_pong(nonce) {
                link.stats.record_rtt(rtt);
            }
        }
        Frame::Data { .. } => return Err(ConnError::Protocol("data frame on the control path")),
    }
    Ok(())
}

/// Reads one frame, mapping a clean end of stream to `None`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut FrameReader<R>,
) -> Result<Option<&[u8]>, ConnError> {
    match r.read_frame().await {
        Ok(f) => Ok(Some(f)),
        Err(FrameError::Closed) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
