//! `sipguard customers list` and `sipguard policies list`: the customers and policies of the
//! last commit (recorded in the state directory), with what the live maps hold of them.

use std::fmt::Write as _;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use super::Ctx;
use crate::{kernel::maps::Maps, model::customers::Customers};

#[derive(Subcommand)]
pub enum CustomersVerb {
    /// The customers: name, policy, VLANs, source CIDRs.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum PoliciesVerb {
    /// The policies: name, whether they inherit the global rules, their rules and customers.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// The live maps of the first pinned interface (every interface holds the same set).
fn first_maps(ctx: &Ctx) -> Result<Maps> {
    let ifaces = ctx.pins.require_ifaces()?;
    Ok(Maps::from_pins(&ctx.pins.iface_dir(&ifaces[0]))?)
}

pub fn customers(ctx: &Ctx, verb: CustomersVerb) -> Result<()> {
    let CustomersVerb::List { json } = verb;
    let c = ctx.state.customers();
    let live = first_maps(ctx)?.customers()?.len();
    print!("{}", render_customers(&c, live, json)?);
    Ok(())
}

pub fn policies(ctx: &Ctx, verb: PoliciesVerb) -> Result<()> {
    let PoliciesVerb::List { json } = verb;
    let c = ctx.state.customers();
    let rules = first_maps(ctx)?.rules()?;
    let count = |id: u16| rules.keys().filter(|p| p.policy == id).count();
    print!("{}", render_policies(&c, count, json)?);
    Ok(())
}

/// `live`: the entries (CIDR x VLAN) the live customer trie holds.
pub fn render_customers(c: &Customers, live: usize, json: bool) -> Result<String> {
    let mut out = String::new();
    if json {
        writeln!(
            out,
            "{}",
            json!({ "customers": c.customers, "live_entries": live })
        )?;
        return Ok(out);
    }
    writeln!(
        out,
        "{:<24} {:<20} {:<12} SOURCES",
        "CUSTOMER", "POLICY", "VLANS"
    )?;
    for cu in &c.customers {
        let vlans = if cu.vlans.is_empty() {
            "any".to_string()
        } else {
            cu.vlans
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let sources: Vec<String> = cu.sources.iter().map(|n| n.to_string()).collect();
        writeln!(
            out,
            "{:<24} {:<20} {:<12} {}",
            super::truncate(&cu.name, 24),
            cu.policy.as_deref().unwrap_or("(global rules)"),
            vlans,
            sources.join(" ")
        )?;
    }
    writeln!(
        out,
        "{} customer(s), {live} live entries (source CIDRs x VLANs)",
        c.customers.len()
    )?;
    Ok(out)
}

pub fn render_policies(c: &Customers, rules: impl Fn(u16) -> usize, json: bool) -> Result<String> {
    let mut out = String::new();
    let customers = |name: &str| {
        c.customers
            .iter()
            .filter(|cu| cu.policy.as_deref() == Some(name))
            .count()
    };
    if json {
        let rows: Vec<_> = c
            .policies
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "inherit": p.inherit,
                    "rules": rules(p.id),
                    "customers": customers(&p.name),
                    "comment": p.comment,
                })
            })
            .collect();
        writeln!(out, "{}", json!({ "policies": rows }))?;
        return Ok(out);
    }
    writeln!(
        out,
        "{:<24} {:<8} {:>8} {:>10}",
        "POLICY", "INHERIT", "RULES", "CUSTOMERS"
    )?;
    for p in &c.policies {
        writeln!(
            out,
            "{:<24} {:<8} {:>8} {:>10}",
            super::truncate(&p.name, 24),
            if p.inherit { "yes" } else { "no" },
            rules(p.id),
            customers(&p.name)
        )?;
    }
    writeln!(out, "{} policy(ies)", c.policies.len())?;
    Ok(out)
}
