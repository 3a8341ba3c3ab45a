//! The SIP request-line scanner: finds an `INVITE`, its Request-URI scheme, and the dialled
//! number in the URI's user part.
//!
//! The scanner is a step machine: [`Scanner::step`] does a bounded amount of work and says
//! whether to go on. The host drives it with a plain loop ([`parse`]); the XDP program drives the
//! very same function through `bpf_loop`, so the verifier checks one step instead of every
//! iteration. At most [`MAX_STEPS`] steps are ever taken, and no step loops.
//!
//! Grammar (RFC 3261 §25, RFC 3966), restricted to what a toll-fraud filter needs:
//! - CR and LF before the request line are keep-alives and are skipped, however many there are:
//!   the window starts after them ([`parse_payload`]; the kernel skips them before it copies);
//! - the method is exactly `INVITE` followed by SP (methods are case-sensitive);
//! - the scheme is `sip:`, `sips:` or `tel:`, in any case;
//! - the number is an optional leading `+`, then digits; the visual separators `-.()` are
//!   skipped; `%XX` escapes of `+`, digits and separators are decoded; anything else ends it;
//! - in `sip:`/`sips:` URIs the number only counts if the user part ends with a real `@`
//!   (otherwise the digits came from a host such as `sip:192.0.2.1`);
//! - a local number (no `+`) followed by parameters, `tel:NUMBER;params` or, in `sip:`/`sips:`,
//!   a user part `NUMBER;params@`, is read as `+CC` + number when a `;phone-context=+CC...`
//!   stands anywhere among those parameters (up to the end of the URI: SP, `>`, CR, LF, `?` for
//!   `tel:`; the `@` for `sip:`);
//! - a number that cannot be read to its end (the input ends first) is reported as a prefix
//!   ([`Parsed::Number`] with `complete: false`) when the digits read are a true prefix of the
//!   number whatever follows (a `+` number, or a complete number whose `@` was not seen), and
//!   as [`Parsed::Unresolved`] when what follows could still change it (a local number whose
//!   parameters, and so a phone-context, were not read to their end).

use crate::{number::Number, swar};

/// Bytes of SIP payload that are inspected for the request line, from its first byte after any
/// leading CR/LF keep-alives (which do not count against it). The Request-URI's parameters are
/// searched for a phone-context up to the end of this window, so it is as long as the header
/// window (the kernel's payload copy holds both).
pub const WINDOW: usize = crate::headers::HDR_WINDOW;

/// Upper bound on [`Scanner::step`] calls: every step either consumes a byte or moves to a
/// later state, and there are fewer than 8 state moves.
pub const MAX_STEPS: u32 = WINDOW as u32 + 8;

/// A byte source for the scanner: a slice on the host, a bounded buffer in the kernel.
pub trait ByteSource {
    /// The byte at `i`, or `None` past the end.
    fn at(&self, i: u32) -> Option<u8>;

    /// The eight bytes from `i` as a little-endian word, bytes past the end as zero, and how many
    /// of them are present (0..=8). See [`crate::swar`].
    fn word(&self, i: u32) -> (u64, u32);
}

impl ByteSource for [u8] {
    #[inline(always)]
    fn at(&self, i: u32) -> Option<u8> {
        self.get(i as usize).copied()
    }

    #[inline(always)]
    fn word(&self, i: u32) -> (u64, u32) {
        let rest = self.get(i as usize..).unwrap_or_default();
        let n = rest.len().min(8);
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&rest[..n]);
        (u64::from_le_bytes(b), n as u32)
    }
}

/// What the scanner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not an INVITE request: another method, a response, or not SIP at all.
    NotInvite,
    /// An INVITE whose Request-URI is not `sip:`, `sips:` or `tel:` followed by a URI.
    UnparsableUri,
    /// An INVITE whose Request-URI has no dialled number (`sip:alice@...`, `sip:host`).
    NoNumber,
    /// An INVITE that dials `Number`. `complete` is false when the input (the window, or the
    /// datagram) ended before the user part did; the digits seen are then still a true prefix
    /// of the number, whatever follows.
    Number { number: Number, complete: bool },
    /// An INVITE whose number could not be read to its end, where what was not read could make
    /// it another number: a local number (no `+`) whose parameters, and so a phone-context that
    /// would prepend a country code, ran past the input; or a phone-context cut by it. `number`
    /// holds the digits read (for display only: it is no prefix of the dialled number).
    Unresolved { number: Number },
}

mod state {
    pub const START: u8 = 0;
    pub const NUMBER: u8 = 3;
    pub const FIND_AT: u8 = 4;
    pub const TEL_PARAMS: u8 = 5;
    pub const CONTEXT: u8 = 6;
    pub const DONE: u8 = 7;
    /// `sip:`/`sips:` user part `NUMBER;params@`: the parameters, up to the `@`.
    pub const SIP_PARAMS: u8 = 8;
}

mod outcome {
    pub const NOT_INVITE: u8 = 0;
    pub const UNPARSABLE: u8 = 1;
    pub const NO_NUMBER: u8 = 2;
    pub const NUMBER: u8 = 3;
    pub const NUMBER_INCOMPLETE: u8 = 4;
    pub const UNRESOLVED: u8 = 5;
}

/// Scanner state. Plain data (`repr(C)`), so the kernel can keep it in a per-CPU map value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Scanner {
    pub number: Number,
    /// `tel:` phone-context digits.
    pub context: Number,
    pos: u32,
    /// Where the number (or the context) starts; `+` is only accepted there.
    start: u32,
    state: u8,
    outcome: u8,
    /// `sip:`/`sips:`: the user part must end with `@`.
    needs_at: bool,
}

/// One character of a number, after `%XX` decoding.
enum Char {
    Plus,
    Digit(u8),
    Separator,
    /// Anything else, with the raw byte (an escaped character is never a delimiter, so it is
    /// reported as `0`).
    End(u8),
}

#[inline(always)]
fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[inline(always)]
fn classify(c: u8) -> Option<Char> {
    match c {
        b'+' => Some(Char::Plus),
        b'0'..=b'9' => Some(Char::Digit(c - b'0')),
        b'-' | b'.' | b'(' | b')' => Some(Char::Separator),
        _ => None,
    }
}

/// Reads one number character at `pos`: `(char, bytes consumed)`, or `None` at the end of input
/// (including inside a `%XX` escape that the end of input cut short).
#[inline(always)]
fn number_char<S: ByteSource + ?Sized>(src: &S, pos: u32) -> Option<(Char, u32)> {
    let c = src.at(pos)?;
    if c == b'%' {
        let decoded = match (src.at(pos + 1).map(hex), src.at(pos + 2).map(hex)) {
            (Some(Some(h)), Some(Some(l))) => (h << 4) | l,
            // `%` or `%X` at the end of the window: it may still be an escaped digit.
            (None, _) | (Some(Some(_)), None) => return None,
            _ => return Some((Char::End(c), 1)),
        };
        return Some(match classify(decoded) {
            Some(ch) => (ch, 3),
            None => (Char::End(0), 3),
        });
    }
    Some(match classify(c) {
        Some(ch) => (ch, 1),
        None => (Char::End(c), 1),
    })
}

/// Case-insensitive compare of `lit` (lower-case ASCII letters and punctuation) at `pos`.
#[inline(always)]
fn literal_ci<S: ByteSource + ?Sized>(src: &S, pos: u32, lit: &[u8]) -> bool {
    let mut i = 0;
    while i < lit.len() {
        match src.at(pos + i as u32) {
            Some(c) if c.to_ascii_lowercase() == lit[i] => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

const PHONE_CONTEXT: &[u8] = b"phone-context=";
const INVITE_SP: (u64, u64) = swar::literal(b"INVITE ");
const SIP: (u64, u64) = swar::literal(b"sip:");
const SIPS: (u64, u64) = swar::literal(b"sips:");
const TEL: (u64, u64) = swar::literal(b"tel:");

impl Scanner {
    pub const fn new() -> Self {
        Self {
            number: Number {
                hi: 0,
                lo: 0,
                len: 0,
                plus: false,
                overflow: false,
                context: 0,
            },
            context: Number {
                hi: 0,
                lo: 0,
                len: 0,
                plus: false,
                overflow: false,
                context: 0,
            },
            pos: 0,
            start: 0,
            state: state::START,
            outcome: outcome::NOT_INVITE,
            needs_at: false,
        }
    }

    /// Resets in place (the kernel keeps the scanner in a map value; building a new one would
    /// need a temporary on the 512-byte BPF stack).
    #[inline(always)]
    pub fn reset(&mut self) {
        crate::plain::zero(self);
        self.state = state::START;
        self.outcome = outcome::NOT_INVITE;
    }

    fn done(&mut self, outcome: u8) -> bool {
        self.outcome = outcome;
        self.state = state::DONE;
        false
    }

    /// Does one bounded step. Returns `true` while there is more to do.
    #[inline(always)]
    pub fn step<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        match self.state {
            state::START => match src.at(self.pos) {
                Some(b'\r' | b'\n') => {
                    self.pos += 1;
                    true
                }
                Some(_) => self.method_and_scheme(src),
                None => self.done(outcome::NOT_INVITE),
            },
            state::NUMBER => self.step_number(src),
            state::FIND_AT => {
                // Up to the first byte that decides, eight bytes a step.
                let (w, n) = src.word(self.pos);
                let k = swar::first_of(w, b"@ >\r\n");
                if k >= n {
                    if n == 0 {
                        // The digits are read; whether they are a user part is not known.
                        return self.done(outcome::NUMBER_INCOMPLETE);
                    }
                    self.pos += n;
                    return true;
                }
                match (w >> (8 * (k & 7))) as u8 {
                    // The digits were in the user part after all.
                    b'@' => self.done(outcome::NUMBER),
                    // No user part: the digits came from the host (`sip:192.0.2.1`).
                    _ => self.done(outcome::NO_NUMBER),
                }
            }
            state::TEL_PARAMS | state::SIP_PARAMS => self.step_params(src),
            state::CONTEXT => self.step_context(src),
            _ => false,
        }
    }

    /// The common request line without steps: `INVITE ` and the scheme, an optional `+`, up to
    /// sixteen digits, and the byte that ends them (`@` in a `sip:`/`sips:` URI; SP, `>`, CR, LF
    /// or `?` in a `tel:` URI, or `;` after a global number). Returns `true` when that decided the
    /// request line (the result is then in [`Scanner::finish`]); `false` when the line has any
    /// other shape, and then the scanner must be [`Scanner::reset`] and stepped from the start.
    /// Both the kernel and [`parse`] take this path first, so the property tests cover it.
    #[inline(always)]
    pub fn fast<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        match src.at(0) {
            Some(b'I') => {}
            // Keep-alives before the request line, or nothing: the steps handle those.
            _ => return false,
        }
        if !self.method_and_scheme(src) {
            return true;
        }
        if src.at(self.pos) == Some(b'+') {
            self.number.plus = true;
            self.pos += 1;
        }
        let mut i = 0;
        while i < 2 {
            let (w, _) = src.word(self.pos);
            let k = swar::first(swar::non_digits(w));
            self.push_digits(w, k);
            self.pos += k;
            if k < 8 {
                break;
            }
            i += 1;
        }
        if self.number.len == 0 || self.number.overflow {
            return false;
        }
        let ends = match src.at(self.pos) {
            Some(b'@') => self.needs_at,
            Some(b' ' | b'>' | b'\r' | b'\n' | b'?') => !self.needs_at,
            Some(b';') => !self.needs_at && self.number.plus,
            _ => false,
        };
        if ends {
            self.done(outcome::NUMBER);
        }
        ends
    }

    /// Appends the first `k` (0..=8) bytes of `w`, ASCII digits, to the number.
    #[inline(always)]
    fn push_digits(&mut self, w: u64, k: u32) {
        if k == 0 {
            return;
        }
        let packed = (swar::pack_digits(w) as u64) << 32;
        let digits = Number {
            hi: packed & !(u64::MAX >> (4 * k)),
            lo: 0,
            len: k as u8,
            plus: false,
            overflow: false,
            context: 0,
        };
        self.number.append(&digits);
    }

    /// The request line's start: `INVITE ` (case-sensitive, RFC 3261 §7.1), then the scheme,
    /// one word compare each.
    #[inline(always)]
    fn method_and_scheme<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        let (w, _) = src.word(self.pos);
        if swar::low_bytes(w, 7) != INVITE_SP.0 {
            return self.done(outcome::NOT_INVITE);
        }
        let p = self.pos + 7;
        let (w, _) = src.word(p);
        let (len, needs_at) = if swar::starts_with_ci(w, SIP, 4) {
            (4, true)
        } else if swar::starts_with_ci(w, SIPS, 5) {
            (5, true)
        } else if swar::starts_with_ci(w, TEL, 4) {
            (4, false)
        } else {
            self.pos = p;
            return self.done(outcome::UNPARSABLE);
        };
        self.pos = p + len;
        self.start = self.pos;
        self.needs_at = needs_at;
        self.state = state::NUMBER;
        true
    }

    /// The input ended inside the Request-URI before the number did. What was read of a `+`
    /// number is a true prefix of it; a local number could still be given a phone-context by
    /// the parameters that were not read, so it is unresolved.
    #[inline(always)]
    fn cut(&mut self) -> bool {
        if self.number.plus {
            self.done(outcome::NUMBER_INCOMPLETE)
        } else {
            self.done(outcome::UNRESOLVED)
        }
    }

    #[inline(always)]
    fn step_number<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        // A run of plain digits, up to eight a step.
        let (w, _) = src.word(self.pos);
        let k = swar::first(swar::non_digits(w));
        if k > 0 {
            self.push_digits(w, k);
            self.pos += k;
            return true;
        }
        let Some((ch, used)) = number_char(src, self.pos) else {
            // The input ended inside the user part.
            return self.cut();
        };
        let end = match ch {
            Char::Plus if self.pos == self.start => {
                self.number.plus = true;
                self.pos += used;
                return true;
            }
            Char::Digit(d) => {
                self.number.push(d);
                self.pos += used;
                return true;
            }
            Char::Separator => {
                self.pos += used;
                return true;
            }
            Char::Plus => b'+',
            Char::End(c) => c,
        };
        if self.number.len == 0 {
            return self.done(outcome::NO_NUMBER);
        }
        if end == b';' && !self.number.plus {
            // A local number with parameters (`tel:NUMBER;...`, `sip:NUMBER;...@`): a
            // phone-context among them gives its country code.
            self.state = if self.needs_at {
                state::SIP_PARAMS
            } else {
                state::TEL_PARAMS
            };
            return true;
        }
        if self.needs_at {
            match end {
                b'@' => return self.done(outcome::NUMBER),
                // The URI ended before any `@`: the digits came from the host.
                b' ' | b'>' | b'\r' | b'\n' => return self.done(outcome::NO_NUMBER),
                _ => {}
            }
            self.pos += used;
            self.state = state::FIND_AT;
            return true;
        }
        self.done(outcome::NUMBER)
    }

    /// The parameters after a local number, eight bytes a step up to the next `;` (where a
    /// `phone-context=` may start) or the end of the URI: SP, `>`, CR, LF or `?` in `tel:`, the
    /// `@` (or SP, `>`, CR, LF: no user part after all) in `sip:`/`sips:`.
    #[inline(always)]
    fn step_params<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        let (w, n) = src.word(self.pos);
        let k = if self.needs_at {
            swar::first_of(w, b";@ >\r\n")
        } else {
            swar::first_of(w, b"; >\r\n?")
        };
        if k >= n {
            if n == 0 {
                // The parameters ran past the input: a phone-context may follow.
                return self.done(outcome::UNRESOLVED);
            }
            self.pos += n;
            return true;
        }
        self.pos += k;
        match (w >> (8 * (k & 7))) as u8 {
            b';' => {
                if literal_ci(src, self.pos + 1, PHONE_CONTEXT) {
                    self.pos += 1 + PHONE_CONTEXT.len() as u32;
                    self.start = self.pos;
                    self.state = state::CONTEXT;
                } else {
                    self.pos += 1;
                }
                true
            }
            b'@' => self.done(outcome::NUMBER),
            // The end of a `tel:` URI; in `sip:` the URI ended before any `@`.
            _ if self.needs_at => self.done(outcome::NO_NUMBER),
            _ => self.done(outcome::NUMBER),
        }
    }

    #[inline(always)]
    fn step_context<S: ByteSource + ?Sized>(&mut self, src: &S) -> bool {
        match number_char(src, self.pos) {
            Some((Char::Plus, used)) if self.pos == self.start => {
                self.context.plus = true;
                self.pos += used;
                true
            }
            Some((Char::Digit(d), used)) if self.context.plus => {
                self.context.push(d);
                self.pos += used;
                true
            }
            Some((Char::Separator, used)) if self.context.plus => {
                self.pos += used;
                true
            }
            // The input ended inside the context: its digits are not known.
            None => self.done(outcome::UNRESOLVED),
            // A domain-name context (`phone-context=example.com`) or the end of a global one.
            // In a `sip:` URI the user part must still end with `@`.
            Some(_) if self.needs_at => {
                self.state = state::FIND_AT;
                true
            }
            Some(_) => self.done(outcome::NUMBER),
        }
    }

    /// The result, once `step` has returned `false` (or the step budget ran out).
    #[inline(always)]
    pub fn finish(&self) -> Parsed {
        if self.state != state::DONE {
            // The step budget ran out. Every step consumes a byte or moves to a later state, so
            // this only happens past the window; it is read as the input ending there.
            return match self.state {
                state::START => Parsed::NotInvite,
                state::FIND_AT => Parsed::Number {
                    number: self.with_context(),
                    complete: false,
                },
                state::NUMBER if self.number.plus => Parsed::Number {
                    number: self.number,
                    complete: false,
                },
                state::NUMBER | state::TEL_PARAMS | state::SIP_PARAMS | state::CONTEXT => {
                    Parsed::Unresolved {
                        number: self.number,
                    }
                }
                _ => Parsed::UnparsableUri,
            };
        }
        match self.outcome {
            outcome::NOT_INVITE => Parsed::NotInvite,
            outcome::UNPARSABLE => Parsed::UnparsableUri,
            outcome::NO_NUMBER => Parsed::NoNumber,
            outcome::NUMBER_INCOMPLETE => Parsed::Number {
                number: self.with_context(),
                complete: false,
            },
            outcome::UNRESOLVED => Parsed::Unresolved {
                number: self.number,
            },
            _ => Parsed::Number {
                number: self.with_context(),
                complete: true,
            },
        }
    }

    /// `number` with a global phone-context prepended, when there is one.
    #[inline(always)]
    fn with_context(&self) -> Number {
        if !self.context.plus || self.context.len == 0 || self.number.plus {
            return self.number;
        }
        let mut out = self.context;
        out.append(&self.number);
        out.context = self.context.len;
        out
    }
}

/// Scans a UDP payload (or a TCP segment's) exactly as the XDP program does: leading CR/LF
/// keep-alives are skipped, however many, and the [`WINDOW`] bytes after them are scanned.
pub fn parse_payload(payload: &[u8]) -> Parsed {
    let payload = &payload[keepalive_len(payload)..];
    parse(&payload[..payload.len().min(WINDOW)])
}

/// How many CR/LF bytes (keep-alives, RFC 5626 §4.4.1 and before) start `payload`.
pub fn keepalive_len(payload: &[u8]) -> usize {
    payload
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(payload.len())
}

/// Runs the scanner over `src` on the host. The kernel runs the same `Scanner::step` via
/// `bpf_loop`.
pub fn parse<S: ByteSource + ?Sized>(src: &S) -> Parsed {
    let mut s = Scanner::new();
    if s.fast(src) {
        return s.finish();
    }
    s.reset();
    let mut steps = 0;
    while steps < MAX_STEPS && s.step(src) {
        steps += 1;
    }
    s.finish()
}
