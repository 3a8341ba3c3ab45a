//! The SIP header scanner: tells calls from packets. It finds the `Call-ID` (hashed) and whether
//! the `To` header carries a tag, which makes an INVITE an in-dialog re-INVITE (RFC 3261
//! §12.2.1.1) rather than a new call.
//!
//! Retransmissions of an INVITE (Timer A, RFC 3261 §17.1.1.2) carry the same Call-ID, so a hash
//! of it identifies the call: the kernel keeps the hashes it has seen in an LRU map and counts a
//! call once, and every packet as a packet.
//!
//! Like the request-line scanner, this is a step machine: at least one byte per
//! [`HeaderScanner::step`], at most [`HDR_MAX_STEPS`] steps, and no step loops more than a
//! constant number of times. Steps work on eight-byte words ([`crate::swar`]): a line that does
//! not matter is skipped up to [`WORDS_PER_STEP`] words a step (a search for its line feed), a
//! header name is recognised in one compare, and the Call-ID and To values are searched for the
//! bytes that matter the same way. The Call-ID is hashed once, at the end ([`HeaderScanner::
//! finish`]), a word at a time. The host drives it with a plain loop ([`scan_headers`]); the XDP
//! program drives the same function through `bpf_loop`.
//!
//! Recognised (case-insensitive, optional whitespace before the colon, compact forms):
//! `Call-ID:` / `i:` and `To:` / `t:`. The first Call-ID counts. Its value is hashed from its first
//! non-blank byte, at most [`CALL_ID_MAX`] bytes, trailing blanks excluded. In `To`, a `;tag=`
//! outside `<...>` is a tag. Scanning stops at the blank line that ends the headers.

use crate::{sip::ByteSource, swar};

/// Bytes of the SIP payload the header scanner looks at (headers beyond are not seen).
pub const HDR_WINDOW: usize = 1024;
/// Upper bound on [`HeaderScanner::step`] calls: each consumes at least one byte.
pub const HDR_MAX_STEPS: u32 = HDR_WINDOW as u32 + 2;
/// Call-ID bytes that go into the hash.
pub const CALL_ID_MAX: u32 = 128;
/// Words one step searches when it looks for the end of a line or the next byte that matters.
pub const WORDS_PER_STEP: u32 = 2;

mod st {
    /// At the start of a header line.
    pub const LINE_START: u8 = 0;
    /// Reading a header name (bytes matched so far in `name_len`).
    pub const NAME: u8 = 1;
    /// Skipping to the end of the line.
    pub const SKIP: u8 = 2;
    /// Blanks after `Call-ID:`.
    pub const CALLID_LWS: u8 = 3;
    /// In the Call-ID value.
    pub const CALLID: u8 = 4;
    /// In the To value.
    pub const TO: u8 = 5;
    pub const DONE: u8 = 6;
}

/// Which header a name prefix can still become.
mod name {
    pub const NONE: u8 = 0;
    pub const CALL_ID: u8 = 1;
    pub const TO: u8 = 2;
    /// `i`, the compact form of Call-ID.
    pub const CALL_ID_COMPACT: u8 = 3;
}

/// Scanner state. Plain data (`repr(C)`), kept in a per-CPU map value by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderScanner {
    pos: u32,
    /// Where the Call-ID value starts, and where it ends without trailing blanks (within
    /// [`CALL_ID_MAX`] bytes of the start).
    cid_start: u32,
    cid_end: u32,
    state: u8,
    /// Candidate header (a `name::*`) and bytes of its name matched.
    cand: u8,
    name_len: u8,
    /// Whitespace followed the name: only the colon may come.
    name_done: u8,
    /// Inside `<...>` in the To value.
    in_angle: u8,
    /// Bytes of `;tag=` matched in the To value.
    tag_match: u8,
    /// A Call-ID was found.
    pub has_call_id: bool,
    /// The To header has a tag: an in-dialog request.
    pub to_tag: bool,
    /// The headers ended (blank line) inside the window.
    pub complete: bool,
    /// The To header was read (with the Call-ID, all there is to find: the scan stops).
    to_seen: bool,
    _pad: [u8; 2],
}

impl Default for HeaderScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// What the header scanner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// [`call_id_hash`] of the Call-ID value; `None` when there was none in the window.
    pub call_hash: Option<u64>,
    /// The To header carries a tag (a re-INVITE inside a dialog).
    pub to_tag: bool,
}

const CALL_ID: &[u8] = b"call-id";
const TO_TAG: &[u8] = b";tag=";
const CALL_ID_COLON: (u64, u64) = swar::literal(b"call-id:");
const I_COLON: (u64, u64) = swar::literal(b"i:");
const TO_COLON: (u64, u64) = swar::literal(b"to:");
const T_COLON: (u64, u64) = swar::literal(b"t:");
const TAG_EQ: (u64, u64) = swar::literal(b"tag=");
/// Moves one To step makes (see `HeaderScanner::to`).
const TO_MOVES: u32 = 2;

impl HeaderScanner {
    pub const fn new() -> Self {
        Self {
            pos: 0,
            cid_start: 0,
            cid_end: 0,
            state: st::SKIP, // The request line is not a header.
            cand: name::NONE,
            name_len: 0,
            name_done: 0,
            in_angle: 0,
            tag_match: 0,
            has_call_id: false,
            to_tag: false,
            complete: false,
            to_seen: false,
            _pad: [0; 2],
        }
    }

    /// Resets in place (see `Scanner::reset`).
    #[inline(always)]
    pub fn reset(&mut self) {
        crate::plain::zero(self);
        self.state = st::SKIP; // The request line is not a header.
    }

    #[inline(always)]
    fn end_line(&mut self, c: u8) {
        // CR is swallowed; LF starts a new line.
        if c == b'\n' {
            self.state = st::LINE_START;
        }
    }

    /// Does one step: a header name, up to [`WORDS_PER_STEP`] words of a line that does not
    /// matter or of a Call-ID or To value, or one byte where a byte decides. Every step consumes
    /// at least one byte. Returns `true` while there is more to do.
    #[inline(always)]
    pub fn step<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        if self.state == st::DONE {
            return false;
        }
        let (w, n) = src.word(self.pos);
        if n == 0 {
            self.state = st::DONE;
            return false;
        }
        match self.state {
            st::LINE_START => self.line_start(src, w),
            st::NAME => self.name(w as u8),
            st::SKIP => {
                self.skip(src);
                true
            }
            st::CALLID_LWS => self.call_id_lws(src),
            st::CALLID => self.call_id(src),
            st::TO => self.to(src),
            _ => {
                self.state = st::DONE;
                false
            }
        }
    }

    /// At the start of a line: the end of the headers, a header we want, or a line to skip.
    #[inline(always)]
    fn line_start<S: ByteSource + ?Sized>(&mut self, src: &S, w: u64) -> bool {
        let c = w as u8;
        match c {
            b'\r' => {
                self.pos += 1;
                return true;
            }
            b'\n' => {
                // A blank line: the headers are over.
                self.complete = true;
                self.state = st::DONE;
                return false;
            }
            _ => {}
        }
        // The usual spellings in one compare each; anything else that may still become one of
        // them (`Call-ID :`, `t :`) goes byte by byte through NAME.
        // The value is read in the same step.
        if swar::starts_with_ci(w, CALL_ID_COLON, 8) || swar::starts_with_ci(w, I_COLON, 2) {
            self.pos += if c | 0x20 == b'i' { 2 } else { 8 };
            self.state = st::CALLID_LWS;
            return self.call_id_lws(src);
        }
        if swar::starts_with_ci(w, TO_COLON, 3) || swar::starts_with_ci(w, T_COLON, 2) {
            self.pos += if (w >> 8) as u8 == b':' { 2 } else { 3 };
            self.enter_to();
            return self.to(src);
        }
        let next = ((w >> 8) as u8).to_ascii_lowercase();
        let blank_or_colon = matches!(next, b' ' | b'\t' | b':');
        self.cand = match c.to_ascii_lowercase() {
            b'c' if next == b'a' => name::CALL_ID,
            b'i' if blank_or_colon => name::CALL_ID_COMPACT,
            b't' if next == b'o' || blank_or_colon => name::TO,
            _ => name::NONE,
        };
        self.pos += 1;
        if self.cand == name::NONE {
            // A continuation line (folded header) or another header.
            self.state = st::SKIP;
            self.skip(src);
        } else {
            self.state = st::NAME;
            self.name_len = 1;
            self.name_done = 0;
        }
        true
    }

    #[inline(always)]
    fn enter_to(&mut self) {
        self.in_angle = 0;
        self.tag_match = 0;
        self.state = st::TO;
    }

    /// Skips up to and including the line feed, at most [`WORDS_PER_STEP`] words.
    #[inline(always)]
    fn skip<S: ByteSource + ?Sized>(&mut self, src: &S) {
        let mut i = 0;
        while i < WORDS_PER_STEP {
            let (w, n) = src.word(self.pos);
            let k = swar::first(swar::eq(w, b'\n'));
            if k < n {
                self.pos += k + 1;
                self.state = st::LINE_START;
                return;
            }
            self.pos += n;
            if n < 8 {
                return;
            }
            i += 1;
        }
    }

    /// One byte of a header name that may become `Call-ID`, `i` or `To`.
    #[inline(always)]
    fn name(&mut self, c: u8) -> bool {
        self.pos += 1;
        let lower = c.to_ascii_lowercase();
        let n = self.name_len as usize;
        match lower {
            b':' => {
                let whole = match self.cand {
                    name::CALL_ID => n == CALL_ID.len(),
                    name::CALL_ID_COMPACT => n == 1,
                    name::TO => n == 1 || n == 2,
                    _ => false,
                };
                match (whole, self.cand) {
                    (true, name::TO) => self.enter_to(),
                    (true, _) => self.state = st::CALLID_LWS,
                    (false, _) => self.state = st::SKIP,
                }
            }
            // Whitespace between the name and the colon.
            b' ' | b'\t' => self.name_done = 1,
            _ if self.name_done == 0
                && self.cand == name::CALL_ID
                && n < CALL_ID.len()
                && lower == CALL_ID[n] =>
            {
                self.name_len += 1;
            }
            b'o' if self.name_done == 0 && self.cand == name::TO && n == 1 => {
                self.name_len = 2;
            }
            _ => {
                self.state = st::SKIP;
                self.end_line(c);
            }
        }
        true
    }

    /// Blanks after `Call-ID:` (a word a step), then the value, in the same step (only the first
    /// Call-ID counts).
    #[inline(always)]
    fn call_id_lws<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        let (w, n) = src.word(self.pos);
        let k = swar::first(swar::non_blanks(w) & swar::low_bytes(swar::HIGHS, n));
        if k >= n {
            self.pos += n;
            return true;
        }
        self.pos += k;
        let c = (w >> (8 * (k & 7))) as u8;
        if c == b'\r' || c == b'\n' {
            self.pos += 1;
            self.state = st::SKIP;
            self.end_line(c);
            return true;
        }
        if self.has_call_id {
            self.state = st::SKIP;
            return true;
        }
        self.state = st::CALLID;
        self.has_call_id = true;
        self.cid_start = self.pos;
        self.cid_end = self.pos;
        self.call_id(src)
    }

    /// Up to [`WORDS_PER_STEP`] words of the Call-ID value: finds the end of its line and
    /// remembers where its last non-blank byte is.
    #[inline(always)]
    fn call_id<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        let mut i = 0;
        while i < WORDS_PER_STEP {
            let (w, n) = src.word(self.pos);
            let k = swar::first_of(w, b"\r\n");
            let value = if k < n { k } else { n };
            let room = (self.cid_start + CALL_ID_MAX).saturating_sub(self.pos);
            let counted = if value < room { value } else { room };
            let non_blank = swar::non_blanks(w) & swar::low_bytes(swar::HIGHS, counted);
            if non_blank != 0 {
                self.cid_end = self.pos + swar::last(non_blank) + 1;
            }
            self.pos += value;
            if k < n {
                // The line ends here.
                let c = (w >> (8 * (k & 7))) as u8;
                self.pos += 1;
                self.state = st::SKIP;
                self.end_line(c);
                if self.to_seen {
                    // Both found: the rest of the headers cannot change the answer.
                    self.state = st::DONE;
                    return false;
                }
                return true;
            }
            if n < 8 {
                return true;
            }
            i += 1;
        }
        true
    }

    /// The To value: up to [`TO_MOVES`] moves, each either a word without a byte that matters
    /// (`<`, `>`, `;`, CR, LF) or one such byte handled; a `;tag=` is recognised in one compare.
    #[inline(always)]
    fn to<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        let mut i = 0;
        while i < TO_MOVES {
            i += 1;
            let (w, n) = src.word(self.pos);
            if n == 0 {
                return true;
            }
            let c = if self.tag_match == 0 {
                let k = swar::first_of(w, b"<>;\r\n");
                if k >= n {
                    self.pos += n;
                    continue;
                }
                self.pos += k;
                (w >> (8 * (k & 7))) as u8
            } else {
                w as u8
            };
            self.pos += 1;
            match c {
                b'\r' | b'\n' => {
                    self.state = st::SKIP;
                    self.end_line(c);
                    self.to_seen = true;
                    if self.has_call_id {
                        self.state = st::DONE;
                        return false;
                    }
                    return true;
                }
                b'<' => {
                    self.in_angle = 1;
                    self.tag_match = 0;
                }
                b'>' => {
                    self.in_angle = 0;
                    self.tag_match = 0;
                }
                b';' if self.in_angle == 0 => {
                    // `;tag=`, maybe with blanks after the semicolon; a match in progress ends
                    // here (a new parameter starts).
                    self.tag_match = 0;
                    let (w, n) = src.word(self.pos);
                    let k = swar::first(swar::non_blanks(w) & swar::low_bytes(swar::HIGHS, n));
                    if k >= 8 {
                        // Eight blanks or more: byte by byte from here.
                        self.tag_match = 1;
                    } else if swar::starts_with_ci(src.word(self.pos + k).0, TAG_EQ, 4) {
                        self.to_tag = true;
                    }
                }
                _ if self.in_angle == 0 && self.tag_match != 0 => self.tag_byte(c),
                _ => {}
            }
        }
        true
    }

    /// One byte of a `;tag=` after eight blanks or more (see `to`).
    #[inline(always)]
    fn tag_byte(&mut self, c: u8) {
        let lower = c.to_ascii_lowercase();
        let m = self.tag_match as usize;
        if m < TO_TAG.len() && lower == TO_TAG[m] {
            self.tag_match += 1;
            if self.tag_match as usize == TO_TAG.len() {
                self.to_tag = true;
                self.tag_match = 0;
            }
        } else if !(m == 1 && (c == b' ' || c == b'\t')) {
            self.tag_match = 0;
        }
    }

    /// The result (the kernel calls this after its `bpf_loop`): the Call-ID is hashed here, from
    /// `src`, the same bytes the steps read.
    #[inline(always)]
    pub fn finish<S: ByteSource + ?Sized>(&self, src: &S) -> Headers {
        Headers {
            call_hash: if self.has_call_id {
                Some(hash_range(src, self.cid_start, self.cid_end))
            } else {
                None
            },
            to_tag: self.to_tag,
        }
    }
}

/// The Call-ID hash of `src[start..end]` (at most [`CALL_ID_MAX`] bytes), a word at a time.
#[inline(always)]
fn hash_range<S: ByteSource + ?Sized>(src: &S, start: u32, end: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut off = start;
    let mut i = 0;
    while i < CALL_ID_MAX / 8 {
        if off >= end {
            break;
        }
        let (w, n) = src.word(off);
        let left = end - off;
        let take = if n < left { n } else { left };
        h = (h ^ swar::low_bytes(w, take)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        off += 8;
        i += 1;
    }
    h ^= end.saturating_sub(start) as u64;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

/// Scans the first [`HDR_WINDOW`] bytes of a SIP message on the host, exactly as the kernel.
pub fn scan_headers(payload: &[u8]) -> Headers {
    let src = &payload[..payload.len().min(HDR_WINDOW)];
    let mut s = HeaderScanner::new();
    let mut steps = 0;
    while steps < HDR_MAX_STEPS && s.step(src) {
        steps += 1;
    }
    s.finish(src)
}

/// The hash the scanner computes for a Call-ID value `bytes` (its first [`CALL_ID_MAX`] bytes),
/// for tests and userspace.
pub fn call_id_hash(bytes: &[u8]) -> u64 {
    hash_range(bytes, 0, bytes.len().min(CALL_ID_MAX as usize) as u32)
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    use alloc::{format, string::String, vec, vec::Vec};

    use super::*;

    fn msg(headers: &str) -> Vec<u8> {
        format!("INVITE sip:+23276123456@example.net SIP/2.0\r\n{headers}\r\n").into_bytes()
    }

    #[test]
    fn call_id_forms_hash_the_value() {
        let want = Some(call_id_hash(b"abc123@192.0.2.10"));
        for h in [
            "Call-ID: abc123@192.0.2.10\r\n",
            "call-id:abc123@192.0.2.10\r\n",
            "CALL-ID :  abc123@192.0.2.10  \r\n",
            "i: abc123@192.0.2.10\r\n",
            "Via: SIP/2.0/UDP 192.0.2.10\r\nCall-ID: abc123@192.0.2.10\r\nCSeq: 1 INVITE\r\n",
        ] {
            assert_eq!(scan_headers(&msg(h)).call_hash, want, "{h:?}");
        }
        assert_eq!(scan_headers(&msg("Call-Info: x\r\n")).call_hash, None);
        assert_eq!(scan_headers(&msg("X-Call-ID: abc\r\n")).call_hash, None);
        assert_eq!(scan_headers(&msg("Contact: <sip:i@x>\r\n")).call_hash, None);
        // After the blank line it is body, not a header.
        let m = format!(
            "{}Call-ID: late\r\n",
            String::from_utf8(msg("CSeq: 1 INVITE\r\n")).unwrap()
        );
        assert_eq!(scan_headers(m.as_bytes()).call_hash, None);
    }

    #[test]
    fn to_tag_outside_the_uri_makes_a_reinvite() {
        for (h, tag) in [
            ("To: <sip:+232@example.net>\r\n", false),
            ("To: <sip:+232@example.net>;tag=a6c85cf\r\n", true),
            ("t: <sip:+232@example.net> ; TAG=x\r\n", true),
            ("To: sip:+232@example.net;tag=1\r\n", true),
            ("To: <sip:+232@example.net;tag=inside>\r\n", false),
            ("Tone: x;tag=1\r\n", false),
            ("From: <sip:a@b>;tag=1\r\nTo: <sip:+232@c>\r\n", false),
            // Eight blanks or more after `;`, then a `;` inside what was being matched: the
            // match starts again at the new parameter (found by the header_scanner fuzz target).
            ("To: <sip:+232@c>;         TA;G=x\r\n", false),
            ("To: <sip:+232@c>;         TA;tag=x\r\n", true),
            ("To: <sip:+232@c>;          tag=x\r\n", true),
        ] {
            assert_eq!(scan_headers(&msg(h)).to_tag, tag, "{h:?}");
        }
    }

    #[test]
    fn bounded_and_total_on_any_input() {
        let big = vec![b'a'; 5000];
        let h = scan_headers(&big);
        assert_eq!(h.call_hash, None);
        // A Call-ID cut by the window still gives a stable hash.
        let pad = "X".repeat(HDR_WINDOW);
        let cut = format!("INVITE sip:x SIP/2.0\r\nCall-ID: {pad}");
        let a = scan_headers(cut.as_bytes());
        let b = scan_headers(format!("{cut}tail").as_bytes());
        assert!(a.call_hash.is_some());
        assert_eq!(a, b);
    }
}
