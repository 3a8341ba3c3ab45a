//! `cargo xtask bench`: ns per packet through BPF_PROG_TEST_RUN for the fixture frames, with 250
//! country-code rules and with 100k operator prefixes, each as a ratio to an empty XDP program
//! measured in the same run; then capacity: the time to load a million rules, the time from a
//! `sipguard rules add` into them until the kernel enforces it, and the kernel memory of the
//! maps. Not a test: it asserts only that verdicts are the expected ones.

use std::{
    io::Read as _,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use guard_common::{Action, programs};
use sipguard::{
    Filter, Prefix, Settings, Verdict,
    kernel::{
        maps::Maps,
        memory::{MapMemory, possible_cpus},
        sys::wait_for_readers,
    },
};
use sipguard_tests::{
    TestRule,
    capacity::{PinnedFilter, Rng, invite_under, rule_set},
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

/// 250 country-code style rules: +232 block with its +23222 exception, then 248 other 3-digit
/// codes (never a prefix of the allowed destination +33...).
fn country_rules() -> Vec<TestRule> {
    let mut rules = vec![
        TestRule::new("+232", Action::Block, 0).unwrap(),
        TestRule::new("+23222", Action::Allow, 1).unwrap(),
    ];
    let mut code = 200u32;
    while rules.len() < 250 {
        if code != 232 && !(330..340).contains(&code) {
            let action = if code.is_multiple_of(3) {
                Action::Monitor
            } else {
                Action::Block
            };
            rules.push(TestRule::new(&format!("+{code}"), action, rules.len() as u32).unwrap());
        }
        code += 1;
    }
    rules
}

/// The country rules plus operator prefixes up to `total`: random 6- to 9-digit prefixes under
/// random country codes, skipping anything under +33 (the allowed destination).
fn operator_rules(total: usize) -> Vec<TestRule> {
    let mut rules = country_rules();
    let mut seen: std::collections::BTreeSet<String> =
        rules.iter().map(|r| r.prefix.to_string()).collect();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    while rules.len() < total {
        let len = 6 + (rng.next_u64() % 4) as usize;
        let mut p = String::from("+");
        for i in 0..len {
            let d = (rng.next_u64() % 10) as u8;
            p.push(char::from(b'0' + if i == 0 && d == 0 { 4 } else { d }));
        }
        if p.starts_with("+33") || !seen.insert(p.clone()) {
            continue;
        }
        rules.push(TestRule::new(&p, Action::Block, rules.len() as u32).unwrap());
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

fn main() -> ExitCode {
    if let [_, flag, fixture] = std::env::args().collect::<Vec<_>>().as_slice()
        && flag == "--profile"
    {
        return profile(fixture);
    }
    if let [_, flag, root, state, top] = std::env::args().collect::<Vec<_>>().as_slice()
        && flag == "--scrape-child"
    {
        return scrape_child(root, state, top);
    }
    let mut repeat = 1_000_000u32;
    let mut rounds = 3u32;
    let mut capacity_rules = 1_000_000usize;
    let mut customer_count = BENCH_CUSTOMERS;
    let (mut table, mut capacity, mut customers, mut limits) = (true, true, true, true);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--no-table" => table = false,
            "--no-capacity" => capacity = false,
            "--no-customers" => customers = false,
            "--customers-only" => (table, capacity, limits) = (false, false, false),
            "--limits-only" => (table, capacity, customers) = (false, false, false),
            "--scrape-only" => {
                return match scrape_section(SCRAPE_RULES) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("scrape: {e:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            _ => match (a.as_str(), args.next().and_then(|v| v.parse::<u64>().ok())) {
                ("--repeat", Some(v)) => repeat = v as u32,
                ("--rounds", Some(v)) => rounds = v as u32,
                ("--capacity-rules", Some(v)) => capacity_rules = v as usize,
                ("--customers", Some(v)) if (1024..=4_000_000).contains(&v) => {
                    customer_count = v as usize
                }
                _ => {
                    eprintln!(
                        "usage: sipguard-bench [--repeat N (default 1000000)] [--rounds N (default 3)] [--capacity-rules N (default 1000000)] [--no-table] [--no-capacity] [--no-customers] [--customers-only] [--limits-only] [--customers N (1024..4000000, default 100000)] [--scrape-only]"
                    );
                    return ExitCode::from(2);
                }
            },
        }
    }
    if table && let Err(code) = test_run_table(repeat, rounds) {
        return code;
    }
    if customers && let Err(e) = customers_section(customer_count, repeat, rounds) {
        eprintln!("customers: {e:#}");
        return ExitCode::FAILURE;
    }
    if limits && let Err(e) = limits_section(repeat, rounds) {
        eprintln!("limits: {e:#}");
        return ExitCode::FAILURE;
    }
    if capacity && let Err(e) = capacity_section(capacity_rules) {
        eprintln!("capacity: {e:#}");
        return ExitCode::FAILURE;
    }
    if capacity && let Err(e) = scrape_section(SCRAPE_RULES) {
        eprintln!("scrape: {e:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The BPF_PROG_TEST_RUN table.
/// `--profile FIXTURE`: runs one fixture frame through the filter (250 rules) for ten seconds,
/// for `perf record` to sample the program's functions.
fn profile(fixture: &str) -> ExitCode {
    let f = load(&Setup::Default.settings(), &country_rules());
    let frame = case_named(fixture).frame;
    let t = Instant::now();
    let mut runs = 0u64;
    let mut ns = 0.0;
    while t.elapsed() < Duration::from_secs(10) {
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

fn test_run_table(repeat: u32, rounds: u32) -> Result<(), ExitCode> {
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
                return Err(ExitCode::FAILURE);
            }
            col.push(ns);
        }
        let Some(single) = new_call_rows(&f, label, &label[..3]) else {
            return Err(ExitCode::FAILURE);
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
            return Err(ExitCode::FAILURE);
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
    Ok(())
}

const MB: f64 = 1e6;

/// Rounds of the CLI measurements.
const ROUNDS: usize = 7;

/// Kernel memory of a filter, summed: (total, rule tries, rule counters) here and at `cpus`.
struct Mem {
    maps: Vec<MapMemory>,
}

impl Mem {
    fn of(f: &Filter) -> anyhow::Result<Self> {
        Ok(Self {
            maps: f.kernel_memory()?,
        })
    }

    fn sum(&self, at: Option<usize>, pick: impl Fn(&str) -> bool) -> f64 {
        let here = possible_cpus().unwrap_or(1);
        self.maps
            .iter()
            .filter(|m| pick(&m.name))
            .map(|m| at.map_or(m.memlock, |c| m.at_cpus(here, c)) as f64)
            .sum()
    }

    fn total(&self, at: Option<usize>) -> f64 {
        self.sum(at, |_| true)
    }

    fn tries(&self) -> f64 {
        self.sum(None, |n| n.starts_with("SG_RULES_"))
    }

    fn stats(&self, at: Option<usize>) -> f64 {
        self.sum(at, |n| n == "SG_RULE_STATS")
    }
}

/// Runs the CLI and polls the program with BPF_PROG_TEST_RUN in a tight loop until `frame`
/// gets `want`: returns (until enforced, CLI wall time, the CLI's own timings line).
fn cli_until(
    pf: &PinnedFilter,
    args: &[&str],
    frame: &[u8],
    want: Verdict,
) -> anyhow::Result<(Duration, Duration, String)> {
    let t0 = Instant::now();
    let child = pf
        .command(args)
        .env("RUST_LOG", "sipguard=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn sipguard")?;
    // The child is killed (by its PID) if anything below fails.
    struct Reap(Option<std::process::Child>);
    impl Drop for Reap {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut reap = Reap(Some(child));
    let mut polls = 0u64;
    let enforced = loop {
        if pf.filter.test_run(frame)? == want {
            break t0.elapsed();
        }
        // Leave the CPU to the CLI when it needs it (2 CPUs here); a poll is a few µs.
        std::thread::yield_now();
        polls += 1;
        if polls.is_multiple_of(1024)
            && let Some(st) = reap.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
            && !st.success()
        {
            bail!("`sipguard {}` failed ({st})", args.join(" "));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("`sipguard {}` not enforced within 60 s", args.join(" "));
        }
    };
    let mut c = reap.0.take().expect("child");
    let status = c.wait()?;
    let wall = t0.elapsed();
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        bail!("`sipguard {}` failed: {err}", args.join(" "));
    }
    let timings = err
        .lines()
        .find(|l| l.contains("rules edit:"))
        .map(|l| {
            ["live_ms", "standby_ms", "total_ms"]
                .iter()
                .filter_map(|k| {
                    let v = l
                        .split(&format!("{k}="))
                        .nth(1)?
                        .split_whitespace()
                        .next()?;
                    Some(format!("{k}={:.1}", v.parse::<f64>().ok()?))
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Ok((enforced, wall, timings))
}

/// The capacity section: load time, add-to-enforce latency, kernel memory.
fn capacity_section(n: usize) -> anyhow::Result<()> {
    let cpus = possible_cpus()?;
    let big = Settings {
        max_rules: 2_000_000,
        ..Setup::Default.settings()
    };
    println!();
    println!(
        "## Capacity ({n} rules, max_rules = {}, {cpus} CPUs)",
        big.max_rules
    );
    println!();
    let t = Instant::now();
    let rules = rule_set(n);
    eprintln!("generated {n} rules in {:.2?}", t.elapsed());

    // 1. Load into a fresh filter: live after the first trie, done after the second.
    let mut f = Filter::load(&big)?;
    let t = Instant::now();
    let (_, pending) = f.maps.stage_full(&big, &rules, None)?;
    let live = t.elapsed();
    wait_for_readers();
    f.maps.finish(pending)?;
    let both = t.elapsed();
    println!(
        "load {n} rules into a fresh filter: enforced after {:.2} s (one trie, then the switch), both tries after {:.2} s",
        live.as_secs_f64(),
        both.as_secs_f64()
    );
    let mem_big = Mem::of(&f)?;
    drop(f);

    // 2. One rule added with the real CLI into the pinned filter, until the kernel drops it.
    let mut pf = PinnedFilter::new("bench", big.max_rules);
    let t = Instant::now();
    pf.filter.maps.commit(&pf.settings.clone(), &rules)?;
    let pinned_load = t.elapsed();
    let t = Instant::now();
    pf.state.save_committed(&rules)?;
    let rules_json = t.elapsed();
    println!(
        "the same into pinned maps: {:.2} s; writing rules.json for them (as the daemon does): {:.2} s",
        pinned_load.as_secs_f64(),
        rules_json.as_secs_f64()
    );
    // The floor: spawning the binary until it has exited, doing nothing.
    let mut spawn = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let st = pf
            .command(&["--version"])
            .stdout(Stdio::null())
            .status()
            .context("spawn sipguard")?;
        if !st.success() {
            bail!("sipguard --version failed");
        }
        spawn.push(t.elapsed());
    }
    // Each round adds a new prefix and deletes it again.
    let mut add = Vec::new();
    let mut del = Vec::new();
    let mut timings = (String::new(), String::new());
    for i in 0..ROUNDS {
        let probe: Prefix = format!("+3399{i}").parse()?;
        let p = probe.to_string();
        let frame = invite_under(&probe);
        if pf.filter.test_run(&frame)? != Verdict::Pass {
            bail!("the probe INVITE to {probe} is dropped before the rule exists");
        }
        for (args, want, out, t) in [
            (
                vec!["rules", "add", p.as_str(), "--action", "block"],
                Verdict::Drop,
                &mut add,
                &mut timings.0,
            ),
            (
                vec!["rules", "del", p.as_str()],
                Verdict::Pass,
                &mut del,
                &mut timings.1,
            ),
        ] {
            let (enforced, wall, timing) = cli_until(&pf, &args, &frame, want)?;
            let maps = Maps::from_pins(&pf.pins.iface_dir(PinnedFilter::IFACE))?;
            if !maps.tries_in_sync()? {
                bail!(
                    "after `sipguard {}` the tries are not in sync",
                    args.join(" ")
                );
            }
            out.push((enforced, wall));
            *t = timing;
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let stats = |v: &mut Vec<Duration>| {
        v.sort();
        format!(
            "{:.1} ms (min {:.1}, max {:.1})",
            ms(v[v.len() / 2]),
            ms(v[0]),
            ms(v[v.len() - 1])
        )
    };
    println!();
    println!(
        "| `sipguard VERB` into {n} rules, spawned by the bench, {ROUNDS} rounds | until the kernel enforces it (test_run polled), median | CLI wall time, median | the CLI's own timings, last round (ms) |"
    );
    println!("|---|---:|---:|---|");
    for (label, v, timing) in [
        ("rules add +3399N --action block", &add, &timings.0),
        ("rules del +3399N", &del, &timings.1),
    ] {
        let (mut e, mut w): (Vec<Duration>, Vec<Duration>) = v.iter().copied().unzip();
        println!(
            "| {label} | {} | {} | {timing} |",
            stats(&mut e),
            stats(&mut w)
        );
    }
    println!(
        "| `sipguard --version` (process start and exit only) | | {} | |",
        stats(&mut spawn)
    );
    println!(
        "(live_ms: the kernel enforces the edit; standby_ms: the other trie synced after an RCU grace period; the rest of total_ms is recording the edit in runtime.toml)"
    );
    drop(pf);

    // 3. Kernel memory: all maps of one interface, measured here, and computed for 64 CPUs.
    println!();
    println!(
        "| rules | max_rules | kernel memory here ({cpus} CPUs) | of which rule tries | rule counters | computed for 64 CPUs |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let row = |rules_n: usize, max: u32, m: &Mem| {
        println!(
            "| {rules_n} | {max} | {:.1} MB | {:.1} MB | {:.2} MB | {:.1} MB |",
            m.total(None) / MB,
            m.tries() / MB,
            m.stats(None) / MB,
            m.total(Some(64)) / MB
        );
    };
    let default = Setup::Default.settings();
    let mut per_hit = None;
    for (k, settings) in [(1_000, &default), (1_000, &big), (100_000, &big)] {
        let mut f = Filter::load(settings)?;
        let set = rule_set(k);
        f.maps.commit(settings, &set)?;
        let m = Mem::of(&f)?;
        row(k, settings.max_rules, &m);
        if k == 1_000 && per_hit.is_none() {
            // Traffic to every rule: each gets its per-CPU counters.
            for p in set.keys() {
                f.test_run(&invite_under(p))?;
            }
            let hit = Mem::of(&f)?;
            let n_hit = f.maps.stats_ids()?.len().max(1) as f64;
            per_hit = Some((
                (hit.stats(None) - m.stats(None)) / n_hit,
                (hit.stats(Some(64)) - m.stats(Some(64))) / n_hit,
                hit,
            ));
        }
    }
    row(n, big.max_rules, &mem_big);
    if let Some((here, at64, hit)) = &per_hit {
        println!();
        println!(
            "each rule that sees traffic adds its per-CPU counters: {here:.0} B here, {at64:.0} B at 64 CPUs (1,000 rules, all hit: {:.1} MB here, {:.1} MB at 64 CPUs)",
            hit.total(None) / MB,
            hit.total(Some(64)) / MB
        );
        println!();
        println!("maps of one interface, 1,000 rules at the default max_rules, all hit:");
        println!();
        println!("| map | type | max_entries | here | 64 CPUs |");
        println!("|---|---|---:|---:|---:|");
        for m in &hit.maps {
            println!(
                "| {} | {} | {} | {:.2} MB | {:.2} MB |",
                m.name,
                m.map_type,
                m.max_entries,
                m.memlock as f64 / MB,
                m.at_cpus(cpus, 64) as f64 / MB
            );
        }
    }
    Ok(())
}

/// Rules of the scrape measurement.
const SCRAPE_RULES: usize = 262_144;

/// `--scrape-child ROOT STATE TOP`: one /metrics render as the daemon makes it per scrape
/// (the pinned maps read, the report rendered with per-rule series for the TOP busiest rules,
/// `all` for every rule); prints `bytes seconds`.
fn scrape_child(root: &str, state: &str, top: &str) -> ExitCode {
    let top = if top == "all" {
        usize::MAX
    } else {
        top.parse().unwrap_or(sipguard::report::metrics::TOP_RULES)
    };
    let pins = sipguard::kernel::pins::PinRoot::new(root);
    let state = sipguard::config::state::StateDir::new(state);
    let t = Instant::now();
    match sipguard::daemon::metrics::render(
        &pins,
        &state,
        &sipguard::report::DaemonStatus::default(),
        sipguard::report::metrics::Tops {
            rules: top,
            ..Default::default()
        },
    ) {
        Ok(body) => {
            println!("{} {}", body.len(), t.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("render: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One scrape in a child process: (bytes, seconds, the child's peak RSS in bytes).
// Reaped with wait4(2) (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn scrape_once(pf: &PinnedFilter, top: &str) -> anyhow::Result<(usize, f64, u64)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--scrape-child")
        .arg(&pf.pins.root)
        .arg(&pf.state.dir)
        .arg(top)
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn the scrape child")?;
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("child stdout")?
        .read_to_string(&mut out)?;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    if unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the scrape child failed ({status})");
    }
    let mut f = out.split_whitespace();
    let bytes = f.next().context("bytes")?.parse()?;
    let secs = f.next().context("seconds")?.parse()?;
    Ok((bytes, secs, ru.ru_maxrss as u64 * 1024))
}

/// The scrape section: /metrics over `n` pinned rules (some with traffic), with the default
/// per-rule series cap and with every rule (what a scrape was before the cap).
fn scrape_section(n: usize) -> anyhow::Result<()> {
    let big = Settings {
        max_rules: (n as u32).next_power_of_two().max(1 << 16) * 2,
        ..Setup::Default.settings()
    };
    let mut pf = PinnedFilter::new("scrape", big.max_rules);
    let rules = rule_set(n);
    pf.filter.maps.commit(&pf.settings.clone(), &rules)?;
    pf.state.save_committed(&rules)?;
    // Traffic to every 64th rule, so the busiest rules are a real choice.
    for (i, p) in rules.keys().enumerate().filter(|(i, _)| i % 64 == 0) {
        for _ in 0..(1 + i % 3) {
            pf.filter.test_run(&invite_under(p))?;
        }
    }
    println!();
    println!(
        "## Scrape ({n} rules, one interface; one render in a child process, as the daemon renders each scrape)"
    );
    println!();
    println!("| per-rule series | scrape size | render time | peak RSS of the scraping process |");
    println!("|---|---:|---:|---:|");
    let default = sipguard::report::metrics::TOP_RULES.to_string();
    for (label, top) in [
        (
            format!("top {default} (default `[metrics] top_rules`)"),
            default.as_str(),
        ),
        ("every rule (before the cap)".to_string(), "all"),
    ] {
        let (bytes, secs, rss) = scrape_once(&pf, top)?;
        println!(
            "| {label} | {:.2} MB ({bytes} B) | {secs:.2} s | {:.0} MB |",
            bytes as f64 / 1e6,
            rss as f64 / 1e6
        );
    }
    Ok(())
}

/// Customer CIDRs in the customers section: 512 IPv4 /32s in 198.51.100.0/24 and
/// 203.0.113.0/24 (two documentation /24s), the rest IPv6 /64s in 2001:db8::/32.
const BENCH_CUSTOMERS: usize = 100_000;
const BENCH_POLICIES: usize = 100;

/// A config text with `customers` customer CIDRs spread over `policies` policies (each with ten
/// rules, half of them inheriting the global rules), and the global `+232` rules.
fn customers_config(customers: usize, policies: usize) -> String {
    use std::fmt::Write as _;
    let mut t = String::with_capacity(customers * 90);
    t.push_str(
        "[settings]\nsip_ports = [5060]\n\n[[rule]]\nprefix = \"+232\"\naction = \"block\"\n\n",
    );
    for p in 0..policies {
        let inherit = p % 2 == 0;
        writeln!(t, "[[policy]]\nname = \"p{p}\"\ninherit = {inherit}").unwrap();
        for r in 0..10 {
            writeln!(
                t,
                "[[policy.rule]]\nprefix = \"+88{p:03}{r}\"\naction = \"block\""
            )
            .unwrap();
        }
    }
    for c in 0..customers {
        let src = if c < 256 {
            format!("198.51.100.{c}/32")
        } else if c < 512 {
            format!("203.0.113.{}/32", c - 256)
        } else {
            format!("2001:db8:{:x}:{:x}::/64", c >> 16, c & 0xffff)
        };
        writeln!(
            t,
            "[[customer]]\nname = \"c{c}\"\nsources = [\"{src}\"]\npolicy = \"p{}\"",
            c % policies
        )
        .unwrap();
    }
    t
}

/// Load time of `count` customers (100,000 by default) with 100 policies, and the test_run cost of an INVITE from a
/// customer against the same INVITE with no customers configured, in the same run.
fn customers_section(count: usize, repeat: u32, rounds: u32) -> anyhow::Result<()> {
    let text = customers_config(count, BENCH_POLICIES);
    let t = Instant::now();
    let cfg = sipguard::config::parse(std::path::Path::new("bench.toml"), &text)?;
    let parse = t.elapsed();
    // The INVITE to +232 from customers c8 and c4096, whose policies (p8, p96) inherit the
    // global rules: dropped with and without customers.
    let frame = Pkt::v4(&request_with_call_id(
        "INVITE",
        BLOCKED_URI,
        "bench-customer@198.51.100.8",
    ))
    .src("198.51.100.8")
    .build();
    let frame6 = Pkt::v6(&request_with_call_id(
        "INVITE",
        BLOCKED_URI,
        "bench-customer6@2001:db8::7",
    ))
    .src("2001:db8:0:1000::7")
    .build();
    let entries = cfg.customers.entries();
    let mut with = Filter::load(&cfg.settings)?;
    let t = Instant::now();
    with.maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&entries))?;
    let commit = t.elapsed();
    // A small customer set (the 512 IPv4 customers only), and a source that is no customer.
    let small_cfg = sipguard::config::parse(
        std::path::Path::new("small.toml"),
        &customers_config(512, BENCH_POLICIES),
    )?;
    let mut small = Filter::load(&small_cfg.settings)?;
    small.maps.commit_all(
        &small_cfg.settings,
        &small_cfg.rules,
        Some(&small_cfg.customers.entries()),
    )?;
    let stranger = Pkt::v4(&request_with_call_id(
        "INVITE",
        BLOCKED_URI,
        "bench-stranger@192.0.2.99",
    ))
    .src("192.0.2.99")
    .build();
    // The same instance with and without its customers (re-committed each round): instances
    // loaded apart differ by up to a fifth in test_run cost (where their maps landed), more
    // than the difference measured here.
    let mut best = [f64::MAX; 7];
    for _ in 0..rounds.max(5) {
        // Without customers, then with them.
        with.maps.commit_all(&cfg.settings, &cfg.rules, Some(&[]))?;
        for (inst, program, frame, i) in [
            (&with, programs::EMPTY, &frame, 0),
            (&with, programs::FILTER, &frame, 1),
            (&with, programs::FILTER, &frame6, 3),
        ] {
            let (rc, ns) = inst.run(program, frame, repeat)?;
            if program == programs::FILTER && Verdict::from_xdp(rc) != Verdict::Drop {
                bail!("the +232 INVITE was not dropped (XDP action {rc})");
            }
            best[i] = best[i].min(ns);
        }
        with.maps
            .commit_all(&cfg.settings, &cfg.rules, Some(&entries))?;
        for (inst, program, frame, i) in [
            (&with, programs::FILTER, &frame, 2),
            (&with, programs::FILTER, &frame6, 4),
            (&small, programs::FILTER, &frame, 5),
            (&with, programs::FILTER, &stranger, 6),
        ] {
            let (rc, ns) = inst.run(program, frame, repeat)?;
            if Verdict::from_xdp(rc) != Verdict::Drop {
                bail!("the +232 INVITE was not dropped (XDP action {rc})");
            }
            best[i] = best[i].min(ns);
        }
    }
    let [empty, none4, with4, none6, with6, small4, stranger4] = best;
    let f = with;
    let mem: u64 = f
        .kernel_memory()?
        .iter()
        .filter(|m| m.name.starts_with("SG_CUST"))
        .map(|m| m.memlock)
        .sum();
    println!();
    println!(
        "Customers: {} customer CIDRs ({} IPv4, the rest IPv6), {} policies, {} rules",
        entries.len(),
        entries.iter().filter(|e| e.net.addr().is_ipv4()).count(),
        BENCH_POLICIES,
        cfg.rules.len()
    );
    println!();
    println!("| step | time |");
    println!("|---|---:|");
    println!("| parse and validate the config | {parse:.2?} |");
    println!("| commit into the kernel (both customer tries) | {commit:.2?} |");
    println!();
    println!(
        "Customer tries' kernel memory (both): {:.1} MiB",
        mem as f64 / (1 << 20) as f64
    );
    println!();
    println!(
        "BPF_PROG_TEST_RUN, repeat {repeat}, best of {rounds}; a blocked INVITE (a retransmission after the first run)"
    );
    println!();
    println!("| case | ns | ratio to empty | vs no customers |");
    println!("|---|---:|---:|---:|");
    println!("| empty XDP_PASS program | {empty:.1} | 1.00 | |");
    for (label, ns, base) in [
        ("IPv4, no customers configured", none4, none4),
        ("IPv4, from a customer (of the big set)", with4, none4),
        ("IPv6, no customers configured", none6, none6),
        ("IPv6, from a customer (of the big set)", with6, none6),
        ("IPv4, from a customer (of 512)", small4, none4),
        (
            "IPv4, from no customer (the big set configured)",
            stranger4,
            none4,
        ),
    ] {
        println!(
            "| {label} | {ns:.1} | {:.2} | {:+.1}% |",
            ns / empty,
            (ns / base - 1.0) * 100.0
        );
    }
    Ok(())
}

/// An INVITE to `uri` without a Call-ID: every run of it is a new call (nothing tells its
/// retransmissions apart), so each takes the limits' bucket path.
fn invite_without_call_id(uri: &str) -> Vec<u8> {
    Pkt::v4(
        format!(
            "INVITE {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
             To: <{uri}>\r\n\
             From: <sip:100@192.0.2.10>;tag=1928301774\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
    .src("198.51.100.7")
    .build()
}

/// The cost of a limit: the same INVITEs against the same rules with and without a limit (and
/// with a quarantine configured), on one instance re-committed each round. Every run is a new
/// call (see [`invite_without_call_id`]); the limit (a million calls a second, a burst of a
/// million) is never reached, so the verdict stays the rule's. And the limit maps' kernel
/// memory at their default sizes.
fn limits_section(repeat: u32, rounds: u32) -> anyhow::Result<()> {
    let config = |limit: &str, quarantine: &str| {
        format!(
            "[settings]\nsip_ports = [5060]\n\
             [[rule]]\nprefix = \"+44\"\naction = \"allow\"\n{limit}\
             [[rule]]\nprefix = \"+232\"\naction = \"block\"\n{limit}{quarantine}"
        )
    };
    let limit = "limit = \"1000000/s\"\nburst = 1000000\n";
    let quarantine = "[quarantine]\ncalls = 4000000000\n";
    let parse = |t: &str| sipguard::config::parse(std::path::Path::new("bench.toml"), t);
    let sets = [
        ("without a limit", parse(&config("", ""))?),
        ("with a limit", parse(&config(limit, ""))?),
        (
            "with a limit and a quarantine",
            parse(&config(limit, quarantine))?,
        ),
    ];
    let mut f = Filter::load(&sets[0].1.settings)?;
    let allowed = invite_without_call_id("sip:+442079460000@gw.example.net");
    let blocked = invite_without_call_id(BLOCKED_URI);
    // [set][frame]
    let mut best = [[f64::MAX; 2]; 3];
    let mut empty = f64::MAX;
    for _ in 0..rounds.max(5) {
        for (i, (_, cfg)) in sets.iter().enumerate() {
            f.maps.quarantine = cfg.quarantine.as_ref().map(|q| q.config());
            f.maps.commit_all(&cfg.settings, &cfg.rules, Some(&[]))?;
            for (j, (frame, want)) in [(&allowed, Verdict::Pass), (&blocked, Verdict::Drop)]
                .into_iter()
                .enumerate()
            {
                let (rc, ns) = f.run(programs::FILTER, frame, repeat)?;
                if Verdict::from_xdp(rc) != want {
                    bail!("{want:?} expected, XDP action {rc}");
                }
                best[i][j] = best[i][j].min(ns);
            }
        }
        empty = empty.min(f.run(programs::EMPTY, &allowed, repeat)?.1);
    }
    let mem: Vec<(String, u64)> = f
        .kernel_memory()?
        .into_iter()
        .filter(|m| {
            [
                "SG_LIMITS",
                "SG_LIMIT_CONFIG",
                "SG_BUCKETS",
                "SG_QUARANTINE",
                "SG_QWINDOWS",
            ]
            .contains(&m.name.as_str())
        })
        .map(|m| (m.name.clone(), m.memlock))
        .collect();
    println!();
    println!(
        "Limits: BPF_PROG_TEST_RUN, repeat {repeat}, best of {}; every run a new call (no Call-ID)",
        rounds.max(5)
    );
    println!();
    println!("| INVITE | rule | ns | ratio to empty | vs without a limit |");
    println!("|---|---|---:|---:|---:|");
    println!("| empty XDP_PASS program | | {empty:.1} | 1.00 | |");
    for (j, what) in ["allowed (+44)", "blocked (+232)"].iter().enumerate() {
        for (i, (label, _)) in sets.iter().enumerate() {
            println!(
                "| {what} | {label} | {:.1} | {:.2} | {:+.1}% |",
                best[i][j],
                best[i][j] / empty,
                (best[i][j] / best[0][j] - 1.0) * 100.0
            );
        }
    }
    println!();
    println!("| map (default size) | kernel memory |");
    println!("|---|---:|");
    for (name, bytes) in &mem {
        println!("| {name} | {:.1} KiB |", *bytes as f64 / 1024.0);
    }
    let total: u64 = mem.iter().map(|(_, b)| b).sum();
    println!("| total | {:.1} MiB |", total as f64 / (1 << 20) as f64);
    Ok(())
}
