//! The read and edit verbs that work on the pinned state: `rules`, `stats`, `status`, `detach`.
//! None of them needs the daemon: they open the pinned maps directly, so an edit is live within
//! milliseconds, and they take the state lock so they never interleave with a daemon reload.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use guard_common::{Action, Config, Counter, Domain, RuleCounters};
use serde::Serialize;
use serde_json::json;

use crate::{
    config, country,
    maps::{Delta, Maps},
    pins::{self, LINK_PIN, PROG_PIN, PinRoot},
    rules::{Prefix, RuleEntry, RuleSet, Source, action_name},
    settings::{Settings, mode_name},
    state::{Overlay, StateDir},
};

/// Where the pinned state and the state directory are.
pub struct Ctx {
    pub pins: PinRoot,
    pub state: StateDir,
}

/// Settings as they are live in `config` (and the ports map).
pub fn live_settings(config: &Config, ports: Vec<u16>) -> Settings {
    let intl_prefixes = config
        .intl_prefixes
        .slots
        .iter()
        .filter(|s| s.len > 0)
        .map(|s| {
            (0..s.len)
                .map(|i| char::from(b'0' + ((s.packed >> (28 - 4 * i)) & 0x0f) as u8))
                .collect()
        })
        .collect();
    Settings {
        sip_ports: ports,
        intl_prefixes,
        mode: if config.mode == guard_common::Mode::Monitor as u32 {
            guard_common::Mode::Monitor
        } else {
            guard_common::Mode::Enforce
        },
        kernel_debug_log: config.flags & guard_common::CONFIG_FLAG_DEBUG_LOG != 0,
        track_calls: config.flags & guard_common::CONFIG_FLAG_NO_CALLS == 0,
        event_rate: config.event_rate,
        event_burst: config.event_burst,
        max_rules: guard_common::MAX_RULES,
    }
}

/// An edit of the rule set: applied to the overlay and to the live set, then committed to
/// every interface. Validation happens before anything is written.
pub enum Edit {
    Add { rules: RuleSet, replace: bool },
    Del(Prefix),
}

/// Applies `edit` under the state lock. Returns a one-line summary.
///
/// The edit is a delta: the live rules it touches are read with exact lookups, and each
/// interface's maps get a few updates per trie (see [`Maps::stage_delta`]), so it is live
/// within milliseconds whatever the size of the rule set. `runtime.toml` is written after the
/// kernel enforces the edit; `rules.json` (a million rules make 60 MB) is left to the daemon's
/// next commit.
pub fn edit_rules(ctx: &Ctx, edit: Edit) -> Result<String> {
    let t0 = std::time::Instant::now();
    let ifaces = ctx.pins.require_ifaces()?;
    let _lock = ctx.state.lock()?;
    let mut all_maps = Vec::new();
    for iface in &ifaces {
        let maps = Maps::from_pins(&ctx.pins.iface_dir(iface))
            .with_context(|| format!("interface {iface}"))?;
        all_maps.push((iface, maps));
    }
    let (_, first) = &all_maps[0];
    let mut overlay: Overlay = ctx.state.overlay()?;
    let (summary, delta) = match &edit {
        Edit::Add {
            rules: new,
            replace,
        } => {
            let mut conflicts = Vec::new();
            let mut added = 0usize;
            for (p, e) in new {
                match first.live_rule(p)? {
                    Some(v) if v.action != e.action as u8 && !replace => {
                        conflicts.push((p, v.action, e.action))
                    }
                    Some(_) => {}
                    None => added += 1,
                }
            }
            if !conflicts.is_empty() {
                // Where a live rule comes from: runtime edits are in the overlay, the rest is
                // the config file's.
                let runtime: BTreeSet<&Prefix> = overlay.rule.iter().map(|r| &r.prefix).collect();
                let text: Vec<String> = conflicts
                    .iter()
                    .map(|(p, old, new)| {
                        format!(
                            "{p} is already `{}` ({}), not `{}`",
                            Action::from_u8(*old).map_or("?", action_name),
                            if runtime.contains(p) {
                                "runtime"
                            } else {
                                "config"
                            },
                            action_name(*new)
                        )
                    })
                    .collect();
                bail!(
                    "rule conflict: {}; delete the rule first or pass --replace. Nothing was changed",
                    text.join("; ")
                );
            }
            for (iface, maps) in &all_maps {
                let total = maps.rule_count()? + added;
                if total > maps.capacity() as usize {
                    return Err(anyhow::Error::new(crate::maps::MapsError::Full {
                        wanted: total,
                        max: maps.capacity(),
                    })
                    .context(format!("interface {iface}")));
                }
            }
            let shown: Vec<String> = new.keys().map(|p| p.to_string()).collect();
            let summary = format!(
                "added {} rule(s): {}",
                new.len(),
                if shown.len() > 8 {
                    format!("{} ...", shown[..8].join(" "))
                } else {
                    shown.join(" ")
                }
            );
            let delta = Delta {
                set: new.iter().map(|(p, e)| (p.clone(), e.action)).collect(),
                remove: Vec::new(),
            };
            (summary, delta)
        }
        Edit::Del(prefix) => {
            if first.live_rule(prefix)?.is_none() {
                bail!("no rule for {prefix}; `sipguard rules list` shows the rules");
            }
            let delta = Delta {
                set: Vec::new(),
                remove: vec![prefix.clone()],
            };
            (format!("deleted {prefix}"), delta)
        }
    };

    // Live on every interface first, then the standby tries (after one grace period).
    let mut pending = Vec::new();
    let mut failed = None;
    for (iface, maps) in &mut all_maps {
        match stage_edit(maps, &delta) {
            Ok(p) => pending.push(p),
            Err(e) => {
                failed = Some(e.context(format!("interface {iface}: nothing was changed there")));
                break;
            }
        }
    }
    let enforced = t0.elapsed();
    if pending.iter().any(|p| !p.is_empty()) {
        crate::maps::wait_for_readers();
    }
    for ((iface, maps), p) in all_maps.iter_mut().zip(pending) {
        maps.finish(p)
            .with_context(|| format!("interface {iface}"))?;
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let synced = t0.elapsed();

    // runtime.toml records the edit (and its comment and country: `rule_meta` reads them from
    // there); rules.json is rewritten by the daemon's next commit, not here.
    match edit {
        Edit::Add { rules: new, .. } => {
            for (p, e) in new {
                overlay.add(p, &e);
            }
        }
        Edit::Del(prefix) => overlay.delete(prefix),
    }
    ctx.state.save_overlay(&overlay)?;
    tracing::debug!(
        live_ms = enforced.as_secs_f64() * 1e3,
        standby_ms = synced.as_secs_f64() * 1e3,
        total_ms = t0.elapsed().as_secs_f64() * 1e3,
        "rules edit: live, standby tries synced, state files written"
    );
    Ok(summary)
}

/// Makes `delta` live on one interface: as a delta when both tries are known to be in sync,
/// else as a full commit of the live rules with the delta applied (an older version's pins,
/// or a commit that stopped half-way).
fn stage_edit(maps: &mut Maps, delta: &Delta) -> Result<crate::maps::Pending> {
    if let Some((_, p)) = maps.stage_delta(delta)? {
        return Ok(p);
    }
    let mut settings = live_settings(&maps.config()?, maps.sip_ports()?);
    settings.max_rules = maps.capacity();
    let mut rules = maps.rule_set()?;
    for (p, a) in &delta.set {
        rules.insert(
            p.clone(),
            RuleEntry {
                action: *a,
                comment: None,
                country: None,
                source: Source::Runtime,
            },
        );
    }
    for p in &delta.remove {
        rules.remove(p);
    }
    let (_, p) = maps.stage_full(&settings, &rules)?;
    Ok(p)
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Config => "config",
        Source::Runtime => "runtime",
    }
}

/// `sipguard rules add --country CC`: the rules a country expands to.
pub fn country_rules(cc: &str, action: Action, comment: Option<String>) -> Result<RuleSet> {
    let c = country::expand(cc)?;
    let mut out = RuleSet::new();
    for d in &c.prefixes {
        out.insert(
            format!("+{d}").parse::<Prefix>()?,
            RuleEntry {
                action,
                comment: comment.clone().or_else(|| Some(c.name.clone())),
                country: Some(c.alpha2.clone()),
                source: Source::Runtime,
            },
        );
    }
    Ok(out)
}

/// `sipguard rules import FILE`: the `[[rule]]` entries of FILE (config format, no settings).
pub fn import_rules(path: &Path) -> Result<RuleSet> {
    let f = config::load(path)?;
    if f.has_settings {
        bail!(
            "{}: an import file holds only [[rule]] entries; [settings] belong in the config file",
            path.display()
        );
    }
    Ok(f.rules
        .into_iter()
        .map(|(p, mut e)| {
            e.source = Source::Runtime;
            (p, e)
        })
        .collect())
}

/// A label for a prefix: its country (or network) name.
pub fn prefix_label(p: &Prefix) -> String {
    match p.domain {
        Domain::International if !p.digits.is_empty() => {
            country::label_for_prefix(&p.digit_string()).unwrap_or_default()
        }
        Domain::International => "all international".into(),
        Domain::National => "national dial string".into(),
    }
}

/// The country of a rule: the one it was written for (`country = "JM"`), else its prefix's.
fn country_label(meta: Option<&RuleEntry>, p: &Prefix) -> String {
    meta.and_then(|m| m.country.as_deref())
        .map(|cc| country::expand(cc).map_or(cc.to_string(), |c| c.name))
        .unwrap_or_else(|| prefix_label(p))
}

#[derive(Serialize)]
struct RuleRow {
    prefix: String,
    action: &'static str,
    country: String,
    comment: String,
    source: &'static str,
    id: u32,
}

/// `sipguard rules list`.
pub fn rules_list(ctx: &Ctx, json_out: bool) -> Result<()> {
    let ifaces = ctx.pins.require_ifaces()?;
    let maps = Maps::from_pins(&ctx.pins.iface_dir(&ifaces[0]))?;
    let meta = ctx.state.rule_meta();
    let rows: Vec<RuleRow> = maps
        .rules()?
        .into_iter()
        .map(|r| {
            let m = meta.get(&r.prefix);
            RuleRow {
                country: country_label(m, &r.prefix),
                comment: m.and_then(|m| m.comment.clone()).unwrap_or_default(),
                source: m.map_or("runtime", |m| source_name(m.source)),
                action: Action::from_u8(r.value.action).map_or("?", action_name),
                prefix: r.prefix.to_string(),
                id: r.value.id,
            }
        })
        .collect();
    let mut out = std::io::stdout().lock();
    if json_out {
        for r in &rows {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<8} {:<8} {:<28} COMMENT",
        "PREFIX", "ACTION", "SOURCE", "COUNTRY"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<18} {:<8} {:<8} {:<28} {}",
            r.prefix,
            r.action,
            r.source,
            truncate(&r.country, 28),
            r.comment
        )?;
    }
    writeln!(out, "{} rule(s)", rows.len())?;
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[derive(Serialize, Clone)]
pub struct StatRow {
    pub prefix: String,
    pub country: String,
    pub action: &'static str,
    pub comment: String,
    /// Packets (INVITEs, retransmissions included).
    pub matched: u64,
    pub dropped: u64,
    pub would_drop: u64,
    /// New calls (retransmissions counted once).
    pub calls: u64,
    /// In-dialog re-INVITEs.
    pub reinvites: u64,
}

/// `CLOCK_BOOTTIME` ns (the kernel's timestamps) to wall-clock time.
pub fn boot_ns_to_system(ns: u64) -> std::time::SystemTime {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    let boot_now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let ago = Duration::from_nanos(boot_now.saturating_sub(ns));
    std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// RFC 3339 UTC, milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Per-rule and global counters summed over every interface.
pub fn collect_stats(ctx: &Ctx) -> Result<(Vec<StatRow>, BTreeMap<&'static str, u64>)> {
    let ifaces = ctx.pins.require_ifaces()?;
    let meta = ctx.state.rule_meta();
    let mut per_rule: BTreeMap<Prefix, (Action, RuleCounters)> = BTreeMap::new();
    let mut global: BTreeMap<&'static str, u64> =
        Counter::ALL.iter().map(|c| (c.name(), 0)).collect();
    for iface in &ifaces {
        let maps = Maps::from_pins(&ctx.pins.iface_dir(iface))
            .with_context(|| format!("interface {iface}"))?;
        let counters = maps.all_rule_counters()?;
        for r in maps.rules()? {
            let c = counters.get(&r.value.id).copied().unwrap_or_default();
            let Some(action) = Action::from_u8(r.value.action) else {
                continue;
            };
            let e = per_rule
                .entry(r.prefix)
                .or_insert((action, RuleCounters::default()));
            e.1.matched += c.matched;
            e.1.dropped += c.dropped;
            e.1.would_drop += c.would_drop;
            e.1.calls += c.calls;
            e.1.reinvites += c.reinvites;
        }
        let g = maps.global_counters()?;
        for c in Counter::ALL {
            *global.entry(c.name()).or_default() += g.counters[c as usize];
        }
    }
    let mut rows: Vec<StatRow> = per_rule
        .into_iter()
        .map(|(p, (action, c))| {
            let m = meta.get(&p);
            StatRow {
                country: country_label(m, &p),
                comment: m.and_then(|m| m.comment.clone()).unwrap_or_default(),
                prefix: p.to_string(),
                action: action_name(action),
                matched: c.matched,
                dropped: c.dropped,
                would_drop: c.would_drop,
                calls: c.calls,
                reinvites: c.reinvites,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.dropped, b.would_drop, b.matched)
            .cmp(&(a.dropped, a.would_drop, a.matched))
            .then_with(|| a.prefix.cmp(&b.prefix))
    });
    Ok((rows, global))
}

/// `sipguard stats`.
pub fn stats(
    ctx: &Ctx,
    json_out: bool,
    top: Option<usize>,
    watch: Option<u64>,
    reset: bool,
) -> Result<()> {
    loop {
        let (mut rows, global) = collect_stats(ctx)?;
        if let Some(n) = top {
            rows.truncate(n);
        }
        let mut out = std::io::stdout().lock();
        if json_out {
            writeln!(out, "{}", json!({ "rules": rows, "global": global }))?;
        } else {
            if watch.is_some() {
                writeln!(out, "--- {}", humantime_now())?;
            }
            writeln!(
                out,
                "{:<18} {:<26} {:<8} {:>10} {:>12} {:>12} {:>12}",
                "PREFIX", "COUNTRY", "ACTION", "CALLS", "MATCHED", "DROPPED", "WOULD_DROP"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<18} {:<26} {:<8} {:>10} {:>12} {:>12} {:>12}",
                    r.prefix,
                    truncate(&r.country, 26),
                    r.action,
                    r.calls,
                    r.matched,
                    r.dropped,
                    r.would_drop
                )?;
            }
            writeln!(out)?;
            for (k, v) in &global {
                writeln!(out, "{k:<22} {v}")?;
            }
        }
        out.flush()?;
        drop(out);
        if reset {
            let _lock = ctx.state.lock()?;
            for iface in ctx.pins.require_ifaces()? {
                Maps::from_pins(&ctx.pins.iface_dir(&iface))?.reset_counters()?;
            }
            if !json_out {
                println!("counters reset");
            }
        }
        match watch {
            Some(secs) => std::thread::sleep(Duration::from_secs(secs.max(1))),
            None => return Ok(()),
        }
    }
}

fn humantime_now() -> String {
    rfc3339(std::time::SystemTime::now())
}

#[derive(Serialize)]
pub struct SourceRow {
    pub iface: String,
    pub rule: String,
    pub action: &'static str,
    pub source: String,
    pub packets: u64,
    pub calls: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// Sources that hit rules, most packets first, optionally for one rule.
pub fn collect_sources(ctx: &Ctx, rule: Option<&Prefix>) -> Result<Vec<SourceRow>> {
    let mut rows = Vec::new();
    for iface in ctx.pins.require_ifaces()? {
        let maps = Maps::from_pins(&ctx.pins.iface_dir(&iface))?;
        let by_id: BTreeMap<u32, (Prefix, u8)> = maps
            .rules()?
            .into_iter()
            .map(|r| (r.value.id, (r.prefix, r.value.action)))
            .collect();
        for (k, v) in maps.sources()? {
            let Some((prefix, action)) = by_id.get(&k.rule_id) else {
                continue; // the rule is gone
            };
            if rule.is_some_and(|r| r != prefix) {
                continue;
            }
            let b = guard_common::addr_bytes(&k.addr);
            let addr = match k.family {
                4 => std::net::IpAddr::from([b[0], b[1], b[2], b[3]]),
                _ => std::net::IpAddr::from(b),
            };
            rows.push(SourceRow {
                iface: iface.clone(),
                rule: prefix.to_string(),
                action: Action::from_u8(*action).map_or("?", action_name),
                source: addr.to_string(),
                packets: v.packets,
                calls: v.calls,
                first_seen: rfc3339(boot_ns_to_system(v.first_seen_ns)),
                last_seen: rfc3339(boot_ns_to_system(v.last_seen_ns)),
            });
        }
    }
    rows.sort_by(|a, b| {
        (b.packets, b.calls)
            .cmp(&(a.packets, a.calls))
            .then(a.source.cmp(&b.source))
    });
    Ok(rows)
}

/// `sipguard stats --sources`: which PBX or customer dials the blocked destinations.
pub fn sources(ctx: &Ctx, rule: Option<&Prefix>, top: Option<usize>, json_out: bool) -> Result<()> {
    let mut rows = collect_sources(ctx, rule)?;
    if let Some(n) = top {
        rows.truncate(n);
    }
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", json!({ "sources": rows }))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<40} {:<12} {:<8} {:>8} {:>10}  {:<24} {:<24}",
        "SOURCE", "RULE", "ACTION", "CALLS", "PACKETS", "FIRST SEEN", "LAST SEEN"
    )?;
    for r in &rows {
        writeln!(
            out,
            "{:<40} {:<12} {:<8} {:>8} {:>10}  {:<24} {:<24}",
            r.source, r.rule, r.action, r.calls, r.packets, r.first_seen, r.last_seen
        )?;
    }
    writeln!(out, "{} source(s)", rows.len())?;
    Ok(())
}

/// `sipguard status`.
pub fn status(ctx: &Ctx, json_out: bool) -> Result<()> {
    let ifaces = ctx.pins.require_ifaces()?;
    let daemon = ctx.state.running_daemon().unwrap_or(None);
    let modes = ctx.state.iface_modes();
    let mut rows = Vec::new();
    for iface in &ifaces {
        let dir = ctx.pins.iface_dir(iface);
        let maps = Maps::from_pins(&dir)?;
        let cfg = maps.config()?;
        let settings = live_settings(&cfg, maps.sip_ports()?);
        let prog_id = aya::programs::ProgramInfo::from_pin(dir.join(PROG_PIN))
            .ok()
            .map(|i| i.id());
        let attached = dir.join(LINK_PIN).exists();
        let xdp_mode = modes
            .get(iface)
            .cloned()
            .unwrap_or_else(|| "unknown".into());
        rows.push(json!({
            "iface": iface,
            "attached": attached,
            "xdp_mode": xdp_mode,
            "program_id": prog_id,
            "rules": maps.rule_count()?,
            "max_rules": maps.capacity(),
            "mode": mode_name(settings.mode),
            "sip_ports": settings.sip_ports,
            "international_prefixes": settings.intl_prefixes,
        }));
    }
    let v = json!({
        "pin_root": ctx.pins.root,
        "state_dir": ctx.state.dir,
        "daemon": daemon.as_ref().map(|d| json!({"running": true, "pid": d.pid})).unwrap_or(json!({"running": false})),
        "config": daemon.as_ref().and_then(|d| d.config.clone()),
        "interfaces": rows,
    });
    if json_out {
        println!("{v}");
        return Ok(());
    }
    match &daemon {
        Some(d) => println!("daemon: running (pid {})", d.pid),
        None => println!("daemon: not running (the pinned filter keeps enforcing)"),
    }
    println!(
        "config: {}",
        daemon.as_ref().and_then(|d| d.config.as_ref()).map_or_else(
            || {
                if daemon.is_some() {
                    "the built-in default rules".into()
                } else {
                    "- (no daemon)".into()
                }
            },
            |p| p.display().to_string(),
        )
    );
    for r in rows {
        println!(
            "{}: {} xdp={} prog_id={} rules={} max_rules={} mode={} ports={} intl_prefixes={}",
            r["iface"].as_str().unwrap_or("?"),
            if r["attached"].as_bool() == Some(true) {
                "attached"
            } else {
                "NOT attached (maps kept)"
            },
            r["xdp_mode"].as_str().unwrap_or("?"),
            r["program_id"],
            r["rules"],
            r["max_rules"],
            r["mode"].as_str().unwrap_or("?"),
            r["sip_ports"],
            r["international_prefixes"],
        );
    }
    Ok(())
}

/// `sipguard detach --iface IF [--keep-maps]`.
pub fn detach(ctx: &Ctx, iface: &str, keep_maps: bool) -> Result<()> {
    let dir = ctx.pins.require_iface(iface)?;
    let _lock = ctx.state.lock()?;
    let link = dir.join(LINK_PIN);
    if link.exists() {
        pins::detach_link(&link)?;
        println!("{iface}: detached");
    } else {
        println!("{iface}: was not attached");
    }
    ctx.pins.remove(iface, keep_maps)?;
    ctx.state.set_iface_mode(iface, None)?;
    if keep_maps {
        println!(
            "{iface}: maps kept (rules and counters) under {}",
            dir.display()
        );
    }
    if let Ok(Some(d)) = ctx.state.running_daemon()
        && d.ifaces.iter().any(|i| i.name == iface)
    {
        eprintln!(
            "note: the daemon (pid {}) still runs for {iface}; it re-attaches when restarted",
            d.pid
        );
    }
    Ok(())
}
