//! Global settings: SIP ports, international dialling prefixes, and the mode.

use guard_common::{
    Action, Config, Domain, IntlPrefix, IntlPrefixes, MAX_RULES, MAX_RULES_LIMIT, Mode,
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
    #[error(
        "incomplete_action = \"reject\": a response needs a rule to answer for; use block, allow or monitor"
    )]
    IncompleteReject,
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
    /// What happens to an INVITE whose number could not be read to its end (the request line
    /// ran past the inspected window or the datagram, its parameters were too long, a
    /// phone-context was cut) and that no rule decided: `monitor` (the default: pass, counted as
    /// would-drop), `block` or `allow`. Counted as `incomplete_action_applied`.
    pub incomplete_action: Action,
    /// Tiny first fragments to a SIP port (too short to hold a request line and its number):
    /// dropped by default, counted as `tiny_first_fragments` either way.
    pub tiny_first_fragment: TinyFragment,
    /// Token buckets of the velocity limits (an LRU map: the least recently used bucket goes
    /// when it is full), applied when the map is created. Pinned maps keep their size.
    pub limit_buckets: u32,
}

/// What happens to a tiny first fragment (`tiny_first_fragment` in `[settings]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TinyFragment {
    /// Drop it (the default): no SIP stack sends one.
    #[default]
    Drop,
    /// Pass it (still counted).
    Pass,
}

impl TinyFragment {
    /// The name used in the config file and output: `drop` or `pass`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TinyFragment::Drop => "drop",
            TinyFragment::Pass => "pass",
        }
    }
}

impl std::fmt::Display for TinyFragment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for TinyFragment {
    type Err = String;

    /// Parses [`TinyFragment::as_str`]'s names (exactly).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "drop" => Ok(TinyFragment::Drop),
            "pass" => Ok(TinyFragment::Pass),
            other => Err(format!(
                "unknown tiny_first_fragment `{other}` (expected drop or pass)"
            )),
        }
    }
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
            incomplete_action: Action::Monitor,
            tiny_first_fragment: TinyFragment::Drop,
            limit_buckets: guard_common::DEFAULT_BUCKETS,
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
            incomplete_action: config.incomplete_action(),
            tiny_first_fragment: if config.flags & guard_common::CONFIG_FLAG_PASS_TINY_FRAGMENTS
                != 0
            {
                TinyFragment::Pass
            } else {
                TinyFragment::Drop
            },
            limit_buckets: guard_common::DEFAULT_BUCKETS,
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
        if self.incomplete_action == guard_common::Action::Reject {
            return Err(SettingsError::IncompleteReject);
        }
        config.incomplete_action = self.incomplete_action as u32;
        if self.tiny_first_fragment == TinyFragment::Pass {
            config.flags |= guard_common::CONFIG_FLAG_PASS_TINY_FRAGMENTS;
        }
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

    #[test]
    fn incomplete_action_and_tiny_fragments_round_trip_through_the_kernel_config() {
        let d = Settings::default();
        assert_eq!(d.incomplete_action, Action::Monitor);
        assert_eq!(d.tiny_first_fragment, TinyFragment::Drop);
        let c = d.to_config().unwrap();
        assert_eq!(c.incomplete_action, Action::Monitor as u32);
        assert_eq!(c.flags & guard_common::CONFIG_FLAG_PASS_TINY_FRAGMENTS, 0);
        assert_eq!(Settings::live(&c, d.sip_ports.clone()), d);
        let reject = Settings {
            incomplete_action: Action::Reject,
            ..Settings::default()
        };
        assert!(matches!(
            reject.to_config(),
            Err(SettingsError::IncompleteReject)
        ));
        for action in Action::ALL.into_iter().filter(|a| *a != Action::Reject) {
            for tiny in [TinyFragment::Drop, TinyFragment::Pass] {
                let s = Settings {
                    incomplete_action: action,
                    tiny_first_fragment: tiny,
                    ..Settings::default()
                };
                let live = Settings::live(&s.to_config().unwrap(), s.sip_ports.clone());
                assert_eq!(live, s);
            }
        }
        // A config slot written before the field existed (zero) reads as monitor.
        let mut old = d.to_config().unwrap();
        old.incomplete_action = 0;
        assert_eq!(old.incomplete_action(), Action::Monitor);
    }

    #[test]
    fn tiny_fragment_names() {
        assert_eq!("drop".parse::<TinyFragment>(), Ok(TinyFragment::Drop));
        assert_eq!("pass".parse::<TinyFragment>(), Ok(TinyFragment::Pass));
        assert_eq!(TinyFragment::Pass.to_string(), "pass");
        let e = "Drop".parse::<TinyFragment>().unwrap_err();
        assert_eq!(
            e,
            "unknown tiny_first_fragment `Drop` (expected drop or pass)"
        );
    }
}
