//! `sipguard stats [--json] [--watch SECS] [--top N] [--reset] [--sources [--rule PREFIX]]
//! [--customers]`: per-rule and global counters, the sources that hit the rules, or the calls
//! per customer and rule.

use std::{fmt::Write as _, io::Write as _, time::Duration};

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::Ctx;
use crate::{
    kernel::maps::Maps,
    model::{rules::Prefix, time},
    report::{CustomerRow, Parts, Report, RuleRow, SourceRow},
};

#[derive(Args)]
pub struct StatsArgs {
    #[arg(long)]
    pub json: bool,
    /// Print again every SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
    /// Only the N rules with the most drops.
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Zero the counters after printing them.
    #[arg(long)]
    pub reset: bool,
    /// Show the sources (PBXs, customers) that hit the rules instead.
    #[arg(long)]
    pub sources: bool,
    /// With --sources: only this rule's sources.
    #[arg(long, value_name = "PREFIX", requires = "sources")]
    pub rule: Option<Prefix>,
    /// Show calls, drops and rejects per customer and rule instead.
    #[arg(long, conflicts_with = "sources")]
    pub customers: bool,
}

/// `sipguard stats`.
pub fn run(ctx: &Ctx, args: StatsArgs) -> Result<()> {
    if args.customers {
        let report = Report::read(
            &ctx.pins,
            &ctx.state,
            Parts {
                customers: true,
                ..Parts::default()
            },
        )?;
        let mut rows: Vec<CustomerRow> = report
            .ifaces
            .iter()
            .flat_map(|i| i.customers.iter().cloned())
            .collect();
        if let Some(n) = args.top {
            rows.truncate(n);
        }
        print!("{}", render_customers(&rows, args.json)?);
        return Ok(());
    }
    if args.sources {
        let report = Report::read(
            &ctx.pins,
            &ctx.state,
            Parts {
                sources: true,
                ..Parts::default()
            },
        )?;
        let mut rows = report.sources(args.rule.as_ref());
        if let Some(n) = args.top {
            rows.truncate(n);
        }
        print!("{}", render_sources(&rows, args.json)?);
        return Ok(());
    }
    loop {
        let report = Report::read(
            &ctx.pins,
            &ctx.state,
            Parts {
                counters: true,
                ..Parts::default()
            },
        )?;
        let mut out = String::new();
        if args.watch.is_some() && !args.json {
            writeln!(out, "--- {}", time::now())?;
        }
        out.push_str(&render(&report, args.top, args.json)?);
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        if args.reset {
            let _lock = ctx.state.lock()?;
            for iface in ctx.pins.require_ifaces()? {
                Maps::from_pins(&ctx.pins.iface_dir(&iface))?.reset_counters()?;
            }
            if !args.json {
                println!("counters reset");
            }
        }
        match args.watch {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            None => return Ok(()),
        }
    }
}

/// The counters of `report`, summed over the interfaces: a table, or one JSON object with the
/// rule rows and the global counters (the fields `/metrics` exports under the same names).
pub fn render(report: &Report, top: Option<usize>, json: bool) -> Result<String> {
    let mut out = String::new();
    if json {
        writeln!(out, "{}", report.stats_json(top))?;
        return Ok(out);
    }
    let mut rows: Vec<RuleRow> = report.rule_totals();
    if let Some(n) = top {
        rows.truncate(n);
    }
    let global = report.global_totals();
    writeln!(
        out,
        "{:<18} {:<26} {:<8} {:>10} {:>12} {:>12} {:>12}",
        "PREFIX", "COUNTRY", "ACTION", "CALLS", "MATCHED", "DROPPED", "WOULD_DROP"
    )?;
    for r in &rows {
        let c = &r.counters;
        writeln!(
            out,
            "{:<18} {:<26} {:<8} {:>10} {:>12} {:>12} {:>12}",
            r.label(),
            super::truncate(&r.country, 26),
            r.action.as_str(),
            c.calls,
            c.matched,
            c.dropped,
            c.would_drop
        )?;
    }
    writeln!(out)?;
    for c in guard_common::Counter::ALL {
        writeln!(out, "{:<22} {}", c.name(), global.get(c))?;
    }
    Ok(out)
}

/// `stats --sources`: which PBX or customer dials the blocked destinations.
/// `stats --customers`: per customer and rule, most stopped calls first.
pub fn render_customers(rows: &[CustomerRow], json: bool) -> Result<String> {
    let mut out = String::new();
    if json {
        writeln!(out, "{}", json!({ "customers": rows }))?;
        return Ok(out);
    }
    writeln!(
        out,
        "{:<20} {:<24} {:<8} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "CUSTOMER", "RULE", "ACTION", "CALLS", "MATCHED", "DROPPED", "REJECTED", "WOULD_DROP"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<20} {:<24} {:<8} {:>8} {:>10} {:>10} {:>10} {:>10}",
            super::truncate(&r.customer, 20),
            super::truncate(&r.rule, 24),
            r.action,
            r.calls,
            r.matched,
            r.dropped,
            r.rejected,
            r.would_drop
        )?;
    }
    writeln!(out, "{} row(s)", rows.len())?;
    Ok(out)
}

pub fn render_sources(rows: &[SourceRow], json: bool) -> Result<String> {
    let mut out = String::new();
    if json {
        let rows: Vec<_> = rows.iter().map(SourceRow::json).collect();
        writeln!(out, "{}", json!({ "sources": rows }))?;
        return Ok(out);
    }
    writeln!(
        out,
        "{:<40} {:<12} {:<8} {:>8} {:>10}  {:<24} {:<24}",
        "SOURCE", "RULE", "ACTION", "CALLS", "PACKETS", "FIRST SEEN", "LAST SEEN"
    )?;
    for r in rows {
        let j = r.json();
        writeln!(
            out,
            "{:<40} {:<12} {:<8} {:>8} {:>10}  {:<24} {:<24}",
            j.source, j.rule, j.action, j.calls, j.packets, j.first_seen, j.last_seen
        )?;
    }
    writeln!(out, "{} source(s)", rows.len())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn the_table_sums_interfaces_and_lists_every_global_counter() {
        let out = render(&sample(), None, false).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("PREFIX             COUNTRY"), "{out}");
        assert!(
            lines[1].starts_with("+232               Sierra Leone"),
            "{out}"
        );
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        // calls, matched, dropped, would_drop over both interfaces.
        assert_eq!(cols[cols.len() - 4..], ["9", "30", "27", "0"], "{out}");
        for c in guard_common::Counter::ALL {
            assert!(
                out.lines().any(|l| l.starts_with(c.name())),
                "{} missing\n{out}",
                c.name()
            );
        }
        assert!(out.contains("\nframes                 300\n"), "{out}");
    }

    #[test]
    fn top_keeps_the_rules_with_most_drops_in_both_forms() {
        let r = sample();
        let out = render(&r, Some(1), false).unwrap();
        assert!(out.contains("+232 ") && !out.contains("+44 "), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&render(&r, Some(2), true).unwrap()).unwrap();
        let rules = v["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1]["prefix"], "+44");
        assert_eq!(rules[1]["would_drop"], 42);
        assert_eq!(rules[1]["comment"], "watch");
        assert_eq!(v["global"]["invites"], 3 * 102);
    }

    #[test]
    fn sources_render_as_table_and_json() {
        let rows = sample().sources(None);
        let out = render_sources(&rows, false).unwrap();
        assert!(out.starts_with("SOURCE "), "{out}");
        assert!(out.contains("2001:db8::7"), "{out}");
        assert!(out.ends_with("2 source(s)\n"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&render_sources(&rows, true).unwrap()).unwrap();
        let s = &v["sources"][1];
        assert_eq!(s["source"], "198.51.100.7");
        assert_eq!(
            (s["calls"].as_u64(), s["packets"].as_u64()),
            (Some(10), Some(30))
        );
        assert_eq!(s["rule"], "+232");
        assert_eq!(s["iface"], "eth1");
        assert!(s["first_seen"].as_str().unwrap().ends_with('Z'));
    }
}
