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

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::rules::{Prefix, RuleSet};

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

/// Why a customer cannot join a set of customers (a runtime edit, or a runtime customer that
/// the config no longer admits at a reload).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CustomerError {
    #[error("{0}")]
    Name(String),
    #[error("customer `{customer}`: unknown policy `{policy}` (policies: {known})")]
    UnknownPolicy {
        customer: String,
        policy: String,
        known: String,
    },
    #[error("customer `{customer}`: VLAN {vlan} is outside 1..4094")]
    Vlan { customer: String, vlan: u32 },
    #[error("customer `{customer}`: source `{net}` has host bits set (the network is {})", net.trunc())]
    HostBits { customer: String, net: IpNet },
    #[error("customer `{customer}`: source {net}{} is already customer `{other}`'s", vlan_text(*vlan))]
    Taken {
        customer: String,
        net: IpNet,
        vlan: u16,
        other: String,
    },
    #[error("customer `{0}` has no sources: give at least one CIDR")]
    NoSources(String),
    #[error("customer `{0}` exists already: pass --replace to change it")]
    Exists(String),
    #[error("no customer is named `{0}`")]
    Unknown(String),
    #[error("no room for another policy id (at most {max} policies)")]
    PolicyIds { max: u32 },
}

fn vlan_text(vlan: u16) -> String {
    if vlan == 0 {
        String::new()
    } else {
        format!(" on VLAN {vlan}")
    }
}

/// A customer or policy name: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name `{name}`: use 1 to 64 letters, digits, `.`, `_` or `-`"
        ))
    }
}

impl Customer {
    /// The (VLAN, CIDR) pairs it claims: VLAN 0 when it names none.
    pub fn scopes(&self) -> impl Iterator<Item = (u16, IpNet)> + '_ {
        let vlans: &[u16] = if self.vlans.is_empty() {
            &[0]
        } else {
            &self.vlans
        };
        vlans
            .iter()
            .flat_map(move |&v| self.sources.iter().map(move |&n| (v, n)))
    }
}

impl Customers {
    /// Checks that `c` can join these customers, in place of the customer of the same name if
    /// there is one: a valid name, a known policy, VLANs in 1..4094, sources without host bits
    /// and owned by nobody else on the same VLAN.
    pub fn admit(&self, c: &Customer) -> Result<(), CustomerError> {
        check_name("customer", &c.name).map_err(CustomerError::Name)?;
        if c.sources.is_empty() {
            return Err(CustomerError::NoSources(c.name.clone()));
        }
        if let Some(p) = &c.policy
            && self.policy(p).is_none()
        {
            let known: Vec<&str> = self.policies.iter().map(|p| p.name.as_str()).collect();
            return Err(CustomerError::UnknownPolicy {
                customer: c.name.clone(),
                policy: p.clone(),
                known: if known.is_empty() {
                    "none defined".into()
                } else {
                    known.join(", ")
                },
            });
        }
        if let Some(&vlan) = c.vlans.iter().find(|v| !(1..=4094).contains(*v)) {
            return Err(CustomerError::Vlan {
                customer: c.name.clone(),
                vlan: vlan.into(),
            });
        }
        if let Some(&net) = c.sources.iter().find(|n| n.trunc() != **n) {
            return Err(CustomerError::HostBits {
                customer: c.name.clone(),
                net,
            });
        }
        let mine: BTreeSet<(u16, IpNet)> = c.scopes().collect();
        for other in self.customers.iter().filter(|o| o.name != c.name) {
            if let Some((vlan, net)) = other.scopes().find(|s| mine.contains(s)) {
                return Err(CustomerError::Taken {
                    customer: c.name.clone(),
                    net,
                    vlan,
                    other: other.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Adds `c`, or replaces the customer of its name (which keeps its id). Checked by
    /// [`Customers::admit`] first; a new customer gets the next free id.
    pub fn upsert(&mut self, mut c: Customer) -> Result<(), CustomerError> {
        self.admit(&c)?;
        match self.customers.iter_mut().find(|o| o.name == c.name) {
            Some(old) => {
                c.id = old.id;
                *old = c;
            }
            None => {
                c.id = self.customers.iter().map(|o| o.id).max().unwrap_or(0) + 1;
                self.customers.push(c);
            }
        }
        Ok(())
    }

    /// Removes the customer `name`.
    pub fn remove(&mut self, name: &str) -> Result<Customer, CustomerError> {
        let i = self
            .customers
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| CustomerError::Unknown(name.to_string()))?;
        Ok(self.customers.remove(i))
    }

    /// Gives customers and policies the ids they had in `previous` under the same name, so
    /// that their counters (per customer) and their rules' keys (per policy) stay theirs when
    /// the config's order changes. New customers get ids above every id either set used; new
    /// policies the lowest id that neither set uses (policy ids are bounded). Returns how
    /// policy ids changed (old -> new), for [`remap_policies`].
    pub fn keep_ids(&mut self, previous: &Customers) -> Result<BTreeMap<u16, u16>, CustomerError> {
        let old_c: BTreeMap<&str, u32> = previous
            .customers
            .iter()
            .map(|c| (c.name.as_str(), c.id))
            .collect();
        let mut next = previous
            .customers
            .iter()
            .map(|c| c.id)
            .max()
            .unwrap_or(0)
            .max(self.customers.len() as u32);
        // Ids kept by name first, then fresh ones: a fresh id never takes a kept one.
        let mut fresh = Vec::new();
        for (i, c) in self.customers.iter_mut().enumerate() {
            match old_c.get(c.name.as_str()) {
                Some(&id) => c.id = id,
                None => fresh.push(i),
            }
        }
        for i in fresh {
            next += 1;
            self.customers[i].id = next;
        }

        let old_p: BTreeMap<&str, u16> = previous
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.id))
            .collect();
        let mut taken: BTreeSet<u16> = self
            .policies
            .iter()
            .filter_map(|p| old_p.get(p.name.as_str()).copied())
            .collect();
        let retired: BTreeSet<u16> = previous.policies.iter().map(|p| p.id).collect();
        let max = guard_common::MAX_POLICIES;
        let mut map = BTreeMap::new();
        for p in &mut self.policies {
            let id = match old_p.get(p.name.as_str()) {
                Some(&id) => id,
                None => {
                    let free = |avoid: &dyn Fn(u16) -> bool| {
                        (1..=max as u16).find(|id| !taken.contains(id) && !avoid(*id))
                    };
                    let id = free(&|id| retired.contains(&id))
                        .or_else(|| free(&|_| false))
                        .ok_or(CustomerError::PolicyIds { max })?;
                    taken.insert(id);
                    id
                }
            };
            if id != p.id {
                map.insert(p.id, id);
            }
            p.id = id;
        }
        Ok(map)
    }

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

/// `rules` with their policy ids changed as `map` says (see [`Customers::keep_ids`]).
pub fn remap_policies(rules: RuleSet, map: &BTreeMap<u16, u16>) -> RuleSet {
    if map.is_empty() {
        return rules;
    }
    rules
        .into_iter()
        .map(|(mut p, r)| {
            if let Some(&id) = map.get(&p.policy) {
                p.policy = id;
            }
            (p, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(name: &str, sources: &[&str], vlans: &[u16], policy: Option<&str>) -> Customer {
        Customer {
            name: name.into(),
            id: 0,
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            vlans: vlans.to_vec(),
            policy: policy.map(Into::into),
        }
    }

    fn policy(name: &str, id: u16) -> Policy {
        Policy {
            name: name.into(),
            id,
            inherit: true,
            comment: None,
        }
    }

    #[test]
    fn admit_names_each_problem_and_upsert_keeps_ids() {
        let mut c = Customers {
            policies: vec![policy("barred", 1)],
            customers: vec![],
        };
        c.upsert(customer("a", &["198.51.100.0/24"], &[], Some("barred")))
            .unwrap();
        c.upsert(customer("b", &["203.0.113.0/24"], &[10], None))
            .unwrap();
        assert_eq!(c.customers.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 2]);
        let err = |x: Customer| c.admit(&x).unwrap_err().to_string();
        assert_eq!(
            err(customer("x", &["198.51.100.0/24"], &[], None)),
            "customer `x`: source 198.51.100.0/24 is already customer `a`'s"
        );
        assert_eq!(
            err(customer("x", &["203.0.113.0/24"], &[10], None)),
            "customer `x`: source 203.0.113.0/24 on VLAN 10 is already customer `b`'s"
        );
        // Another VLAN, or a longer CIDR, is not a clash.
        c.admit(&customer("x", &["203.0.113.0/24"], &[11], None))
            .unwrap();
        c.admit(&customer("x", &["198.51.100.128/25"], &[], None))
            .unwrap();
        assert_eq!(
            err(customer("x", &["198.51.100.1/24"], &[], None)),
            "customer `x`: source `198.51.100.1/24` has host bits set (the network is 198.51.100.0/24)"
        );
        assert_eq!(
            err(customer("x", &["2001:db8::/32"], &[], Some("nope"))),
            "customer `x`: unknown policy `nope` (policies: barred)"
        );
        assert_eq!(
            err(customer("x", &["2001:db8::/32"], &[4095], None)),
            "customer `x`: VLAN 4095 is outside 1..4094"
        );
        assert_eq!(
            err(customer("x", &[], &[], None)),
            "customer `x` has no sources: give at least one CIDR"
        );
        assert!(err(customer("x y", &["2001:db8::/32"], &[], None)).contains("customer name"));
        // Replacing `a` by itself with another CIDR keeps its id.
        c.upsert(customer("a", &["198.51.100.0/25"], &[], None))
            .unwrap();
        assert_eq!(c.customers[0].id, 1);
        assert_eq!(c.remove("b").unwrap().id, 2);
        assert_eq!(
            c.remove("b").unwrap_err().to_string(),
            "no customer is named `b`"
        );
    }

    #[test]
    fn ids_follow_names_across_config_orders() {
        let previous = Customers {
            policies: vec![policy("p1", 1), policy("p2", 2), policy("p3", 3)],
            customers: vec![
                Customer {
                    id: 1,
                    ..customer("a", &[], &[], None)
                },
                Customer {
                    id: 7,
                    ..customer("b", &[], &[], None)
                },
            ],
        };
        // The config now lists p3, new, p1 (p2 deleted) and b, c, a.
        let mut now = Customers {
            policies: vec![policy("p3", 1), policy("new", 2), policy("p1", 3)],
            customers: vec![
                Customer {
                    id: 1,
                    ..customer("b", &[], &[], None)
                },
                Customer {
                    id: 2,
                    ..customer("c", &[], &[], None)
                },
                Customer {
                    id: 3,
                    ..customer("a", &[], &[], None)
                },
            ],
        };
        let map = now.keep_ids(&previous).unwrap();
        let ids: Vec<(&str, u32)> = now
            .customers
            .iter()
            .map(|c| (c.name.as_str(), c.id))
            .collect();
        assert_eq!(ids, [("b", 7), ("c", 8), ("a", 1)]);
        let pids: Vec<(&str, u16)> = now
            .policies
            .iter()
            .map(|p| (p.name.as_str(), p.id))
            .collect();
        // `new` avoids p2's id 2 (its rules' counters may still be remembered).
        assert_eq!(pids, [("p3", 3), ("new", 4), ("p1", 1)]);
        assert_eq!(map, BTreeMap::from([(1, 3), (2, 4), (3, 1)]));
        let p = |policy: u16| Prefix {
            policy,
            .."+232".parse::<Prefix>().unwrap()
        };
        let rules: RuleSet = [1u16, 2, 3, 0]
            .into_iter()
            .map(|id| {
                (
                    p(id),
                    super::super::rules::Rule::new(
                        guard_common::Action::Block,
                        super::super::rules::Origin::Config,
                    ),
                )
            })
            .collect();
        let out: Vec<u16> = remap_policies(rules, &map)
            .keys()
            .map(|k| k.policy)
            .collect();
        assert_eq!(out, [0, 1, 3, 4]);
    }

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
