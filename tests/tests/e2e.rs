//! End to end with a real SIP stack: sipp calls from a PBX namespace through a router namespace
//! guarded by `sipguard run` (native XDP, shipped default rules) to a carrier namespace where
//! sipp answers every call. Every figure asserted here comes from sipp's own message traces,
//! compared with sipguard's counters. Run as root.

use std::{collections::BTreeMap, thread, time::Duration};

use sipguard_tests::{
    harness::Instance,
    mix::{ADD_EXCEPTION, dest_of, uris},
    sipp::{self, UacRun, UacSpec, Uas, run_uac, uas_calls},
    topology::{CARRIER4, CARRIER6, PBX4, PBX6, Topology},
};

/// Per-rule (matched, dropped, would_drop).
fn rule_counters(sg: &Instance) -> BTreeMap<String, (u64, u64, u64)> {
    sg.stats()["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["prefix"].as_str().unwrap().to_string(),
                (
                    r["matched"].as_u64().unwrap(),
                    r["dropped"].as_u64().unwrap(),
                    r["would_drop"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn delta(
    after: &BTreeMap<String, (u64, u64, u64)>,
    before: &BTreeMap<String, (u64, u64, u64)>,
    rule: &str,
) -> (u64, u64, u64) {
    let a = after.get(rule).copied().unwrap_or_default();
    let b = before.get(rule).copied().unwrap_or_default();
    (a.0 - b.0, a.1 - b.1, a.2 - b.2)
}

/// Checks a UAC run against the UAS trace (only the calls of this run): every allowed call
/// completed and reached the UAS with INVITE, ACK and BYE; no blocked INVITE reached it.
fn check_calls(label: &str, run: &UacRun, uas: &[sipp::TracedMsg], host: &str) {
    let at_uas = uas_calls(uas);
    let mut errs = Vec::new();
    for c in &run.calls {
        let dest = dest_of(&c.uri, host);
        let seen = at_uas.get(&c.call_id);
        if dest.blocked {
            if c.answered || seen.is_some() {
                errs.push(format!(
                    "{label}: blocked call {} to {} got through",
                    c.call_id, c.uri
                ));
            }
        } else {
            let methods = seen.map(|s| s.1.clone()).unwrap_or_default();
            let ok = c.completed
                && ["INVITE", "ACK", "BYE"]
                    .iter()
                    .all(|m| methods.iter().any(|x| x == m));
            if !ok {
                errs.push(format!(
                    "{label}: allowed call {} to {} did not complete (UAC answered={} completed={}, UAS saw {methods:?})",
                    c.call_id, c.uri, c.answered, c.completed
                ));
            }
        }
    }
    assert!(
        errs.is_empty(),
        "{} problems:\n{}",
        errs.len(),
        errs.join("\n")
    );
}

/// INVITE packets sipp sent per rule in `run`.
fn invites_per_rule(run: &UacRun, host: &str) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for (uri, n) in run.invites_per_uri() {
        if let Some(rule) = dest_of(&uri, host).rule {
            *m.entry(rule).or_default() += n as u64;
        }
    }
    m
}

fn blocked_calls_per_rule(run: &UacRun, host: &str) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for c in &run.calls {
        let dest = dest_of(&c.uri, host);
        if let (true, Some(rule)) = (dest.blocked, dest.rule) {
            *m.entry(rule).or_default() += 1;
        }
    }
    m
}

#[test]
fn sipp_calls_through_an_xdp_guarded_router() {
    let topo = Topology::new("e2");
    let mut sg = Instance::new("e2e");
    let dir = sg.dir.clone();
    // The shipped defaults, plus an exception inside Sierra Leone for a partner network.
    let defaults = sg.ok(&["default-config"]);
    let cfg = sg.write("sipguard.toml", &defaults);
    sg.start(
        &topo.router,
        &[&topo.guarded_if],
        &cfg,
        &["--xdp-mode", "native"],
    );
    sg.ok(&ADD_EXCEPTION);
    let st: serde_json::Value = serde_json::from_str(&sg.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["interfaces"][0]["xdp_mode"], "native");

    let uas4 = Uas::start(&topo.carrier, CARRIER4, &dir, "v4");
    let uas6 = Uas::start(&topo.carrier, CARRIER6, &dir, "v6");
    let host6 = format!("[{CARRIER6}]");
    let mix4 = uris(CARRIER4);
    let mix6 = uris(&host6);
    // The hacked PBX places `calls` calls to `uris` at `rate` calls/s over IPv4.
    let pbx4 = |uris: &[String], calls: u32, rate: u32, tag: &str| {
        run_uac(&UacSpec {
            ns: &topo.pbx,
            local_ip: PBX4,
            remote: format!("{CARRIER4}:5060"),
            uris,
            calls,
            rate,
            dir: &dir,
            tag,
        })
    };

    // 1. 50 calls/s for 20 s over IPv4, with retransmissions for the blocked calls.
    let before = rule_counters(&sg);
    let run = pbx4(&mix4, 1000, 50, "steady");
    assert_eq!(
        run.calls.len(),
        1000,
        "sipp placed 1000 calls:\n{}",
        run.screen
    );
    check_calls("steady", &run, &uas4.trace_now(), CARRIER4);
    let after = rule_counters(&sg);
    let sent = invites_per_rule(&run, CARRIER4);
    let enforce_blocked_calls = blocked_calls_per_rule(&run, CARRIER4);
    for rule in ["+232", "+881", "+870", "+979"] {
        let (_, dropped, _) = delta(&after, &before, rule);
        assert_eq!(
            dropped, sent[rule],
            "rule {rule}: sipguard dropped {dropped}, sipp sent {} INVITEs (with retransmissions)",
            sent[rule]
        );
        assert!(
            sent[rule] > enforce_blocked_calls[rule],
            "retransmissions happened for {rule}"
        );
    }
    let (m, dr, _) = delta(&after, &before, "+23222");
    assert_eq!(
        (m, dr),
        (sent["+23222"], 0),
        "the exception matched and dropped nothing"
    );
    println!(
        "steady: {} calls, {} blocked; INVITEs dropped per rule = sipp's INVITE count: {sent:?}",
        run.calls.len(),
        enforce_blocked_calls.values().sum::<u64>()
    );

    // 2. A runtime block takes effect for the next call, and deleting it lifts it.
    let swiss = vec![format!("sip:+41446681800@{CARRIER4}")];
    let one = |tag: &str| pbx4(&swiss, 1, 10, tag);
    assert!(one("ch1").calls[0].completed, "+41 allowed before the edit");
    sg.ok(&[
        "rules",
        "add",
        "+41",
        "--action",
        "block",
        "--comment",
        "runtime",
    ]);
    let blocked = one("ch2");
    assert!(
        !blocked.calls[0].answered,
        "+41 blocked right after `rules add`"
    );
    let (_, dropped, _) = rule_counters(&sg)["+41"];
    assert_eq!(dropped, blocked.calls[0].invites_sent as u64);
    sg.ok(&["rules", "del", "+41"]);
    assert!(
        one("ch3").calls[0].completed,
        "+41 allowed again after `rules del`"
    );

    // 3. A burst as fast as sipp goes, with a sipguard restart in the middle of it.
    let burst = thread::scope(|s| {
        let h = s.spawn(|| pbx4(&mix4, 3000, 1000, "burst"));
        thread::sleep(Duration::from_millis(1500));
        sg.stop(libc::SIGTERM);
        sg.start(&topo.router, &[&topo.guarded_if], &cfg, &[]);
        h.join().expect("burst thread")
    });
    assert_eq!(burst.calls.len(), 3000, "{}", burst.screen);
    check_calls("burst with restart", &burst, &uas4.trace_now(), CARRIER4);
    println!("burst: 3000 calls at up to 1000 calls/s with a restart: 0 leaked, 0 lost");

    // 4. IPv6 through the same router.
    let run6 = run_uac(&UacSpec {
        ns: &topo.pbx,
        local_ip: PBX6,
        remote: format!("[{CARRIER6}]:5060"),
        uris: &mix6,
        calls: 240,
        rate: 60,
        dir: &dir,
        tag: "v6",
    });
    assert_eq!(run6.calls.len(), 240, "{}", run6.screen);
    check_calls("ipv6", &run6, &uas6.trace_now(), &host6);

    // 5. Monitor mode: every call goes through; would-drops equal the enforce run's blocks.
    sg.write(
        "sipguard.toml",
        &defaults.replace("mode = \"enforce\"", "mode = \"monitor\""),
    );
    sg.signal(libc::SIGHUP);
    sg.wait_log("config applied", 1);
    let before = rule_counters(&sg);
    let mon = pbx4(&mix4, 1000, 50, "monitor");
    let after = rule_counters(&sg);
    let not_completed = mon.calls.iter().filter(|c| !c.completed).count();
    assert_eq!(not_completed, 0, "monitor mode let every call through");
    for rule in ["+232", "+881", "+870", "+979"] {
        let (_, dropped, would) = delta(&after, &before, rule);
        assert_eq!(dropped, 0, "{rule}: nothing dropped in monitor mode");
        assert_eq!(
            would, enforce_blocked_calls[rule],
            "{rule}: monitor would-drops = calls the enforce run blocked"
        );
    }
    // Over the whole test, the UAS never saw a blocked destination.
    let seen = uas_calls(&uas4.finish());
    assert!(seen.len() >= 1000, "the UAS answered calls: {}", seen.len());
    drop(uas6);
}
