//! Serves `/metrics` (see [`report::metrics`](crate::report::metrics)) on 127.0.0.1:9960
//! unless configured otherwise. Every scrape reads the pinned maps afresh, so the values are
//! exactly what `sipguard stats --json` shows. The server is hyper's HTTP/1, bounded by
//! [`Limits`]: a header read timeout, a connection lifetime, no keep-alive and a cap on
//! connections.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
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
    report::{self, DaemonStatus, Parts, Report, metrics::Tops},
};

/// Reads the report and renders it, with per-rule series for the `top_rules` busiest rules of
/// each interface.
pub fn render(
    pins: &PinRoot,
    state: &StateDir,
    status: &DaemonStatus,
    tops: Tops,
) -> Result<String> {
    let parts = Parts {
        rules: true,
        counters: true,
        sources: true,
        customers: true,
    };
    // No pinned interface yet (or any more): the daemon's own gauges only.
    let report = if pins.ifaces().is_empty() {
        Report::default()
    } else {
        Report::read(pins, state, parts)?
    };
    report::metrics::render(&report, status, tops).context("encoding the metrics")
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

/// Connections served at once. Over it, a new connection is accepted, told `503 Service
/// Unavailable` and closed at once: it never holds a task or a file descriptor, and the listen
/// backlog stays empty. A slot frees when a connection ends, which an idle one does within
/// [`HEADER_READ_TIMEOUT`] and any within [`CONNECTION_LIFETIME`].
pub const MAX_CONNECTIONS: usize = 64;

/// What an over-the-cap client is told before the connection is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";

/// The first pause after a failed `accept` (out of file descriptors, of memory, of buffers):
/// the failed connection stays queued, so retrying at once would spin.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause between retries while `accept` keeps failing.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The pause after each failed `accept`, doubling from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`] while the failures last, and logged once per burst of failures (and
/// once when accepting works again). Never a busy loop.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    what: &'static str,
    delay: Option<Duration>,
    failures: u64,
}

impl AcceptBackoff {
    pub(crate) fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: None,
            failures: 0,
        }
    }

    /// The pause after a failed accept, and whether this failure starts a burst (is logged).
    pub(crate) fn delay(&mut self) -> (Duration, bool) {
        self.failures += 1;
        let (d, first) = match self.delay {
            None => (ACCEPT_BACKOFF_MIN, true),
            Some(d) => ((d * 2).min(ACCEPT_BACKOFF_MAX), false),
        };
        self.delay = Some(d);
        (d, first)
    }

    /// Waits after the failed accept `e`.
    pub(crate) async fn failed(&mut self, e: &std::io::Error) {
        let (d, first) = self.delay();
        if first {
            warn!(
                "{}: accept failed: {e}; retrying every {:?} to {:?} until it works again",
                self.what, ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX
            );
        }
        tokio::time::sleep(d).await;
    }

    /// An accept worked: ends a burst of failures.
    pub(crate) fn succeeded(&mut self) {
        if self.failures > 0 {
            info!(
                "{}: accepting again after {} failed accepts",
                self.what, self.failures
            );
        }
        self.delay = None;
        self.failures = 0;
    }
}

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

/// `[metrics] top_rules` and `top_customers`, shared with the daemon, which stores reloaded
/// values; each scrape reads them.
#[derive(Debug, Default)]
pub struct SharedTops {
    pub rules: AtomicUsize,
    pub customers: AtomicUsize,
}

impl SharedTops {
    pub fn new(tops: Tops) -> Self {
        Self {
            rules: AtomicUsize::new(tops.rules),
            customers: AtomicUsize::new(tops.customers),
        }
    }

    pub fn load(&self) -> Tops {
        Tops {
            rules: self.rules.load(Ordering::Relaxed),
            customers: self.customers.load(Ordering::Relaxed),
        }
    }
}

/// Serves `GET /metrics` until the daemon stops, within the default [`Limits`], with per-rule
/// series for the `top_rules` busiest rules of each interface (`[metrics] top_rules`; the
/// daemon stores a reloaded value there, and the next scrape uses it).
pub async fn serve(
    listener: TcpListener,
    pins: PinRoot,
    state: StateDir,
    status: Arc<Mutex<DaemonStatus>>,
    tops: Arc<SharedTops>,
) {
    serve_with(listener, Limits::default(), move || {
        let st = status.lock().map(|s| s.clone()).unwrap_or_default();
        render(&pins, &state, &st, tops.load())
    })
    .await
}

/// Serves `GET /metrics` with the body `render` makes, within `limits`.
///
/// `render` runs on the blocking pool (it reads the BPF maps), never on the daemon's own
/// (current-thread) runtime, and one at a time: a scrape that arrives while a render runs
/// waits for the next one to start, and scrapes that waited together share its body.
pub async fn serve_with(
    listener: TcpListener,
    limits: Limits,
    render: impl Fn() -> Result<String> + Send + Sync + 'static,
) {
    let render = Arc::new(SingleFlight::new(render));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::new("metrics");
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff.succeeded();
                sock
            }
            Err(e) => {
                // E.g. out of file descriptors (EMFILE/ENFILE), ENOBUFS, ENOMEM.
                backoff.failed(&e).await;
                continue;
            }
        };
        // Over the cap: refused and closed at once, not held.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = sock.try_write(BUSY);
            drop(sock);
            continue;
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

type Renderer = Arc<SingleFlight>;
type Body = Result<Bytes, Arc<anyhow::Error>>;

/// One render at a time; callers that waited for the same render share its result.
pub(crate) struct SingleFlight {
    render: Arc<dyn Fn() -> Result<String> + Send + Sync>,
    /// Renders started so far, and the body of the last one.
    last: tokio::sync::Mutex<(u64, Option<Body>)>,
    started: std::sync::atomic::AtomicU64,
}

impl SingleFlight {
    fn new(render: impl Fn() -> Result<String> + Send + Sync + 'static) -> Self {
        Self {
            render: Arc::new(render),
            last: tokio::sync::Mutex::new((0, None)),
            started: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A body rendered after this call began: the render in progress is not reused (its
    /// reading may predate the request), the next one is, by everyone waiting for it.
    async fn get(&self) -> Body {
        use std::sync::atomic::Ordering;
        let seen = self.started.load(Ordering::SeqCst);
        let mut last = self.last.lock().await;
        if last.0 > seen
            && let Some(body) = &last.1
        {
            return body.clone();
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let render = self.render.clone();
        let body = tokio::task::spawn_blocking(move || render())
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("rendering the metrics panicked: {e}")))
            .map(Bytes::from)
            .map_err(Arc::new);
        *last = (self.started.load(Ordering::SeqCst), Some(body.clone()));
        body
    }
}

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
    Ok(match render.get().await {
        Ok(body) => {
            let mut r = Response::new(Full::new(body));
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
    async fn over_the_cap_a_connection_is_refused_at_once_not_held() {
        let limits = short();
        let addr = server(limits, Ok(BODY)).await;
        // Fill every slot with clients that send nothing.
        let mut idle = Vec::new();
        for _ in 0..limits.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The cap+1'th connection is told 503 and closed straight away, long before the idle
        // ones time out.
        let start = Instant::now();
        let mut extra = TcpStream::connect(addr).await.unwrap();
        let resp = read_all(&mut extra).await;
        assert!(
            resp.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{resp}"
        );
        assert!(
            start.elapsed() < limits.header_read_timeout,
            "held for {:?}",
            start.elapsed()
        );
        // The idle ones time out; then the server goes on serving.
        for mut s in idle {
            assert!(!read_all(&mut s).await.contains("200 OK"));
        }
        let resp = request(addr, &get("/metrics")).await;
        assert!(resp.ends_with(BODY), "{resp}");
    }

    #[tokio::test]
    async fn a_slowloris_client_is_closed_by_the_header_timeout() {
        let limits = short();
        let addr = server(limits, Ok(BODY)).await;
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        // One byte at a time, every 50 ms: never a whole head within the timeout.
        let head = get("/metrics").into_bytes();
        let mut closed_at = None;
        for b in head.iter().cycle().take(200) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if s.write_all(&[*b]).await.is_err() {
                closed_at = Some(start.elapsed());
                break;
            }
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
                closed_at = Some(start.elapsed());
                break;
            }
        }
        let took = closed_at.expect("the slow client is disconnected");
        assert!(took >= limits.header_read_timeout, "closed after {took:?}");
        assert!(took < limits.connection_lifetime, "closed after {took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn renders_run_off_the_runtime_one_at_a_time_and_are_shared() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let renders = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            max_connections: 16,
            ..short()
        };
        let (r, g) = (renders.clone(), running.clone());
        tokio::spawn(serve_with(l, limits, move || {
            assert_eq!(g.fetch_add(1, Ordering::SeqCst), 0, "one render at a time");
            // A slow, blocking render: the runtime must keep running meanwhile.
            std::thread::sleep(Duration::from_millis(400));
            g.fetch_sub(1, Ordering::SeqCst);
            r.fetch_add(1, Ordering::SeqCst);
            Ok(BODY.to_string())
        }));
        let scrapes: Vec<_> = (0..8)
            .map(|_| tokio::spawn(async move { request(addr, &get("/metrics")).await }))
            .collect();
        // The (single-threaded) runtime ticks while the renders block.
        let start = Instant::now();
        let mut ticks = 0;
        while start.elapsed() < Duration::from_millis(300) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        assert!(
            ticks >= 10,
            "the runtime was blocked: {ticks} ticks in 300 ms"
        );
        for s in scrapes {
            assert!(s.await.unwrap().ends_with(BODY));
        }
        // Eight concurrent scrapes: the first render, and one more for all who waited.
        let n = renders.load(Ordering::SeqCst);
        assert!(n <= 2, "{n} renders for 8 concurrent scrapes");
    }

    #[test]
    fn accept_backoff_grows_to_a_second_and_logs_once_per_burst() {
        let mut b = AcceptBackoff::new("test");
        let delays: Vec<(Duration, bool)> = (0..7).map(|_| b.delay()).collect();
        let ms = |d: u64| Duration::from_millis(d);
        assert_eq!(
            delays,
            [
                (ms(100), true),
                (ms(200), false),
                (ms(400), false),
                (ms(800), false),
                (ms(1000), false),
                (ms(1000), false),
                (ms(1000), false),
            ]
        );
        b.succeeded();
        assert_eq!(b.delay(), (ms(100), true), "a new burst is logged again");
    }
}
