//! Number normalisation on arbitrary prefix sets: the input's first bytes make up to four
//! international prefixes (`IntlPrefix::from_digits` on the bytes, or raw slot values), the rest
//! is scanned for a Number (or, when the scanner finds none, taken digit by digit). Checks
//! `IntlPrefixes::normalize` against a plain reference (longest matching prefix stripped), the
//! length bounds, that `+` numbers stay international and unchanged (but a local number that
//! dials out of its phone-context with an international prefix), and that the LPM key's
//! `prefix_len` and nibbles match the digits.
#![no_main]

use guard_common::number::{MAX_INTL_PREFIX_DIGITS, MAX_INTL_PREFIXES};
use guard_common::{Domain, IntlPrefix, IntlPrefixes, Number, Parsed, parse};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

/// The slots, from the front of `data`: per slot one byte `b`; `b & 0x80` = a raw slot from the
/// next five bytes (packed, len), else `b % 10` bytes for `from_digits`.
fn prefixes(mut data: &[u8]) -> (IntlPrefixes, &[u8]) {
    let mut set = IntlPrefixes::default();
    for slot in 0..MAX_INTL_PREFIXES {
        let Some((&b, rest)) = data.split_first() else {
            break;
        };
        data = rest;
        if b & 0x80 != 0 {
            let Some((raw, rest)) = data.split_first_chunk::<5>() else {
                break;
            };
            data = rest;
            set.slots[slot] = IntlPrefix {
                packed: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
                len: u32::from(raw[4] % 12),
            };
            continue;
        }
        let n = usize::from(b % 10).min(data.len());
        let (text, rest) = data.split_at(n);
        data = rest;
        let p = std::str::from_utf8(text)
            .ok()
            .and_then(IntlPrefix::from_digits);
        let valid = !text.is_empty()
            && text.len() <= MAX_INTL_PREFIX_DIGITS
            && text.iter().all(u8::is_ascii_digit);
        assert_eq!(p.is_some(), valid, "from_digits({text:?}) = {p:?}");
        if let Some(p) = p {
            assert_eq!(p.to_string().as_bytes(), text, "IntlPrefix round trip");
            set.slots[slot] = p;
        }
    }
    (set, data)
}

/// A number from the rest of the input: what the scanner reads, or the digits as given.
fn number(data: &[u8]) -> Number {
    if let Parsed::Number { number, .. } = parse(data) {
        return number;
    }
    let mut n = Number::default();
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'+' if i == 0 => n.plus = true,
            b'0'..=b'9' => n.push(b - b'0'),
            _ => {}
        }
    }
    n
}

/// The longest slot that is a prefix of `n`'s digits (raw slots: nibbles of `packed`).
fn longest_match(set: &IntlPrefixes, n: &Number) -> usize {
    let mut best = 0;
    for p in set.slots {
        let len = p.len as usize;
        if len == 0 || len > MAX_INTL_PREFIX_DIGITS || len > n.len as usize {
            continue;
        }
        let all = (0..len).all(|i| {
            let want = ((p.packed >> (28 - 4 * i)) & 0xf) as u8;
            n.digit(i) == Some(want)
        });
        if all {
            best = best.max(len);
        }
    }
    best
}

fuzz_target!(|data: &[u8]| {
    let (set, rest) = prefixes(data);
    let n = number(rest);
    common::check_read_number(&n);

    let (domain, out) = set.normalize(&n);
    common::check_number(&out);
    assert!(out.len <= n.len);
    assert_eq!(out.overflow, n.overflow);

    // A local number in a global phone-context (the scanner prepended the context's digits)
    // that starts with an international prefix dials out of the context: that number.
    let local = || {
        let mut l = Number::default();
        for d in n.digits().skip(usize::from(n.context)) {
            l.push(d);
        }
        l
    };
    if n.plus && n.context > 0 && longest_match(&set, &local()) > 0 {
        let l = local();
        let best = longest_match(&set, &l);
        assert_eq!(domain, Domain::International);
        assert!(!out.plus);
        assert!(
            out.digits().eq(l.digits().skip(best)),
            "dialled out of the context: {n:?} -> {out:?}"
        );
    } else if n.plus {
        assert_eq!(
            (domain, out),
            (Domain::International, n),
            "a + number must stay as it is"
        );
    } else {
        assert_eq!(out.plus, n.plus);
        let best = longest_match(&set, &n);
        if best == 0 {
            assert_eq!(
                (domain, out),
                (Domain::National, n),
                "no prefix matched: {set:?}"
            );
        } else {
            assert_eq!(domain, Domain::International);
            assert_eq!(
                out.len as usize,
                n.len as usize - best,
                "strip {best} from {n:?}"
            );
            assert!(
                out.digits().eq(n.digits().skip(best)),
                "stripped digits: {n:?} -> {out:?}"
            );
        }
    }
    assert_eq!(Domain::from_u8(domain as u8), Some(domain));

    // The LPM key: the policy (global: 0), the domain byte, then exactly `len` digit nibbles.
    let key = out.key(domain);
    let prefix_len = key.prefix_len;
    let data = key.data;
    assert_eq!(prefix_len, 24 + 4 * u32::from(out.len));
    assert_eq!((data[0], data[1], data[2]), (0, 0, domain as u8));
    for i in 0..(data.len() - 3) * 2 {
        let nibble = (data[3 + i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0xf;
        assert_eq!(nibble, out.digit(i).unwrap_or(0), "key nibble {i}: {out:?}");
    }

    let shown = out.display(domain).to_string();
    let digits: String = out.digits().map(|d| char::from(b'0' + d)).collect();
    match domain {
        Domain::International => assert_eq!(shown, format!("+{digits}")),
        Domain::National => assert_eq!(shown, digits),
    }
});
