//! `sipguard explain --src ADDR [--vlan N] URI`: renders [`crate::replay::explain`].

use std::{fmt::Write as _, net::IpAddr, path::Path};

use anyhow::Result;
use serde_json::json;

use crate::{
    config::ConfigLocation,
    kernel::Verdict,
    replay::explain::{Explanation, explain},
};

pub fn run(config: Option<&Path>, src: IpAddr, vlan: u16, uri: &str, json: bool) -> Result<()> {
    let location = ConfigLocation::resolve(config);
    let cfg = location.load()?;
    let e = explain(&cfg, src, vlan, uri)?;
    print!("{}", render(&e, json)?);
    Ok(())
}

fn verdict(v: Verdict) -> String {
    match v {
        Verdict::Pass => "pass".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Other(n) => format!("xdp action {n}"),
    }
}

pub fn render(e: &Explanation, json: bool) -> Result<String> {
    let rule = e.rule.as_ref().map(|(policy, prefix, action)| {
        let label = match policy {
            Some(p) => format!("{p}/{prefix}"),
            None => prefix.to_string(),
        };
        (label, action.as_str())
    });
    if json {
        return Ok(format!(
            "{}\n",
            json!({
                "src": e.src.to_string(),
                "vlan": e.vlan,
                "uri": e.uri,
                "customer": e.customer,
                "policy": e.policy.as_ref().map(|p| &p.0),
                "inherit": e.policy.as_ref().map(|p| p.1),
                "number": e.number,
                "rule": rule.as_ref().map(|r| &r.0),
                "action": rule.as_ref().map(|r| r.1),
                "response": e.response.as_ref().map(|s| s.to_string()),
                "verdict": verdict(e.verdict),
            })
        ));
    }
    let mut out = String::new();
    let on = if e.vlan == 0 {
        String::new()
    } else {
        format!(" on VLAN {}", e.vlan)
    };
    writeln!(out, "source    {}{on}", e.src)?;
    writeln!(
        out,
        "customer  {}",
        e.customer
            .as_deref()
            .unwrap_or("none (the global rules apply)")
    )?;
    match &e.policy {
        Some((p, true)) => writeln!(out, "policy    {p} (over the global rules)")?,
        Some((p, false)) => writeln!(out, "policy    {p} (its own rules only)")?,
        None => writeln!(out, "policy    none (the global rules)")?,
    }
    writeln!(
        out,
        "number    {}",
        e.number.as_deref().unwrap_or("none read")
    )?;
    match &rule {
        Some((label, action)) => writeln!(out, "rule      {label} ({action})")?,
        None => writeln!(out, "rule      none matched")?,
    }
    if let Some(s) = &e.response {
        writeln!(out, "response  {s}")?;
    }
    writeln!(out, "verdict   {}", verdict(e.verdict))?;
    Ok(out)
}
