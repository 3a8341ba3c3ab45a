//! `sipguard quarantine list|add|release`: the customers and sources that the kernel (or an
//! operator) quarantined, on the pinned maps of every interface. A release is live at once.
//! Quarantines live in a pinned map of their own: reloads and restarts keep them.

use std::{fmt::Write as _, net::IpAddr};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use guard_common::{
    Endpoint,
    limits::{NS_PER_SEC, Quarantine, REASON_MANUAL, Subject},
};
use serde_json::json;

use super::Ctx;
use crate::{
    kernel::maps::Maps,
    model::{
        customers::Customers,
        limits::{parse_duration, reason_str, subject_name},
        time,
    },
};

#[derive(Subcommand)]
pub enum QuarantineVerb {
    /// Who is quarantined, why, since and until when (per interface).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Quarantine a customer (by name) or a source address now.
    Add {
        /// A customer's name, or an IPv4/IPv6 source address.
        who: String,
        /// How long (e.g. 30min, 1h, 2d; at most 30 days).
        #[arg(long = "for", default_value = "1h")]
        duration: String,
    },
    /// End a quarantine now.
    Release { who: String },
}

/// A customer name or an address, as the quarantine map keys it.
fn subject(who: &str, customers: &Customers) -> Result<Subject> {
    if let Ok(ip) = who.parse::<IpAddr>() {
        let family = if ip.is_ipv4() { 4 } else { 6 };
        return Ok(Subject::address(family, Endpoint::from_ip(ip, 0).addr));
    }
    match customers.customers.iter().find(|c| c.name == who) {
        Some(c) => Ok(Subject::customer(c.id)),
        None => bail!(
            "`{who}` is neither a source address nor a customer (`sipguard customers list` shows them)"
        ),
    }
}

pub fn run(ctx: &Ctx, verb: QuarantineVerb) -> Result<()> {
    let customers = ctx.state.customers();
    match verb {
        QuarantineVerb::List { json } => {
            let mut rows = Vec::new();
            for iface in ctx.pins.require_ifaces()? {
                let maps = Maps::from_pins(&ctx.pins.iface_dir(&iface))
                    .with_context(|| format!("interface {iface}"))?;
                for (who, q) in maps.quarantined()? {
                    rows.push((iface.clone(), who, q));
                }
            }
            print!("{}", render(&rows, &customers, time::boot_now_ns(), json)?);
        }
        QuarantineVerb::Add { who, duration } => {
            let secs = parse_duration(&duration)?;
            let s = subject(&who, &customers)?;
            let now = time::boot_now_ns();
            let entry = Quarantine {
                since_ns: now,
                until_ns: now + secs * NS_PER_SEC,
                calls: 0,
                over_limit: 0,
                reason: REASON_MANUAL,
                _pad: 0,
            };
            let ifaces = ctx.pins.require_ifaces()?;
            let _lock = ctx.state.lock()?;
            for iface in &ifaces {
                let mut maps = Maps::from_pins(&ctx.pins.iface_dir(iface))
                    .with_context(|| format!("interface {iface}"))?;
                if maps.quarantine.is_none() {
                    bail!(
                        "interface {iface}: the config has no [quarantine] (it sets which calls a quarantine stops, and how): add one and reload; nothing was changed"
                    );
                }
                maps.set_quarantine(&s, Some(entry))
                    .with_context(|| format!("interface {iface}"))?;
            }
            println!(
                "quarantined {} until {}",
                subject_name(&s, &customers),
                time::rfc3339(time::boot_ns_to_system(entry.until_ns))
            );
        }
        QuarantineVerb::Release { who } => {
            let s = subject(&who, &customers)?;
            let ifaces = ctx.pins.require_ifaces()?;
            let _lock = ctx.state.lock()?;
            let mut released = 0;
            for iface in &ifaces {
                let mut maps = Maps::from_pins(&ctx.pins.iface_dir(iface))
                    .with_context(|| format!("interface {iface}"))?;
                released += maps
                    .set_quarantine(&s, None)
                    .with_context(|| format!("interface {iface}"))?
                    as usize;
            }
            if released == 0 {
                bail!(
                    "{} is not quarantined (`sipguard quarantine list` shows who is)",
                    subject_name(&s, &customers)
                );
            }
            println!(
                "released {} on {released} interface(s)",
                subject_name(&s, &customers)
            );
        }
    }
    Ok(())
}

/// The list: a table, or one JSON object per entry. Entries whose time is up are shown as
/// ended (the kernel ignores them; the next trip replaces them).
pub fn render(
    rows: &[(String, Subject, Quarantine)],
    customers: &Customers,
    now_ns: u64,
    json: bool,
) -> Result<String> {
    let mut out = String::new();
    let stamp = |ns: u64| time::rfc3339(time::boot_ns_to_system(ns));
    if json {
        for (iface, who, q) in rows {
            writeln!(
                out,
                "{}",
                json!({
                    "iface": iface,
                    "who": subject_name(who, customers),
                    "reason": reason_str(q.reason),
                    "since": stamp(q.since_ns),
                    "until": stamp(q.until_ns),
                    "active": q.active(now_ns),
                    "calls": q.calls,
                    "over_limit": q.over_limit,
                })
            )?;
        }
        return Ok(out);
    }
    writeln!(
        out,
        "{:<10} {:<28} {:<17} {:<25} {:<25} {:>6} {:>10}",
        "IFACE", "WHO", "REASON", "SINCE", "UNTIL", "CALLS", "OVER_LIMIT"
    )?;
    for (iface, who, q) in rows {
        writeln!(
            out,
            "{:<10} {:<28} {:<17} {:<25} {:<25} {:>6} {:>10}{}",
            iface,
            subject_name(who, customers),
            reason_str(q.reason),
            stamp(q.since_ns),
            stamp(q.until_ns),
            q.calls,
            q.over_limit,
            if q.active(now_ns) { "" } else { "  (ended)" }
        )?;
    }
    let active = rows.iter().filter(|(_, _, q)| q.active(now_ns)).count();
    writeln!(out, "{active} quarantine(s) in force")?;
    Ok(out)
}
