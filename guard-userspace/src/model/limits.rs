//! Velocity limits and the quarantine, as the config writes them: rates (`10/min`, `3/10min`),
//! a rule's limits, the `[quarantine]` section; and what the kernel gets of them
//! (`guard_common::limits`).

use std::{fmt, str::FromStr};

use guard_common::{
    Action, Endpoint,
    limits::{
        Gcra, LimitConfig, LimitParams, NS_PER_SEC, QUARANTINE_ON, QUARANTINE_SCOPE_ALL,
        REASON_CALLS, REASON_MANUAL, REASON_OVER_LIMIT, SUBJECT_CUSTOMER, Subject,
    },
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The longest period of a rate, and the longest quarantine: 30 days.
pub const MAX_PERIOD_SECS: u64 = 30 * 24 * 3600;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RateError {
    #[error("rate `{0}`: write COUNT/PERIOD, e.g. 10/min, 3/10min, 100/h (units: s, min, h, d)")]
    Syntax(String),
    #[error("rate `{0}`: the count must be at least 1")]
    Zero(String),
    #[error("rate `{text}`: unknown unit `{unit}` (units: s, min, h, d)")]
    Unit { text: String, unit: String },
    #[error("rate `{0}`: the period must be 1 s to 30 days")]
    Period(String),
    #[error("duration `{text}`: {why}")]
    Duration { text: String, why: &'static str },
}

/// `count` calls per `period_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period_secs: u64,
}

/// Seconds of a period written `[N]unit` (`min`, `10min`, `30s`, `1h`, `2d`).
fn period(text: &str, p: &str) -> Result<u64, RateError> {
    let digits = p.bytes().take_while(u8::is_ascii_digit).count();
    let (n, unit) = p.split_at(digits);
    let n: u64 = if n.is_empty() {
        1
    } else {
        n.parse().map_err(|_| RateError::Syntax(text.into()))?
    };
    let per = match unit {
        "s" | "sec" | "second" | "seconds" => 1,
        "min" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "" => return Err(RateError::Syntax(text.into())),
        other => {
            return Err(RateError::Unit {
                text: text.into(),
                unit: other.into(),
            });
        }
    };
    let secs = n.saturating_mul(per);
    if !(1..=MAX_PERIOD_SECS).contains(&secs) {
        return Err(RateError::Period(text.into()));
    }
    Ok(secs)
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, RateError> {
        let t = text.trim();
        let (count, per) = t
            .split_once('/')
            .ok_or_else(|| RateError::Syntax(text.into()))?;
        let count = count.trim();
        if count.starts_with('-') || count.parse::<i64>().is_ok_and(|n| n <= 0) {
            return Err(RateError::Zero(text.into()));
        }
        let count: u32 = count.parse().map_err(|_| RateError::Syntax(text.into()))?;
        let period_secs = period(text, per.trim())?;
        Ok(Self { count, period_secs })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, unit) = match self.period_secs {
            s if s % 86_400 == 0 => (s / 86_400, "d"),
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "min"),
            s => (s, "s"),
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.count)
        } else {
            write!(f, "{}/{n}{unit}", self.count)
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Rate {
    /// The kernel's bucket for this rate with `burst` calls at once.
    pub fn gcra(&self, burst: u32) -> Gcra {
        Gcra::new(self.count, self.period_secs * NS_PER_SEC, burst)
    }
}

/// A duration written `[N]unit` (`1h`, `30min`, `2d`): 1 s to 30 days.
pub fn parse_duration(text: &str) -> Result<u64, RateError> {
    let t = text.trim();
    if t.starts_with('0') && t.bytes().take_while(u8::is_ascii_digit).all(|b| b == b'0') {
        return Err(RateError::Duration {
            text: text.into(),
            why: "must be more than 0",
        });
    }
    period(text, t).map_err(|e| match e {
        RateError::Period(_) => RateError::Duration {
            text: text.into(),
            why: "must be 1 s to 30 days",
        },
        _ => RateError::Duration {
            text: text.into(),
            why: "write N and a unit, e.g. 30min, 1h, 2d (units: s, min, h, d)",
        },
    })
}

/// A rule's limits (`limit`, `burst`, `repeat_limit`, `over_limit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Rate>,
    /// Calls at once (default: the rate's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_limit: Option<Rate>,
    /// block, reject or monitor (default block).
    #[serde(with = "crate::model::rules::action_serde")]
    pub over_limit: Action,
}

impl Limits {
    /// What the kernel gets (`SG_LIMITS`).
    pub fn params(&self) -> LimitParams {
        LimitParams {
            rate: self
                .limit
                .map(|r| r.gcra(self.burst.unwrap_or(r.count)))
                .unwrap_or_default(),
            repeat: self
                .repeat_limit
                .map(|r| r.gcra(r.count))
                .unwrap_or_default(),
            over_action: self.over_limit as u8,
            _pad: [0; 7],
        }
    }
}

/// Which calls a quarantine covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// International calls only (the default).
    #[default]
    International,
    All,
}

/// The `[quarantine]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineSettings {
    /// Trigger: more than this many calls in scope within `window_secs` (0: not a trigger).
    pub calls: u32,
    /// Trigger: more than this many calls over a limit within `window_secs` (0: not a trigger).
    pub over_limit: u32,
    pub window_secs: u64,
    pub duration_secs: u64,
    pub scope: Scope,
    /// block or reject (default reject).
    #[serde(with = "crate::model::rules::action_serde")]
    pub action: Action,
    /// The response of a `reject` quarantine (default 403 Forbidden).
    pub status: crate::model::reply::Status,
}

impl QuarantineSettings {
    /// What the kernel gets (`SG_LIMIT_CONFIG`).
    pub fn config(&self) -> LimitConfig {
        LimitConfig {
            flags: QUARANTINE_ON
                | if self.scope == Scope::All {
                    QUARANTINE_SCOPE_ALL
                } else {
                    0
                },
            calls: self.calls,
            over_limit: self.over_limit,
            action: self.action as u32,
            window_ns: self.window_secs * NS_PER_SEC,
            duration_ns: self.duration_secs * NS_PER_SEC,
        }
    }
}

/// How views name a subject: `customer NAME`, or the address.
pub fn subject_name(s: &Subject, customers: &crate::model::customers::Customers) -> String {
    if s.kind == SUBJECT_CUSTOMER {
        let id = s.id[0];
        return match customers.customer_by_id(id) {
            Some(c) => format!("customer {}", c.name),
            None => format!("customer #{id}"),
        };
    }
    let family = if s.kind == guard_common::limits::SUBJECT_V6 {
        6
    } else {
        4
    };
    Endpoint {
        family,
        addr: s.id,
        ..Endpoint::default()
    }
    .ip()
    .to_string()
}

pub fn reason_str(r: u32) -> &'static str {
    match r {
        REASON_CALLS => "calls",
        REASON_OVER_LIMIT => "over-limit calls",
        REASON_MANUAL => "operator",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_print_and_name_their_errors() {
        let r: Rate = "10/min".parse().unwrap();
        assert_eq!((r.count, r.period_secs), (10, 60));
        assert_eq!(r.to_string(), "10/min");
        let r: Rate = "3/10min".parse().unwrap();
        assert_eq!((r.count, r.period_secs), (3, 600));
        assert_eq!(r.to_string(), "3/10min");
        assert_eq!("100/h".parse::<Rate>().unwrap().period_secs, 3600);
        assert_eq!("1/30s".parse::<Rate>().unwrap().to_string(), "1/30s");
        let err = |t: &str| t.parse::<Rate>().unwrap_err().to_string();
        assert_eq!(
            err("10/fortnight"),
            "rate `10/fortnight`: unknown unit `fortnight` (units: s, min, h, d)"
        );
        assert_eq!(err("0/min"), "rate `0/min`: the count must be at least 1");
        assert_eq!(err("-1/min"), "rate `-1/min`: the count must be at least 1");
        assert!(err("ten/min").contains("write COUNT/PERIOD"));
        assert!(err("10").contains("write COUNT/PERIOD"));
        assert_eq!(
            err("1/31d"),
            "rate `1/31d`: the period must be 1 s to 30 days"
        );
        let six = "6/min".parse::<Rate>().unwrap().gcra(3);
        assert_eq!(six.interval_ns, 10 * NS_PER_SEC);
        assert_eq!(six.tolerance_ns, 20 * NS_PER_SEC);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("30d").unwrap(), 30 * 86_400);
        let err = |t: &str| parse_duration(t).unwrap_err().to_string();
        assert_eq!(err("0"), "duration `0`: must be more than 0");
        assert_eq!(err("0h"), "duration `0h`: must be more than 0");
        assert_eq!(err("31d"), "duration `31d`: must be 1 s to 30 days");
        assert!(err("soon").contains("write N and a unit"));
    }
}
