//! The differential test's generator and comparison loop: frames built from the fixture table,
//! the RFC 4475 messages and synthetic INVITEs (wrapped in UDP/TCP, IPv4/IPv6, VLAN tags,
//! fragments, extension headers), mutated, plus random bytes; each run through the loaded
//! program with BPF_PROG_TEST_RUN and through [`crate::model::Model`], verdicts and counter
//! deltas compared. Deterministic: everything comes from one seed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use guard_common::{Counter, GlobalCounters, RuleCounters};
use sipguard::{Filter, Verdict};

use crate::{
    TestRule, fixtures,
    fixtures::Setup,
    load,
    model::{MAX_LINEAR, Model, Outcome},
    packet::{Ext, Pkt, TCP_ACK, TCP_PSH, TCP_SYN, request_with_call_id},
    pcap::{LinkType, write_pcap},
};

/// SplitMix64: small, fast, and the same on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `num / den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// The RFC 4475 torture messages (tests/data/rfc4475), sorted by name.
pub fn rfc4475_messages() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/rfc4475");
    let mut v: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .map(|p| {
            let m = fs::read(&p).expect("read message");
            (p, m)
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, m)| m).collect()
}

/// Prefixes of the dialled numbers: the rules' own, their neighbours, international prefixes.
const DIALS: &[&str] = &[
    "+232", "+23222", "+2322", "+23", "+881", "+8816", "+44", "+4420", "+0990", "0990", "099",
    "+1876", "+187", "+1212", "+33", "+", "00232", "0023222", "011232", "011881", "010232",
    "0011232", "001144", "0044", "00", "011", "0", "",
];
const SCHEMES: &[&str] = &[
    "sip:", "sips:", "tel:", "SIP:", "Tel:", "sIpS:", "http:", "sip", "<sip:", "", "sip: ",
];
const ENDS: &[&str] = &[
    "@gw.example.net",
    "@gw.example.net;user=phone",
    ";npdi@gw",
    ";isub=1;phone-context=+232@gw",
    ";phone-context=+44",
    ";phone-context=example.com",
    ";phone-context=+2",
    "",
    ">",
    "?x=y",
    ";isub=1",
    "abc@h",
    "@",
];
const CALL_IDS: &[&str] = &[
    "a84b4c76e66710@192.0.2.10",
    "call-1@example",
    "call-2@example",
    "call-3@example",
    "x",
];

/// A random digit string with separators and escapes sprinkled in.
fn digits(r: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for _ in 0..n {
        match r.below(20) {
            0 => s.push(*r.pick(&['-', '.', '(', ')'])),
            1 => {
                let _ = write!(s, "%3{}", r.below(10));
            }
            2 => s.push_str(r.pick::<&str>(&["%2B", "%2b", "%2D", "%2E", "%41", "%"])),
            _ => s.push((b'0' + r.below(10) as u8) as char),
        }
    }
    s
}

/// A random Request-URI in one of the forms the scanner knows (and some it does not).
fn uri(r: &mut Rng) -> String {
    let mut u = (*r.pick(SCHEMES)).to_string();
    if r.chance(1, 20) {
        u.push_str(&"-".repeat(r.below(1200)));
    }
    u.push_str(r.pick::<&str>(DIALS));
    let n = r.below(20);
    u.push_str(&digits(r, n));
    if r.chance(1, 10) {
        u.push_str(&format!(";{}", "isub=1;".repeat(r.below(200))));
    }
    u.push_str(r.pick::<&str>(ENDS));
    u
}

/// A SIP message: mostly INVITEs, some other requests and responses, maybe a To tag, maybe
/// keep-alives before it.
fn message(r: &mut Rng, rfc: &[Vec<u8>]) -> Vec<u8> {
    let mut m = match r.below(10) {
        0 => r.pick(rfc).clone(),
        1 => b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n".to_vec(),
        2 => {
            let m = *r.pick(&["OPTIONS", "INVITEX", "invite", "REGISTER"]);
            request_with_call_id(m, &uri(r), "x")
        }
        _ => {
            let u = uri(r);
            request_with_call_id("INVITE", &u, r.pick::<&str>(CALL_IDS))
        }
    };
    // A re-INVITE: a To tag.
    if r.chance(1, 8)
        && let Some(p) = m.windows(4).position(|w| w == b"To: ")
        && let Some(e) = m[p..].windows(2).position(|w| w == b"\r\n")
    {
        m.splice(p + e..p + e, b";tag=abc".iter().copied());
    }
    if r.chance(1, 10) {
        let n = r.below(700);
        let ka: Vec<u8> = (0..n).map(|_| *r.pick(b"\r\n")).collect();
        m.splice(0..0, ka);
    }
    match r.below(10) {
        0 => m.truncate(r.below(m.len() + 1)),
        // Around the limits: the tiny-fragment payload (64) and the window (1,024), counted
        // after the keep-alives.
        1 => {
            let ka = guard_common::keepalive_len(&m);
            let limit = *r.pick(&[64, 1024]);
            m.truncate(ka + limit + r.below(9) - 4);
        }
        _ => {}
    }
    m
}

/// Wraps `payload` in a random envelope.
fn envelope(r: &mut Rng, payload: &[u8]) -> Vec<u8> {
    let mut p = if r.chance(1, 2) {
        let mut p = Pkt::v4(payload);
        if r.chance(1, 6) {
            p = p.ipv4_options(4 * r.below(11));
        }
        if r.chance(1, 5) {
            p = p.fragment(
                if r.chance(3, 4) {
                    0
                } else {
                    r.below(300) as u16
                },
                r.chance(1, 2),
            );
        }
        if r.chance(1, 30) {
            p = p.ihl(r.below(16) as u8);
        }
        if r.chance(1, 30) {
            p = p.proto(r.byte());
        }
        p
    } else {
        let mut p = Pkt::v6(payload);
        for _ in 0..r.below(8).saturating_sub(4) {
            p = p.ext(match r.below(5) {
                0 => Ext::HopByHop,
                1 => Ext::Routing,
                2 => Ext::DestOpts,
                _ => Ext::Fragment {
                    offset: if r.chance(3, 4) {
                        0
                    } else {
                        r.below(300) as u16
                    },
                    more: r.chance(1, 2),
                },
            });
        }
        p
    };
    for _ in 0..r.below(5).saturating_sub(2) {
        p = p.vlan(*r.pick(&[0x8100, 0x88a8]));
    }
    if r.chance(1, 4) {
        p = p.tcp(
            *r.pick(&[TCP_ACK | TCP_PSH, TCP_SYN, TCP_ACK]),
            4 * r.below(11),
        );
    }
    if r.chance(1, 8) {
        p = p.dport(*r.pick(&[5080, 5061, 80, 0, 65535]));
    }
    if r.chance(1, 10) {
        p = p.ip_len_delta(r.below(1200) as i32 - 600);
    }
    if r.chance(1, 10) {
        p = p.udp_len(r.below(2000) as u16);
    }
    if r.chance(1, 30) {
        p = p.ethertype(*r.pick(&[0x0806, 0x86dd, 0x0800, 0x8100, 0x88a8, 0x9100]));
    }
    let mut f = p.build();
    if r.chance(1, 10) {
        f.truncate(14 + r.below(f.len()));
    }
    f
}

/// Offsets where the header fields a mutation aims at usually are (untagged, one tag, two tags).
const FIELDS: &[usize] = &[
    12, 13, 16, 17, 18, 19, 20, 21, // EtherTypes, tags
    14, 15, 16, 17, 20, 21, 23, // IPv4: version/IHL, total length, fragments, protocol
    18, 19, 20, 25, 27, // one tag in: IPv4 fragments, protocol
    34, 35, 36, 37, 38, 39, 40, 41, 46, // UDP/TCP after IPv4: ports, length, data offset
    54, 55, 56, 57, 58, 59, 60, 61, 66, // after IPv6: ports, lengths, ext headers
];

/// Applies 1 to 4 random mutations.
fn mutate(r: &mut Rng, f: &mut Vec<u8>) {
    for _ in 0..1 + r.below(4) {
        if f.is_empty() {
            break;
        }
        let at = r.below(f.len());
        match r.below(8) {
            0 => f[at] ^= 1 << r.below(8),
            1 => f[at] = r.byte(),
            2 => f.insert(at, r.byte()),
            3 => {
                let n = 1 + r.below(8).min(f.len() - at - 1);
                f.drain(at..at + n);
            }
            4 => f.truncate(at),
            5 | 6 => {
                let i = *r.pick(FIELDS);
                if i < f.len() {
                    f[i] = if r.chance(1, 2) {
                        r.byte()
                    } else {
                        f[i] ^ (1 << r.below(8))
                    };
                }
            }
            _ => {
                // A length or next-header lie at a field-like offset: a small value.
                let i = *r.pick(FIELDS);
                if i < f.len() {
                    f[i] = *r.pick(&[0, 1, 5, 6, 7, 8, 17, 43, 44, 60, 0x45, 0xff]);
                }
            }
        }
    }
}

/// Frame `i` of the run with `seed`: deterministic in (seed, i).
pub fn frame(seed: u64, i: u64, corpus: &[Vec<u8>], rfc: &[Vec<u8>]) -> Vec<u8> {
    let mut r = Rng::new(seed ^ i.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut f = match r.below(20) {
        0..=3 => r.pick(corpus).clone(),
        4 => {
            // Random bytes, sometimes behind a plausible Ethernet header.
            let n = 14 + r.below(200);
            let mut f: Vec<u8> = (0..n).map(|_| r.byte()).collect();
            if r.chance(1, 2) {
                f[12..14].copy_from_slice(&r.pick(&[0x0800u16, 0x86dd, 0x8100]).to_be_bytes());
            }
            f
        }
        _ => {
            let m = message(&mut r, rfc);
            envelope(&mut r, &m)
        }
    };
    if r.chance(1, 2) {
        mutate(&mut r, &mut f);
    }
    // BPF_PROG_TEST_RUN takes at least an Ethernet header; the model assumes a linear frame.
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f.truncate(MAX_LINEAR);
    f
}

/// Frames run and the disagreements found.
#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    pub agreements: u64,
    /// Disagreement kind (`verdict`, `counter:<name>`, `rule`) → frames.
    pub kinds: BTreeMap<String, u64>,
    /// The first disagreements, described.
    pub samples: Vec<String>,
    pub secs: f64,
    /// Frames per kernel verdict (drop, pass).
    pub drops: u64,
    pub invites: u64,
    /// Global counter → frames that moved it in the kernel (what the frames reached).
    pub coverage: BTreeMap<&'static str, u64>,
}

impl Report {
    pub fn disagreements(&self) -> u64 {
        self.frames - self.agreements
    }

    pub fn summary(&self, seed: u64) -> String {
        format!(
            "differential: seed {seed:#x}: {} frames, {} agree, {} disagree {:?}; {} dropped, {} INVITEs; {:.1} s, {:.0} frames/s",
            self.frames,
            self.agreements,
            self.disagreements(),
            self.kinds,
            self.drops,
            self.invites,
            self.secs,
            self.frames as f64 / self.secs
        )
    }
}

/// The kernel's side of one frame: verdict and counter deltas.
struct Kernel {
    filter: Filter,
    global: GlobalCounters,
    rules: BTreeMap<u32, RuleCounters>,
}

impl Kernel {
    fn new(setup: Setup, rules: &[TestRule]) -> Self {
        let filter = load(&setup.settings(), rules);
        let global = filter.global_counters().expect("counters");
        let rules = rules
            .iter()
            .map(|r| (r.id, filter.rule_counters(r.id).expect("rule counters")))
            .collect();
        Self {
            filter,
            global,
            rules,
        }
    }

    fn run(&mut self, frame: &[u8], rule_may_move: bool) -> Outcome {
        let verdict = self.filter.test_run(frame).expect("test run");
        let g = self.filter.global_counters().expect("counters");
        let mut counters = [0; Counter::COUNT];
        for c in Counter::ALL {
            counters[c as usize] = g.get(c).wrapping_sub(self.global.get(c));
        }
        self.global = g;
        // A match always moves calls, retransmissions or reinvites (call accounting is on), so
        // the rule counters are read only when one of those moved or the model expects a match.
        let moved = [Counter::Calls, Counter::Retransmissions, Counter::Reinvites]
            .iter()
            .any(|&c| counters[c as usize] != 0);
        let mut rule = None;
        if moved || rule_may_move {
            for (&id, old) in self.rules.iter_mut() {
                let new = self.filter.rule_counters(id).expect("rule counters");
                if new != *old {
                    let d = RuleCounters {
                        matched: new.matched - old.matched,
                        dropped: new.dropped - old.dropped,
                        would_drop: new.would_drop - old.would_drop,
                        calls: new.calls - old.calls,
                        reinvites: new.reinvites - old.reinvites,
                        over_limit: new.over_limit - old.over_limit,
                        would_limit: new.would_limit - old.would_limit,
                    };
                    *old = new;
                    rule = Some((id, d));
                }
            }
        }
        Outcome {
            verdict,
            counters,
            rule,
        }
    }
}

/// Frames per loaded filter: the call table (an LRU of 65,536 entries) stays far from full, so
/// the model's set of seen Call-IDs is the kernel's; each chunk runs under the next setup.
pub const CHUNK: u64 = 10_000;

/// Where disagreeing frames are written.
pub fn failure_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("diff-failures")
}

/// Runs `frames` frames from `seed` through the kernel and the model.
pub fn run(seed: u64, frames: u64) -> Report {
    let rules = fixtures::rules();
    let rfc = rfc4475_messages();
    let corpus: Vec<Vec<u8>> = fixtures::cases().into_iter().map(|c| c.frame).collect();
    let mut report = Report::default();
    let start = Instant::now();
    let mut i = 0;
    while i < frames {
        let setup = Setup::ALL[((i / CHUNK) as usize) % Setup::ALL.len()];
        let mut kernel = Kernel::new(setup, &rules);
        let mut model = Model::new(&setup.settings(), &rules);
        let end = (i + CHUNK).min(frames);
        while i < end {
            let f = frame(seed, i, &corpus, &rfc);
            let want = model.predict(&f);
            let got = kernel.run(&f, want.rule.is_some());
            report.frames += 1;
            report.drops += u64::from(got.verdict == Verdict::Drop);
            report.invites += got.counters[Counter::Invites as usize];
            for c in Counter::ALL {
                if got.counters[c as usize] != 0 {
                    *report.coverage.entry(c.name()).or_default() += 1;
                }
            }
            let kinds = want.differences(&got);
            if kinds.is_empty() {
                report.agreements += 1;
            } else {
                for k in &kinds {
                    *report.kinds.entry(k.clone()).or_default() += 1;
                }
                if report.samples.len() < 20 {
                    report
                        .samples
                        .push(describe(seed, i, setup, &f, &want, &got, &kinds));
                }
            }
            i += 1;
        }
    }
    report.secs = start.elapsed().as_secs_f64();
    report
}

fn describe(
    seed: u64,
    i: u64,
    setup: Setup,
    f: &[u8],
    want: &Outcome,
    got: &Outcome,
    kinds: &[String],
) -> String {
    let dir = failure_dir();
    let path = dir.join(format!("seed-{seed:x}-frame-{i}.pcap"));
    let written = fs::create_dir_all(&dir)
        .and_then(|()| write_pcap(&path, LinkType::Ethernet, &[f.to_vec()]))
        .map_or_else(
            |e| format!("(pcap not written: {e})"),
            |()| path.display().to_string(),
        );
    let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "seed {seed:#x} frame {i} ({setup:?}): {kinds:?}\n  model:  {:?} [{}] rule {:?}\n  kernel: {:?} [{}] rule {:?}\n  pcap: {written}\n  hex: {hex}",
        want.verdict,
        want.moved(),
        want.rule,
        got.verdict,
        got.moved(),
        got.rule,
    )
}
