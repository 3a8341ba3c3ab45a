//! Map layouts shared by the XDP program and userspace.
//!
//! Layouts are `#[repr(C)]` with explicit padding fields, so both sides agree byte for byte.
//! Every struct carries reserved room or sits in a map whose size leaves room, so the later
//! features (per-destination call limits, source policies, call counting) can be added without
//! changing the meaning of what is already there.

use crate::number::{IntlPrefixes, KEY_DATA_LEN, LookupKey};

/// Map names (BPF object names are at most 15 bytes). The pinned maps keep these names.
pub mod names {
    /// The two rule tries. Config slot `i` goes with trie `i`, so a reload builds the new rule
    /// set in the inactive trie and switches rules and settings live together in one word.
    pub const RULES: [&str; 2] = ["SG_RULES_A", "SG_RULES_B"];
    pub const RULE_STATS: &str = "SG_RULE_STATS";
    pub const COUNTERS: &str = "SG_COUNTERS";
    pub const CONFIG: &str = "SG_CONFIG";
    pub const SIP_PORTS: &str = "SG_SIP_PORTS";
    pub const SCRATCH: &str = "SG_SCRATCH";
    /// Call-ID hashes seen recently (LRU): tells new calls from retransmissions.
    pub const CALLS: &str = "SG_CALLS";
    /// Sources that hit each rule (LRU).
    pub const SOURCES: &str = "SG_SOURCES";
    /// Drop / would-drop events for new calls (ring buffer).
    pub const EVENTS: &str = "SG_EVENTS";
    /// Per-CPU token bucket that bounds the event rate.
    pub const EVENT_BUCKET: &str = "SG_EVBUCKET";
}

/// Entries of [`names::CALLS`].
pub const MAX_CALLS: u32 = 65_536;
/// Entries of [`names::SOURCES`].
pub const MAX_SOURCES: u32 = 16_384;
/// Bytes of the event ring buffer.
pub const EVENT_RING_BYTES: u32 = 256 * 1024;

/// Program names in the object.
pub mod programs {
    /// The filter.
    pub const FILTER: &str = "sipguard";
    /// An empty `XDP_PASS` program: the baseline that benchmarks divide by.
    pub const EMPTY: &str = "sipguard_empty";
}

/// Default capacity of each rule trie and of the per-rule counter hash: the `max_entries` the
/// object is compiled with. Userspace overrides it at load (`max_rules` in `[settings]`).
/// Rule ids are not bounded by it: they are allocated from [`Config::next_rule_id`].
pub const MAX_RULES: u32 = 262_144;

/// The largest `max_rules` an operator may configure.
pub const MAX_RULES_LIMIT: u32 = 4_000_000;

/// The rule trie's key data: domain byte + digit nibbles (see [`LookupKey`]).
pub type RuleKeyData = [u8; KEY_DATA_LEN];

/// What a matching rule does.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Drop the INVITE (in `enforce` mode; counted as would-drop in `monitor` mode).
    Block = 1,
    /// An exception inside a block: pass.
    Allow = 2,
    /// Pass, but count as would-drop.
    Monitor = 3,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Block),
            2 => Some(Self::Allow),
            3 => Some(Self::Monitor),
            _ => None,
        }
    }
}

/// Value of the rule trie.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleValue {
    /// The rule's id: the key of its counters in [`names::RULE_STATS`].
    pub id: u32,
    /// An [`Action`] as `u8`.
    pub action: u8,
    /// Reserved for per-rule options (rate limits, source policies); zero today.
    pub flags: u8,
    /// The prefix length (bits) of the rule's own key, so that a longest-prefix lookup with a
    /// rule's full key tells an exact hit from a shorter rule. 0 in tries written by versions
    /// before it existed (userspace then treats the trie as unknown and rewrites it).
    pub prefix_len: u16,
}

/// Per-rule counters (one per CPU; userspace sums them). Kept in a per-CPU hash keyed by the
/// rule id, created by the program on the rule's first match, so that memory follows traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    /// INVITEs whose longest matching prefix was this rule.
    pub matched: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Of those, passed but counted as would-drop (`monitor` action, or `monitor` mode).
    pub would_drop: u64,
    /// New calls among them: initial INVITEs whose Call-ID was not seen recently (a
    /// retransmission counts as a packet, not as a call).
    pub calls: u64,
    /// In-dialog re-INVITEs (a To tag), counted apart from calls.
    pub reinvites: u64,
}

/// Global mode.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce = 0,
    /// Never drop; count would-drops.
    Monitor = 1,
}

/// Global settings. Userspace writes a whole new copy into the inactive slot of the config
/// array (and the whole new rule set into the rule trie of the same index), then flips
/// [`Config`] slot 2's `active` word, so the program never reads a half-written configuration
/// or a half-applied rule set (array map updates are plain memcpy, not atomic).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A [`Mode`] as `u32`.
    pub mode: u32,
    /// Which of slots 0 and 1 is live; only meaningful in slot [`CONFIG_SELECTOR`].
    pub active: u32,
    pub intl_prefixes: IntlPrefixes,
    /// [`CONFIG_FLAG_DEBUG_LOG`] and later per-config switches.
    pub flags: u32,
    /// Drop events per second and CPU (0: no events).
    pub event_rate: u32,
    /// Events a CPU may send in a burst above the rate.
    pub event_burst: u32,
    pub _pad: u32,
    /// Selector slot only: the next rule id userspace hands out. Ids only grow, so a new
    /// prefix never gets the id (and the counters) of a rule either trie still holds.
    pub next_rule_id: u32,
    /// Slots 0 and 1: the generation of the rule set in this slot's trie, written after the
    /// trie was synced to it (0: unknown, or being written). Both tries hold the same rule set
    /// when both slots carry the same non-zero generation, so a small edit can be applied as a
    /// delta to each trie in turn instead of a full sync.
    pub generation: u32,
    /// Slots 0 and 1: rules in this slot's trie (valid with a non-zero generation).
    pub rule_count: u32,
    /// Reserved for later global settings; zero today.
    pub _reserved: u32,
}

// Both sides of the map agree on the value size: the kernel object is built from this struct.
const _: () = assert!(core::mem::size_of::<Config>() == 72);

/// Config flag: the program writes an aya-log debug line for every rule match. Off by default:
/// it costs a ring-buffer write per matched INVITE, which a flood would turn into load.
pub const CONFIG_FLAG_DEBUG_LOG: u32 = 1;
/// Config flag: no call accounting (Call-ID scan, call LRU, sources, events). For benchmarks
/// and as an emergency switch; the packet counters and verdicts are the same either way.
pub const CONFIG_FLAG_NO_CALLS: u32 = 2;

/// Config array slot that holds the `active` selector.
pub const CONFIG_SELECTOR: u32 = 2;
/// Config array size: two configuration slots and the selector.
pub const CONFIG_SLOTS: u32 = 3;

impl Config {
    pub fn new(mode: Mode, intl_prefixes: IntlPrefixes) -> Self {
        Self {
            mode: mode as u32,
            active: 0,
            intl_prefixes,
            flags: 0,
            event_rate: 0,
            event_burst: 0,
            _pad: 0,
            next_rule_id: 0,
            generation: 0,
            rule_count: 0,
            _reserved: 0,
        }
    }
}

/// Global counters: indices into the per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Every frame the program saw.
    Frames = 0,
    /// UDP datagrams to a configured SIP port.
    SipCandidates = 1,
    /// SIP INVITE requests.
    Invites = 2,
    /// INVITEs whose Request-URI gave a number.
    NumbersParsed = 3,
    /// INVITEs dropped.
    Dropped = 4,
    /// INVITEs passed because their longest match was an `allow` rule.
    AllowedByException = 5,
    /// INVITEs that would have been dropped (monitor action or monitor mode).
    WouldDrop = 6,
    /// INVITEs whose Request-URI could not be parsed (unknown scheme, malformed line).
    UnparsableUri = 7,
    /// IPv4/IPv6 fragments other than the first (not inspected).
    NonFirstFragments = 8,
    /// Frames whose headers are cut short, or whose IP/UDP lengths claim more than the frame
    /// holds (the claimed length is never trusted beyond the frame).
    Truncated = 9,
    /// INVITEs with a Request-URI that has no number (`sip:alice@...`).
    NoNumber = 10,
    /// INVITEs whose user part ran past the inspected window (matched on its leading digits).
    NumberIncomplete = 11,
    /// Frames that are not IPv4/IPv6 or not UDP.
    NotUdp = 12,
    /// IPv6 packets with more extension headers than the program walks (passed).
    Ipv6ExtLimit = 13,
    /// New calls (initial INVITEs) that matched a rule.
    Calls = 14,
    /// Matched INVITEs whose Call-ID was seen recently: retransmissions.
    Retransmissions = 15,
    /// Matched in-dialog re-INVITEs (To tag).
    Reinvites = 16,
    /// Matched INVITEs without a Call-ID in the inspected headers (each counted as a call).
    NoCallId = 17,
    /// Drop / would-drop events sent to userspace.
    EventsSent = 18,
    /// Events not sent: over the rate budget or the ring buffer was full.
    EventsSuppressed = 19,
}

/// Size of the global counter array (room for later counters).
pub const COUNTER_SLOTS: u32 = 32;

impl Counter {
    pub const ALL: [Counter; 20] = [
        Counter::Frames,
        Counter::SipCandidates,
        Counter::Invites,
        Counter::NumbersParsed,
        Counter::Dropped,
        Counter::AllowedByException,
        Counter::WouldDrop,
        Counter::UnparsableUri,
        Counter::NonFirstFragments,
        Counter::Truncated,
        Counter::NoNumber,
        Counter::NumberIncomplete,
        Counter::NotUdp,
        Counter::Ipv6ExtLimit,
        Counter::Calls,
        Counter::Retransmissions,
        Counter::Reinvites,
        Counter::NoCallId,
        Counter::EventsSent,
        Counter::EventsSuppressed,
    ];

    /// Stable snake_case name, used in CLI output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Frames => "frames",
            Counter::SipCandidates => "sip_candidates",
            Counter::Invites => "invites",
            Counter::NumbersParsed => "numbers_parsed",
            Counter::Dropped => "dropped",
            Counter::AllowedByException => "allowed_by_exception",
            Counter::WouldDrop => "would_drop",
            Counter::UnparsableUri => "unparsable_uri",
            Counter::NonFirstFragments => "non_first_fragments",
            Counter::Truncated => "truncated",
            Counter::NoNumber => "no_number",
            Counter::NumberIncomplete => "number_incomplete",
            Counter::NotUdp => "not_udp",
            Counter::Ipv6ExtLimit => "ipv6_ext_limit",
            Counter::Calls => "calls",
            Counter::Retransmissions => "retransmissions",
            Counter::Reinvites => "reinvites",
            Counter::NoCallId => "no_call_id",
            Counter::EventsSent => "events_sent",
            Counter::EventsSuppressed => "events_suppressed",
        }
    }
}

/// All global counters in one per-CPU value, so the program does one lookup per frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalCounters {
    pub counters: [u64; COUNTER_SLOTS as usize],
}

impl GlobalCounters {
    /// Adds one to `which`.
    #[inline(always)]
    pub fn bump(&mut self, which: Counter) {
        let i = which as usize;
        if i < COUNTER_SLOTS as usize {
            self.counters[i] += 1;
        }
    }
}

impl Default for GlobalCounters {
    fn default() -> Self {
        Self {
            counters: [0; COUNTER_SLOTS as usize],
        }
    }
}

/// Where a packet came from and went to, for source tracking and events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// IPv4 in the first word, or IPv6: the address bytes in network order, stored as native
    /// words (word-sized copies; byte arrays would make LLVM call a byte-loop memcpy in BPF).
    pub addr: [u32; 4],
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    pub _pad: u8,
}

/// Key of [`names::SOURCES`]: a source address per rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub rule_id: u32,
    /// 4 or 6.
    pub family: u32,
    /// As in [`Endpoint::addr`].
    pub addr: [u32; 4],
}

/// The address bytes of an [`Endpoint::addr`]-style word array.
pub fn addr_bytes(addr: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// Value of [`names::SOURCES`]. Times are `CLOCK_BOOTTIME` ns (`bpf_ktime_get_boot_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub calls: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

/// Value of [`names::CALLS`] (keyed by the Call-ID hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSeen {
    pub rule_id: u32,
    pub _pad: u32,
    pub first_seen_ns: u64,
}

/// Event verdicts.
pub const EVENT_DROP: u8 = 1;
pub const EVENT_WOULD_DROP: u8 = 2;

/// One drop / would-drop event for a new call, sent through [`names::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` ns.
    pub time_ns: u64,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// The normalised number (digits packed as in [`crate::Number`]).
    pub number_hi: u64,
    pub number_lo: u64,
    pub rule_id: u32,
    /// Outer VLAN id (0: untagged).
    pub vlan: u16,
    pub number_len: u8,
    /// A [`crate::Domain`] as `u8`.
    pub domain: u8,
    /// An [`Action`] as `u8`.
    pub action: u8,
    /// [`EVENT_DROP`] or [`EVENT_WOULD_DROP`].
    pub verdict: u8,
    pub _pad: [u8; 6],
}

/// Per-CPU token bucket for events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Thousandths of an event.
    pub tokens_milli: u64,
    pub last_ns: u64,
}

/// Builds the rule-trie key for a rule prefix, in the layout `LookupKey` uses.
pub fn rule_key(domain: crate::number::Domain, digits: &[u8]) -> Option<LookupKey> {
    if digits.len() > crate::number::MAX_DIGITS {
        return None;
    }
    let mut n = crate::number::Number::default();
    for &d in digits {
        if d > 9 {
            return None;
        }
        n.push(d);
    }
    Some(n.key(domain))
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with no padding holes the kernel could leak
    // or reject, and any bit pattern is valid.
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for RuleCounters {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for GlobalCounters {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for SourceStats {}
    unsafe impl aya::Pod for CallSeen {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for TokenBucket {}
}
