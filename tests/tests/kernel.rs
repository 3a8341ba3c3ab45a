//! Kernel tests: the fixture table and the RFC 4475 torture messages through the real loaded
//! program with BPF_PROG_TEST_RUN, counters read back from the maps. Run as root.

use std::{collections::BTreeMap, fs, path::Path};

use guard_common::{Counter, RuleCounters};
use sipguard::{Filter, Verdict};
use sipguard_tests::{
    fixtures::{self, Case, RuleDelta, Setup},
    host_frame_verdict, host_verdict, load,
    packet::Pkt,
};

fn rule_counters(f: &Filter) -> Vec<RuleCounters> {
    fixtures::RULES
        .iter()
        .map(|&(_, _, id)| f.rule_counters(id).expect("rule counters"))
        .collect()
}

/// Runs one case and returns a description of every mismatch.
fn check(f: &Filter, case: &Case) -> Vec<String> {
    let mut errs = Vec::new();
    let g0 = f.global_counters().expect("counters");
    let r0 = rule_counters(f);
    let verdict = f.test_run(&case.frame);
    let g1 = f.global_counters().expect("counters");
    let r1 = rule_counters(f);
    match verdict {
        Ok(v) if v == case.verdict => {}
        Ok(v) => errs.push(format!("verdict {v:?}, expected {:?}", case.verdict)),
        Err(e) => errs.push(format!("test run failed: {e:#}")),
    }
    let expected: BTreeMap<Counter, u64> = case.counters.iter().copied().collect();
    // Call accounting (calls vs retransmissions, events) depends on the Call-IDs seen before,
    // which all fixtures share; tests/calls.rs covers it.
    for c in Counter::ALL
        .into_iter()
        .filter(|c| !fixtures::CALL_COUNTERS.contains(c))
    {
        let got = g1.get(c) - g0.get(c);
        let want = expected.get(&c).copied().unwrap_or(0);
        if got != want {
            errs.push(format!(
                "counter {} moved by {got}, expected {want}",
                c.name()
            ));
        }
    }
    for (i, &(prefix, _, id)) in fixtures::RULES.iter().enumerate() {
        let got = RuleDelta {
            id,
            matched: r1[i].matched - r0[i].matched,
            dropped: r1[i].dropped - r0[i].dropped,
            would_drop: r1[i].would_drop - r0[i].would_drop,
        };
        let want = match case.rule {
            Some(d) if d.id == id => d,
            _ => RuleDelta {
                id,
                matched: 0,
                dropped: 0,
                would_drop: 0,
            },
        };
        if got != want {
            errs.push(format!("rule {prefix}: {got:?}, expected {want:?}"));
        }
    }
    errs
}

#[test]
fn fixture_table_through_the_kernel() {
    let rules = fixtures::rules();
    let filters: BTreeMap<Setup, Filter> = Setup::ALL
        .iter()
        .map(|&s| (s, load(&s.settings(), &rules)))
        .collect();
    let cases = fixtures::cases();
    let mut failures = Vec::new();
    for case in &cases {
        let errs = check(&filters[&case.setup], case);
        if !errs.is_empty() {
            failures.push(format!(
                "{} ({:?}):\n    {}",
                case.name,
                case.setup,
                errs.join("\n    ")
            ));
        }
    }
    println!(
        "{} fixture cases run through BPF_PROG_TEST_RUN",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn fixture_table_agrees_with_the_host_parser() {
    // The same table, judged on the host with the shared parser and the host reference of the
    // layers (fragments, TCP): the kernel and the host agree.
    let rules = fixtures::rules();
    let filters: BTreeMap<Setup, Filter> = Setup::ALL
        .iter()
        .map(|&s| (s, load(&s.settings(), &rules)))
        .collect();
    let mut failures = Vec::new();
    let mut compared = 0;
    for case in fixtures::cases() {
        let settings = case.setup.settings();
        let f = &filters[&case.setup];
        let kernel = f.test_run(&case.frame).expect("test run");
        // Frames whose IP length claims more than the frame holds are not modelled on the host.
        let Some((host, _)) = host_frame_verdict(&case.frame, &settings, &rules) else {
            continue;
        };
        compared += 1;
        if host != kernel {
            failures.push(format!("{}: kernel {kernel:?}, host {host:?}", case.name));
        }
        if host != case.verdict {
            failures.push(format!(
                "{}: host {host:?}, the table expects {:?}",
                case.name, case.verdict
            ));
        }
    }
    println!("{compared} fixture frames compared with the host reference");
    assert!(
        failures.is_empty(),
        "host and kernel disagree:\n{}",
        failures.join("\n")
    );
}

#[test]
fn verifier_processed_instructions_stay_under_100k() {
    let f = load(&Setup::Default.settings(), &fixtures::rules());
    let insns = f
        .verified_insns()
        .expect("program info")
        .expect("kernel reports verified_insns (5.16+)");
    println!("verifier processed instructions: {insns}");
    assert!(
        insns < 100_000,
        "verifier processed {insns} instructions, budget is 100k"
    );
}

fn rfc4475_messages() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/rfc4475");
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.expect("dir entry").path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).expect("read message"),
            )
        })
        .filter(|(n, _)| n.ends_with(".dat"))
        .collect();
    v.sort();
    v
}

/// Replaces the user part of the first line's `sip:` Request-URI with `user`.
fn redial(msg: &[u8], user: &str) -> Option<Vec<u8>> {
    let line_end = msg.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&msg[..line_end]).ok()?;
    let rest = line.strip_prefix("INVITE sip:")?;
    let at = rest.find('@')?;
    if rest[..at].contains(' ') {
        return None;
    }
    let mut out = format!("INVITE sip:{user}{}", &rest[at..]).into_bytes();
    out.extend_from_slice(&msg[line_end..]);
    Some(out)
}

#[test]
fn rfc4475_torture_messages() {
    let settings = Setup::Default.settings();
    let rules = fixtures::rules();
    let f = load(&settings, &rules);
    let messages = rfc4475_messages();
    assert_eq!(
        messages.len(),
        50,
        "the 50 RFC 4475 messages are in tests/data/rfc4475"
    );
    let mut redialled = 0;
    let mut failures = Vec::new();
    for (name, msg) in &messages {
        for frame in [Pkt::v4(msg).build(), Pkt::v6(msg).vlan(0x8100).build()] {
            let got = f
                .test_run(&frame)
                .unwrap_or_else(|e| panic!("{name}: test run failed: {e:#}"));
            let (want, _) = host_verdict(msg, &settings, &rules);
            if got != want {
                failures.push(format!("{name}: kernel {got:?}, host says {want:?}"));
            }
        }
        // The same message dialling a blocked number: a valid INVITE must now drop.
        if let Some(m) = redial(msg, "+23276123456") {
            let (want, id) = host_verdict(&m, &settings, &rules);
            let got = f.test_run(&Pkt::v4(&m).build()).expect("test run");
            if got != want {
                failures.push(format!(
                    "{name} redialled: kernel {got:?}, host says {want:?} (rule {id:?})"
                ));
            }
            if want == Verdict::Drop {
                redialled += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "RFC 4475 mismatches:\n{}",
        failures.join("\n")
    );
    // Every INVITE with a `sip:user@host` Request-URI in the corpus, redialled, must drop.
    println!(
        "RFC 4475: 50 messages x 2 framings agree with the host parser; {redialled} redialled INVITEs dropped"
    );
    assert!(
        redialled >= 15,
        "only {redialled} redialled INVITEs dropped"
    );
    assert_eq!(f.counter(Counter::Dropped).unwrap(), redialled as u64);
}
