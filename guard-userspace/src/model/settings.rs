//! Global settings: SIP ports, international dialling prefixes, and the mode.

use guard_common::{
    Config, Domain, IntlPrefix, IntlPrefixes, MAX_RULES, MAX_RULES_LIMIT, Mode,
    number::{MAX_INTL_PREFIX_DIGITS, MAX_INTL_PREFIXES},
};
use thiserror::Error;

use super::rules::{Prefix, RuleSet};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("sip_ports is empty: at least one SIP port is needed")]
    NoPorts,
    #[error("sip_ports: port 0 is not a valid UDP port")]
    PortZero,
    #[error("international prefix `{0}` must be 1 to {MAX_INTL_PREFIX_DIGITS} digits")]
    BadIntlPrefix(String),
    #[error("{0} international prefixes given; at most {MAX_INTL_PREFIXES} are supported")]
    TooManyIntlPrefixes(usize),
    #[error("max_rules: {0} is out of range (1 to {MAX_RULES_LIMIT})")]
    MaxRules(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub sip_ports: Vec<u16>,
    pub intl_prefixes: Vec<String>,
    pub mode: Mode,
    /// Kernel-side aya-log debug lines for every rule match (off: it costs per matched INVITE).
    pub kernel_debug_log: bool,
    /// Call accounting: calls vs retransmissions, sources per rule, drop events.
    pub track_calls: bool,
    /// Drop events per second and CPU; 0 turns events off.
    pub event_rate: u32,
    /// Events a CPU may send at once above the rate.
    pub event_burst: u32,
    /// Rules each rule trie (and the per-rule counter map) can hold: the maps' size, applied
    /// when they are created. Pinned maps keep the size they were created with.
    pub max_rules: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sip_ports: vec![5060],
            intl_prefixes: vec!["00".into(), "011".into()],
            mode: Mode::Enforce,
            kernel_debug_log: false,
            track_calls: true,
            event_rate: 50,
            event_burst: 100,
            max_rules: MAX_RULES,
        }
    }
}

impl Settings {
    /// The settings a live kernel config (and the port list) stand for: the inverse of
    /// [`Settings::to_config`]. `max_rules` is the default; the caller knows the maps' size.
    pub fn live(config: &Config, sip_ports: Vec<u16>) -> Self {
        Self {
            sip_ports,
            intl_prefixes: config
                .intl_prefixes
                .slots
                .iter()
                .filter(|s| s.len > 0)
                .map(|s| s.to_string())
                .collect(),
            mode: Mode::from_u32(config.mode).unwrap_or(Mode::Enforce),
            kernel_debug_log: config.flags & guard_common::CONFIG_FLAG_DEBUG_LOG != 0,
            track_calls: config.flags & guard_common::CONFIG_FLAG_NO_CALLS == 0,
            event_rate: config.event_rate,
            event_burst: config.event_burst,
            max_rules: MAX_RULES,
        }
    }

    /// Why a national rule `prefix` can never match under these international prefixes: every
    /// dial string that starts with it starts with an international prefix, so the filter reads
    /// it as an international number. `None` for a rule that can match.
    pub fn unreachable(&self, prefix: &Prefix) -> Option<String> {
        if prefix.domain != Domain::National {
            return None;
        }
        let digits = prefix.digit_string();
        let intl = self
            .intl_prefixes
            .iter()
            .filter(|i| digits.starts_with(i.as_str()))
            .max_by_key(|i| i.len())?;
        Some(format!(
            "national rule {prefix} can never match: dial strings that start with the international prefix {intl} are read as international numbers (write the rule as +{})",
            &digits[intl.len()..]
        ))
    }

    /// [`Settings::unreachable`] for every rule of `rules`.
    pub fn unreachable_rules(&self, rules: &RuleSet) -> Vec<String> {
        rules.keys().filter_map(|p| self.unreachable(p)).collect()
    }

    /// Checks everything and builds the kernel config. Nothing is applied if this fails.
    pub fn to_config(&self) -> Result<Config, SettingsError> {
        if self.sip_ports.is_empty() {
            return Err(SettingsError::NoPorts);
        }
        if self.sip_ports.contains(&0) {
            return Err(SettingsError::PortZero);
        }
        if !(1..=MAX_RULES_LIMIT).contains(&self.max_rules) {
            return Err(SettingsError::MaxRules(self.max_rules.into()));
        }
        if self.intl_prefixes.len() > MAX_INTL_PREFIXES {
            return Err(SettingsError::TooManyIntlPrefixes(self.intl_prefixes.len()));
        }
        let mut prefixes = IntlPrefixes::default();
        for (slot, p) in prefixes.slots.iter_mut().zip(&self.intl_prefixes) {
            *slot = IntlPrefix::from_digits(p)
                .ok_or_else(|| SettingsError::BadIntlPrefix(p.clone()))?;
        }
        let mut config = Config::new(self.mode, prefixes);
        if self.kernel_debug_log {
            config.flags |= guard_common::CONFIG_FLAG_DEBUG_LOG;
        }
        if !self.track_calls {
            config.flags |= guard_common::CONFIG_FLAG_NO_CALLS;
        }
        config.event_rate = self.event_rate;
        config.event_burst = self.event_burst;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_national_rule_behind_an_international_prefix_is_named() {
        let s = Settings {
            intl_prefixes: vec!["010".into(), "00".into()],
            ..Settings::default()
        };
        let p = |t: &str| t.parse::<Prefix>().unwrap();
        assert_eq!(
            s.unreachable(&p("0101")).as_deref(),
            Some(
                "national rule 0101 can never match: dial strings that start with the international prefix 010 are read as international numbers (write the rule as +1)"
            )
        );
        assert!(
            s.unreachable(&p("0012"))
                .unwrap()
                .ends_with("(write the rule as +12)")
        );
        // `0` also catches national dial strings such as 0120...: it can match.
        assert_eq!(s.unreachable(&p("0")), None);
        assert_eq!(s.unreachable(&p("0120")), None);
        assert_eq!(s.unreachable(&p("+232")), None);
        let rules = RuleSet::from([
            (
                p("0101"),
                crate::model::rules::Rule::new(
                    guard_common::Action::Block,
                    crate::model::rules::Origin::Config,
                ),
            ),
            (
                p("0990"),
                crate::model::rules::Rule::new(
                    guard_common::Action::Block,
                    crate::model::rules::Origin::Config,
                ),
            ),
        ]);
        assert_eq!(s.unreachable_rules(&rules).len(), 1);
    }
}
