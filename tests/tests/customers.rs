//! Customers and policies through the real kernel program (BPF_PROG_TEST_RUN): the source's
//! customer picks its policy's rules, with or without the global rules underneath; IPv4 and
//! IPv6 sources, the longest CIDR, the outer VLAN, no customer; and a reload that swaps
//! policies switches rules and customers together.

use std::path::Path;

use sipguard::{Filter, Verdict, config::ConfigFile};
use sipguard_tests::packet::{Pkt, invite};

const CONFIG: &str = r#"
[settings]
sip_ports = [5060]

[[rule]]
prefix = "+232"
action = "block"

[[rule]]
prefix = "+881"
action = "block"

# International call barring: every international call, with the global rules underneath.
[[policy]]
name = "intl-barring"
[[policy.rule]]
prefix = "+"
action = "block"

# The global rules, with one range opened.
[[policy]]
name = "sl-office"
[[policy.rule]]
prefix = "+23222"
action = "allow"
[[policy.rule]]
prefix = "+881"
action = "allow"

# Its own rules only.
[[policy]]
name = "standalone"
inherit = false
[[policy.rule]]
prefix = "+44"
action = "block"

[[customer]]
name = "a"
sources = ["198.51.100.0/24", "2001:db8:a::/48"]
policy = "intl-barring"

[[customer]]
name = "b"
sources = ["203.0.113.0/24"]
policy = "sl-office"

[[customer]]
name = "b-lab"
sources = ["203.0.113.128/25"]
policy = "standalone"

[[customer]]
name = "a-vlan"
sources = ["198.51.100.0/24"]
vlans = [100]
policy = "standalone"
"#;

const SL: &str = "sip:+23276123456@gw.example.net";
const SL_EXCEPTION: &str = "sip:+23222123456@gw.example.net";
const UK: &str = "sip:+442079460000@gw.example.net";
const SAT: &str = "sip:+881631234567@gw.example.net";
const NATIONAL: &str = "sip:0312345678@gw.example.net";

fn parse(text: &str) -> ConfigFile {
    sipguard::config::parse(Path::new("customers.toml"), text).expect("valid config")
}

fn load(cfg: &ConfigFile) -> Filter {
    let mut f = Filter::load(&cfg.settings).expect("load the XDP program (tests must run as root)");
    f.maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&cfg.customers.entries()))
        .expect("commit");
    f
}

/// (what, frame, verdict, the policy whose rule decides it (None: a global rule or none))
type Case = (&'static str, Vec<u8>, Verdict, Option<&'static str>);

fn cases() -> Vec<Case> {
    use Verdict::{Drop, Pass};
    let v4 = |uri: &str, src: &str| Pkt::v4(&invite(uri)).src(src).build();
    let v6 = |uri: &str, src: &str| Pkt::v6(&invite(uri)).src(src).build();
    vec![
        ("no customer: global +232", v4(SL, "192.0.2.10"), Drop, None),
        (
            "no customer: no rule for +44",
            v4(UK, "192.0.2.10"),
            Pass,
            None,
        ),
        (
            "barring: +44 blocked by the policy's +",
            v4(UK, "198.51.100.7"),
            Drop,
            Some("intl-barring"),
        ),
        (
            "barring: the longer global +232 decides",
            v4(SL, "198.51.100.7"),
            Drop,
            None,
        ),
        (
            "barring: national calls pass",
            v4(NATIONAL, "198.51.100.7"),
            Pass,
            None,
        ),
        (
            "barring over IPv6",
            v6(UK, "2001:db8:a::5"),
            Drop,
            Some("intl-barring"),
        ),
        ("IPv6, no customer", v6(UK, "2001:db8:b::5"), Pass, None),
        (
            "exception: the policy's longer +23222 allow",
            v4(SL_EXCEPTION, "203.0.113.5"),
            Pass,
            Some("sl-office"),
        ),
        (
            "exception policy: global +232 still applies",
            v4(SL, "203.0.113.5"),
            Drop,
            None,
        ),
        (
            "a tie: the policy's +881 allow beats the global +881 block",
            v4(SAT, "203.0.113.5"),
            Pass,
            Some("sl-office"),
        ),
        (
            "longest CIDR: /25 inside b's /24, no inherit: +232 passes",
            v4(SL, "203.0.113.200"),
            Pass,
            None,
        ),
        (
            "longest CIDR: its own +44 rule",
            v4(UK, "203.0.113.200"),
            Drop,
            Some("standalone"),
        ),
        (
            "VLAN 100: the VLAN's customer, not the any-VLAN one",
            Pkt::v4(&invite(SL))
                .src("198.51.100.7")
                .vlan(0x8100)
                .build(),
            Pass,
            None,
        ),
        (
            "VLAN 100: its own +44 rule",
            Pkt::v4(&invite(UK))
                .src("198.51.100.7")
                .vlan(0x8100)
                .build(),
            Drop,
            Some("standalone"),
        ),
        (
            "another VLAN: the any-VLAN customer",
            Pkt::v4(&invite(UK))
                .src("198.51.100.7")
                .vlan_id(200)
                .build(),
            Drop,
            Some("intl-barring"),
        ),
    ]
}

#[test]
fn the_source_picks_the_policy() {
    let cfg = parse(CONFIG);
    assert_eq!(cfg.customers.customers.len(), 4);
    let f = load(&cfg);
    let policy_of = |name: &str| cfg.customers.policy(name).unwrap().id;
    let rules = f.maps.rules().unwrap();
    let mut failures = Vec::new();
    for (what, frame, want, decided_by) in cases() {
        let before: Vec<(u16, u64)> = rules
            .iter()
            .map(|(p, v)| (p.policy, f.rule_counters(v.id).unwrap_or_default().matched))
            .collect();
        let got = f.test_run(&frame).unwrap();
        let after: Vec<(u16, u64)> = rules
            .iter()
            .map(|(p, v)| (p.policy, f.rule_counters(v.id).unwrap_or_default().matched))
            .collect();
        let moved: Vec<u16> = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| a.1 > b.1)
            .map(|(_, a)| a.0)
            .collect();
        if got != want {
            failures.push(format!("{what}: {got:?}, want {want:?}"));
        }
        if let Some(p) = decided_by
            && moved != [policy_of(p)]
        {
            failures.push(format!("{what}: decided by policies {moved:?}, want {p}"));
        }
        if decided_by.is_none() && moved.iter().any(|&p| p != 0) {
            failures.push(format!("{what}: a policy rule decided ({moved:?})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Without customers, the same frames get the global rules only.
#[test]
fn no_customers_means_the_global_rules() {
    let cfg = parse(CONFIG);
    let mut global = cfg.clone();
    global.customers = Default::default();
    global.rules.retain(|p, _| p.policy == 0);
    let f = load(&global);
    for (what, frame, _, _) in cases() {
        let payload_has = |s: &str| frame.windows(s.len()).any(|w| w == s.as_bytes());
        let want = if payload_has("+232") || payload_has("+881") {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        assert_eq!(f.test_run(&frame).unwrap(), want, "{what}");
    }
}

/// A reload that moves a customer to another policy while the two policies swap their rules:
/// the old set and the new one both drop the customer's +44 call, and only a mix of new
/// customers with old rules (or old customers with new rules) would pass it.
#[test]
fn moving_a_customer_switches_customers_and_rules_together() {
    let config = |policy: &str, x: &str, y: &str| {
        parse(&format!(
            "[[policy]]\nname = \"x\"\n[[policy.rule]]\nprefix = \"{x}\"\naction = \"block\"\n\
             [[policy]]\nname = \"y\"\n[[policy.rule]]\nprefix = \"{y}\"\naction = \"block\"\n\
             [[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\"]\npolicy = \"{policy}\"\n"
        ))
    };
    let old = config("x", "+44", "+33");
    let new = config("y", "+33", "+44");
    let mut f = load(&old);
    let call = Pkt::v4(&invite(UK)).src("198.51.100.7").build();
    let other = Pkt::v4(&invite(UK)).src("192.0.2.10").build();
    for round in 0..20 {
        let c = if round % 2 == 0 { &new } else { &old };
        f.maps
            .commit_all(&c.settings, &c.rules, Some(&c.customers.entries()))
            .unwrap();
        assert_eq!(f.test_run(&call).unwrap(), Verdict::Drop, "round {round}");
        assert_eq!(f.test_run(&other).unwrap(), Verdict::Pass, "round {round}");
        assert_eq!(f.maps.customers().unwrap().len(), 1, "round {round}");
    }
}
