//! The SIP stage: is this an INVITE, and what number does its Request-URI dial? Also the header
//! scan that tells calls from retransmissions. Both run the scanners from guard-common (the same
//! code the host runs) over a copy of the payload, under `bpf_loop`.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        xdp_md,
    },
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use guard_common::{
    ByteSource, CONFIG_FLAG_PASS_TINY_FRAGMENTS, Counter, GlobalCounters, HDR_MAX_STEPS,
    HDR_WINDOW, Headers, MAX_STEPS, Mode, Parsed, TINY_FRAGMENT_PAYLOAD, WINDOW, swar,
};

use crate::{
    layers::{self, FRAME_FIRST_FRAGMENT, FRAME_TCP, Frame, ptr_at},
    maps, verdict,
};

/// The transport stage, a BPF function of its own: entered with the frame (layers 2 and 3 and
/// a SIP destination port) in the scratch map, so that every header layout reaches it in the
/// same verifier state and it is verified once. Parses the UDP or TCP header, then [`inspect`].
#[inline(never)]
pub fn l4(ctx: &XdpContext, c: &mut GlobalCounters) -> u32 {
    let Some(s) = maps::scratch() else {
        return XDP_PASS;
    };
    let mut frame = s.frame;
    match layers::transport(ctx, &mut frame) {
        Ok(()) => inspect(ctx, c, frame),
        Err(layers::Skip::TinyFirstFragment) => tiny_fragment(c),
        Err(skip) => {
            if let Some(counter) = skip.counter() {
                c.bump(counter);
            }
            XDP_PASS
        }
    }
}

/// A UDP datagram or TCP segment to a SIP port: counts it, and goes on to the SIP stage only
/// when its first byte can start an INVITE. Everything else (responses, other methods, RTP on a
/// SIP port, TCP handshakes and continuations) leaves here, having cost two reads of the packet.
/// A tiny first fragment leaves here too, dropped unless configured to pass.
#[inline(always)]
fn inspect(ctx: &XdpContext, c: &mut GlobalCounters, frame: Frame) -> u32 {
    if frame.flags & FRAME_FIRST_FRAGMENT != 0 && (frame.payload_len as u32) < TINY_FRAGMENT_PAYLOAD
    {
        return tiny_fragment(c);
    }
    let starts_request = may_be_invite(ctx, &frame);
    if frame.flags & FRAME_TCP != 0 {
        // Best effort, no reassembly: a segment is judged only when it starts a request.
        if !starts_request {
            c.bump(Counter::TcpUninspected);
            return XDP_PASS;
        }
        c.bump(Counter::TcpInspected);
    }
    c.bump(Counter::SipCandidates);
    if frame.lying_len {
        // A length field claims more than the frame holds: inspect only what is there.
        c.bump(Counter::Truncated);
    }
    if !starts_request {
        return XDP_PASS;
    }
    let Some(s) = maps::scratch() else {
        return XDP_PASS;
    };
    s.frame = frame;
    stage(ctx, c)
}

/// Only a payload starting with `I` (INVITE) or CR/LF (keep-alives before a request) can be an
/// INVITE; responses start with `S`, other methods with other letters.
#[inline(always)]
fn may_be_invite(ctx: &XdpContext, frame: &Frame) -> bool {
    // Two bytes are read because LLVM turns a one-byte bounds check into `ptr >= end`, from
    // which the verifier learns no range; a payload under two bytes is no INVITE anyway.
    match ptr_at::<[u8; 2]>(ctx, frame.payload_off as usize) {
        // SAFETY: bounds-checked by ptr_at.
        Some(p) => matches!(unsafe { (*p)[0] }, b'I' | b'\r' | b'\n'),
        None => false,
    }
}

/// A first fragment to a SIP port too short to hold a request line and its number (no SIP stack
/// sends one: fragmentation cuts at the path MTU). Counted; dropped unless the config says pass
/// (or the mode is monitor).
#[inline(never)]
pub fn tiny_fragment(c: &mut GlobalCounters) -> u32 {
    c.bump(Counter::TinyFirstFragments);
    match maps::config() {
        Some((_, cfg))
            if cfg.flags & CONFIG_FLAG_PASS_TINY_FRAGMENTS == 0
                && cfg.mode == Mode::Enforce as u32 =>
        {
            XDP_DROP
        }
        _ => XDP_PASS,
    }
}

/// The SIP stage, in its own BPF function: entered with the frame in the scratch map, so that
/// every header layout reaches it in the same verifier state (it is verified once), and its stack
/// frame is never live together with the layers' (the call chain has 512 bytes of stack).
#[inline(never)]
fn stage(ctx: &XdpContext, c: &mut GlobalCounters) -> u32 {
    let Some(s) = maps::scratch() else {
        return XDP_PASS;
    };
    s.copied = 0;
    if !copy_payload(ctx, s, FAST_WINDOW) {
        c.bump(Counter::Truncated);
        return XDP_PASS;
    }
    if s.copied == 0 {
        return XDP_PASS;
    }
    if matches!(s.payload[0] as u8, b'\r' | b'\n') {
        // Keep-alives before the request line: skipped, however many, so that they do not
        // count against the window. Rare, so the cost is theirs alone.
        let mut skip = SkipCtx { xdp: ctx.ctx };
        // SAFETY: constant iteration budget, a callback with the helper's signature, and a
        // context on this stack frame that outlives the loop.
        unsafe {
            bpf_loop(
                SKIP_CALLS,
                skip_step as *mut c_void,
                (&raw mut skip).cast(),
                0,
            );
        }
        s.copied = 0;
        let first_fragment = s.frame.flags & FRAME_FIRST_FRAGMENT != 0;
        if first_fragment && (s.frame.payload_len as u32) < TINY_FRAGMENT_PAYLOAD {
            return tiny_fragment(c);
        }
        if !copy_payload(ctx, s, FAST_WINDOW) {
            c.bump(Counter::Truncated);
            return XDP_PASS;
        }
        if s.copied == 0 {
            return XDP_PASS;
        }
    }
    s.scanner.reset();
    // The usual request line is decided without a single step; any other goes step by step.
    let src = Window::new(&s.payload, s.copied, &raw mut s.index);
    if !s.scanner.fast(&src) {
        if !copy_payload(ctx, s, WINDOW) {
            c.bump(Counter::Truncated);
            return XDP_PASS;
        }
        s.scanner.reset();
        // SAFETY: constant iteration budget and a callback with the helper's signature.
        unsafe {
            bpf_loop(
                MAX_STEPS.div_ceil(URI_STEPS_PER_CALL),
                uri_step as *mut c_void,
                ptr::null_mut(),
                0,
            );
        }
    }
    match s.scanner.finish() {
        Parsed::NotInvite => XDP_PASS,
        Parsed::UnparsableUri => {
            c.bump(Counter::Invites);
            c.bump(Counter::UnparsableUri);
            XDP_PASS
        }
        Parsed::NoNumber => {
            c.bump(Counter::Invites);
            c.bump(Counter::NoNumber);
            XDP_PASS
        }
        Parsed::Unresolved { .. } => {
            c.bump(Counter::Invites);
            c.bump(Counter::NumberIncomplete);
            if cut_fragment(s) {
                return tiny_fragment(c);
            }
            verdict::unresolved(c)
        }
        Parsed::Number { number, complete } => {
            c.bump(Counter::Invites);
            c.bump(Counter::NumbersParsed);
            // For the verdict, through the map value: `complete` itself is dead after the
            // branch below, so both of its paths reach the verdict in one verifier state.
            s.incomplete = !complete as u32;
            if !complete {
                c.bump(Counter::NumberIncomplete);
                if cut_fragment(s) {
                    return tiny_fragment(c);
                }
            }
            verdict::decide(ctx, c, &number)
        }
    }
}

/// A first fragment whose data (not the window) ended inside the Request-URI: as tiny as one
/// that ends before it.
#[inline(always)]
fn cut_fragment(s: &maps::Scratch) -> bool {
    s.frame.flags & FRAME_FIRST_FRAGMENT != 0
        && s.copied == s.frame.payload_len as u32
        && (s.frame.payload_len as usize) < WINDOW
}

/// Bytes of keep-alives one `skip_step` call looks at.
const SKIP_CHUNK: u32 = 64;
/// `skip_step` calls: enough for the largest payload (64 KiB) of CR/LF.
const SKIP_CALLS: u32 = 65536 / SKIP_CHUNK;

/// What `skip_step` needs besides the scratch map: the program's context, for the copy helper.
#[repr(C)]
struct SkipCtx {
    xdp: *mut xdp_md,
}

/// `bpf_loop` callback: skips up to 64 bytes of leading CR/LF of the scratch frame's payload
/// (moves its start, shortens it). Returns 1 to stop the loop: at the first other byte, at the
/// end of the payload, or when the copy fails.
extern "C" fn skip_step(_index: u32, cb: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else {
        return 1;
    };
    let left = s.frame.payload_len as u32;
    if left == 0 {
        return 1;
    }
    let n = if left < SKIP_CHUNK { left } else { SKIP_CHUNK };
    let to = s.payload.as_mut_ptr().cast();
    // SAFETY: `cb` is the caller's SkipCtx; the helper copies at most 64 bytes into the payload
    // buffer (HDR_WINDOW + 8 bytes), scratch until the request line is copied over them.
    let copied = unsafe {
        let xdp = (*(cb as *const SkipCtx)).xdp;
        bpf_xdp_load_bytes(xdp, s.frame.payload_off as u32, to, n) == 0
    };
    if !copied {
        return 1;
    }
    let mut skipped = 0u32;
    let mut i = 0;
    while i < (SKIP_CHUNK / 8) as usize {
        let k = swar::first(non_crlf(s.payload[i]));
        skipped += k;
        if k < 8 {
            break;
        }
        i += 1;
    }
    let k = if skipped < n { skipped } else { n };
    s.frame.payload_off += k as u16;
    s.frame.payload_len -= k as u16;
    if k < n { 1 } else { 0 }
}

/// The high bit of every byte of `w` that is neither CR nor LF (exact in every byte).
#[inline(always)]
fn non_crlf(w: u64) -> u64 {
    !(swar::eq_exact(w, b'\r') | swar::eq_exact(w, b'\n')) & swar::HIGHS
}

/// Bytes copied first: enough for the usual request line (`Scanner::fast`).
const FAST_WINDOW: usize = 64;

/// Makes sure the payload's first `upto` bytes (FAST_WINDOW, WINDOW or HDR_WINDOW), or all of a
/// shorter payload, are in the scratch copy. The copy grows in three pieces with constant
/// offsets (what the verifier can check), and no byte is copied twice. Returns false when the
/// frame would not give the bytes its lengths promised.
#[inline(always)]
pub fn copy_payload(ctx: &XdpContext, s: &mut maps::Scratch, upto: usize) -> bool {
    let frame = s.frame;
    let len = frame.payload_len as u32;
    let mut lo = 0u32;
    for hi in [FAST_WINDOW, WINDOW, HDR_WINDOW] {
        if hi > upto {
            break;
        }
        let end = if len < hi as u32 { len } else { hi as u32 };
        if end <= lo {
            break;
        }
        if s.copied < end {
            let to = s.payload[lo as usize / 8..].as_mut_ptr().cast();
            // SAFETY: copies `end - lo` (at most `hi - lo`) bytes to offset `lo` of a buffer of
            // HDR_WINDOW + 8 bytes.
            if !unsafe { layers::load(ctx, frame.payload_off as u32 + lo, to, end - lo) } {
                return false;
            }
            s.copied = end;
        }
        lo = hi as u32;
    }
    true
}

/// A copied payload window (`WORDS - 1` words of bytes and a spare word) as the scanners' byte
/// source. `WORDS - 2` masks every word index, so every access is inside the buffer whatever
/// `len` says; the copy that fills the buffer never writes more than `(WORDS - 1) * 8` bytes.
struct Window<'a, const WORDS: usize> {
    words: &'a [u64; WORDS],
    len: u32,
    /// A word of the scratch value that every index passes through (see [`Window::launder`]).
    cell: *mut u32,
}

impl<'a, const WORDS: usize> Window<'a, WORDS> {
    #[inline(always)]
    fn new(words: &'a [u64; WORDS], len: u32, cell: *mut u32) -> Self {
        Window { words, len, cell }
    }

    /// `i`, written to and read back from the map value. The verifier does not follow values
    /// through map memory, so the bounds check of a word access (which makes the index
    /// "precise") does not reach back into the scanner's position: scanner states that differ
    /// only in their position stay equal for pruning, and a step with loops is verified in
    /// linear, not exponential, time.
    #[inline(always)]
    fn launder(&self, i: u32) -> usize {
        // SAFETY: `cell` points into this CPU's scratch value, valid for the program run.
        unsafe {
            ptr::write_volatile(self.cell, i);
            ptr::read_volatile(self.cell) as usize
        }
    }

    /// The word index mask. `len` is deliberately not clamped to the buffer: from a clamp LLVM
    /// proves indices in range and drops the mask, and the verifier, which tracked the comparison
    /// on another register, then sees an unbounded access.
    #[inline(always)]
    const fn mask() -> usize {
        WORDS - 2
    }
}

impl<const WORDS: usize> ByteSource for Window<'_, WORDS> {
    #[inline(always)]
    fn at(&self, i: u32) -> Option<u8> {
        if i >= self.len {
            return None;
        }
        let w = self.words[(self.launder(i) >> 3) & Self::mask()];
        Some((w >> ((i & 7) * 8)) as u8)
    }

    #[inline(always)]
    fn word(&self, i: u32) -> (u64, u32) {
        if i >= self.len {
            return (0, 0);
        }
        let left = self.len - i;
        let n = if left < 8 { left } else { 8 };
        // Two aligned loads make the unaligned word.
        let a = (self.launder(i) >> 3) & Self::mask();
        let shift = (i & 7) * 8;
        let lo = self.words[a];
        let w = if shift == 0 {
            lo
        } else {
            (lo >> shift) | (self.words[a + 1] << (64 - shift))
        };
        (guard_common::swar::low_bytes(w, n), n)
    }
}

/// Request-line scanner steps per `bpf_loop` callback.
const URI_STEPS_PER_CALL: u32 = 1;

/// `bpf_loop` callback: request-line scanner steps. Returns 1 to stop the loop.
extern "C" fn uri_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else {
        return 1;
    };
    let src = Window::new(&s.payload, s.copied, &raw mut s.index);
    let mut i = 0;
    while i < URI_STEPS_PER_CALL {
        if !s.scanner.step(&src) {
            return 1;
        }
        i += 1;
    }
    0
}

/// Header scanner steps per `bpf_loop` callback. Each unrolled step is verified on its own, so
/// this trades verifier instructions for calls: see the verifier figure in the tests.
const HDR_STEPS_PER_CALL: u32 = 2;

/// `bpf_loop` callback: header scanner steps. Returns 1 to stop the loop.
extern "C" fn hdr_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(s) = maps::scratch() else {
        return 1;
    };
    let src = Window::new(&s.payload, s.copied, &raw mut s.index);
    let mut i = 0;
    while i < HDR_STEPS_PER_CALL {
        if !s.headers.step(&src) {
            return 1;
        }
        i += 1;
    }
    0
}

/// The Call-ID hash and the To tag of the INVITE in the scratch map's frame: extends the payload
/// copy to HDR_WINDOW bytes (the request-line window is already there) and runs the header
/// scanner. Only INVITEs that matched a rule get here, so the cost is bounded to them.
#[inline(always)]
pub fn headers(ctx: &XdpContext) -> Option<Headers> {
    let s = maps::scratch()?;
    if !copy_payload(ctx, s, HDR_WINDOW) {
        return None;
    }
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
    let src = Window::new(&s.payload, s.copied, &raw mut s.index);
    Some(s.headers.finish(&src))
}
