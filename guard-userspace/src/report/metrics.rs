//! The report as Prometheus metrics (OpenMetrics text, via `prometheus-client`).
//!
//! Generated from the same lists as `stats --json`, so no second list has to be kept in sync:
//!
//! - every per-rule counter [`RuleCounter`] is `sipguard_rule_<name>_total`, labelled with the
//!   rule's `prefix`, `action` and `country` as `stats` shows them, and the `iface`, for the
//!   `top_rules` busiest rules of each interface (most matched packets first, ties by prefix;
//!   [`TOP_RULES`] by default, `[metrics] top_rules`);
//! - the same counters summed over every rule of an interface, exported or not, are
//!   `sipguard_rules_<name>_total{iface}`, and `sipguard_rules_omitted{iface}` counts the rules
//!   left out of the per-rule series;
//! - every global counter [`Counter`] is `sipguard_<name>_total{iface}`;
//! - the busiest [`TOP_SOURCES`] sources per interface are `sipguard_source_calls_total` and
//!   `sipguard_source_packets_total`, labelled as `stats --sources` shows them;
//! - gauges: rules loaded, rule capacity, program attached, last reload time and result.
//!
//! Label cardinality is bounded by `top_rules` (one series per exported rule, counter and
//! interface), not by the rule count: a scrape stays small with a million rules.

use std::{collections::BTreeMap, time::SystemTime};

use guard_common::{Counter as GlobalCounter, RuleCounter};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{DaemonStatus, Report, RuleRow};

/// Rules exported per interface by default (the busiest by matched packets).
pub const TOP_RULES: usize = crate::config::file::DEFAULT_TOP_RULES as usize;

/// Sources exported per interface (the busiest by calls): bounded label cardinality.
pub const TOP_SOURCES: usize = 20;

/// Customers with series of their own per interface: the ones whose calls were stopped most, so
/// that a million customers do not become a million series.
pub const TOP_CUSTOMERS: usize = crate::config::file::DEFAULT_TOP_CUSTOMERS as usize;

/// How many rules and customers get series of their own per interface (`[metrics] top_rules`,
/// `top_customers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tops {
    pub rules: usize,
    pub customers: usize,
}

impl Default for Tops {
    fn default() -> Self {
        Self {
            rules: TOP_RULES,
            customers: TOP_CUSTOMERS,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    iface: String,
    prefix: String,
    /// The `[[policy]]` of the rule; empty for a global rule.
    policy: String,
    action: String,
    country: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CustomerLabels {
    iface: String,
    customer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    iface: String,
    rule: String,
    action: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfaceLabels {
    iface: String,
}

fn family<L, M>(reg: &mut Registry, name: &str, help: &str) -> Family<L, M>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<L, M>::default();
    reg.register(name, help, f.clone());
    f
}

/// The `top` busiest of `rules`: most matched packets first, ties by prefix.
pub fn busiest_rules(rules: &[RuleRow], top: usize) -> Vec<&RuleRow> {
    let order = |a: &&RuleRow, b: &&RuleRow| {
        b.counters
            .matched
            .cmp(&a.counters.matched)
            .then_with(|| a.prefix.cmp(&b.prefix))
    };
    let mut rows: Vec<&RuleRow> = rules.iter().collect();
    if top < rows.len() {
        if top == 0 {
            return Vec::new();
        }
        rows.select_nth_unstable_by(top - 1, order);
        rows.truncate(top);
    }
    rows.sort_unstable_by(order);
    rows
}

/// Renders `report` (read with rules, counters and sources) and the daemon's own status, with
/// per-rule series for the `top_rules` busiest rules of each interface.
pub fn render(
    report: &Report,
    status: &DaemonStatus,
    tops: Tops,
) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("sipguard");
    let per_rule: Vec<(RuleCounter, Family<RuleLabels, Counter>)> = RuleCounter::ALL
        .iter()
        .map(|&c| (c, family(&mut reg, &format!("rule_{}", c.name()), c.help())))
        .collect();
    let rule_sums: Vec<(RuleCounter, Family<IfaceLabels, Counter>)> = RuleCounter::ALL
        .iter()
        .map(|&c| {
            let help = format!("{} (summed over every rule of the interface)", c.help());
            (c, family(&mut reg, &format!("rules_{}", c.name()), &help))
        })
        .collect();
    let omitted: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "rules_omitted",
        "Rules without per-rule series (beyond the top_rules busiest); counted in the sipguard_rules_*_total sums",
    );
    let global: Vec<(GlobalCounter, Family<IfaceLabels, Counter>)> = GlobalCounter::ALL
        .iter()
        .map(|&c| (c, family(&mut reg, c.name(), c.help())))
        .collect();
    let src_calls: Family<SourceLabels, Counter> = family(
        &mut reg,
        "source_calls",
        "New calls per source address and rule (the busiest sources of each interface only)",
    );
    let src_packets: Family<SourceLabels, Counter> = family(
        &mut reg,
        "source_packets",
        "INVITE packets per source address and rule (the busiest sources of each interface only)",
    );
    let cust_calls: Family<CustomerLabels, Counter> = family(
        &mut reg,
        "customer_calls",
        "New calls per customer that matched a rule (the customers with the most stopped calls only)",
    );
    let cust_stopped: Family<CustomerLabels, Counter> = family(
        &mut reg,
        "customer_stopped_calls",
        "Calls per customer that a block or reject rule stopped (the top customers only)",
    );
    let cust_omitted: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "customers_omitted",
        "Customers with counters but without series of their own (beyond the top customers)",
    );
    let rules_loaded: Family<IfaceLabels, Gauge> =
        family(&mut reg, "rules_loaded", "Rules in the live rule set");
    let max_rules: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "max_rules",
        "Rules the rule maps can hold (their size, max_rules when they were created)",
    );
    let quarantined: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "quarantined",
        "Customers and sources in quarantine now",
    );
    let attached: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "program_attached",
        "1 when the XDP program is attached to the interface",
    );
    let reload_time = Gauge::<i64>::default();
    reg.register(
        "last_reload_timestamp_seconds",
        "Unix time of the last reload attempt (0: none since start)",
        reload_time.clone(),
    );
    let releases = prometheus_client::metrics::counter::Counter::<u64>::default();
    reg.register(
        "quarantine_releases",
        "Quarantines ended before their time (sipguard quarantine release), seen by the daemon",
        releases.clone(),
    );
    let reload_ok = Gauge::<i64>::default();
    reg.register(
        "last_reload_success",
        "1 when the last reload (or the start) applied the config",
        reload_ok.clone(),
    );

    for i in &report.ifaces {
        let il = IfaceLabels {
            iface: i.iface.clone(),
        };
        rules_loaded.get_or_create(&il).set(i.rule_count as i64);
        max_rules
            .get_or_create(&il)
            .set(i64::from(i.settings.max_rules));
        attached.get_or_create(&il).set(i64::from(i.attached));
        quarantined.get_or_create(&il).set(i.quarantined as i64);
        let mut sums = guard_common::RuleCounters::default();
        for r in &i.rules {
            sums += r.counters;
        }
        for (c, f) in &rule_sums {
            f.get_or_create(&il).inc_by(sums.get(*c));
        }
        let top = busiest_rules(&i.rules, tops.rules);
        omitted
            .get_or_create(&il)
            .set((i.rules.len() - top.len()) as i64);
        for r in top {
            let labels = RuleLabels {
                iface: i.iface.clone(),
                prefix: r.prefix.to_string(),
                policy: r.policy.clone().unwrap_or_default(),
                action: r.action.as_str().to_string(),
                country: r.country.clone(),
            };
            for (c, f) in &per_rule {
                f.get_or_create(&labels).inc_by(r.counters.get(*c));
            }
        }
        for (c, f) in &global {
            f.get_or_create(&il).inc_by(i.global.get(*c));
        }
        let mut busiest: Vec<_> = i.sources.iter().collect();
        busiest.sort_by_key(|s| std::cmp::Reverse((s.stats.calls, s.stats.packets)));
        for s in busiest.into_iter().take(TOP_SOURCES) {
            let l = SourceLabels {
                iface: i.iface.clone(),
                rule: s.rule.to_string(),
                action: s.action.as_str().to_string(),
                source: s.addr.to_string(),
            };
            src_calls.get_or_create(&l).inc_by(s.stats.calls);
            src_packets.get_or_create(&l).inc_by(s.stats.packets);
        }
        // Per customer: summed over its rules; the top customers by stopped calls.
        let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for r in &i.customers {
            let e = per.entry(&r.customer).or_default();
            e.0 += r.calls;
            e.1 += r.stopped_calls;
        }
        let mut top: Vec<_> = per.into_iter().collect();
        top.sort_by_key(|(name, (calls, stopped))| (std::cmp::Reverse((*stopped, *calls)), *name));
        cust_omitted
            .get_or_create(&il)
            .set(top.len().saturating_sub(tops.customers) as i64);
        for (name, (calls, stopped)) in top.into_iter().take(tops.customers) {
            let l = CustomerLabels {
                iface: i.iface.clone(),
                customer: name.to_string(),
            };
            cust_calls.get_or_create(&l).inc_by(calls);
            cust_stopped.get_or_create(&l).inc_by(stopped);
        }
    }
    reload_time.set(
        status
            .last_reload
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
    );
    reload_ok.set(i64::from(status.last_reload_ok));
    releases.inc_by(status.quarantine_releases);
    if let Some(f) = &status.fleet {
        let revision = Gauge::<i64>::default();
        reg.register(
            "config_revision",
            "The etcd revision of the fleet document in force",
            revision.clone(),
        );
        revision.set(f.revision);
        let connected = Gauge::<i64>::default();
        reg.register(
            "fleet_connected",
            "1 while the router is connected to the fleet's etcd",
            connected.clone(),
        );
        connected.set(i64::from(f.connected));
        let last = Gauge::<i64>::default();
        reg.register(
            "fleet_last_watch_event_timestamp_seconds",
            "When the last change of the fleet document arrived (Unix time; 0: none yet)",
            last.clone(),
        );
        last.set(f.last_watch_unix as i64);
    }
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use prometheus_parse::{Sample, Scrape, Value};

    use guard_common::SourceStats;

    use super::*;
    use crate::report::{SourceRow, sample};

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("OpenMetrics text parses")
    }

    fn value(s: &Sample) -> f64 {
        match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => f64::NAN,
        }
    }

    /// The alerting rules shipped in contrib/prometheus use series that exist.
    #[test]
    fn the_alert_rules_use_series_that_exist() {
        let text = render(&sample(), &DaemonStatus::default(), Tops::default()).unwrap();
        let scrape = parse(&text);
        let alerts = include_str!("../../../contrib/prometheus/alerts.yml");
        let mut used: Vec<&str> = alerts
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("sipguard_"))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 3, "{used:?}");
        for m in used {
            assert!(
                scrape.samples.iter().any(|s| s.metric == m),
                "alerts.yml uses {m}, which /metrics does not export"
            );
        }
    }

    /// Every field of `stats --json` has its series, with the same labels, and the series
    /// summed over the interfaces equal it.
    #[test]
    fn metrics_equal_stats() {
        let report = sample();
        let text = render(&report, &DaemonStatus::default(), Tops::default()).unwrap();
        let scrape = parse(&text);
        let json = report.stats_json(None);
        let rules = json["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 3);
        let mut checked = 0;
        for r in rules {
            let prefix = r["prefix"].as_str().unwrap();
            for (field, v) in r.as_object().unwrap() {
                let Some(v) = v.as_u64().filter(|_| field != "id") else {
                    continue;
                };
                let metric = format!("sipguard_rule_{field}_total");
                let series: Vec<&Sample> = scrape
                    .samples
                    .iter()
                    .filter(|s| s.metric == metric && s.labels.get("prefix") == Some(prefix))
                    .collect();
                assert_eq!(
                    series.len(),
                    2,
                    "{metric}{{prefix={prefix}}}: one per interface\n{text}"
                );
                for s in &series {
                    assert_eq!(s.labels.get("action"), r["action"].as_str());
                    assert_eq!(s.labels.get("country"), r["country"].as_str());
                }
                assert_eq!(
                    series.iter().map(|s| value(s)).sum::<f64>(),
                    v as f64,
                    "{metric} {prefix}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * RuleCounter::ALL.len());
        let global = json["global"].as_object().unwrap();
        assert_eq!(global.len(), GlobalCounter::ALL.len());
        for (name, v) in global {
            let metric = format!("sipguard_{name}_total");
            let sum: f64 = scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric)
                .map(value)
                .sum();
            assert_eq!(sum, v.as_u64().unwrap() as f64, "{metric}\n{text}");
        }
        // HELP texts come from the same list.
        assert!(text.contains(&format!(
            "# HELP sipguard_rule_dropped {}",
            RuleCounter::Dropped.help()
        )));
    }

    #[test]
    fn sources_and_gauges_are_exported_per_interface() {
        let mut report = sample();
        // More sources than exported: only the busiest TOP_SOURCES per interface.
        let template = report.ifaces[0].sources[0].clone();
        report.ifaces[0].sources = (0..TOP_SOURCES as u64 + 5)
            .map(|i| SourceRow {
                addr: std::net::IpAddr::from([198, 51, 100, i as u8]),
                stats: SourceStats {
                    calls: i,
                    ..template.stats
                },
                ..template.clone()
            })
            .collect();
        let status = DaemonStatus {
            last_reload: Some(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            ),
            last_reload_ok: false,
            quarantine_releases: 2,
            fleet: Some(super::super::FleetMetrics {
                revision: 42,
                connected: true,
                last_watch_unix: 1_700_000_100,
            }),
        };
        let scrape = parse(&render(&report, &status, Tops::default()).unwrap());
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "sipguard_quarantine_releases_total" && value(s) == 2.0),
            "quarantine releases: {:?}",
            scrape
                .samples
                .iter()
                .filter(|s| s.metric.contains("release"))
                .collect::<Vec<_>>()
        );
        for (metric, want) in [
            ("sipguard_config_revision", 42.0),
            ("sipguard_fleet_connected", 1.0),
            (
                "sipguard_fleet_last_watch_event_timestamp_seconds",
                1_700_000_100.0,
            ),
        ] {
            assert!(
                scrape
                    .samples
                    .iter()
                    .any(|s| s.metric == metric && value(s) == want),
                "{metric}"
            );
        }
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "sipguard_quarantine_releases_total"),
            "quarantine releases: {:?}",
            scrape
                .samples
                .iter()
                .filter(|s| s.metric.contains("release"))
                .collect::<Vec<_>>()
        );
        let calls: Vec<&Sample> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == "sipguard_source_calls_total" && s.labels.get("iface") == Some("eth1")
            })
            .collect();
        assert_eq!(calls.len(), TOP_SOURCES);
        assert!(calls.iter().all(|s| value(s) >= 5.0), "the busiest only");
        let one = |name: &str, iface: Option<&str>| {
            value(
                scrape
                    .samples
                    .iter()
                    .find(|s| {
                        s.metric == name && (iface.is_none() || s.labels.get("iface") == iface)
                    })
                    .unwrap_or_else(|| panic!("no {name}")),
            )
        };
        assert_eq!(one("sipguard_program_attached", Some("eth1")), 1.0);
        assert_eq!(one("sipguard_program_attached", Some("eth2")), 0.0);
        assert_eq!(one("sipguard_rules_loaded", Some("eth2")), 3.0);
        assert_eq!(
            one("sipguard_max_rules", Some("eth1")),
            f64::from(guard_common::MAX_RULES)
        );
        assert_eq!(one("sipguard_last_reload_timestamp_seconds", None), 1.7e9);
        assert_eq!(one("sipguard_last_reload_success", None), 0.0);
    }

    /// A report with `n` rules on eth1: rule `k` matched `k % 1000` packets.
    fn many_rules(n: u32) -> Report {
        let mut report = sample();
        report.ifaces.truncate(1);
        let template = report.ifaces[0].rules[0].clone();
        report.ifaces[0].rules = (0..n)
            .map(|k| RuleRow {
                prefix: format!("+1{k:07}").parse().unwrap(),
                id: k + 1,
                counters: guard_common::RuleCounters {
                    matched: u64::from(k % 1000),
                    dropped: 1,
                    ..Default::default()
                },
                ..template.clone()
            })
            .collect();
        report.ifaces[0].rule_count = n as usize;
        report
    }

    #[test]
    fn only_the_busiest_rules_have_series_and_the_sums_cover_every_rule() {
        let n = 262_144;
        let report = many_rules(n);
        let text = render(&report, &DaemonStatus::default(), Tops::default()).unwrap();
        assert!(
            text.len() < 512 * 1024,
            "{} bytes for {n} rules",
            text.len()
        );
        let scrape = parse(&text);
        let matched: Vec<&Sample> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == "sipguard_rule_matched_total")
            .collect();
        assert_eq!(matched.len(), TOP_RULES);
        // The busiest (999 matched) first, ties by prefix: the 262 rules with k % 1000 == 999
        // (the lowest prefixes first), then 998...
        assert!(matched.iter().all(|s| value(s) >= 998.0), "busiest only");
        let mut exported: Vec<&str> = matched
            .iter()
            .filter(|s| value(s) == 998.0)
            .map(|s| s.labels.get("prefix").unwrap())
            .collect();
        exported.sort();
        assert_eq!(exported.len(), TOP_RULES - 262);
        assert_eq!(exported[0], "+10000998", "ties go to the lowest prefix");
        let one = |name: &str| {
            let s: Vec<&Sample> = scrape.samples.iter().filter(|s| s.metric == name).collect();
            assert_eq!(s.len(), 1, "{name}");
            value(s[0])
        };
        let want: u64 = (0..u64::from(n)).map(|k| k % 1000).sum();
        assert_eq!(one("sipguard_rules_matched_total"), want as f64);
        assert_eq!(one("sipguard_rules_dropped_total"), f64::from(n));
        assert_eq!(
            one("sipguard_rules_omitted"),
            f64::from(n) - TOP_RULES as f64
        );
        assert_eq!(one("sipguard_rules_loaded"), f64::from(n));

        // A larger cap exports every rule; 0 exports none (the sums stay).
        let all = parse(
            &render(
                &many_rules(700),
                &DaemonStatus::default(),
                Tops {
                    rules: 1000,
                    ..Tops::default()
                },
            )
            .unwrap(),
        );
        let count = |s: &Scrape, m: &str| s.samples.iter().filter(|x| x.metric == m).count();
        assert_eq!(count(&all, "sipguard_rule_matched_total"), 700);
        let none = parse(
            &render(
                &many_rules(700),
                &DaemonStatus::default(),
                Tops {
                    rules: 0,
                    ..Tops::default()
                },
            )
            .unwrap(),
        );
        assert_eq!(count(&none, "sipguard_rule_matched_total"), 0);
        assert_eq!(count(&none, "sipguard_rules_matched_total"), 1);
    }

    #[test]
    fn busiest_rules_order() {
        let report = many_rules(3000);
        let top = busiest_rules(&report.ifaces[0].rules, 5);
        let got: Vec<String> = top.iter().map(|r| r.prefix.to_string()).collect();
        assert_eq!(
            got,
            [
                "+10000999",
                "+10001999",
                "+10002999",
                "+10000998",
                "+10001998"
            ]
        );
        assert_eq!(busiest_rules(&report.ifaces[0].rules, 5000).len(), 3000);
    }
}
