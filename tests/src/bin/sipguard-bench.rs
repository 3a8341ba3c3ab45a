//! `cargo xtask bench`: ns per packet through BPF_PROG_TEST_RUN for the fixture frames, with 250
//! country-code rules and with 100k operator prefixes, each as a ratio to an empty XDP program
//! measured in the same run. Not a test: it asserts only that verdicts are the expected ones.

use std::process::ExitCode;

use guard_common::{Action, programs};
use sipguard::{Filter, Rule, Verdict};
use sipguard_tests::{
    fixtures::{BLOCKED_URI, Setup, case_named},
    load,
    packet::{Pkt, request_with_call_id},
};

/// Rows: (label, fixture name, expected verdict).
const ROWS: &[(&str, &str, Verdict)] = &[
    (
        "non-SIP frame (UDP 5061)",
        "l4/not-a-sip-port",
        Verdict::Pass,
    ),
    ("SIP OPTIONS", "sip/options", Verdict::Pass),
    ("allowed INVITE", "uri/allowed-international", Verdict::Pass),
    (
        "blocked INVITE (call accounting on; a retransmission after the first run)",
        "l2/eth-ipv4",
        Verdict::Drop,
    ),
];

/// A small deterministic generator (xorshift), so every run benchmarks the same rule set.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 250 country-code style rules: +232 block with its +23222 exception, then 248 other 3-digit
/// codes (never a prefix of the allowed destination +33...).
fn country_rules() -> Vec<Rule> {
    let mut rules = vec![
        Rule::new("+232", Action::Block, 0).unwrap(),
        Rule::new("+23222", Action::Allow, 1).unwrap(),
    ];
    let mut code = 200u32;
    while rules.len() < 250 {
        if code != 232 && !(330..340).contains(&code) {
            let action = if code.is_multiple_of(3) {
                Action::Monitor
            } else {
                Action::Block
            };
            rules.push(Rule::new(&format!("+{code}"), action, rules.len() as u32).unwrap());
        }
        code += 1;
    }
    rules
}

/// The country rules plus operator prefixes up to `total`: random 6- to 9-digit prefixes under
/// random country codes, skipping anything under +33 (the allowed destination).
fn operator_rules(total: usize) -> Vec<Rule> {
    let mut rules = country_rules();
    let mut seen: std::collections::BTreeSet<String> =
        rules.iter().map(|r| r.prefix.to_string()).collect();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    while rules.len() < total {
        let len = 6 + (rng.next() % 4) as usize;
        let mut p = String::from("+");
        for i in 0..len {
            let d = (rng.next() % 10) as u8;
            p.push(char::from(b'0' + if i == 0 && d == 0 { 4 } else { d }));
        }
        if p.starts_with("+33") || !seen.insert(p.clone()) {
            continue;
        }
        rules.push(Rule::new(&p, Action::Block, rules.len() as u32).unwrap());
    }
    rules
}

fn best_ns(
    f: &Filter,
    program: &'static str,
    frame: &[u8],
    repeat: u32,
    rounds: u32,
) -> (u32, f64) {
    let mut best = f64::MAX;
    let mut rc = 0;
    for _ in 0..rounds {
        let (r, ns) = f.run(program, frame, repeat).expect("test run");
        rc = r;
        best = best.min(ns);
    }
    (rc, best)
}

/// `--profile FIXTURE`: runs one fixture frame through the filter (250 rules) for ten seconds,
/// for `perf record` to sample the program's functions.
fn profile(fixture: &str) -> ExitCode {
    let f = load(&Setup::Default.settings(), &country_rules());
    let frame = case_named(fixture).frame;
    let t = std::time::Instant::now();
    let mut runs = 0u64;
    let mut ns = 0.0;
    while t.elapsed() < std::time::Duration::from_secs(10) {
        ns += best_ns(&f, programs::FILTER, &frame, 100_000, 1).1;
        runs += 1;
    }
    println!("{fixture}: {:.1} ns per run", ns / runs as f64);
    ExitCode::SUCCESS
}

/// Frames of the blocked INVITE, each with its own Call-ID: every one is a new call.
fn new_call_frames(n: usize, tag: &str) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let call_id = format!("bench-{tag}-{i:08}@192.0.2.10");
            Pkt::v4(&request_with_call_id("INVITE", BLOCKED_URI, &call_id)).build()
        })
        .collect()
}

/// Mean ns of single-shot runs (repeat 1, the kernel's own duration) over `frames`.
fn single_shot_ns(
    f: &Filter,
    program: &'static str,
    frames: &[Vec<u8>],
    want: Verdict,
) -> Option<f64> {
    let mut total = 0.0;
    for frame in frames {
        let (rc, ns) = f.run(program, frame, 1).expect("test run");
        if program == programs::FILTER && Verdict::from_xdp(rc) != want {
            return None;
        }
        total += ns;
    }
    Some(total / frames.len() as f64)
}

/// The new-call path: the repeat counter cannot give each run its own Call-ID, so every frame
/// is run once; the same single-shot method on one frame (retransmissions) and on the empty
/// program give the references, measured in the same run.
fn new_call_rows(f: &Filter, label: &str, tag: &str) -> Option<[f64; 3]> {
    const N: usize = 20_000;
    let fresh = new_call_frames(N, tag);
    let same = vec![case_named("l2/eth-ipv4").frame; N];
    let empty = single_shot_ns(f, programs::EMPTY, &same, Verdict::Pass)?;
    let new_calls = single_shot_ns(f, programs::FILTER, &fresh, Verdict::Drop);
    let Some(new_calls) = new_calls else {
        eprintln!("new-call frames ({label}): not dropped");
        return None;
    };
    let retrans = single_shot_ns(f, programs::FILTER, &same, Verdict::Drop)?;
    Some([empty, new_calls, retrans])
}

fn main() -> ExitCode {
    if let [_, flag, fixture] = std::env::args().collect::<Vec<_>>().as_slice()
        && flag == "--profile"
    {
        return profile(fixture);
    }
    let mut repeat = 1_000_000u32;
    let mut rounds = 3u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--repeat", Some(v)) => repeat = v,
            ("--rounds", Some(v)) => rounds = v,
            _ => {
                eprintln!(
                    "usage: sipguard-bench [--repeat N (default 1000000)] [--rounds N (default 3)]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let settings = Setup::Default.settings();
    let sets = [
        ("250 country codes", country_rules()),
        ("100k operator prefixes", operator_rules(100_000)),
    ];
    let mut cols = Vec::new();
    let mut singles = Vec::new();
    let mut insns = None;
    for (label, rules) in &sets {
        let t = std::time::Instant::now();
        let f = load(&settings, rules);
        eprintln!(
            "loaded {} rules ({label}) in {:.2?}",
            rules.len(),
            t.elapsed()
        );
        insns = f.verified_insns().expect("program info");
        let frame = case_named("l2/eth-ipv4").frame;
        let (_, empty) = best_ns(&f, programs::EMPTY, &frame, repeat, rounds);
        let mut col = vec![empty];
        for &(row, fixture, want) in ROWS {
            let frame = case_named(fixture).frame;
            let (rc, ns) = best_ns(&f, programs::FILTER, &frame, repeat, rounds);
            let got = Verdict::from_xdp(rc);
            if got != want {
                eprintln!("{row} ({label}): verdict {got:?}, expected {want:?}");
                return ExitCode::FAILURE;
            }
            col.push(ns);
        }
        let Some(single) = new_call_rows(&f, label, &label[..3]) else {
            return ExitCode::FAILURE;
        };
        singles.push(single);
        // The same blocked INVITE with call accounting off (no Call-ID scan, no call LRU, no
        // sources, no events): the cost of counting calls, measured in the same run.
        let mut f = f;
        let mut off = settings.clone();
        off.track_calls = false;
        f.apply_settings(&off).expect("settings");
        let frame = case_named("l2/eth-ipv4").frame;
        let (rc, ns) = best_ns(&f, programs::FILTER, &frame, repeat, rounds);
        if Verdict::from_xdp(rc) != Verdict::Drop {
            eprintln!("blocked INVITE without call accounting ({label}): not dropped");
            return ExitCode::FAILURE;
        }
        col.push(ns);
        cols.push(col);
    }
    println!();
    println!(
        "BPF_PROG_TEST_RUN, repeat {repeat}, best of {rounds} rounds; ratio = ns / empty XDP_PASS program in the same run"
    );
    println!();
    println!(
        "| case | {} ns | ratio | {} ns | ratio |",
        sets[0].0, sets[1].0
    );
    println!("|---|---:|---:|---:|---:|");
    let labels: Vec<&str> = std::iter::once("empty XDP_PASS program")
        .chain(ROWS.iter().map(|r| r.0))
        .chain(std::iter::once("blocked INVITE, call accounting off"))
        .collect();
    for (i, label) in labels.iter().enumerate() {
        println!(
            "| {label} | {:.1} | {:.2} | {:.1} | {:.2} |",
            cols[0][i],
            cols[0][i] / cols[0][0],
            cols[1][i],
            cols[1][i] / cols[1][0]
        );
    }
    let (on, off) = (ROWS.len(), ROWS.len() + 1);
    for (i, (label, _)) in sets.iter().enumerate() {
        println!(
            "call accounting on a blocked INVITE ({label}): {:.1} ns vs {:.1} ns off, x{:.2}",
            cols[i][on],
            cols[i][off],
            cols[i][on] / cols[i][off]
        );
    }
    println!();
    println!(
        "Single-shot runs (repeat 1, 20,000 runs, mean of the kernel's own durations; ratio = ns / empty program measured the same way)"
    );
    println!();
    println!(
        "| case | {} ns | ratio | {} ns | ratio |",
        sets[0].0, sets[1].0
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, label) in [
        "empty XDP_PASS program",
        "blocked INVITE, a new Call-ID every run (new-call path)",
        "blocked INVITE, the same Call-ID every run (retransmission path)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {label} | {:.1} | {:.2} | {:.1} | {:.2} |",
            singles[0][i],
            singles[0][i] / singles[0][0],
            singles[1][i],
            singles[1][i] / singles[1][0]
        );
    }
    println!();
    match insns {
        Some(n) => println!("verifier processed instructions (filter program): {n}"),
        None => println!("verifier processed instructions: not reported by this kernel"),
    }
    ExitCode::SUCCESS
}
