//! sipguard userspace: loads the XDP program, programs its maps, and reads its counters.
//!
//! The modules are layers; a module imports only from the layers below it:
//!
//! ```text
//! cli                 one file per verb; renders the report
//! daemon              `sipguard run`: attach, reload, events, metrics, kernel log
//! report    replay    fleet     the typed rows every view reads; captures through a private
//!                               filter; the fleet's etcd keys
//! kernel    config    filter, maps, pins, raw syscalls | config file, runtime edits, state dir
//! model               rules, settings, countries, times
//! ```
//!
//! - [`model`]: the rule model (prefix, action, origin), settings, countries, time formats;
//! - [`config`]: the TOML config file (validated with file:line errors, owning the events and
//!   metrics settings) and the state directory (runtime edits, daemon record, lock);
//! - [`kernel`]: the loaded filter, its maps (atomic commits, counters), the pins under bpffs,
//!   the maps' kernel memory, and the raw `bpf(2)` and other system calls ([`kernel::sys`]);
//! - [`report`]: rules, settings, counters and sources read into typed rows, and their
//!   Prometheus form; drop events decoded;
//! - [`replay`]: pcap/pcapng reading and `sipguard replay`;
//! - [`fleet`]: the fleet's etcd keys (document, routers' status), for `run --fleet` and
//!   `sipguard fleet`;
//! - [`daemon`]: `sipguard run`;
//! - [`cli`]: the command line;
//! - [`logging`]: log lines for a terminal, a pipe or journald (used by the binary only).

pub mod cli;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod kernel;
pub mod logging;
pub mod model;
pub mod replay;
pub mod report;

pub use kernel::{Filter, FilterError, Verdict};
pub use model::{
    rules::{Prefix, Rule, RuleError},
    settings::{Settings, SettingsError, TinyFragment},
};
