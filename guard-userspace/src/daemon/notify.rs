//! The service manager's notify protocol (`sd-notify`), for `Type=notify` units: READY=1 once
//! every interface is attached and the config applied, RELOADING=1 … READY=1 around a reload,
//! STOPPING=1, a STATUS= line for `systemctl status`, and the watchdog ping when the unit sets
//! `WatchdogSec=`. Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("telling systemd: {e}");
    }
}

/// Attached and applied: `systemctl start` returns now.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd waits for the next [`ready`]).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// The watchdog interval systemd expects pings within, if it set one.
pub fn watchdog() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

pub fn ping() {
    send(&[NotifyState::Watchdog]);
}
