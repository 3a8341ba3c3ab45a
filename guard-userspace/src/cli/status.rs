//! `sipguard status [--json]`: the daemon, the config in use, and each interface's filter.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::report::{IfaceReport, Parts, Report};

/// `sipguard status`.
pub fn run(ctx: &Ctx, json: bool) -> Result<()> {
    let report = Report::read(&ctx.pins, &ctx.state, Parts::default())?;
    print!("{}", render(&report, json)?);
    Ok(())
}

pub fn render(report: &Report, json: bool) -> Result<String> {
    let daemon = report.daemon.as_ref();
    let mut out = String::new();
    if json {
        let ifaces: Vec<_> = report.ifaces.iter().map(IfaceReport::json).collect();
        let v = json!({
            "pin_root": report.pin_root,
            "state_dir": report.state_dir,
            "daemon": daemon.map_or(json!({"running": false}), |d| json!({"running": true, "pid": d.pid})),
            "config": daemon.and_then(|d| d.config.clone()),
            "last_reload": report.last_reload,
            "interfaces": ifaces,
        });
        writeln!(out, "{v}")?;
        return Ok(out);
    }
    match daemon {
        Some(d) => writeln!(out, "daemon: running (pid {})", d.pid)?,
        None => writeln!(
            out,
            "daemon: not running (the pinned filter keeps enforcing)"
        )?,
    }
    let config = match daemon {
        Some(d) => d.config.as_ref().map_or_else(
            || "the built-in default rules".to_string(),
            |p| p.display().to_string(),
        ),
        None => "- (no daemon)".into(),
    };
    writeln!(out, "config: {config}")?;
    if let Some(r) = &report.last_reload {
        let when = crate::model::time::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.unix),
        );
        match (&r.error, r.ok) {
            (_, true) => writeln!(out, "last reload: {when} ({}): ok", r.reason)?,
            (e, false) => writeln!(
                out,
                "last reload: {when} ({}): FAILED, the previous rules stay in force: {}",
                r.reason,
                e.as_deref().unwrap_or("unknown error")
            )?,
        }
    }
    for i in &report.ifaces {
        let s = &i.settings;
        let state = if i.attached {
            "attached".to_string()
        } else {
            format!("NOT attached ({}; maps kept)", i.note)
        };
        writeln!(
            out,
            "{}: {} xdp={} prog_id={} rules={} max_rules={} mode={} ports={} intl_prefixes={}",
            i.iface,
            state,
            i.xdp_mode,
            i.program_id.map_or("null".into(), |id| id.to_string()),
            i.rule_count,
            s.max_rules,
            s.mode.as_str(),
            json!(s.sip_ports),
            json!(s.intl_prefixes),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn status_shows_the_daemon_config_and_every_interface() {
        let r = sample();
        let out = render(&r, false).unwrap();
        assert!(
            out.starts_with("daemon: running (pid 4242)\nconfig: /etc/sipguard/sipguard.toml\n"),
            "{out}"
        );
        assert!(
            out.contains("eth1: attached xdp=native prog_id=41 rules=3 max_rules=262144 mode=enforce ports=[5060] intl_prefixes=[\"00\",\"011\"]"),
            "{out}"
        );
        assert!(
            out.contains("eth2: NOT attached (interface gone; maps kept)"),
            "{out}"
        );
        assert!(
            out.contains("last reload: 2023-11-14T22:13:20.000Z (SIGHUP): FAILED, the previous rules stay in force: line 3: unknown action"),
            "{out}"
        );
        assert!(out.contains("mode=monitor"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&render(&r, true).unwrap()).unwrap();
        assert_eq!(v["daemon"]["pid"], 4242);
        assert_eq!(v["interfaces"][1]["iface"], "eth2");
        assert_eq!(v["interfaces"][1]["attached"], false);
        assert_eq!(v["interfaces"][1]["note"], "interface gone");
        assert_eq!(v["last_reload"]["ok"], false);
        assert_eq!(v["interfaces"][0]["program_id"], 41);
        assert_eq!(v["interfaces"][0]["international_prefixes"][1], "011");
        let none = Report { daemon: None, ..r };
        let out = render(&none, false).unwrap();
        assert!(
            out.starts_with(
                "daemon: not running (the pinned filter keeps enforcing)\nconfig: - (no daemon)\n"
            ),
            "{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&render(&none, true).unwrap()).unwrap();
        assert_eq!(v["daemon"]["running"], false);
    }
}
