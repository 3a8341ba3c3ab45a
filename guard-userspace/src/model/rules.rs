//! Rules: a destination prefix, an action, and where the rule came from.
//!
//! A prefix with `+` (`+232`, or `+` alone for "every international number") matches
//! international numbers; a prefix without `+` (`0120`) matches national dial strings as dialled.

use std::{collections::BTreeMap, fmt, str::FromStr};

use guard_common::{
    Action, Domain, LookupKey, RuleKeyData,
    number::{GLOBAL_POLICY, KEY_SCOPE_BITS, MAX_DIGITS},
    rule_key,
};
use serde::{Deserialize, Serialize};
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
}

/// A validated destination prefix, in the rules of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The policy whose rules it belongs to: [`GLOBAL_POLICY`] for `[[rule]]` (and runtime)
    /// rules, the policy's id (see `model::policy`) for the rules of a `[[policy]]`. Not part of
    /// how the prefix is written (`Display`, `FromStr`): views name the policy beside it.
    pub policy: u16,
    pub domain: Domain,
    /// Digit values 0..=9.
    pub digits: Vec<u8>,
}

impl Prefix {
    /// The LPM trie key of this prefix.
    pub fn key(&self) -> LookupKey {
        // Validated on construction: at most MAX_DIGITS digits, each 0..=9.
        rule_key(self.policy, self.domain, &self.digits).expect("validated prefix")
    }
}

impl Prefix {
    /// Decodes a rule-trie key (`prefix_len` bits of `data`) back into a prefix. `None` for a
    /// key that no `Prefix` produces (unknown domain byte, a partial nibble, a non-digit).
    pub fn from_key(prefix_len: u32, data: &RuleKeyData) -> Option<Self> {
        let policy = u16::from_be_bytes([data[0], data[1]]);
        let domain = match data[2] {
            1 => Domain::International,
            2 => Domain::National,
            _ => return None,
        };
        let bits = prefix_len.checked_sub(KEY_SCOPE_BITS)?;
        if bits % 4 != 0 || bits as usize / 4 > MAX_DIGITS {
            return None;
        }
        let digits = (0..bits as usize / 4)
            .map(|i| {
                let byte = data[3 + i / 2];
                if i % 2 == 0 { byte >> 4 } else { byte & 0x0f }
            })
            .collect::<Vec<u8>>();
        digits.iter().all(|&d| d <= 9).then_some(Self {
            policy,
            domain,
            digits,
        })
    }

    /// The same prefix among the rules of `policy`.
    pub fn in_policy(mut self, policy: u16) -> Self {
        self.policy = policy;
        self
    }

    /// The digits as a string, without the `+`.
    pub fn digit_string(&self) -> String {
        self.digits.iter().map(|&d| char::from(b'0' + d)).collect()
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
        Ok(Self {
            policy: GLOBAL_POLICY,
            domain,
            digits,
        })
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

/// Stored form (state files): the prefix as written, behind `p<POLICY>:` for a policy's rule
/// (`p3:+232`), so that a stored rule set keeps its scopes.
impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.policy == GLOBAL_POLICY {
            s.collect_str(self)
        } else {
            s.collect_str(&format_args!("p{}:{self}", self.policy))
        }
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (policy, written) = match s.strip_prefix('p').and_then(|r| r.split_once(':')) {
            Some((id, rest)) => (
                id.parse::<u16>()
                    .map_err(|_| serde::de::Error::custom(format!("bad policy in `{s}`")))?,
                rest,
            ),
            None => (GLOBAL_POLICY, s.as_str()),
        };
        written
            .parse::<Prefix>()
            .map(|p| p.in_policy(policy))
            .map_err(serde::de::Error::custom)
    }
}

/// Where a rule comes from: its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file.
    Config,
    /// A runtime edit (`sipguard rules add` / `import`), kept in the state directory.
    Runtime,
}

impl Origin {
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Runtime => "runtime",
        }
    }
}

/// A rule as the operator wrote it, keyed by its [`Prefix`] in a [`RuleSet`]: everything but
/// the counter id, which the kernel layer assigns (the kernel's form is
/// [`guard_common::RuleValue`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    #[serde(with = "action_serde")]
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// ISO 3166 alpha-2 code, for rules written as `country = "SL"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// `source` in state files written before the field was renamed.
    #[serde(alias = "source")]
    pub origin: Origin,
    /// `reject` rules: the response (`reject_code`, `reject_reason`); `None`: the default of
    /// `[settings]` (403 Forbidden unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::model::reply::Status>,
    /// Velocity limits (`limit`, `burst`, `repeat_limit`, `over_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::model::limits::Limits>,
}

impl Rule {
    /// A rule with no comment and no country.
    pub fn new(action: Action, origin: Origin) -> Self {
        Self {
            action,
            comment: None,
            country: None,
            origin,
            status: None,
            limits: None,
        }
    }
}

/// The full rule set: one entry per prefix, so conflicts cannot exist once it is built.
pub type RuleSet = BTreeMap<Prefix, Rule>;

/// `action = "block"` in serde form.
pub mod action_serde {
    use guard_common::Action;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
    fn keys_decode_back_to_prefixes() {
        for p in [
            "+",
            "+232",
            "+23222",
            "0990",
            "+123456789012345678901234567890",
            "0",
        ] {
            let prefix: Prefix = p.parse().unwrap();
            let k = prefix.key();
            assert_eq!(Prefix::from_key(k.prefix_len, &k.data), Some(prefix), "{p}");
        }
        let scoped: Prefix = "+232".parse::<Prefix>().unwrap().in_policy(4095);
        let k = scoped.key();
        assert_eq!(
            Prefix::from_key(k.prefix_len, &k.data),
            Some(scoped.clone())
        );
        let stored = serde_json::to_string(&scoped).unwrap();
        assert_eq!(stored, "\"p4095:+232\"");
        assert_eq!(serde_json::from_str::<Prefix>(&stored).unwrap(), scoped);
        let mut data = [0u8; guard_common::number::KEY_DATA_LEN];
        data[2] = 3;
        assert_eq!(Prefix::from_key(24, &data), None);
        data[2] = 1;
        data[3] = 0xa0;
        assert_eq!(Prefix::from_key(28, &data), None);
        assert_eq!(Prefix::from_key(26, &data), None);
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
            "drop".parse::<Action>().unwrap_err().to_string(),
            "unknown action `drop` (expected block, allow, monitor or reject)"
        );
    }
}
