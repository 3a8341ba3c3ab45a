//! Checks shared by the scanner targets (included with `#[path]`; not a target itself).

use guard_common::Number;
use guard_common::number::MAX_DIGITS;

/// A [`Number`] is well formed: at most `MAX_DIGITS` digits, each 0..=9, and nibbles past `len`
/// zero (so equal numbers compare equal and an LPM key carries no stray bits).
pub fn check_number(n: &Number) {
    let len = n.len as usize;
    assert!(len <= MAX_DIGITS, "len {len} > {MAX_DIGITS}: {n:?}");
    for i in 0..len {
        let d = n.digit(i).expect("digit below len");
        assert!(d <= 9, "digit {i} is {d}: {n:?}");
    }
    assert_eq!(n.digits().count(), len, "{n:?}");
    assert_eq!(n.digit(len), None, "{n:?}");
    let (hi_mask, lo_mask) = used_nibbles(len);
    assert_eq!(
        n.hi & !hi_mask,
        0,
        "stray nibbles in hi past len {len}: {n:?}"
    );
    assert_eq!(
        n.lo & !lo_mask,
        0,
        "stray nibbles in lo past len {len}: {n:?}"
    );
}

/// A Number as read or built digit by digit: well formed, and `overflow` only once it is full
/// (after `normalize` strips a prefix, an overflowed number is shorter).
pub fn check_read_number(n: &Number) {
    check_number(n);
    if n.overflow {
        assert_eq!(
            n.len as usize, MAX_DIGITS,
            "overflow before the number is full: {n:?}"
        );
    }
}

/// Masks of the nibbles that hold the first `len` digits in `hi` and `lo`.
fn used_nibbles(len: usize) -> (u64, u64) {
    let mask = |k: usize| match k {
        0 => 0,
        16.. => u64::MAX,
        k => !(u64::MAX >> (4 * k)),
    };
    (mask(len.min(16)), mask(len.saturating_sub(16)))
}
