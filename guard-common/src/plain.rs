//! Zeroing and copying plain data in 32-bit words with volatile accesses. In BPF, LLVM turns a
//! run of small stores or a struct copy into a call to `memset`/`memcpy`/`memmove`, and the ones
//! the eBPF object gets loop byte by byte; volatile word accesses are never merged into such a
//! call. On the host these are ordinary word loops.

use core::{
    mem::{align_of, size_of},
    ptr,
};

/// Zeroes `t` (every byte, padding included).
#[inline(always)]
pub fn zero<T: Copy>(t: &mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let p = t as *mut T as *mut u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: `i` words of 4 bytes lie inside `*t`, which is aligned for u32.
        unsafe { ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Copies `src` to `dst` (every byte, padding included).
#[inline(always)]
pub fn copy<T: Copy>(dst: &mut T, src: &T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let d = dst as *mut T as *mut u32;
    let s = src as *const T as *const u32;
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: as in `zero`, for both values; they cannot overlap (`&mut` and `&`).
        unsafe { ptr::write_volatile(d.add(i), ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}
