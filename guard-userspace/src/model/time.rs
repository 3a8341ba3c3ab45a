//! Times as every view shows them: the kernel's `CLOCK_BOOTTIME` stamps as wall-clock time,
//! written as RFC 3339 UTC with milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `CLOCK_BOOTTIME` now, in ns (the kernel's clock: it keeps running in suspend).
pub fn boot_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_BOOTTIME` ns (the kernel's timestamps, past or future) to wall-clock time.
pub fn boot_ns_to_system(ns: u64) -> SystemTime {
    let boot_now = boot_now_ns();
    let now = SystemTime::now();
    if ns >= boot_now {
        return now + Duration::from_nanos(ns - boot_now);
    }
    now.checked_sub(Duration::from_nanos(boot_now - ns))
        .unwrap_or(UNIX_EPOCH)
}

/// RFC 3339 UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Now, as [`rfc3339`].
pub fn now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_the_recent_past() {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let t = boot_ns_to_system(boot_now - 5_000_000_000);
        let ago = SystemTime::now().duration_since(t).unwrap();
        assert!((4..7).contains(&ago.as_secs()), "{ago:?}");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
