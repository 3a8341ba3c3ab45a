//! Velocity limits and the quarantine end to end, with sipp as the hacked PBX: customer A's
//! policy allows international calls at 6 a minute (3 at once) and refuses the rest with 403;
//! a burst of over-limit calls quarantines A (refused with 603, every call, national ones too),
//! while customer B calls on. Every figure comes from sipp's traces.

use std::thread;

use sipguard_tests::{
    harness::Instance,
    sipp::{Call, UacRun, UacSpec, Uas, run_uac},
    topology::{CARRIER4, PBX2_4, PBX4, Topology},
};

fn config(mode: &str) -> String {
    format!(
        r#"
[settings]
sip_ports = [5060]
mode = "{mode}"

[[policy]]
name = "limited"
[[policy.rule]]
prefix = "+"
action = "allow"
limit = "6/min"
burst = 3
over_limit = "reject"
[[policy.rule]]
prefix = "+881"
action = "allow"
repeat_limit = "3/10min"
over_limit = "reject"

[[customer]]
name = "a"
sources = ["192.0.2.0/24"]
policy = "limited"

[[customer]]
name = "b"
sources = ["198.51.100.0/24"]

[quarantine]
over_limit = 30
window = "10min"
duration = "1h"
scope = "all"
reject_code = 603
reject_reason = "Decline"
"#
    )
}

fn uri(n: &str) -> String {
    format!("sip:{n}@{CARRIER4}:5060")
}

fn calls(
    topo_pbx: &sipguard_tests::netns::Netns,
    ip: &str,
    uris: &[String],
    rate: u32,
    dir: &std::path::Path,
    tag: &str,
) -> UacRun {
    let run = run_uac(&UacSpec {
        ns: topo_pbx,
        local_ip: ip,
        remote: format!("{CARRIER4}:5060"),
        uris,
        calls: uris.len() as u32,
        rate,
        dir,
        tag,
    });
    assert_eq!(run.calls.len(), uris.len(), "{}", run.screen);
    run
}

fn outcome(c: &Call) -> String {
    match (c.refused, c.completed) {
        (Some(code), _) => format!("refused {code}"),
        (None, true) => "completed".into(),
        (None, false) => "neither".into(),
    }
}

/// The outcomes in the order the calls started (sipp's trace lists them by Call-ID).
fn outcomes(run: &UacRun) -> Vec<String> {
    let mut calls: Vec<&Call> = run.calls.iter().collect();
    calls.sort_by(|a, b| {
        a.first_invite_at
            .partial_cmp(&b.first_invite_at)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    calls.into_iter().map(outcome).collect()
}

#[test]
fn a_hacked_pbx_is_limited_then_quarantined_and_released() {
    let topo = Topology::new("lq");
    let second = topo.second_pbx("lq");
    let mut sg = Instance::new("limits");
    let dir = sg.dir.clone();
    let cfg = sg.write("sipguard.toml", &config("enforce"));
    let ifaces = [topo.guarded_if.as_str(), second.guarded_if.as_str()];
    sg.start(&topo.router, &ifaces, &cfg, &[]);
    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "lq");

    // 1. One international call a second for 30 s: the burst of 3, then one every 10 s.
    let intl: Vec<String> = (0..30)
        .map(|i| uri(&format!("+4420794600{i:02}")))
        .collect();
    let a = calls(&topo.pbx, PBX4, &intl, 1, &dir, "a1");
    let got = outcomes(&a);
    let passed: Vec<usize> = (0..got.len()).filter(|&i| got[i] == "completed").collect();
    let refused = got.iter().filter(|o| *o == "refused 403").count();
    assert_eq!(passed.len() + refused, 30, "{got:?}");
    assert_eq!(&passed[..3], [0, 1, 2], "{got:?}");
    // sipp starts a call about every second; the bucket gives one every 10 s.
    assert!(
        (5..=6).contains(&passed.len()),
        "{} completed: {passed:?}",
        passed.len()
    );
    for w in passed[3..].windows(2) {
        assert!((9..=11).contains(&(w[1] - w[0])), "{passed:?}");
    }
    // A refused call is answered at once and never retransmitted.
    for c in a.calls.iter().filter(|c| c.refused.is_some()) {
        assert_eq!(c.invites_sent, 1, "{} retransmitted", c.uri);
    }
    // Counters = the traces.
    let per: serde_json::Value = serde_json::from_str(&sg.ok(&["stats", "--json"])).unwrap();
    let rule = per["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == "+" && r["policy"] == "limited")
        .unwrap_or_else(|| panic!("no limited/+ in {per}"))
        .clone();
    assert_eq!(rule["calls"], 30, "{rule}");
    assert_eq!(rule["over_limit"], refused as u64, "{rule}");
    assert_eq!(per["global"]["over_limit"], refused as u64, "{per}");

    // 2. Repeated calls to one number: 3 of 5 pass; another number passes.
    // (Satellite numbers: their own rule, whose only limit is the repeat limit.)
    let mut rep: Vec<String> = (0..5).map(|_| uri("+881631234567")).collect();
    rep.push(uri("+881639999999"));
    let r = calls(&topo.pbx, PBX4, &rep, 5, &dir, "a2");
    assert_eq!(
        outcomes(&r),
        [
            "completed",
            "completed",
            "completed",
            "refused 403",
            "refused 403",
            "completed"
        ]
    );

    // 3. A burst: over-limit calls pass the trigger (more than 30 in the window), and A is
    // quarantined: refused with 603 from then on, national calls included.
    let burst: Vec<String> = (0..20)
        .map(|i| uri(&format!("+2327612345{i:02}")))
        .collect();
    let b_uris: Vec<String> = (0..5).map(|i| uri(&format!("+3314{i:07}"))).collect();
    let (hot, b_run) = thread::scope(|s| {
        let hot = s.spawn(|| calls(&topo.pbx, PBX4, &burst, 10, &dir, "a3"));
        let b = s.spawn(|| calls(&second.pbx, PBX2_4, &b_uris, 2, &dir, "b3"));
        (hot.join().unwrap(), b.join().unwrap())
    });
    let got = outcomes(&hot);
    assert!(
        got.iter().any(|o| o == "refused 603"),
        "no quarantine: {got:?}"
    );
    let first_603 = got.iter().position(|o| o == "refused 603").unwrap();
    assert!(
        got[first_603..].iter().all(|o| o == "refused 603"),
        "{got:?}"
    );
    assert!(
        outcomes(&b_run).iter().all(|o| o == "completed"),
        "B was affected: {:?}",
        outcomes(&b_run)
    );
    let list = sg.ok(&["quarantine", "list"]);
    assert!(
        list.contains("customer a") && list.contains("over-limit calls"),
        "{list}"
    );
    assert!(
        list.contains("1 quarantine(s) in force") || list.contains("2 quarantine(s) in force"),
        "{list}"
    );
    // The event says who, why and until when.
    // The daemon announces it within its next tick (half a second).
    let started = |e: &str| {
        e.lines()
            .any(|l| l.contains("quarantine of a started") && l.contains("until"))
    };
    let mut events = sg.ok(&["events"]);
    for _ in 0..30 {
        if started(&events) {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(100));
        events = sg.ok(&["events"]);
    }
    assert!(started(&events), "{events}");
    // Even a national call is refused while it lasts.
    let national = vec![uri("0312345678")];
    assert_eq!(
        outcomes(&calls(&topo.pbx, PBX4, &national, 1, &dir, "a4")),
        ["refused 603"]
    );

    // 4. A release restores service at once.
    let out = sg.ok(&["quarantine", "release", "a"]);
    assert!(out.contains("released customer a"), "{out}");
    assert_eq!(
        outcomes(&calls(&topo.pbx, PBX4, &national, 1, &dir, "a5")),
        ["completed"]
    );
    let (ok, _, err) = {
        let r = sg.cli(&["quarantine", "release", "a"]);
        (r.ok, r.stdout, r.stderr)
    };
    assert!(
        !ok && err.contains("customer a is not quarantined"),
        "{err}"
    );
    // The daemon saw the release (its next tick) and counts it for Prometheus.
    let scrape = || sipguard_tests::harness::scrape_metrics(&topo.router);
    let mut body = scrape();
    for _ in 0..20 {
        if body.contains("sipguard_quarantine_releases_total 1") {
            break;
        }
        thread::sleep(std::time::Duration::from_millis(100));
        body = scrape();
    }
    assert!(
        body.contains("sipguard_quarantine_releases_total 1"),
        "{body}"
    );
    assert!(
        body.contains("sipguard_quarantines_started_total{iface="),
        "{body}"
    );

    // 5. A quarantine survives a daemon restart.
    sg.ok(&["quarantine", "add", "a", "--for", "30min"]);
    sg.stop(libc::SIGTERM);
    sg.start(&topo.router, &ifaces, &cfg, &[]);
    assert!(sg.ok(&["quarantine", "list"]).contains("customer a"));
    assert_eq!(
        outcomes(&calls(&topo.pbx, PBX4, &national, 1, &dir, "a6")),
        ["refused 603"]
    );
    let _ = uas.finish();
}

/// Monitor mode: the same burst refuses nothing, and would_limit counts what enforce refused.
#[test]
fn monitor_mode_refuses_nothing_and_counts_what_it_would() {
    let mut refused_by_enforce = 0;
    for mode in ["enforce", "monitor"] {
        let topo = Topology::new(if mode == "enforce" { "le" } else { "lm" });
        let mut sg = Instance::new(&format!("limits-{mode}"));
        let dir = sg.dir.clone();
        let cfg = sg.write("sipguard.toml", &config(mode));
        sg.start(&topo.router, &[&topo.guarded_if], &cfg, &[]);
        let uas = Uas::start(&topo.carrier, CARRIER4, &dir, mode);
        let uris: Vec<String> = (0..10)
            .map(|i| uri(&format!("+4420794611{i:02}")))
            .collect();
        let run = calls(&topo.pbx, PBX4, &uris, 5, &dir, mode);
        let _ = uas.finish();
        let got = outcomes(&run);
        let stats = sg.stats();
        if mode == "enforce" {
            refused_by_enforce = got.iter().filter(|o| *o == "refused 403").count() as u64;
            assert_eq!(refused_by_enforce, 7, "{got:?}");
            assert_eq!(stats["global"]["over_limit"], refused_by_enforce, "{stats}");
        } else {
            assert!(got.iter().all(|o| o == "completed"), "{got:?}");
            assert_eq!(
                stats["global"]["would_limit"], refused_by_enforce,
                "{stats}"
            );
            assert_eq!(stats["global"]["over_limit"], 0, "{stats}");
        }
    }
}
