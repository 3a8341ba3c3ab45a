//! Drop events: the kernel sends one per dropped or would-drop *call* (not per retransmission),
//! within a per-CPU token bucket. The daemon decodes them into JSON lines for a SIEM (a file
//! and/or stdout) and serves them on a Unix socket, where `sipguard events [--follow]` reads
//! them without restarting the daemon. The socket is bounded by [`Limits`]: a request line in
//! time and in few bytes, a cap on clients, and a write timeout that drops a follower that does
//! not read.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast},
    time::timeout,
};
use tracing::{info, warn};

use crate::{
    config::EventOutputs,
    kernel::maps::Maps,
    model::customers::Customers,
    model::rules::Prefix,
    report::event::{self, EventRecord},
};

/// Events kept for `sipguard events` without `--follow`.
const RECENT: usize = 256;

/// The daemon's event fan-out: outputs, recent history and live subscribers.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<String>,
    recent: Arc<Mutex<VecDeque<String>>>,
    /// Replaced by a reload that changes `[events]` ([`Hub::set_outputs`]).
    outputs: Arc<Mutex<EventOutputs>>,
}

impl Hub {
    pub fn new(outputs: EventOutputs) -> Self {
        Self {
            tx: broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
            outputs: Arc::new(Mutex::new(outputs)),
        }
    }

    /// Switches the outputs (a reload changed `[events]`); the next event goes to the new ones.
    pub fn set_outputs(&self, outputs: EventOutputs) {
        if let Ok(mut o) = self.outputs.lock() {
            *o = outputs;
        }
    }

    pub fn publish(&self, rec: &EventRecord) {
        if let Ok(line) = serde_json::to_string(rec) {
            self.publish_line(line);
        }
    }

    /// Publishes one encoded event (a JSON object, no newline) to the outputs, the recent
    /// history and the `sipguard events` clients. Never waits for a client.
    pub fn publish_line(&self, line: String) {
        let outputs = self.outputs.lock().map(|o| o.clone()).unwrap_or_default();
        if outputs.stdout {
            println!("{line}");
        }
        if let Some(path) = &outputs.file {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                warn!(file = %path.display(), "writing an event failed: {e}");
            }
        }
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(line.clone());
        }
        let _ = self.tx.send(line);
    }
}

/// Reads one interface's ring buffer until the daemon stops. `rules` maps rule ids to prefixes
/// and is refreshed from the pins when an unknown id shows up (a CLI edit).
pub async fn read_ring(
    ring: RingBuf<MapData>,
    iface: String,
    pin_dir: PathBuf,
    rules: Arc<Mutex<BTreeMap<u32, Prefix>>>,
    customers: Arc<Mutex<Customers>>,
    hub: Hub,
) {
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which keeps it open.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!(iface, "cannot watch the event ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(id) = event::raw(&item).map(|ev| ev.rule_id) else {
                continue;
            };
            let known = rules.lock().map(|r| r.contains_key(&id)).unwrap_or(false);
            if !known
                && let Ok(m) = Maps::from_pins(&pin_dir)
                && let (Ok(live), Ok(mut r)) = (m.rules(), rules.lock())
            {
                *r = live.into_iter().map(|(p, v)| (v.id, p)).collect();
            }
            let names = customers.lock().map(|c| c.clone()).unwrap_or_default();
            let rec = rules
                .lock()
                .ok()
                .and_then(|r| event::decode(&item, &iface, &r, &names));
            if let Some(rec) = rec {
                hub.publish(&rec);
            }
        }
        guard.clear_ready();
    }
}

/// The socket `sipguard events` connects to.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("events.sock")
}

/// How long a client has, from connecting, to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest request line read (`recent` or `follow` and a newline fit well within it).
pub const MAX_REQUEST_BYTES: u64 = 64;

/// Clients served at once. Over it, a new client gets `{"error":"too many clients"}` and is
/// closed at once (a follower holds its slot for as long as it follows, so waiting would not do).
pub const MAX_CLIENTS: usize = 32;

/// How long one write to a client may take: a follower that does not read (its socket buffer
/// full) is dropped then, and never holds up the daemon or the other clients.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of the events socket (the constants above; tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_request_bytes: u64,
    pub max_clients: usize,
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout: REQUEST_TIMEOUT,
            max_request_bytes: MAX_REQUEST_BYTES,
            max_clients: MAX_CLIENTS,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

/// Serves `sipguard events`: a client sends `recent` or `follow` and gets JSON lines.
pub async fn serve(path: PathBuf, hub: Hub) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    info!(socket = %path.display(), "serving `sipguard events`");
    serve_with(listener, hub, Limits::default()).await;
    Ok(())
}

/// Serves `sipguard events` clients on `listener` within `limits`.
pub async fn serve_with(listener: UnixListener, hub: Hub, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    let mut backoff = super::metrics::AcceptBackoff::new("events socket");
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                // E.g. out of file descriptors: a growing pause, never a busy loop.
                backoff.failed(&e).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let refusal = error_line("too many clients");
                let _ = timeout(limits.write_timeout, stream.write_all(refusal.as_bytes())).await;
            });
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = client(stream, hub, limits).await;
            drop(slot);
        });
    }
}

/// `{"error":"..."}` and a newline.
fn error_line(msg: &str) -> String {
    format!("{}\n", serde_json::json!({ "error": msg }))
}

async fn client(stream: UnixStream, hub: Hub, limits: Limits) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut write =
        async |s: String| match timeout(limits.write_timeout, wr.write_all(s.as_bytes())).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
    let mut line = Vec::new();
    let mut rd = BufReader::new(rd.take(limits.max_request_bytes));
    match timeout(limits.request_timeout, rd.read_until(b'\n', &mut line)).await {
        Err(_) => return write(error_line("no request in time")).await,
        Ok(r) => r?,
    };
    if !line.ends_with(b"\n") && line.len() as u64 >= limits.max_request_bytes {
        return write(error_line("request line too long")).await;
    }
    let word = String::from_utf8_lossy(&line);
    let follow = match word.trim() {
        "recent" => false,
        "follow" => true,
        other => {
            let msg = format!("unknown request {other:?} (want recent or follow)");
            return write(error_line(&msg)).await;
        }
    };
    // Subscribe before sending the history, so nothing falls between the two.
    let mut rx = hub.tx.subscribe();
    let recent: Vec<String> = hub
        .recent
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    for l in recent {
        write(format!("{l}\n")).await?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(l) => write(format!("{l}\n")).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                write(format!("{{\"lagged\":{n}}}\n")).await?
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

    use super::*;

    fn short() -> Limits {
        Limits {
            request_timeout: Duration::from_millis(300),
            max_request_bytes: MAX_REQUEST_BYTES,
            max_clients: 4,
            write_timeout: Duration::from_millis(300),
        }
    }

    /// A hub and its socket in a temporary directory, served within `limits`.
    fn server(limits: Limits) -> (tempfile::TempDir, PathBuf, Hub) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = UnixListener::bind(&path).unwrap();
        let hub = Hub::new(EventOutputs::default());
        tokio::spawn(serve_with(listener, hub.clone(), limits));
        (dir, path, hub)
    }

    async fn connect(path: &Path, request: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(request).await.unwrap();
        s
    }

    /// Everything the server sends until it closes (at most 5 s).
    async fn read_all(s: &mut UnixStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closes the connection")
            .ok();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn next_line(r: &mut BufReader<UnixStream>) -> String {
        let mut l = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut l))
            .await
            .expect("a line in time")
            .unwrap();
        l
    }

    #[tokio::test]
    async fn recent_returns_the_published_lines() {
        let (_dir, path, hub) = server(short());
        hub.publish_line(r#"{"n":1}"#.into());
        hub.publish_line(r#"{"n":2}"#.into());
        let mut s = connect(&path, b"recent\n").await;
        assert_eq!(read_all(&mut s).await, "{\"n\":1}\n{\"n\":2}\n");
    }

    #[tokio::test]
    async fn follow_streams_new_lines() {
        let (_dir, path, hub) = server(short());
        hub.publish_line(r#"{"n":1}"#.into());
        let mut r = BufReader::new(connect(&path, b"follow\n").await);
        // The history arrives once the client is subscribed.
        assert_eq!(next_line(&mut r).await, "{\"n\":1}\n");
        hub.publish_line(r#"{"n":2}"#.into());
        hub.publish_line(r#"{"n":3}"#.into());
        assert_eq!(next_line(&mut r).await, "{\"n\":2}\n");
        assert_eq!(next_line(&mut r).await, "{\"n\":3}\n");
    }

    #[tokio::test]
    async fn a_client_without_a_request_line_is_closed_after_the_timeout() {
        let (_dir, path, hub) = server(short());
        hub.publish_line(r#"{"n":1}"#.into());
        let start = Instant::now();
        let mut s = connect(&path, b"").await;
        let got = read_all(&mut s).await;
        let took = start.elapsed();
        assert_eq!(got, "{\"error\":\"no request in time\"}\n");
        assert!(took >= Duration::from_millis(250), "closed after {took:?}");
        // Half a line is no better.
        let mut s = connect(&path, b"foll").await;
        assert_eq!(
            read_all(&mut s).await,
            "{\"error\":\"no request in time\"}\n"
        );
    }

    #[tokio::test]
    async fn overlong_and_unknown_requests_are_refused() {
        let (_dir, path, hub) = server(short());
        hub.publish_line(r#"{"n":1}"#.into());
        let mut s = connect(&path, "x".repeat(1000).as_bytes()).await;
        assert_eq!(
            read_all(&mut s).await,
            "{\"error\":\"request line too long\"}\n"
        );
        let mut s = connect(&path, b"hello\n").await;
        assert_eq!(
            read_all(&mut s).await,
            "{\"error\":\"unknown request \\\"hello\\\" (want recent or follow)\"}\n"
        );
    }

    #[tokio::test]
    async fn over_the_cap_a_client_is_refused_at_once() {
        let (_dir, path, hub) = server(Limits {
            max_clients: 1,
            ..short()
        });
        let mut first = BufReader::new(connect(&path, b"follow\n").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = connect(&path, b"recent\n").await;
        assert_eq!(
            read_all(&mut second).await,
            "{\"error\":\"too many clients\"}\n"
        );
        // The first one is still followed.
        hub.publish_line(r#"{"n":1}"#.into());
        assert_eq!(next_line(&mut first).await, "{\"n\":1}\n");
    }

    #[tokio::test]
    async fn a_follower_that_does_not_read_is_dropped_without_holding_up_the_others() {
        let (_dir, path, hub) = server(short());
        // Subscribed (it has read the history line), then never reads again.
        hub.publish_line(r#"{"n":"start"}"#.into());
        let mut stuck = BufReader::new(connect(&path, b"follow\n").await);
        assert_eq!(next_line(&mut stuck).await, "{\"n\":\"start\"}\n");
        let mut good = BufReader::new(connect(&path, b"follow\n").await);
        assert_eq!(next_line(&mut good).await, "{\"n\":\"start\"}\n");

        // Far more than the stuck client's socket buffers hold (~4 MB).
        let pad = "p".repeat(1000);
        let reader = tokio::spawn(async move {
            loop {
                let l = next_line(&mut good).await;
                if l.contains("\"last\"") {
                    return;
                }
            }
        });
        let start = Instant::now();
        for i in 0..4000 {
            hub.publish_line(format!(r#"{{"n":{i},"pad":"{pad}"}}"#));
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        hub.publish_line(r#"{"n":"last"}"#.into());
        // Publishing never waited for the stuck client ...
        assert!(start.elapsed() < Duration::from_secs(5));
        // ... and the other follower got everything through to the last line.
        tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the good follower reads the last line")
            .unwrap();

        // The stuck one was dropped after the write timeout: draining it ends in EOF (a live
        // follower would never end), without the last line (it never got that far).
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut rest))
            .await
            .expect("the stuck follower was closed")
            .unwrap();
        assert!(!String::from_utf8_lossy(&rest).contains("\"last\""));
    }
}
