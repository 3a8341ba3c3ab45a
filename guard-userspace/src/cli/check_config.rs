//! `sipguard check-config FILE`: validates a config without root and without a kernel, with the
//! same `file:line: problem` errors as `run`, and prints what it holds. Exit codes: 0 the config
//! is valid, 1 it is invalid, 2 it cannot be read.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Result;
use serde_json::json;

use crate::{
    config::{self, ConfigError, ConfigFile},
    model::rules::Origin,
};

/// The exit code `check-config` ends with (the error carries it to `main`).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CheckFailed {
    /// 1: invalid; 2: unreadable.
    pub code: u8,
    /// Shown as the message itself (not as a cause under it).
    pub error: ConfigError,
}

/// The exit code of a config error: 2 when the file could not be read, 1 when it is invalid.
pub fn exit_code(e: &ConfigError) -> u8 {
    match e {
        ConfigError::Read { .. }
        | ConfigError::NotRegular { .. }
        | ConfigError::TooLarge { .. } => 2,
        _ => 1,
    }
}

pub fn run(path: &Path, json: bool) -> Result<()> {
    let cfg = config::load(path).map_err(|error| CheckFailed {
        code: exit_code(&error),
        error,
    })?;
    print!("{}", summary(&cfg, json)?);
    Ok(())
}

/// What a valid config holds.
pub fn summary(cfg: &ConfigFile, json: bool) -> Result<String> {
    let mut per_action: BTreeMap<&str, usize> = BTreeMap::new();
    let mut countries: BTreeMap<&str, usize> = BTreeMap::new();
    let mut limited = 0;
    let mut in_policies = 0;
    for (p, r) in &cfg.rules {
        debug_assert_eq!(r.origin, Origin::Config);
        *per_action.entry(r.action.as_str()).or_default() += 1;
        if let Some(c) = &r.country {
            *countries.entry(c.as_str()).or_default() += 1;
        }
        limited += r.limits.is_some() as usize;
        in_policies += (p.policy != 0) as usize;
    }
    let customers = cfg.customers.customers.len();
    let policies = cfg.customers.policies.len();
    let sources: usize = cfg.customers.entries().len();
    if json {
        let v = json!({
            "file": cfg.path.display().to_string(),
            "valid": true,
            "rules": cfg.rules.len(),
            "rules_per_action": per_action,
            "rules_in_policies": in_policies,
            "countries": countries,
            "customers": customers,
            "customer_entries": sources,
            "policies": policies,
            "rules_with_limits": limited,
            "quarantine": cfg.quarantine.is_some(),
            "mode": cfg.settings.mode.as_str(),
            "max_rules": cfg.settings.max_rules,
            "warnings": cfg.warnings,
        });
        return Ok(format!("{v}\n"));
    }
    let mut out = String::new();
    writeln!(out, "{}: valid", cfg.path.display())?;
    let actions: Vec<String> = per_action.iter().map(|(a, n)| format!("{n} {a}")).collect();
    writeln!(
        out,
        "rules: {} ({}); {in_policies} of them in policies; max_rules {}",
        cfg.rules.len(),
        if actions.is_empty() {
            "none".to_string()
        } else {
            actions.join(", ")
        },
        cfg.settings.max_rules
    )?;
    if !countries.is_empty() {
        let list: Vec<String> = countries
            .iter()
            .map(|(c, n)| format!("{c} ({n} prefixes)"))
            .collect();
        writeln!(out, "countries expanded: {}", list.join(", "))?;
    }
    writeln!(
        out,
        "customers: {customers} ({sources} source entries); policies: {policies}"
    )?;
    writeln!(out, "rules with limits: {limited}")?;
    match &cfg.quarantine {
        Some(q) => writeln!(
            out,
            "quarantine: after more than {} calls or {} over-limit calls in {} s, for {} s ({}; 0: not a trigger)",
            q.calls,
            q.over_limit,
            q.window_secs,
            q.duration_secs,
            q.action.as_str()
        )?,
        None => writeln!(out, "quarantine: none")?,
    }
    writeln!(out, "mode: {}", cfg.settings.mode.as_str())?;
    for w in &cfg.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(out)
}
