//! sipguard userspace: loads the XDP program, programs its maps, and reads its counters.
//!
//! - [`rules`]: the rule model (prefix, action, id) and its validation;
//! - [`settings`]: global settings (SIP ports, international prefixes, mode);
//! - [`config`]: the TOML config file, validated with file:line errors;
//! - [`country`]: ISO countries to calling-code prefixes (libphonenumber data);
//! - [`maps`]: the filter's maps, atomic commits of rules and settings, counters;
//! - [`filter`]: the loaded program and its maps;
//! - [`memory`]: the kernel memory of the maps;
//! - [`pins`]: the pinned state under bpffs, one directory per interface;
//! - [`state`]: runtime rule edits and daemon records in the state directory;
//! - [`batch`]: batched map syscalls (`BPF_MAP_*_BATCH`) for large rule sets;
//! - [`daemon`]: `sipguard run`;
//! - [`events`]: drop events from the ring buffer, as JSON lines and on the events socket;
//! - [`metrics`]: the Prometheus `/metrics` endpoint;
//! - [`cli`]: the verbs that work on the pinned state (`rules`, `stats`, `status`, `detach`);
//! - [`capture`]: pcap/pcapng reading, and [`replay`]: `sipguard replay`.

pub mod batch;
pub mod capture;
pub mod cli;
pub mod config;
pub mod country;
pub mod daemon;
pub mod events;
pub mod filter;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod pins;
pub mod replay;
pub mod rules;
pub mod settings;
pub mod state;

pub use filter::{Filter, FilterError, Verdict};
pub use rules::{Prefix, Rule, RuleError};
pub use settings::{Settings, SettingsError};

/// Whether we run as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The interface index of `name`, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}
