//! Attach test: the filter in native (driver) mode on one end of a veth pair, real UDP packets
//! from the other end, both ends in namespaces this test creates (and deletes, even on failure).

use std::{
    collections::BTreeSet,
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::programs::XdpMode;
use guard_common::Counter;
use sipguard_tests::{
    fixtures::{self, SL, SL_EXCEPTION, Setup},
    load,
    netns::{RX4, RX6, TX4, TX6, VethPair},
    packet::request_with_call_id,
};

struct Send {
    call_id: String,
    to: SocketAddr,
    payload: Vec<u8>,
    arrives: bool,
}

fn plan() -> Vec<Send> {
    let mut v = Vec::new();
    let mut add = |n: usize, tag: &str, method: &str, uri: &str, to: &str, arrives: bool| {
        for i in 0..n {
            let call_id = format!("{tag}-{i}@sipguard.test");
            v.push(Send {
                payload: request_with_call_id(method, uri, &call_id),
                call_id,
                to: to.parse().expect("address"),
                arrives,
            });
        }
    };
    let v4 = format!("{RX4}:5060");
    let v6 = format!("[{RX6}]:5060");
    add(
        5,
        "v4-blocked-plus",
        "INVITE",
        "sip:+23276123456@carrier.example.net",
        &v4,
        false,
    );
    add(
        3,
        "v6-blocked-00",
        "INVITE",
        "sip:0023276123456@carrier.example.net",
        &v6,
        false,
    );
    add(
        2,
        "v4-blocked-tel",
        "INVITE",
        "tel:+232-76-123-456",
        &v4,
        false,
    );
    add(
        5,
        "v4-allowed",
        "INVITE",
        "sip:+33142685300@carrier.example.net",
        &v4,
        true,
    );
    add(
        3,
        "v6-allowed",
        "INVITE",
        "sip:+33142685300@carrier.example.net",
        &v6,
        true,
    );
    add(
        2,
        "v4-exception",
        "INVITE",
        "sip:+23222123456@carrier.example.net",
        &v4,
        true,
    );
    add(
        2,
        "v4-options",
        "OPTIONS",
        "sip:+23276123456@carrier.example.net",
        &v4,
        true,
    );
    add(
        2,
        "v4-other-port",
        "INVITE",
        "sip:+23276123456@carrier.example.net",
        &format!("{RX4}:5070"),
        true,
    );
    v
}

fn call_id(payload: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(payload);
    text.lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .map(str::to_string)
}

/// Reads datagrams until none arrives for `quiet` (bounded by `limit` overall).
fn drain(socks: &[UdpSocket], quiet: Duration, limit: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let start = Instant::now();
    let mut last = Instant::now();
    let mut buf = [0u8; 4096];
    while last.elapsed() < quiet && start.elapsed() < limit {
        let mut any = false;
        for s in socks {
            if let Ok(n) = s.recv(&mut buf) {
                got.extend(call_id(&buf[..n]));
                any = true;
            }
        }
        if any {
            last = Instant::now();
        }
    }
    got
}

#[test]
fn native_xdp_on_veth_drops_blocked_invites_only() {
    let pair = VethPair::new("at");
    let mut filter = load(&Setup::Default.settings(), &fixtures::rules());
    let rx_if = pair.rx_if.clone();
    pair.rx
        .run(|| filter.attach(&rx_if, XdpMode::Driver))
        .expect("attach in native (driver) mode to the veth");

    let receivers: Vec<UdpSocket> = pair.rx.run(|| {
        [
            format!("{RX4}:5060"),
            format!("[{RX6}]:5060"),
            format!("{RX4}:5070"),
        ]
        .iter()
        .map(|a| {
            let s = UdpSocket::bind(a.as_str()).unwrap_or_else(|e| panic!("bind {a}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            s
        })
        .collect()
    });
    let (tx4, tx6) = pair.tx.run(|| {
        (
            UdpSocket::bind(format!("{TX4}:0")).expect("bind v4 sender"),
            UdpSocket::bind(format!("[{TX6}]:0")).expect("bind v6 sender"),
        )
    });

    // Warm up ARP/ND (and wait for the links to come up) so that the real datagrams are not
    // queued behind neighbour resolution. Bounded: 50 tries.
    let mut warm = BTreeSet::new();
    for _ in 0..50 {
        for (s, to, id) in [
            (&tx4, format!("{RX4}:5070"), "warm4"),
            (&tx6, format!("[{RX6}]:5060"), "warm6"),
        ] {
            if !warm.contains(id) {
                let msg = format!("OPTIONS sip:warmup SIP/2.0\r\nCall-ID: {id}\r\n\r\n");
                let _ = s.send_to(msg.as_bytes(), to.as_str());
            }
        }
        warm.extend(drain(
            &receivers,
            Duration::from_millis(100),
            Duration::from_secs(1),
        ));
        if warm.len() == 2 {
            break;
        }
    }
    assert_eq!(warm.len(), 2, "warm-up datagrams did not arrive: {warm:?}");

    let before = filter.global_counters().expect("counters");
    let sl0 = filter.rule_counters(SL).expect("rule counters");
    let plan = plan();
    for s in &plan {
        let sock = if s.to.is_ipv4() { &tx4 } else { &tx6 };
        sock.send_to(&s.payload, s.to).expect("send");
    }
    let got: BTreeSet<String> = drain(
        &receivers,
        Duration::from_millis(700),
        Duration::from_secs(10),
    )
    .into_iter()
    .collect();
    let want: BTreeSet<String> = plan
        .iter()
        .filter(|s| s.arrives)
        .map(|s| s.call_id.clone())
        .collect();
    let blocked = plan.iter().filter(|s| !s.arrives).count() as u64;

    let leaked: Vec<_> = got.difference(&want).collect();
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(leaked.is_empty(), "blocked INVITEs arrived: {leaked:?}");
    assert!(lost.is_empty(), "allowed datagrams were lost: {lost:?}");

    let after = filter.global_counters().expect("counters");
    let delta = |c: Counter| after.get(c) - before.get(c);
    let sl = filter.rule_counters(SL).expect("rule counters");
    assert_eq!(delta(Counter::Dropped), blocked, "global dropped counter");
    assert_eq!(sl.dropped - sl0.dropped, blocked, "Sierra Leone rule drops");
    assert_eq!(
        sl.matched - sl0.matched,
        blocked,
        "Sierra Leone rule matches"
    );
    assert_eq!(
        filter
            .rule_counters(SL_EXCEPTION)
            .expect("rule counters")
            .matched,
        2,
        "exception matches"
    );
    // INVITEs to port 5060: 10 blocked + 10 allowed/exception; OPTIONS are candidates, not INVITEs.
    assert_eq!(delta(Counter::Invites), 20, "INVITEs seen on the SIP port");
    assert!(
        delta(Counter::SipCandidates) >= 22,
        "SIP candidates: {}",
        delta(Counter::SipCandidates)
    );
    println!(
        "veth native XDP: {} datagrams sent, {} delivered, {blocked} blocked",
        plan.len(),
        got.len()
    );
    // Dropping `filter` detaches (the link is owned by the program); dropping `pair` deletes
    // both namespaces and the veth pair.
}
