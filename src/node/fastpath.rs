//! The UDP fast path in the node: UTXO lock broadcasts and vote batches go out
//! as signed datagrams (multicast, or unicast fan-out), numbered per sender;
//! receivers detect gaps and repair them over the peer pool (the reliable path).
//!
//! - Sending (core thread): [`FastPathSender::push`] packs encoded messages
//!   into datagrams of at most 1200 bytes; [`FastPathSender::flush`] signs
//!   each with the masternode key, keeps it in a ring for repair, and hands it
//!   to the I/O thread. An empty heartbeat datagram goes out while idle so a
//!   lost tail is noticed.
//! - Receiving (on the UDP I/O thread, [`time_net::udp::Inbound`]: no
//!   hand-off to a thread of its own, one batch verification per receive
//!   burst): a datagram counts only after its signature verifies against
//!   the registered key of its `sender_id` (the sender's index in the
//!   registry). Duplicates are dropped. Holes older than the repair delay
//!   are requested from their sender over TCP; its answer (the original
//!   signed datagram) goes through the same checks.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use time_net::datagram::{Datagram, DatagramBuilder, MAX_ITEM_LEN};
use time_net::gap::{GapConfig, GapTracker, Receipt};
use time_net::udp::{FastPathHandle, Inbound, IoBackend, UdpConfig, UdpFastPath};

use crate::protocol::message::Message;
use crate::protocol::registry::Registry;
use crate::protocol::types::PublicKey;

const KIND_DATA: u8 = 1;
const KIND_HEARTBEAT: u8 = 2;
/// The first heartbeat after a data datagram: a receiver that lost the
/// tail of a burst notices within this (plus its repair delay).
pub const HEARTBEAT_FIRST: Duration = Duration::from_millis(20);
/// While idle, the heartbeat interval doubles after each one up to this: an
/// idle masternode sends one datagram a second instead of fifty (each one
/// signed here and verified by every receiver).
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(1);
/// How often the receiver looks at holes while some are open (the I/O
/// thread otherwise sleeps until a datagram or a send wakes it).
const REPAIR_POLL: Duration = Duration::from_millis(10);
/// Most datagrams checked in one batch verification.
const CHECK_BATCH: usize = 64;
/// Most datagrams kept while the node is still starting (its sink not yet
/// attached); more are dropped, counted, and repaired later.
const PENDING_BEFORE_SINK: usize = 4_096;
/// Datagrams kept for repair requests.
const REPAIR_RING: usize = 16_384;
/// Largest vote batch that fits one datagram item (113 + 35 n bytes).
pub const VOTES_PER_DATAGRAM: usize = (MAX_ITEM_LEN - 113) / 35;

/// How datagrams travel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastPathMode {
    Off,
    /// Join `group` on the interface with address `interface`.
    Multicast {
        group: SocketAddrV4,
        interface: Ipv4Addr,
    },
    /// Send a copy to each peer's P2P address, UDP port + 1.
    Unicast,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FastPathError {
    #[error("udp: {0}")]
    Udp(#[from] time_net::udp::UdpError),
    #[error("the fast path needs IPv4 addresses; {0} is not")]
    NotIpv4(String),
    #[error(
        "this masternode's key is not in the registry; it cannot sign datagrams others accept"
    )]
    NotRegistered,
}

/// Counters an operator reads.
#[derive(Default, Debug)]
pub struct FastPathStats {
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub bad_datagrams: AtomicU64,
    pub duplicates: AtomicU64,
    pub repair_requests_sent: AtomicU64,
    pub repaired: AtomicU64,
    pub lost_seqs: AtomicU64,
    pub send_refused: AtomicU64,
    /// Streams that jumped past the gap window (sender restart, long cut).
    pub resyncs: AtomicU64,
}

/// Signed datagrams this node sent, by sequence, for repair.
#[derive(Default)]
pub struct RepairRing {
    first_seq: u64,
    items: VecDeque<Bytes>,
}

impl RepairRing {
    fn push(&mut self, seq: u64, d: Bytes) {
        if self.items.is_empty() {
            self.first_seq = seq;
        }
        self.items.push_back(d);
        if self.items.len() > REPAIR_RING {
            self.items.pop_front();
            self.first_seq += 1;
        }
    }

    pub fn get(&self, seq: u64) -> Option<Bytes> {
        let i = seq.checked_sub(self.first_seq)?;
        self.items.get(i as usize).cloned()
    }
}

pub struct FastPathSender {
    key: SigningKey,
    sender_id: u32,
    next_seq: u64,
    builder: Option<DatagramBuilder>,
    out: Vec<Bytes>,
    handle: FastPathHandle,
    pub ring: Arc<Mutex<RepairRing>>,
    stats: Arc<FastPathStats>,
    last_send: Instant,
    /// The idle heartbeat's current interval: [`HEARTBEAT_FIRST`] after
    /// data, doubling up to [`HEARTBEAT_MAX`].
    heartbeat_gap: Duration,
    /// The sequence after the last sealed datagram that carried data
    /// (heartbeats move `next_seq` but not this).
    data_end: u64,
    /// The open builder holds data.
    data_pending: bool,
}

impl FastPathSender {
    /// Whether a message of `len` encoded bytes can travel as one item.
    pub fn fits(len: usize) -> bool {
        len <= MAX_ITEM_LEN
    }

    /// Adds an encoded message to the current datagram.
    pub fn push(&mut self, msg: &[u8]) {
        if !Self::fits(msg.len()) {
            return;
        }
        self.heartbeat_gap = HEARTBEAT_FIRST;
        let b = self
            .builder
            .get_or_insert_with(|| DatagramBuilder::new(KIND_DATA, self.sender_id, self.next_seq));
        if b.push(msg).is_err() {
            self.seal();
            let mut b = DatagramBuilder::new(KIND_DATA, self.sender_id, self.next_seq);
            let _ = b.push(msg);
            self.builder = Some(b);
        }
        self.data_pending = true;
    }

    fn seal(&mut self) {
        if let Some(b) = self.builder.take() {
            let unsigned = b.finish();
            let sig = self.key.sign(unsigned.signed_bytes()).to_bytes();
            let bytes = Bytes::from(unsigned.sign_with(&sig));
            self.ring
                .lock()
                .expect("repair ring")
                .push(self.next_seq, bytes.clone());
            self.next_seq += 1;
            if std::mem::take(&mut self.data_pending) {
                self.data_end = self.next_seq;
            }
            self.out.push(bytes);
        }
    }

    /// Signs and sends everything pushed since the last flush.
    pub fn flush(&mut self) {
        self.seal();
        for d in self.out.drain(..) {
            match self.handle.send(d) {
                Ok(()) => {
                    self.stats.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    // Still in the ring: the receivers' gap repair recovers it.
                    self.stats.send_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.last_send = Instant::now();
        }
    }

    /// The sequence the next datagram will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence after the last datagram that carried data: where the
    /// stream stands for a receiver (what follows are heartbeats).
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// While idle, an empty datagram lets receivers notice a lost tail:
    /// [`HEARTBEAT_FIRST`] after the last data, then at doubling intervals
    /// up to [`HEARTBEAT_MAX`].
    pub fn heartbeat(&mut self) {
        if self.builder.is_none() && self.last_send.elapsed() >= self.heartbeat_gap {
            self.builder = Some(DatagramBuilder::new(
                KIND_HEARTBEAT,
                self.sender_id,
                self.next_seq,
            ));
            self.flush();
            self.heartbeat_gap = (self.heartbeat_gap * 2).min(HEARTBEAT_MAX);
        }
    }

    /// How long until [`Self::heartbeat`] has something to send (the core
    /// thread sleeps at most this long).
    pub fn heartbeat_in(&self) -> Duration {
        self.heartbeat_gap.saturating_sub(self.last_send.elapsed())
    }
}

/// What the receiver hands to the node.
pub trait FastPathSink: Send + Sync + 'static {
    /// The messages of the verified datagrams of one receive burst, in
    /// order, each with the masternode that sent it.
    fn deliver(&self, msgs: Vec<(PublicKey, Message)>);
    /// Ask `to` (over the reliable path) for its datagrams `first..=last`.
    fn request_repair(&self, to: PublicKey, first: u64, last: u64);
}

/// Verified datagrams in: from UDP, or from a TCP repair answer.
pub struct FastPathReceiver {
    /// Registered keys by sender id.
    keys: Vec<PublicKey>,
    /// The same keys decoded once: a burst of one datagram (the usual case
    /// below a few thousand payments a second) is checked with its sender's
    /// decoded key instead of a batch of one that decodes it again.
    decoded: Vec<crate::sig::DecodedKey>,
    me: u32,
    gaps: GapTracker<u32>,
    stats: Arc<FastPathStats>,
    start: Instant,
    last_repair_ms: u64,
}

impl FastPathReceiver {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Checks many datagrams with one ed25519 batch verification
    /// ([`crate::sig`], ZIP 215; falling back to one by one if the batch
    /// fails); returns the new messages of the good ones, in order
    /// ([`check_and_deliver`] delivers them). Never panics on any input.
    #[must_use]
    pub fn handle_many(
        &mut self,
        datagrams: &[&[u8]],
        repaired: bool,
    ) -> Vec<(PublicKey, Message)> {
        let mut checked = Vec::with_capacity(datagrams.len());
        for bytes in datagrams {
            let Ok(d) = Datagram::decode(bytes) else {
                self.stats.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if d.sender_id() == self.me {
                continue; // Our own, looped back by multicast.
            }
            match self.keys.get(d.sender_id() as usize) {
                Some(pk) => checked.push((d, *pk)),
                None => {
                    self.stats.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut out = Vec::new();
        if checked.is_empty() {
            return out;
        }
        let ok = match &checked[..] {
            [(d, _)] => {
                vec![self.decoded[d.sender_id() as usize].verify(d.signed_bytes(), d.signature())]
            }
            _ => {
                let items: Vec<crate::sig::Item> = checked
                    .iter()
                    .map(|(d, pk)| (&pk.0, d.signed_bytes(), d.signature()))
                    .collect();
                crate::sig::verify_batch_with_fallback(&items)
            }
        };
        for ((d, _), ok) in checked.iter().zip(ok) {
            if !ok {
                self.stats.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.accept(d, repaired, &mut out);
        }
        out
    }

    /// A datagram whose signature verified: sequence check, then its
    /// messages into `out`.
    fn accept(&mut self, d: &Datagram<'_>, repaired: bool, out: &mut Vec<(PublicKey, Message)>) {
        let sender = d.sender_id();
        let pk = self.keys[sender as usize];
        let now = self.now_ms();
        let receipt = match self.gaps.receive(sender, d.sequence(), now) {
            Ok(r) => r,
            Err(_) => {
                self.stats.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if let Receipt::Resynced { skipped } = receipt {
            // A restarted sender (sequences start from its clock) or a long
            // silence: counted apart from losses. Payments it carried come
            // back through the masternode's catch-up.
            self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::info!(sender, skipped, "fast-path stream resynced");
        }
        if !receipt.is_new() {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats
            .datagrams_received
            .fetch_add(1, Ordering::Relaxed);
        if repaired {
            self.stats.repaired.fetch_add(1, Ordering::Relaxed);
        }
        if d.kind() != KIND_DATA {
            return;
        }
        for item in d.items() {
            match Message::decode(item) {
                Ok(m @ (Message::TransactionBroadcast(_) | Message::VoteBatch(_))) => {
                    out.push((pk, m))
                }
                _ => {
                    self.stats.bad_datagrams.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// `peer` announced (over the reliable path) the sequence of its next
    /// datagram. If nothing was heard from it yet, its stream starts there:
    /// anything from then on that UDP loses is detected and repaired.
    pub fn announce(&mut self, peer: &PublicKey, next: u64) {
        let Some(sender) = self.keys.iter().position(|k| k == peer) else {
            return;
        };
        let sender = sender as u32;
        if sender != self.me && self.gaps.next_expected(sender).is_none() {
            tracing::debug!(sender, next, "fast-path stream start announced");
            let _ = self.gaps.expect_from(sender, next);
        }
    }

    /// Requests repairs for holes old enough; counts what is given up.
    pub fn repair(&mut self, sink: &dyn FastPathSink) {
        let now = self.now_ms();
        // The tracker lists a hole on every call until it is filled: ask at
        // most once per repair delay.
        if now.saturating_sub(self.last_repair_ms) < self.gaps.config().repair_delay_ms {
            return;
        }
        self.last_repair_ms = now;
        for m in self.gaps.missing(now) {
            if let Some(pk) = self.keys.get(m.sender as usize) {
                self.stats
                    .repair_requests_sent
                    .fetch_add(1, Ordering::Relaxed);
                sink.request_repair(*pk, m.range.first, m.range.last);
            }
        }
        for lost in self.gaps.take_lost() {
            self.stats
                .lost_seqs
                .fetch_add(lost.range.len(), Ordering::Relaxed);
            tracing::warn!(sender = lost.sender, first = lost.range.first, last = lost.range.last, reason = ?lost.reason, "fast-path datagrams lost (not repaired)");
        }
    }
}

pub struct FastPath {
    pub sender: FastPathSender,
    pub receiver: Arc<Mutex<FastPathReceiver>>,
    pub stats: Arc<FastPathStats>,
    sink: Arc<OnceLock<Arc<dyn FastPathSink>>>,
}

/// The receiver's end on the UDP I/O thread: the datagrams of one receive
/// burst are checked together when the burst ends (one batch verification
/// of up to [`CHECK_BATCH`]), and delivered from there. Before the node's
/// sink is attached, up to [`PENDING_BEFORE_SINK`] datagrams wait.
struct OnIoThread {
    receiver: Arc<Mutex<FastPathReceiver>>,
    sink: Arc<OnceLock<Arc<dyn FastPathSink>>>,
    burst: Vec<Bytes>,
    /// Holes waited for repair when this thread last looked at the
    /// receiver (a repair answer over TCP changes that meanwhile; this
    /// thread sees it at its next tick, within `MAX_WAIT`).
    gaps_open: bool,
}

impl OnIoThread {
    fn check(&mut self) {
        let Some(sink) = self.sink.get() else { return };
        for chunk in self.burst.chunks(CHECK_BATCH) {
            let refs: Vec<&[u8]> = chunk.iter().map(|b| &b[..]).collect();
            self.gaps_open = check_and_deliver(&self.receiver, &refs, false, &**sink);
        }
        self.burst.clear();
    }
}

/// Checks `datagrams` under the receiver's lock, then delivers their new
/// messages to `sink` once the lock is let go (their own signatures are
/// checked there, and the reliable path's tasks take the lock too).
/// Returns whether holes wait for repair. For the I/O thread's bursts and
/// for repair answers alike.
pub fn check_and_deliver(
    receiver: &Mutex<FastPathReceiver>,
    datagrams: &[&[u8]],
    repaired: bool,
    sink: &dyn FastPathSink,
) -> bool {
    let (msgs, gaps_open) = {
        let mut r = receiver.lock().expect("fast path receiver");
        let msgs = r.handle_many(datagrams, repaired);
        (msgs, r.gaps.has_gaps())
    };
    if !msgs.is_empty() {
        sink.deliver(msgs);
    }
    gaps_open
}

impl Inbound for OnIoThread {
    fn datagram(&mut self, _from: SocketAddr, payload: &[u8]) -> bool {
        if self.sink.get().is_some() && self.burst.len() >= CHECK_BATCH {
            self.check();
        }
        if self.burst.len() >= PENDING_BEFORE_SINK {
            return false;
        }
        self.burst.push(Bytes::copy_from_slice(payload));
        true
    }

    fn burst_end(&mut self) {
        self.check();
    }

    fn tick(&mut self) {
        if !self.burst.is_empty() {
            self.check();
        }
        if let Some(sink) = self.sink.get() {
            let mut r = self.receiver.lock().expect("fast path receiver");
            r.repair(&**sink);
            self.gaps_open = r.gaps.has_gaps();
        }
    }

    fn wait(&self) -> Duration {
        // Open holes are polled for repair; datagrams held while the node
        // was not yet attached are checked once it is.
        if self.gaps_open || !self.burst.is_empty() {
            REPAIR_POLL
        } else {
            time_net::udp::MAX_WAIT
        }
    }
}

fn v4(addr: &str) -> Result<SocketAddrV4, FastPathError> {
    match addr.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) => Ok(a),
        _ => Err(FastPathError::NotIpv4(addr.into())),
    }
}

impl FastPath {
    /// Opens the socket. `listen` is this node's P2P address (the unicast
    /// port and the default multicast interface).
    pub fn start(
        mode: &FastPathMode,
        backend: IoBackend,
        listen: SocketAddr,
        key: SigningKey,
        registry: &Registry,
    ) -> Result<Option<FastPath>, FastPathError> {
        let me = PublicKey::from_signing(&key);
        let Some(my_index) = registry.position(&me) else {
            return match mode {
                FastPathMode::Off => Ok(None),
                _ => Err(FastPathError::NotRegistered),
            };
        };
        let listen4 = match listen {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => return Err(FastPathError::NotIpv4(listen.to_string())),
        };
        let mut cfg = match mode {
            FastPathMode::Off => return Ok(None),
            FastPathMode::Multicast { group, interface } => {
                UdpConfig::multicast(*group, *interface)
            }
            FastPathMode::Unicast => {
                // UDP at the P2P port + 1 (the P2P port's UDP side belongs to
                // the QUIC pool).
                let plus1 = |a: SocketAddrV4| SocketAddrV4::new(*a.ip(), a.port().wrapping_add(1));
                let mut peers = Vec::new();
                for m in registry.masternodes() {
                    if m.key != me {
                        peers.push(plus1(v4(&m.address)?));
                    }
                }
                UdpConfig::unicast(plus1(listen4), peers)
            }
        };
        let local_ip = match mode {
            FastPathMode::Multicast { interface, .. } => *interface,
            _ => *listen4.ip(),
        };
        // Loopback-only unless the operator put the node on a real interface.
        cfg.loopback_only = local_ip.is_loopback();
        let stats = Arc::new(FastPathStats::default());
        let keys: Vec<PublicKey> = registry.masternodes().iter().map(|m| m.key).collect();
        let receiver = Arc::new(Mutex::new(FastPathReceiver {
            decoded: keys
                .iter()
                .map(|k| crate::sig::DecodedKey::new(&k.0))
                .collect(),
            keys,
            me: my_index as u32,
            gaps: GapTracker::new(GapConfig::default()),
            stats: stats.clone(),
            start: Instant::now(),
            last_repair_ms: 0,
        }));
        let sink = Arc::new(OnceLock::new());
        let inbound = OnIoThread {
            receiver: receiver.clone(),
            sink: sink.clone(),
            burst: Vec::with_capacity(CHECK_BATCH),
            gaps_open: false,
        };
        let handle = UdpFastPath::start_with(cfg, backend, Box::new(inbound))?;
        tracing::info!(backend = ?handle.backend(), addr = %handle.local_addr(), ?mode, "UDP fast path up");
        // Sequences start from the wall clock (microseconds), so a restarted
        // sender continues above its old numbers.
        let start_seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let ring = Arc::new(Mutex::new(RepairRing::default()));
        Ok(Some(FastPath {
            sender: FastPathSender {
                key,
                sender_id: my_index as u32,
                next_seq: start_seq,
                builder: None,
                out: Vec::new(),
                handle,
                ring,
                stats: stats.clone(),
                last_send: Instant::now(),
                heartbeat_gap: HEARTBEAT_FIRST,
                data_end: start_seq,
                data_pending: false,
            },
            receiver,
            stats,
            sink,
        }))
    }

    /// Attaches the node: from now on, received datagrams are checked and
    /// delivered to `sink` on the UDP I/O thread (those that arrived while
    /// the node was starting first).
    pub fn attach(&self, sink: Arc<dyn FastPathSink>) {
        let _ = self.sink.set(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoSink;
    impl FastPathSink for NoSink {
        fn deliver(&self, _: Vec<(PublicKey, Message)>) {}
        fn request_repair(&self, _: PublicKey, _: u64, _: u64) {}
    }

    fn receiver(keys: Vec<PublicKey>, me: u32, stats: Arc<FastPathStats>) -> FastPathReceiver {
        FastPathReceiver {
            decoded: keys
                .iter()
                .map(|k| crate::sig::DecodedKey::new(&k.0))
                .collect(),
            keys,
            me,
            gaps: GapTracker::new(GapConfig::default()),
            stats,
            start: Instant::now(),
            last_repair_ms: 0,
        }
    }

    /// A data datagram from `sender` at `seq` carrying one vote batch,
    /// signed by `signer`.
    fn datagram(sender: u32, seq: u64, signer: &SigningKey) -> Vec<u8> {
        use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
        let votes = VoteBatch::sign(
            7,
            1,
            signer,
            vec![VoteItem {
                txid: crate::protocol::types::Txid([seq as u8; 32]),
                decision: Decision::Approve,
            }],
        );
        let mut b = DatagramBuilder::new(KIND_DATA, sender, seq);
        b.push(&Message::VoteBatch(votes).to_bytes()).unwrap();
        let unsigned = b.finish();
        let sig = signer.sign(unsigned.signed_bytes()).to_bytes();
        unsigned.sign_with(&sig)
    }

    /// Alone (checked with the sender's decoded key) or in a burst
    /// (checked in one batch), a datagram counts only if the key of the
    /// sender it names signed it.
    #[test]
    fn a_datagram_counts_only_if_its_named_sender_signed_it() {
        let k0 = SigningKey::from_bytes(&[1; 32]);
        let k1 = SigningKey::from_bytes(&[2; 32]);
        let keys = vec![PublicKey::from_signing(&k0), PublicKey::from_signing(&k1)];
        let stats = Arc::new(FastPathStats::default());
        let mut r = receiver(keys.clone(), 0, stats.clone());
        let bad = |s: &Arc<FastPathStats>| s.bad_datagrams.load(Ordering::Relaxed);

        let good = datagram(1, 100, &k1);
        let out = r.handle_many(&[&good], false);
        assert_eq!(out.len(), 1, "a good datagram alone is taken");
        assert_eq!(out[0].0, keys[1]);

        let forged = datagram(1, 101, &k0);
        assert!(
            r.handle_many(&[&forged], false).is_empty(),
            "signed by another key"
        );
        let mut tampered = datagram(1, 102, &k1);
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(
            r.handle_many(&[&tampered], false).is_empty(),
            "signature altered"
        );
        assert_eq!(bad(&stats), 2);

        let (a, b) = (datagram(1, 103, &k1), datagram(1, 104, &k0));
        let out = r.handle_many(&[&a, &b], false);
        assert_eq!(out.len(), 1, "in a burst, only the good one");
        assert_eq!(bad(&stats), 3);

        // A key that is not a curve point verifies nothing.
        let not_point = (2u8..)
            .map(|i| PublicKey([i; 32]))
            .find(|k| !crate::sig::is_point(&k.0))
            .unwrap();
        let mut r = receiver(vec![keys[0], not_point], 0, stats.clone());
        assert!(r.handle_many(&[&datagram(1, 200, &k1)], false).is_empty());
    }

    /// While the node starts, the I/O thread keeps at most
    /// PENDING_BEFORE_SINK datagrams (the rest is refused, and counted by
    /// the caller); once attached it checks them and keeps none.
    #[test]
    fn datagrams_before_the_node_is_attached_are_bounded() {
        let stats = Arc::new(FastPathStats::default());
        let receiver = Arc::new(Mutex::new(receiver(
            vec![PublicKey([9; 32])],
            0,
            stats.clone(),
        )));
        let sink: Arc<OnceLock<Arc<dyn FastPathSink>>> = Arc::new(OnceLock::new());
        let mut inbound = OnIoThread {
            receiver,
            sink: sink.clone(),
            burst: Vec::new(),
            gaps_open: false,
        };
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..PENDING_BEFORE_SINK {
            assert!(inbound.datagram(from, b"not a datagram"));
        }
        assert!(
            !inbound.datagram(from, b"not a datagram"),
            "the bound holds"
        );
        inbound.burst_end();
        assert_eq!(
            inbound.burst.len(),
            PENDING_BEFORE_SINK,
            "kept until attached"
        );
        let _ = sink.set(Arc::new(NoSink));
        inbound.tick();
        assert!(inbound.burst.is_empty());
        assert_eq!(
            stats.bad_datagrams.load(Ordering::Relaxed),
            PENDING_BEFORE_SINK as u64,
            "each kept datagram was checked once"
        );
    }
}
