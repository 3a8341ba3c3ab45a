//! Serves `/metrics` (see [`report::metrics`](crate::report::metrics)) on 127.0.0.1:9960
//! unless configured otherwise. Every scrape reads the pinned maps afresh, so the values are
//! exactly what `sipguard stats --json` shows.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{info, warn};

use crate::{
    config::state::StateDir,
    kernel::pins::PinRoot,
    report::{self, DaemonStatus, Parts, Report},
};

/// Reads the report and renders it.
pub fn render(pins: &PinRoot, state: &StateDir, status: &DaemonStatus) -> Result<String> {
    let parts = Parts {
        rules: true,
        counters: true,
        sources: true,
    };
    // No pinned interface yet (or any more): the daemon's own gauges only.
    let report = if pins.ifaces().is_empty() {
        Report::default()
    } else {
        Report::read(pins, state, parts)?
    };
    report::metrics::render(&report, status).context("encoding the metrics")
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
