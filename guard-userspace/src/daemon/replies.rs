//! The reply sender: answers the INVITEs that `reject` rules dropped. One task per guarded
//! interface reads the kernel's reply ring, builds the SIP response (`model::reply`) and sends
//! it back out of the same interface through a packet socket. It never blocks the daemon: the
//! socket is non-blocking, and a response that cannot be built or sent is counted and logged
//! (the first of each kind, then once a minute), never retried; the caller's retransmission
//! gets another try.

use std::{
    collections::BTreeMap,
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

/// Rule id -> the response of a `reject` rule (rules not in it get the default).
pub type Statuses = Arc<Mutex<(BTreeMap<u32, Status>, Status)>>;

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
            let status = statuses
                .lock()
                .map(|s| s.0.get(&record.head.rule_id).unwrap_or(&s.1).clone())
                .unwrap_or_else(|_| Status::forbidden());
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
