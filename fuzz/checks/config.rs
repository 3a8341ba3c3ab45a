//! The TOML config validator on arbitrary text (the bytes as UTF-8 when they are, lossily
//! decoded when not): `sipguard::config::parse` never panics; an error names the file first
//! (`fuzz.toml` or `fuzz.toml:LINE`, with a line inside the text) and then a non-empty problem;
//! a config it accepts keeps its rules within `max_rules`.
//!
//! Shared by the cargo-fuzz target and guard-userspace's corpus test (`tests/fuzz_corpus.rs`), so
//! that both check the same invariants.

use sipguard::config::{ConfigError, parse};
use std::path::Path;

/// Panics when `data` breaks an invariant.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match parse(Path::new("fuzz.toml"), &text) {
        Ok(cfg) => {
            assert_eq!(cfg.path, Path::new("fuzz.toml"));
            if cfg.has_settings {
                assert!(
                    cfg.rules.len() as u64 <= u64::from(cfg.settings.max_rules),
                    "{} rules accepted with max_rules = {}",
                    cfg.rules.len(),
                    cfg.settings.max_rules
                );
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with("fuzz.toml"),
                "error does not name the file: {shown}"
            );
            match e {
                ConfigError::At {
                    path,
                    line,
                    message,
                } => {
                    assert_eq!(path, "fuzz.toml");
                    let lines = text.split('\n').count();
                    assert!(
                        (1..=lines).contains(&line),
                        "line {line} of {lines}: {shown}"
                    );
                    assert!(!message.trim().is_empty(), "no message: {shown:?}");
                }
                ConfigError::File { path, message } => {
                    assert_eq!(path, "fuzz.toml");
                    assert!(!message.trim().is_empty(), "no message: {shown:?}");
                }
                // Reading and file checks belong to `load`; `parse` never reads a file.
                _ => panic!("parse never reads a file: {shown}"),
            }
        }
    }
}
