//! Driving the real `sipguard` binary: an instance with its own pin root and state directory
//! (so tests never touch /sys/fs/bpf/sipguard or each other), a daemon started inside a test
//! namespace, and UDP SIP traffic between the two ends of a veth pair.
//!
//! Everything is cleaned up on drop, also when a test fails: the daemon is killed by the PID
//! this harness started (never by name), then the pins and the state directory are removed.

use std::{
    collections::BTreeSet,
    fs,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    netns::{Netns, RX4, TX4},
    packet::request_with_call_id,
};

/// The `sipguard` binary of this build (`cargo xtask test` builds it first).
pub fn sipguard_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/release/deps/<test> (tests) or target/release/<bin> (the demo) -> target/release
    let dir = exe.parent().expect("executable directory");
    let bin = [dir.join("sipguard"), dir.join("../sipguard")]
        .into_iter()
        .find(|b| b.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "no sipguard binary next to {}: build guard-userspace first (cargo xtask test does)",
            exe.display()
        )
    })
}

/// The result of one CLI call.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// How [`Instance::launch`] starts the daemon.
#[derive(Default)]
pub struct Launch {
    /// A command the daemon runs under (e.g. setpriv and its arguments, ending in `--`).
    pub wrapper: Vec<String>,
    /// Give it JOURNAL_STREAM naming its log, as systemd does for a unit's stderr.
    pub journal: bool,
    /// Leave NO_COLOR unset (the daemon must still write no colours into a file).
    pub colour_allowed: bool,
    /// More environment (e.g. NOTIFY_SOCKET, as systemd gives a Type=notify unit).
    pub env: Vec<(String, String)>,
}

/// One sipguard installation: pin root, state directory, and at most one daemon.
pub struct Instance {
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    pub dir: PathBuf,
    daemon: Option<Child>,
    pub log: PathBuf,
    starts: u32,
}

impl Instance {
    pub fn new(tag: &str) -> Self {
        let id = format!("sgt-{}-{tag}", std::process::id());
        let pin_root = PathBuf::from("/sys/fs/bpf").join(&id);
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&pin_root);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test directory");
        Self {
            pin_root,
            state_dir: dir.join("state"),
            log: dir.join("daemon.log"),
            dir,
            daemon: None,
            starts: 0,
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(sipguard_bin());
        c.env("SIPGUARD_PIN_ROOT", &self.pin_root)
            .env("SIPGUARD_STATE_DIR", &self.state_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        c
    }

    /// Runs `sipguard ARGS` and returns its outcome.
    pub fn cli(&self, args: &[&str]) -> Run {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sipguard")
            .into()
    }

    /// Runs `sipguard ARGS` inside `ns` (network namespace only).
    pub fn cli_in(&self, ns: &Netns, args: &[&str]) -> Run {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .arg(sipguard_bin())
            .env("SIPGUARD_PIN_ROOT", &self.pin_root)
            .env("SIPGUARD_STATE_DIR", &self.state_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run sipguard in a namespace")
            .into()
    }

    /// Runs `sipguard ARGS` and fails the test unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.cli(args);
        assert!(r.ok, "sipguard {args:?} failed:\n{}", r.stderr);
        r.stdout
    }

    /// Writes a file in the test directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).expect("write test file");
        fs::rename(&tmp, &p).expect("rename test file");
        p
    }

    /// Starts `sipguard run` inside `ns` (network namespace only, via nsenter, so bpffs and
    /// the pins stay shared) and waits until every interface is attached.
    pub fn start(&mut self, ns: &Netns, ifaces: &[&str], config: &Path, extra: &[&str]) {
        self.start_with(ns, ifaces, Some(config), extra)
    }

    /// Like [`Instance::start`]; without a config, sipguard uses /etc/sipguard/sipguard.toml or
    /// its built-in defaults.
    pub fn start_with(
        &mut self,
        ns: &Netns,
        ifaces: &[&str],
        config: Option<&Path>,
        extra: &[&str],
    ) {
        self.launch(ns, ifaces, config, extra, &Launch::default())
    }

    /// Starts `sipguard run` as [`Instance::start_with`] does, the way `how` says (under a
    /// wrapper such as setpriv, as journald's stream, in colour if it wanted).
    pub fn launch(
        &mut self,
        ns: &Netns,
        ifaces: &[&str],
        config: Option<&Path>,
        extra: &[&str],
        how: &Launch,
    ) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", ns.name))
            .arg("--")
            .args(how.wrapper.iter())
            .arg(sipguard_bin())
            .env("SIPGUARD_PIN_ROOT", &self.pin_root)
            .env("SIPGUARD_STATE_DIR", &self.state_dir)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .arg("run");
        if !how.colour_allowed {
            c.env("NO_COLOR", "1");
        }
        for (k, v) in &how.env {
            c.env(k, v);
        }
        if how.journal {
            use std::os::unix::fs::MetadataExt as _;
            let m = log.metadata().expect("log metadata");
            c.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        }
        if let Some(config) = config {
            c.arg("--config").arg(config);
        }
        for i in ifaces {
            c.args(["--iface", i]);
        }
        c.args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.daemon = Some(c.spawn().expect("start sipguard run"));
        self.starts += 1;
        let want = self.starts;
        // Bounded wait: the daemon logs one "sipguard running" line per start.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches("sipguard running").count() as u32 >= want {
                return;
            }
            if let Some(st) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                self.daemon = None;
                panic!("sipguard run exited ({st}) before it was running:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "sipguard run did not come up in 20 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// Sends `sig` to the daemon this instance started.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of the child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill {sig}: {}", std::io::Error::last_os_error());
    }

    /// Sends `sig` and waits (bounded) for the daemon to exit.
    pub fn stop(&mut self, sig: i32) {
        self.signal(sig);
        let mut child = self.daemon.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("wait").is_some() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sipguard did not exit within 10 s of signal {sig}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the daemon log has `n` lines containing `needle`.
    pub fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.matches(needle).count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {n}x `{needle}` in the daemon log within 10 s:\n{text}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats --json is JSON")
    }

    /// Counters of the rule for `prefix`: (matched, dropped, would_drop).
    pub fn rule_stats(&self, prefix: &str) -> Option<(u64, u64, u64)> {
        let s = self.stats();
        s["rules"].as_array()?.iter().find_map(|r| {
            (r["prefix"] == prefix).then(|| {
                (
                    r["matched"].as_u64().unwrap_or(0),
                    r["dropped"].as_u64().unwrap_or(0),
                    r["would_drop"].as_u64().unwrap_or(0),
                )
            })
        })
    }

    /// `rules list --json` as (prefix, action) pairs.
    pub fn rules(&self) -> Vec<(String, String)> {
        self.ok(&["rules", "list", "--json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("rules list JSON line");
                (
                    v["prefix"].as_str().unwrap_or_default().to_string(),
                    v["action"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Removing the pins detaches whatever link is left (nobody holds it any more).
        if self.pin_root.exists()
            && let Err(e) = fs::remove_dir_all(&self.pin_root)
        {
            eprintln!("cleanup {}: {e}", self.pin_root.display());
        }
        if std::env::var_os("SIPGUARD_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A destination the traffic generator dials, and whether its INVITEs must arrive.
#[derive(Clone, Debug)]
pub struct Dest {
    pub tag: &'static str,
    pub uri: &'static str,
    pub arrives: bool,
}

/// Continuous UDP SIP traffic from the `tx` namespace to RX4:5060 in `rx`: one INVITE per
/// destination every `interval`, round robin, each with a unique Call-ID `tag-seq`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    sender: Option<thread::JoinHandle<Vec<(String, bool)>>>,
    receiver: Option<thread::JoinHandle<BTreeSet<String>>>,
}

/// What a traffic run saw.
pub struct Seen {
    pub sent: Vec<(String, bool)>,
    pub received: BTreeSet<String>,
}

impl Seen {
    /// Call-IDs that must not have arrived but did.
    pub fn leaked(&self) -> Vec<&String> {
        self.sent
            .iter()
            .filter(|(id, arrives)| !arrives && self.received.contains(id))
            .map(|(id, _)| id)
            .collect()
    }

    /// Call-IDs that must have arrived but did not.
    pub fn lost(&self) -> Vec<&String> {
        self.sent
            .iter()
            .filter(|(id, arrives)| *arrives && !self.received.contains(id))
            .map(|(id, _)| id)
            .collect()
    }

    pub fn sent_to(&self, tag: &str) -> usize {
        self.sent
            .iter()
            .filter(|(id, _)| id.starts_with(&format!("{tag}-")))
            .count()
    }
}

/// Binds the receiver in `rx` and makes sure datagrams get through (ARP warm-up), bounded.
pub fn receiver_socket(tx: &Netns, rx: &Netns) -> UdpSocket {
    let sock = rx.run(|| UdpSocket::bind(format!("{RX4}:5060")).expect("bind receiver"));
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let sender = tx.run(|| UdpSocket::bind(format!("{TX4}:0")).expect("bind sender"));
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        let _ = sender.send_to(
            b"OPTIONS sip:warmup SIP/2.0\r\nCall-ID: warmup\r\n\r\n",
            format!("{RX4}:5060"),
        );
        if sock.recv(&mut buf).is_ok() {
            // Drain any further warm-ups.
            while sock.recv(&mut buf).is_ok() {}
            return sock;
        }
    }
    panic!("warm-up datagrams never arrived");
}

fn call_id(payload: &[u8]) -> Option<String> {
    String::from_utf8_lossy(payload)
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .map(|s| s.trim().to_string())
}

impl Traffic {
    pub fn start(tx: &Netns, rx: &Netns, dests: Vec<Dest>, interval: Duration) -> Self {
        let sock = receiver_socket(tx, rx);
        let sender = tx.run(|| UdpSocket::bind(format!("{TX4}:0")).expect("bind sender"));
        let stop = Arc::new(AtomicBool::new(false));
        let done_sending = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(BTreeSet::new()));
        let receiver = {
            let done = done_sending.clone();
            let received = received.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut quiet_since = None;
                loop {
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            quiet_since = None;
                            if let Some(id) = call_id(&buf[..n]) {
                                received.lock().expect("lock").insert(id);
                            }
                        }
                        Err(_) => {
                            if done.load(Ordering::SeqCst) {
                                let since = *quiet_since.get_or_insert_with(Instant::now);
                                if since.elapsed() > Duration::from_millis(500) {
                                    break;
                                }
                            }
                        }
                    }
                }
                received.lock().expect("lock").clone()
            })
        };
        let s = stop.clone();
        let sender = thread::spawn(move || {
            let mut sent = Vec::new();
            let mut seq = 0u64;
            // Bounded: at most 10 minutes of traffic whatever the test does.
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut next = Instant::now();
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                for d in &dests {
                    let id = format!("{}-{seq}", d.tag);
                    let msg = request_with_call_id("INVITE", d.uri, &id);
                    if sender.send_to(&msg, format!("{RX4}:5060")).is_ok() {
                        sent.push((id, d.arrives));
                    }
                }
                seq += 1;
                next += interval;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
            }
            done_sending.store(true, Ordering::SeqCst);
            sent
        });
        Self {
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Stops sending, waits for the last datagrams, and returns what was sent and received.
    pub fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .sender
            .take()
            .expect("sender")
            .join()
            .expect("sender thread");
        let received = self
            .receiver
            .take()
            .expect("receiver")
            .join()
            .expect("receiver thread");
        Seen { sent, received }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
    }
}

/// Sends one INVITE per URI (Call-ID `tag-i`) and returns the Call-IDs that arrived.
pub fn burst(tx: &Netns, rx_sock: &UdpSocket, tag: &str, uri: &str, n: usize) -> BTreeSet<String> {
    let sender = tx.run(|| UdpSocket::bind(format!("{TX4}:0")).expect("bind sender"));
    for i in 0..n {
        let msg = request_with_call_id("INVITE", uri, &format!("{tag}-{i}"));
        sender.send_to(&msg, format!("{RX4}:5060")).expect("send");
        thread::sleep(Duration::from_millis(1));
    }
    let mut got = BTreeSet::new();
    let mut buf = [0u8; 4096];
    let mut quiet = Instant::now();
    let start = Instant::now();
    while quiet.elapsed() < Duration::from_millis(400) && start.elapsed() < Duration::from_secs(5) {
        if let Ok(n) = rx_sock.recv(&mut buf) {
            if let Some(id) = call_id(&buf[..n]) {
                got.insert(id);
            }
            quiet = Instant::now();
        }
    }
    got.retain(|id| id.starts_with(&format!("{tag}-")));
    got
}

/// `GET /metrics` from the daemon's default endpoint (127.0.0.1:9960), inside `ns`.
pub fn scrape_metrics(ns: &Netns) -> String {
    ns.run(|| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9960").expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}
