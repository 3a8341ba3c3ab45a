//! The counter lists, each written once: the global [`Counter`] indices and the per-rule
//! [`RuleCounters`] fields. The enums, their `ALL` lists, their stable names and their one-line
//! help texts (fit for a Prometheus `HELP` line) are all generated from the lists below, so a new
//! counter cannot be added to one and forgotten in another.
//!
//! Re-exported from [`crate::maps`].

/// Generates the global [`Counter`] enum (`#[repr(u32)]`, the given discriminants),
/// `Counter::ALL` (in list order), `Counter::name()` and `Counter::help()`.
///
/// Each entry: optional extra doc comments, then `Variant = index, "snake_name", "help text";`.
/// The help text is also the variant's doc comment.
macro_rules! global_counters {
    ($(
        $(#[$meta:meta])*
        $variant:ident = $value:literal, $name:literal, $help:literal;
    )*) => {
        /// Global counters: indices into the per-CPU counter array
        /// ([`GlobalCounters`](crate::maps::GlobalCounters)).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Counter {
            $(
                #[doc = $help]
                #[doc = ""]
                $(#[$meta])*
                $variant = $value,
            )*
        }

        impl Counter {
            /// Number of counters in use.
            pub const COUNT: usize = [$($name),*].len();

            /// Every counter, in index order.
            pub const ALL: [Counter; Counter::COUNT] = [$(Counter::$variant),*];

            /// Stable snake_case name, used in CLI output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// A one-line description (a metric's `HELP` text).
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help,)*
                }
            }
        }
    };
}

/// Generates `#[repr(C)] struct RuleCounters` (one `u64` field per entry, in list order), the
/// [`RuleCounter`] enum naming its fields, `RuleCounter::ALL`, `name()` (the field name),
/// `help()`, `RuleCounters::get()` and the `AddAssign` that sums two copies field by field.
///
/// Each entry: optional extra doc comments, then `field => Variant, "help text";`.
macro_rules! rule_counters {
    ($(
        $(#[$meta:meta])*
        $field:ident => $variant:ident, $help:literal;
    )*) => {
        /// Per-rule counters (one per CPU; userspace sums them). Kept in a per-CPU hash keyed by
        /// the rule id, created by the program on the rule's first match, so that memory follows
        /// traffic.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct RuleCounters {
            $(
                #[doc = $help]
                #[doc = ""]
                $(#[$meta])*
                pub $field: u64,
            )*
        }

        /// Names a field of [`RuleCounters`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum RuleCounter {
            $(
                #[doc = $help]
                $variant,
            )*
        }

        impl RuleCounter {
            /// Number of per-rule counters.
            pub const COUNT: usize = [$(stringify!($field)),*].len();

            /// Every per-rule counter, in field order.
            pub const ALL: [RuleCounter; RuleCounter::COUNT] = [$(RuleCounter::$variant),*];

            /// Stable snake_case name (the field name), used in CLI output and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(RuleCounter::$variant => stringify!($field),)*
                }
            }

            /// A one-line description (a metric's `HELP` text).
            pub const fn help(self) -> &'static str {
                match self {
                    $(RuleCounter::$variant => $help,)*
                }
            }
        }

        impl RuleCounters {
            /// The value of the counter `which`.
            pub const fn get(&self, which: RuleCounter) -> u64 {
                match which {
                    $(RuleCounter::$variant => self.$field,)*
                }
            }
        }

        impl core::ops::AddAssign for RuleCounters {
            /// Sums field by field (wrapping), e.g. the per-CPU copies of one rule.
            fn add_assign(&mut self, rhs: Self) {
                $(self.$field = self.$field.wrapping_add(rhs.$field);)*
            }
        }
    };
}

global_counters! {
    Frames = 0, "frames", "Frames the program saw";
    SipCandidates = 1, "sip_candidates",
        "UDP datagrams to a configured SIP port, and TCP segments to one that start like a request";
    Invites = 2, "invites", "SIP INVITE requests";
    NumbersParsed = 3, "numbers_parsed", "INVITEs whose Request-URI gave a number";
    Dropped = 4, "dropped", "INVITEs dropped";
    AllowedByException = 5, "allowed_by_exception",
        "INVITEs passed because their longest matching rule was an allow rule";
    WouldDrop = 6, "would_drop",
        "INVITEs that would have been dropped (monitor action or monitor mode)";
    UnparsableUri = 7, "unparsable_uri",
        "INVITEs whose Request-URI could not be parsed (unknown scheme, malformed line)";
    NonFirstFragments = 8, "non_first_fragments",
        "IPv4/IPv6 fragments other than the first (not inspected)";
    /// The claimed length is never trusted beyond the frame.
    Truncated = 9, "truncated",
        "Frames whose headers are cut short, or whose IP/UDP lengths claim more than the frame holds";
    NoNumber = 10, "no_number", "INVITEs with a Request-URI that has no number (sip:alice@...)";
    NumberIncomplete = 11, "number_incomplete",
        "INVITEs whose number could not be read to its end (the window or the datagram ended first)";
    NotUdp = 12, "not_udp", "Frames that are not IPv4/IPv6, or neither UDP nor TCP";
    Ipv6ExtLimit = 13, "ipv6_ext_limit",
        "IPv6 packets with more extension headers than the program walks (passed)";
    Calls = 14, "calls", "New calls (initial INVITEs) that matched a rule";
    Retransmissions = 15, "retransmissions",
        "Matched INVITEs whose Call-ID was seen recently (retransmissions)";
    Reinvites = 16, "reinvites", "Matched in-dialog re-INVITEs (with a To tag)";
    NoCallId = 17, "no_call_id",
        "Matched INVITEs without a Call-ID in the inspected headers (each counted as a call)";
    EventsSent = 18, "events_sent", "Drop and would-drop events sent to userspace";
    EventsSuppressed = 19, "events_suppressed",
        "Events not sent: over the rate budget, or the ring buffer was full";
    /// Dropped unless `tiny_first_fragment = "pass"`; no SIP stack sends one.
    TinyFirstFragments = 20, "tiny_first_fragments",
        "First IP fragments too short to hold a SIP request line and its number (or a UDP header)";
    TcpInspected = 21, "tcp_inspected",
        "TCP segments to a SIP port whose payload starts like a request (inspected like UDP)";
    /// Handshakes, ACKs, continuations of a request, responses, TLS.
    TcpUninspected = 22, "tcp_uninspected",
        "TCP segments passed without inspection (other port, no payload, not a request start)";
    /// Counted together with `dropped` or `would_drop` when the action is block or monitor.
    IncompleteActionApplied = 23, "incomplete_action_applied",
        "INVITEs with an incompletely read number that no rule decided (incomplete_action applied)";
    /// Counted together with `dropped`; the daemon sends the response.
    Rejected = 24, "rejected",
        "INVITEs dropped by a reject rule and handed to the daemon for a SIP final response";
    RepliesLost = 25, "replies_lost",
        "Rejected INVITEs whose response could not be requested (the reply ring buffer was full)";
    CustomerCountersFull = 26, "customer_counters_full",
        "Matched INVITEs of a customer not counted per customer (the customer counter map was full)";
    /// Counted with `dropped` (block, reject) or `would_drop` (monitor), by the over-limit action.
    OverLimit = 27, "over_limit",
        "New calls over a rule's limit or repeat limit, stopped (with their retransmissions)";
    WouldLimit = 28, "would_limit",
        "New calls over a limit that passed: over_limit = monitor, or monitor mode";
    Quarantined = 29, "quarantined",
        "INVITEs in scope from a quarantined customer or source, stopped";
    QuarantinesStarted = 30, "quarantines_started",
        "Quarantines the program started (the trigger tripped)";
    /// In monitor mode the trigger is evaluated, counted here, and nobody is quarantined; an
    /// INVITE from a quarantined subject passes and is counted here too.
    WouldQuarantine = 31, "would_quarantine",
        "Quarantine trips and quarantined INVITEs that passed (monitor mode)";
}

rule_counters! {
    matched => Matched,
        "INVITE packets whose longest matching prefix was the rule (retransmissions included)";
    dropped => Dropped, "INVITE packets dropped by the rule";
    would_drop => WouldDrop,
        "INVITE packets passed but counted as would-drop (monitor action or monitor mode)";
    /// A retransmission counts as a packet, not as a call.
    calls => Calls,
        "New calls (initial INVITEs, retransmissions counted once) that matched the rule";
    reinvites => Reinvites, "In-dialog re-INVITEs that matched the rule";
    /// Retransmissions of such a call are counted as packets in `dropped`, not here.
    over_limit => OverLimit,
        "New calls over the rule's limit or repeat limit that were stopped";
    would_limit => WouldLimit,
        "New calls over the rule's limit that passed (over_limit = monitor, or monitor mode)";
}

impl core::iter::Sum for RuleCounters {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut acc, c| {
            acc += c;
            acc
        })
    }
}

impl<'a> core::iter::Sum<&'a RuleCounters> for RuleCounters {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

// The kernel indexes the global array with the discriminant; the list must stay dense.
const _: () = {
    let mut i = 0;
    while i < Counter::COUNT {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
    assert!(Counter::COUNT <= crate::maps::COUNTER_SLOTS as usize);
    assert!(core::mem::size_of::<RuleCounters>() == 8 * RuleCounter::COUNT);
};

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::BTreeSet, vec::Vec};

    use super::*;

    #[test]
    fn global_counter_names_are_unique_and_in_index_order() {
        assert_eq!(Counter::ALL.len(), 32);
        let names: BTreeSet<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(names.len(), 32);
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        assert_eq!(Counter::Frames.name(), "frames");
        assert_eq!(Counter::Ipv6ExtLimit as u32, 13);
        assert_eq!(Counter::Ipv6ExtLimit.name(), "ipv6_ext_limit");
        assert_eq!(Counter::EventsSuppressed as u32, 19);
        assert_eq!(Counter::EventsSuppressed.name(), "events_suppressed");
        assert_eq!(Counter::Dropped.help(), "INVITEs dropped");
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(
            names,
            [
                "frames",
                "sip_candidates",
                "invites",
                "numbers_parsed",
                "dropped",
                "allowed_by_exception",
                "would_drop",
                "unparsable_uri",
                "non_first_fragments",
                "truncated",
                "no_number",
                "number_incomplete",
                "not_udp",
                "ipv6_ext_limit",
                "calls",
                "retransmissions",
                "reinvites",
                "no_call_id",
                "events_sent",
                "events_suppressed",
                "tiny_first_fragments",
                "tcp_inspected",
                "tcp_uninspected",
                "incomplete_action_applied",
                "rejected",
                "replies_lost",
                "customer_counters_full",
                "over_limit",
                "would_limit",
                "quarantined",
                "quarantines_started",
                "would_quarantine",
            ]
        );
    }

    /// Help texts go into Prometheus `HELP` lines: one line, no escapes, no trailing period.
    #[test]
    fn help_texts_are_single_plain_lines() {
        let helps = Counter::ALL
            .iter()
            .map(|c| c.help())
            .chain(RuleCounter::ALL.iter().map(|c| c.help()));
        for h in helps {
            assert!(!h.is_empty());
            assert!(!h.contains(['\n', '\\']), "{h}");
            assert!(!h.ends_with('.'), "{h}");
            assert_eq!(h.trim(), h);
        }
    }

    #[test]
    fn rule_counter_all_covers_every_field() {
        let c = RuleCounters {
            matched: 11,
            dropped: 22,
            would_drop: 33,
            calls: 44,
            reinvites: 55,
            over_limit: 66,
            would_limit: 77,
        };
        let got: Vec<(&str, u64)> = RuleCounter::ALL
            .iter()
            .map(|&k| (k.name(), c.get(k)))
            .collect();
        assert_eq!(
            got,
            [
                ("matched", 11),
                ("dropped", 22),
                ("would_drop", 33),
                ("calls", 44),
                ("reinvites", 55),
                ("over_limit", 66),
                ("would_limit", 77),
            ]
        );
        // Every field is reached by exactly one counter.
        let values: BTreeSet<u64> = RuleCounter::ALL.iter().map(|&k| c.get(k)).collect();
        assert_eq!(values.len(), core::mem::size_of::<RuleCounters>() / 8);
        assert_eq!(
            RuleCounter::Matched.help(),
            "INVITE packets whose longest matching prefix was the rule (retransmissions included)"
        );
    }

    #[test]
    fn rule_counters_add_and_sum() {
        let a = RuleCounters {
            matched: 1,
            dropped: 2,
            would_drop: 3,
            calls: 4,
            reinvites: 5,
            over_limit: 6,
            would_limit: 7,
        };
        let b = RuleCounters {
            matched: 10,
            dropped: 20,
            would_drop: 30,
            calls: 40,
            reinvites: 50,
            over_limit: 60,
            would_limit: 70,
        };
        let mut s = a;
        s += b;
        let want = RuleCounters {
            matched: 11,
            dropped: 22,
            would_drop: 33,
            calls: 44,
            reinvites: 55,
            over_limit: 66,
            would_limit: 77,
        };
        assert_eq!(s, want);
        assert_eq!([a, b].into_iter().sum::<RuleCounters>(), want);
        assert_eq!([a, b].iter().sum::<RuleCounters>(), want);
        assert_eq!(
            core::iter::empty::<RuleCounters>().sum::<RuleCounters>(),
            RuleCounters::default()
        );
    }
}
