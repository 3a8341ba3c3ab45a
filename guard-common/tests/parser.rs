//! Tests of the SIP Request-URI number parser (`sip.rs`) and of number normalisation
//! (`number.rs`) against a plain reference implementation of the spec.
//!
//! The reference below is written for clarity, not speed: it works on slices and strings with
//! `Vec`/`String`, and follows the spec rule by rule. `actual` runs the real, `no_std`,
//! verifier-friendly step machine and converts its result to the same shape, so every test can
//! compare the two directly.

use guard_common::number::MAX_DIGITS;
use guard_common::{
    Domain, IntlPrefix, IntlPrefixes, LookupKey, Number, Parsed, WINDOW, parse_payload,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Result shape shared by the reference and the real parser.

#[derive(Clone, Debug, PartialEq, Eq)]
enum Dom {
    International,
    National,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RefResult {
    NotInvite,
    UnparsableUri,
    NoNumber,
    Number {
        domain: Dom,
        digits: String,
        complete: bool,
    },
    /// Not read to its end, and what was not read could change it: the raw digits read.
    Unresolved(String),
}

use RefResult::{NoNumber, NotInvite, UnparsableUri};

fn unresolved(digits: &str) -> RefResult {
    RefResult::Unresolved(digits.to_string())
}

fn intl(digits: &str, complete: bool) -> RefResult {
    RefResult::Number {
        domain: Dom::International,
        digits: digits.to_string(),
        complete,
    }
}

fn national(digits: &str, complete: bool) -> RefResult {
    RefResult::Number {
        domain: Dom::National,
        digits: digits.to_string(),
        complete,
    }
}

// ---------------------------------------------------------------------------------------------
// Reference implementation.

/// One character of a number (user part, tel number or phone-context), after `%XX` decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Plus,
    Digit(char),
    Separator,
    /// A character that ends the number. `Some(byte)` for a plain byte, `None` for a
    /// percent-escape of something that is not part of a number (an escaped character is
    /// never a delimiter).
    Stop(Option<u8>),
    /// The input (window) ended, possibly in the middle of a `%XX` escape.
    Eof,
}

fn classify(c: u8) -> Option<Tok> {
    match c {
        b'+' => Some(Tok::Plus),
        b'0'..=b'9' => Some(Tok::Digit(c as char)),
        b'-' | b'.' | b'(' | b')' => Some(Tok::Separator),
        _ => None,
    }
}

/// The token at `b[i..]` and how many bytes it takes.
fn token(b: &[u8], i: usize) -> (Tok, usize) {
    let Some(&c) = b.get(i) else {
        return (Tok::Eof, 0);
    };
    if c != b'%' {
        return (classify(c).unwrap_or(Tok::Stop(Some(c))), 1);
    }
    let hex: Vec<u8> = b[i + 1..].iter().copied().take(2).collect();
    if hex.len() == 2 && hex.iter().all(u8::is_ascii_hexdigit) {
        let value = u8::from_str_radix(std::str::from_utf8(&hex).unwrap(), 16).unwrap();
        return (classify(value).unwrap_or(Tok::Stop(None)), 3);
    }
    if hex.len() < 2 && hex.iter().all(u8::is_ascii_hexdigit) {
        // `%` or `%X` cut off by the end of the window: we are still inside the number.
        return (Tok::Eof, 0);
    }
    // Malformed escape: ends the number.
    (Tok::Stop(Some(b'%')), 1)
}

/// A number read from the start of `b`: leading `+` only as the very first character.
struct Read {
    plus: bool,
    digits: String,
    /// What stopped it, and where.
    stop: Tok,
    stop_at: usize,
}

fn read_number(b: &[u8]) -> Read {
    let mut plus = false;
    let mut digits = String::new();
    let mut i = 0;
    loop {
        let (tok, used) = token(b, i);
        match tok {
            Tok::Plus if i == 0 => plus = true,
            Tok::Digit(d) => digits.push(d),
            Tok::Separator => {}
            // A `+` anywhere else is just a character that ends the number.
            Tok::Plus => {
                return Read {
                    plus,
                    digits,
                    stop: Tok::Stop(Some(b'+')),
                    stop_at: i,
                };
            }
            stop => {
                return Read {
                    plus,
                    digits,
                    stop,
                    stop_at: i,
                };
            }
        }
        i += used;
    }
}

fn starts_with_ci(b: &[u8], lit: &str) -> bool {
    b.len() >= lit.len() && b[..lit.len()].eq_ignore_ascii_case(lit.as_bytes())
}

fn keep_30(mut digits: String) -> String {
    digits.truncate(MAX_DIGITS);
    digits
}

fn normalise(plus: bool, digits: String, complete: bool, intl_prefixes: &[&str]) -> RefResult {
    let digits = keep_30(digits);
    if plus {
        return RefResult::Number {
            domain: Dom::International,
            digits,
            complete,
        };
    }
    let longest = intl_prefixes
        .iter()
        .filter(|p| digits.starts_with(**p))
        .max_by_key(|p| p.len());
    match longest {
        Some(p) => RefResult::Number {
            domain: Dom::International,
            digits: digits[p.len()..].to_string(),
            complete,
        },
        None => RefResult::Number {
            domain: Dom::National,
            digits,
            complete,
        },
    }
}

/// The spec, written out plainly.
fn reference(payload: &[u8], intl_prefixes: &[&str]) -> RefResult {
    // CR/LF keep-alives before the request line are skipped, however many; the window starts
    // after them.
    let Some(first) = payload.iter().position(|&c| c != b'\r' && c != b'\n') else {
        return NotInvite;
    };
    let rest = &payload[first..];
    let line = &rest[..rest.len().min(WINDOW)];

    // Exactly `INVITE` and one SP, case-sensitive.
    let Some(uri) = line.strip_prefix(b"INVITE ".as_slice()) else {
        return NotInvite;
    };

    // Scheme, case-insensitive.
    let (user, is_sip) = if starts_with_ci(uri, "sip:") {
        (&uri[4..], true)
    } else if starts_with_ci(uri, "sips:") {
        (&uri[5..], true)
    } else if starts_with_ci(uri, "tel:") {
        (&uri[4..], false)
    } else {
        return UnparsableUri;
    };

    let read = read_number(user);
    if read.stop == Tok::Eof {
        // The window ended inside the number: what was read of a `+` number is a prefix of it;
        // a local number could still get a phone-context from the parameters not read.
        if read.plus {
            return normalise(true, read.digits, false, intl_prefixes);
        }
        return RefResult::Unresolved(keep_30(read.digits));
    }
    if read.digits.is_empty() {
        return NoNumber;
    }

    // Finds the `@` that makes the digits a user part, from `from` on.
    let find_at = |from: usize, plus: bool, digits: String| -> RefResult {
        match user[from..]
            .iter()
            .find(|c| matches!(c, b'@' | b' ' | b'>' | b'\r' | b'\n'))
        {
            Some(b'@') => normalise(plus, digits, true, intl_prefixes),
            Some(_) => NoNumber,
            None => normalise(plus, digits, false, intl_prefixes),
        }
    };

    if read.plus || read.stop != Tok::Stop(Some(b';')) {
        if is_sip {
            // The digits only count if the user part ends with a real `@`. Scan from the
            // character that stopped the number (it may be the `@` or the terminator itself;
            // the bytes of a `%XX` escape are never `@` or a terminator).
            return find_at(read.stop_at, read.plus, read.digits);
        }
        return normalise(read.plus, read.digits, true, intl_prefixes);
    }

    // A local number with parameters: `tel:NUMBER;params` up to SP, `>`, CR, LF or `?`;
    // `sip:NUMBER;params@` up to the `@` (or SP, `>`, CR, LF: then there is no user part).
    let params_from = read.stop_at;
    let is_end = |c: &u8| {
        if is_sip {
            matches!(c, b'@' | b' ' | b'>' | b'\r' | b'\n')
        } else {
            matches!(c, b' ' | b'>' | b'\r' | b'\n' | b'?')
        }
    };
    let end = user[params_from..].iter().position(is_end);
    let params = &user[params_from..params_from + end.unwrap_or(user.len() - params_from)];
    const PC: &str = ";phone-context=";
    let Some(at) = (0..params.len()).find(|&i| starts_with_ci(&params[i..], PC)) else {
        return match end.map(|e| user[params_from + e]) {
            // The parameters ran past the window: a phone-context may follow.
            None => RefResult::Unresolved(keep_30(read.digits)),
            Some(b'@') => normalise(false, read.digits, true, intl_prefixes),
            Some(_) if is_sip => NoNumber,
            Some(_) => normalise(false, read.digits, true, intl_prefixes),
        };
    };
    let ctx_from = params_from + at + PC.len();
    let (tok, _) = token(user, ctx_from);
    let (plus, digits, after) = match tok {
        // The window ended where the context starts.
        Tok::Eof => return RefResult::Unresolved(keep_30(read.digits)),
        Tok::Plus => {
            let context = read_number(&user[ctx_from..]);
            if context.stop == Tok::Eof {
                // The window ended inside the context.
                return RefResult::Unresolved(keep_30(read.digits));
            }
            let after = ctx_from + context.stop_at;
            // The local digits kept after the context's (30 digits in all).
            let local: String = read
                .digits
                .chars()
                .take(30usize.saturating_sub(context.digits.len()))
                .collect();
            if context.digits.is_empty() {
                (false, read.digits, after)
            } else if intl_prefixes.iter().any(|p| local.starts_with(p)) {
                // A local number that dials out of the context with an international prefix
                // is that international number.
                (false, local, after)
            } else {
                // A global context: `+CC` followed by the number's digits.
                (true, context.digits + &read.digits, after)
            }
        }
        // A domain-name (or local) context is ignored.
        _ => (false, read.digits, ctx_from),
    };
    if is_sip {
        find_at(after, plus, digits)
    } else {
        normalise(plus, digits, true, intl_prefixes)
    }
}

// ---------------------------------------------------------------------------------------------
// The real parser, in the same shape.

fn prefixes(intl_prefixes: &[&str]) -> IntlPrefixes {
    assert!(intl_prefixes.len() <= guard_common::number::MAX_INTL_PREFIXES);
    let mut p = IntlPrefixes::default();
    for (slot, digits) in p.slots.iter_mut().zip(intl_prefixes) {
        *slot = IntlPrefix::from_digits(digits).expect("valid intl prefix");
    }
    p
}

fn digits_of(n: &Number) -> String {
    let s = n.display(Domain::National).to_string();
    assert!(
        s.bytes().all(|b| b.is_ascii_digit()),
        "{s:?}: a nibble is not a digit"
    );
    assert_eq!(s.len(), n.len as usize);
    s
}

fn actual(payload: &[u8], intl_prefixes: &[&str]) -> RefResult {
    match parse_payload(payload) {
        Parsed::NotInvite => NotInvite,
        Parsed::UnparsableUri => UnparsableUri,
        Parsed::NoNumber => NoNumber,
        Parsed::Unresolved { number } => {
            assert!(
                !number.plus,
                "a `+` number read in part is a prefix, never unresolved"
            );
            RefResult::Unresolved(digits_of(&number))
        }
        Parsed::Number { number, complete } => {
            assert!(number.len as usize <= MAX_DIGITS);
            let (domain, n) = prefixes(intl_prefixes).normalize(&number);
            RefResult::Number {
                domain: match domain {
                    Domain::International => Dom::International,
                    Domain::National => Dom::National,
                },
                digits: digits_of(&n),
                complete,
            }
        }
    }
}

/// Asserts the exact expected result, from both the reference and the parser.
#[track_caller]
fn check(payload: &[u8], intl_prefixes: &[&str], expected: RefResult) {
    let shown = String::from_utf8_lossy(payload);
    assert_eq!(
        reference(payload, intl_prefixes),
        expected,
        "reference on {shown:?}"
    );
    assert_eq!(
        actual(payload, intl_prefixes),
        expected,
        "parser on {shown:?}"
    );
}

const DEFAULT: &[&str] = &["00", "011"];

/// `\r\n` padding (skipped keep-alives) so that `rest` starts at `start` in the payload.
fn at_offset(start: usize, rest: &str) -> Vec<u8> {
    assert!(start.is_multiple_of(2));
    let mut v = b"\r\n".repeat(start / 2);
    v.extend_from_slice(rest.as_bytes());
    v
}

// ---------------------------------------------------------------------------------------------
// Table-driven tests, one per rule of the spec.

#[test]
fn method_must_be_exactly_invite_and_one_space() {
    let cases: &[(&[u8], RefResult)] = &[
        (
            b"INVITE sip:+4420@example.com SIP/2.0\r\n",
            intl("4420", true),
        ),
        (b"invite sip:+4420@example.com SIP/2.0\r\n", NotInvite),
        (b"Invite sip:+4420@example.com SIP/2.0\r\n", NotInvite),
        (b"OPTIONS sip:+4420@example.com SIP/2.0\r\n", NotInvite),
        (b"REGISTER sip:+4420@example.com SIP/2.0\r\n", NotInvite),
        (b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n", NotInvite),
        (b"INVITEsip:+4420@example.com", NotInvite),
        (b"INVITE\tsip:+4420@example.com", NotInvite),
        (b" INVITE sip:+4420@example.com", NotInvite),
        (b"INVITES sip:+4420@example.com", NotInvite),
        (b"INVITE", NotInvite),
        (b"INVIT", NotInvite),
        (b"", NotInvite),
        (b"\r\n\r\n", NotInvite),
        (b"\x00INVITE sip:+4420@x", NotInvite),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn leading_cr_lf_keepalives_are_skipped() {
    let cases: &[(&[u8], RefResult)] = &[
        (b"\r\nINVITE sip:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (
            b"\r\n\r\n\n\rINVITE sip:+4420@x SIP/2.0\r\n",
            intl("4420", true),
        ),
        (b"\n\nINVITE tel:+4420 SIP/2.0\r\n", intl("4420", true)),
        (b"\r\n OPTIONS sip:+4420@x", NotInvite),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn scheme_is_sip_sips_or_tel_in_any_case() {
    let cases: &[(&[u8], RefResult)] = &[
        (b"INVITE sip:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE SIP:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE sIp:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE sips:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE SiPs:+4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE tel:+4420 SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE TEL:+4420 SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE <sip:+4420@x> SIP/2.0\r\n", UnparsableUri),
        (b"INVITE  sip:+4420@x SIP/2.0\r\n", UnparsableUri),
        (b"INVITE http://x/+4420 HTTP/1.1\r\n", UnparsableUri),
        (b"INVITE sip+4420@x SIP/2.0\r\n", UnparsableUri),
        (b"INVITE sipx:+4420@x SIP/2.0\r\n", UnparsableUri),
        (b"INVITE sips+4420@x SIP/2.0\r\n", UnparsableUri),
        (b"INVITE te:+4420 SIP/2.0\r\n", UnparsableUri),
        (b"INVITE +4420@x SIP/2.0\r\n", UnparsableUri),
        (b"INVITE ", UnparsableUri),
        (b"INVITE si", UnparsableUri),
        (b"INVITE \r\n", UnparsableUri),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn digits_separators_and_leading_plus() {
    let cases: &[(&[u8], RefResult)] = &[
        (
            b"INVITE sip:+1-(212).555-0100@x SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE sip:(0)20-7946.0000@x SIP/2.0\r\n",
            national("02079460000", true),
        ),
        (b"INVITE sip:--5--@x SIP/2.0\r\n", national("5", true)),
        (
            b"INVITE tel:+1-212-555-0100 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        // `+` only as the very first character of the user part.
        (b"INVITE sip:12+34@x SIP/2.0\r\n", national("12", true)),
        (b"INVITE sip:-+1234@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:++1234@x SIP/2.0\r\n", NoNumber),
        (b"INVITE tel:12+34 SIP/2.0\r\n", national("12", true)),
        (b"INVITE tel:-+1234 SIP/2.0\r\n", NoNumber),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn percent_escapes_of_number_characters_are_decoded() {
    let cases: &[(&[u8], RefResult)] = &[
        (b"INVITE sip:%2B4420@x SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE sip:%2b4420@x SIP/2.0\r\n", intl("4420", true)),
        (
            b"INVITE sip:%2B%34%34%32%30@x SIP/2.0\r\n",
            intl("4420", true),
        ),
        (
            b"INVITE sip:44%2D20%2e1%28%29@x SIP/2.0\r\n",
            national("44201", true),
        ),
        (b"INVITE tel:%2B44%2d20 SIP/2.0\r\n", intl("4420", true)),
        // An escaped `+` that is not first ends the number like a plain one.
        (b"INVITE sip:44%2B20@x SIP/2.0\r\n", national("44", true)),
        // An escape of anything else ends the number; for sip: the `@` still has to follow.
        (b"INVITE sip:44%4120@x SIP/2.0\r\n", national("44", true)),
        (b"INVITE tel:44%4120 SIP/2.0\r\n", national("44", true)),
        // An escaped `@` is not the end of the user part.
        (b"INVITE sip:4420%40x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:4420%40x@y SIP/2.0\r\n", national("4420", true)),
        // An escaped `;` does not start tel: parameters.
        (
            b"INVITE tel:4420%3Bphone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        // An escaped SP is not a terminator.
        (b"INVITE sip:4420%20x@y SIP/2.0\r\n", national("4420", true)),
        // Malformed escapes end the number.
        (b"INVITE sip:44%zz20@x SIP/2.0\r\n", national("44", true)),
        (b"INVITE sip:44%3z20@x SIP/2.0\r\n", national("44", true)),
        (b"INVITE sip:44%4@x SIP/2.0\r\n", national("44", true)),
        (b"INVITE sip:44% SIP/2.0\r\n", NoNumber),
        (b"INVITE tel:44%zz20 SIP/2.0\r\n", national("44", true)),
        (b"INVITE tel:44%4 SIP/2.0\r\n", national("44", true)),
        (b"INVITE sip:%zz44@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:%41@x SIP/2.0\r\n", NoNumber),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn sip_user_part_must_end_with_a_real_at() {
    let cases: &[(&[u8], RefResult)] = &[
        (b"INVITE sip:4420@x SIP/2.0\r\n", national("4420", true)),
        // Stops at another character, `@` found later in the user part.
        (
            b"INVITE sip:4420;isub=1@x SIP/2.0\r\n",
            national("4420", true),
        ),
        (b"INVITE sip:4420?x=y@x SIP/2.0\r\n", national("4420", true)),
        (b"INVITE sip:4420abc@x SIP/2.0\r\n", national("4420", true)),
        (
            b"INVITE sip:4420:secret@x SIP/2.0\r\n",
            national("4420", true),
        ),
        // No user part: the digits came from the host.
        (b"INVITE sip:192.0.2.1 SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:192.0.2.1:5060 SIP/2.0\r\n", NoNumber),
        (
            b"INVITE sip:192.0.2.1;transport=udp SIP/2.0\r\nTo: <sip:a@b>\r\n",
            NoNumber,
        ),
        (b"INVITE sip:192.0.2.1\r\n@", NoNumber),
        (b"INVITE sip:192.0.2.1\n@", NoNumber),
        (b"INVITE sips:4420:5061> x@y", NoNumber),
        // The number itself stops at a terminator: NoNumber, even if an `@` follows later.
        (b"INVITE sip:4420 SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:4420 x@y SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:4420>@x", NoNumber),
        (b"INVITE sip:4420\r@x", NoNumber),
        (b"INVITE sip:4420\n@x", NoNumber),
        (b"INVITE sip:4420 ", NoNumber),
        // No digits.
        (b"INVITE sip:alice@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:+@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:-.()@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:a4420@x SIP/2.0\r\n", NoNumber),
        (b"INVITE sip:example.com SIP/2.0\r\n", NoNumber),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn tel_numbers_and_phone_context() {
    let cases: &[(&[u8], RefResult)] = &[
        (b"INVITE tel:+4420 SIP/2.0\r\n", intl("4420", true)),
        (b"INVITE tel:4420 SIP/2.0\r\n", national("4420", true)),
        (
            b"INVITE tel:4420;isub=1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (b"INVITE tel:4420?x SIP/2.0\r\n", national("4420", true)),
        (b"INVITE tel:4420@x SIP/2.0\r\n", national("4420", true)),
        (b"INVITE tel:4420> SIP/2.0\r\n", national("4420", true)),
        (b"INVITE tel:4420\r\n", national("4420", true)),
        (b"INVITE tel:abc SIP/2.0\r\n", NoNumber),
        (b"INVITE tel:; SIP/2.0\r\n", NoNumber),
        (b"INVITE tel:+;phone-context=+44 SIP/2.0\r\n", NoNumber),
        // Global phone-context: +CC followed by the number's digits.
        (
            b"INVITE tel:7946-0000;phone-context=+44-20 SIP/2.0\r\n",
            intl("442079460000", true),
        ),
        (
            b"INVITE tel:5550100;phone-context=+1(212) SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;PHONE-CONTEXT=+1212 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;Phone-Context=+1212 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;isub=12;phone-context=+1212 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;phone-context=+1212;isub=1 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;phone-context=%2B1212 SIP/2.0\r\n",
            intl("12125550100", true),
        ),
        (
            b"INVITE tel:5550100;phone-context=+1212>",
            intl("12125550100", true),
        ),
        // A `+` number ignores the context.
        (
            b"INVITE tel:+4420;phone-context=+1 SIP/2.0\r\n",
            intl("4420", true),
        ),
        // Domain-name contexts are ignored, and so are empty ones.
        (
            b"INVITE tel:4420;phone-context=example.com SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;phone-context=1.example.com SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;phone-context=+ SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;phone-context=+-x SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;phone-context= SIP/2.0\r\n",
            national("4420", true),
        ),
        // Not a phone-context parameter.
        (
            b"INVITE tel:4420;xphone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;phone-context+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        // The parameters end at SP, `>`, CR, LF or `?`.
        (
            b"INVITE tel:4420 ;phone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;a ;phone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;a?;phone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;a>;phone-context=+1 SIP/2.0\r\n",
            national("4420", true),
        ),
        (
            b"INVITE tel:4420;a\r\n;phone-context=+1",
            national("4420", true),
        ),
        // The context makes the number international, with the default prefixes untouched.
        (
            b"INVITE tel:4420;phone-context=+0 SIP/2.0\r\n",
            intl("04420", true),
        ),
        (b"INVITE tel:004420 SIP/2.0\r\n", intl("4420", true)),
        // A local number that dials out of its context with an international prefix is that
        // international number, not the context's country code followed by the prefix.
        (
            b"INVITE tel:0023276123456;phone-context=+44 SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        (
            b"INVITE sip:011-232-76123456;phone-context=+1@gw;user=phone SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        // A trunk prefix (`0`) alone is no international prefix: the context is prepended.
        (
            b"INVITE tel:0201234567;phone-context=+44 SIP/2.0\r\n",
            intl("440201234567", true),
        ),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn numbers_keep_their_first_30_digits() {
    let long = "1234567890".repeat(4); // 40 digits
    for payload in [
        format!("INVITE sip:+{long}@x SIP/2.0\r\n"),
        format!("INVITE tel:+{long} SIP/2.0\r\n"),
        format!("INVITE sip:+{}@x SIP/2.0\r\n", "1234567890-".repeat(4)),
    ] {
        check(payload.as_bytes(), DEFAULT, intl(&long[..30], true));
        let Parsed::Number { number, .. } = parse_payload(payload.as_bytes()) else {
            panic!("no number in {payload:?}")
        };
        assert!(number.overflow, "{payload:?}");
        assert_eq!(number.len, 30);
    }
    // Exactly 30 digits: no overflow.
    let payload = format!("INVITE sip:{}@x SIP/2.0\r\n", &long[..30]);
    check(payload.as_bytes(), DEFAULT, national(&long[..30], true));
    let Parsed::Number { number, .. } = parse_payload(payload.as_bytes()) else {
        panic!()
    };
    assert!(!number.overflow);
    // 31 digits: overflow.
    let payload = format!("INVITE sip:{}@x SIP/2.0\r\n", &long[..31]);
    check(payload.as_bytes(), DEFAULT, national(&long[..30], true));
    let Parsed::Number { number, .. } = parse_payload(payload.as_bytes()) else {
        panic!()
    };
    assert!(number.overflow);
    // Context + number longer than 30 digits: the first 30 of the combination.
    let payload = format!("INVITE tel:{};phone-context=+44 SIP/2.0\r\n", &long[..30]);
    check(
        payload.as_bytes(),
        DEFAULT,
        intl(&format!("44{}", &long[..28]), true),
    );
    let Parsed::Number { number, .. } = parse_payload(payload.as_bytes()) else {
        panic!()
    };
    assert!(number.overflow);
    // An intl prefix is stripped from the 30 digits kept.
    let payload = format!("INVITE sip:00{long}@x SIP/2.0\r\n");
    check(payload.as_bytes(), DEFAULT, intl(&long[..28], true));
}

/// `head`, then `fill` repeated, then `rest` starting at byte `at` of the request line.
fn placed(head: &str, fill: char, rest: &str, at: usize) -> Vec<u8> {
    assert!(at >= head.len());
    let mut v = head.to_string();
    v.extend(std::iter::repeat_n(fill, at - head.len()));
    v.push_str(rest);
    v.into_bytes()
}

#[test]
fn only_the_window_after_the_keepalives_is_inspected() {
    assert_eq!(WINDOW, 1024);
    // Keep-alives do not count against the window, however many there are.
    for pairs in [121, 125, 600, 5000] {
        let payload = at_offset(2 * pairs, "INVITE sip:+23276123456@x SIP/2.0\r\n");
        check(&payload, DEFAULT, intl("23276123456", true));
    }
    let head = "INVITE sip:"; // 11 bytes
    // Digits of a `+` number running past the window: a prefix of the number, incomplete.
    let payload = format!("{head}+{}@x SIP/2.0\r\n", "1".repeat(1100));
    check(payload.as_bytes(), DEFAULT, intl(&"1".repeat(30), false));
    // A local number running past the window could still get a phone-context: unresolved.
    let payload = format!("{head}{}@x SIP/2.0\r\n", "1".repeat(1100));
    check(payload.as_bytes(), DEFAULT, unresolved(&"1".repeat(30)));
    // The window ends right after the number: still incomplete (no terminator seen).
    let payload = placed("INVITE sip:+", '-', "12345@x SIP/2.0\r\n", WINDOW - 5);
    check(&payload, DEFAULT, intl("12345", false));
    let payload = placed("INVITE sip:", '-', "12345@x SIP/2.0\r\n", WINDOW - 5);
    check(&payload, DEFAULT, unresolved("12345"));
    // ... and right inside it.
    let payload = placed("INVITE sip:+", '-', "12345@x SIP/2.0\r\n", WINDOW - 3);
    check(&payload, DEFAULT, intl("123", false));
    let payload = placed("INVITE tel:", '.', "12345 SIP/2.0\r\n", WINDOW - 3);
    check(&payload, DEFAULT, unresolved("123"));
    // The `@` is the first byte past the window, after other characters: the digits are the
    // number, whether they are a user part is not known.
    let payload = placed("INVITE sip:+", '-', "12345abc@x SIP/2.0\r\n", WINDOW - 8);
    assert_eq!(payload[WINDOW], b'@');
    check(&payload, DEFAULT, intl("12345", false));
    // The `@` is the last byte of the window: complete.
    let payload = placed("INVITE sip:+", '-', "12345ab@x SIP/2.0\r\n", WINDOW - 8);
    assert_eq!(payload[WINDOW - 1], b'@');
    check(&payload, DEFAULT, intl("12345", true));
    // A SP inside the window, `@` past it: NoNumber.
    let payload = placed("INVITE sip:+", '-', "12345ab d@x SIP/2.0\r\n", WINDOW - 9);
    check(&payload, DEFAULT, NoNumber);
    // The window ends inside a `%XX` escape of a digit: still inside the number.
    let payload = placed("INVITE tel:+", '-', "123%32 SIP/2.0\r\n", WINDOW - 5);
    assert_eq!(&payload[WINDOW - 2..WINDOW], b"%3");
    check(&payload, DEFAULT, intl("123", false));
    let payload = placed("INVITE tel:", '-', "1234%32 SIP/2.0\r\n", WINDOW - 5);
    assert_eq!(payload[WINDOW - 1], b'%');
    check(&payload, DEFAULT, unresolved("1234"));
    // ... but a malformed escape cut by the window still ends the number.
    let payload = placed("INVITE tel:", '-', "123%x2 SIP/2.0\r\n", WINDOW - 5);
    check(&payload, DEFAULT, national("123", true));
    // Parameters of a local number running past the window: a phone-context may follow.
    let payload = placed(
        "INVITE tel:76123456",
        ';',
        ";phone-context=+232 SIP/2.0\r\n",
        WINDOW,
    );
    check(&payload, DEFAULT, unresolved("76123456"));
    let payload = placed(
        "INVITE sip:76123456;",
        'x',
        ";phone-context=+232@x SIP/2.0",
        WINDOW - 3,
    );
    check(&payload, DEFAULT, unresolved("76123456"));
    // A phone-context cut by the window, in its digits or right after its name.
    let payload = placed(
        "INVITE tel:76123456;",
        'x',
        ";phone-context=+232 SIP/2.0",
        WINDOW - 17,
    );
    assert_eq!(&payload[WINDOW - 2..WINDOW], b"+2");
    check(&payload, DEFAULT, unresolved("76123456"));
    let payload = placed(
        "INVITE tel:76123456;",
        'x',
        ";phone-context=+232 SIP/2.0",
        WINDOW - 15,
    );
    check(&payload, DEFAULT, unresolved("76123456"));
    // ... or at its very end (more digits may follow) ...
    let payload = placed(
        "INVITE tel:76123456;",
        'x',
        ";phone-context=+232 SIP/2.0",
        WINDOW - 19,
    );
    check(&payload, DEFAULT, unresolved("76123456"));
    // ... but one read to its end inside the window decides.
    let payload = placed(
        "INVITE tel:76123456;",
        'x',
        ";phone-context=+232 SIP/2.0",
        WINDOW - 20,
    );
    check(&payload, DEFAULT, intl("23276123456", true));
    // Input that ends right after the scheme, or right after a lone `+`.
    check(b"INVITE sips:", DEFAULT, unresolved(""));
    check(b"INVITE sip:+", DEFAULT, intl("", false));
    check(b"INVITE tel:--", DEFAULT, unresolved(""));
    // The method or the scheme cut.
    check(b"INVITE", DEFAULT, NotInvite);
    check(b"INVITE si", DEFAULT, UnparsableUri);
    // A payload of only keep-alives.
    check(&b"\r\n".repeat(2000), DEFAULT, NotInvite);
    // Whatever follows the window is never looked at.
    let long = placed("INVITE sip:+", '-', "12345@x SIP/2.0\r\n", WINDOW - 3);
    assert_eq!(parse_payload(&long), parse_payload(&long[..WINDOW]));
    let mut padded = b"\r\n".repeat(300);
    padded.extend_from_slice(&long);
    assert_eq!(parse_payload(&padded), parse_payload(&long[..WINDOW]));
}

#[test]
fn phone_context_anywhere_among_the_parameters() {
    // Bypass shape: 40 other parameters before the phone-context (past the old 256 bytes).
    let payload = format!(
        "INVITE tel:76123456;{}phone-context=+232 SIP/2.0\r\n",
        "isub=1;".repeat(40)
    );
    check(payload.as_bytes(), DEFAULT, intl("23276123456", true));
    let payload = format!(
        "INVITE tel:76123456;{}phone-context=+232;x=y SIP/2.0\r\n",
        "a;".repeat(400)
    );
    check(payload.as_bytes(), DEFAULT, intl("23276123456", true));
    // In a SIP URI's user part (RFC 3966 form inside `sip:`): read like tel:.
    let cases: &[(&[u8], RefResult)] = &[
        (
            b"INVITE sip:76123456;phone-context=+232@gw;user=phone SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        (
            b"INVITE sips:76-123-456;isub=1;phone-context=+232@gw SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        (
            b"INVITE sip:76123456;PHONE-CONTEXT=+232;x=1@gw SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        (
            b"INVITE sip:76123456;phone-context=%2B232@gw SIP/2.0\r\n",
            intl("23276123456", true),
        ),
        // A domain context is ignored; the number stays national.
        (
            b"INVITE sip:76123456;phone-context=example.com@gw SIP/2.0\r\n",
            national("76123456", true),
        ),
        // Parameters without a context: national, as before.
        (
            b"INVITE sip:76123456;isub=1@gw SIP/2.0\r\n",
            national("76123456", true),
        ),
        // No `@`: no user part, so no number.
        (
            b"INVITE sip:76123456;phone-context=+232 SIP/2.0\r\n",
            NoNumber,
        ),
        (b"INVITE sip:76123456;maddr=x SIP/2.0\r\n", NoNumber),
        // The input ends before the `@`: the number with its context, not confirmed.
        (
            b"INVITE sip:76123456;phone-context=+232;x",
            intl("23276123456", false),
        ),
        // ... or inside the context: unresolved.
        (
            b"INVITE sip:76123456;phone-context=+232",
            unresolved("76123456"),
        ),
        // A `+` number ignores a context, in sip: as in tel:.
        (
            b"INVITE sip:+4420;phone-context=+1@gw SIP/2.0\r\n",
            intl("4420", true),
        ),
        // The user part must be digits then `;`: other forms keep their old reading.
        (
            b"INVITE sip:76123456x;phone-context=+232@gw SIP/2.0\r\n",
            national("76123456", true),
        ),
        // The `@` of the host part is not the end of tel: parameters.
        (
            b"INVITE tel:76123456;a=b@c;phone-context=+232 SIP/2.0\r\n",
            intl("23276123456", true),
        ),
    ];
    for (payload, expected) in cases {
        check(payload, DEFAULT, expected.clone());
    }
}

#[test]
fn normalisation_against_intl_prefixes() {
    let cases: &[(&str, &[&str], RefResult)] = &[
        ("sip:+0044@x", DEFAULT, intl("0044", true)),
        ("sip:004420@x", DEFAULT, intl("4420", true)),
        ("sip:0114420@x", DEFAULT, intl("4420", true)),
        ("sip:0104420@x", DEFAULT, national("0104420", true)),
        ("sip:0104420@x", &["00", "010"], intl("4420", true)),
        ("sip:5550100@x", DEFAULT, national("5550100", true)),
        ("sip:004420@x", &[], national("004420", true)),
        // Longest prefix wins, in any slot order.
        ("sip:00114420@x", &["00", "0011"], intl("4420", true)),
        ("sip:00114420@x", &["0011", "00"], intl("4420", true)),
        ("sip:00114420@x", &["00"], intl("114420", true)),
        (
            "sip:0114420@x",
            &["011", "010", "00", "0011"],
            intl("4420", true),
        ),
        // Eight-digit prefix, stripping across the two words of a long number.
        (
            "sip:123456789012345678901234567890@x",
            &["12345678"],
            intl("9012345678901234567890", true),
        ),
        ("sip:1234567@x", &["12345678"], national("1234567", true)),
        // The prefix must be a prefix of the digits, not just of the string.
        ("sip:0-0-44@x", DEFAULT, intl("44", true)),
        ("sip:0@x", DEFAULT, national("0", true)),
        ("tel:0;phone-context=+0", DEFAULT, intl("00", true)),
    ];
    for (uri, p, expected) in cases {
        let payload = format!("INVITE {uri} SIP/2.0\r\n");
        check(payload.as_bytes(), p, expected.clone());
    }
}

#[test]
fn reference_and_parser_agree_on_a_real_invite() {
    let payload = b"INVITE sip:+442079460000@pbx.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: <sip:+442079460000@pbx.example.com>\r\n\
From: <sip:1001@192.0.2.10>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\r\n";
    check(payload, DEFAULT, intl("442079460000", true));
}

// ---------------------------------------------------------------------------------------------
// LPM helpers for the prefix property.

fn number_from(digits: &str) -> Number {
    let mut n = Number::default();
    for c in digits.bytes() {
        n.push(c - b'0');
    }
    n
}

/// Does the rule `rule` (an LPM entry) match the lookup key `key`, as the kernel's LPM trie would?
fn lpm_matches(rule: &LookupKey, key: &LookupKey) -> bool {
    let (rule_len, key_len) = (rule.prefix_len, key.prefix_len);
    let (rule_data, key_data) = (rule.data, key.data);
    if rule_len > key_len {
        return false;
    }
    (0..rule_len as usize).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        rule_data[bit / 8] & mask == key_data[bit / 8] & mask
    })
}

// ---------------------------------------------------------------------------------------------
// Property tests.

const PREFIX_POOL: &[&str] = &["00", "011", "010", "0011", "12345678"];

fn intl_set() -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(PREFIX_POOL, 0..=4).prop_shuffle()
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn lit(items: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> + Clone {
    proptest::sample::select(items).prop_map(bytes)
}

fn user_atom() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "[0-9]{1,12}".prop_map(|s| bytes(&s)),
        1 => "[0-9]{20,45}".prop_map(|s| bytes(&s)),
        4 => lit(&["+", "-", ".", "(", ")"]),
        4 => lit(&["%2B", "%2b", "%32", "%2D", "%2d", "%2E", "%28", "%29", "%41", "%40", "%3B", "%3b", "%20"]),
        1 => lit(&["%", "%4", "%zz", "%3", "%G1"]),
        2 => "[a-zA-Z]{1,3}".prop_map(|s| bytes(&s)),
        2 => lit(&[";user=phone", ";isub=12", ";phone-context=+44-20", ";PHONE-CONTEXT=+1",
                   ";phone-context=example.com", ";phone-context=+", ";phone-context=%2B33",
                   ";phone-context=+1(212)", ";"]),
        1 => "(;p=)?[a-z]{0,150}".prop_map(|s| bytes(&s)),
        1 => lit(&["@", "?", ">", ":", " ", "\r\n", "=", "<"]),
    ]
}

fn grammar_payload() -> impl Strategy<Value = Vec<u8>> {
    let keepalives = lit(&["", "", "\r\n", "\n", "\r\n\r\n"]);
    let padding = (0usize..120).prop_map(|n| b"\r\n".repeat(n));
    let method = prop_oneof![
        6 => Just(bytes("INVITE ")),
        1 => lit(&["invite ", "OPTIONS ", "REGISTER ", "SIP/2.0 200 OK", "INVITE"]),
    ];
    let scheme = prop_oneof![
        6 => lit(&["sip:", "sip:", "SIP:", "sips:", "SiPs:", "tel:", "tel:", "TEL:"]),
        1 => lit(&["http:", "", " sip:", "<sip:"]),
    ];
    // Mostly starting like a number, so that most URIs reach the interesting rules.
    let lead = lit(&["", "+", "+", "%2B", "1", "00", "011", "0011", "12345678"]);
    let user = (lead, prop::collection::vec(user_atom(), 0..24))
        .prop_map(|(lead, atoms)| [lead, atoms.concat()].concat());
    let host = lit(&[
        "",
        "@example.com",
        "@192.0.2.1:5060",
        "@[2001:db8::1]",
        ";user=phone@x",
        "@",
    ]);
    let version = lit(&[
        "",
        " SIP/2.0\r\n",
        " SIP/2.0\r\nTo: <sip:+1@x>\r\n",
        ">",
        " ",
    ]);
    let trailing = prop::collection::vec(any::<u8>(), 0..64);
    (
        prop_oneof![3 => keepalives, 1 => padding],
        method,
        scheme,
        user,
        host,
        version,
        trailing,
    )
        .prop_map(|(k, m, s, u, h, v, t)| [k, m, s, u, h, v, t].concat())
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Filler that brings the interesting part of a request line to the window's end.
fn filler() -> impl Strategy<Value = Vec<u8>> {
    (
        lit(&["-", ".", "1", ";", ";a", "isub=1;", "x"]),
        (WINDOW - 60)..(WINDOW + 8),
    )
        .prop_map(|(unit, n)| unit.repeat(n.div_ceil(unit.len()))[..n].to_vec())
}

proptest! {
    // No failure persistence: a failing case is printed, not written next to this file.
    #![proptest_config(ProptestConfig {
        cases: 4000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// (a) Grammar-generated requests: the parser agrees with the reference.
    #[test]
    fn grammar_payloads_match_reference(payload in grammar_payload(), p in intl_set()) {
        let expected = reference(&payload, &p);
        prop_assert_eq!(actual(&payload, &p), expected, "payload {:?}", show(&payload));
    }

    /// (b) Arbitrary bytes: no panic, and agreement with the reference.
    #[test]
    fn random_bytes_match_reference(payload in prop::collection::vec(any::<u8>(), 0..600), p in intl_set()) {
        let expected = reference(&payload, &p);
        prop_assert_eq!(actual(&payload, &p), expected, "payload {:?}", show(&payload));
    }

    /// (b') Arbitrary bytes after a valid request-line start, from a small alphabet of the
    /// characters the parser cares about, so that every state sees random input.
    #[test]
    fn random_uris_match_reference(
        head in lit(&["INVITE sip:", "INVITE sips:", "INVITE tel:", "\r\nINVITE TEL:", "INVITE tel:1;phone-context=", "INVITE sip:1;phone-context="]),
        pad in 0usize..128,
        body in prop::collection::vec(
            proptest::sample::select(b"0123456789+-.()%2bBdD34aAzZ@;?> \r\n=phone-context".as_slice()),
            0..300,
        ),
        p in intl_set(),
    ) {
        let mut payload = b"\r\n".repeat(pad);
        payload.extend_from_slice(head.as_slice());
        payload.extend_from_slice(&body);
        let expected = reference(&payload, &p);
        prop_assert_eq!(actual(&payload, &p), expected, "payload {:?}", show(&payload));
    }

    /// (b'') Request lines whose number, parameters or phone-context straddle the window's end.
    #[test]
    fn window_edges_match_reference(
        keepalives in 0usize..400,
        head in lit(&["INVITE sip:", "INVITE sip:+", "INVITE sips:12", "INVITE tel:", "INVITE tel:+", "INVITE tel:12;", "INVITE sip:7;"]),
        fill in filler(),
        body in prop::collection::vec(
            proptest::sample::select(b"0123456789+-.()%2bBdD34aAzZ@;?> \r\n=phone-context".as_slice()),
            0..80,
        ),
        context in lit(&["", ";phone-context=+232", "phone-context=+1-212", ";phone-context=example.com"]),
        tail in lit(&["", "@x SIP/2.0\r\n", " SIP/2.0\r\n"]),
        p in intl_set(),
    ) {
        let mut payload = b"\r\n".repeat(keepalives);
        payload.extend_from_slice(&head);
        payload.extend_from_slice(&fill);
        payload.extend_from_slice(&body);
        payload.extend_from_slice(&context);
        payload.extend_from_slice(&tail);
        let expected = reference(&payload, &p);
        prop_assert_eq!(actual(&payload, &p), expected, "payload {:?}", show(&payload));
    }

    /// (c) Numbers longer than 30 digits keep exactly their first 30 digits, and the lookup key
    /// matches every rule that is a prefix of those digits, and no rule that is not.
    #[test]
    fn long_numbers_keep_first_30_digits(
        digits in "[0-9]{31,80}",
        sep in lit(&["", "-", "."]),
        scheme in lit(&["sip:", "sips:", "tel:"]),
        plus in any::<bool>(),
        p in intl_set(),
    ) {
        let sep = String::from_utf8(sep).unwrap();
        let written: Vec<String> = digits.chars().map(|c| c.to_string()).collect();
        let user = format!("{}{}", if plus { "+" } else { "" }, written.join(&sep));
        let scheme = String::from_utf8(scheme).unwrap();
        let host = if scheme == "tel:" { "" } else { "@example.com" };
        let payload = format!("INVITE {scheme}{user}{host} SIP/2.0\r\n");
        // The number is complete when its terminator (`@` for sip:, SP for tel:) is in the window.
        let terminator = b"INVITE ".len() + scheme.len() + user.len();
        let complete = terminator < WINDOW;
        let first30 = &digits[..30];

        let Parsed::Number { number, complete: got_complete } = parse_payload(payload.as_bytes()) else {
            return Err(TestCaseError::fail(format!("no number in {payload:?}")));
        };
        prop_assert_eq!(got_complete, complete);
        prop_assert_eq!(number.len as usize, 30);
        prop_assert!(number.overflow);
        prop_assert_eq!(number.plus, plus);
        prop_assert_eq!(digits_of(&number), first30);
        prop_assert_eq!(actual(payload.as_bytes(), &p), reference(payload.as_bytes(), &p));

        // Prefix property on the raw (un-normalised) number, in both domains.
        for domain in [Domain::International, Domain::National] {
            let key = number.key(domain);
            for k in 0..=30 {
                let rule = number_from(&first30[..k]).key(domain);
                prop_assert!(lpm_matches(&rule, &key), "rule {} vs {}", &first30[..k], first30);
                if k > 0 {
                    // The same prefix with its last digit changed never matches.
                    let mut other = first30[..k].to_string();
                    let last = other.pop().unwrap();
                    other.push(if last == '9' { '0' } else { char::from(last as u8 + 1) });
                    let rule = number_from(&other).key(domain);
                    prop_assert!(!lpm_matches(&rule, &key), "rule {} vs {}", other, first30);
                }
            }
            let other = if domain == Domain::International { Domain::National } else { Domain::International };
            prop_assert!(!lpm_matches(&number_from("").key(other), &key));
        }

        // And on the normalised number: every prefix of its (stripped) digits matches.
        let (domain, n) = prefixes(&p).normalize(&number);
        let nd = digits_of(&n);
        let key = n.key(domain);
        for k in 0..=nd.len() {
            let rule = number_from(&nd[..k]).key(domain);
            prop_assert!(lpm_matches(&rule, &key));
        }
        // Longer rules than the digits kept never match.
        if nd.len() < 30 {
            let rule = number_from(&format!("{nd}0")).key(domain);
            prop_assert!(!lpm_matches(&rule, &key));
        }
    }
}
