//! Eight bytes at a time ("SIMD within a register"): the word operations both scanners use to
//! skip what does not matter, such as the rest of a header line or a run of digits, in one step.
//!
//! A word is eight payload bytes read little-endian (byte `i` of the payload in bits `8i..8i+8`),
//! with bytes past the end of the input as zero; see [`crate::ByteSource::word`]. Every function
//! here is branch-free, loop-free and compiles to a few instructions on both sides.

const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte: the flags of a byte mask.
pub const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The high bit of every byte of `w` that is zero. Bits above the lowest one may be false
/// positives (a borrow from a zero byte), so only [`first`] of the result is exact.
#[inline(always)]
pub const fn zeros(w: u64) -> u64 {
    w.wrapping_sub(ONES) & !w & HIGHS
}

/// The high bit of every byte of `w` equal to `b` (exact for the lowest one, see [`zeros`]).
#[inline(always)]
pub const fn eq(w: u64, b: u8) -> u64 {
    zeros(w ^ (ONES * b as u64))
}

/// Index (0..8) of the first byte of `w` that is one of `set`, or 8 when none is.
#[inline(always)]
pub const fn first_of(w: u64, set: &[u8]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < set.len() {
        mask |= eq(w, set[i]);
        i += 1;
    }
    first(mask)
}

/// Index (0..8) of the lowest byte flagged in `mask` (a result of [`eq`] or [`zeros`], or of
/// [`non_digits`]), or 8 when none is.
#[inline(always)]
pub const fn first(mask: u64) -> u32 {
    if mask == 0 {
        return 8;
    }
    let low = mask & mask.wrapping_neg();
    // `low >> 7` is 1 << 8k; multiplying by the byte ramp puts k in the top byte.
    ((low >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
}

/// The high bit of every byte of `w` equal to `b`, exact in every byte (no borrows across bytes).
#[inline(always)]
pub const fn eq_exact(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES * b as u64);
    !(((x & LOWS).wrapping_add(LOWS)) | x | LOWS)
}

/// The high bit of every byte of `w` that is neither SP nor HTAB (exact in every byte).
#[inline(always)]
pub const fn non_blanks(w: u64) -> u64 {
    !(eq_exact(w, b' ') | eq_exact(w, b'\t')) & HIGHS
}

/// Index (0..8) of the highest byte flagged in an exact `mask` (such as [`non_blanks`]); the mask
/// must not be zero.
#[inline(always)]
pub const fn last(mask: u64) -> u32 {
    7 - first(mask.swap_bytes())
}

/// The high bit of every byte of `w` that is not an ASCII digit (exact in every byte).
#[inline(always)]
pub const fn non_digits(w: u64) -> u64 {
    // Per byte, without carries or borrows across bytes: `below` clears the high bit of bytes
    // under '0', `above` sets it for bytes over '9' (both on the low seven bits); bytes with the
    // high bit set are never digits.
    let below = (w | HIGHS).wrapping_sub(ONES * b'0' as u64);
    let above = (w & !HIGHS).wrapping_add(ONES * (0x7f - b'9') as u64);
    (!below | above | w) & HIGHS
}

/// The first `n` (0..=8) bytes of `w`, the others zeroed.
#[inline(always)]
pub const fn low_bytes(w: u64, n: u32) -> u64 {
    if n >= 8 {
        w
    } else {
        w & ((1u64 << (8 * n)) - 1)
    }
}

/// Eight ASCII digits (byte 0 first) packed as nibbles, byte 0's digit in the top nibble: the
/// layout of [`crate::Number::hi`]'s top half. Bytes that are not digits give garbage nibbles;
/// callers keep only the leading digits.
#[inline(always)]
pub const fn pack_digits(w: u64) -> u32 {
    let d = w & (ONES * 0x0f);
    // Pairs: byte 2k's digit above byte 2k+1's, in the low byte of each 16-bit lane.
    let pairs = ((d & 0x00ff_00ff_00ff_00ff) << 4) | ((d >> 8) & 0x00ff_00ff_00ff_00ff);
    (((pairs & 0xff) << 24)
        | (((pairs >> 16) & 0xff) << 16)
        | (((pairs >> 32) & 0xff) << 8)
        | ((pairs >> 48) & 0xff)) as u32
}

/// `w` with ASCII upper-case letters made lower-case in the bytes selected by `letters` (0x20 in
/// each byte that holds a letter of the literal it is compared with, 0 elsewhere).
#[inline(always)]
pub const fn lower(w: u64, letters: u64) -> u64 {
    w | letters
}

/// A literal of up to eight bytes as a word, and the mask of its letter bytes for [`lower`].
pub const fn literal(lit: &[u8]) -> (u64, u64) {
    let mut w = 0u64;
    let mut letters = 0u64;
    let mut i = 0;
    while i < lit.len() && i < 8 {
        w |= (lit[i] as u64) << (8 * i);
        if lit[i].is_ascii_lowercase() {
            letters |= 0x20 << (8 * i);
        }
        i += 1;
    }
    (w, letters)
}

/// Whether the first `lit.len()` bytes of `w` are the (lower-case) literal, letters compared
/// case-insensitively.
#[inline(always)]
pub const fn starts_with_ci(w: u64, lit: (u64, u64), len: u32) -> bool {
    low_bytes(lower(w, lit.1), len) == lit.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(a)
    }

    #[test]
    fn finds_the_first_match() {
        assert_eq!(first(eq(word(b"abc\ndef\n"), b'\n')), 3);
        assert_eq!(first(eq(word(b"\n"), b'\n')), 0);
        assert_eq!(first(eq(word(b"abcdefgh"), b'\n')), 8);
        assert_eq!(first(eq(word(b"abcdefg\n"), b'\n')), 7);
        // A 0x01 byte above a match is no trouble: only the lowest flag is used.
        assert_eq!(first(zeros(word(b"a\0\x01\x01b"))), 1);
        for i in 0..8 {
            let mut b = *b"xxxxxxxx";
            b[i] = b';';
            assert_eq!(first(eq(word(&b), b';')), i as u32);
        }
    }

    #[test]
    fn blanks_and_last() {
        assert_eq!(last(non_blanks(word(b"abc  \t  "))), 2);
        assert_eq!(last(non_blanks(word(b"abcdefgh"))), 7);
        assert_eq!(non_blanks(word(b" \t \t \t \t")), 0);
        for b in 0..=255u8 {
            let w = word(&[b; 8]);
            assert_eq!(non_blanks(w) == 0, b == b' ' || b == b'\t', "{b:#x}");
            assert_eq!(eq_exact(w, b), HIGHS);
        }
    }

    #[test]
    fn digits() {
        assert_eq!(first(non_digits(word(b"23276123"))), 8);
        assert_eq!(first(non_digits(word(b"456@exam"))), 3);
        assert_eq!(first(non_digits(word(b"12"))), 2);
        for b in 0..=255u8 {
            let w = word(&[b, b'1', b'2', b'3', b'4', b'5', b'6', b'7']);
            assert_eq!(first(non_digits(w)) == 8, b.is_ascii_digit(), "{b:#x}");
        }
        assert_eq!(pack_digits(word(b"23276123")), 0x2327_6123);
        assert_eq!(pack_digits(word(b"01234567")), 0x0123_4567);
    }

    #[test]
    fn literals() {
        let lit = literal(b"call-id:");
        assert!(starts_with_ci(word(b"Call-ID:"), lit, 8));
        assert!(starts_with_ci(word(b"CALL-ID:"), lit, 8));
        assert!(!starts_with_ci(word(b"Call-ID "), lit, 8));
        assert!(!starts_with_ci(word(b"Call\rID:"), lit, 8));
        let to = literal(b"to:");
        assert!(starts_with_ci(word(b"To: <sip"), to, 3));
        assert!(!starts_with_ci(word(b"Tone: x"), to, 3));
    }
}
