//! The report as Prometheus metrics (OpenMetrics text, via `prometheus-client`).
//!
//! Generated from the same lists as `stats --json`, so no second list has to be kept in sync:
//!
//! - every per-rule counter [`RuleCounter`] is `sipguard_rule_<name>_total`, labelled with the
//!   rule's `prefix`, `action` and `country` as `stats` shows them, and the `iface`;
//! - every global counter [`Counter`] is `sipguard_<name>_total{iface}`;
//! - the busiest [`TOP_SOURCES`] sources per interface are `sipguard_source_calls_total` and
//!   `sipguard_source_packets_total`, labelled as `stats --sources` shows them;
//! - gauges: rules loaded, rule capacity, program attached, last reload time and result.
//!
//! Label cardinality is bounded by the rule count (one series per rule, counter and interface).

use std::time::SystemTime;

use guard_common::{Counter as GlobalCounter, RuleCounter};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{DaemonStatus, Report};

/// Sources exported per interface (the busiest by calls): bounded label cardinality.
pub const TOP_SOURCES: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    iface: String,
    prefix: String,
    action: String,
    country: String,
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

/// Renders `report` (read with rules, counters and sources) and the daemon's own status.
pub fn render(report: &Report, status: &DaemonStatus) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("sipguard");
    let per_rule: Vec<(RuleCounter, Family<RuleLabels, Counter>)> = RuleCounter::ALL
        .iter()
        .map(|&c| (c, family(&mut reg, &format!("rule_{}", c.name()), c.help())))
        .collect();
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
    let rules_loaded: Family<IfaceLabels, Gauge> =
        family(&mut reg, "rules_loaded", "Rules in the live rule set");
    let max_rules: Family<IfaceLabels, Gauge> = family(
        &mut reg,
        "max_rules",
        "Rules the rule maps can hold (their size, max_rules when they were created)",
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
        for r in &i.rules {
            let labels = RuleLabels {
                iface: i.iface.clone(),
                prefix: r.prefix.to_string(),
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
    }
    reload_time.set(
        status
            .last_reload
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
    );
    reload_ok.set(i64::from(status.last_reload_ok));
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

    /// Every field of `stats --json` has its series, with the same labels, and the series
    /// summed over the interfaces equal it.
    #[test]
    fn metrics_equal_stats() {
        let report = sample();
        let text = render(&report, &DaemonStatus::default()).unwrap();
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
        };
        let scrape = parse(&render(&report, &status).unwrap());
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
}
