//! Customers and policies: whose calls get which rules.
//!
//! A customer is identified by the source addresses of its PBXs (`sources`, IPv4 and IPv6
//! CIDRs), optionally only on the outer VLANs it arrives on (`vlans`), and gets a `policy`. A
//! policy has its own rules (kept in the [`crate::model::rules::RuleSet`] under its id, see
//! [`Prefix::policy`](crate::model::rules::Prefix::policy)) and either inherits the global rules
//! underneath them (`inherit`, the default) or replaces them. The kernel decides a call by the
//! longest matching prefix over the policy's rules plus, when it inherits, the global rules; on a
//! tie, the policy's rule wins. A source that matches several customers belongs to the longest
//! CIDR; frames from no customer get the global rules.

use ipnet::IpNet;

use super::rules::Prefix;
use serde::{Deserialize, Serialize};

/// A `[[policy]]`: its rules are in the rule set under `id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    /// 1..=`MAX_POLICIES`, in the order of the `[[policy]]` tables (0 is the global rules).
    pub id: u16,
    /// The global rules apply underneath the policy's own.
    pub inherit: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A `[[customer]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub name: String,
    /// 1.., in the order of the `[[customer]]` tables.
    pub id: u32,
    /// Host bits clear; no CIDR twice (on the same VLAN) across customers.
    pub sources: Vec<IpNet>,
    /// Outer VLAN ids (1..=4094); empty: any VLAN, or none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<u16>,
    /// The policy's name; `None`: the global rules, as for sources of no customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// Every customer and policy of a config: switched live together with the rules.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customers {
    pub policies: Vec<Policy>,
    pub customers: Vec<Customer>,
}

/// One entry of the kernel's customer trie: a CIDR (on a VLAN, 0 for any) and what it maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CustomerEntry {
    pub vlan: u16,
    pub net: IpNet,
    pub customer: u32,
    pub policy: u16,
    pub inherit: bool,
}

impl Customers {
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty() && self.policies.is_empty()
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    pub fn policy_by_id(&self, id: u16) -> Option<&Policy> {
        self.policies.iter().find(|p| p.id == id)
    }

    /// The name of policy `id` (`None` for the global rules; `policy N` for an id no longer
    /// configured).
    pub fn policy_name(&self, id: u16) -> Option<String> {
        (id != 0).then(|| {
            self.policy_by_id(id)
                .map_or_else(|| format!("policy {id}"), |p| p.name.clone())
        })
    }

    /// A rule as every view names it: `+232`, or `intl-barring/+` for a policy's rule.
    pub fn rule_label(&self, prefix: &Prefix) -> String {
        match self.policy_name(prefix.policy) {
            Some(p) => format!("{p}/{prefix}"),
            None => prefix.to_string(),
        }
    }

    pub fn customer_by_id(&self, id: u32) -> Option<&Customer> {
        self.customers.iter().find(|c| c.id == id)
    }

    /// The kernel's customer trie: one entry per source CIDR and VLAN (VLAN 0 when the
    /// customer names none). A customer without a policy, or with a policy that does not exist
    /// (validation refuses that), gets policy 0: the global rules.
    pub fn entries(&self) -> Vec<CustomerEntry> {
        let mut out = Vec::new();
        for c in &self.customers {
            let policy = c.policy.as_deref().and_then(|p| self.policy(p));
            let (policy, inherit) = policy.map_or((0, true), |p| (p.id, p.inherit));
            let vlans: &[u16] = if c.vlans.is_empty() { &[0] } else { &c.vlans };
            for &vlan in vlans {
                for &net in &c.sources {
                    out.push(CustomerEntry {
                        vlan,
                        net,
                        customer: c.id,
                        policy,
                        inherit,
                    });
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_cover_every_source_on_every_vlan() {
        let c = Customers {
            policies: vec![Policy {
                name: "barred".into(),
                id: 1,
                inherit: false,
                comment: None,
            }],
            customers: vec![
                Customer {
                    name: "a".into(),
                    id: 1,
                    sources: vec!["198.51.100.0/24".parse().unwrap()],
                    vlans: vec![100, 200],
                    policy: Some("barred".into()),
                },
                Customer {
                    name: "b".into(),
                    id: 2,
                    sources: vec![
                        "203.0.113.0/25".parse().unwrap(),
                        "2001:db8:b::/48".parse().unwrap(),
                    ],
                    vlans: vec![],
                    policy: None,
                },
            ],
        };
        let e = c.entries();
        assert_eq!(e.len(), 4);
        assert_eq!(
            e.iter()
                .filter(|e| e.customer == 1)
                .map(|e| (e.vlan, e.policy, e.inherit))
                .collect::<Vec<_>>(),
            vec![(100, 1, false), (200, 1, false)]
        );
        assert!(
            e.iter()
                .filter(|e| e.customer == 2)
                .all(|e| e.vlan == 0 && e.policy == 0 && e.inherit)
        );
    }
}
