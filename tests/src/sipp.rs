//! Real SIP user agents: sipp (Debian's sip-tester) as the carrier's UAS and as the PBX's UAC,
//! run inside the topology's namespaces, and their message traces parsed into per-call facts.
//!
//! The numbers the tests assert come from sipp's own traces (`-trace_msg`), which log every
//! message sipp sends or receives, retransmissions included.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// Set (by the demo's Ctrl-C handler) to make a running UAC stop at once.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The UAC scenario shipped in the repository.
pub fn uac_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp/uac.xml")
}

/// Starts sipp in `ns` with `args`, tracing every message to `trace`, its screen to `screen`.
fn spawn_sipp<A: AsRef<std::ffi::OsStr>>(
    ns: &Netns,
    args: impl IntoIterator<Item = A>,
    trace: &Path,
    screen: &Path,
) -> Child {
    let screen = fs::File::create(screen).expect("screen file");
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .args(["--", "sipp"])
        .args(args)
        .args(["-nostdin", "-trace_msg", "-message_file"])
        .arg(trace)
        .stdin(Stdio::null())
        .stdout(screen.try_clone().expect("fd"))
        .stderr(screen)
        .spawn()
        .expect("start sipp")
}

/// One SIP message from a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TracedMsg {
    pub sent: bool,
    /// Request or status line.
    pub first_line: String,
    pub call_id: String,
    pub cseq: String,
    /// When sipp logged it: seconds since midnight (the trace's `HH:MM:SS.micros`).
    pub at: Option<f64>,
}

impl TracedMsg {
    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&str> {
        let m = self.first_line.split(' ').next()?;
        (!m.starts_with("SIP/")).then_some(m)
    }

    /// The Request-URI of a request.
    pub fn uri(&self) -> Option<&str> {
        self.method()?;
        self.first_line.split(' ').nth(1)
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let mut it = self.first_line.split(' ');
        it.next().filter(|v| v.starts_with("SIP/"))?;
        it.next()?.parse().ok()
    }
}

/// Parses a sipp `-trace_msg` file.
pub fn parse_trace(text: &str) -> Vec<TracedMsg> {
    let mut out = Vec::new();
    for block in text.split("-----------------------------------------------") {
        let mut lines = block.lines();
        // ` 2026-11-30 15:00:53.493967`: the time of day.
        let at = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|t| {
                let mut p = t.split(':');
                let h: f64 = p.next()?.parse().ok()?;
                let m: f64 = p.next()?.parse().ok()?;
                let s: f64 = p.next()?.parse().ok()?;
                Some(h * 3600.0 + m * 60.0 + s)
            });
        let Some(what) = lines.next() else { continue };
        let sent = what.contains("message sent");
        if !sent && !what.contains("message received") {
            continue;
        }
        let mut body = lines.map(str::trim).skip_while(|l| l.is_empty());
        let Some(first_line) = body.next() else {
            continue;
        };
        let mut call_id = String::new();
        let mut cseq = String::new();
        for l in body {
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("call-id:").or(lower.strip_prefix("i:")) {
                call_id = l[l.len() - v.len()..].trim().to_string();
            } else if lower.starts_with("cseq:") {
                cseq = l[5..].trim().to_string();
            }
        }
        out.push(TracedMsg {
            sent,
            first_line: first_line.to_string(),
            call_id,
            cseq,
            at,
        });
    }
    out
}

/// sipp's built-in UAS, answering every INVITE with 180 and 200.
pub struct Uas {
    child: Option<Child>,
    pub trace: PathBuf,
}

impl Uas {
    pub fn start(ns: &Netns, local_ip: &str, dir: &Path, tag: &str) -> Self {
        let trace = dir.join(format!("uas-{tag}.log"));
        let args = ["-sn", "uas", "-i", local_ip, "-p", "5060"];
        let child = spawn_sipp(ns, args, &trace, &dir.join(format!("uas-{tag}.screen")));
        thread::sleep(Duration::from_millis(300));
        Self {
            child: Some(child),
            trace,
        }
    }

    /// Stops the UAS (by the PID we started) and returns its trace.
    pub fn finish(mut self) -> Vec<TracedMsg> {
        self.stop();
        parse_trace(&fs::read_to_string(&self.trace).unwrap_or_default())
    }

    /// The trace so far.
    pub fn trace_now(&self) -> Vec<TracedMsg> {
        parse_trace(&fs::read_to_string(&self.trace).unwrap_or_default())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGUSR1) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Uas {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One call placed by the UAC.
#[derive(Clone, Debug, Default)]
pub struct Call {
    pub call_id: String,
    pub uri: String,
    /// INVITE packets sent, retransmissions included.
    pub invites_sent: u32,
    /// A 200 to the INVITE came back.
    pub answered: bool,
    /// A 200 to the BYE came back: the call completed.
    pub completed: bool,
    /// The final error response to the INVITE, if one came back (a `reject` rule's).
    pub refused: Option<u16>,
    /// Seconds from the first INVITE sent to that response.
    pub refused_after: Option<f64>,
    /// When the first INVITE was sent (seconds since midnight).
    pub first_invite_at: Option<f64>,
}

/// What a UAC run did, from its trace.
#[derive(Debug, Default)]
pub struct UacRun {
    pub calls: Vec<Call>,
    pub screen: String,
}

impl UacRun {
    /// INVITE packets sent per Request-URI.
    pub fn invites_per_uri(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for c in &self.calls {
            *m.entry(c.uri.clone()).or_default() += c.invites_sent;
        }
        m
    }
}

/// The UAC's parameters.
pub struct UacSpec<'a> {
    pub ns: &'a Netns,
    pub local_ip: &'a str,
    pub remote: String,
    pub uris: &'a [String],
    pub calls: u32,
    /// Calls per second.
    pub rate: u32,
    pub dir: &'a Path,
    pub tag: &'a str,
}

/// Runs the UAC to completion (bounded) and parses its trace.
pub fn run_uac(spec: &UacSpec<'_>) -> UacRun {
    let csv = spec.dir.join(format!("calls-{}.csv", spec.tag));
    let mut text = String::from("SEQUENTIAL\n");
    for u in spec.uris {
        text.push_str(u);
        text.push('\n');
    }
    fs::write(&csv, text).expect("write injection file");
    let trace = spec.dir.join(format!("uac-{}.log", spec.tag));
    let screen_path = spec.dir.join(format!("uac-{}.screen", spec.tag));
    let args: Vec<std::ffi::OsString> = vec![
        spec.remote.clone().into(),
        "-sf".into(),
        uac_scenario().into(),
        "-inf".into(),
        csv.clone().into(),
        "-i".into(),
        spec.local_ip.into(),
        "-p".into(),
        "5070".into(),
        "-m".into(),
        spec.calls.to_string().into(),
        "-r".into(),
        spec.rate.to_string().into(),
        // A blocked call gives up after 2.5 s (INVITE sent at 0, 0.5 and 1.5 s).
        "-recv_timeout".into(),
        "2500".into(),
        "-timeout".into(),
        "300s".into(),
    ];
    let mut child = spawn_sipp(spec.ns, args, &trace, &screen_path);
    let deadline = Instant::now() + Duration::from_secs(320);
    loop {
        if child.try_wait().expect("wait for sipp").is_some() {
            break;
        }
        if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sipp UAC did not finish in 320 s");
        }
        thread::sleep(Duration::from_millis(50));
    }
    let msgs = parse_trace(&fs::read_to_string(&trace).unwrap_or_default());
    let mut calls: BTreeMap<String, Call> = BTreeMap::new();
    for m in msgs {
        let c = calls.entry(m.call_id.clone()).or_insert_with(|| Call {
            call_id: m.call_id.clone(),
            ..Default::default()
        });
        match (m.sent, m.method(), m.status()) {
            (true, Some("INVITE"), _) => {
                c.invites_sent += 1;
                c.uri = m.uri().unwrap_or_default().to_string();
                c.first_invite_at = c.first_invite_at.or(m.at);
            }
            (false, _, Some(code @ 400..=699)) if m.cseq.ends_with("INVITE") => {
                c.refused.get_or_insert(code);
                if c.refused_after.is_none() {
                    c.refused_after = c.first_invite_at.zip(m.at).map(|(a, b)| b - a);
                }
            }
            (false, _, Some(200)) if m.cseq.ends_with("INVITE") => c.answered = true,
            (false, _, Some(200)) if m.cseq.ends_with("BYE") => c.completed = true,
            _ => {}
        }
    }
    UacRun {
        calls: calls.into_values().filter(|c| c.invites_sent > 0).collect(),
        screen: fs::read_to_string(&screen_path).unwrap_or_default(),
    }
}

/// Per-call facts from the UAS trace: Call-ID → (Request-URI, methods received).
pub fn uas_calls(trace: &[TracedMsg]) -> BTreeMap<String, (String, Vec<String>)> {
    let mut m: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for t in trace.iter().filter(|t| !t.sent) {
        if let Some(method) = t.method() {
            let e = m.entry(t.call_id.clone()).or_default();
            if method == "INVITE" {
                e.0 = t.uri().unwrap_or_default().to_string();
            }
            e.1.push(method.to_string());
        }
    }
    m
}
