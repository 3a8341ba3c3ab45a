//! `sipguard fleet status|get|push`: the fleet's document in etcd and the routers that apply
//! it. No root and no kernel: only the fleet file (`--fleet`, default
//! /etc/sipguard/fleet.toml) and etcd.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::json;

use super::check_config::{CheckFailed, exit_code};
use crate::{
    config::{self, fleet::FleetConfig},
    fleet::{Router, Store},
    model::limits::parse_duration,
};

#[derive(Subcommand)]
pub enum FleetVerb {
    /// Every router: the revision it applied, and whether it is current, behind, in error or
    /// gone (its status lease expired).
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the fleet's document (its revision goes to stderr).
    Get,
    /// Validate FILE as check-config does, write it if the document is still at the revision
    /// read (or --expect-revision), then wait until every live router has applied it.
    Push {
        file: PathBuf,
        /// The revision this edit is based on (from `fleet get`): refused if another push came
        /// in between.
        #[arg(long)]
        expect_revision: Option<i64>,
        /// How long to wait for the routers ("0s": do not wait).
        #[arg(long, default_value = "30s")]
        wait: String,
    },
}

/// One router's state against the current revision.
fn state(r: &Router, current: i64) -> &'static str {
    match &r.status {
        None => "gone",
        Some(s) if s.error.as_ref().is_some_and(|e| e.revision >= current) => "error",
        Some(s) if s.revision >= current => "current",
        Some(_) => "behind",
    }
}

fn ago(unix: u64) -> String {
    if unix == 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(unix))
}

/// The status table (or JSON lines).
pub fn render(routers: &[Router], current: i64, json: bool) -> String {
    let mut out = String::new();
    if json {
        for r in routers {
            let s = r.status.as_ref();
            out += &json!({
                "node": r.node,
                "state": state(r, current),
                "revision": s.map(|s| s.revision),
                "fleet_revision": current,
                "applied_unix": s.map(|s| s.applied_unix),
                "rules": s.map(|s| s.rules),
                "local_edits": s.map(|s| s.local_edits),
                "error": s.and_then(|s| s.error.as_ref()).map(|e| json!({"revision": e.revision, "message": e.message})),
            })
            .to_string();
            out.push('\n');
        }
        return out;
    }
    out += &format!(
        "{:<20} {:<8} {:>9} {:>12} {:>7}  ERROR\n",
        "NODE", "STATE", "REVISION", "APPLIED", "RULES"
    );
    for r in routers {
        let s = r.status.as_ref();
        out += &format!(
            "{:<20} {:<8} {:>9} {:>12} {:>7}  {}\n",
            r.node,
            state(r, current),
            s.map_or("-".into(), |s| s.revision.to_string()),
            s.map_or("-".into(), |s| ago(s.applied_unix)),
            s.map_or("-".into(), |s| s.rules.to_string()),
            s.and_then(|s| s.error.as_ref())
                .map_or(String::new(), |e| format!(
                    "revision {}: {}",
                    e.revision, e.message
                )),
        );
    }
    let count = |st: &str| routers.iter().filter(|r| state(r, current) == st).count();
    out += &format!(
        "fleet revision {current}: {} current, {} behind, {} in error, {} gone\n",
        count("current"),
        count("behind"),
        count("error"),
        count("gone")
    );
    out
}

pub fn run(fleet_file: &Path, verb: FleetVerb) -> Result<()> {
    let cfg = FleetConfig::load(fleet_file).context("the fleet file is invalid")?;
    // Validate before connecting: a bad file never needs etcd to be refused.
    let pushed = match &verb {
        FleetVerb::Push { file, .. } => {
            let text = config::file::read(file).map_err(|error| CheckFailed {
                code: exit_code(&error),
                error,
            })?;
            config::parse(file, &text).map_err(|error| CheckFailed {
                code: exit_code(&error),
                error,
            })?;
            Some(text)
        }
        _ => None,
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(async move {
            let mut store = Store::connect(&cfg).await?;
            match verb {
                FleetVerb::Status { json } => {
                    let current = store.document().await?.map_or(0, |d| d.revision);
                    let routers = store.routers().await?;
                    print!("{}", render(&routers, current, json));
                }
                FleetVerb::Get => match store.document().await? {
                    Some(d) => {
                        eprintln!("revision {}", d.revision);
                        print!("{}", d.text);
                    }
                    None => bail!("no fleet document at {}", cfg.config_key()),
                },
                FleetVerb::Push {
                    expect_revision,
                    wait,
                    ..
                } => {
                    let wait = if matches!(wait.as_str(), "0" | "0s") {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(
                            parse_duration(&wait).map_err(|e| anyhow::anyhow!("--wait: {e}"))?,
                        )
                    };
                    let expected = match expect_revision {
                        Some(r) => r,
                        None => store.document().await?.map_or(0, |d| d.revision),
                    };
                    let text = pushed.unwrap_or_default();
                    let revision = store.push(&text, expected).await?;
                    println!("pushed revision {revision} to {}", cfg.config_key());
                    if wait.is_zero() {
                        return Ok(());
                    }
                    let deadline = Instant::now() + wait;
                    let routers = loop {
                        let routers = store.routers().await?;
                        let settled = routers
                            .iter()
                            .all(|r| matches!(state(r, revision), "current" | "error" | "gone"));
                        if settled || Instant::now() >= deadline {
                            break routers;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    print!("{}", render(&routers, revision, false));
                    let live = routers.iter().filter(|r| r.status.is_some()).count();
                    let done = routers
                        .iter()
                        .filter(|r| state(r, revision) == "current")
                        .count();
                    if done < live {
                        bail!(
                            "{} of {live} live routers have not applied revision {revision} (see above)",
                            live - done
                        );
                    }
                    println!("all {live} live routers apply revision {revision}");
                }
            }
            Ok(())
        })
}
