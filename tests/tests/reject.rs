//! `reject` rules end to end: sipp calls from the PBX namespace through the guarded router; the
//! kernel drops the rejected INVITEs and the daemon answers each with the rule's SIP response.
//! Every figure comes from sipp's own traces (response codes, times, retransmissions) and is
//! compared with sipguard's counters. Run as root.

use sipguard_tests::{
    harness::Instance,
    sipp::{UacSpec, Uas, run_uac, uas_calls},
    topology::{CARRIER4, PBX4, Topology},
};

const CONFIG: &str = r#"
[settings]
sip_ports = [5060]

[[rule]]
prefix = "+232"
action = "reject"

[[rule]]
prefix = "+881"
action = "reject"
reject_code = 603
reject_reason = "Decline"

[[rule]]
prefix = "+44"
action = "block"
"#;

#[test]
fn rejected_calls_get_their_response_at_once_and_never_reach_the_carrier() {
    let topo = Topology::new("rj");
    let mut sg = Instance::new("reject");
    let dir = sg.dir.clone();
    let cfg = sg.write("sipguard.toml", CONFIG);
    sg.start(&topo.router, &[&topo.guarded_if], &cfg, &[]);
    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "rj");
    let uri = |n: &str| format!("sip:{n}@{CARRIER4}:5060");
    let mut uris = Vec::new();
    for _ in 0..2 {
        uris.push(uri("+23276123456"));
        uris.push(uri("+23230123456"));
        uris.push(uri("+881631234567"));
        uris.push(uri("+442079460000"));
        uris.push(uri("+81312345678"));
    }
    let run = run_uac(&UacSpec {
        ns: &topo.pbx,
        local_ip: PBX4,
        remote: format!("{CARRIER4}:5060"),
        uris: &uris,
        calls: uris.len() as u32,
        rate: 5,
        dir: &dir,
        tag: "rj",
    });
    let at_uas = uas_calls(&uas.finish());
    assert_eq!(run.calls.len(), uris.len(), "{}", run.screen);
    let mut errs = Vec::new();
    let mut slowest: f64 = 0.0;
    for c in &run.calls {
        let reached = at_uas
            .get(&c.call_id)
            .is_some_and(|(_, m)| m.iter().any(|m| m == "INVITE"));
        let want = if c.uri.contains("+232") {
            Some(403)
        } else if c.uri.contains("+881") {
            Some(603)
        } else {
            None
        };
        match want {
            Some(code) => {
                if c.refused != Some(code) {
                    errs.push(format!("{}: {:?}, want {code}", c.uri, c.refused));
                }
                if c.invites_sent != 1 {
                    errs.push(format!("{}: INVITE sent {} times", c.uri, c.invites_sent));
                }
                if reached {
                    errs.push(format!("{}: the INVITE reached the carrier", c.uri));
                }
                let after = c.refused_after.unwrap_or(f64::MAX);
                slowest = slowest.max(after);
                if after >= 0.1 {
                    errs.push(format!("{}: the response took {after:.3} s", c.uri));
                }
            }
            None if c.uri.contains("+44") => {
                // `block`: silence, so the PBX retransmits and gives up.
                if c.refused.is_some() || reached || c.invites_sent < 2 {
                    errs.push(format!(
                        "{}: blocked call: refused {:?}, reached {reached}, {} INVITEs",
                        c.uri, c.refused, c.invites_sent
                    ));
                }
            }
            None => {
                if !c.completed || c.refused.is_some() {
                    errs.push(format!("{}: allowed call did not complete", c.uri));
                }
            }
        }
    }
    assert!(errs.is_empty(), "{}\n{}", errs.join("\n"), run.screen);
    println!(
        "slowest response to a rejected INVITE: {:.1} ms",
        slowest * 1000.0
    );
    let stats = sg.stats();
    let g = &stats["global"];
    assert_eq!(g["rejected"], 6, "{stats}");
    assert_eq!(g["replies_lost"], 0, "{stats}");
    let rules = stats["rules"].as_array().unwrap();
    let dropped = |p: &str| {
        rules
            .iter()
            .find(|r| r["prefix"] == p)
            .map(|r| (r["calls"].as_u64().unwrap(), r["dropped"].as_u64().unwrap()))
            .unwrap()
    };
    assert_eq!(
        dropped("+232"),
        (4, 4),
        "one INVITE per call: none retransmitted"
    );
    assert_eq!(dropped("+881"), (2, 2));
    assert_eq!(dropped("+44").0, 2);
    assert!(dropped("+44").1 >= 4, "blocked INVITEs are retransmitted");
}
