//! sipguard's XDP program: drops SIP INVITEs whose Request-URI dials a blocked destination.
//!
//! One small function per layer: `l2` (Ethernet, up to two VLAN tags), `l3` (IPv4 with options,
//! IPv6 with extension headers), `l4` (UDP to a SIP port), `sip` (request line and number, using
//! the scanner from guard-common), then `verdict` (rule lookup and counters).
//!
//! Anything that cannot be parsed passes and is counted. The program never loops unbounded: the
//! IPv6 header walk is a constant-bounded loop and the SIP scanner runs under `bpf_loop` with a
//! constant iteration budget.
#![no_std]
#![no_main]

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::generated::{
        bpf_ktime_get_boot_ns, bpf_loop, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use guard_common::{
    Action, CONFIG_FLAG_DEBUG_LOG, CONFIG_FLAG_NO_CALLS, CONFIG_SELECTOR, CONFIG_SLOTS,
    COUNTER_SLOTS, CallSeen, Config, Counter, EVENT_DROP, EVENT_RING_BYTES, EVENT_WOULD_DROP,
    Event, GlobalCounters, HDR_MAX_STEPS, HDR_WINDOW, Headers, MAX_CALLS, MAX_RULES, MAX_SOURCES,
    MAX_STEPS, Mode, Parsed, RuleCounters, RuleKeyData, RuleValue, Scratch, SourceKey, SourceStats,
    TokenBucket, WINDOW, sip::ByteSource,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr, vlan::VlanHdr};

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
static SG_CALLS: LruHashMap<u64, CallSeen> = LruHashMap::with_max_entries(MAX_CALLS, 0);

/// (rule, source address) -> packets, calls, first and last seen.
#[map(name = "SG_SOURCES")]
static SG_SOURCES: LruHashMap<SourceKey, SourceStats> =
    LruHashMap::with_max_entries(MAX_SOURCES, 0);

/// Drop / would-drop events of new calls, for the daemon.
#[map(name = "SG_EVENTS")]
static SG_EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Per-CPU token bucket that bounds the event rate (config `event_rate` / `event_burst`).
#[map(name = "SG_EVBUCKET")]
static SG_EVBUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (hop-by-hop, destination options, routing,
/// fragment, destination options, plus one spare).
const MAX_IPV6_EXT: usize = 6;

/// Why a frame is passed without a verdict; each maps to a global counter.
#[derive(Clone, Copy)]
#[repr(u32)]
enum Skip {
    Truncated = 0,
    NotUdp = 1,
    NonFirstFragment = 2,
    Ipv6ExtLimit = 3,
    NotSipPort = 4,
}

impl Skip {
    /// The inverse of `skip as u32 + 1`; 0 means "not skipped".
    #[inline(always)]
    fn from_code(code: u32) -> Option<Self> {
        match code {
            1 => Some(Self::Truncated),
            2 => Some(Self::NotUdp),
            3 => Some(Self::NonFirstFragment),
            4 => Some(Self::Ipv6ExtLimit),
            5 => Some(Self::NotSipPort),
            _ => None,
        }
    }
}

type Counters = GlobalCounters;

#[inline(always)]
fn bump(c: &mut Counters, which: Counter) {
    let i = which as usize;
    if i < COUNTER_SLOTS as usize {
        c.counters[i] += 1;
    }
}

// `frags`: multi-buffer aware (kernel 6.0+), so the program attaches to jumbo-MTU interfaces and
// test runs take frames larger than a page. Headers are read from the linear part; the payload
// is copied with bpf_xdp_load_bytes, which spans fragments.
#[xdp(frags)]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let Some(counters) = SG_COUNTERS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: a per-CPU map value, valid for this program run and not shared with other CPUs.
    let c = unsafe { &mut *counters };
    bump(c, Counter::Frames);
    try_sipguard(&ctx, c)
}

/// The baseline for benchmarks: does nothing.
#[xdp(frags)]
pub fn sipguard_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn try_sipguard(ctx: &XdpContext, c: &mut Counters) -> u32 {
    let Some(s) = SG_SCRATCH.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run. The layers write
    // addresses, ports and VLAN straight into it: a struct on the stack would cost a
    // byte-loop memset per frame, and the BPF stack (512 bytes for the whole call chain) has
    // no room for it next to the SIP stage anyway. Every field the SIP stage reads is
    // overwritten by the layer that owns it, so nothing of an earlier frame leaks in.
    let rc = headers_l2_l4(ctx, unsafe { &mut *s });
    if let Some(skip) = Skip::from_code(rc & 0xff) {
        return skipped(c, skip);
    }
    bump(c, Counter::SipCandidates);
    if rc & LYING_LEN != 0 {
        // A length field claims more than the frame holds: inspect only what is there.
        bump(c, Counter::Truncated);
    }
    sip_stage(ctx, c)
}

/// The SIP stage, entered with the parsed frame in the scratch map (see `Scratch`).
#[inline(never)]
fn sip_stage(ctx: &XdpContext, c: &mut Counters) -> u32 {
    let Some(s) = SG_SCRATCH.get_ptr(0) else {
        return XDP_PASS;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let s = unsafe { &*s };
    // Masks, not comparisons: LLVM merges two range checks into one on `off | len`, from which
    // the verifier learns no bound for either. The payload starts within the first 16 KiB (the
    // headers end there); the verifier marks a packet range only while the pointer's maximum
    // offset stays within MAX_PACKET_OFF (0xffff), so a 0xffff mask would not do.
    let (off, len) = (
        (s.payload_off & 0x3fff) as usize,
        (s.payload_len & 0xffff) as usize,
    );
    let payload = Payload {
        off,
        len,
        lying_len: false,
    };
    sip(ctx, c, &payload)
}

/// Layers 2 to 4, in their own BPF function: its stack frame and the SIP stage's are never
/// live at the same time (the verifier limits the whole call chain to 512 bytes).
///
/// Returns the payload in `meta` and 0 (or [`LYING_LEN`]), or a `Skip` code: BPF functions
/// return one register.
#[inline(never)]
fn headers_l2_l4(ctx: &XdpContext, meta: &mut Meta) -> u32 {
    let parsed = l2(ctx, meta)
        .and_then(|(proto, off)| l3(ctx, proto, off, meta))
        .and_then(|l4| l4_udp(ctx, l4, meta));
    match parsed {
        Ok(p) => {
            meta.payload_off = p.off as u32;
            meta.payload_len = p.len as u32;
            if p.lying_len { LYING_LEN } else { 0 }
        }
        Err(skip) => skip as u32 + 1,
    }
}

/// Flag in `headers_l2_l4`'s result: an IP or UDP length claimed more than the frame holds.
const LYING_LEN: u32 = 0x100;

/// Who talks to whom (addresses, ports, VLAN) and where the payload is: the layers fill it in,
/// in the scratch map.
type Meta = Scratch;

#[inline(always)]
fn skipped(c: &mut Counters, skip: Skip) -> u32 {
    match skip {
        Skip::Truncated => bump(c, Counter::Truncated),
        Skip::NotUdp => bump(c, Counter::NotUdp),
        Skip::NonFirstFragment => bump(c, Counter::NonFirstFragments),
        Skip::Ipv6ExtLimit => bump(c, Counter::Ipv6ExtLimit),
        Skip::NotSipPort => {}
    }
    XDP_PASS
}

/// A bounds-checked pointer into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

// ---------------------------------------------------------------------------------------------
// Layer 2: Ethernet II, then up to two VLAN tags (802.1Q or 802.1ad, in any order).

#[inline(always)]
fn l2(ctx: &XdpContext, meta: &mut Meta) -> Result<(u16, usize), Skip> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at; unaligned read of a plain u16.
    let mut proto = u16::from_be(unsafe { ptr::read_unaligned(ptr::addr_of!((*eth).ether_type)) });
    let mut off = EthHdr::LEN;
    let mut tags = 0;
    meta.vlan = 0;
    while tags < 2 && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        let vlan: *const VlanHdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
        // SAFETY: bounds-checked by ptr_at.
        let (tci, et) = unsafe {
            (
                (*vlan).tci,
                ptr::read_unaligned(ptr::addr_of!((*vlan).ether_type)),
            )
        };
        if tags == 0 {
            meta.vlan = u16::from_be_bytes(tci) & 0x0fff;
        }
        proto = u16::from_be(et);
        off += VlanHdr::LEN;
        tags += 1;
    }
    Ok((proto, off))
}

// ---------------------------------------------------------------------------------------------
// Layer 3: IPv4 (honouring IHL) and IPv6 (walking the extension headers that may precede UDP).

#[derive(Clone, Copy)]
struct L4 {
    /// Offset of the UDP header.
    off: usize,
    /// Where the IP packet ends, clamped to the frame.
    end: usize,
    /// The IP length claimed more than the frame holds.
    lying_len: bool,
}

#[inline(always)]
fn l3(ctx: &XdpContext, proto: u16, off: usize, meta: &mut Meta) -> Result<L4, Skip> {
    match proto {
        ETH_P_IPV4 => ipv4(ctx, off, meta),
        ETH_P_IPV6 => ipv6(ctx, off, meta),
        _ => Err(Skip::NotUdp),
    }
}

/// Bytes in the frame, all fragments included.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: plain helper call on the program's own context.
    (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize, meta: &mut Meta) -> Result<L4, Skip> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at; every field is a byte or byte array.
    let (vihl, tot_len, frags, proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            (*ip).tot_len,
            (*ip).frags,
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    meta.src.family = 4;
    meta.dst.family = 4;
    meta.src.addr = [u32::from_ne_bytes(src), 0, 0, 0];
    meta.dst.addr = [u32::from_ne_bytes(dst), 0, 0, 0];
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Skip::Truncated);
    }
    // Fragment offset in 8-byte units; non-zero means not the first fragment (RFC 791).
    if u16::from_be_bytes(frags) & 0x1fff != 0 {
        return Err(Skip::NonFirstFragment);
    }
    if proto != IPPROTO_UDP {
        return Err(Skip::NotUdp);
    }
    let tot_len = u16::from_be_bytes(tot_len) as usize;
    let frame = frame_len(ctx);
    if off + ihl > frame || tot_len < ihl {
        return Err(Skip::Truncated);
    }
    let (end, lying_len) = if off + tot_len > frame {
        (frame, true)
    } else {
        (off + tot_len, false)
    };
    Ok(L4 {
        off: off + ihl,
        end,
        lying_len,
    })
}

/// An IPv6 address as four native words (see `Endpoint::addr`).
#[inline(always)]
fn words(a: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize, meta: &mut Meta) -> Result<L4, Skip> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let (vcf0, payload_len, mut next) =
        unsafe { ((*ip).vcf[0], (*ip).payload_len, (*ip).next_hdr) };
    meta.src.family = 6;
    meta.dst.family = 6;
    // SAFETY: bounds-checked by ptr_at (the whole fixed header).
    unsafe {
        meta.src.addr = words((*ip).src_addr);
        meta.dst.addr = words((*ip).dst_addr);
    }
    if vcf0 >> 4 != 6 {
        return Err(Skip::Truncated);
    }
    let frame = frame_len(ctx);
    let payload_len = u16::from_be_bytes(payload_len) as usize;
    let mut cur = off + Ipv6Hdr::LEN;
    // A zero payload length means a jumbogram (RFC 2675): the frame decides.
    let (end, lying_len) = if payload_len == 0 || cur + payload_len > frame {
        (frame, payload_len != 0)
    } else {
        (cur + payload_len, false)
    };
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            IPPROTO_UDP => {
                return Ok(L4 {
                    off: cur,
                    end,
                    lying_len,
                });
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr: *const [u8; 2] = ptr_at(ctx, cur).ok_or(Skip::Truncated)?;
                // SAFETY: bounds-checked by ptr_at.
                let [nh, len] = unsafe { *hdr };
                next = nh;
                cur += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let hdr: *const [u8; 8] = ptr_at(ctx, cur).ok_or(Skip::Truncated)?;
                // SAFETY: bounds-checked by ptr_at.
                let h = unsafe { *hdr };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Err(Skip::NonFirstFragment);
                }
                next = h[0];
                cur += 8;
            }
            _ => return Err(Skip::NotUdp),
        }
        i += 1;
    }
    if next == IPPROTO_UDP {
        return Ok(L4 {
            off: cur,
            end,
            lying_len,
        });
    }
    Err(Skip::Ipv6ExtLimit)
}

// ---------------------------------------------------------------------------------------------
// Layer 4: UDP to a configured SIP port. The UDP length is never trusted beyond the frame.

/// The UDP payload to inspect.
#[derive(Clone, Copy, Default)]
struct Payload {
    off: usize,
    /// Bytes present, never more than the frame (or the IP packet) holds.
    len: usize,
    /// The IP or UDP length claimed more than the frame holds.
    lying_len: bool,
}

#[inline(always)]
fn l4_udp(ctx: &XdpContext, l4: L4, meta: &mut Meta) -> Result<Payload, Skip> {
    let udp: *const UdpHdr = ptr_at(ctx, l4.off).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let (src, dst, len) = unsafe { ((*udp).src, (*udp).dst, (*udp).len) };
    let port = u16::from_be_bytes(dst);
    meta.src.port = u16::from_be_bytes(src);
    meta.dst.port = port;
    match SG_SIP_PORTS.get(port as u32) {
        Some(&v) if v != 0 => {}
        _ => return Err(Skip::NotSipPort),
    }
    let udp_len = u16::from_be_bytes(len) as usize;
    if udp_len < UdpHdr::LEN {
        return Err(Skip::Truncated);
    }
    let off = l4.off + UdpHdr::LEN;
    let claimed = udp_len - UdpHdr::LEN;
    let available = l4.end.saturating_sub(off);
    Ok(Payload {
        off,
        len: if claimed < available {
            claimed
        } else {
            available
        },
        lying_len: l4.lying_len || claimed > available,
    })
}

// ---------------------------------------------------------------------------------------------
// SIP: copy up to WINDOW payload bytes, run the shared scanner under bpf_loop, decide.

/// The copied payload window as the scanner's byte source.
/// (`N` is a power of two: the index mask keeps every access provably in bounds.)
struct Window<'a, const N: usize> {
    buf: &'a [u8; N],
    len: u32,
}

impl<const N: usize> Window<'_, N> {
    /// `len` is clamped to the buffer.
    #[inline(always)]
    fn new(buf: &[u8; N], len: u32) -> Window<'_, N> {
        let len = if (len as usize) < N { len } else { N as u32 };
        Window { buf, len }
    }
}

impl<const N: usize> ByteSource for Window<'_, N> {
    #[inline(always)]
    fn at(&self, i: u32) -> Option<u8> {
        if i < self.len {
            Some(self.buf[(i as usize) & (N - 1)])
        } else {
            None
        }
    }
}

/// Scanner steps per `bpf_loop` callback.
const STEPS_PER_CALL: u32 = 8;

/// `bpf_loop` callback: scanner steps. Returns 1 to stop the loop.
extern "C" fn scan_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = SG_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let s = unsafe { &mut *s };
    let src = Window::new(&s.buf, s.len);
    // STEPS_PER_CALL steps per callback amortise the call; the verifier walks this short
    // constant loop once per callback verification.
    let mut i = 0;
    while i < STEPS_PER_CALL {
        if !s.scanner.step(&src) {
            return 1;
        }
        i += 1;
    }
    0
}

/// Header scanner steps per `bpf_loop` callback. Each unrolled step is verified on its own, so
/// this trades verifier instructions for calls: see the verifier figure in the tests.
const HDR_STEPS_PER_CALL: u32 = 4;

/// `bpf_loop` callback: header scanner steps. Returns 1 to stop the loop.
extern "C" fn hdr_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = SG_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let s = unsafe { &mut *s };
    let src = Window::new(&s.hdr, s.hdr_len);
    let mut i = 0;
    while i < HDR_STEPS_PER_CALL {
        if !s.headers.step(&src) {
            return 1;
        }
        i += 1;
    }
    0
}

/// Copies up to HDR_WINDOW payload bytes and runs the header scanner (Call-ID, To tag).
/// Only INVITEs that matched a rule get here, so the cost is bounded to them.
#[inline(always)]
fn headers(ctx: &XdpContext, payload: &Payload) -> Option<Headers> {
    let s = SG_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let s = unsafe { &mut *s };
    let n = if payload.len > HDR_WINDOW {
        HDR_WINDOW
    } else {
        payload.len
    };
    if n == 0 {
        return None;
    }
    // SAFETY: the helper copies `n` (1..=HDR_WINDOW) bytes into an HDR_WINDOW-byte buffer.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            payload.off as u32,
            s.hdr.as_mut_ptr() as *mut c_void,
            n as u32,
        )
    };
    if rc != 0 {
        return None;
    }
    s.hdr_len = n as u32;
    s.headers.reset();
    // SAFETY: constant iteration budget and a callback with the helper's signature.
    unsafe {
        bpf_loop(
            HDR_MAX_STEPS.div_ceil(HDR_STEPS_PER_CALL),
            hdr_step as *mut c_void,
            ptr::null_mut(),
            0,
        );
    }
    Some(s.headers.finish())
}

#[inline(always)]
fn sip(ctx: &XdpContext, c: &mut Counters, payload: &Payload) -> u32 {
    let (off, len) = (payload.off, payload.len);
    // Cheap pre-filter: only a payload starting with 'I' (INVITE) or CR/LF (keep-alives before
    // a request) can be an INVITE; responses start with 'S', other methods with other letters.
    // Two bytes are read because LLVM turns a one-byte bounds check into `ptr >= end`, from
    // which the verifier learns no range; a payload under two bytes is no INVITE anyway.
    match ptr_at::<[u8; 2]>(ctx, off) {
        // SAFETY: bounds-checked by ptr_at.
        Some(p) => match unsafe { (*p)[0] } {
            b'I' | b'\r' | b'\n' => {}
            _ => return XDP_PASS,
        },
        None => return XDP_PASS,
    }
    let Some(s) = SG_SCRATCH.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let s = unsafe { &mut *s };
    let n = if len > WINDOW { WINDOW } else { len };
    if n == 0 {
        return XDP_PASS;
    }
    // SAFETY: the helper copies `n` (1..=WINDOW) bytes into a WINDOW-byte buffer.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            off as u32,
            s.buf.as_mut_ptr() as *mut c_void,
            n as u32,
        )
    };
    if rc != 0 {
        bump(c, Counter::Truncated);
        return XDP_PASS;
    }
    s.len = n as u32;
    s.scanner.reset();
    // SAFETY: constant iteration budget and a callback with the helper's signature.
    unsafe {
        bpf_loop(
            MAX_STEPS.div_ceil(STEPS_PER_CALL),
            scan_step as *mut c_void,
            ptr::null_mut(),
            0,
        );
    }
    match s.scanner.finish() {
        Parsed::NotInvite => XDP_PASS,
        Parsed::UnparsableUri => {
            bump(c, Counter::Invites);
            bump(c, Counter::UnparsableUri);
            XDP_PASS
        }
        Parsed::NoNumber => {
            bump(c, Counter::Invites);
            bump(c, Counter::NoNumber);
            XDP_PASS
        }
        Parsed::Number { number, complete } => {
            bump(c, Counter::Invites);
            bump(c, Counter::NumbersParsed);
            if !complete {
                bump(c, Counter::NumberIncomplete);
            }
            verdict(ctx, c, &number, payload)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verdict: normalise, longest-prefix match, count.

/// The live config slot: its settings and the rule trie that goes with it.
#[inline(always)]
fn config() -> Option<(&'static Config, &'static LpmTrie<RuleKeyData, RuleValue>)> {
    let slot = SG_CONFIG.get(CONFIG_SELECTOR)?.active & 1;
    let rules = if slot == 0 { &SG_RULES_A } else { &SG_RULES_B };
    Some((SG_CONFIG.get(slot)?, rules))
}

#[inline(always)]
fn verdict(
    ctx: &XdpContext,
    c: &mut Counters,
    number: &guard_common::Number,
    payload: &Payload,
) -> u32 {
    let Some((cfg, rules)) = config() else {
        return XDP_PASS;
    };
    let (domain, normalized) = cfg.intl_prefixes.normalize(number);
    let lk = normalized.key(domain);
    let key = Key::new(lk.prefix_len, lk.data);
    let Some(rule) = rules.get(&key) else {
        return XDP_PASS;
    };
    let (id, action) = (rule.id, rule.action);
    if cfg.flags & CONFIG_FLAG_DEBUG_LOG != 0 {
        // Off by default (`kernel_debug_log` in the config): a log record per matched INVITE.
        debug!(ctx, "sipguard: rule {} matched, action {}", id, action);
    }
    let Some(stats) = rule_stats(id) else {
        // The counter map is full (or out of memory): the verdict still stands.
        return decide(c, cfg, action, &mut RuleCounters::default());
    };
    stats.matched += 1;
    if cfg.flags & CONFIG_FLAG_NO_CALLS != 0 {
        return decide(c, cfg, action, stats);
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let new_call = count_call(ctx, c, stats, id, payload, now);
    track_source(id, new_call, now);
    let rc = decide(c, cfg, action, stats);
    if new_call {
        let verdict = if rc == XDP_DROP {
            EVENT_DROP
        } else if matches!(
            Action::from_u8(action),
            Some(Action::Block | Action::Monitor)
        ) {
            EVENT_WOULD_DROP
        } else {
            0
        };
        if verdict != 0 {
            emit_event(c, cfg, &normalized, domain as u8, id, action, verdict, now);
        }
    }
    rc
}

/// The rule's counters on this CPU, created zeroed on its first match. BPF_NOEXIST: when
/// another CPU created them first, the lookup after the failed insert finds its entry.
/// A BPF function of its own: both paths (found, created) return into one verifier state, so
/// the rest of `verdict` is verified once (inlined, the program took 78k instructions, not 72k).
#[inline(never)]
fn rule_stats(id: u32) -> Option<&'static mut RuleCounters> {
    let p = match SG_RULE_STATS.get_ptr_mut(id) {
        Some(p) => p,
        None => {
            let _ = SG_RULE_STATS.insert(id, RuleCounters::default(), BPF_NOEXIST as u64);
            SG_RULE_STATS.get_ptr_mut(id)?
        }
    };
    // SAFETY: this CPU's slot of a per-CPU map value, exclusively ours during this program
    // run; the kernel frees a deleted entry only after an RCU grace period.
    Some(unsafe { &mut *p })
}

/// Calls, not packets: a new initial INVITE counts as a call; one whose Call-ID was seen is a
/// retransmission; one with a To tag is a re-INVITE. Returns whether this is a new call.
#[inline(always)]
fn count_call(
    ctx: &XdpContext,
    c: &mut Counters,
    stats: &mut RuleCounters,
    id: u32,
    payload: &Payload,
    now: u64,
) -> bool {
    let h = headers(ctx, payload).unwrap_or(Headers {
        call_hash: None,
        to_tag: false,
    });
    if h.to_tag {
        stats.reinvites += 1;
        bump(c, Counter::Reinvites);
        return false;
    }
    let Some(hash) = h.call_hash else {
        // Nothing to tell retransmissions apart: every packet is a call (an upper bound).
        bump(c, Counter::NoCallId);
        stats.calls += 1;
        bump(c, Counter::Calls);
        return true;
    };
    if SG_CALLS.get_ptr(&hash).is_some() {
        bump(c, Counter::Retransmissions);
        return false;
    }
    let seen = CallSeen {
        rule_id: id,
        _pad: 0,
        first_seen_ns: now,
    };
    // BPF_NOEXIST: another CPU that raced us with the same call wins, and we count nothing.
    if SG_CALLS.insert(&hash, &seen, 1).is_err() {
        bump(c, Counter::Retransmissions);
        return false;
    }
    stats.calls += 1;
    bump(c, Counter::Calls);
    true
}

/// Per rule and source address: packets, calls, first and last seen.
#[inline(always)]
fn track_source(id: u32, new_call: bool, now: u64) {
    let Some(s) = SG_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let src = unsafe { &(*s).src };
    let key = SourceKey {
        rule_id: id,
        family: src.family as u32,
        addr: src.addr,
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

/// Sends a drop / would-drop event for a new call, within the per-CPU token bucket.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_event(
    c: &mut Counters,
    cfg: &Config,
    number: &guard_common::Number,
    domain: u8,
    id: u32,
    action: u8,
    verdict: u8,
    now: u64,
) {
    let rate = cfg.event_rate as u64;
    let Some(b) = SG_EVBUCKET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let b = unsafe { &mut *b };
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
        bump(c, Counter::EventsSuppressed);
        return;
    }
    let Some(meta) = SG_SCRATCH.get_ptr(0) else {
        return;
    };
    // SAFETY: per-CPU map value, exclusively ours during this program run.
    let meta = unsafe { &*meta };
    b.tokens_milli -= 1000;
    // Written straight into the ring buffer: an Event on the stack would not fit the 512-byte
    // BPF stack next to everything else on this path.
    let Some(mut entry) = SG_EVENTS.reserve::<Event>(0) else {
        bump(c, Counter::EventsSuppressed);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively ours ring-buffer record of Event's size.
    unsafe {
        (*ev).time_ns = now;
        (*ev).src = meta.src;
        (*ev).dst = meta.dst;
        (*ev).number_hi = number.hi;
        (*ev).number_lo = number.lo;
        (*ev).rule_id = id;
        (*ev).vlan = meta.vlan;
        (*ev).number_len = number.len;
        (*ev).domain = domain;
        (*ev).action = action;
        (*ev).verdict = verdict;
        (*ev)._pad = [0; 6];
    }
    entry.submit(0);
    bump(c, Counter::EventsSent);
}

#[inline(always)]
fn decide(c: &mut Counters, cfg: &Config, action: u8, stats: &mut RuleCounters) -> u32 {
    match Action::from_u8(action) {
        Some(Action::Block) if cfg.mode == Mode::Enforce as u32 => {
            bump(c, Counter::Dropped);
            stats.dropped += 1;
            XDP_DROP
        }
        Some(Action::Block) | Some(Action::Monitor) => {
            bump(c, Counter::WouldDrop);
            stats.would_drop += 1;
            XDP_PASS
        }
        Some(Action::Allow) => {
            bump(c, Counter::AllowedByException);
            XDP_PASS
        }
        None => XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: nothing in the program can panic (checked indexing only on masked indices).
    // If LLVM ever left a panic path in, the verifier would reject the loop below, so a panic
    // path is a load-time error, never a runtime one.
    loop {}
}
