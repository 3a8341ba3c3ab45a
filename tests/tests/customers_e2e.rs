//! Two customers end to end, with real SIP stacks: two PBX namespaces behind two ports of the
//! router, each a customer; sipp calls from both at once. Customer A has international call
//! barring by `reject` (its policy does not inherit the global rules); customer B keeps the
//! global rules with a `+23222` exception of its own. Every figure comes from sipp's traces.

use std::thread;

use sipguard_tests::{
    harness::Instance,
    sipp::{UacRun, UacSpec, Uas, run_uac, uas_calls},
    topology::{CARRIER4, PBX2_4, PBX4, Topology},
};

const CONFIG: &str = r#"
[settings]
sip_ports = [5060]

[[rule]]
prefix = "+232"
action = "block"

[[rule]]
prefix = "+881"
action = "block"

[[policy]]
name = "intl-barring"
inherit = false
[[policy.rule]]
prefix = "+"
action = "reject"

[[policy]]
name = "sl-partner"
[[policy.rule]]
prefix = "+23222"
action = "allow"

[[customer]]
name = "a"
sources = ["192.0.2.0/24", "2001:db8:1::/64"]
policy = "intl-barring"

[[customer]]
name = "b"
sources = ["198.51.100.0/24"]
policy = "sl-partner"
"#;

#[test]
fn barring_for_one_customer_an_exception_for_the_other() {
    let topo = Topology::new("cu");
    let second = topo.second_pbx("cu");
    let mut sg = Instance::new("customers");
    let dir = sg.dir.clone();
    let cfg = sg.write("sipguard.toml", CONFIG);
    sg.start(
        &topo.router,
        &[&topo.guarded_if, &second.guarded_if],
        &cfg,
        &[],
    );
    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "cu");
    let uri = |n: &str| format!("sip:{n}@{CARRIER4}:5060");
    let a_uris: Vec<String> = [
        "+23276123456",
        "+442079460000",
        "+881631234567",
        "0312345678",
    ]
    .iter()
    .flat_map(|n| [uri(n), uri(n)])
    .collect();
    let b_uris: Vec<String> = [
        "+23276123456",
        "+23222123456",
        "+442079460000",
        "+881631234567",
    ]
    .iter()
    .flat_map(|n| [uri(n), uri(n)])
    .collect();
    let (a, b): (UacRun, UacRun) = thread::scope(|s| {
        let a = s.spawn(|| {
            run_uac(&UacSpec {
                ns: &topo.pbx,
                local_ip: PBX4,
                remote: format!("{CARRIER4}:5060"),
                uris: &a_uris,
                calls: a_uris.len() as u32,
                rate: 4,
                dir: &dir,
                tag: "a",
            })
        });
        let b = s.spawn(|| {
            run_uac(&UacSpec {
                ns: &second.pbx,
                local_ip: PBX2_4,
                remote: format!("{CARRIER4}:5060"),
                uris: &b_uris,
                calls: b_uris.len() as u32,
                rate: 4,
                dir: &dir,
                tag: "b",
            })
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    let at_uas = uas_calls(&uas.finish());
    let reached = |id: &str| {
        at_uas
            .get(id)
            .is_some_and(|(_, m)| m.iter().any(|m| m == "INVITE"))
    };
    assert_eq!(a.calls.len(), a_uris.len(), "{}", a.screen);
    assert_eq!(b.calls.len(), b_uris.len(), "{}", b.screen);
    let mut errs = Vec::new();
    for c in &a.calls {
        if c.uri.contains('+') {
            let fast = c.refused_after.is_some_and(|t| t < 0.1);
            if c.refused != Some(403) || c.invites_sent != 1 || reached(&c.call_id) || !fast {
                errs.push(format!(
                    "A {}: refused {:?} after {:?} s, {} INVITEs, reached the carrier: {}",
                    c.uri,
                    c.refused,
                    c.refused_after,
                    c.invites_sent,
                    reached(&c.call_id)
                ));
            }
        } else if !c.completed {
            errs.push(format!("A {}: the domestic call did not complete", c.uri));
        }
    }
    for c in &b.calls {
        let blocked =
            (c.uri.contains("+2327") || c.uri.contains("+881")) && !c.uri.contains("+23222");
        if blocked {
            if c.refused.is_some() || reached(&c.call_id) || c.invites_sent < 2 {
                errs.push(format!(
                    "B {}: blocked call: refused {:?}, reached {}, {} INVITEs",
                    c.uri,
                    c.refused,
                    reached(&c.call_id),
                    c.invites_sent
                ));
            }
        } else if !c.completed || c.refused.is_some() {
            errs.push(format!("B {}: the call did not complete", c.uri));
        }
    }
    assert!(
        errs.is_empty(),
        "{}\nA:\n{}\nB:\n{}",
        errs.join("\n"),
        a.screen,
        b.screen
    );

    // Counters per policy and rule equal what sipp did.
    let stats = sg.stats();
    let rules = stats["rules"].as_array().unwrap();
    let rule = |policy: Option<&str>, prefix: &str| {
        rules
            .iter()
            .find(|r| r["prefix"] == prefix && r["policy"].as_str() == policy)
            .map(|r| (r["calls"].as_u64().unwrap(), r["dropped"].as_u64().unwrap()))
            .unwrap_or_else(|| panic!("no rule {policy:?} {prefix} in {stats}"))
    };
    let a_intl = a.calls.iter().filter(|c| c.uri.contains('+')).count() as u64;
    assert_eq!(rule(Some("intl-barring"), "+"), (a_intl, a_intl));
    let b_sl: Vec<_> = b.calls.iter().filter(|c| c.uri.contains("+2327")).collect();
    let b_sl_invites: u64 = b_sl.iter().map(|c| u64::from(c.invites_sent)).sum();
    assert_eq!(rule(None, "+232"), (b_sl.len() as u64, b_sl_invites));
    let b_exc = b.calls.iter().filter(|c| c.uri.contains("+23222")).count() as u64;
    assert_eq!(rule(Some("sl-partner"), "+23222").0, b_exc);
    assert_eq!(stats["global"]["rejected"], a_intl, "{stats}");
    // Per customer and rule.
    let per: serde_json::Value =
        serde_json::from_str(&sg.ok(&["stats", "--customers", "--json"])).unwrap();
    let rows = per["customers"].as_array().unwrap();
    let row = |customer: &str, rule: &str| {
        rows.iter()
            .filter(|r| r["customer"] == customer && r["rule"] == rule)
            .fold((0, 0, 0), |acc, r| {
                (
                    acc.0 + r["calls"].as_u64().unwrap(),
                    acc.1 + r["dropped"].as_u64().unwrap(),
                    acc.2 + r["rejected"].as_u64().unwrap(),
                )
            })
    };
    assert_eq!(row("a", "intl-barring/+"), (a_intl, 0, a_intl), "{per}");
    assert_eq!(
        row("b", "+232"),
        (b_sl.len() as u64, b_sl_invites, 0),
        "{per}"
    );
    assert_eq!(row("b", "sl-partner/+23222"), (b_exc, 0, 0), "{per}");
    assert!(
        rows.iter()
            .all(|r| r["customer"] == "a" || r["customer"] == "b"),
        "{per}"
    );
    // The same in /metrics, per customer.
    let body = sipguard_tests::harness::scrape_metrics(&topo.router);
    let b_stopped = b
        .calls
        .iter()
        .filter(|c| c.uri.contains("+2327") || c.uri.contains("+881"))
        .count() as u64;
    for (customer, stopped) in [("a", a_intl), ("b", b_stopped)] {
        let line = body
            .lines()
            .find(|l| {
                l.starts_with("sipguard_customer_stopped_calls_total{")
                    && l.contains(&format!("customer=\"{customer}\""))
            })
            .unwrap_or_else(|| panic!("no series for customer {customer}:\n{body}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // Each interface has its own series; a customer's calls arrive on one of them.
        assert_eq!(v as u64, stopped, "{line}");
    }
    // Events name the customer and the policy's rule.
    let events = sg.ok(&["events"]);
    let a_events = events
        .lines()
        .filter(|l| l.contains("rule intl-barring/+ (reject)") && l.ends_with("customer a"))
        .count() as u64;
    assert_eq!(a_events, a_intl, "{events}");
    let b_events = events
        .lines()
        .filter(|l| l.contains("rule +232 (block)") && l.ends_with("customer b"))
        .count();
    assert_eq!(b_events, b_sl.len(), "{events}");
    // What the last commit loaded, and the live entries.
    let list = sg.ok(&["customers", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("a ")
            && l.contains("intl-barring")
            && l.contains("192.0.2.0/24 2001:db8:1::/64")),
        "{list}"
    );
    assert!(list.contains("2 customer(s), 3 live entries"), "{list}");
    let policies: serde_json::Value =
        serde_json::from_str(&sg.ok(&["policies", "list", "--json"])).unwrap();
    assert_eq!(
        policies["policies"],
        serde_json::json!([
            {"name": "intl-barring", "inherit": false, "rules": 1, "customers": 1, "comment": null},
            {"name": "sl-partner", "inherit": true, "rules": 1, "customers": 1, "comment": null},
        ])
    );
    // The text view names the policy.
    let text = sg.ok(&["stats"]);
    assert!(text.contains("intl-barring/+ "), "{text}");
    assert!(text.contains("sl-partner/+23222 "), "{text}");
}

/// Two configs that swap the customers' policies, and change the reject policy's response with
/// them. Whole sets give: A refused with 403 (first) or A's call completing (second); B's call
/// completing (first) or B refused with 603 (second). A mix of one set's customers with the
/// other's rules gives A a 603 or B a 403, and a dropped INVITE (no rule should drop) gives a
/// call that times out: both are counted as calls decided by a half-applied set.
fn swap_config(a_policy: &str, b_policy: &str, code: u16) -> String {
    let reason = if code == 403 { "Forbidden" } else { "Decline" };
    format!(
        r#"
[settings]
sip_ports = [5060]

[[policy]]
name = "refuse"
inherit = false
[[policy.rule]]
prefix = "+44"
action = "reject"
reject_code = {code}
reject_reason = "{reason}"

[[policy]]
name = "open"
inherit = false
[[policy.rule]]
prefix = "+44"
action = "allow"

[[customer]]
name = "a"
sources = ["192.0.2.0/24"]
policy = "{a_policy}"

[[customer]]
name = "b"
sources = ["198.51.100.0/24"]
policy = "{b_policy}"
"#
    )
}

/// Swaps the two customers' policies by SIGHUP, again and again, while sipp calls from both:
/// every call is decided by one whole set, and a runtime customer edit survives every reload.
#[test]
fn sighup_swaps_policies_while_both_customers_call() {
    let topo = Topology::new("cs");
    let second = topo.second_pbx("cs");
    let mut sg = Instance::new("custswap");
    let dir = sg.dir.clone();
    let first = swap_config("refuse", "open", 403);
    let swapped = swap_config("open", "refuse", 603);
    let cfg = sg.write("sipguard.toml", &first);
    sg.start(
        &topo.router,
        &[&topo.guarded_if, &second.guarded_if],
        &cfg,
        &[],
    );
    // A runtime customer (a documentation range nobody sends from here): kept by every reload.
    sg.ok(&[
        "customers",
        "add",
        "lab",
        "--source",
        "203.0.113.0/24",
        "--policy",
        "refuse",
    ]);
    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "cs");
    let uris = vec![format!("sip:+442079460000@{CARRIER4}:5060")];
    const CALLS: u32 = 240;
    let running = std::sync::atomic::AtomicBool::new(true);
    let applied_before = sg.log_text().matches("config applied").count();
    let (a, b, swaps) = thread::scope(|s| {
        let caller = |ns, ip, tag| {
            let (uris, dir) = (&uris, &dir);
            s.spawn(move || {
                run_uac(&UacSpec {
                    ns,
                    local_ip: ip,
                    remote: format!("{CARRIER4}:5060"),
                    uris,
                    calls: CALLS,
                    rate: 30,
                    dir,
                    tag,
                })
            })
        };
        let a = caller(&topo.pbx, PBX4, "a");
        let b = caller(&second.pbx, PBX2_4, "b");
        let swapper = s.spawn(|| {
            let mut swaps = 0usize;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                thread::sleep(std::time::Duration::from_millis(150));
                let text = if swaps.is_multiple_of(2) {
                    &swapped
                } else {
                    &first
                };
                sg.write("sipguard.toml", text);
                sg.signal(libc::SIGHUP);
                swaps += 1;
                sg.wait_log("config applied", applied_before + swaps);
            }
            swaps
        });
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        (a, b, swapper.join().unwrap())
    });
    let _ = uas.finish();
    assert_eq!(a.calls.len(), CALLS as usize, "{}", a.screen);
    assert_eq!(b.calls.len(), CALLS as usize, "{}", b.screen);
    let outcome = |c: &sipguard_tests::sipp::Call| match (c.refused, c.completed) {
        (Some(code), _) => format!("refused {code}"),
        (None, true) => "completed".to_string(),
        (None, false) => "neither refused nor completed".to_string(),
    };
    let tally = |calls: &[sipguard_tests::sipp::Call]| {
        let mut t = std::collections::BTreeMap::<String, usize>::new();
        for c in calls {
            *t.entry(outcome(c)).or_default() += 1;
        }
        t
    };
    let (ta, tb) = (tally(&a.calls), tally(&b.calls));
    let half: usize = ta
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "refused 403" | "completed"))
        .chain(
            tb.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "refused 603" | "completed")),
        )
        .map(|(_, n)| n)
        .sum();
    eprintln!("{swaps} swaps; A: {ta:?}; B: {tb:?}");
    assert_eq!(
        half, 0,
        "calls decided by a half-applied set; A: {ta:?}; B: {tb:?}"
    );
    // Both sets decided calls of both customers.
    for (t, outcomes) in [
        (&ta, ["refused 403", "completed"]),
        (&tb, ["refused 603", "completed"]),
    ] {
        for o in outcomes {
            assert!(t.get(o).copied().unwrap_or(0) > 0, "no call {o}: {t:?}");
        }
    }
    assert!(swaps >= 10, "only {swaps} swaps during the calls");
    // The runtime customer is still there after every reload.
    let list = sg.ok(&["customers", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("lab ") && l.contains("refuse") && l.contains("runtime")),
        "{list}"
    );
    assert!(list.contains("3 customer(s), 3 live entries"), "{list}");
    assert!(
        !sg.log_text().contains("reload failed"),
        "{}",
        sg.log_text()
    );
}
