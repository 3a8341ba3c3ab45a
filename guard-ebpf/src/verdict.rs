//! The verdict: normalise the number, find the longest matching rule, count, and decide. For a
//! matched INVITE it also does the call accounting: calls vs retransmissions and re-INVITEs,
//! the sources per rule, and the drop events.

// Map keys and values are passed by reference on purpose: passed by value (as clippy suggests
// for these `Borrow` parameters) they take other stack copies, and the program's verification
// grows from about 80k to about 200k processed instructions.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::generated::bpf_ktime_get_boot_ns,
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    Action, CONFIG_FLAG_DEBUG_LOG, CONFIG_FLAG_NO_CALLS, CONFIG_FLAG_QUARANTINE,
    CONFIG_FLAG_QUARANTINE_ALL, CallSeen, Config, Counter, Domain, EVENT_DROP, EVENT_WOULD_DROP,
    GlobalCounters, Headers, Mode, Number, QUARANTINE_RULE_ID, RuleCounters, SourceKey,
    SourceStats,
    limits::{CAUSE_QUARANTINE, RULE_FLAG_LIMIT, fingerprint},
};

use crate::{
    events::{self, Decision},
    layers, limits,
    maps::{self, SG_CALLS, SG_SOURCES},
    reply, sip,
};

/// Decides an INVITE that dials `number`. When the number was not read to its end (the scratch
/// map's `incomplete`), its digits are a true prefix of it: a rule among them decides as usual,
/// and when none does, `incomplete_action` does.
///
/// With customers configured, the source's customer (see `maps::customer`) picks the rules: the
/// longest match among its policy's rules and, when the policy inherits them, the global rules;
/// on a tie, the policy's rule. Frames from no customer get the global rules.
#[inline(always)]
pub fn decide(ctx: &XdpContext, c: &mut GlobalCounters, number: &Number) -> u32 {
    let Some((slot, cfg)) = maps::config() else {
        return XDP_PASS;
    };
    // The customer and rule lookups use this slot; a reply names its generation.
    if let Some(s) = maps::scratch() {
        s.slot = slot;
        s.reply.generation = cfg.generation;
    }
    let (domain, normalized) = cfg.intl_prefixes.normalize(number);
    // Into the scratch map, where the later stages read it (see `maps::Scratch::customer`).
    customer_of(ctx, cfg.customer_entries);
    let rule = maps::find_rule(&normalized.key(domain));
    let quarantine = cfg.flags & CONFIG_FLAG_QUARANTINE != 0;
    if rule >> 63 == 0 {
        if maps::scratch().is_some_and(|s| s.incomplete != 0) {
            return incomplete(c, cfg);
        }
        // No rule: a quarantined customer or source is still refused in the quarantine's scope.
        if quarantine {
            return unmatched(ctx, c, cfg, domain);
        }
        return XDP_PASS;
    }
    let (id, action, flags) = (rule as u32, (rule >> 32) as u8, (rule >> 40) as u8);
    // Off by default (`kernel_debug_log` in the config): a log record per matched INVITE.
    log_match(ctx, cfg.flags, id, action);
    let counted = maps::rule_counters(id);
    // Without counters (the counter map is full, or out of memory) the verdict still stands,
    // without call accounting.
    let accounting = counted.is_some() && cfg.flags & CONFIG_FLAG_NO_CALLS == 0;
    let Some(stats) = counted.or_else(maps::spare_counters) else {
        return XDP_PASS;
    };
    stats.matched += 1;
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut call = 0;
    if accounting {
        call = count_call(ctx, c, stats, id, now);
        // Unless the customer lookup read them already.
        read_endpoints(ctx, cfg.customer_entries);
        track_source(id, call == CALL_NEW, now);
        maps::count_customer(c, id, (call == CALL_NEW) as u64);
    }
    // Limits and the quarantine (see `limits`): a global BPF function, verified once on its
    // own, that returns at once for a rule without limits when no quarantine is configured.
    // Its arguments are computed without branches (BPF has no conditional set: a comparison
    // is a branch, and a branch here would double the states the rest of this function is
    // verified in).
    let limited = (flags & RULE_FLAG_LIMIT) as u64;
    let fp = fingerprint(&normalized, domain) & 0u64.wrapping_sub(limited);
    let opts = flags as u32
        | (action as u32) << 16
        | ((2 - domain as u32) & 1) << 8
        | (cfg.flags & CONFIG_FLAG_QUARANTINE_ALL) << 4
        | (cfg.flags & CONFIG_FLAG_QUARANTINE) << 7
        | ((cfg.mode ^ 1) & 1) << 9
        | (accounting as u32) << 11;
    let decided = limits::sipguard_limits_apply(id, call, fp, now, opts) as u32;
    let (action, cause) = (decided as u8, (decided >> 8) as u8);
    // Also through memory: the branches above do not split the states below.
    let new_call = launder_call((call == CALL_NEW) as u32) != 0;
    let rc = enforce(c, cfg, action, stats);
    if rc == XDP_DROP && action == Action::Reject as u8 {
        c.bump(Counter::Rejected);
        // The quarantine's response, or the rule's (chosen in `reply::request`, so that the
        // choice does not split this function's states).
        if reply::request(ctx, id, cause as u32) == 0 {
            c.bump(Counter::RepliesLost);
        }
    }
    if new_call {
        let verdict = if rc == XDP_DROP {
            EVENT_DROP
        } else if matches!(
            Action::from_u8(action),
            Some(Action::Block | Action::Monitor | Action::Reject)
        ) {
            EVENT_WOULD_DROP
        } else {
            0
        };
        if verdict != 0 {
            let d = Decision {
                id,
                action,
                domain: domain as u8,
                verdict,
                cause,
            };
            events::emit(c, cfg, &normalized, &d, now);
        }
    }
    rc
}

/// `v` written to and read back from the scratch map's `call`.
#[inline(always)]
fn launder_call(v: u32) -> u32 {
    match maps::scratch() {
        // SAFETY: a field of this CPU's scratch value.
        Some(s) => unsafe {
            core::ptr::write_volatile(&mut s.call, v);
            core::ptr::read_volatile(&s.call)
        },
        None => v,
    }
}

/// An INVITE no rule matched, with a quarantine configured: refused (or counted in monitor
/// mode) when its customer or source is quarantined and the number is in scope; else passed.
#[inline(never)]
fn unmatched(ctx: &XdpContext, c: &mut GlobalCounters, cfg: &Config, domain: Domain) -> u32 {
    let in_scope =
        matches!(domain, Domain::International) || cfg.flags & CONFIG_FLAG_QUARANTINE_ALL != 0;
    if !in_scope {
        return XDP_PASS;
    }
    read_endpoints(ctx, cfg.customer_entries);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let action = limits::quarantined(now);
    if action == 0 {
        return XDP_PASS;
    }
    if cfg.mode != Mode::Enforce as u32 {
        c.bump(Counter::WouldQuarantine);
        c.bump(Counter::WouldDrop);
        return XDP_PASS;
    }
    c.bump(Counter::Quarantined);
    c.bump(Counter::Dropped);
    if action == Action::Reject as u32 {
        c.bump(Counter::Rejected);
        if reply::request(ctx, QUARANTINE_RULE_ID, CAUSE_QUARANTINE as u32) == 0 {
            c.bump(Counter::RepliesLost);
        }
    }
    XDP_DROP
}

/// The `kernel_debug_log` line of a matched INVITE, when `flags` asks for it. A BPF function of
/// its own: the log record's code is verified once, off the verdict's paths.
#[inline(never)]
fn log_match(ctx: &XdpContext, flags: u32, id: u32, action: u8) {
    if flags & CONFIG_FLAG_DEBUG_LOG != 0 {
        debug!(ctx, "sipguard: rule {} matched, action {}", id, action);
    }
}

/// Fills in the scratch map's endpoints, unless `customer_entries` is non-zero (the customer
/// lookup read them). A BPF function of its own: its branch does not split the caller's paths.
#[inline(never)]
fn read_endpoints(ctx: &XdpContext, customer_entries: u32) {
    if customer_entries != 0 {
        return;
    }
    if let Some(s) = maps::scratch() {
        let frame = s.frame;
        layers::endpoints(ctx, &frame, &mut s.src, &mut s.dst);
    }
}

/// Looks up the customer of the frame's source (see `maps::customer`) into the scratch map's
/// `customer` (0 for none, or when no customers are configured: `customer_entries` is 0); fills
/// in the scratch map's endpoints when it looks. A BPF function of its own.
#[inline(never)]
fn customer_of(ctx: &XdpContext, customer_entries: u32) {
    let Some(s) = maps::scratch() else {
        return;
    };
    s.customer = 0;
    if customer_entries == 0 {
        return;
    }
    let frame = s.frame;
    layers::endpoints(ctx, &frame, &mut s.src, &mut s.dst);
    s.customer = maps::customer(frame.vlan as u32, &s.src);
}

/// Decides an INVITE whose number could not be read to its end and could be another number
/// than the digits read (a phone-context may not have been read): `incomplete_action`.
#[inline(always)]
pub fn unresolved(c: &mut GlobalCounters) -> u32 {
    match maps::config() {
        Some((_, cfg)) => incomplete(c, cfg),
        None => XDP_PASS,
    }
}

/// `incomplete_action` under the live mode, counted (no rule: no per-rule counters, no events).
#[inline(always)]
fn incomplete(c: &mut GlobalCounters, cfg: &Config) -> u32 {
    c.bump(Counter::IncompleteActionApplied);
    match cfg.incomplete_action() {
        // `reject` is refused for incomplete_action (no rule to answer for); as block.
        Action::Block | Action::Reject if cfg.mode == Mode::Enforce as u32 => {
            c.bump(Counter::Dropped);
            XDP_DROP
        }
        Action::Block | Action::Reject | Action::Monitor => {
            c.bump(Counter::WouldDrop);
            XDP_PASS
        }
        Action::Allow => XDP_PASS,
    }
}

/// Applies `action` under the live mode and counts it.
#[inline(always)]
fn enforce(c: &mut GlobalCounters, cfg: &Config, action: u8, stats: &mut RuleCounters) -> u32 {
    match Action::from_u8(action) {
        Some(Action::Block | Action::Reject) if cfg.mode == Mode::Enforce as u32 => {
            c.bump(Counter::Dropped);
            stats.dropped += 1;
            XDP_DROP
        }
        Some(Action::Block | Action::Reject | Action::Monitor) => {
            c.bump(Counter::WouldDrop);
            stats.would_drop += 1;
            XDP_PASS
        }
        Some(Action::Allow) => {
            c.bump(Counter::AllowedByException);
            XDP_PASS
        }
        None => XDP_PASS,
    }
}

/// [`count_call`]: a new call.
const CALL_NEW: u32 = 1;

/// Calls, not packets: a new initial INVITE counts as a call; one whose Call-ID was seen is a
/// retransmission; one with a To tag is a re-INVITE. Returns [`CALL_NEW`] for a new call, the
/// stop its call got (`CallSeen::limited`, above `CALL_NEW`) or 0 for a retransmission, and 0
/// for a re-INVITE. Keeps the Call-ID hash in the scratch map.
#[inline(always)]
fn count_call(
    ctx: &XdpContext,
    c: &mut GlobalCounters,
    stats: &mut RuleCounters,
    id: u32,
    now: u64,
) -> u32 {
    let h = sip::headers(ctx).unwrap_or(Headers {
        call_hash: None,
        to_tag: false,
    });
    let Some(s) = maps::scratch() else {
        return 0;
    };
    // Volatile: a select between the hash and 0 would read the hash's register where there is
    // none, which the verifier refuses.
    // SAFETY: a field of this CPU's scratch value.
    unsafe { core::ptr::write_volatile(&mut s.call_hash, 0) };
    if h.to_tag {
        stats.reinvites += 1;
        c.bump(Counter::Reinvites);
        return 0;
    }
    let Some(hash) = h.call_hash else {
        // Nothing to tell retransmissions apart: every packet is a call (an upper bound).
        c.bump(Counter::NoCallId);
        stats.calls += 1;
        c.bump(Counter::Calls);
        return CALL_NEW;
    };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut s.call_hash, hash) };
    // SAFETY: a map value, read once.
    if let Some(seen) = unsafe { SG_CALLS.get(&hash) } {
        c.bump(Counter::Retransmissions);
        return seen.limited;
    }
    let seen = CallSeen {
        rule_id: id,
        limited: 0,
        first_seen_ns: now,
    };
    // BPF_NOEXIST: another CPU that raced us with the same call wins, and we count nothing.
    if SG_CALLS.insert(&hash, &seen, 1).is_err() {
        c.bump(Counter::Retransmissions);
        return 0;
    }
    stats.calls += 1;
    c.bump(Counter::Calls);
    CALL_NEW
}

/// Per rule and source address: packets, calls, first and last seen.
#[inline(always)]
fn track_source(id: u32, new_call: bool, now: u64) {
    let Some(s) = maps::scratch() else {
        return;
    };
    let key = SourceKey {
        rule_id: id,
        family: s.src.family as u32,
        addr: s.src.addr,
    };
    if let Some(v) = SG_SOURCES.get_ptr_mut(&key) {
        // SAFETY: a map value; concurrent updates from other CPUs may lose an increment, which
        // is acceptable for these statistics (the per-rule counters are exact).
        let v = unsafe { &mut *v };
        v.packets += 1;
        v.calls += new_call as u64;
        v.last_seen_ns = now;
        return;
    }
    let v = SourceStats {
        packets: 1,
        calls: new_call as u64,
        first_seen_ns: now,
        last_seen_ns: now,
    };
    let _ = SG_SOURCES.insert(&key, &v, 1);
}
