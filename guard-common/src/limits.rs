//! Velocity limits and quarantine: the map types both sides share, and the arithmetic the
//! program runs (a token bucket kept as one timestamp, and the quarantine trigger's window),
//! tested on the host with a fake clock.
//!
//! - A rule with a `limit` (calls per period, a burst) or a `repeat_limit` (calls to one full
//!   number per period) has [`RULE_FLAG_LIMIT`] in its trie value, and its [`LimitParams`] in
//!   [`names::LIMITS`](crate::maps::names::LIMITS) under `(slot, rule id)`, so that limits switch
//!   with the rule set. Rules without one never look there.
//! - Buckets are counted per [`Subject`]: the source's customer, or its address when it belongs
//!   to none. They live in an LRU hash ([`names::BUCKETS`](crate::maps::names::BUCKETS)).
//! - The quarantine trigger counts each subject's calls in scope and over-limit calls in a fixed
//!   window ([`Window`]); when one count passes its threshold, the program itself puts the
//!   subject into [`names::QUARANTINE`](crate::maps::names::QUARANTINE) with an expiry.

use crate::number::{Domain, Number};

/// Rule trie value flag: the rule has limits (see [`LimitParams`]).
pub const RULE_FLAG_LIMIT: u8 = 1;

/// [`Event::cause`](crate::maps::Event) and the stop a limit gives: the rule's own action.
pub const CAUSE_RULE: u8 = 0;
/// Over the rule's `limit`.
pub const CAUSE_LIMIT: u8 = 1;
/// Over the rule's `repeat_limit` (calls to one number).
pub const CAUSE_REPEAT: u8 = 2;
/// The source's customer or address is quarantined.
pub const CAUSE_QUARANTINE: u8 = 3;
/// This call tripped the quarantine trigger (an event of its own).
pub const CAUSE_QUARANTINE_START: u8 = 4;

/// What [`CAUSE_*`](CAUSE_LIMIT) a stop has and which action it gives, packed in one word
/// (`cause << 8 | action`; 0: no stop), as the program hands it between stages and keeps it
/// for a call's retransmissions ([`CallSeen::limited`](crate::maps::CallSeen)).
#[inline(always)]
pub const fn pack_stop(cause: u8, action: u8) -> u32 {
    (cause as u32) << 8 | action as u32
}

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// The generic cell rate algorithm: a token bucket of `burst` tokens refilled one per
/// `interval_ns`, kept as one timestamp, the bucket's theoretical arrival time (TAT). A call at
/// `now` conforms when `TAT - now <= tolerance_ns`; it then moves TAT on by one interval. No
/// division and no loop: one comparison and one addition per call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds per token (period / count); 0: no limit.
    pub interval_ns: u64,
    /// `interval_ns * (burst - 1)`: how far ahead of `now` the TAT may run.
    pub tolerance_ns: u64,
}

impl Gcra {
    /// `count` calls per `period_ns`, `burst` of them at once (both at least 1; a zero `count`
    /// or `burst` gives no limit).
    pub const fn new(count: u32, period_ns: u64, burst: u32) -> Self {
        if count == 0 || burst == 0 {
            return Self {
                interval_ns: 0,
                tolerance_ns: 0,
            };
        }
        let interval_ns = period_ns / count as u64;
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(burst as u64 - 1),
        }
    }

    pub const fn is_set(&self) -> bool {
        self.interval_ns != 0
    }

    /// A call at `now` against a bucket whose TAT is `tat` (0 for a new bucket): `Some(new TAT)`
    /// when it conforms, `None` when it is over the limit (the bucket is left as it is).
    #[inline(always)]
    pub const fn admit(&self, tat: u64, now: u64) -> Option<u64> {
        let tat = if tat > now { tat } else { now };
        if tat - now > self.tolerance_ns {
            return None;
        }
        Some(tat.saturating_add(self.interval_ns))
    }
}

/// Value of [`names::LIMITS`](crate::maps::names::LIMITS): a rule's limits in one config slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitParams {
    /// New calls per subject and rule.
    pub rate: Gcra,
    /// New calls per subject, rule and full number.
    pub repeat: Gcra,
    /// What a call over a limit gets: an [`Action`](crate::maps::Action) as `u8` (block,
    /// reject or monitor).
    pub over_action: u8,
    pub _pad: [u8; 7],
}

/// Key of [`names::LIMITS`](crate::maps::names::LIMITS): config slot and rule id.
#[inline(always)]
pub const fn limit_key(slot: u32, rule: u32) -> u64 {
    (slot as u64) << 32 | rule as u64
}

/// [`Subject::kind`]: a customer (by id).
pub const SUBJECT_CUSTOMER: u8 = 1;
/// [`Subject::kind`]: an IPv4 source address.
pub const SUBJECT_V4: u8 = 4;
/// [`Subject::kind`]: an IPv6 source address.
pub const SUBJECT_V6: u8 = 6;

/// Who a limit or a quarantine counts: the source's customer, else its address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject {
    /// A customer: `[id, 0, 0, 0]`; an address: as in [`Endpoint::addr`](crate::maps::Endpoint).
    pub id: [u32; 4],
    /// [`SUBJECT_CUSTOMER`], [`SUBJECT_V4`] or [`SUBJECT_V6`].
    pub kind: u8,
    pub _pad: [u8; 3],
}

impl Subject {
    pub const fn customer(id: u32) -> Self {
        Self {
            id: [id, 0, 0, 0],
            kind: SUBJECT_CUSTOMER,
            _pad: [0; 3],
        }
    }

    /// A source address (`family` 4 or 6, `addr` as in an endpoint).
    pub const fn address(family: u8, addr: [u32; 4]) -> Self {
        Self {
            id: addr,
            kind: if family == 6 { SUBJECT_V6 } else { SUBJECT_V4 },
            _pad: [0; 3],
        }
    }
}

/// Key of [`names::BUCKETS`](crate::maps::names::BUCKETS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub subject: Subject,
    pub rule_id: u32,
    /// 0: the rule's rate bucket; otherwise the repeat bucket of the number with this
    /// fingerprint ([`fingerprint`], never 0).
    pub number: u64,
}

/// A number's fingerprint for the repeat buckets: a 64-bit mix of its digits, length and
/// domain, odd (never 0).
#[inline(always)]
pub const fn fingerprint(n: &Number, domain: Domain) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = n.hi ^ (n.len as u64) << 56 ^ (domain as u64) << 48;
    h = (h ^ h >> 31).wrapping_mul(K);
    h ^= n.lo;
    h = (h ^ h >> 29).wrapping_mul(K);
    h ^= h >> 32;
    // Never 0 (0 names a rule's rate bucket), without a branch.
    h | 1
}

/// [`LimitConfig::flags`]: a quarantine is configured (checked and triggered).
pub const QUARANTINE_ON: u32 = 1;
/// [`LimitConfig::flags`]: the quarantine covers every call, not only international ones.
pub const QUARANTINE_SCOPE_ALL: u32 = 2;

/// Value of [`names::LIMIT_CONFIG`](crate::maps::names::LIMIT_CONFIG), slots 0 and 1 with the
/// config slots: the quarantine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitConfig {
    /// [`QUARANTINE_ON`], [`QUARANTINE_SCOPE_ALL`].
    pub flags: u32,
    /// Trigger: more than this many calls in scope within the window (0: not a trigger).
    pub calls: u32,
    /// Trigger: more than this many calls over a limit within the window (0: not a trigger).
    pub over_limit: u32,
    /// What an INVITE in scope from a quarantined subject gets: an [`Action`](crate::maps::Action)
    /// as `u32` (block or reject).
    pub action: u32,
    pub window_ns: u64,
    pub duration_ns: u64,
}

impl LimitConfig {
    pub const fn is_on(&self) -> bool {
        self.flags & QUARANTINE_ON != 0
    }

    /// Whether a call to a number of `domain` is in the quarantine's scope.
    pub const fn covers(&self, domain: Domain) -> bool {
        self.flags & QUARANTINE_SCOPE_ALL != 0 || matches!(domain, Domain::International)
    }
}

/// [`Quarantine::reason`]: more calls in scope than the trigger allows.
pub const REASON_CALLS: u32 = 1;
/// [`Quarantine::reason`]: more calls over a limit than the trigger allows.
pub const REASON_OVER_LIMIT: u32 = 2;
/// [`Quarantine::reason`]: put there by an operator (`sipguard quarantine add`).
pub const REASON_MANUAL: u32 = 3;

/// Value of [`names::QUARANTINE`](crate::maps::names::QUARANTINE), keyed by [`Subject`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quarantine {
    /// `CLOCK_BOOTTIME` ns.
    pub since_ns: u64,
    pub until_ns: u64,
    /// The window's counts when it tripped.
    pub calls: u32,
    pub over_limit: u32,
    /// [`REASON_CALLS`], [`REASON_OVER_LIMIT`] or [`REASON_MANUAL`].
    pub reason: u32,
    pub _pad: u32,
}

impl Quarantine {
    /// Whether it is in force at `now`.
    pub const fn active(&self, now: u64) -> bool {
        now < self.until_ns
    }
}

/// Value of [`names::WINDOWS`](crate::maps::names::WINDOWS): a subject's counts in the
/// quarantine trigger's current window (a fixed window that starts at its first call).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start_ns: u64,
    pub calls: u32,
    pub over_limit: u32,
}

impl Window {
    /// Counts a new call at `now` (`in_scope`: a call the trigger counts; `over`: it was over a
    /// limit). Returns the reason when the trigger trips (0: it does not); a trip starts a new
    /// window, so that a burst trips once.
    #[inline(always)]
    pub fn observe(&mut self, cfg: &LimitConfig, now: u64, in_scope: bool, over: bool) -> u32 {
        if self.start_ns == 0 || now.saturating_sub(self.start_ns) >= cfg.window_ns {
            *self = Window {
                start_ns: if now == 0 { 1 } else { now },
                calls: 0,
                over_limit: 0,
            };
        }
        self.calls += in_scope as u32;
        self.over_limit += over as u32;
        let reason = if cfg.calls != 0 && self.calls > cfg.calls {
            REASON_CALLS
        } else if cfg.over_limit != 0 && self.over_limit > cfg.over_limit {
            REASON_OVER_LIMIT
        } else {
            0
        };
        if reason != 0 {
            self.start_ns = 0;
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const S: u64 = NS_PER_SEC;

    /// Calls at the given seconds against one bucket: which conform.
    fn run(g: &Gcra, at: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        at.iter()
            .map(|&t| match g.admit(tat, 1_000 * S + t * S) {
                Some(next) => {
                    tat = next;
                    true
                }
                None => false,
            })
            .collect()
    }

    #[test]
    fn six_a_minute_with_a_burst_of_three() {
        let g = Gcra::new(6, 60 * S, 3);
        assert_eq!(g.interval_ns, 10 * S);
        assert_eq!(g.tolerance_ns, 20 * S);
        // One call a second for 30 s: the first 3, then one every 10 s.
        let at: Vec<u64> = (0..30).collect();
        let passed: Vec<u64> = run(&g, &at)
            .iter()
            .zip(&at)
            .filter(|(ok, _)| **ok)
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(passed, [0, 1, 2, 10, 20]);
    }

    #[test]
    fn a_refused_call_does_not_use_a_token_and_idle_time_refills_to_the_burst() {
        let g = Gcra::new(1, 10 * S, 2);
        assert_eq!(run(&g, &[0, 0, 0, 0]), [true, true, false, false]);
        // After a long pause, the bucket is full again (2), never more.
        assert_eq!(
            run(&g, &[0, 0, 1000, 1000, 1000]),
            [true, true, true, true, false]
        );
        // Burst 1: exactly one per interval.
        let one = Gcra::new(3, 30 * S, 1);
        assert_eq!(
            run(&one, &[0, 9, 10, 19, 20]),
            [true, false, true, false, true]
        );
    }

    #[test]
    fn repeat_limit_three_in_ten_minutes() {
        let g = Gcra::new(3, 600 * S, 3);
        assert_eq!(run(&g, &[0, 1, 2, 3, 4]), [true, true, true, false, false]);
    }

    #[test]
    fn no_limit_without_count_or_burst() {
        assert!(!Gcra::new(0, 60 * S, 3).is_set());
        assert!(!Gcra::new(6, 60 * S, 0).is_set());
    }

    #[test]
    fn the_window_trips_once_per_burst() {
        let cfg = LimitConfig {
            flags: QUARANTINE_ON,
            calls: 3,
            over_limit: 2,
            action: 4,
            window_ns: 600 * S,
            duration_ns: 3600 * S,
        };
        let mut w = Window::default();
        let t0 = 5_000 * S;
        let trips: Vec<u32> = (0..5)
            .map(|i| w.observe(&cfg, t0 + i * S, true, false))
            .collect();
        // The 4th call is "more than 3"; the window starts again after a trip.
        assert_eq!(trips, [0, 0, 0, REASON_CALLS, 0]);
        // Over-limit calls: the 3rd is "more than 2".
        let mut w = Window::default();
        let trips: Vec<u32> = (0..3)
            .map(|i| w.observe(&cfg, t0 + i * S, false, true))
            .collect();
        assert_eq!(trips, [0, 0, REASON_OVER_LIMIT]);
        // Calls spread over more than the window never trip.
        let mut w = Window::default();
        let trips: Vec<u32> = (0..10)
            .map(|i| w.observe(&cfg, t0 + i * 300 * S, true, false))
            .collect();
        assert!(trips.iter().all(|&r| r == 0), "{trips:?}");
        // Out-of-scope calls count nothing.
        let mut w = Window::default();
        assert!((0..10).all(|i| w.observe(&cfg, t0 + i, false, false) == 0));
    }

    #[test]
    fn fingerprints_tell_numbers_and_domains_apart() {
        let n = |hi, len| Number {
            hi,
            len,
            ..Number::default()
        };
        let a = fingerprint(&n(0x2327_6123_4560_0000, 12), Domain::International);
        assert_ne!(
            a,
            fingerprint(&n(0x2327_6123_4570_0000, 12), Domain::International)
        );
        assert_ne!(
            a,
            fingerprint(&n(0x2327_6123_4560_0000, 13), Domain::International)
        );
        assert_ne!(
            a,
            fingerprint(&n(0x2327_6123_4560_0000, 12), Domain::National)
        );
        assert_ne!(fingerprint(&Number::default(), Domain::International), 0);
    }
}
