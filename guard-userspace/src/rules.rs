//! Rules: a destination prefix, an action and an id.
//!
//! A prefix with `+` (`+232`, or `+` alone for "every international number") matches
//! international numbers; a prefix without `+` (`0120`) matches national dial strings as dialled.

use std::{fmt, str::FromStr};

use guard_common::{Action, Domain, LookupKey, number::MAX_DIGITS, rule_key};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("empty prefix: a rule needs `+` and/or digits")]
    EmptyPrefix,
    #[error(
        "prefix `{prefix}`: `{ch}` at position {pos} is not a digit (only a leading `+` is allowed)"
    )]
    BadCharacter {
        prefix: String,
        ch: char,
        pos: usize,
    },
    #[error("prefix `{prefix}` has {len} digits; at most {MAX_DIGITS} fit a rule key")]
    TooLong { prefix: String, len: usize },
    #[error("unknown action `{0}` (expected block, allow or monitor)")]
    UnknownAction(String),
}

/// A validated destination prefix.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub domain: Domain,
    /// Digit values 0..=9.
    pub digits: Vec<u8>,
}

impl Prefix {
    /// The LPM trie key of this prefix.
    pub fn key(&self) -> LookupKey {
        // Validated on construction: at most MAX_DIGITS digits, each 0..=9.
        rule_key(self.domain, &self.digits).expect("validated prefix")
    }
}

impl FromStr for Prefix {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, RuleError> {
        let (domain, rest) = match s.strip_prefix('+') {
            Some(rest) => (Domain::International, rest),
            None => (Domain::National, s),
        };
        if s.is_empty() {
            return Err(RuleError::EmptyPrefix);
        }
        let offset = s.len() - rest.len();
        let mut digits = Vec::with_capacity(rest.len());
        for (i, ch) in rest.chars().enumerate() {
            match ch.to_digit(10) {
                Some(d) if ch.is_ascii_digit() => digits.push(d as u8),
                _ => {
                    return Err(RuleError::BadCharacter {
                        prefix: s.to_string(),
                        ch,
                        pos: offset + i + 1,
                    });
                }
            }
        }
        if digits.len() > MAX_DIGITS {
            return Err(RuleError::TooLong {
                prefix: s.to_string(),
                len: digits.len(),
            });
        }
        Ok(Self { domain, digits })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain == Domain::International {
            f.write_str("+")?;
        }
        for d in &self.digits {
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses `block`, `allow` or `monitor`.
pub fn parse_action(s: &str) -> Result<Action, RuleError> {
    match s {
        "block" => Ok(Action::Block),
        "allow" => Ok(Action::Allow),
        "monitor" => Ok(Action::Monitor),
        other => Err(RuleError::UnknownAction(other.to_string())),
    }
}

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Block => "block",
        Action::Allow => "allow",
        Action::Monitor => "monitor",
    }
}

/// One rule. `id` indexes the per-rule counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub prefix: Prefix,
    pub action: Action,
    pub id: u32,
}

impl Rule {
    /// `Rule::new("+232", Action::Block, 7)`.
    pub fn new(prefix: &str, action: Action, id: u32) -> Result<Self, RuleError> {
        Ok(Self {
            prefix: prefix.parse()?,
            action,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_print() {
        let p: Prefix = "+232".parse().unwrap();
        assert_eq!(p.domain, Domain::International);
        assert_eq!(p.digits, vec![2, 3, 2]);
        assert_eq!(p.to_string(), "+232");
        let p: Prefix = "+".parse().unwrap();
        assert!(p.digits.is_empty());
        let p: Prefix = "0120".parse().unwrap();
        assert_eq!(p.domain, Domain::National);
    }

    #[test]
    fn bad_prefixes_name_the_problem() {
        assert_eq!("".parse::<Prefix>(), Err(RuleError::EmptyPrefix));
        let e = "+23a".parse::<Prefix>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefix `+23a`: `a` at position 4 is not a digit (only a leading `+` is allowed)"
        );
        assert!(matches!(
            "++1".parse::<Prefix>(),
            Err(RuleError::BadCharacter { pos: 2, .. })
        ));
        assert!(matches!(
            "+١".parse::<Prefix>(),
            Err(RuleError::BadCharacter { .. })
        ));
        let long = format!("+{}", "1".repeat(31));
        assert_eq!(
            long.parse::<Prefix>(),
            Err(RuleError::TooLong {
                prefix: long.clone(),
                len: 31
            })
        );
        assert!(format!("+{}", "1".repeat(30)).parse::<Prefix>().is_ok());
        assert_eq!(
            parse_action("drop"),
            Err(RuleError::UnknownAction("drop".into()))
        );
    }
}
