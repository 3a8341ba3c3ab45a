//! A fleet of routers on one rule set, against a real etcd (Debian's etcd-server) and a real
//! Prometheus, each router a namespace with its own daemon (`run --fleet`): pushes reach every
//! router and are enforced; an invalid document is refused everywhere and shown centrally;
//! two concurrent pushes cannot both win; with etcd down every router keeps enforcing, pushes
//! fail clearly and a restarted daemon enforces its last good revision; etcd back, everyone
//! catches up; a stopped router shows as gone. A TLS variant uses client certificates.
//! Run as root.

use std::{thread, time::Duration};

use sipguard_tests::{
    fleet::{Fleet, PREFIX, in_ns, run_in},
    harness::{burst, receiver_socket},
};

const SL: &str = "sip:+23276123456@carrier.example.net";
const FR: &str = "sip:+33142685300@carrier.example.net";
const UK: &str = "sip:+442071234567@carrier.example.net";
const DE: &str = "sip:+4930123456@carrier.example.net";

const METRICS: &str = "[metrics]\nlisten = \"0.0.0.0:9960\"\n";

fn doc(blocked: &[&str]) -> String {
    let mut d = METRICS.to_string();
    for p in blocked {
        d += &format!("\n[[rule]]\nprefix = \"{p}\"\naction = \"block\"\n");
    }
    d
}

/// `fleet status --json`, one value per router.
fn status(f: &Fleet) -> Vec<serde_json::Value> {
    let (ok, out, err) = f.cli(&["status", "--json"]);
    assert!(ok, "fleet status: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("status JSON line"))
        .collect()
}

/// Waits (bounded) until `cond` holds for `fleet status`.
fn wait_status(f: &Fleet, what: &str, cond: impl Fn(&[serde_json::Value]) -> bool) {
    for _ in 0..300 {
        if cond(&status(f)) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "fleet status never showed {what}:\n{}",
        f.cli(&["status"]).1
    );
}

/// Sends `n` INVITEs to `uri` through router `i`: how many arrived.
fn through(f: &Fleet, i: usize, tag: &str, uri: &str, n: usize) -> usize {
    let r = &f.routers[i];
    let rx = receiver_socket(&r.pair.tx, &r.pair.rx);
    burst(&r.pair.tx, &rx, &format!("{tag}-{i}"), uri, n).len()
}

/// Router `i`'s own /metrics value of an unlabelled `metric`.
fn metric(f: &Fleet, i: usize, metric: &str) -> Option<f64> {
    let o = run_in(
        &f.routers[i].pair.rx,
        "curl",
        &["-s", "--max-time", "2", "http://127.0.0.1:9960/metrics"],
    );
    String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
        l.strip_prefix(metric)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

#[test]
fn ten_routers_follow_etcd_and_keep_enforcing_without_it() {
    let mut f = Fleet::new("fp", false);
    f.add_routers(10);
    let n = f.routers.len();

    // A push is enforced on every router.
    let r1 = f.push("v1.toml", &doc(&["+232"]));
    let took = f.converge(r1, Duration::from_secs(60));
    println!("10 routers applied revision {r1} in {took:?}");
    let mut blocked = 0;
    for i in 0..n {
        assert_eq!(through(&f, i, "sl", SL, 3), 0, "router {i} let SL through");
        blocked += 3;
        assert_eq!(through(&f, i, "fr", FR, 2), 2, "router {i} dropped FR");
    }
    wait_status(&f, "every router current", |s| {
        s.len() == n
            && s.iter()
                .all(|r| r["state"] == "current" && r["revision"] == r1)
    });

    // A real Prometheus: the fleet-wide drops of +232 equal the INVITEs blocked.
    let _prom = f.prometheus();
    let mut seen = None;
    for _ in 0..600 {
        seen = f.query(r#"prefix:sipguard_rule_dropped:sum{prefix="+232"}"#);
        if seen == Some(blocked as f64) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, Some(blocked as f64), "fleet-wide drops of +232");
    assert_eq!(
        f.query(r#"sum(sipguard_rule_dropped_total{prefix="+232"})"#),
        Some(blocked as f64)
    );
    assert_eq!(f.query("count(sipguard_config_revision)"), Some(n as f64));
    // The dashboard's fleet metrics are what a fleet router exports.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/grafana/sipguard.json"
    ))
    .unwrap();
    for m in sipguard_tests::fleet::FLEET_METRICS {
        assert!(dash.contains(m), "the dashboard does not show {m}");
        assert!(metric(&f, 0, m).is_some(), "router 0 does not export {m}");
    }

    // An invalid document written straight to the key: refused everywhere, shown centrally,
    // the rules in force stay.
    let bad = "[[rule]]\nprefix = \"+232\"\naction = \"explode\"\n";
    let key = format!("{PREFIX}/config");
    let put = f.etcdctl(&["put", &key, bad]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    wait_status(&f, "every router in error", |s| {
        s.iter()
            .all(|r| r["state"] == "error" && r["revision"] == r1)
    });
    let st = status(&f);
    let msg = st[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("explode") && msg.contains(":3:"), "{msg}");
    let human = f.cli(&["status"]).1;
    assert!(
        human.contains("0 current, 0 behind, 10 in error"),
        "{human}"
    );
    for i in 0..n {
        assert_eq!(
            through(&f, i, "sl-bad", SL, 1),
            0,
            "router {i} after the bad document"
        );
    }

    // A local edit on a fleet router is refused, saying how.
    let r = f.routers[0]
        .sg
        .cli(&["rules", "add", "+33", "--action", "block"]);
    assert!(
        !r.ok && r.stderr.contains("takes its rules from etcd"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("sipguard fleet push"), "{}", r.stderr);

    // Two concurrent pushes on the same revision: one wins, the other gets a conflict.
    let (_, _, err) = f.cli(&["get"]);
    let base: String = err
        .trim()
        .strip_prefix("revision ")
        .unwrap_or_else(|| panic!("fleet get: {err}"))
        .to_string();
    let a = f.dir.join("a.toml");
    let b = f.dir.join("b.toml");
    std::fs::write(&a, doc(&["+232", "+44"])).unwrap();
    std::fs::write(&b, doc(&["+232", "+49"])).unwrap();
    let results: Vec<(bool, String, String)> = thread::scope(|s| {
        let hs: Vec<_> = [&a, &b]
            .into_iter()
            .map(|p| {
                let f = &f;
                let base = base.clone();
                s.spawn(move || {
                    f.cli(&[
                        "push",
                        p.to_str().unwrap(),
                        "--expect-revision",
                        &base,
                        "--wait",
                        "0s",
                    ])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&(bool, String, String)> = results.iter().filter(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "exactly one push wins: {results:?}");
    let loser = results.iter().find(|r| !r.0).unwrap();
    assert!(loser.2.contains("conflict"), "{}", loser.2);
    let r2: i64 = winners[0]
        .1
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    f.converge(r2, Duration::from_secs(60));
    // a.toml blocks UK (+44), b.toml Germany (+49).
    let winner_uri = if results[0].0 { UK } else { DE };

    // etcd stopped: every router keeps enforcing, and says it is disconnected.
    f.stop_etcd();
    for i in 0..n {
        let mut connected = None;
        for _ in 0..300 {
            connected = metric(&f, i, "sipguard_fleet_connected");
            if connected == Some(0.0) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(connected, Some(0.0), "router {i} still says connected");
        assert_eq!(
            through(&f, i, "sl-down", SL, 1),
            0,
            "router {i} with etcd down"
        );
        assert_eq!(through(&f, i, "win-down", winner_uri, 1), 0, "router {i}");
    }
    // A push while etcd is down fails, naming etcd.
    let (ok, _, err) = f.cli(&["push", a.to_str().unwrap()]);
    assert!(!ok, "push with etcd down succeeded");
    assert!(
        err.contains("etcd http://198.51.100.1:2379 /sipguard/test") && err.contains("connect"),
        "{err}"
    );
    // A daemon restarted while etcd is down enforces its last good revision.
    f.routers[0].sg.stop(libc::SIGTERM);
    f.start_router(0);
    let log = f.routers[0].sg.log_text();
    assert!(log.contains("enforcing the last applied revision"), "{log}");
    assert_eq!(through(&f, 0, "sl-restart", SL, 2), 0);
    assert_eq!(through(&f, 0, "win-restart", winner_uri, 2), 0);
    assert_eq!(through(&f, 0, "fr-restart", FR, 2), 2);

    // etcd back: every router reconnects and catches up to the newest revision.
    f.start_etcd();
    let r3 = f.push("v3.toml", &doc(&["+232", "+44", "+49", "+33"]));
    f.converge(r3, Duration::from_secs(60));
    for i in 0..n {
        assert_eq!(
            through(&f, i, "fr-back", FR, 1),
            0,
            "router {i} after catching up"
        );
        let mut connected = None;
        for _ in 0..100 {
            connected = metric(&f, i, "sipguard_fleet_connected");
            if connected == Some(1.0) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(connected, Some(1.0), "router {i}");
        assert_eq!(metric(&f, i, "sipguard_config_revision"), Some(r3 as f64));
    }

    // A router whose daemon is gone shows as gone once its lease expires.
    f.routers[n - 1].sg.stop(libc::SIGKILL);
    let last = format!("router-{:03}", n - 1);
    wait_status(&f, "the stopped router gone", |s| {
        s.iter()
            .any(|r| r["node"] == last.as_str() && r["state"] == "gone")
            && s.iter().filter(|r| r["state"] == "current").count() == n - 1
    });
}

#[test]
fn a_tls_fleet_with_client_certificates() {
    let mut f = Fleet::new("ft", true);
    f.add_routers(3);
    let r1 = f.push("v1.toml", &doc(&["+232"]));
    f.converge(r1, Duration::from_secs(60));
    for i in 0..f.routers.len() {
        assert_eq!(through(&f, i, "sl", SL, 2), 0, "router {i} let SL through");
        assert_eq!(through(&f, i, "fr", FR, 2), 2, "router {i} dropped FR");
    }
    wait_status(&f, "every router current", |s| {
        s.len() == 3 && s.iter().all(|r| r["state"] == "current")
    });
    // Without the client certificate etcd refuses the connection, and the error says where.
    let noclient = f.dir.join("noclient.toml");
    let text = std::fs::read_to_string(&f.fleet_file).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("cert") && !l.starts_with("key"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&noclient, text).unwrap();
    let o = in_ns(&f.mgmt, sipguard_tests::harness::sipguard_bin())
        .args(["fleet", "--fleet", noclient.to_str().unwrap(), "get"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a client without a certificate was let in"
    );
    assert!(
        err.contains("etcd https://198.51.100.1:2379"),
        "{}: {err}",
        o.status
    );
}
