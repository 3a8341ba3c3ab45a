//! `sipguard customers list|add|del` and `sipguard policies list`: the customers and policies
//! of the last commit (recorded in the state directory), with what the live maps hold of them,
//! and customer edits that are live at once.
//!
//! Edits work like rule edits: under the state lock, on the pinned maps of every interface
//! (no daemon needed), switched live through the standby slot, and recorded in `runtime.toml`
//! so that reloads and restarts keep them.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use ipnet::IpNet;
use serde_json::json;

use super::Ctx;
use crate::{
    kernel::{
        maps::{Maps, Pending},
        sys,
    },
    model::customers::{Customer, CustomerError, Customers},
};

#[derive(Subcommand)]
pub enum CustomersVerb {
    /// The customers: name, policy, VLANs, source CIDRs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a customer, live at once and kept across reloads and restarts (it replaces a config
    /// customer of the same name only with --replace).
    Add {
        name: String,
        /// A source of the customer: an IPv4 or IPv6 CIDR, or an address. Repeat for more.
        #[arg(long = "source", required = true, value_name = "CIDR", value_parser = cidr_arg)]
        sources: Vec<IpNet>,
        /// An outer VLAN it arrives on (1..4094). Repeat for more; none: any VLAN, or none.
        #[arg(long = "vlan", value_name = "ID")]
        vlans: Vec<u16>,
        /// Its policy (`sipguard policies list`); none: the global rules.
        #[arg(long)]
        policy: Option<String>,
        /// Replace the customer of this name.
        #[arg(long)]
        replace: bool,
    },
    /// Delete a customer: its sources get the global rules again. Kept across reloads.
    Del { name: String },
}

/// A CIDR, or an address (its /32 or /128).
fn cidr_arg(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("`{s}` is not an IPv4 or IPv6 CIDR (e.g. 198.51.100.0/24, 2001:db8::/32)")
        })
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
    if !matches!(verb, CustomersVerb::List { .. })
        && let Some(f) = ctx.state.fleet_record()
    {
        anyhow::bail!("{}", f.refusal("customer edit"));
    }
    match verb {
        CustomersVerb::List { json } => {
            let c = ctx.state.customers();
            let live = first_maps(ctx)?.customers()?.len();
            let overlay = ctx.state.overlay()?;
            let runtime = |name: &str| overlay.customer.iter().any(|o| o.name == name);
            print!("{}", render_customers(&c, live, runtime, json)?);
        }
        CustomersVerb::Add {
            name,
            sources,
            vlans,
            policy,
            replace,
        } => {
            let mut vlans_sorted = vlans;
            vlans_sorted.sort_unstable();
            vlans_sorted.dedup();
            let c = Customer {
                name,
                id: 0,
                sources,
                vlans: vlans_sorted,
                policy,
            };
            println!(
                "{}",
                edit(
                    ctx,
                    Edit::Add {
                        customer: c,
                        replace
                    }
                )?
            );
        }
        CustomersVerb::Del { name } => println!("{}", edit(ctx, Edit::Del(name))?),
    }
    Ok(())
}

/// A runtime customer edit.
pub enum Edit {
    Add { customer: Customer, replace: bool },
    Del(String),
}

/// Applies `edit` under the state lock: checked against the live customers (nothing changes
/// when it does not fit), made live on every interface, then recorded. Returns a one-line
/// summary.
pub fn edit(ctx: &Ctx, edit: Edit) -> Result<String> {
    let _lock = ctx.state.lock()?;
    let mut overlay = ctx.state.overlay()?;
    let mut customers = ctx.state.customers();
    let summary = match &edit {
        Edit::Add { customer, replace } => {
            let exists = customers.customers.iter().any(|c| c.name == customer.name);
            if exists && !replace {
                return Err(CustomerError::Exists(customer.name.clone()).into());
            }
            customers.upsert(customer.clone())?;
            let entries = customer.scopes().count();
            format!(
                "{} customer `{}`: {entries} source entr{} (CIDRs x VLANs), policy {}",
                if exists { "replaced" } else { "added" },
                customer.name,
                if entries == 1 { "y" } else { "ies" },
                customer.policy.as_deref().unwrap_or("(global rules)")
            )
        }
        Edit::Del(name) => {
            customers.remove(name)?;
            format!("deleted customer `{name}`: its sources get the global rules")
        }
    };
    let ifaces = ctx.pins.ifaces();
    if ifaces.is_empty() {
        // Nothing is guarded: the edit is recorded for the next start.
        record(ctx, &mut overlay, &customers, edit)?;
        return Ok(format!(
            "{summary} (no interface is guarded: recorded for the next `sipguard run`)"
        ));
    }
    let entries = customers.entries();
    let mut all_maps = Vec::new();
    for iface in &ifaces {
        let maps = Maps::from_pins(&ctx.pins.iface_dir(iface))
            .with_context(|| format!("interface {iface}"))?;
        all_maps.push((iface, maps));
    }
    let mut pending = Vec::new();
    let mut failed = None;
    for (iface, maps) in &mut all_maps {
        match stage(maps, &entries) {
            Ok(p) => pending.push(p),
            Err(e) => {
                failed = Some(e.context(format!("interface {iface}: nothing was changed there")));
                break;
            }
        }
    }
    if pending.iter().any(|p| !p.is_empty()) {
        sys::wait_for_readers();
    }
    let staged = pending.len();
    for ((iface, maps), p) in all_maps.iter_mut().zip(pending) {
        maps.finish(p)
            .with_context(|| format!("interface {iface}"))?;
    }
    if let Some(e) = failed {
        if staged == 0 {
            return Err(e);
        }
        // Live on the first interfaces already: recorded, so that the next reload makes
        // every interface equal.
        record(ctx, &mut overlay, &customers, edit)?;
        return Err(e.context(format!(
            "the edit is live on {staged} interface(s) and recorded; the next reload applies it to the rest"
        )));
    }
    record(ctx, &mut overlay, &customers, edit)?;
    Ok(summary)
}

/// Makes `entries` the live customers of one interface: customers only when both slots are in
/// sync, else a full commit of the live rules and settings with them.
fn stage(maps: &mut Maps, entries: &[crate::model::customers::CustomerEntry]) -> Result<Pending> {
    if let Some(p) = maps.stage_customers(entries)? {
        return Ok(p);
    }
    let settings = maps.live_settings()?;
    let rules = maps.rule_set()?;
    let (_, p) = maps.stage_full(&settings, &rules, Some(entries))?;
    Ok(p)
}

/// Records the edit: `customers.json` (what views name customers by) first, then
/// `runtime.toml` (whose change tells the daemon to re-read both).
fn record(
    ctx: &Ctx,
    overlay: &mut crate::config::state::Overlay,
    customers: &Customers,
    edit: Edit,
) -> Result<()> {
    match edit {
        Edit::Add { customer, .. } => overlay.add_customer(&customer),
        Edit::Del(name) => overlay.delete_customer(&name),
    }
    ctx.state.save_customers(customers)?;
    ctx.state.save_overlay(overlay)?;
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

/// `live`: the entries (CIDR x VLAN) the live customer trie holds; `runtime`: whether a
/// customer comes from a runtime edit (else from the config file).
pub fn render_customers(
    c: &Customers,
    live: usize,
    runtime: impl Fn(&str) -> bool,
    json: bool,
) -> Result<String> {
    let mut out = String::new();
    let origin = |name: &str| if runtime(name) { "runtime" } else { "config" };
    if json {
        let rows: Vec<_> = c
            .customers
            .iter()
            .map(|cu| {
                let mut v = serde_json::to_value(cu).unwrap_or_default();
                v["origin"] = origin(&cu.name).into();
                v
            })
            .collect();
        writeln!(
            out,
            "{}",
            json!({ "customers": rows, "live_entries": live })
        )?;
        return Ok(out);
    }
    writeln!(
        out,
        "{:<24} {:<20} {:<12} {:<8} SOURCES",
        "CUSTOMER", "POLICY", "VLANS", "ORIGIN"
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
            "{:<24} {:<20} {:<12} {:<8} {}",
            super::truncate(&cu.name, 24),
            cu.policy.as_deref().unwrap_or("(global rules)"),
            vlans,
            origin(&cu.name),
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
