//! Velocity limits and the quarantine through the real kernel program (BPF_PROG_TEST_RUN): a
//! rule's limit counts new calls per customer or source, never retransmissions; a repeat limit
//! counts calls to one number; the quarantine trips in the kernel and then stops even allowed
//! destinations of that source only; monitor mode stops nothing and counts what it would.
//! The limits here are minutes long, so that the few milliseconds of a test never refill a
//! bucket.

use std::path::Path;

use guard_common::{Counter, limits::Subject};
use sipguard::{Filter, Verdict, config::ConfigFile};
use sipguard_tests::packet::{Pkt, request_with_call_id};

const CONFIG: &str = r#"
[settings]
sip_ports = [5060]

# Every international call: allowed, 6 a minute, 3 at once; over it, refused.
[[rule]]
prefix = "+"
action = "allow"
limit = "6/min"
burst = 3
over_limit = "reject"

# Satellite: at most 3 calls to one number in 10 minutes.
[[rule]]
prefix = "+881"
action = "allow"
repeat_limit = "3/10min"

[quarantine]
over_limit = 4
window = "10min"
duration = "1h"
"#;

fn parse(text: &str) -> ConfigFile {
    sipguard::config::parse(Path::new("limits.toml"), text).expect("valid config")
}

fn load(cfg: &ConfigFile) -> Filter {
    let mut f = Filter::load(&cfg.settings).expect("load the XDP program (tests must run as root)");
    f.maps.quarantine = cfg.quarantine.as_ref().map(|q| q.config());
    f.maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&cfg.customers.entries()))
        .expect("commit");
    f
}

/// An INVITE with its own Call-ID from `src` to `number`.
fn call(src: &str, number: &str, call_id: &str) -> Vec<u8> {
    let uri = format!("sip:{number}@gw.example.net");
    Pkt::v4(&request_with_call_id("INVITE", &uri, call_id))
        .src(src)
        .build()
}

fn counter(f: &Filter, c: Counter) -> u64 {
    f.global_counters().unwrap().get(c)
}

#[test]
fn a_limit_counts_new_calls_per_source_and_never_retransmissions() {
    let mut cfg = parse(CONFIG);
    cfg.quarantine = None;
    let f = load(&cfg);
    let a = "198.51.100.7";
    let mut verdicts = Vec::new();
    for i in 0..6 {
        let frame = call(a, "+442079460000", &format!("a-{i}@pbx"));
        verdicts.push(f.test_run(&frame).unwrap());
        // A retransmission: the same verdict as its call, no token taken.
        assert_eq!(
            f.test_run(&frame).unwrap(),
            verdicts[i],
            "retransmission {i}"
        );
    }
    use Verdict::{Drop, Pass};
    assert_eq!(verdicts, [Pass, Pass, Pass, Drop, Drop, Drop]);
    // Another source has its own bucket.
    assert_eq!(
        f.test_run(&call("203.0.113.9", "+442079460000", "b-0@pbx"))
            .unwrap(),
        Pass
    );
    let id = f
        .maps
        .live_rule(&"+".parse().unwrap())
        .unwrap()
        .expect("rule +")
        .id;
    let rc = f.rule_counters(id).unwrap();
    assert_eq!(rc.calls, 7);
    assert_eq!(rc.over_limit, 3, "{rc:?}");
    assert_eq!(rc.would_limit, 0);
    // The three refused calls and their retransmissions were dropped and answered.
    assert_eq!(rc.dropped, 6, "{rc:?}");
    assert_eq!(counter(&f, Counter::OverLimit), 3);
    assert_eq!(counter(&f, Counter::Rejected), 6);
}

#[test]
fn a_repeat_limit_counts_calls_to_one_number() {
    let mut cfg = parse(CONFIG);
    cfg.quarantine = None;
    let f = load(&cfg);
    let src = "198.51.100.8";
    let mut got = Vec::new();
    for i in 0..5 {
        got.push(
            f.test_run(&call(src, "+881631234567", &format!("r-{i}@pbx")))
                .unwrap(),
        );
    }
    // A sixth call, to another number, passes.
    got.push(f.test_run(&call(src, "+881639999999", "r-5@pbx")).unwrap());
    use Verdict::{Drop, Pass};
    assert_eq!(got, [Pass, Pass, Pass, Drop, Drop, Pass]);
    // Over the repeat limit: `over_limit` defaults to block (no response).
    assert_eq!(counter(&f, Counter::Rejected), 0);
    assert_eq!(counter(&f, Counter::OverLimit), 2);
}

#[test]
fn the_quarantine_trips_in_the_kernel_and_stops_only_that_source() {
    let cfg = parse(CONFIG);
    let mut f = load(&cfg);
    let hacked = "198.51.100.66";
    // 3 calls pass (the burst), then over-limit calls; the 5th over-limit call trips the
    // trigger ("more than 4").
    let mut stopped = 0;
    for i in 0..8 {
        if f.test_run(&call(hacked, "+232761234567", &format!("h-{i}@pbx")))
            .unwrap()
            == Verdict::Drop
        {
            stopped += 1;
        }
    }
    assert_eq!(stopped, 5);
    assert_eq!(counter(&f, Counter::QuarantinesStarted), 1);
    let q = f.maps.quarantined().unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    let (who, entry) = q[0];
    assert_eq!(
        who,
        Subject::address(
            4,
            guard_common::Endpoint::from_ip(hacked.parse().unwrap(), 0).addr
        )
    );
    assert_eq!(entry.reason, guard_common::limits::REASON_OVER_LIMIT);
    assert_eq!(entry.over_limit, 5);
    let hour = entry.until_ns - entry.since_ns;
    assert_eq!(hour, 3600 * 1_000_000_000);
    // Quarantined: a new international call is refused at once, also with a full bucket
    // elsewhere; a national call is out of scope; another source is unaffected.
    assert_eq!(
        f.test_run(&call(hacked, "+442079460000", "h-new@pbx"))
            .unwrap(),
        Verdict::Drop
    );
    assert_eq!(
        f.test_run(&call(hacked, "0312345678", "h-nat@pbx"))
            .unwrap(),
        Verdict::Pass
    );
    assert_eq!(
        f.test_run(&call("198.51.100.67", "+442079460000", "o-1@pbx"))
            .unwrap(),
        Verdict::Pass
    );
    assert!(counter(&f, Counter::Quarantined) >= 1);
    // A release restores service at once (a fresh call within the burst of a new bucket is
    // not what passes here: the bucket is still empty, so use the repeat-limited rule).
    assert!(f.maps.set_quarantine(&who, None).unwrap());
    assert!(f.maps.quarantined().unwrap().is_empty());
    assert_eq!(
        f.test_run(&call(hacked, "+881631234567", "h-after@pbx"))
            .unwrap(),
        Verdict::Pass
    );
    // A reload keeps the quarantine map (it is not part of the rule set).
    f.maps.set_quarantine(&who, Some(entry)).unwrap();
    f.maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&cfg.customers.entries()))
        .unwrap();
    assert_eq!(f.maps.quarantined().unwrap().len(), 1);
}

#[test]
fn monitor_mode_stops_nothing_and_counts_what_it_would() {
    let enforce = parse(CONFIG);
    let monitor = parse(&CONFIG.replace(
        "sip_ports = [5060]",
        "sip_ports = [5060]\nmode = \"monitor\"",
    ));
    let burst = |f: &Filter| -> usize {
        (0..8)
            .filter(|i| {
                f.test_run(&call(
                    "198.51.100.70",
                    "+232761234567",
                    &format!("m-{i}@pbx"),
                ))
                .unwrap()
                    == Verdict::Drop
            })
            .count()
    };
    let fe = load(&enforce);
    let stopped = burst(&fe);
    let fm = load(&monitor);
    assert_eq!(burst(&fm), 0, "monitor mode stops nothing");
    assert_eq!(
        counter(&fm, Counter::WouldLimit),
        counter(&fe, Counter::OverLimit)
    );
    assert_eq!(stopped as u64, counter(&fe, Counter::OverLimit));
    assert_eq!(counter(&fm, Counter::QuarantinesStarted), 0);
    assert_eq!(counter(&fm, Counter::WouldQuarantine), 1);
    assert!(fm.maps.quarantined().unwrap().is_empty());
}

#[test]
fn rules_without_limits_are_untouched() {
    let f = load(&parse(
        "[settings]\nsip_ports = [5060]\n[[rule]]\nprefix = \"+232\"\naction = \"block\"\n",
    ));
    for i in 0..20 {
        assert_eq!(
            f.test_run(&call(
                "198.51.100.9",
                "+442079460000",
                &format!("n-{i}@pbx")
            ))
            .unwrap(),
            Verdict::Pass
        );
    }
    assert_eq!(counter(&f, Counter::OverLimit), 0);
}

#[test]
fn limit_buckets_sizes_the_bucket_map() {
    let cfg = parse(&CONFIG.replace(
        "sip_ports = [5060]",
        "sip_ports = [5060]\nlimit_buckets = 4096",
    ));
    assert_eq!(cfg.settings.limit_buckets, 4096);
    let f = load(&cfg);
    let buckets = f
        .kernel_memory()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "SG_BUCKETS")
        .expect("the bucket map");
    assert_eq!(buckets.max_entries, 4096);
    let e = sipguard::config::parse(Path::new("limits.toml"), "[settings]\nlimit_buckets = 10\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("limits.toml:2: limit_buckets: 10 is out of range (1024 to 16777216)"),
        "{e}"
    );
}

#[test]
fn over_limit_monitor_passes_and_counts_would_limit() {
    let mut cfg = parse(&CONFIG.replace("over_limit = \"reject\"", "over_limit = \"monitor\""));
    cfg.quarantine = None;
    let f = load(&cfg);
    let got: Vec<Verdict> = (0..5)
        .map(|i| {
            f.test_run(&call(
                "198.51.100.7",
                "+442079460000",
                &format!("w-{i}@pbx"),
            ))
            .unwrap()
        })
        .collect();
    assert!(got.iter().all(|v| *v == Verdict::Pass), "{got:?}");
    assert_eq!(counter(&f, Counter::WouldLimit), 2);
    assert_eq!(counter(&f, Counter::OverLimit), 0);
    assert_eq!(counter(&f, Counter::WouldDrop), 2);
}
