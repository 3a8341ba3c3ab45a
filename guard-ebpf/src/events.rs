//! Drop and would-drop events for new calls, bounded in rate by a per-CPU token bucket and sent
//! through the ring buffer.

use guard_common::{Config, Counter, Event, GlobalCounters, Number, plain};

use crate::maps::{self, SG_EVENTS};

/// What was decided about a new call, for its event.
pub struct Decision {
    pub id: u32,
    /// An `Action` as `u8`.
    pub action: u8,
    /// A `Domain` as `u8`.
    pub domain: u8,
    /// `EVENT_DROP` or `EVENT_WOULD_DROP`.
    pub verdict: u8,
    /// A `CAUSE_*` of `guard_common::limits`.
    pub cause: u8,
}

/// Sends an event for a new call, within the per-CPU token bucket (`event_rate` per second,
/// `event_burst` at once). What is over the budget, or finds the ring full, is counted as
/// suppressed.
#[inline(always)]
pub fn emit(c: &mut GlobalCounters, cfg: &Config, number: &Number, d: &Decision, now: u64) {
    if !take_token(cfg, now) {
        c.bump(Counter::EventsSuppressed);
        return;
    }
    let Some(s) = maps::scratch() else {
        return;
    };
    // Written straight into the ring buffer: an Event on the stack would not fit the 512-byte
    // BPF stack next to everything else on this path.
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        c.bump(Counter::EventsSuppressed);
        return;
    };
    // SAFETY: a reserved, exclusively ours ring-buffer record of Event's size and alignment.
    let ev = unsafe { &mut *entry.as_mut_ptr() };
    plain::zero(ev);
    plain::copy(&mut ev.src, &s.src);
    plain::copy(&mut ev.dst, &s.dst);
    {
        ev.time_ns = now;
        ev.number_hi = number.hi;
        ev.number_lo = number.lo;
        ev.rule_id = d.id;
        ev.vlan = s.frame.vlan;
        ev.number_len = number.len;
        ev.domain = d.domain;
        ev.action = d.action;
        ev.verdict = d.verdict;
        ev.cause = d.cause;
        // Bit 63 marks a customer (see `maps::customer`); its id is the low word.
        ev.customer = if s.customer >> 63 != 0 {
            s.customer as u32
        } else {
            0
        };
    }
    entry.submit(0);
    c.bump(Counter::EventsSent);
}

/// Refills this CPU's bucket for the time since its last use and takes one token if there is
/// one. Tokens are kept in thousandths, so rates below one per second refill smoothly.
#[inline(always)]
fn take_token(cfg: &Config, now: u64) -> bool {
    let Some(b) = maps::event_bucket() else {
        return false;
    };
    let rate = cfg.event_rate as u64;
    let burst_milli = (cfg.event_burst as u64 + 1) * 1000;
    let elapsed = now.saturating_sub(b.last_ns);
    // Clamped so the product cannot overflow (1000 s of refill is more than any burst).
    let elapsed = if elapsed > 1_000_000_000_000 {
        1_000_000_000_000
    } else {
        elapsed
    };
    let refill = elapsed * rate / 1_000_000;
    b.tokens_milli = if b.tokens_milli + refill > burst_milli {
        burst_milli
    } else {
        b.tokens_milli + refill
    };
    b.last_ns = now;
    if rate == 0 || b.tokens_milli < 1000 {
        return false;
    }
    b.tokens_milli -= 1000;
    true
}
