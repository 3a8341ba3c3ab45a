//! One report model: the live rules, settings, rule counters, global counters and sources of
//! every pinned interface, read into typed rows. `stats`, `status`, `rules list`, `/metrics` and
//! the drop events all read these rows, so two views of the same maps cannot drift apart:
//! a counter that `stats --json` shows is the same number, under the same name, in `/metrics`.
//!
//! [`Report::read`] is the only part that needs the kernel (it opens the pinned maps); the rows,
//! their sums and every rendering built on them are plain data, tested without root.

pub mod event;
pub mod metrics;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::SystemTime};

use guard_common::{Action, Counter, GlobalCounters, RuleCounter, RuleCounters, SourceStats};
use serde::{Serialize, Serializer, ser::SerializeMap as _};
use thiserror::Error;

use crate::{
    config::state::{DaemonInfo, ReloadRecord, StateDir, StateError},
    kernel::{
        maps::{Maps, MapsError},
        pins::{LinkState, PinRoot, PinsError},
    },
    model::{
        country,
        rules::{Origin, Prefix},
        settings::Settings,
        time::{boot_ns_to_system, rfc3339},
    },
};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Pins(#[from] Box<PinsError>),
    #[error(transparent)]
    State(#[from] Box<StateError>),
    #[error("interface {iface}")]
    Maps {
        iface: String,
        #[source]
        source: Box<MapsError>,
    },
}

/// Which parts of the maps to read: the rule list and the sources can be large (a million
/// rules), and `status` needs neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parts {
    /// Every live rule, with its comment, country and origin.
    pub rules: bool,
    /// The per-rule counters (implies `rules`).
    pub counters: bool,
    /// The source addresses per rule.
    pub sources: bool,
    /// The counters per customer and rule.
    pub customers: bool,
}

/// Everything the views show, for every pinned interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    /// The running daemon, if any.
    pub daemon: Option<DaemonInfo>,
    /// The daemon's last reload (recorded in the state directory).
    pub last_reload: Option<ReloadRecord>,
    pub ifaces: Vec<IfaceReport>,
}

/// One pinned interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceReport {
    pub iface: String,
    /// Whether the XDP link is pinned and the kernel has it attached to an interface (a link
    /// whose interface was deleted is severed: pinned, but filtering nothing).
    pub attached: bool,
    /// Why it is not attached, when known: "interface gone" (the link was severed), or what the
    /// running daemon recorded ("detached" by `sipguard detach`). Empty when attached.
    pub note: String,
    /// `native`, `generic`, or `unknown`.
    pub xdp_mode: String,
    pub program_id: Option<u32>,
    /// The live settings (from the live config slot and the port map).
    pub settings: Settings,
    /// Live rules (recorded by the last commit, or counted).
    pub rule_count: usize,
    /// With [`Parts::rules`]: every live rule, sorted by prefix.
    pub rules: Vec<RuleRow>,
    pub global: GlobalCounters,
    /// With [`Parts::sources`]: the sources, most packets first.
    pub sources: Vec<SourceRow>,
    /// With [`Parts::customers`]: per customer and rule, most stopped calls first.
    pub customers: Vec<CustomerRow>,
    /// Quarantines in force (customers and sources).
    pub quarantined: usize,
}

/// What one customer's INVITEs did under one rule. The kernel counts the INVITEs and calls of
/// each (customer, rule) pair; what the rule did with them follows from its action under the
/// live mode (a `block` or `reject` rule in `enforce` mode stopped every one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CustomerRow {
    pub iface: String,
    pub customer: String,
    /// The rule as the text views name it (`POLICY/PREFIX` for a policy's rule).
    pub rule: String,
    pub action: &'static str,
    /// INVITE packets (retransmissions included).
    pub matched: u64,
    pub calls: u64,
    /// INVITEs dropped by a `block` rule.
    pub dropped: u64,
    /// INVITEs dropped and answered by a `reject` rule.
    pub rejected: u64,
    /// INVITEs that a `block`, `reject` or `monitor` rule let pass (monitor action or mode).
    pub would_drop: u64,
    /// Calls the rule stopped (`dropped` or `rejected`, counted in calls).
    pub stopped_calls: u64,
}

/// One live rule and its counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRow {
    pub prefix: Prefix,
    /// The `[[policy]]` the rule belongs to (`None`: a global rule).
    pub policy: Option<String>,
    pub id: u32,
    pub action: Action,
    pub origin: Origin,
    /// The country (or network) name: [`country::rule_label`].
    pub country: String,
    pub comment: String,
    /// Zero without [`Parts::counters`].
    pub counters: RuleCounters,
}

/// A source address that hit a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRow {
    pub iface: String,
    pub rule: Prefix,
    pub action: Action,
    pub addr: IpAddr,
    pub stats: SourceStats,
}

impl Report {
    /// Reads `parts` of every pinned interface. An empty pin root is an error that says how to
    /// start the filter.
    pub fn read(pins: &PinRoot, state: &StateDir, parts: Parts) -> Result<Self, ReportError> {
        let daemon = state.running_daemon().unwrap_or(None);
        let ifaces = match pins.require_ifaces() {
            Ok(i) => i,
            // A running daemon whose interfaces were all detached: shown as such.
            Err(_) if daemon.as_ref().is_some_and(|d| !d.ifaces.is_empty()) => Vec::new(),
            Err(e) => return Err(Box::new(e).into()),
        };
        let meta = if parts.rules || parts.counters {
            state.rule_meta()
        } else {
            Default::default()
        };
        let customers = if parts.rules || parts.counters || parts.customers {
            state.customers()
        } else {
            Default::default()
        };
        let policy_name = |id: u16| customers.policy_name(id);
        let modes = state.iface_modes();
        let mut out = Report {
            pin_root: pins.root.clone(),
            state_dir: state.dir.clone(),
            daemon,
            last_reload: state.last_reload(),
            ifaces: Vec::new(),
        };
        let daemon_note = |iface: &str| {
            out.daemon
                .as_ref()
                .and_then(|d| d.ifaces.iter().find(|i| i.name == iface))
                .map(|i| i.state.clone())
                .unwrap_or_default()
        };
        let notes: BTreeMap<String, String> =
            ifaces.iter().map(|i| (i.clone(), daemon_note(i))).collect();
        // Interfaces the daemon guards that have no pins any more (`sipguard detach`).
        let unpinned: Vec<IfaceReport> = out
            .daemon
            .iter()
            .flat_map(|d| &d.ifaces)
            .filter(|i| !ifaces.contains(&i.name))
            .map(|i| IfaceReport {
                iface: i.name.clone(),
                attached: false,
                note: if i.state.is_empty() {
                    "not pinned".into()
                } else {
                    i.state.clone()
                },
                xdp_mode: "none".into(),
                program_id: None,
                settings: Settings::default(),
                rule_count: 0,
                rules: Vec::new(),
                global: GlobalCounters::default(),
                sources: Vec::new(),
                customers: Vec::new(),
                quarantined: 0,
            })
            .collect();
        for iface in ifaces {
            let at = |source| ReportError::Maps {
                iface: iface.clone(),
                source: Box::new(source),
            };
            let maps = Maps::from_pins(&pins.iface_dir(&iface)).map_err(at)?;
            let mut settings =
                Settings::live(&maps.config().map_err(at)?, maps.sip_ports().map_err(at)?);
            settings.max_rules = maps.capacity();
            let counters = if parts.counters {
                maps.all_rule_counters().map_err(at)?
            } else {
                BTreeMap::new()
            };
            let live = if parts.rules || parts.counters || parts.sources || parts.customers {
                maps.rules().map_err(at)?
            } else {
                BTreeMap::new()
            };
            let rule_count = if parts.rules || parts.counters {
                live.len()
            } else {
                maps.rule_count().map_err(at)?
            };
            let sources = if parts.sources {
                let by_id: BTreeMap<u32, (&Prefix, u8)> =
                    live.iter().map(|(p, v)| (v.id, (p, v.action))).collect();
                let mut rows: Vec<SourceRow> = maps
                    .sources()
                    .map_err(at)?
                    .into_iter()
                    .filter_map(|(k, stats)| {
                        // A source of a rule that is gone is not shown.
                        let (prefix, action) = by_id.get(&k.rule_id)?;
                        Some(SourceRow {
                            iface: iface.clone(),
                            rule: (*prefix).clone(),
                            action: Action::from_u8(*action)?,
                            addr: k.ip(),
                            stats,
                        })
                    })
                    .collect();
                sort_sources(&mut rows);
                rows
            } else {
                Vec::new()
            };
            let rules = if parts.rules || parts.counters {
                live.iter()
                    .filter_map(|(prefix, v)| {
                        let m = meta.get(prefix);
                        Some(RuleRow {
                            prefix: prefix.clone(),
                            policy: policy_name(prefix.policy),
                            id: v.id,
                            action: Action::from_u8(v.action)?,
                            origin: m.map_or(Origin::Runtime, |m| m.origin),
                            country: country::rule_label(
                                m.and_then(|m| m.country.as_deref()),
                                prefix,
                            ),
                            comment: m.and_then(|m| m.comment.clone()).unwrap_or_default(),
                            counters: counters.get(&v.id).copied().unwrap_or_default(),
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let customer_rows = if parts.customers {
                let by_id: BTreeMap<u32, (&Prefix, u8)> =
                    live.iter().map(|(p, v)| (v.id, (p, v.action))).collect();
                let enforce = settings.mode == guard_common::Mode::Enforce;
                let mut rows: Vec<CustomerRow> = maps
                    .customer_counters()
                    .map_err(at)?
                    .into_iter()
                    .filter_map(|((cust, rule), c)| {
                        let (prefix, action) = by_id.get(&rule)?;
                        let action = Action::from_u8(*action)?;
                        let label = customers.rule_label(prefix);
                        let stops = action.stops() && enforce;
                        let of = |a: Action| if stops && action == a { c.matched } else { 0 };
                        Some(CustomerRow {
                            iface: iface.clone(),
                            customer: customers
                                .customer_by_id(cust)
                                .map_or_else(|| format!("customer {cust}"), |c| c.name.clone()),
                            rule: label,
                            action: action.as_str(),
                            matched: c.matched,
                            calls: c.calls,
                            dropped: of(Action::Block),
                            rejected: of(Action::Reject),
                            would_drop: if action != Action::Allow && !stops {
                                c.matched
                            } else {
                                0
                            },
                            stopped_calls: if stops { c.calls } else { 0 },
                        })
                    })
                    .collect();
                rows.sort_by(|a, b| {
                    b.stopped_calls
                        .cmp(&a.stopped_calls)
                        .then(b.calls.cmp(&a.calls))
                        .then(a.customer.cmp(&b.customer))
                        .then(a.rule.cmp(&b.rule))
                });
                rows
            } else {
                Vec::new()
            };
            let link = pins.link_state(&iface);
            let attached = matches!(link, LinkState::Attached { .. } | LinkState::Unknown);
            let note = match (attached, link) {
                (true, _) => String::new(),
                (false, LinkState::Severed) => "interface gone".to_string(),
                (false, _) => match notes.get(&iface).map(String::as_str) {
                    Some("") | None => "not attached".to_string(),
                    Some(n) => n.to_string(),
                },
            };
            out.ifaces.push(IfaceReport {
                attached,
                note,
                xdp_mode: modes
                    .get(&iface)
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
                program_id: pins.program_id(&iface),
                settings,
                rule_count,
                rules,
                global: maps.global_counters().map_err(at)?,
                sources,
                customers: customer_rows,
                quarantined: {
                    let now = crate::model::time::boot_now_ns();
                    maps.quarantined()
                        .map_err(at)?
                        .iter()
                        .filter(|(_, q)| q.active(now))
                        .count()
                },
                iface,
            });
        }
        out.ifaces.extend(unpinned);
        out.ifaces.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(out)
    }

    /// Per-rule counters summed over the interfaces, one row per prefix, most drops first.
    pub fn rule_totals(&self) -> Vec<RuleRow> {
        let mut by_prefix: BTreeMap<&Prefix, RuleRow> = BTreeMap::new();
        for r in self.ifaces.iter().flat_map(|i| &i.rules) {
            by_prefix
                .entry(&r.prefix)
                .and_modify(|t| t.counters += r.counters)
                .or_insert_with(|| r.clone());
        }
        let mut rows: Vec<RuleRow> = by_prefix.into_values().collect();
        rows.sort_by(|a, b| {
            let key = |r: &RuleRow| {
                (
                    r.counters.dropped,
                    r.counters.would_drop,
                    r.counters.matched,
                )
            };
            key(b).cmp(&key(a)).then_with(|| a.prefix.cmp(&b.prefix))
        });
        rows
    }

    /// What `stats --json` prints: the rule rows summed over the interfaces (the `top` with
    /// most drops) and the global counters, every counter under its list name.
    pub fn stats_json(&self, top: Option<usize>) -> serde_json::Value {
        let mut rows = self.rule_totals();
        if let Some(n) = top {
            rows.truncate(n);
        }
        let rules: Vec<_> = rows.iter().map(RuleRow::json).collect();
        serde_json::json!({ "rules": rules, "global": GlobalCounterFields(self.global_totals()) })
    }

    /// Global counters summed over the interfaces.
    pub fn global_totals(&self) -> GlobalCounters {
        let mut g = GlobalCounters::default();
        for i in &self.ifaces {
            g += i.global;
        }
        g
    }

    /// Every interface's sources, most packets first; `rule` keeps one rule's.
    pub fn sources(&self, rule: Option<&Prefix>) -> Vec<SourceRow> {
        let mut rows: Vec<SourceRow> = self
            .ifaces
            .iter()
            .flat_map(|i| &i.sources)
            .filter(|s| rule.is_none_or(|r| *r == s.rule))
            .cloned()
            .collect();
        sort_sources(&mut rows);
        rows
    }

    /// Rule id to prefix, per interface: what an event names its rule by.
    pub fn rule_ids(&self, iface: &str) -> BTreeMap<u32, Prefix> {
        self.ifaces
            .iter()
            .filter(|i| i.iface == iface)
            .flat_map(|i| &i.rules)
            .map(|r| (r.id, r.prefix.clone()))
            .collect()
    }
}

fn sort_sources(rows: &mut [SourceRow]) {
    rows.sort_by(|a, b| {
        (b.stats.packets, b.stats.calls)
            .cmp(&(a.stats.packets, a.stats.calls))
            .then_with(|| a.addr.cmp(&b.addr))
            .then_with(|| a.rule.cmp(&b.rule))
    });
}

/// The per-rule counters as `name: value` pairs, named by [`RuleCounter::name`]: the fields of
/// `stats --json` and the `sipguard_rule_<name>_total` series of `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounterFields(pub RuleCounters);

impl Serialize for RuleCounterFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(RuleCounter::ALL.len()))?;
        for c in RuleCounter::ALL {
            m.serialize_entry(c.name(), &self.0.get(c))?;
        }
        m.end()
    }
}

/// The global counters as `name: value` pairs, named by [`Counter::name`]: the `global` object
/// of `stats --json` and the `sipguard_<name>_total` series of `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalCounterFields(pub GlobalCounters);

impl Serialize for GlobalCounterFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(Counter::ALL.len()))?;
        for c in Counter::ALL {
            m.serialize_entry(c.name(), &self.0.get(c))?;
        }
        m.end()
    }
}

/// A rule row as `stats --json` and `rules list --json` print it.
#[derive(Serialize)]
pub struct RuleJson<'a> {
    pub prefix: String,
    /// The policy of a `[[policy]]` rule; absent for global rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    pub action: &'static str,
    pub origin: &'static str,
    pub country: &'a str,
    pub comment: &'a str,
    pub id: u32,
    #[serde(flatten)]
    pub counters: RuleCounterFields,
}

impl RuleRow {
    /// The rule as the text views show it: `+232`, or `intl-barring/+` for a policy's rule.
    pub fn label(&self) -> String {
        match &self.policy {
            Some(p) => format!("{p}/{}", self.prefix),
            None => self.prefix.to_string(),
        }
    }

    pub fn json(&self) -> RuleJson<'_> {
        RuleJson {
            prefix: self.prefix.to_string(),
            policy: self.policy.as_deref(),
            action: self.action.as_str(),
            origin: self.origin.as_str(),
            country: &self.country,
            comment: &self.comment,
            id: self.id,
            counters: RuleCounterFields(self.counters),
        }
    }
}

/// A source row as `stats --sources --json` prints it.
#[derive(Serialize)]
pub struct SourceJson<'a> {
    pub iface: &'a str,
    pub rule: String,
    pub action: &'static str,
    pub source: String,
    pub packets: u64,
    pub calls: u64,
    pub first_seen: String,
    pub last_seen: String,
}

impl SourceRow {
    pub fn json(&self) -> SourceJson<'_> {
        SourceJson {
            iface: &self.iface,
            rule: self.rule.to_string(),
            action: self.action.as_str(),
            source: self.addr.to_string(),
            packets: self.stats.packets,
            calls: self.stats.calls,
            first_seen: rfc3339(boot_ns_to_system(self.stats.first_seen_ns)),
            last_seen: rfc3339(boot_ns_to_system(self.stats.last_seen_ns)),
        }
    }
}

/// An interface as `status --json` prints it.
#[derive(Serialize)]
pub struct IfaceJson<'a> {
    pub iface: &'a str,
    pub attached: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub note: &'a str,
    pub xdp_mode: &'a str,
    pub program_id: Option<u32>,
    pub rules: usize,
    pub max_rules: u32,
    pub mode: &'static str,
    pub sip_ports: &'a [u16],
    pub international_prefixes: &'a [String],
}

impl IfaceReport {
    pub fn json(&self) -> IfaceJson<'_> {
        IfaceJson {
            iface: &self.iface,
            attached: self.attached,
            note: &self.note,
            xdp_mode: &self.xdp_mode,
            program_id: self.program_id,
            rules: self.rule_count,
            max_rules: self.settings.max_rules,
            mode: self.settings.mode.as_str(),
            sip_ports: &self.settings.sip_ports,
            international_prefixes: &self.settings.intl_prefixes,
        }
    }
}

/// What the daemon knows that the maps do not: shown by `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct DaemonStatus {
    pub last_reload: Option<SystemTime>,
    pub last_reload_ok: bool,
    /// Quarantines ended before their time (`sipguard quarantine release`), seen by the daemon.
    pub quarantine_releases: u64,
    /// A fleet router's etcd side (None: not a fleet router).
    pub fleet: Option<FleetMetrics>,
}

/// What a fleet router's metrics say of etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetMetrics {
    /// The etcd revision of the document in force.
    pub revision: i64,
    pub connected: bool,
    /// The last watch event (Unix seconds; 0: none yet).
    pub last_watch_unix: u64,
}

/// A report as two interfaces with a few rules, counters and sources would give, for the
/// rendering tests of every view.
#[cfg(test)]
pub(crate) fn sample() -> Report {
    use guard_common::Mode;
    let rule = |prefix: &str, id, action, origin, country: &str, comment: &str, n: u64| RuleRow {
        prefix: prefix.parse().unwrap(),
        policy: None,
        id,
        action,
        origin,
        country: country.into(),
        comment: comment.into(),
        counters: RuleCounters {
            matched: 10 * n,
            dropped: if action == Action::Block { 9 * n } else { 0 },
            would_drop: if action == Action::Monitor { 7 * n } else { 0 },
            calls: 3 * n,
            reinvites: n,
            over_limit: 2 * n,
            would_limit: 0,
        },
    };
    let iface = |name: &str, scale: u64| {
        let mut global = GlobalCounters::default();
        for (i, c) in Counter::ALL.iter().enumerate() {
            global.counters[*c as usize] = scale * (100 + i as u64);
        }
        IfaceReport {
            iface: name.into(),
            attached: scale == 1,
            note: if scale == 1 {
                String::new()
            } else {
                "interface gone".into()
            },
            xdp_mode: "native".into(),
            program_id: Some(40 + scale as u32),
            quarantined: scale as usize,
            settings: Settings {
                mode: if scale == 1 {
                    Mode::Enforce
                } else {
                    Mode::Monitor
                },
                ..Settings::default()
            },
            rule_count: 3,
            rules: vec![
                rule(
                    "+232",
                    1,
                    Action::Block,
                    Origin::Config,
                    "Sierra Leone",
                    "fraud",
                    scale,
                ),
                rule(
                    "+23222",
                    2,
                    Action::Allow,
                    Origin::Runtime,
                    "Sierra Leone",
                    "",
                    scale,
                ),
                rule(
                    "+44",
                    3,
                    Action::Monitor,
                    Origin::Config,
                    "United Kingdom",
                    "watch",
                    2 * scale,
                ),
            ],
            global,
            sources: vec![SourceRow {
                iface: name.into(),
                rule: "+232".parse().unwrap(),
                action: Action::Block,
                addr: if scale == 1 {
                    "198.51.100.7".parse().unwrap()
                } else {
                    "2001:db8::7".parse().unwrap()
                },
                stats: SourceStats {
                    packets: 30 * scale,
                    calls: 10 * scale,
                    first_seen_ns: 1,
                    last_seen_ns: 2,
                },
            }],
            customers: Vec::new(),
        }
    };
    Report {
        pin_root: "/sys/fs/bpf/sipguard".into(),
        state_dir: "/var/lib/sipguard".into(),
        daemon: Some(DaemonInfo {
            pid: 4242,
            config: Some("/etc/sipguard/sipguard.toml".into()),
            ifaces: Vec::new(),
            started_unix: 0,
        }),
        last_reload: Some(ReloadRecord {
            unix: 1_700_000_000,
            reason: "SIGHUP".into(),
            ok: false,
            error: Some("line 3: unknown action".into()),
        }),
        ifaces: vec![iface("eth1", 1), iface("eth2", 2)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_interfaces_and_sort_by_drops() {
        let r = sample();
        let rows = r.rule_totals();
        let order: Vec<String> = rows.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(
            order,
            ["+232", "+44", "+23222"],
            "most drops first, then would-drops"
        );
        assert_eq!(rows[0].counters.matched, 10 + 20);
        assert_eq!(rows[0].counters.dropped, 9 + 18);
        assert_eq!(rows[1].counters.would_drop, 14 + 28);
        let g = r.global_totals();
        assert_eq!(g.get(Counter::Frames), 100 + 200);
        assert_eq!(g.get(Counter::EventsSuppressed), 3 * 119);
    }

    #[test]
    fn sources_of_every_interface_most_packets_first() {
        let r = sample();
        let all = r.sources(None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].addr.to_string(), "2001:db8::7");
        assert_eq!(all[0].stats.packets, 60);
        assert!(r.sources(Some(&"+44".parse().unwrap())).is_empty());
        assert_eq!(r.rule_ids("eth2")[&3].to_string(), "+44");
    }

    #[test]
    fn json_rows_carry_every_counter_by_its_name() {
        let r = sample();
        let v = serde_json::to_value(r.ifaces[0].rules[0].json()).unwrap();
        for c in RuleCounter::ALL {
            assert!(v[c.name()].is_u64(), "{} missing in {v}", c.name());
        }
        assert_eq!(v["matched"], 10);
        assert_eq!(v["origin"], "config");
        assert_eq!(v["country"], "Sierra Leone");
        let g = serde_json::to_value(GlobalCounterFields(r.global_totals())).unwrap();
        assert_eq!(g.as_object().unwrap().len(), Counter::ALL.len());
        assert_eq!(g["unparsable_uri"], 3 * 107);
    }
}
