//! `sipguard rules list|add|del|import`: the live rules, and edits that are live at once.
//!
//! Edits open the pinned maps directly (no daemon needed), under the state lock, so they never
//! interleave with a daemon reload; they are recorded in `runtime.toml` and survive reloads and
//! restarts.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use guard_common::Action;

use super::Ctx;
use crate::{
    config::state::Overlay,
    kernel::{
        maps::{Delta, Maps, MapsError, Pending},
        sys,
    },
    model::{
        country,
        rules::{Origin, Prefix, Rule, RuleSet},
        settings::Settings,
    },
    report::{Parts, Report, RuleRow},
};

#[derive(Subcommand)]
pub enum RulesVerb {
    /// The live rules.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a rule for PREFIX (`+232`, `0990`) or for a country (`--country SL`).
    Add {
        #[arg(required_unless_present = "country", conflicts_with = "country")]
        prefix: Option<Prefix>,
        #[arg(long, value_name = "CC")]
        country: Option<String>,
        #[arg(long, value_parser = super::action_arg)]
        action: Action,
        #[arg(long)]
        comment: Option<String>,
        /// Replace a rule of the same prefix with another action.
        #[arg(long)]
        replace: bool,
    },
    /// Delete the rule for PREFIX.
    Del { prefix: Prefix },
    /// Add every [[rule]] of FILE (config format), all or nothing.
    Import { file: PathBuf },
}

/// `sipguard rules ...`.
pub fn run(ctx: &Ctx, verb: RulesVerb) -> Result<()> {
    if !matches!(verb, RulesVerb::List { .. })
        && let Some(f) = ctx.state.fleet_record()
    {
        anyhow::bail!("{}", f.refusal("rule edit"));
    }
    match verb {
        RulesVerb::List { json } => {
            let report = Report::read(
                &ctx.pins,
                &ctx.state,
                Parts {
                    rules: true,
                    ..Parts::default()
                },
            )?;
            // Every interface holds the same rules: the first one's are shown.
            let rows = report.ifaces.first().map_or(&[][..], |i| &i.rules[..]);
            print!("{}", render_list(rows, json)?);
            Ok(())
        }
        RulesVerb::Add {
            prefix,
            country,
            action,
            comment,
            replace,
        } => {
            let rules = match (prefix, country) {
                (_, Some(cc)) => country_rules(&cc, action, comment)?,
                (Some(prefix), None) => RuleSet::from([(
                    prefix,
                    Rule {
                        comment,
                        ..Rule::new(action, Origin::Runtime)
                    },
                )]),
                (None, None) => bail!("give a PREFIX or --country CC"),
            };
            println!("{}", edit_rules(ctx, Edit::Add { rules, replace })?);
            Ok(())
        }
        RulesVerb::Del { prefix } => {
            println!("{}", edit_rules(ctx, Edit::Del(prefix))?);
            Ok(())
        }
        RulesVerb::Import { file } => {
            let rules = import_rules(&file)?;
            let edit = Edit::Add {
                rules,
                replace: false,
            };
            println!("{}", edit_rules(ctx, edit)?);
            Ok(())
        }
    }
}

/// `rules list` output: a table, or one JSON object per rule.
pub fn render_list(rows: &[RuleRow], json: bool) -> Result<String> {
    let mut out = String::new();
    if json {
        for r in rows {
            writeln!(out, "{}", serde_json::to_string(&r.json())?)?;
        }
        return Ok(out);
    }
    writeln!(
        out,
        "{:<18} {:<8} {:<8} {:<28} COMMENT",
        "PREFIX", "ACTION", "ORIGIN", "COUNTRY"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<8} {:<8} {:<28} {}",
            r.label(),
            r.action.as_str(),
            r.origin.as_str(),
            super::truncate(&r.country, 28),
            r.comment
        )?;
    }
    writeln!(out, "{} rule(s)", rows.len())?;
    Ok(out)
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
    // Rules of an add that are live already, with the same action, from the config.
    let mut present: Vec<Prefix> = Vec::new();
    let (summary, delta) = match &edit {
        Edit::Add {
            rules: new,
            replace,
        } => {
            // Where a live rule comes from: runtime edits are in the overlay, the rest is the
            // config file's.
            let runtime: BTreeSet<&Prefix> = overlay.rule.iter().map(|r| &r.prefix).collect();
            let mut conflicts = Vec::new();
            let mut added = 0usize;
            for (p, e) in new {
                match first.live_rule(p)? {
                    Some(v) if v.action != e.action as u8 && !replace => {
                        conflicts.push((p, v.action, e.action))
                    }
                    // The config's own rule, repeated: it stays the config's, so that later
                    // changes of the config file still apply to it.
                    Some(v) if v.action == e.action as u8 && !runtime.contains(p) => {
                        present.push(p.clone())
                    }
                    Some(_) => {}
                    None => added += 1,
                }
            }
            if !conflicts.is_empty() {
                let text: Vec<String> = conflicts
                    .iter()
                    .map(|(p, old, new)| {
                        format!(
                            "{p} is already `{}` ({}), not `{}`",
                            Action::from_u8(*old).map_or("?", Action::as_str),
                            if runtime.contains(p) {
                                "runtime"
                            } else {
                                "config"
                            },
                            new.as_str()
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
                    return Err(anyhow::Error::new(MapsError::Full {
                        wanted: total,
                        max: maps.capacity(),
                    })
                    .context(format!("interface {iface}")));
                }
            }
            let set: Vec<(Prefix, Action)> = new
                .iter()
                .filter(|(p, _)| !present.contains(p))
                .map(|(p, e)| (p.clone(), e.action))
                .collect();
            let mut summary = String::new();
            if !set.is_empty() {
                summary = format!(
                    "added {} rule(s): {}",
                    set.len(),
                    list(set.iter().map(|(p, _)| p))
                );
            }
            if !present.is_empty() {
                if !summary.is_empty() {
                    summary.push_str("; ");
                }
                summary.push_str(&format!(
                    "already present (config, same action): {}",
                    list(present.iter())
                ));
            }
            if set.is_empty() {
                return Ok(format!("{summary}; nothing was changed"));
            }
            let live = Settings::live(&first.config()?, Vec::new());
            for (p, _) in &set {
                if let Some(w) = live.unreachable(p) {
                    eprintln!("warning: {w}");
                }
            }
            let delta = Delta {
                set,
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
        sys::wait_for_readers();
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
                if !present.contains(&p) {
                    overlay.add(p, &e);
                }
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

/// Up to eight prefixes, for a summary line.
fn list<'a>(prefixes: impl Iterator<Item = &'a Prefix>) -> String {
    let shown: Vec<String> = prefixes.map(|p| p.to_string()).collect();
    if shown.len() > 8 {
        format!("{} ... ({} in all)", shown[..8].join(" "), shown.len())
    } else {
        shown.join(" ")
    }
}

/// Makes `delta` live on one interface: as a delta when both tries are known to be in sync,
/// else as a full commit of the live rules with the delta applied (an older version's pins,
/// or a commit that stopped half-way).
fn stage_edit(maps: &mut Maps, delta: &Delta) -> Result<Pending> {
    if let Some((_, p)) = maps.stage_delta(delta)? {
        return Ok(p);
    }
    let settings = maps.live_settings()?;
    let mut rules = maps.rule_set()?;
    for (p, a) in &delta.set {
        rules.insert(
            p.clone(),
            Rule {
                action: *a,
                comment: None,
                country: None,
                origin: Origin::Runtime,
                status: None,
                limits: None,
            },
        );
    }
    for p in &delta.remove {
        rules.remove(p);
    }
    let (_, p) = maps.stage_full(&settings, &rules, None)?;
    Ok(p)
}

/// `sipguard rules add --country CC`: the rules a country expands to.
pub fn country_rules(cc: &str, action: Action, comment: Option<String>) -> Result<RuleSet> {
    let c = country::expand(cc)?;
    let mut out = RuleSet::new();
    for d in &c.prefixes {
        out.insert(
            format!("+{d}").parse::<Prefix>()?,
            Rule {
                action,
                comment: comment.clone().or_else(|| Some(c.name.clone())),
                country: Some(c.alpha2.clone()),
                origin: Origin::Runtime,
                status: None,
                limits: None,
            },
        );
    }
    Ok(out)
}

/// `sipguard rules import FILE`: the `[[rule]]` entries of FILE (config format, no settings).
pub fn import_rules(path: &Path) -> Result<RuleSet> {
    let f = crate::config::load(path)?;
    if f.has_settings {
        bail!(
            "{}: an import file holds only [[rule]] entries; [settings] belong in the config file",
            path.display()
        );
    }
    Ok(f.rules
        .into_iter()
        .map(|(p, mut e)| {
            e.origin = Origin::Runtime;
            (p, e)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn the_rule_list_shows_origin_country_and_comment() {
        let r = sample();
        let rows = &r.ifaces[0].rules;
        let out = render_list(rows, false).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["PREFIX", "ACTION", "ORIGIN", "COUNTRY", "COMMENT"]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["+232", "block", "config", "Sierra", "Leone", "fraud"]
        );
        assert_eq!(lines.last(), Some(&"3 rule(s)"));
        let json = render_list(rows, true).unwrap();
        let v: Vec<serde_json::Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1]["prefix"], "+23222");
        assert_eq!(v[1]["action"], "allow");
        assert_eq!(v[1]["origin"], "runtime");
        assert_eq!(v[1]["id"], 2);
    }

    #[test]
    fn a_country_expands_to_runtime_rules_named_after_it() {
        let rules = country_rules("jm", Action::Block, None).unwrap();
        let prefixes: Vec<String> = rules.keys().map(|p| p.to_string()).collect();
        assert_eq!(prefixes, ["+1658", "+1876"]);
        let r = &rules[&"+1876".parse::<Prefix>().unwrap()];
        assert_eq!(
            (r.origin, r.comment.as_deref(), r.country.as_deref()),
            (Origin::Runtime, Some("Jamaica"), Some("JM"))
        );
        assert!(country_rules("US", Action::Block, None).is_err());
    }
}
