//! Velocity limits and quarantine (see `guard_common::limits`): a matched INVITE's limits
//! (token buckets per customer or source, per rule and per full number), the quarantine check,
//! and the quarantine trigger, which quarantines a customer or source from here, without a
//! round trip to userspace. One BPF function, returning a scalar.

// Keys by reference, as in `verdict`.
#![allow(clippy::needless_borrows_for_generic_args)]

use guard_common::{
    Action, Counter,
    limits::{
        BucketKey, CAUSE_LIMIT, CAUSE_QUARANTINE, CAUSE_REPEAT, CAUSE_RULE, Gcra, LimitConfig,
        RULE_FLAG_LIMIT, SUBJECT_CUSTOMER, SUBJECT_V4, SUBJECT_V6, Window, limit_key, pack_stop,
    },
};

use crate::maps::{self, SG_BUCKETS, SG_CALLS, SG_LIMITS, SG_QUARANTINE, SG_QWINDOWS};

/// Result bit: this call tripped the quarantine trigger.
pub const TRIPPED: u64 = 1 << 32;
/// Result bit (with [`TRIPPED`]): the subject was quarantined (enforce mode; in monitor mode a
/// trip only counts).
pub const STARTED: u64 = 1 << 33;

/// Writes the subject of the INVITE in the scratch map into its bucket key: its customer, else
/// its source address (the endpoints are read before this stage).
#[inline(always)]
fn set_subject(s: &mut maps::Scratch) {
    let who = &mut s.bucket.subject;
    if s.customer >> 63 != 0 {
        who.id = [s.customer as u32, 0, 0, 0];
        who.kind = SUBJECT_CUSTOMER;
    } else {
        who.id = s.src.addr;
        who.kind = if s.src.family == 6 {
            SUBJECT_V6
        } else {
            SUBJECT_V4
        };
    }
    who._pad = [0; 3];
}

/// [`apply`]'s `opts`: the number is in the quarantine's scope.
pub const OPT_IN_SCOPE: u32 = 1 << 8;
/// [`apply`]'s `opts`: the live mode is enforce.
pub const OPT_ENFORCE: u32 = 1 << 9;
/// [`apply`]'s `opts`: a quarantine is configured.
pub const OPT_QUARANTINE: u32 = 1 << 10;
/// [`apply`]'s `opts`: calls are accounted (without, nothing is limited).
pub const OPT_ACCOUNTING: u32 = 1 << 11;

/// What limits and the quarantine make of an INVITE matched by rule `id`: the decision as
/// `pack_stop(cause, action)` (`CAUSE_RULE` with the rule's own action when nothing stops it),
/// counted (over-limit and quarantine counters, per rule and global; a trip of the trigger),
/// with a stopped new call marked so that its retransmissions get the same.
///
/// `call`: 1 for a new call, or the stop its first INVITE got (`CallSeen::limited`) for a
/// retransmission, 0 for other INVITEs. `fp`: the number's fingerprint. `opts`: the rule's trie
/// flags in bits 0..8, [`OPT_IN_SCOPE`], [`OPT_ENFORCE`], the rule's action in bits 16..24.
///
/// A global BPF function: the verifier checks it once, on its own, whatever the states of its
/// callers (it takes scalars only; BPF functions take at most five).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn sipguard_limits_apply(id: u32, call: u32, fp: u64, now: u64, opts: u32) -> u64 {
    let own = pack_stop(CAUSE_RULE, (opts >> 16) as u8);
    // Rules without limits pay only this call, unless a quarantine is configured or the call
    // was stopped before.
    if opts & OPT_ACCOUNTING == 0
        || (opts & RULE_FLAG_LIMIT as u32 == 0 && opts & OPT_QUARANTINE == 0 && call <= 1)
    {
        return own as u64;
    }
    let r = decide(id, call, fp, now, opts);
    let stop = r as u32;
    let Some(c) = maps::counters() else {
        return own as u64;
    };
    if r & TRIPPED != 0 {
        c.bump(if r & STARTED != 0 {
            Counter::QuarantinesStarted
        } else {
            Counter::WouldQuarantine
        });
    }
    if stop == 0 {
        return own as u64;
    }
    let cause = (stop >> 8) as u8;
    let passes = stop as u8 == Action::Monitor as u8 || opts & OPT_ENFORCE == 0;
    if cause == CAUSE_QUARANTINE {
        c.bump(if passes {
            Counter::WouldQuarantine
        } else {
            Counter::Quarantined
        });
    } else if call == 1 {
        c.bump(if passes {
            Counter::WouldLimit
        } else {
            Counter::OverLimit
        });
        if let Some(stats) = maps::existing_rule_counters(id) {
            if passes {
                stats.would_limit += 1;
            } else {
                stats.over_limit += 1;
            }
        }
    }
    if call == 1
        && let Some(s) = maps::scratch()
        && s.call_hash != 0
        && let Some(seen) = SG_CALLS.get_ptr_mut(&s.call_hash)
    {
        // SAFETY: a map value of this call.
        unsafe { (*seen).limited = stop };
    }
    stop as u64
}

/// The stop and the trigger bits of [`sipguard_limits_apply`], before counting.
#[inline(always)]
fn decide(id: u32, call: u32, fp: u64, now: u64, opts: u32) -> u64 {
    // A retransmission gets what its call got.
    if call > 1 {
        return call as u64;
    }
    let Some(s) = maps::scratch() else {
        return 0;
    };
    let slot = s.slot & 1;
    set_subject(s);
    let Some(q) = maps::limit_config(slot) else {
        return 0;
    };
    let mut stop = 0u32;
    if q.is_on() && opts & OPT_IN_SCOPE != 0 {
        // SAFETY: a map value, read once.
        if let Some(entry) = unsafe { SG_QUARANTINE.get(&s.bucket.subject) }
            && entry.active(now)
        {
            stop = pack_stop(CAUSE_QUARANTINE, q.action as u8);
        }
    }
    if stop == 0 && call == 1 && opts & RULE_FLAG_LIMIT as u32 != 0 {
        stop = buckets(s, slot, id, fp, now);
    }
    if call != 1 || !q.is_on() {
        return stop as u64;
    }
    let over = stop != 0 && (stop >> 8) as u8 != CAUSE_QUARANTINE;
    let reason = observe(s, q, opts & OPT_IN_SCOPE != 0, over, now);
    if reason == 0 {
        return stop as u64;
    }
    let mut out = stop as u64 | TRIPPED;
    if opts & OPT_ENFORCE != 0 {
        let entry = &mut s.quarantine;
        entry.since_ns = now;
        entry.until_ns = now.saturating_add(q.duration_ns);
        entry.calls = s.window.calls;
        entry.over_limit = s.window.over_limit;
        entry.reason = reason;
        entry._pad = 0;
        if SG_QUARANTINE
            .insert(&s.bucket.subject, &s.quarantine, 0)
            .is_ok()
        {
            out |= STARTED;
        }
    }
    out
}

/// The quarantine action (an `Action` as `u32`) for the INVITE in the scratch map when its
/// customer or source is quarantined at `now`; 0 when it is not. The caller checked the scope.
#[inline(never)]
pub fn quarantined(now: u64) -> u32 {
    let Some(s) = maps::scratch() else {
        return 0;
    };
    let Some(q) = maps::limit_config(s.slot & 1) else {
        return 0;
    };
    set_subject(s);
    // SAFETY: a map value, read once.
    match unsafe { SG_QUARANTINE.get(&s.bucket.subject) } {
        Some(entry) if entry.active(now) => q.action,
        _ => 0,
    }
}

/// The rule's buckets for a new call: both must conform, and only then do both take a token.
#[inline(always)]
fn buckets(s: &mut maps::Scratch, slot: u32, id: u32, fp: u64, now: u64) -> u32 {
    // SAFETY: a map value.
    let Some(p) = (unsafe { SG_LIMITS.get(&limit_key(slot, id)) }) else {
        return 0;
    };
    s.bucket.rule_id = id;
    s.bucket.number = 0;
    let rate = conform(&s.bucket, &p.rate, now);
    s.bucket.number = fp;
    let repeat = conform(&s.bucket, &p.repeat, now);
    let over = match (rate, repeat) {
        (Conform::Over, _) => CAUSE_LIMIT,
        (_, Conform::Over) => CAUSE_REPEAT,
        _ => 0,
    };
    if over != 0 {
        let action = match Action::from_u8(p.over_action) {
            Some(a) => a as u8,
            None => Action::Block as u8,
        };
        return pack_stop(over, action);
    }
    if let Conform::Take(tat) = repeat {
        store(&s.bucket, tat);
    }
    if let Conform::Take(tat) = rate {
        s.bucket.number = 0;
        store(&s.bucket, tat);
    }
    0
}

/// Writes a bucket's TAT: in place when the bucket exists (an LRU update takes a lock and an
/// element; a store into the value does not), else as a new element.
#[inline(always)]
fn store(key: &BucketKey, tat: u64) {
    match SG_BUCKETS.get_ptr_mut(key) {
        // SAFETY: a map value; a racing CPU's store may win, which costs one call's accuracy.
        Some(p) => unsafe { *p = tat },
        None => {
            let _ = SG_BUCKETS.insert(key, &tat, 0);
        }
    }
}

#[derive(Clone, Copy)]
enum Conform {
    /// No such limit.
    Unlimited,
    /// Conforms: the bucket's new TAT.
    Take(u64),
    Over,
}

#[inline(always)]
fn conform(key: &BucketKey, g: &Gcra, now: u64) -> Conform {
    if !g.is_set() {
        return Conform::Unlimited;
    }
    // SAFETY: a map value, copied.
    let tat = unsafe { SG_BUCKETS.get(key) }.copied().unwrap_or(0);
    match g.admit(tat, now) {
        Some(next) => Conform::Take(next),
        None => Conform::Over,
    }
}

/// Counts a new call in the subject's trigger window (left in the scratch map's `window`); the
/// reason when it trips (0: no trip).
#[inline(always)]
fn observe(s: &mut maps::Scratch, q: &LimitConfig, in_scope: bool, over: bool, now: u64) -> u32 {
    // In place when the window exists (see `store`).
    if let Some(p) = SG_QWINDOWS.get_ptr_mut(&s.bucket.subject) {
        // SAFETY: a map value; a racing CPU may lose a count, which the trigger tolerates.
        let w = unsafe { &mut *p };
        let reason = w.observe(q, now, in_scope, over);
        s.window = *w;
        return reason;
    }
    s.window = Window::default();
    let reason = s.window.observe(q, now, in_scope, over);
    let _ = SG_QWINDOWS.insert(&s.bucket.subject, &s.window, 0);
    reason
}
