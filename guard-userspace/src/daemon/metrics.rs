//! Serves `/metrics` (see [`report::metrics`](crate::report::metrics)) on 127.0.0.1:9960
//! unless configured otherwise. Every scrape reads the pinned maps afresh, so the values are
//! exactly what `sipguard stats --json` shows. The server is hyper's HTTP/1, bounded by
//! [`Limits`]: a header read timeout, a connection lifetime, no keep-alive and a cap on
//! connections.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
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

/// How long a client has, from connecting, to send a whole request head; a client that sends
/// nothing, or half a request, is disconnected then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most a connection may live, whatever it does (slow body, a response it does not read).
/// Keep-alive is off, so a connection carries one request.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Connections served at once. Over it, new connections wait in the kernel's listen backlog
/// (no task, no file descriptor in the daemon) until one ends, which an idle one does within
/// [`HEADER_READ_TIMEOUT`] and any within [`CONNECTION_LIFETIME`].
pub const MAX_CONNECTIONS: usize = 64;

/// The bounds of the metrics server (the constants above; tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub connection_lifetime: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_lifetime: CONNECTION_LIFETIME,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `GET /metrics` until the daemon stops.
pub async fn serve(
    listener: TcpListener,
    pins: PinRoot,
    state: StateDir,
    status: Arc<Mutex<DaemonStatus>>,
) {
    serve_with(listener, Limits::default(), move || {
        let st = status.lock().map(|s| s.clone()).unwrap_or_default();
        render(&pins, &state, &st)
    })
    .await
}

/// Serves `GET /metrics` with the body `render` makes (run on the blocking pool: it reads
/// the BPF maps), within `limits`.
pub async fn serve_with(
    listener: TcpListener,
    limits: Limits,
    render: impl Fn() -> Result<String> + Send + Sync + 'static,
) {
    let render: Renderer = Arc::new(render);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A slot first, then accept: over the cap, connections wait in the listen backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let sock = match listener.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // E.g. out of file descriptors: don't spin.
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(false)
                .serve_connection(
                    TokioIo::new(sock),
                    service_fn(move |req| respond(req, render.clone())),
                );
            // Errors are the client's (timeouts, bad requests): nothing to log.
            let _ = tokio::time::timeout(limits.connection_lifetime, conn).await;
            drop(slot);
        });
    }
}

type Renderer = Arc<dyn Fn() -> Result<String> + Send + Sync>;

async fn respond(
    req: Request<Incoming>,
    render: Renderer,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(text(StatusCode::NOT_FOUND, "try /metrics\n".into()));
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    let body = tokio::task::spawn_blocking(move || render())
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("rendering the metrics panicked: {e}")));
    Ok(match body {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Err(e) => {
            warn!("metrics: {e:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))
        }
    })
}

/// The OpenMetrics text format `report::metrics::render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
    };

    use super::*;

    const BODY: &str = "# TYPE sipguard_up gauge\nsipguard_up 1\n# EOF\n";

    fn short() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(300),
            connection_lifetime: Duration::from_secs(3),
            max_connections: 2,
        }
    }

    /// A server on 127.0.0.1 (a free port) whose `render` gives `body`.
    async fn server(limits: Limits, body: Result<&'static str, &'static str>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_with(l, limits, move || {
            body.map(str::to_string).map_err(|e| anyhow::anyhow!(e))
        }));
        addr
    }

    /// Everything the server sends until it closes (at most 5 s).
    async fn read_all(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn request(addr: SocketAddr, raw: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        read_all(&mut s).await
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    }

    #[tokio::test]
    async fn get_metrics_returns_the_rendered_body() {
        let addr = server(short(), Ok(BODY)).await;
        for path in ["/metrics", "/metrics?name[]=x"] {
            let resp = request(addr, &get(path)).await;
            assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
            let lower = resp.to_ascii_lowercase();
            assert!(
                lower.contains(
                    "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
                ),
                "{resp}"
            );
            assert!(lower.contains(&format!("content-length: {}\r\n", BODY.len())));
            assert!(lower.contains("connection: close\r\n"), "{resp}");
            assert!(resp.ends_with(&format!("\r\n\r\n{BODY}")), "{resp}");
        }
    }

    #[tokio::test]
    async fn other_paths_are_404_other_methods_405_render_errors_500() {
        let addr = server(short(), Ok(BODY)).await;
        let resp = request(addr, &get("/")).await;
        assert!(resp.starts_with("HTTP/1.1 404 Not Found\r\n"), "{resp}");
        assert!(resp.ends_with("try /metrics\n"), "{resp}");
        let resp = request(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{resp}"
        );
        assert!(
            resp.to_ascii_lowercase().contains("allow: get\r\n"),
            "{resp}"
        );

        let addr = server(short(), Err("reading the maps: gone")).await;
        let resp = request(addr, &get("/metrics")).await;
        assert!(
            resp.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{resp}"
        );
        assert!(resp.ends_with("reading the maps: gone\n"), "{resp}");
    }

    #[tokio::test]
    async fn an_idle_client_is_closed_after_the_header_timeout() {
        let addr = server(short(), Ok(BODY)).await;
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let resp = read_all(&mut s).await;
        let took = start.elapsed();
        assert!(!resp.contains("200 OK"), "{resp}");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        assert!(took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_slow_client_with_half_a_request_is_closed() {
        let addr = server(short(), Ok(BODY)).await;
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Still trickling, but the head is not complete within the timeout.
        let _ = s.write_all(b"X-Slow: 1\r\n").await;
        let resp = read_all(&mut s).await;
        let took = start.elapsed();
        assert!(!resp.contains("200 OK"), "{resp}");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        assert!(took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test]
    async fn over_the_cap_a_connection_waits_until_the_idle_ones_time_out() {
        let limits = short();
        let addr = server(limits, Ok(BODY)).await;
        let start = Instant::now();
        // Fill every slot with clients that send nothing.
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The cap+1'th connection is accepted by the kernel (listen backlog) but not served ...
        let mut extra = TcpStream::connect(addr).await.unwrap();
        extra.write_all(get("/metrics").as_bytes()).await.unwrap();
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(150), extra.read(&mut byte)).await;
        assert!(early.is_err(), "served while every slot was taken");
        // ... until the idle ones time out; then it is answered.
        let resp = read_all(&mut extra).await;
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(start.elapsed() >= limits.header_read_timeout);
        for mut s in idle {
            assert!(!read_all(&mut s).await.contains("200 OK"));
        }
        // And the server goes on serving.
        let resp = request(addr, &get("/metrics")).await;
        assert!(resp.ends_with(BODY), "{resp}");
    }
}
