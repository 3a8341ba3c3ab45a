//! Drop events: the kernel sends one per dropped or would-drop *call* (not per retransmission),
//! within a per-CPU token bucket. The daemon decodes them into JSON lines for a SIEM (a file
//! and/or stdout) and serves them on a Unix socket, where `sipguard events [--follow]` reads
//! them without restarting the daemon.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

use crate::{
    config::EventOutputs,
    kernel::maps::Maps,
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
    outputs: EventOutputs,
}

impl Hub {
    pub fn new(outputs: EventOutputs) -> Self {
        Self {
            tx: broadcast::channel(1024).0,
            recent: Arc::new(Mutex::new(VecDeque::with_capacity(RECENT))),
            outputs,
        }
    }

    fn publish(&self, rec: &EventRecord) {
        let Ok(line) = serde_json::to_string(rec) else {
            return;
        };
        if self.outputs.stdout {
            println!("{line}");
        }
        if let Some(path) = &self.outputs.file {
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
            let rec = rules
                .lock()
                .ok()
                .and_then(|r| event::decode(&item, &iface, &r));
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

/// Serves `sipguard events`: a client sends `recent` or `follow` and gets JSON lines.
pub async fn serve(path: PathBuf, hub: Hub) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    info!(socket = %path.display(), "serving `sipguard events`");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let _ = client(stream, hub).await;
        });
    }
}

async fn client(stream: UnixStream, hub: Hub) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd).read_line(&mut line).await?;
    let follow = line.trim() == "follow";
    // Subscribe before sending the history, so nothing falls between the two.
    let mut rx = hub.tx.subscribe();
    let recent: Vec<String> = hub
        .recent
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    for l in recent {
        wr.write_all(format!("{l}\n").as_bytes()).await?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        match rx.recv().await {
            Ok(l) => wr.write_all(format!("{l}\n").as_bytes()).await?,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                wr.write_all(format!("{{\"lagged\":{n}}}\n").as_bytes())
                    .await?
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
