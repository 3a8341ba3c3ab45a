//! The program's maps, and typed access to the per-CPU values it works in.

// Keys by reference, as in `verdict` (by value they cost verifier instructions).
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use guard_common::{
    CONFIG_SELECTOR, CONFIG_SLOTS, CallSeen, Config, EVENT_RING_BYTES, Endpoint, GlobalCounters,
    HDR_WINDOW, HeaderScanner, MAX_CALLS, MAX_RULES, MAX_SOURCES, RuleCounters, RuleKeyData,
    RuleValue, Scanner, SourceKey, SourceStats, TokenBucket, WINDOW,
};

use crate::layers::Frame;

// Two rule tries, double-buffered with the config slots: slot 0 uses A, slot 1 uses B.
// MAX_RULES is the default size; userspace sets `max_rules` at load (map_max_entries).
#[map(name = "SG_RULES_A")]
static SG_RULES_A: LpmTrie<RuleKeyData, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "SG_RULES_B")]
static SG_RULES_B: LpmTrie<RuleKeyData, RuleValue> = LpmTrie::with_max_entries(MAX_RULES, 0);

/// Rule id -> per-CPU counters, created on the rule's first match (no preallocation), so its
/// memory follows the rules that see traffic, not max_rules x CPUs.
#[map(name = "SG_RULE_STATS")]
static SG_RULE_STATS: PerCpuHashMap<u32, RuleCounters> =
    PerCpuHashMap::with_max_entries(MAX_RULES, BPF_F_NO_PREALLOC);

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
}

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

/// Whether `port` is a configured SIP port.
#[inline(always)]
pub fn is_sip_port(port: u16) -> bool {
    matches!(SG_SIP_PORTS.get(port as u32), Some(&v) if v != 0)
}

/// The live config slot: its settings and the rule trie that goes with it.
#[inline(always)]
pub fn config() -> Option<(&'static Config, &'static LpmTrie<RuleKeyData, RuleValue>)> {
    let slot = SG_CONFIG.get(CONFIG_SELECTOR)?.active & 1;
    let rules = if slot == 0 { &SG_RULES_A } else { &SG_RULES_B };
    Some((SG_CONFIG.get(slot)?, rules))
}
