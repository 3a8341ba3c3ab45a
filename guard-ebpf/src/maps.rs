//! The program's maps, and typed access to the per-CPU values it works in.

// Keys by reference, as in `verdict` (by value they cost verifier instructions).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use guard_common::limits::{BucketKey, LimitConfig, LimitParams, Quarantine, Subject, Window};
use guard_common::{
    CONFIG_SELECTOR, CONFIG_SLOTS, CUSTOMER_FLAG_INHERIT, CallSeen, Config, CustomerKeyData,
    CustomerValue, DEFAULT_BUCKETS, EVENT_RING_BYTES, Endpoint, GlobalCounters, HDR_WINDOW,
    HeaderScanner, LookupKey, MAX_CALLS, MAX_CUSTOMER_STATS, MAX_CUSTOMERS, MAX_LIMIT_ENTRIES,
    MAX_QUARANTINE, MAX_RULES, MAX_SOURCES, REPLY_PAYLOAD_BYTES, REPLY_RECORD_LEN,
    REPLY_RING_BYTES, ReplyHead, RuleCounters, RuleKeyData, RuleValue, Scanner, SourceKey,
    SourceStats, TokenBucket, WINDOW, customer_key, customer_rule_key, number::GLOBAL_POLICY,
};

use crate::layers::Frame;

// Two rule tries, double-buffered with the config slots: slot 0 uses A, slot 1 uses B.
// MAX_RULES is the default size; userspace sets `max_rules` at load (map_max_entries).
#[map(name = "SG_RULES_A")]
static SG_RULES_A: LpmTrie<RuleKeyData, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "SG_RULES_B")]
static SG_RULES_B: LpmTrie<RuleKeyData, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

// Two customer tries, double-buffered with the rule tries: slot 0 uses A, slot 1 uses B.
// MAX_CUSTOMERS is the default size; userspace sets `max_customers` at load.
#[map(name = "SG_CUST_A")]
static SG_CUST_A: LpmTrie<CustomerKeyData, CustomerValue> =
    LpmTrie::with_max_entries(MAX_CUSTOMERS, BPF_F_NO_PREALLOC);

#[map(name = "SG_CUST_B")]
static SG_CUST_B: LpmTrie<CustomerKeyData, CustomerValue> =
    LpmTrie::with_max_entries(MAX_CUSTOMERS, BPF_F_NO_PREALLOC);

/// Rule id -> per-CPU counters, created on the rule's first match (no preallocation), so its
/// memory follows the rules that see traffic, not max_rules x CPUs.
#[map(name = "SG_RULE_STATS")]
static SG_RULE_STATS: PerCpuHashMap<u32, RuleCounters> =
    PerCpuHashMap::with_max_entries(MAX_RULES, BPF_F_NO_PREALLOC);

/// (customer, rule) -> per-CPU counters, created on the pair's first match.
#[map(name = "SG_CUST_STATS")]
static SG_CUST_STATS: PerCpuHashMap<u64, RuleCounters> =
    PerCpuHashMap::with_max_entries(MAX_CUSTOMER_STATS, BPF_F_NO_PREALLOC);

#[map(name = "SG_COUNTERS")]
static SG_COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SG_CONFIG")]
static SG_CONFIG: Array<Config> = Array::with_max_entries(CONFIG_SLOTS, 0);

/// Indexed by UDP destination port; non-zero means "SIP port".
#[map(name = "SG_SIP_PORTS")]
static SG_SIP_PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map(name = "SG_SCRATCH")]
static SG_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Call-ID hash -> first sighting: a hash already here is a retransmission.
#[map(name = "SG_CALLS")]
pub static SG_CALLS: LruHashMap<u64, CallSeen> = LruHashMap::with_max_entries(MAX_CALLS, 0);

/// (rule, source address) -> packets, calls, first and last seen.
#[map(name = "SG_SOURCES")]
pub static SG_SOURCES: LruHashMap<SourceKey, SourceStats> =
    LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Drop / would-drop events of new calls, for the daemon.
#[map(name = "SG_EVENTS")]
pub static SG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Rejected INVITEs for the daemon to answer (see `reply`).
#[map(name = "SG_REPLIES")]
pub static SG_REPLIES: RingBuf = RingBuf::with_byte_size(REPLY_RING_BYTES, 0);

/// (config slot, rule id) -> the rule's limits (see `limits`).
#[map(name = "SG_LIMITS")]
pub static SG_LIMITS: HashMap<u64, LimitParams> =
    HashMap::with_max_entries(MAX_LIMIT_ENTRIES, BPF_F_NO_PREALLOC);

/// The quarantine's settings, slots 0 and 1 with the config slots.
#[map(name = "SG_LIMIT_CONFIG")]
static SG_LIMIT_CONFIG: Array<LimitConfig> = Array::with_max_entries(2, 0);

/// (subject, rule, number fingerprint or 0) -> the bucket's TAT. Userspace sets its size
/// (`[limits] buckets`) at load.
#[map(name = "SG_BUCKETS")]
pub static SG_BUCKETS: LruHashMap<BucketKey, u64> =
    LruHashMap::with_max_entries(DEFAULT_BUCKETS, 0);

/// Quarantined customers and sources, with their expiry.
#[map(name = "SG_QUARANTINE")]
pub static SG_QUARANTINE: HashMap<Subject, Quarantine> =
    HashMap::with_max_entries(MAX_QUARANTINE, BPF_F_NO_PREALLOC);

/// The quarantine trigger's window per subject.
#[map(name = "SG_QWINDOWS")]
pub static SG_QWINDOWS: LruHashMap<Subject, Window> =
    LruHashMap::with_max_entries(MAX_QUARANTINE, 0);

/// Per-CPU token bucket that bounds the event rate (config `event_rate` / `event_burst`).
#[map(name = "SG_EVBUCKET")]
static SG_EVBUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Words of the payload copy: the header window and one spare word, so that a word read at any
/// byte offset stays inside the buffer. The request-line window is its first [`WINDOW`] bytes.
pub const PAYLOAD_WORDS: usize = HDR_WINDOW / 8 + 1;
const _: () = assert!(WINDOW <= HDR_WINDOW && WINDOW.is_multiple_of(8));

/// Per-CPU working space of one program run: the frame handed from the layers to the SIP stage,
/// the copied payload windows and the scanners' states. Keeping the scanners in a map value (not
/// on the 512-byte stack) makes the verifier treat their fields as unknown scalars, so each
/// `bpf_loop` callback is verified once, not once per byte; and handing the frame over through
/// memory lets every header layout reach the SIP stage in the same verifier state.
#[repr(C)]
pub struct Scratch {
    pub frame: Frame,
    /// Filled in only for INVITEs that matched a rule (sources and events need them).
    pub src: Endpoint,
    pub dst: Endpoint,
    /// For a rejected INVITE: `src`, `dst`, this and `payload` are one reply record, sent as
    /// they lie (see `reply::request`).
    pub reply: ReplyHead,
    /// The payload's first bytes: [`WINDOW`] of them for the request line, extended to
    /// [`HDR_WINDOW`] (never copied twice) for an INVITE whose headers are read.
    pub payload: [u64; PAYLOAD_WORDS],
    /// Bytes copied into `payload`.
    pub copied: u32,
    pub scanner: Scanner,
    pub headers: HeaderScanner,
    /// The number being decided was not read to its end (see `verdict::decide`).
    pub incomplete: u32,
    /// Where the scanners' byte indices pass through on their way to a bounds check (see
    /// `sip::Window::launder`).
    pub index: u32,
    /// The source's customer, packed by [`pack_customer`] (0: none), for the stages after the
    /// lookup. Kept here, not in a register: read back from the map value it is a scalar the
    /// verifier does not track, so "no customer" and "a customer" do not split its states.
    pub customer: u64,
    /// The config slot that decides this INVITE, read once (see [`config`]): the customer and
    /// rule lookups use this slot's tries, so a switch between them cannot pair one slot's
    /// customers with the other slot's rules.
    pub slot: u32,
    /// The Call-ID hash of the INVITE being decided (0: none), for marking a stopped call.
    pub call_hash: u64,
    /// The decision's rule as `find_rule` packs it (or the quarantine's stand-in), what
    /// `count_call` found, and what `limits::apply` stopped: handed between the stages through
    /// memory, so that the verifier sees one state below them, not one per branch above.
    pub rule: u64,
    pub call: u32,
    pub stop: u32,
    /// Counters of a decision that has none of its own (no rule, or the counter map is full).
    pub spare: RuleCounters,
    /// `limits`' keys and values, here rather than on the 512-byte stack: the bucket key (its
    /// subject is the decision's customer or source), a trigger window, a new quarantine.
    pub bucket: BucketKey,
    pub window: Window,
    pub quarantine: Quarantine,
}

// A reply record is the scratch bytes from `src` to the end of `payload`, with no gap.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(offset_of!(Scratch, dst) == offset_of!(Scratch, src) + size_of::<Endpoint>());
    assert!(offset_of!(Scratch, reply) == offset_of!(Scratch, dst) + size_of::<Endpoint>());
    assert!(offset_of!(Scratch, payload) == offset_of!(Scratch, reply) + size_of::<ReplyHead>());
    assert!(PAYLOAD_WORDS * 8 == REPLY_PAYLOAD_BYTES);
    assert!(
        offset_of!(Scratch, payload) + PAYLOAD_WORDS * 8 - offset_of!(Scratch, src)
            == REPLY_RECORD_LEN
    );
};

/// This CPU's global counters.
#[inline(always)]
pub fn counters() -> Option<&'static mut GlobalCounters> {
    // SAFETY: a per-CPU map value, valid for this program run and not shared with other CPUs.
    SG_COUNTERS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's scratch value.
#[inline(always)]
pub fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: a per-CPU map value, exclusively ours during this program run; the program never
    // holds two of these references across a point where the other is used.
    SG_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// This CPU's event token bucket.
#[inline(always)]
pub fn event_bucket() -> Option<&'static mut TokenBucket> {
    // SAFETY: as for `counters`.
    SG_EVBUCKET.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// The counters of rule `id` on this CPU, created zeroed on its first match. BPF_NOEXIST: when
/// another CPU created them first, the lookup after the failed insert finds its entry. A BPF
/// function of its own: both paths (found, created) return into one verifier state, so the rest
/// of the verdict is verified once.
#[inline(never)]
pub fn rule_counters(id: u32) -> Option<&'static mut RuleCounters> {
    let p = match SG_RULE_STATS.get_ptr_mut(&id) {
        Some(p) => p,
        None => {
            let _ = SG_RULE_STATS.insert(&id, &RuleCounters::default(), BPF_NOEXIST as u64);
            SG_RULE_STATS.get_ptr_mut(&id)?
        }
    };
    // SAFETY: this CPU's slot of a per-CPU map value, exclusively ours during this program run;
    // the kernel frees a deleted entry only after an RCU grace period.
    Some(unsafe { &mut *p })
}

/// The counters of rule `id`, if it has some already (no insert).
#[inline(always)]
pub fn existing_rule_counters(id: u32) -> Option<&'static mut RuleCounters> {
    // SAFETY: as for `rule_counters`.
    SG_RULE_STATS.get_ptr_mut(&id).map(|p| unsafe { &mut *p })
}

/// Counts a matched INVITE of the source's customer (the scratch map's `customer`; nothing when
/// it is none) under rule
/// `id`, and a call when `new_call` is 1. What the rule did with them follows from its action
/// and the mode, so only these two are counted (userspace derives drops and rejects). A pair
/// that cannot be counted (the map is full) is counted as `customer_counters_full`. A BPF
/// function of its own.
#[inline(never)]
pub fn count_customer(g: &mut GlobalCounters, id: u32, new_call: u64) {
    let customer = scratch().map_or(0, |s| s.customer);
    if customer >> 63 == 0 {
        return;
    }
    let key = customer_rule_key(customer as u32, id);
    let p = match SG_CUST_STATS.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let _ = SG_CUST_STATS.insert(&key, &RuleCounters::default(), BPF_NOEXIST as u64);
            match SG_CUST_STATS.get_ptr_mut(&key) {
                Some(p) => p,
                None => {
                    g.bump(guard_common::Counter::CustomerCountersFull);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's slot of a per-CPU map value, exclusively ours during this run.
    let c = unsafe { &mut *p };
    c.matched += 1;
    c.calls += new_call & 1;
}

/// Whether `port` is a configured SIP port.
#[inline(always)]
pub fn is_sip_port(port: u16) -> bool {
    matches!(SG_SIP_PORTS.get(port as u32), Some(&v) if v != 0)
}

/// The live config slot: its index and settings. The selector is read once per decision; the
/// stages after it use the index it gave (see [`Scratch::slot`]).
#[inline(always)]
pub fn config() -> Option<(u32, &'static Config)> {
    let slot = SG_CONFIG.get(CONFIG_SELECTOR)?.active & 1;
    Some((slot, SG_CONFIG.get(slot)?))
}

/// Counters for a decision without its own: zeroed, in this CPU's scratch value (not on the
/// 512-byte stack).
#[inline(always)]
pub fn spare_counters() -> Option<&'static mut RuleCounters> {
    let s = scratch()?;
    s.spare = RuleCounters::default();
    Some(&mut s.spare)
}

/// The quarantine settings of config slot `slot`.
#[inline(always)]
pub fn limit_config(slot: u32) -> Option<&'static LimitConfig> {
    SG_LIMIT_CONFIG.get(slot & 1)
}

/// The slot this decision uses (see [`Scratch::slot`]).
#[inline(always)]
fn decision_slot() -> u32 {
    scratch().map_or(0, |s| s.slot & 1)
}

/// The customer that `src` (arriving on outer VLAN `vlan`) belongs to in the live slot, packed
/// by [`pack_customer`] (0: none). The longer of the VLAN-specific and the any-VLAN match wins;
/// on a tie, the VLAN-specific one. A BPF function of its own, returning a scalar: its paths
/// join in one verifier state at the return.
#[inline(never)]
pub fn customer(vlan: u32, src: &Endpoint) -> u64 {
    let customers = if decision_slot() == 0 {
        &SG_CUST_A
    } else {
        &SG_CUST_B
    };
    let bits = if src.family == 4 { 32 } else { 128 };
    let (len, data) = customer_key(0, src.family, &src.addr, bits);
    let mut key = Key::new(len, data);
    let any = customers.get(&key);
    let tagged = if vlan != 0 {
        key.data.scope = customer_key(vlan as u16, src.family, &src.addr, bits)
            .1
            .scope;
        customers.get(&key)
    } else {
        None
    };
    match (tagged, any) {
        (Some(t), Some(a)) if a.prefix_len > t.prefix_len => pack_customer(a),
        (Some(t), _) => pack_customer(t),
        (None, Some(a)) => pack_customer(a),
        (None, None) => 0,
    }
}

/// The rule that decides a number whose global-rules key is `key`, for the source's customer
/// (the scratch map's `customer`, from [`customer`]; 0 for none): the longest match among the customer's policy's rules and,
/// when the policy inherits them (or the customer has no policy), the global rules; on a tie,
/// the policy's rule. Packed as bit 63 (found), the trie flags in bits 40..48, the action in
/// bits 32..40, the id in 0..32; 0
/// when no rule matches. A BPF function of its own, returning a scalar, like [`customer`].
#[inline(never)]
pub fn find_rule(key: &LookupKey) -> u64 {
    let Some(s) = scratch() else {
        return 0;
    };
    let rules = if s.slot & 1 == 0 {
        &SG_RULES_A
    } else {
        &SG_RULES_B
    };
    let customer = s.customer;
    let global = Key::new(key.prefix_len, key.data);
    let policy = (customer >> 32) as u16;
    if customer >> 63 == 0 || policy == GLOBAL_POLICY {
        return rules.get(&global).map_or(0, pack_rule);
    }
    let mut own = Key::new(key.prefix_len, key.data);
    let p = policy.to_be_bytes();
    own.data[0] = p[0];
    own.data[1] = p[1];
    let own = rules.get(&own);
    // A policy that does not inherit: the global trie scope is not looked at.
    if (customer >> 48) as u8 & CUSTOMER_FLAG_INHERIT == 0 {
        return own.map_or(0, pack_rule);
    }
    match (own, rules.get(&global)) {
        (Some(o), Some(g)) if g.prefix_len > o.prefix_len => pack_rule(g),
        (Some(o), _) => pack_rule(o),
        (None, Some(g)) => pack_rule(g),
        (None, None) => 0,
    }
}

#[inline(always)]
fn pack_rule(v: &RuleValue) -> u64 {
    1 << 63 | (v.flags as u64) << 40 | (v.action as u64) << 32 | v.id as u64
}

/// A customer trie value as one scalar: bit 63 set, the id in bits 0..32, the policy in 32..48,
/// the flags in 48..56.
#[inline(always)]
fn pack_customer(v: &CustomerValue) -> u64 {
    1 << 63 | (v.flags as u64) << 48 | (v.policy as u64) << 32 | v.id as u64
}
