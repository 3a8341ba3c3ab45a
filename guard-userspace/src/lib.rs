//! sipguard userspace: loads the XDP program, programs its maps, and reads its counters.
//!
//! - [`rules`]: the rule model (prefix, action, id) and its validation;
//! - [`settings`]: global settings (SIP ports, international prefixes, mode);
//! - [`filter`]: the loaded program and its maps.

pub mod filter;
pub mod maps;
pub mod rules;
pub mod settings;

pub use filter::{Filter, FilterError, Verdict};
pub use rules::{Prefix, Rule, RuleError};
pub use settings::{Settings, SettingsError};
