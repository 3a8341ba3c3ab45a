//! Map layouts shared by the XDP program and userspace.
//!
//! Layouts are `#[repr(C)]` with explicit padding fields, so both sides agree byte for byte.
//! Every struct carries reserved room or sits in a map whose size leaves room, so the later
//! features (per-destination call limits, source policies, call counting) can be added without
//! changing the meaning of what is already there.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use crate::counters::{Counter, RuleCounter, RuleCounters};
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
    /// The two customer tries (source CIDR, optionally per VLAN -> customer and policy),
    /// double-buffered with the rule tries and config slots: a reload switches customers,
    /// policies and rules together.
    pub const CUSTOMERS: [&str; 2] = ["SG_CUST_A", "SG_CUST_B"];
    /// Rejected INVITEs (addresses and headers) for the daemon to answer (ring buffer).
    pub const REPLIES: &str = "SG_REPLIES";
    /// Per customer and rule counters (per-CPU hash keyed by [`customer_rule_key`]).
    pub const CUSTOMER_STATS: &str = "SG_CUST_STATS";
    /// Rules' limits per config slot (hash keyed by [`crate::limits::limit_key`]).
    pub const LIMITS: &str = "SG_LIMITS";
    /// The quarantine's settings, slots 0 and 1 with the config slots (array).
    pub const LIMIT_CONFIG: &str = "SG_LIMIT_CONFIG";
    /// Token buckets per subject and rule (LRU hash keyed by [`crate::limits::BucketKey`]).
    pub const BUCKETS: &str = "SG_BUCKETS";
    /// Quarantined subjects (hash keyed by [`crate::limits::Subject`]).
    pub const QUARANTINE: &str = "SG_QUARANTINE";
    /// The quarantine trigger's window per subject (LRU hash).
    pub const WINDOWS: &str = "SG_QWINDOWS";
}

/// Entries of [`names::LIMITS`]: limited rules in both config slots.
pub const MAX_LIMIT_ENTRIES: u32 = 2 * 16_384;
/// Default entries of [`names::BUCKETS`] (`[limits] buckets`).
pub const DEFAULT_BUCKETS: u32 = 65_536;
/// Entries of [`names::QUARANTINE`] and [`names::WINDOWS`].
pub const MAX_QUARANTINE: u32 = 65_536;

/// Rule id that the program puts in a reply record and an event for an INVITE refused by a
/// quarantine, not by a rule.
pub const QUARANTINE_RULE_ID: u32 = u32::MAX;

/// Entries of [`names::CUSTOMER_STATS`]: (customer, rule) pairs that saw traffic. Over it, a new
/// pair is not counted (`customer_counters_full`); the per-rule counters still are.
pub const MAX_CUSTOMER_STATS: u32 = 131_072;

/// The key of a (customer, rule) pair in [`names::CUSTOMER_STATS`].
#[inline(always)]
pub const fn customer_rule_key(customer: u32, rule: u32) -> u64 {
    (customer as u64) << 32 | rule as u64
}

/// Bytes of the reply ring buffer: about 230 rejected INVITEs waiting for their response.
pub const REPLY_RING_BYTES: u32 = 256 * 1024;

/// What the program hands the daemon for a rejected INVITE, followed in the ring record by the
/// copied payload (`payload_len` of [`REPLY_PAYLOAD_BYTES`] bytes: the request line and the
/// headers the response copies). A record is `src`, `dst` (as [`Endpoint`]s), this head, then
/// the payload: [`REPLY_RECORD_LEN`] bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyHead {
    pub rule_id: u32,
    /// Payload bytes copied (at most [`REPLY_PAYLOAD_BYTES`]).
    pub payload_len: u32,
    /// Outer VLAN id (0: untagged).
    pub vlan: u16,
    /// The frame's flags (bit 0: TCP).
    pub flags: u8,
    /// 4 or 6.
    pub family: u8,
    /// The frame's destination and source MAC addresses, as they were on the wire.
    pub macs: [u8; 12],
    /// The generation of the config slot that rejected it (see [`Config::generation`]): the
    /// daemon answers with that rule set's response, also right after a reload.
    pub generation: u32,
}

/// Payload bytes a reply record carries: the header window and a spare word.
pub const REPLY_PAYLOAD_BYTES: usize = crate::headers::HDR_WINDOW + 8;

/// Bytes of one reply record: two endpoints, the head, the payload.
pub const REPLY_RECORD_LEN: usize =
    2 * core::mem::size_of::<Endpoint>() + core::mem::size_of::<ReplyHead>() + REPLY_PAYLOAD_BYTES;

const _: () = assert!(core::mem::size_of::<Endpoint>() == 20);
const _: () = assert!(core::mem::size_of::<ReplyHead>() == 28);

/// Default capacity of each customer trie (its `max_entries`; an LPM trie allocates per entry,
/// so the capacity costs nothing until used). Userspace sets `max_customers` at load.
pub const MAX_CUSTOMERS: u32 = 1 << 20;

/// Most `[[policy]]` tables: policy ids are 1..=MAX_POLICIES (0 is the global rules).
pub const MAX_POLICIES: u32 = 4096;

/// The customer trie's key data. Prefix bits run from the first byte: the outer VLAN
/// (big-endian; 0 matches frames on any VLAN or none), the address family (4 or 6), a zero
/// byte, then the source address as in [`Endpoint::addr`] (IPv4 in the first word). Words, not
/// bytes, so the program fills it with word copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CustomerKeyData {
    pub scope: [u8; 4],
    pub addr: [u32; 4],
}

/// Bits of a customer key before the address: VLAN, family and the zero byte.
pub const CUSTOMER_SCOPE_BITS: u32 = 32;

/// The customer-trie key of `addr` (as in [`Endpoint::addr`]) with `bits` of the address
/// significant, on `vlan` (0: any): `(prefix_len, data)`.
#[inline(always)]
pub fn customer_key(vlan: u16, family: u8, addr: &[u32; 4], bits: u32) -> (u32, CustomerKeyData) {
    let v = vlan.to_be_bytes();
    (
        CUSTOMER_SCOPE_BITS + bits,
        CustomerKeyData {
            scope: [v[0], v[1], family, 0],
            addr: *addr,
        },
    )
}

/// Customer flag: the policy's rules apply on top of the global rules (`inherit = true`).
pub const CUSTOMER_FLAG_INHERIT: u8 = 1;

/// Value of the customer trie: which customer a source belongs to, and its policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CustomerValue {
    /// The customer's id (1..; the order of `[[customer]]` tables, with runtime customers after).
    pub id: u32,
    /// The policy's id ([`crate::number::GLOBAL_POLICY`] for a customer without one).
    pub policy: u16,
    /// [`CUSTOMER_FLAG_INHERIT`].
    pub flags: u8,
    pub _pad: u8,
    /// The prefix length of this entry's own key, so that the program can prefer the longer of
    /// a VLAN-specific and an any-VLAN match.
    pub prefix_len: u32,
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

/// The rule trie's key data: policy, domain byte and digit nibbles (see [`LookupKey`]).
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
    /// Drop the INVITE and answer the caller with a SIP final response (403 by default; the
    /// daemon sends it). Over TCP, and in `monitor` mode, it acts as `block`.
    Reject = 4,
}

impl Action {
    /// Every action, in discriminant order.
    pub const ALL: [Action; 4] = [
        Action::Block,
        Action::Allow,
        Action::Monitor,
        Action::Reject,
    ];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Block),
            2 => Some(Self::Allow),
            3 => Some(Self::Monitor),
            4 => Some(Self::Reject),
            _ => None,
        }
    }

    /// The name used in config files, the CLI and output: `block`, `allow`, `monitor` or
    /// `reject`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Block => "block",
            Action::Allow => "allow",
            Action::Monitor => "monitor",
            Action::Reject => "reject",
        }
    }

    /// Whether the action stops the call (`block`, `reject`).
    pub const fn stops(self) -> bool {
        matches!(self, Action::Block | Action::Reject)
    }
}

impl core::fmt::Display for Action {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(self.as_str())
    }
}

impl core::str::FromStr for Action {
    type Err = ParseActionError;

    /// Parses [`Action::as_str`]'s names (exactly; no case folding).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(Action::Block),
            "allow" => Ok(Action::Allow),
            "monitor" => Ok(Action::Monitor),
            "reject" => Ok(Action::Reject),
            other => Err(ParseActionError {
                input: Quoted::new(other),
            }),
        }
    }
}

/// Most bytes of a rejected input a parse error keeps (it allocates nothing).
pub const PARSE_ERROR_QUOTE_MAX: usize = 48;

/// The start of a rejected input, kept by value so that the error needs no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Quoted {
    buf: [u8; PARSE_ERROR_QUOTE_MAX],
    len: u8,
    /// The input was longer than `buf`.
    cut: bool,
}

impl Quoted {
    fn new(s: &str) -> Self {
        let mut len = if s.len() < PARSE_ERROR_QUOTE_MAX {
            s.len()
        } else {
            PARSE_ERROR_QUOTE_MAX
        };
        while len > 0 && !s.is_char_boundary(len) {
            len -= 1;
        }
        let mut buf = [0u8; PARSE_ERROR_QUOTE_MAX];
        if let (Some(dst), Some(src)) = (buf.get_mut(..len), s.as_bytes().get(..len)) {
            dst.copy_from_slice(src);
        }
        Self {
            buf,
            len: len as u8,
            cut: len < s.len(),
        }
    }

    fn as_str(&self) -> &str {
        let b = self.buf.get(..self.len as usize).unwrap_or(&[]);
        core::str::from_utf8(b).unwrap_or("")
    }
}

impl core::fmt::Display for Quoted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())?;
        if self.cut {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl core::fmt::Debug for Quoted {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// `"…".parse::<Action>()` failed: "unknown action `drop` (expected block, allow, monitor or reject)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseActionError {
    input: Quoted,
}

impl ParseActionError {
    /// The rejected input (its first [`PARSE_ERROR_QUOTE_MAX`] bytes at most).
    pub fn input(&self) -> &str {
        self.input.as_str()
    }
}

impl core::fmt::Display for ParseActionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "unknown action `{}` (expected block, allow, monitor or reject)",
            self.input
        )
    }
}

impl core::error::Error for ParseActionError {}

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

/// Global mode.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce = 0,
    /// Never drop; count would-drops.
    Monitor = 1,
}

impl Mode {
    /// Every mode, in discriminant order.
    pub const ALL: [Mode; 2] = [Mode::Enforce, Mode::Monitor];

    /// The mode stored in [`Config::mode`].
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Enforce),
            1 => Some(Self::Monitor),
            _ => None,
        }
    }

    /// The name used in config files, the CLI and output: `enforce` or `monitor`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.pad(self.as_str())
    }
}

impl core::str::FromStr for Mode {
    type Err = ParseModeError;

    /// Parses [`Mode::as_str`]'s names (exactly; no case folding).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "monitor" => Ok(Mode::Monitor),
            other => Err(ParseModeError {
                input: Quoted::new(other),
            }),
        }
    }
}

/// `"…".parse::<Mode>()` failed: "unknown mode `x` (expected enforce or monitor)".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseModeError {
    input: Quoted,
}

impl ParseModeError {
    /// The rejected input (its first [`PARSE_ERROR_QUOTE_MAX`] bytes at most).
    pub fn input(&self) -> &str {
        self.input.as_str()
    }
}

impl core::fmt::Display for ParseModeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "unknown mode `{}` (expected enforce or monitor)",
            self.input
        )
    }
}

impl core::error::Error for ParseModeError {}

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
    /// What happens to an INVITE whose number could not be read to its end and that no rule
    /// decided: an [`Action`] as `u32` (0, as in configs written before it existed, is
    /// [`Action::Monitor`]). See [`Config::incomplete_action`].
    pub incomplete_action: u32,
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
    /// Slots 0 and 1: entries in this slot's customer trie. 0 (no customers configured, or a
    /// config written before customers existed) skips the customer lookup.
    pub customer_entries: u32,
}

// Both sides of the map agree on the value size: the kernel object is built from this struct.
const _: () = assert!(core::mem::size_of::<Config>() == 72);

/// Config flag: the program writes an aya-log debug line for every rule match. Off by default:
/// it costs a ring-buffer write per matched INVITE, which a flood would turn into load.
pub const CONFIG_FLAG_DEBUG_LOG: u32 = 1;
/// Config flag: no call accounting (Call-ID scan, call LRU, sources, events). For benchmarks
/// and as an emergency switch; the packet counters and verdicts are the same either way.
pub const CONFIG_FLAG_NO_CALLS: u32 = 2;

/// Config flag: tiny first fragments (a first IP fragment to a SIP port too short to hold a
/// request line and its number) pass (counted). Without it, the default, they are dropped.
pub const CONFIG_FLAG_PASS_TINY_FRAGMENTS: u32 = 4;

/// Config flag: a `[quarantine]` is configured: the program checks and triggers it.
pub const CONFIG_FLAG_QUARANTINE: u32 = 8;
/// Config flag: the quarantine covers every call, not only international ones.
pub const CONFIG_FLAG_QUARANTINE_ALL: u32 = 16;

/// A first fragment (IPv4 MF with offset 0; IPv6 fragment header with offset 0 and M) whose
/// transport payload (after any leading CR/LF) is shorter than this is a tiny first fragment.
pub const TINY_FRAGMENT_PAYLOAD: u32 = 64;

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
            incomplete_action: Action::Monitor as u32,
            next_rule_id: 0,
            generation: 0,
            rule_count: 0,
            customer_entries: 0,
        }
    }

    /// The action for an INVITE whose number could not be read to its end and that no rule
    /// decided (`incomplete_action` in the settings): [`Action::Monitor`] unless set.
    #[inline(always)]
    pub fn incomplete_action(&self) -> Action {
        match self.incomplete_action {
            1 => Action::Block,
            2 => Action::Allow,
            _ => Action::Monitor,
        }
    }
}

/// Size of the global counter array (room for later counters).
pub const COUNTER_SLOTS: u32 = 32;

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

    /// The value of `which`.
    pub fn get(&self, which: Counter) -> u64 {
        self.counters.get(which as usize).copied().unwrap_or(0)
    }
}

impl core::ops::AddAssign for GlobalCounters {
    /// Sums slot by slot (wrapping), e.g. the per-CPU copies.
    fn add_assign(&mut self, rhs: Self) {
        for (a, b) in self.counters.iter_mut().zip(rhs.counters) {
            *a = a.wrapping_add(b);
        }
    }
}

impl core::iter::Sum for GlobalCounters {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut acc, c| {
            acc += c;
            acc
        })
    }
}

impl<'a> core::iter::Sum<&'a GlobalCounters> for GlobalCounters {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
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

impl Endpoint {
    /// An endpoint for `ip`:`port`, laid out as the program writes it.
    pub fn from_ip(ip: IpAddr, port: u16) -> Self {
        let (addr, family) = addr_words(ip);
        Self {
            addr,
            port,
            family,
            _pad: 0,
        }
    }

    /// The address: IPv4 if `family` is 4, else IPv6.
    pub fn ip(&self) -> IpAddr {
        words_ip(self.family as u32, &self.addr)
    }

    /// The address and port.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }
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

impl SourceKey {
    /// The key of `ip`'s entry under rule `rule_id`, laid out as the program writes it.
    pub fn new(rule_id: u32, ip: IpAddr) -> Self {
        let (addr, family) = addr_words(ip);
        Self {
            rule_id,
            family: family as u32,
            addr,
        }
    }

    /// The source address: IPv4 if `family` is 4, else IPv6.
    pub fn ip(&self) -> IpAddr {
        words_ip(self.family, &self.addr)
    }
}

impl CustomerKeyData {
    /// The key of the CIDR `ip`/`bits` on `vlan` (0: any), laid out as the program looks it
    /// up: `(prefix_len, data)`.
    pub fn cidr(vlan: u16, ip: IpAddr, bits: u8) -> (u32, Self) {
        let (addr, family) = addr_words(ip);
        customer_key(vlan, family, &addr, bits as u32)
    }

    /// The VLAN, the address and its prefix length of a key made by [`CustomerKeyData::cidr`].
    pub fn decode(&self, prefix_len: u32) -> (u16, IpAddr, u32) {
        (
            u16::from_be_bytes([self.scope[0], self.scope[1]]),
            words_ip(self.scope[2] as u32, &self.addr),
            prefix_len.saturating_sub(CUSTOMER_SCOPE_BITS),
        )
    }
}

/// `ip` as [`Endpoint::addr`]-style words, and its family (4 or 6).
fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    let mut bytes = [0u8; 16];
    let family = match ip {
        IpAddr::V4(v4) => {
            if let Some(b) = bytes.first_chunk_mut::<4>() {
                *b = v4.octets();
            }
            4
        }
        IpAddr::V6(v6) => {
            bytes = v6.octets();
            6
        }
    };
    let mut addr = [0u32; 4];
    for (w, chunk) in addr.iter_mut().zip(bytes.chunks_exact(4)) {
        let mut b = [0u8; 4];
        b.copy_from_slice(chunk);
        *w = u32::from_ne_bytes(b);
    }
    (addr, family)
}

/// The address in [`Endpoint::addr`]-style words of `family` (4; anything else is IPv6).
fn words_ip(family: u32, addr: &[u32; 4]) -> IpAddr {
    let b = addr_bytes(addr);
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(b))
    }
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

impl core::ops::AddAssign for SourceStats {
    /// Merges two views of one source (e.g. from two rules or two reads): packets and calls
    /// add, `first_seen_ns` is the earlier non-zero time, `last_seen_ns` the later.
    fn add_assign(&mut self, rhs: Self) {
        self.packets = self.packets.wrapping_add(rhs.packets);
        self.calls = self.calls.wrapping_add(rhs.calls);
        self.first_seen_ns = match (self.first_seen_ns, rhs.first_seen_ns) {
            (0, b) => b,
            (a, 0) => a,
            (a, b) => a.min(b),
        };
        self.last_seen_ns = self.last_seen_ns.max(rhs.last_seen_ns);
    }
}

impl core::iter::Sum for SourceStats {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut acc, c| {
            acc += c;
            acc
        })
    }
}

impl<'a> core::iter::Sum<&'a SourceStats> for SourceStats {
    fn sum<I: Iterator<Item = &'a Self>>(iter: I) -> Self {
        iter.copied().sum()
    }
}

/// Value of [`names::CALLS`] (keyed by the Call-ID hash).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSeen {
    pub rule_id: u32,
    /// 0, or the [`Action`] (plus one) that a limit or a quarantine gave the call's first
    /// INVITE: its retransmissions get the same.
    pub limited: u32,
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
    /// Why: [`crate::limits::CAUSE_RULE`] (the rule's action), a limit, the quarantine, or the
    /// start of a quarantine.
    pub cause: u8,
    pub _pad: [u8; 1],
    /// The source's customer id (0: none).
    pub customer: u32,
}

impl Event {
    /// The normalised number the event carries.
    pub fn number(&self) -> crate::number::Number {
        crate::number::Number {
            hi: self.number_hi,
            lo: self.number_lo,
            len: self.number_len,
            plus: false,
            overflow: false,
            context: 0,
        }
    }

    /// The number as dialled in its domain (`+232...` or the bare national digits); `None` if
    /// the domain byte is not a [`crate::Domain`].
    pub fn dialled(&self) -> Option<crate::number::Dialled> {
        crate::number::Domain::from_u8(self.domain).map(|d| self.number().display(d))
    }
}

/// Per-CPU token bucket for events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Thousandths of an event.
    pub tokens_milli: u64,
    pub last_ns: u64,
}

/// Builds the rule-trie key for a rule prefix of `policy`, in the layout `LookupKey` uses.
pub fn rule_key(policy: u16, domain: crate::number::Domain, digits: &[u8]) -> Option<LookupKey> {
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
    Some(n.key_in(policy, domain))
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
    unsafe impl aya::Pod for CustomerKeyData {}
    unsafe impl aya::Pod for CustomerValue {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for ReplyHead {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for crate::limits::LimitParams {}
    unsafe impl aya::Pod for crate::limits::LimitConfig {}
    unsafe impl aya::Pod for crate::limits::Subject {}
    unsafe impl aya::Pod for crate::limits::BucketKey {}
    unsafe impl aya::Pod for crate::limits::Quarantine {}
    unsafe impl aya::Pod for crate::limits::Window {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::{string::ToString, vec::Vec};

    use super::*;
    use crate::number::{Domain, Number};

    #[test]
    fn endpoint_ipv4_round_trips_and_matches_the_kernel_layout() {
        let sa: SocketAddr = "203.0.113.7:5060".parse().unwrap();
        let e = Endpoint::from_ip(sa.ip(), sa.port());
        assert_eq!(e.family, 4);
        assert_eq!(e.port, 5060);
        // The program copies the address bytes, in network order, into the first word.
        assert_eq!(e.addr, [u32::from_ne_bytes([203, 0, 113, 7]), 0, 0, 0]);
        assert_eq!(&addr_bytes(&e.addr)[..4], &[203, 0, 113, 7]);
        assert_eq!(e.ip(), IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
        assert_eq!(e.socket_addr(), sa);
        assert_eq!(e.socket_addr().to_string(), "203.0.113.7:5060");
    }

    #[test]
    fn endpoint_ipv6_round_trips() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let e = Endpoint::from_ip(ip, 5061);
        assert_eq!(e.family, 6);
        assert_eq!(
            addr_bytes(&e.addr),
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(e.ip(), ip);
        assert_eq!(e.socket_addr().to_string(), "[2001:db8::1]:5061");
        // Not 4 means IPv6, as the program only writes 4 or 6.
        assert_eq!(Endpoint::default().ip(), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn source_key_round_trips() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let k = SourceKey::new(7, v4);
        assert_eq!((k.rule_id, k.family), (7, 4));
        assert_eq!(k.addr, Endpoint::from_ip(v4, 0).addr);
        assert_eq!(k.ip(), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let k = SourceKey::new(9, v6);
        assert_eq!((k.rule_id, k.family), (9, 6));
        assert_eq!(k.ip(), v6);
    }

    #[test]
    fn global_counters_get_add_and_sum() {
        let mut a = GlobalCounters::default();
        a.bump(Counter::Frames);
        a.bump(Counter::Frames);
        a.bump(Counter::EventsSuppressed);
        assert_eq!(a.get(Counter::Frames), 2);
        assert_eq!(a.get(Counter::EventsSuppressed), 1);
        assert_eq!(a.get(Counter::Dropped), 0);
        let mut b = GlobalCounters::default();
        b.bump(Counter::Frames);
        b.bump(Counter::Dropped);
        b.counters[31] = 5; // spare slots add too
        let mut s = a;
        s += b;
        assert_eq!(s.get(Counter::Frames), 3);
        assert_eq!(s.get(Counter::Dropped), 1);
        assert_eq!(s.get(Counter::EventsSuppressed), 1);
        assert_eq!(s.counters[31], 5);
        assert_eq!([a, b].into_iter().sum::<GlobalCounters>(), s);
        assert_eq!([a, b].iter().sum::<GlobalCounters>(), s);
        for c in Counter::ALL {
            assert_eq!(s.get(c), s.counters[c as usize]);
        }
    }

    #[test]
    fn source_stats_add_keeps_the_seen_window() {
        let a = SourceStats {
            packets: 3,
            calls: 1,
            first_seen_ns: 200,
            last_seen_ns: 300,
        };
        let b = SourceStats {
            packets: 4,
            calls: 2,
            first_seen_ns: 100,
            last_seen_ns: 250,
        };
        let mut s = a;
        s += b;
        assert_eq!(
            s,
            SourceStats {
                packets: 7,
                calls: 3,
                first_seen_ns: 100,
                last_seen_ns: 300,
            }
        );
        // An empty entry does not pull first_seen down to 0.
        let mut z = SourceStats::default();
        z += a;
        assert_eq!(z, a);
        let mut a2 = a;
        a2 += SourceStats::default();
        assert_eq!(a2, a);
        assert_eq!([a, b].iter().sum::<SourceStats>(), s);
        assert_eq!([a, b].into_iter().sum::<SourceStats>(), s);
    }

    #[test]
    fn action_names_parse_and_display() {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["block", "allow", "monitor", "reject"]);
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
            assert_eq!(a.to_string(), a.as_str());
            assert_eq!(Action::from_u8(a as u8), Some(a));
        }
        let e = "drop".parse::<Action>().unwrap_err();
        assert_eq!(e.input(), "drop");
        assert_eq!(
            e.to_string(),
            "unknown action `drop` (expected block, allow, monitor or reject)"
        );
        assert_eq!(
            "Block".parse::<Action>().unwrap_err().to_string(),
            "unknown action `Block` (expected block, allow, monitor or reject)"
        );
        assert_eq!(
            "".parse::<Action>().unwrap_err().to_string(),
            "unknown action `` (expected block, allow, monitor or reject)"
        );
        assert_eq!(std::format!("{:>7}|", Action::Allow), "  allow|");
    }

    #[test]
    fn mode_names_parse_and_display() {
        let names: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
        assert_eq!(names, ["enforce", "monitor"]);
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
            assert_eq!(Mode::from_u32(m as u32), Some(m));
        }
        assert_eq!(Mode::from_u32(2), None);
        let e = "x".parse::<Mode>().unwrap_err();
        assert_eq!(e.input(), "x");
        assert_eq!(
            e.to_string(),
            "unknown mode `x` (expected enforce or monitor)"
        );
        assert_eq!(
            "enforcing".parse::<Mode>().unwrap_err().to_string(),
            "unknown mode `enforcing` (expected enforce or monitor)"
        );
    }

    #[test]
    fn parse_errors_quote_long_input_without_allocating() {
        let long = "é".repeat(40); // 80 bytes, two per char
        let e = long.parse::<Mode>().unwrap_err();
        assert_eq!(e.input(), "é".repeat(PARSE_ERROR_QUOTE_MAX / 2));
        assert_eq!(
            e.to_string(),
            std::format!(
                "unknown mode `{}…` (expected enforce or monitor)",
                "é".repeat(PARSE_ERROR_QUOTE_MAX / 2)
            )
        );
        // A cut never splits a character.
        let odd = std::format!("a{long}");
        let e = odd.parse::<Action>().unwrap_err();
        assert_eq!(e.input().len(), PARSE_ERROR_QUOTE_MAX - 1);
        assert!(e.input().starts_with("aé"));
        let exact = "m".repeat(PARSE_ERROR_QUOTE_MAX);
        let e = exact.parse::<Mode>().unwrap_err();
        assert_eq!(e.input(), exact);
        assert!(!e.to_string().contains('…'));
    }

    #[test]
    fn event_number_and_dialled() {
        let mut n = Number::default();
        for d in [2, 3, 2, 7, 6] {
            n.push(d);
        }
        let ev = Event {
            number_hi: n.hi,
            number_lo: n.lo,
            number_len: n.len,
            domain: Domain::International as u8,
            ..Event::default()
        };
        assert_eq!(ev.number(), n);
        assert_eq!(ev.dialled().unwrap().to_string(), "+23276");
        let ev = Event {
            domain: Domain::National as u8,
            ..ev
        };
        assert_eq!(ev.dialled().unwrap().to_string(), "23276");
        let ev = Event { domain: 0, ..ev };
        assert_eq!(ev.dialled(), None);
    }
}
