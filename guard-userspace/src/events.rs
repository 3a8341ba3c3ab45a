//! Drop events: the kernel sends one per dropped or would-drop *call* (not per retransmission),
//! within a per-CPU token bucket. The daemon decodes them into JSON lines for a SIEM (a file
//! and/or stdout) and serves them on a Unix socket, where `sipguard events [--follow]` reads
//! them without restarting the daemon.

use std::{
    collections::{BTreeMap, VecDeque},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use guard_common::{Action, Domain, EVENT_DROP, Endpoint, Event, Number};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast,
};
use tracing::{info, warn};

use crate::{
    cli::{boot_ns_to_system, rfc3339},
    rules::{Prefix, action_name},
};

/// Events kept for `sipguard events` without `--follow`.
const RECENT: usize = 256;

/// One decoded event, as written to the JSON lines output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: String,
    pub iface: String,
    /// `drop` or `would_drop`.
    pub verdict: String,
    pub src: String,
    pub dst: String,
    pub vlan: u16,
    /// The normalised number (`+232...`, or a national dial string), at most 30 digits.
    pub number: String,
    pub rule: String,
    pub rule_id: u32,
    pub action: String,
}

fn endpoint(e: &Endpoint) -> String {
    let b = guard_common::addr_bytes(&e.addr);
    let ip: IpAddr = if e.family == 4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    };
    std::net::SocketAddr::new(ip, e.port).to_string()
}

/// Decodes a raw ring-buffer record.
pub fn decode(bytes: &[u8], iface: &str, rules: &BTreeMap<u32, Prefix>) -> Option<EventRecord> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: the length is checked; Event is plain data, read unaligned.
    let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let n = Number {
        hi: ev.number_hi,
        lo: ev.number_lo,
        len: ev.number_len,
        plus: false,
        overflow: false,
    };
    let digits: String = (0..n.len as usize)
        .filter_map(|i| n.digit(i))
        .map(|d| char::from(b'0' + d))
        .collect();
    let number = if ev.domain == Domain::International as u8 {
        format!("+{digits}")
    } else {
        digits
    };
    Some(EventRecord {
        time: rfc3339(boot_ns_to_system(ev.time_ns)),
        iface: iface.to_string(),
        verdict: if ev.verdict == EVENT_DROP {
            "drop".into()
        } else {
            "would_drop".into()
        },
        src: endpoint(&ev.src),
        dst: endpoint(&ev.dst),
        vlan: ev.vlan,
        number,
        rule: rules
            .get(&ev.rule_id)
            .map_or_else(|| format!("id {}", ev.rule_id), |p| p.to_string()),
        rule_id: ev.rule_id,
        action: Action::from_u8(ev.action)
            .map_or("?", action_name)
            .to_string(),
    })
}

/// Where events go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    pub file: Option<PathBuf>,
    pub stdout: bool,
}

/// The daemon's event fan-out: outputs, recent history and live subscribers.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<String>,
    recent: Arc<Mutex<VecDeque<String>>>,
    outputs: Outputs,
}

impl Hub {
    pub fn new(outputs: Outputs) -> Self {
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
            let id = if item.len() >= std::mem::size_of::<Event>() {
                // SAFETY: length checked; plain data.
                let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                ev.rule_id
            } else {
                continue;
            };
            let known = rules.lock().map(|r| r.contains_key(&id)).unwrap_or(false);
            if !known
                && let Ok(m) = crate::maps::Maps::from_pins(&pin_dir)
                && let (Ok(live), Ok(mut r)) = (m.rules(), rules.lock())
            {
                *r = live.into_iter().map(|l| (l.value.id, l.prefix)).collect();
            }
            let rec = rules.lock().ok().and_then(|r| decode(&item, &iface, &r));
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

/// `sipguard events [--follow] [--json]`: the client side.
pub fn follow(state_dir: &Path, follow: bool, json_out: bool) -> Result<()> {
    use std::io::{BufRead as _, BufReader as StdBufReader, Write as _};
    let path = socket_path(state_dir);
    let mut s = std::os::unix::net::UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot connect to {}: is `sipguard run` running (with this --state-dir)?",
            path.display()
        )
    })?;
    s.write_all(if follow { b"follow\n" } else { b"recent\n" })?;
    let mut out = std::io::stdout().lock();
    for line in StdBufReader::new(s).lines() {
        let line = line?;
        if json_out {
            writeln!(out, "{line}")?;
        } else if let Ok(r) = serde_json::from_str::<EventRecord>(&line) {
            writeln!(
                out,
                "{} {:<10} {} -> {} {} rule {} ({}) vlan {} iface {}",
                r.time, r.verdict, r.src, r.dst, r.number, r.rule, r.action, r.vlan, r.iface
            )?;
        } else {
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    Ok(())
}
