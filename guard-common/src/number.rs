//! Dialled numbers: digit storage, normalisation against international dialling prefixes, and the
//! LPM key that both rules and lookups use.
//!
//! Digits are packed as nibbles, most significant first, into two `u64`s (16 digits each). This
//! keeps the number in two registers on the eBPF side, makes prefix comparison a mask-and-compare
//! instead of a loop, and turns "strip an international prefix" into a shift.

/// Digits kept from a dialled number and the most digits a rule prefix may have. Longer numbers
/// are matched on their leading `MAX_DIGITS` digits (E.164 numbers have at most 15).
pub const MAX_DIGITS: usize = 30;

/// Bytes of LPM key data: the policy (two bytes), one domain byte, then `MAX_DIGITS` nibbles.
pub const KEY_DATA_LEN: usize = 3 + MAX_DIGITS / 2;

/// Bits of a rule key before the digits: the policy and the domain.
pub const KEY_SCOPE_BITS: u32 = 24;

/// The policy of the global rules (`[[rule]]`): rules of `[[policy]]` tables have ids from 1.
pub const GLOBAL_POLICY: u16 = 0;

/// Most digits an international dialling prefix (`00`, `011`, `010`, `0011`, ...) may have.
pub const MAX_INTL_PREFIX_DIGITS: usize = 8;

/// Most international dialling prefixes that can be configured at once.
pub const MAX_INTL_PREFIXES: usize = 4;

/// Which numbering space a number or a rule prefix lives in. The value is the first byte of the
/// LPM key, so the two spaces never match each other.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Domain {
    /// E.164 digits after the country-code boundary: `+CC...`, or a national dial string that
    /// started with a configured international prefix, which was stripped.
    International = 1,
    /// A dial string matched as written.
    National = 2,
}

impl Domain {
    /// The domain stored as `u8` (an LPM key's first byte, [`crate::Event::domain`]).
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::International),
            2 => Some(Self::National),
            _ => None,
        }
    }
}

/// Digits of a number, packed as nibbles. `len` counts the digits kept (at most `MAX_DIGITS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Number {
    /// Digits 0..16, digit 0 in the top nibble.
    pub hi: u64,
    /// Digits 16..32, digit 16 in the top nibble.
    pub lo: u64,
    /// Digits kept.
    pub len: u8,
    /// The number had a leading `+`.
    pub plus: bool,
    /// More than `MAX_DIGITS` digits were dialled; the rest were not kept.
    pub overflow: bool,
    /// How many leading digits came from a global `phone-context` (0 when none): the rest are the
    /// local number as dialled in that context.
    pub context: u8,
}

impl Number {
    /// Appends a digit (0..=9). Past `MAX_DIGITS` digits, the digit is dropped and `overflow` set.
    #[inline(always)]
    pub fn push(&mut self, digit: u8) {
        let len = self.len as u32;
        let d = (digit & 0x0f) as u64;
        if len >= MAX_DIGITS as u32 {
            self.overflow = true;
        } else if len < 16 {
            self.hi |= d << (60 - 4 * len);
            self.len += 1;
        } else {
            self.lo |= d << (60 - 4 * (len - 16));
            self.len += 1;
        }
    }

    /// The digit at `i`, if kept.
    pub fn digit(&self, i: usize) -> Option<u8> {
        if i >= self.len as usize {
            return None;
        }
        let word = if i < 16 { self.hi } else { self.lo };
        Some(((word >> (60 - 4 * (i % 16))) & 0x0f) as u8)
    }

    /// The digit values (0..=9) kept, first digit first.
    pub fn digits(&self) -> impl Iterator<Item = u8> + use<> {
        let n = *self;
        let len = if (n.len as usize) < MAX_DIGITS {
            n.len as usize
        } else {
            MAX_DIGITS
        };
        (0..len).filter_map(move |i| n.digit(i))
    }

    /// The number as dialled in `domain`: `+23276123456` for [`Domain::International`], the bare
    /// digits for [`Domain::National`]. Host-side (formatting); the program never calls it.
    pub fn display(&self, domain: Domain) -> Dialled {
        Dialled {
            domain,
            number: *self,
        }
    }

    /// Appends `other`'s digits (keeping at most `MAX_DIGITS`). Loop-free: a 128-bit shift done
    /// on two words, so the verifier sees straight-line code.
    #[inline(always)]
    pub fn append(&mut self, other: &Number) {
        let s = 4 * self.len as u32; // 0..=120
        let (hi, lo) = if s == 0 {
            (other.hi, other.lo)
        } else if s < 64 {
            (other.hi >> s, (other.lo >> s) | (other.hi << (64 - s)))
        } else if s < 128 {
            (0, other.hi >> (s - 64))
        } else {
            (0, 0)
        };
        let total = self.len as u32 + other.len as u32;
        self.hi |= hi;
        // Digits 30 and 31 (the low byte of `lo`) are never kept.
        self.lo = (self.lo | lo) & !0xff;
        self.overflow |= other.overflow || total > MAX_DIGITS as u32;
        self.len = if total > MAX_DIGITS as u32 {
            MAX_DIGITS as u8
        } else {
            total as u8
        };
    }

    /// The number without its first `n` digits (n <= `MAX_DIGITS`), as a local number (no `+`,
    /// no context). Loop-free, like [`Number::append`].
    #[inline(always)]
    fn without_lead(&self, n: u8) -> Number {
        let s = 4 * (n as u32).min(MAX_DIGITS as u32); // 0..=120
        let (hi, lo) = if s == 0 {
            (self.hi, self.lo)
        } else if s < 64 {
            ((self.hi << s) | (self.lo >> (64 - s)), self.lo << s)
        } else if s < 128 {
            (self.lo << (s - 64), 0)
        } else {
            (0, 0)
        };
        Number {
            hi,
            lo,
            len: self.len.saturating_sub(n),
            plus: false,
            overflow: self.overflow,
            context: 0,
        }
    }

    /// The first `MAX_INTL_PREFIX_DIGITS` digits, packed like `hi`'s top 32 bits.
    #[inline(always)]
    fn lead(&self) -> u32 {
        (self.hi >> 32) as u32
    }

    /// Drops the first `n` digits (n <= `MAX_INTL_PREFIX_DIGITS`).
    #[inline(always)]
    fn strip(&mut self, n: u8) {
        if n == 0 {
            return;
        }
        let n = if n as usize > MAX_INTL_PREFIX_DIGITS {
            MAX_INTL_PREFIX_DIGITS as u8
        } else {
            n
        };
        let s = 4 * n as u32; // 4..=32
        self.hi = (self.hi << s) | (self.lo >> (64 - s));
        self.lo <<= s;
        self.len = self.len.saturating_sub(n);
    }

    /// The LPM key for this number in `domain`, among the global rules.
    #[inline(always)]
    pub fn key(&self, domain: Domain) -> LookupKey {
        self.key_in(GLOBAL_POLICY, domain)
    }

    /// The LPM key for this number in `domain`, among the rules of `policy`.
    #[inline(always)]
    pub fn key_in(&self, policy: u16, domain: Domain) -> LookupKey {
        let hi = self.hi.to_be_bytes();
        let lo = self.lo.to_be_bytes();
        let p = policy.to_be_bytes();
        LookupKey {
            prefix_len: KEY_SCOPE_BITS + 4 * self.len as u32,
            data: [
                p[0],
                p[1],
                domain as u8,
                hi[0],
                hi[1],
                hi[2],
                hi[3],
                hi[4],
                hi[5],
                hi[6],
                hi[7],
                lo[0],
                lo[1],
                lo[2],
                lo[3],
                lo[4],
                lo[5],
                lo[6],
            ],
        }
    }
}

/// A [`Number`] in its [`Domain`], displayed as a rule prefix is written: `+` and the digits
/// for international numbers, the bare digits for national ones. See [`Number::display`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dialled {
    pub domain: Domain,
    pub number: Number,
}

impl core::fmt::Display for Dialled {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write as _;
        if self.domain == Domain::International {
            f.write_char('+')?;
        }
        for d in self.number.digits() {
            f.write_char(char::from(b'0' + d))?;
        }
        Ok(())
    }
}

/// One international dialling prefix, such as `00` or `011`, packed like `Number::hi`'s top bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntlPrefix {
    /// Digits, first digit in the top nibble.
    pub packed: u32,
    /// Digits used; 0 means the slot is empty.
    pub len: u32,
}

impl IntlPrefix {
    /// Packs a digit string (`"011"`). `None` if it is empty, too long or has a non-digit.
    pub fn from_digits(digits: &str) -> Option<Self> {
        let b = digits.as_bytes();
        if b.is_empty() || b.len() > MAX_INTL_PREFIX_DIGITS {
            return None;
        }
        let mut packed = 0u32;
        for (i, c) in b.iter().enumerate() {
            if !c.is_ascii_digit() {
                return None;
            }
            packed |= ((c - b'0') as u32) << (28 - 4 * i as u32);
        }
        Some(Self {
            packed,
            len: b.len() as u32,
        })
    }

    /// The digit values (0..=9), first digit first: the inverse of [`IntlPrefix::from_digits`].
    /// Empty for an empty slot.
    pub fn digits(&self) -> impl Iterator<Item = u8> + use<> {
        let packed = self.packed;
        let len = if self.len < MAX_INTL_PREFIX_DIGITS as u32 {
            self.len
        } else {
            MAX_INTL_PREFIX_DIGITS as u32
        };
        (0..len).map(move |i| ((packed >> (28 - 4 * i)) & 0x0f) as u8)
    }

    #[inline(always)]
    fn matches(&self, n: &Number) -> bool {
        if self.len == 0 || self.len > MAX_INTL_PREFIX_DIGITS as u32 || (n.len as u32) < self.len {
            return false;
        }
        let mask = !u32::MAX.checked_shr(4 * self.len).unwrap_or(0);
        (n.lead() ^ self.packed) & mask == 0
    }
}

/// Prints the digit string (`011`), as [`IntlPrefix::from_digits`] reads it.
impl core::fmt::Display for IntlPrefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write as _;
        for d in self.digits() {
            f.write_char(char::from(b'0' + d))?;
        }
        Ok(())
    }
}

/// The configured international dialling prefixes. The longest matching one wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntlPrefixes {
    pub slots: [IntlPrefix; MAX_INTL_PREFIXES],
}

impl IntlPrefixes {
    /// `["00", "011"]`, the ITU and NANP international prefixes.
    pub fn default_set() -> Self {
        let mut p = Self::default();
        p.slots[0] = IntlPrefix {
            packed: 0x0000_0000,
            len: 2,
        };
        p.slots[1] = IntlPrefix {
            packed: 0x0110_0000,
            len: 3,
        };
        p
    }

    /// The used slots (`len > 0`), in slot order.
    pub fn iter(&self) -> impl Iterator<Item = IntlPrefix> + use<> {
        self.slots.into_iter().filter(|p| p.len > 0)
    }

    /// Normalises a dialled number: `+` numbers and numbers that start with a configured
    /// international prefix (stripped, longest first) are international; anything else is a
    /// national dial string matched as written.
    ///
    /// A local number in a global context (`tel:0023276123456;phone-context=+44`, see
    /// [`Number::context`]) that starts with an international prefix dials out of that context:
    /// it is that international number (`+23276123456`), not the context's country code
    /// followed by the prefix, which no rule for the real destination would match.
    #[inline(always)]
    pub fn normalize(&self, n: &Number) -> (Domain, Number) {
        if n.plus {
            if n.context == 0 {
                return (Domain::International, *n);
            }
            let mut local = n.without_lead(n.context);
            let best = self.longest_match(&local);
            if best == 0 {
                return (Domain::International, *n);
            }
            local.strip(best as u8);
            return (Domain::International, local);
        }
        let best = self.longest_match(n);
        let mut out = *n;
        if best == 0 {
            return (Domain::National, out);
        }
        out.strip(best as u8);
        (Domain::International, out)
    }

    /// The length of the longest configured prefix that `n` starts with, 0 if none.
    #[inline(always)]
    fn longest_match(&self, n: &Number) -> u32 {
        let mut best = 0u32;
        // Unrolled by hand: four slots, no loop for the verifier to walk.
        if self.slots[0].matches(n) && self.slots[0].len > best {
            best = self.slots[0].len;
        }
        if self.slots[1].matches(n) && self.slots[1].len > best {
            best = self.slots[1].len;
        }
        if self.slots[2].matches(n) && self.slots[2].len > best {
            best = self.slots[2].len;
        }
        if self.slots[3].matches(n) && self.slots[3].len > best {
            best = self.slots[3].len;
        }
        best
    }
}

/// LPM trie key: `prefix_len` bits of `data` are significant. Rules and lookups use the same
/// layout: bytes 0 and 1 are the policy (big-endian, [`GLOBAL_POLICY`] for the global rules),
/// byte 2 the `Domain`, then one nibble per digit. Each policy's rules are a subtree of their
/// own, so a lookup in one policy never matches another's rules. A lookup's `prefix_len` covers
/// exactly the digits dialled, so zero padding can never match a rule's further digits.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LookupKey {
    pub prefix_len: u32,
    pub data: [u8; KEY_DATA_LEN],
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::ToString, vec::Vec};

    use proptest::prelude::*;

    use super::*;

    fn num(s: &str) -> Number {
        let mut n = Number::default();
        for c in s.bytes() {
            if c == b'+' {
                n.plus = true;
            } else {
                n.push(c - b'0');
            }
        }
        n
    }

    fn digits(n: &Number) -> [u8; 32] {
        let mut out = [b' '; 32];
        for (i, o) in out.iter_mut().enumerate().take(n.len as usize) {
            *o = b'0' + n.digit(i).unwrap();
        }
        out
    }

    #[test]
    fn push_and_read_back_across_the_word_boundary() {
        let n = num("0123456789012345678901234567890123");
        assert_eq!(n.len, 30);
        assert!(n.overflow);
        assert_eq!(&digits(&n)[..30], b"012345678901234567890123456789");
    }

    #[test]
    fn append_concatenates_and_caps() {
        let mut a = num("232");
        a.append(&num("76123456"));
        assert_eq!(a.len, 11);
        assert_eq!(&digits(&a)[..11], b"23276123456");
        let mut a = num("1234567890123456789");
        a.append(&num("98765432109876543"));
        assert_eq!(a.len, 30);
        assert!(a.overflow);
        assert_eq!(&digits(&a)[..30], b"123456789012345678998765432109");
        let mut e = Number::default();
        e.append(&num("44"));
        assert_eq!(&digits(&e)[..2], b"44");
    }

    #[test]
    fn longest_intl_prefix_wins_and_is_stripped() {
        let mut p = IntlPrefixes::default_set();
        let (d, n) = p.normalize(&num("0113216"));
        assert_eq!(d, Domain::International);
        assert_eq!(&digits(&n)[..4], b"3216");
        let (d, n) = p.normalize(&num("00232"));
        assert_eq!((d, n.len), (Domain::International, 3));
        p.slots[2] = IntlPrefix::from_digits("0113").unwrap();
        let (d, n) = p.normalize(&num("0113216"));
        assert_eq!(d, Domain::International);
        assert_eq!(&digits(&n)[..3], b"216");
    }

    #[test]
    fn eight_digit_prefix_and_strip_across_words() {
        let mut p = IntlPrefixes::default();
        p.slots[0] = IntlPrefix::from_digits("12345678").unwrap();
        let n = num("1234567890123456789");
        let (d, s) = p.normalize(&n);
        assert_eq!(d, Domain::International);
        assert_eq!(s.len, 11);
        assert_eq!(&digits(&s)[..11], b"90123456789");
        let (d, _) = p.normalize(&num("1234567"));
        assert_eq!(d, Domain::National);
    }

    #[test]
    fn plus_numbers_are_international_unchanged() {
        let p = IntlPrefixes::default_set();
        let (d, n) = p.normalize(&num("+00232"));
        assert_eq!(d, Domain::International);
        assert_eq!(&digits(&n)[..5], b"00232");
    }

    #[test]
    fn key_prefix_len_covers_only_dialled_digits() {
        let k = num("232").key(Domain::International);
        let pl = k.prefix_len;
        assert_eq!(pl, 24 + 12);
        assert_eq!((k.data[0], k.data[1]), (0, 0), "the global rules' policy");
        assert_eq!(k.data[2], 1);
        assert_eq!(k.data[3], 0x23);
        assert_eq!(k.data[4], 0x20);
        let k = num("232").key_in(0x0102, Domain::National);
        assert_eq!(&k.data[..5], &[1, 2, 2, 0x23, 0x20]);
    }

    #[test]
    fn digits_iterate_digit_values() {
        let n = num("0123456789012345678901");
        let d: Vec<u8> = n.digits().collect();
        assert_eq!(
            d,
            [
                0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1
            ]
        );
        assert_eq!(Number::default().digits().count(), 0);
        let long = num("0123456789012345678901234567890123");
        assert_eq!(long.digits().count(), MAX_DIGITS);
        assert_eq!(long.digits().last(), Some(9));
    }

    #[test]
    fn display_marks_international_numbers() {
        let n = num("23276123456");
        assert_eq!(n.display(Domain::International).to_string(), "+23276123456");
        assert_eq!(n.display(Domain::National).to_string(), "23276123456");
        assert_eq!(
            Number::default().display(Domain::International).to_string(),
            "+"
        );
        // What normalize produced is what is shown: the prefix is gone.
        let (d, s) = IntlPrefixes::default_set().normalize(&num("00232761"));
        assert_eq!(s.display(d).to_string(), "+232761");
        let (d, s) = IntlPrefixes::default_set().normalize(&num("0990123"));
        assert_eq!(s.display(d).to_string(), "0990123");
    }

    #[test]
    fn domain_from_u8() {
        assert_eq!(Domain::from_u8(1), Some(Domain::International));
        assert_eq!(Domain::from_u8(2), Some(Domain::National));
        assert_eq!(Domain::from_u8(0), None);
        assert_eq!(Domain::from_u8(3), None);
    }

    #[test]
    fn intl_prefix_digits_and_display() {
        let p = IntlPrefix::from_digits("0011").unwrap();
        assert_eq!(p.digits().collect::<Vec<_>>(), [0, 0, 1, 1]);
        assert_eq!(p.to_string(), "0011");
        assert_eq!(
            IntlPrefix::from_digits("12345678").unwrap().to_string(),
            "12345678"
        );
        assert_eq!(IntlPrefix::default().to_string(), "");
        let set = IntlPrefixes::default_set();
        let shown: Vec<_> = set.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["00", "011"]);
        let mut sparse = IntlPrefixes::default();
        sparse.slots[3] = IntlPrefix::from_digits("010").unwrap();
        let shown: Vec<_> = sparse.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["010"]);
        assert_eq!(IntlPrefixes::default().iter().count(), 0);
    }

    proptest! {
        #[test]
        fn intl_prefix_round_trips(s in "[0-9]{1,8}") {
            let p = IntlPrefix::from_digits(&s).unwrap();
            prop_assert_eq!(p.to_string(), s.clone());
            prop_assert_eq!(IntlPrefix::from_digits(&p.to_string()), Some(p));
        }

        #[test]
        fn digits_round_trip_through_display(s in "[0-9]{0,30}") {
            let n = num(&s);
            let shown: std::string::String = n.digits().map(|d| char::from(b'0' + d)).collect();
            prop_assert_eq!(&shown, &s);
            prop_assert_eq!(n.display(Domain::National).to_string(), s.clone());
            prop_assert_eq!(n.display(Domain::International).to_string(), std::format!("+{s}"));
        }
    }
}
