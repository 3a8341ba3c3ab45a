//! The reply sender: answers the INVITEs that `reject` rules dropped. One task per guarded
//! interface reads the kernel's reply ring, builds the SIP response (`model::reply`) and sends
//! it back out of the same interface through a packet socket. It never blocks the daemon: the
//! socket is non-blocking, and a response that cannot be built or sent is counted and logged
//! (the first of each kind, then once a minute), never retried; the caller's retransmission
//! gets another try.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tracing::{info, warn};

use crate::{
    kernel::sys::PacketSocket,
    model::reply::{ReplyRecord, Status, frame, response},
};

/// The responses of the `reject` rules, per rule set: see [`StatusBook`].
pub type Statuses = Arc<Mutex<StatusBook>>;

/// How long a reply waits for the daemon to record the responses of a rule set that went live
/// (the switch comes first, the record right after it); past it, the newest set answers for it.
const ADOPT_AFTER: Duration = Duration::from_millis(50);

/// Rule sets whose responses are kept: the live one and those that may still have records in
/// the ring.
const KEPT_SETS: usize = 4;

/// The responses of the `reject` rules of the last few rule sets, by the generation of their
/// config slot. The kernel writes the generation of the set that rejected an INVITE into its
/// reply record, so that the response is that set's, also when a reload changed a rule's
/// response between the rejection and the reply.
#[derive(Debug, Default)]
pub struct StatusBook {
    /// (generation, rule id -> response, default response), oldest first.
    sets: VecDeque<(u32, BTreeMap<u32, Status>, Status)>,
}

impl StatusBook {
    /// Records the responses of rule set `generation` (rules not in `by_rule` get `default`).
    pub fn record(&mut self, generation: u32, by_rule: BTreeMap<u32, Status>, default: Status) {
        self.sets.retain(|s| s.0 != generation);
        self.sets.push_back((generation, by_rule, default));
        while self.sets.len() > KEPT_SETS {
            self.sets.pop_front();
        }
    }

    /// The response of rule `rule` in set `generation`; `None` while that set is unknown.
    pub fn status(&self, generation: u32, rule: u32) -> Option<Status> {
        let (_, by_rule, default) = self.sets.iter().rev().find(|s| s.0 == generation)?;
        Some(by_rule.get(&rule).unwrap_or(default).clone())
    }

    /// Takes the newest set's responses for `generation` (a set that the daemon did not
    /// commit: a CLI rule edit, or maps made by an older version).
    pub fn adopt(&mut self, generation: u32) {
        if let Some((_, by_rule, default)) = self.sets.back().cloned() {
            self.record(generation, by_rule, default);
        }
    }
}

/// The response for a record of set `generation` rejected by rule `rule`: waits up to
/// [`ADOPT_AFTER`] for the set to be recorded, then adopts the newest.
async fn status_for(statuses: &Statuses, generation: u32, rule: u32) -> Status {
    let deadline = Instant::now() + ADOPT_AFTER;
    loop {
        let late = Instant::now() >= deadline;
        if let Some(s) = lookup(statuses, generation, rule, late) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One look into the book (`adopt`: take the newest set when `generation` is unknown).
fn lookup(statuses: &Statuses, generation: u32, rule: u32, adopt: bool) -> Option<Status> {
    let Ok(mut book) = statuses.lock() else {
        return Some(Status::forbidden());
    };
    if adopt && book.status(generation, rule).is_none() {
        book.adopt(generation);
        return Some(
            book.status(generation, rule)
                .unwrap_or_else(Status::forbidden),
        );
    }
    book.status(generation, rule)
}

/// What the sender did, per interface.
#[derive(Debug, Default)]
pub struct ReplyStats {
    pub sent: AtomicU64,
    /// Not built: a header the response copies was missing or cut, or the record was bad.
    pub unanswerable: AtomicU64,
    /// INVITEs over TCP: dropped without a response.
    pub tcp: AtomicU64,
    /// The packet socket refused the frame.
    pub send_failed: AtomicU64,
}

/// Reads `ring` until the daemon stops, answering each record out of `ifindex`.
pub async fn serve(
    ring: RingBuf<MapData>,
    iface: String,
    ifindex: u32,
    statuses: Statuses,
    stats: Arc<ReplyStats>,
) {
    let socket = match PacketSocket::open(ifindex) {
        Ok(s) => s,
        Err(e) => {
            warn!(
                iface,
                "reject rules drop without a response: cannot open a packet socket: {e}"
            );
            return;
        }
    };
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which keeps it open.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(iface, "cannot watch the reply ring buffer: {e}");
            return;
        }
    };
    let mut last_warn: Option<Instant> = None;
    let mut warn_limited = |what: String| {
        if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            warn!(
                iface,
                "{what} (further ones are counted; logged again in a minute)"
            );
            last_warn = Some(Instant::now());
        }
    };
    info!(iface, "answering reject rules with SIP responses");
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(record) = ReplyRecord::decode(&item) else {
                stats.unanswerable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            drop(item);
            if record.tcp() {
                stats.tcp.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let status = status_for(&statuses, record.head.generation, record.head.rule_id).await;
            let built = response(&record.payload, &status, Some(record.src.socket_addr()))
                .and_then(|sip| frame(&record, &sip));
            match built {
                Ok(f) => match socket.send(&f) {
                    Ok(()) => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        stats.send_failed.fetch_add(1, Ordering::Relaxed);
                        warn_limited(format!("sending a {status} response failed: {e}"));
                    }
                },
                Err(e) => {
                    stats.unanswerable.fetch_add(1, Ordering::Relaxed);
                    warn_limited(format!(
                        "a rejected INVITE from {} was dropped without a response: {e}",
                        record.src.socket_addr()
                    ));
                }
            }
        }
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_set_answers_with_its_own_responses() {
        let decline = Status::new(603, "Decline").unwrap();
        let busy = Status::new(486, "Busy Here").unwrap();
        let mut book = StatusBook::default();
        assert_eq!(book.status(1, 7), None);
        book.record(
            1,
            BTreeMap::from([(7, decline.clone())]),
            Status::forbidden(),
        );
        book.record(2, BTreeMap::new(), busy.clone());
        // A record of set 1 read after set 2 went live: set 1's response.
        assert_eq!(book.status(1, 7), Some(decline.clone()));
        assert_eq!(book.status(1, 8), Some(Status::forbidden()));
        assert_eq!(book.status(2, 7), Some(busy.clone()));
        // A set the daemon did not commit: unknown until adopted, then the newest set's.
        assert_eq!(book.status(3, 7), None);
        book.adopt(3);
        assert_eq!(book.status(3, 7), Some(busy));
        for g in 4..10 {
            book.record(g, BTreeMap::new(), Status::forbidden());
        }
        assert_eq!(book.sets.len(), KEPT_SETS);
        assert_eq!(book.status(1, 7), None, "old sets are forgotten");
    }
}
