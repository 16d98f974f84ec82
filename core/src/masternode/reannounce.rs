//! Re-announcement of transactions this node approved and that are not
//! final yet: the lock broadcast, this node's vote and a proof request are
//! sent again with exponential backoff until the transaction is final here.
//!
//! This is what makes a payment finalize once more than 2/3 of the weight is
//! connected again, whatever was lost before: broadcasts dropped by a full
//! queue, votes sent while peers were down, a tally a peer dropped, or an
//! origin that crashed between its commit and its sends. Transactions whose
//! votes split (approval impossible) are re-announced too, on a much longer
//! interval: a proof may still exist for them.
//!
//! Pure: time is passed in; [`Reannounce::due`] says what to resend.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::types::Txid;

#[derive(Clone, Debug)]
pub struct ReannounceConfig {
    /// First re-announcement this long after the approval.
    pub first_ms: u64,
    /// Backoff doubles up to this.
    pub max_ms: u64,
    /// Interval for transactions whose approval is impossible (votes split).
    pub stuck_ms: u64,
    /// Most transactions re-announced per call of [`Reannounce::due`].
    pub max_per_poll: usize,
    /// Most transactions tracked (a node approves at most its mempool limit
    /// of pending ones; stuck ones beyond this are not re-announced).
    pub max_tracked: usize,
}

impl Default for ReannounceConfig {
    fn default() -> Self {
        ReannounceConfig {
            first_ms: 1_500,
            max_ms: 30_000,
            stuck_ms: 300_000,
            max_per_poll: 256,
            max_tracked: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    next: u64,
    backoff: u64,
    stuck: bool,
}

#[derive(Default)]
pub struct Reannounce {
    cfg: ReannounceConfig,
    entries: BTreeMap<Txid, Entry>,
    /// (next due time, txid): the schedule, in order.
    queue: BTreeSet<(u64, Txid)>,
    pub reannounced: u64,
}

impl Reannounce {
    pub fn new(cfg: ReannounceConfig) -> Self {
        Reannounce {
            cfg,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, txid: &Txid) -> bool {
        self.entries.contains_key(txid)
    }

    /// This node approved `txid` (now, or before a restart).
    pub fn approved(&mut self, now: u64, txid: Txid) {
        if self.entries.contains_key(&txid) || self.entries.len() >= self.cfg.max_tracked {
            return;
        }
        let e = Entry {
            next: now + self.cfg.first_ms,
            backoff: self.cfg.first_ms,
            stuck: false,
        };
        self.entries.insert(txid, e);
        self.queue.insert((e.next, txid));
    }

    /// Approval became impossible: keep trying, rarely.
    pub fn stuck(&mut self, now: u64, txid: &Txid) {
        if let Some(e) = self.entries.get_mut(txid) {
            self.queue.remove(&(e.next, *txid));
            e.stuck = true;
            e.next = now + self.cfg.stuck_ms;
            self.queue.insert((e.next, *txid));
        }
    }

    /// Final here: nothing more to announce.
    pub fn settled(&mut self, txid: &Txid) {
        if let Some(e) = self.entries.remove(txid) {
            self.queue.remove(&(e.next, *txid));
        }
    }

    /// The earliest time something is due.
    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// Transactions due now (at most `max_per_poll`), rescheduled with backoff.
    pub fn due(&mut self, now: u64) -> Vec<Txid> {
        let mut out = Vec::new();
        while out.len() < self.cfg.max_per_poll {
            let Some(&(t, txid)) = self.queue.first() else {
                break;
            };
            if t > now {
                break;
            }
            self.queue.pop_first();
            let e = self
                .entries
                .get_mut(&txid)
                .expect("queued entries are tracked");
            if e.stuck {
                e.next = now + self.cfg.stuck_ms;
            } else {
                e.backoff = (e.backoff * 2).min(self.cfg.max_ms);
                e.next = now + e.backoff;
            }
            self.queue.insert((e.next, txid));
            out.push(txid);
        }
        self.reannounced += out.len() as u64;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: u8) -> Txid {
        Txid([n; 32])
    }

    #[test]
    fn backs_off_until_settled() {
        let mut r = Reannounce::new(ReannounceConfig::default());
        r.approved(0, t(1));
        assert!(r.due(1_000).is_empty());
        assert_eq!(r.due(1_500), vec![t(1)]);
        assert!(r.due(3_000).is_empty());
        assert_eq!(r.due(4_500), vec![t(1)]); // backoff 3 s
        assert_eq!(r.due(10_500), vec![t(1)]); // backoff 6 s
        r.settled(&t(1));
        assert!(r.due(1_000_000).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn stuck_is_retried_rarely_and_polls_are_bounded() {
        let cfg = ReannounceConfig {
            max_per_poll: 2,
            ..Default::default()
        };
        let mut r = Reannounce::new(cfg);
        for n in 0..5 {
            r.approved(0, t(n));
        }
        r.stuck(0, &t(0));
        assert_eq!(r.due(2_000).len(), 2);
        assert_eq!(r.due(2_000).len(), 2);
        assert!(!r.due(2_000).contains(&t(0)));
        let seen = (0..5).any(|_| r.due(300_000).contains(&t(0)));
        assert!(seen, "a stuck transaction is still re-announced");
    }
}
