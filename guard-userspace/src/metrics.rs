//! Prometheus `/metrics` (OpenMetrics text, via `prometheus-client`), served by the daemon on
//! 127.0.0.1:9960 unless configured otherwise. Every scrape reads the pinned maps afresh, so
//! the values are exactly what `sipguard stats --json` shows. Label cardinality is bounded by
//! the rule count (one series per rule and interface).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use guard_common::{Action, Counter as K};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{
    cli::prefix_label,
    maps::Maps,
    pins::{LINK_PIN, PinRoot},
    rules::action_name,
    state::StateDir,
};

/// Default listen address: loopback only, unless the operator says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9960";

/// What the daemon knows that the maps do not.
#[derive(Clone, Debug, Default)]
pub struct DaemonStatus {
    pub last_reload: Option<SystemTime>,
    pub last_reload_ok: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    prefix: String,
    action: String,
    country: String,
    iface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
    rule: String,
    action: String,
    iface: String,
}

/// Sources exported per interface (the busiest by calls): bounded label cardinality.
pub const TOP_SOURCES: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IfaceLabels {
    iface: String,
}

/// Renders the metrics of every pinned interface.
pub fn render(pins: &PinRoot, state: &StateDir, status: &DaemonStatus) -> Result<String> {
    let mut reg = Registry::with_prefix("sipguard");
    let per_rule = |name: &str, help: &str, reg: &mut Registry| {
        let f = Family::<RuleLabels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let matched = per_rule(
        "rule_matched_packets",
        "INVITE packets whose longest matching prefix was the rule (retransmissions included)",
        &mut reg,
    );
    let dropped = per_rule(
        "rule_dropped_packets",
        "INVITE packets dropped by the rule",
        &mut reg,
    );
    let would = per_rule(
        "rule_would_drop_packets",
        "INVITE packets passed but counted as would-drop (monitor)",
        &mut reg,
    );
    let calls = per_rule(
        "rule_calls",
        "New calls (initial INVITEs, retransmissions counted once) that matched the rule",
        &mut reg,
    );
    let reinvites = per_rule(
        "rule_reinvites",
        "In-dialog re-INVITEs that matched the rule",
        &mut reg,
    );
    let global = |name: &str, help: &str, reg: &mut Registry| {
        let f = Family::<IfaceLabels, Counter>::default();
        reg.register(name, help, f.clone());
        f
    };
    let frames = global("frames", "Frames seen by the XDP program", &mut reg);
    let invites = global("invites", "SIP INVITE requests", &mut reg);
    let parse_fail = global(
        "parse_failures",
        "INVITEs whose Request-URI could not be parsed",
        &mut reg,
    );
    let frags = global(
        "non_first_fragments",
        "IP fragments other than the first (not inspected)",
        &mut reg,
    );
    let truncated = global(
        "truncated_frames",
        "Frames cut short or with lying lengths",
        &mut reg,
    );
    let ev_sent = global("events_sent", "Drop events sent to the daemon", &mut reg);
    let ev_supp = global(
        "events_suppressed",
        "Drop events suppressed by the rate budget or a full ring buffer",
        &mut reg,
    );
    let retrans = global(
        "retransmissions",
        "Matched INVITEs that were retransmissions of a known call",
        &mut reg,
    );
    let src_calls = Family::<SourceLabels, Counter>::default();
    reg.register(
        "source_calls",
        "New calls per source address and rule (the busiest sources only, see TOP_SOURCES)",
        src_calls.clone(),
    );
    let src_packets = Family::<SourceLabels, Counter>::default();
    reg.register(
        "source_packets",
        "INVITE packets per source address and rule (the busiest sources only)",
        src_packets.clone(),
    );
    let rules_loaded = Family::<IfaceLabels, Gauge>::default();
    reg.register(
        "rules_loaded",
        "Rules in the live rule set",
        rules_loaded.clone(),
    );
    let attached = Family::<IfaceLabels, Gauge>::default();
    reg.register(
        "program_attached",
        "1 when the XDP program is attached to the interface",
        attached.clone(),
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

    let meta = state.rule_meta();
    let mut by_iface: std::collections::BTreeMap<String, Vec<crate::cli::SourceRow>> =
        std::collections::BTreeMap::new();
    let ctx = crate::cli::Ctx {
        pins: pins.clone(),
        state: state.clone(),
    };
    if !pins.ifaces().is_empty() {
        for row in crate::cli::collect_sources(&ctx, None)? {
            by_iface.entry(row.iface.clone()).or_default().push(row);
        }
    }
    for rows in by_iface.values_mut() {
        rows.sort_by_key(|r| std::cmp::Reverse((r.calls, r.packets)));
        for r in rows.iter().take(TOP_SOURCES) {
            let l = SourceLabels {
                source: r.source.clone(),
                rule: r.rule.clone(),
                action: r.action.to_string(),
                iface: r.iface.clone(),
            };
            src_calls.get_or_create(&l).inc_by(r.calls);
            src_packets.get_or_create(&l).inc_by(r.packets);
        }
    }
    for iface in pins.ifaces() {
        let dir = pins.iface_dir(&iface);
        let maps = Maps::from_pins(&dir).with_context(|| format!("interface {iface}"))?;
        let il = IfaceLabels {
            iface: iface.clone(),
        };
        let rules = maps.rules()?;
        let counters = maps.all_rule_counters()?;
        rules_loaded.get_or_create(&il).set(rules.len() as i64);
        attached
            .get_or_create(&il)
            .set(dir.join(LINK_PIN).exists() as i64);
        for r in rules {
            let c = counters.get(&r.value.id).copied().unwrap_or_default();
            let m = meta.get(&r.prefix);
            let labels = RuleLabels {
                prefix: r.prefix.to_string(),
                action: Action::from_u8(r.value.action)
                    .map_or("?", action_name)
                    .to_string(),
                country: m
                    .and_then(|m| m.country.clone())
                    .unwrap_or_else(|| prefix_label(&r.prefix)),
                iface: iface.clone(),
            };
            matched.get_or_create(&labels).inc_by(c.matched);
            dropped.get_or_create(&labels).inc_by(c.dropped);
            would.get_or_create(&labels).inc_by(c.would_drop);
            calls.get_or_create(&labels).inc_by(c.calls);
            reinvites.get_or_create(&labels).inc_by(c.reinvites);
        }
        let g = maps.global_counters()?;
        let v = |k: K| g.counters[k as usize];
        frames.get_or_create(&il).inc_by(v(K::Frames));
        invites.get_or_create(&il).inc_by(v(K::Invites));
        parse_fail.get_or_create(&il).inc_by(v(K::UnparsableUri));
        frags.get_or_create(&il).inc_by(v(K::NonFirstFragments));
        truncated.get_or_create(&il).inc_by(v(K::Truncated));
        ev_sent.get_or_create(&il).inc_by(v(K::EventsSent));
        ev_supp.get_or_create(&il).inc_by(v(K::EventsSuppressed));
        retrans.get_or_create(&il).inc_by(v(K::Retransmissions));
    }
    reload_time.set(
        status
            .last_reload
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
    );
    reload_ok.set(status.last_reload_ok as i64);
    let mut out = String::new();
    encode(&mut out, &reg).context("encoding the metrics")?;
    Ok(out)
}

/// Binds the metrics listener (at start, so a busy port is a clear error, not a silent gap).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let l = TcpListener::bind(addr).await.with_context(|| {
        format!(
            "metrics: cannot listen on {addr} (set [metrics] listen = \"off\" or another address)"
        )
    })?;
    info!(%addr, "serving Prometheus metrics at /metrics");
    Ok(l)
}

/// Serves `GET /metrics` until the daemon stops.
pub async fn serve(
    listener: TcpListener,
    pins: PinRoot,
    state: StateDir,
    status: Arc<Mutex<DaemonStatus>>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let (pins, state, status) = (pins.clone(), state.clone(), status.clone());
        tokio::spawn(async move {
            // One small request per connection (HTTP/1.0 style): read the head, answer, close.
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let method = head.split_whitespace().next().unwrap_or("");
            let (code, ctype, body) =
                if method == "GET" && (path == "/metrics" || path.starts_with("/metrics?")) {
                    let st = status.lock().map(|s| s.clone()).unwrap_or_default();
                    match render(&pins, &state, &st) {
                        Ok(b) => (
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            b,
                        ),
                        Err(e) => {
                            warn!("metrics: {e:#}");
                            (
                                "500 Internal Server Error",
                                "text/plain",
                                format!("{e:#}\n"),
                            )
                        }
                    }
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
