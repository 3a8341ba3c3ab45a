//! Drop events as the SOC sees them: the kernel's [`Event`] record decoded into a JSON line,
//! with the rule named as in every other view.

use std::collections::BTreeMap;

use guard_common::{Action, Domain, EVENT_DROP, Event, Number};
use serde::{Deserialize, Serialize};

use crate::model::{
    customers::Customers,
    rules::Prefix,
    time::{boot_ns_to_system, rfc3339},
};

/// One decoded event, as written to the JSON lines output and read back by `sipguard events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: String,
    pub iface: String,
    /// `drop` or `would_drop`.
    pub verdict: String,
    pub src: String,
    pub dst: String,
    pub vlan: u16,
    /// The normalised number (`+232...`, or a national dial string), at most 30 digits.
    pub number: String,
    /// The rule as the views name it (`POLICY/PREFIX` for a policy's rule).
    pub rule: String,
    pub rule_id: u32,
    pub action: String,
    /// The source's customer, if it is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer: Option<String>,
    /// Why: `rule` (the rule's action), `limit`, `repeat_limit`, `quarantine`, or
    /// `quarantine_started` (then `until` and `reason` say more).
    #[serde(default = "rule_cause")]
    pub cause: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn rule_cause() -> String {
    "rule".into()
}

/// The name of an event's `cause` byte.
pub fn cause_str(cause: u8) -> &'static str {
    use guard_common::limits::*;
    match cause {
        CAUSE_LIMIT => "limit",
        CAUSE_REPEAT => "repeat_limit",
        CAUSE_QUARANTINE => "quarantine",
        CAUSE_QUARANTINE_START => "quarantine_started",
        _ => "rule",
    }
}

/// The kernel record in a ring-buffer item, if the item is long enough to hold one.
pub fn raw(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked; Event is plain data, read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Decodes a ring-buffer item; `rules` names the rule ids (a rule deleted since is shown by id),
/// `customers` the customers and policies.
pub fn decode(
    bytes: &[u8],
    iface: &str,
    rules: &BTreeMap<u32, Prefix>,
    customers: &Customers,
) -> Option<EventRecord> {
    let ev = raw(bytes)?;
    let number = Number {
        hi: ev.number_hi,
        lo: ev.number_lo,
        len: ev.number_len,
        plus: false,
        overflow: false,
        context: 0,
    };
    let domain = if ev.domain == Domain::International as u8 {
        Domain::International
    } else {
        Domain::National
    };
    Some(EventRecord {
        time: rfc3339(boot_ns_to_system(ev.time_ns)),
        iface: iface.to_string(),
        verdict: if ev.verdict == EVENT_DROP {
            "drop".into()
        } else {
            "would_drop".into()
        },
        src: ev.src.socket_addr().to_string(),
        dst: ev.dst.socket_addr().to_string(),
        vlan: ev.vlan,
        number: number.display(domain).to_string(),
        rule: rules
            .get(&ev.rule_id)
            .map_or_else(|| format!("id {}", ev.rule_id), |p| customers.rule_label(p)),
        rule_id: ev.rule_id,
        action: Action::from_u8(ev.action)
            .map_or("?", Action::as_str)
            .to_string(),
        customer: (ev.customer != 0).then(|| {
            customers
                .customer_by_id(ev.customer)
                .map_or_else(|| format!("customer {}", ev.customer), |c| c.name.clone())
        }),
        cause: cause_str(ev.cause).into(),
        until: None,
        reason: None,
    })
}

impl EventRecord {
    /// The one-line form `sipguard events` prints without `--json`.
    pub fn line(&self) -> String {
        let customer = self
            .customer
            .as_ref()
            .map_or_else(String::new, |c| format!(" customer {c}"));
        if self.cause == "quarantine_started" {
            return format!(
                "{} {:<10} quarantine of {} started ({}), until {} iface {}",
                self.time,
                self.verdict,
                self.customer.as_deref().unwrap_or(&self.src),
                self.reason.as_deref().unwrap_or("?"),
                self.until.as_deref().unwrap_or("?"),
                self.iface
            );
        }
        let cause = match self.cause.as_str() {
            "rule" => String::new(),
            "limit" => ", over limit".into(),
            "repeat_limit" => ", over repeat limit".into(),
            other => format!(", {other}"),
        };
        format!(
            "{} {:<10} {} -> {} {} rule {} ({}{cause}) vlan {} iface {}{customer}",
            self.time,
            self.verdict,
            self.src,
            self.dst,
            self.number,
            self.rule,
            self.action,
            self.vlan,
            self.iface
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::{EVENT_WOULD_DROP, Endpoint};
    use std::net::IpAddr;

    fn event(domain: Domain, digits: &str, verdict: u8) -> Event {
        let mut n = Number::default();
        for b in digits.bytes() {
            n.push(b - b'0');
        }
        Event {
            time_ns: 1,
            src: Endpoint::from_ip("203.0.113.7".parse::<IpAddr>().unwrap(), 5060),
            dst: Endpoint::from_ip("2001:db8::1".parse::<IpAddr>().unwrap(), 5080),
            number_hi: n.hi,
            number_lo: n.lo,
            rule_id: 7,
            vlan: 100,
            number_len: n.len,
            domain: domain as u8,
            action: Action::Block as u8,
            verdict,
            ..Default::default()
        }
    }

    fn bytes(ev: &Event) -> Vec<u8> {
        // SAFETY: Event is plain data.
        unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), size_of::<Event>()) }
            .to_vec()
    }

    #[test]
    fn an_event_decodes_with_its_rule_addresses_and_number() {
        let rules = BTreeMap::from([(7, "+232".parse::<Prefix>().unwrap())]);
        let ev = event(Domain::International, "23276123456", EVENT_DROP);
        let r = decode(&bytes(&ev), "eth1", &rules, &Customers::default()).unwrap();
        assert_eq!(r.verdict, "drop");
        assert_eq!(r.src, "203.0.113.7:5060");
        assert_eq!(r.dst, "[2001:db8::1]:5080");
        assert_eq!(r.number, "+23276123456");
        assert_eq!(r.rule, "+232");
        assert_eq!((r.rule_id, r.vlan, r.action.as_str()), (7, 100, "block"));
        assert_eq!(r.iface, "eth1");
        assert!(
            r.line()
                .ends_with("drop       203.0.113.7:5060 -> [2001:db8::1]:5080 +23276123456 rule +232 (block) vlan 100 iface eth1"),
            "{}",
            r.line()
        );
        // JSON round trip: what the daemon writes is what `sipguard events` reads.
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<EventRecord>(&line).unwrap(), r);
    }

    #[test]
    fn a_national_would_drop_event_of_a_deleted_rule_names_its_id() {
        let ev = event(Domain::National, "0990123", EVENT_WOULD_DROP);
        let r = decode(&bytes(&ev), "eth1", &BTreeMap::new(), &Customers::default()).unwrap();
        assert_eq!(r.verdict, "would_drop");
        assert_eq!(r.number, "0990123");
        assert_eq!(r.rule, "id 7");
    }

    #[test]
    fn a_short_item_is_not_an_event() {
        let ev = event(Domain::International, "1", EVENT_DROP);
        let b = bytes(&ev);
        assert!(
            decode(
                &b[..b.len() - 1],
                "eth1",
                &BTreeMap::new(),
                &Customers::default()
            )
            .is_none()
        );
    }
}
