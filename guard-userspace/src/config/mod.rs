//! What the operator asked for and what must outlive the daemon: the config file (with the
//! events and metrics settings), the runtime rule edits and the state directory. Below the
//! kernel and report layers; imports only the model.

pub mod file;
pub mod fleet;
pub mod state;

pub use file::{
    ConfigError, ConfigFile, ConfigLocation, DEFAULT_METRICS_LISTEN, DEFAULT_PATH, EMBEDDED,
    EventOutputs, FailMode, load, parse,
};
pub use state::{StateDir, StateError};
