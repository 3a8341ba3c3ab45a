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
//! not matter is skipped eight bytes a step (a search for its line feed), a header name is
//! recognised in one compare, and the Call-ID is hashed eight bytes a step. The host drives it with a plain loop
//! ([`scan_headers`]); the XDP program drives the same function through `bpf_loop`.
//!
//! Recognised (case-insensitive, optional whitespace before the colon, compact forms):
//! `Call-ID:` / `i:` and `To:` / `t:`. The Call-ID value is hashed from its first non-blank byte
//! to the end of the line (at most [`CALL_ID_MAX`] bytes, trailing blanks excluded). In `To`, a
//! `;tag=` outside `<...>` is a tag. Scanning stops at the blank line that ends the headers.

use crate::{sip::ByteSource, swar};

/// Bytes of the SIP payload the header scanner looks at (headers beyond are not seen).
pub const HDR_WINDOW: usize = 1024;
/// Upper bound on [`HeaderScanner::step`] calls: each consumes at least one byte.
pub const HDR_MAX_STEPS: u32 = HDR_WINDOW as u32 + 2;
/// Call-ID bytes that go into the hash.
pub const CALL_ID_MAX: u32 = 128;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

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
    /// FNV-1a over the Call-ID value so far.
    pub hash: u64,
    pos: u32,
    /// Call-ID bytes hashed.
    cid_len: u32,
    /// Hash at the last non-blank Call-ID byte (trailing blanks are not part of the value).
    hash_trimmed: u64,
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
}

impl Default for HeaderScanner {
    fn default() -> Self {
        Self::new()
    }
}

/// What the header scanner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// FNV-1a 64 of the Call-ID value; `None` when there was none in the window.
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

impl HeaderScanner {
    pub const fn new() -> Self {
        Self {
            hash: FNV_OFFSET,
            pos: 0,
            cid_len: 0,
            hash_trimmed: FNV_OFFSET,
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
        }
    }

    /// Resets in place (see `Scanner::reset`).
    #[inline(always)]
    pub fn reset(&mut self) {
        crate::plain::zero(self);
        self.hash = FNV_OFFSET;
        self.hash_trimmed = FNV_OFFSET;
        self.state = st::SKIP; // The request line is not a header.
    }

    #[inline(always)]
    fn end_line(&mut self, c: u8) {
        // CR is swallowed; LF starts a new line.
        if c == b'\n' {
            self.state = st::LINE_START;
        }
    }

    /// Does one step: a header name, up to eight bytes of a line that does not matter, of the
    /// Call-ID value or of the To value, or one byte where a byte decides. Every step consumes
    /// at least one byte. Returns `true` while there is more to do.
    #[inline(always)]
    pub fn step<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        if self.state == st::DONE {
            return false;
        }
        let (w, n) = src.word(self.pos);
        if n == 0 {
            if self.state == st::CALLID {
                // The window ended inside the Call-ID: what was seen identifies it.
                self.hash = self.hash_trimmed;
            }
            self.state = st::DONE;
            return false;
        }
        match self.state {
            st::LINE_START => self.line_start(w, n),
            st::NAME => self.name(w as u8),
            st::SKIP => {
                self.skip(w, n);
                true
            }
            st::CALLID_LWS => self.call_id_lws(w as u8),
            st::CALLID => self.call_id(w, n),
            st::TO => self.to(w, n),
            _ => {
                self.state = st::DONE;
                false
            }
        }
    }

    /// At the start of a line: the end of the headers, a header we want, or a line to skip.
    #[inline(always)]
    fn line_start(&mut self, w: u64, n: u32) -> bool {
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
        // The usual spellings in one compare each; anything else (`Call-ID :`, a header that
        // only starts like one) goes byte by byte through NAME.
        if swar::starts_with_ci(w, CALL_ID_COLON, 8) {
            self.pos += 8;
            self.state = st::CALLID_LWS;
            return true;
        }
        if swar::starts_with_ci(w, I_COLON, 2) {
            self.pos += 2;
            self.state = st::CALLID_LWS;
            return true;
        }
        if swar::starts_with_ci(w, TO_COLON, 3) {
            self.pos += 3;
            self.enter_to();
            return true;
        }
        if swar::starts_with_ci(w, T_COLON, 2) {
            self.pos += 2;
            self.enter_to();
            return true;
        }
        self.pos += 1;
        self.cand = match c.to_ascii_lowercase() {
            b'c' => name::CALL_ID,
            b'i' => name::CALL_ID_COMPACT,
            b't' => name::TO,
            _ => name::NONE,
        };
        if self.cand == name::NONE {
            // A continuation line (folded header) or another header: skip the rest of the word.
            self.state = st::SKIP;
            self.skip(w >> 8, n - 1);
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

    /// Skips the `n` bytes of `w` up to and including a line feed.
    #[inline(always)]
    fn skip(&mut self, w: u64, n: u32) {
        let k = swar::first(swar::eq(w, b'\n'));
        if k < n {
            self.pos += k + 1;
            self.state = st::LINE_START;
        } else {
            self.pos += n;
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

    /// Blanks after `Call-ID:`, then the first byte of the value.
    #[inline(always)]
    fn call_id_lws(&mut self, c: u8) -> bool {
        self.pos += 1;
        match c {
            b' ' | b'\t' => {}
            b'\r' | b'\n' => {
                self.state = st::SKIP;
                self.end_line(c);
            }
            _ => {
                self.state = st::CALLID;
                self.has_call_id = true;
                self.hash = FNV_OFFSET;
                self.hash_trimmed = FNV_OFFSET;
                self.cid_len = 0;
                self.hash_byte(c);
            }
        }
        true
    }

    /// Up to eight bytes of the Call-ID value, to the end of its line.
    #[inline(always)]
    fn call_id(&mut self, w: u64, n: u32) -> bool {
        let k = swar::first(swar::eq(w, b'\r') | swar::eq(w, b'\n'));
        let value = if k < n { k } else { n };
        let mut j = 0;
        while j < 8 {
            if j >= value {
                break;
            }
            self.hash_byte((w >> (8 * j)) as u8);
            j += 1;
        }
        self.pos += value;
        if k >= n {
            return true;
        }
        // The line ends here.
        let c = (w >> (8 * (k & 7))) as u8;
        self.pos += 1;
        self.hash = self.hash_trimmed;
        self.state = st::SKIP;
        self.end_line(c);
        if self.to_seen {
            // Both found: the rest of the headers cannot change the answer.
            self.state = st::DONE;
            return false;
        }
        true
    }

    /// The To value: skips to the next byte that matters (`<`, `>`, `;`, CR, LF), unless a
    /// `;tag=` is being matched, then handles that byte.
    #[inline(always)]
    fn to(&mut self, w: u64, n: u32) -> bool {
        let c = if self.tag_match == 0 {
            let m = swar::eq(w, b'<')
                | swar::eq(w, b'>')
                | swar::eq(w, b';')
                | swar::eq(w, b'\r')
                | swar::eq(w, b'\n');
            let k = swar::first(m);
            if k >= n {
                self.pos += n;
                return true;
            }
            self.pos += k;
            (w >> (8 * (k & 7))) as u8
        } else {
            w as u8
        };
        self.pos += 1;
        let lower = c.to_ascii_lowercase();
        match c {
            b'\r' | b'\n' => {
                self.state = st::SKIP;
                self.end_line(c);
                self.to_seen = true;
                if self.has_call_id {
                    self.state = st::DONE;
                    return false;
                }
            }
            b'<' => {
                self.in_angle = 1;
                self.tag_match = 0;
            }
            b'>' => {
                self.in_angle = 0;
                self.tag_match = 0;
            }
            _ if self.in_angle == 0 => {
                let m = self.tag_match as usize;
                if m < TO_TAG.len() && lower == TO_TAG[m] {
                    self.tag_match += 1;
                    if self.tag_match as usize == TO_TAG.len() {
                        self.to_tag = true;
                        self.tag_match = 0;
                    }
                } else if lower == b';' {
                    self.tag_match = 1;
                } else if !(m == 1 && (c == b' ' || c == b'\t')) {
                    self.tag_match = 0;
                }
            }
            _ => {}
        }
        true
    }

    #[inline(always)]
    fn hash_byte(&mut self, c: u8) {
        if self.cid_len >= CALL_ID_MAX {
            return;
        }
        self.cid_len += 1;
        self.hash = (self.hash ^ c as u64).wrapping_mul(FNV_PRIME);
        if c != b' ' && c != b'\t' {
            self.hash_trimmed = self.hash;
        }
    }

    /// The result so far (the kernel calls this after its `bpf_loop`).
    #[inline(always)]
    pub fn finish(&self) -> Headers {
        let hash = if self.state == st::CALLID {
            // The step budget ended inside the Call-ID: what was seen identifies it.
            self.hash_trimmed
        } else {
            self.hash
        };
        Headers {
            call_hash: if self.has_call_id { Some(hash) } else { None },
            to_tag: self.to_tag,
        }
    }
}

/// Scans the first [`HDR_WINDOW`] bytes of a SIP message on the host, exactly as the kernel.
pub fn scan_headers(payload: &[u8]) -> Headers {
    let src = &payload[..payload.len().min(HDR_WINDOW)];
    let mut s = HeaderScanner::new();
    let mut steps = 0;
    while steps < HDR_MAX_STEPS && s.step(src) {
        steps += 1;
    }
    s.finish()
}

/// FNV-1a 64 of `bytes` (what the scanner computes for a Call-ID), for tests and userspace.
pub fn call_id_hash(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes.iter().take(CALL_ID_MAX as usize) {
        h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
    }
    h
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
