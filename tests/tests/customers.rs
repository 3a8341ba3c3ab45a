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

/// One INVITE: from `src` on outer VLAN `vlan` (0: untagged) to `uri`; its verdict, and the
/// policy whose rule decides it (`None`: a global rule, or no rule).
struct Case {
    what: &'static str,
    src: &'static str,
    vlan: u16,
    uri: &'static str,
    want: Verdict,
    decided_by: Option<&'static str>,
}

impl Case {
    fn frame(&self) -> Vec<u8> {
        let p = if self.src.contains(':') {
            Pkt::v6(&invite(self.uri))
        } else {
            Pkt::v4(&invite(self.uri))
        }
        .src(self.src);
        if self.vlan != 0 {
            p.vlan_id(self.vlan).build()
        } else {
            p.build()
        }
    }
}

fn cases() -> Vec<Case> {
    use Verdict::{Drop, Pass};
    let c = |what, src, vlan, uri, want, decided_by| Case {
        what,
        src,
        vlan,
        uri,
        want,
        decided_by,
    };
    vec![
        c("no customer: global +232", "192.0.2.10", 0, SL, Drop, None),
        c(
            "no customer: no rule for +44",
            "192.0.2.10",
            0,
            UK,
            Pass,
            None,
        ),
        c(
            "barring: +44 blocked by the policy's +",
            "198.51.100.7",
            0,
            UK,
            Drop,
            Some("intl-barring"),
        ),
        c(
            "barring: the longer global +232 decides",
            "198.51.100.7",
            0,
            SL,
            Drop,
            None,
        ),
        c(
            "barring: national calls pass",
            "198.51.100.7",
            0,
            NATIONAL,
            Pass,
            None,
        ),
        c(
            "barring over IPv6",
            "2001:db8:a::5",
            0,
            UK,
            Drop,
            Some("intl-barring"),
        ),
        c("IPv6, no customer", "2001:db8:b::5", 0, UK, Pass, None),
        c(
            "exception: the policy's longer +23222 allow",
            "203.0.113.5",
            0,
            SL_EXCEPTION,
            Pass,
            Some("sl-office"),
        ),
        c(
            "exception policy: global +232 still applies",
            "203.0.113.5",
            0,
            SL,
            Drop,
            None,
        ),
        c(
            "a tie: the policy's +881 allow beats the global +881 block",
            "203.0.113.5",
            0,
            SAT,
            Pass,
            Some("sl-office"),
        ),
        c(
            "longest CIDR: /25 inside b's /24, no inherit: +232 passes",
            "203.0.113.200",
            0,
            SL,
            Pass,
            None,
        ),
        c(
            "longest CIDR: its own +44 rule",
            "203.0.113.200",
            0,
            UK,
            Drop,
            Some("standalone"),
        ),
        c(
            "VLAN 100: the VLAN's customer, not the any-VLAN one",
            "198.51.100.7",
            100,
            SL,
            Pass,
            None,
        ),
        c(
            "VLAN 100: its own +44 rule",
            "198.51.100.7",
            100,
            UK,
            Drop,
            Some("standalone"),
        ),
        c(
            "another VLAN: the any-VLAN customer",
            "198.51.100.7",
            200,
            UK,
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
    for c in cases() {
        let (what, want, decided_by) = (c.what, c.want, c.decided_by);
        let frame = c.frame();
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

/// `explain` answers with the kernel's verdict and rule, and the customer the kernel's trie
/// gives, for every case; and the CLI prints it.
#[test]
fn explain_agrees_with_the_kernel() {
    use sipguard::replay::explain::explain;
    let cfg = parse(CONFIG);
    let mut failures = Vec::new();
    for c in cases() {
        let e = explain(&cfg, c.src.parse().unwrap(), c.vlan, c.uri).unwrap();
        if e.verdict != c.want {
            failures.push(format!("{}: explain says {:?}", c.what, e.verdict));
        }
        let policy = e.rule.as_ref().and_then(|r| r.0.as_deref());
        if policy != c.decided_by {
            failures.push(format!("{}: explain's rule is {:?}", c.what, e.rule));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let e = explain(&cfg, "203.0.113.200".parse().unwrap(), 0, UK).unwrap();
    assert_eq!(e.customer.as_deref(), Some("b-lab"), "the longest CIDR");
    assert_eq!(e.policy, Some(("standalone".to_string(), false)));
    assert_eq!(e.number.as_deref(), Some("+442079460000"));
    let e = explain(&cfg, "192.0.2.10".parse().unwrap(), 0, UK).unwrap();
    assert_eq!((e.customer, e.policy, e.rule), (None, None, None));
    // The CLI.
    let sg = sipguard_tests::harness::Instance::new("explain");
    let path = sg.write("customers.toml", CONFIG);
    let out = sg.ok(&[
        "explain",
        "--config",
        path.to_str().unwrap(),
        "--src",
        "198.51.100.7",
        "--vlan",
        "100",
        UK,
    ]);
    for want in [
        "source    198.51.100.7 on VLAN 100",
        "customer  a-vlan",
        "policy    standalone (its own rules only)",
        "number    +442079460000",
        "rule      standalone/+44 (block)",
        "verdict   drop",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let bad = sg.cli(&["explain", "--src", "198.51.100.7", "--vlan", "5000", UK]);
    assert!(!bad.ok, "a VLAN over 4094 is refused");
    assert!(bad.stderr.contains("--vlan 5000"), "{}", bad.stderr);
}

/// Without customers, the same frames get the global rules only.
#[test]
fn no_customers_means_the_global_rules() {
    let cfg = parse(CONFIG);
    let mut global = cfg.clone();
    global.customers = Default::default();
    global.rules.retain(|p, _| p.policy == 0);
    let f = load(&global);
    for c in cases() {
        let (what, frame) = (c.what, c.frame());
        let want = if c.uri.contains("+232") || c.uri.contains("+881") {
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

/// `sipguard customers add|del` on the pinned maps (no daemon): live at once for the kernel
/// program, refused with the reason and no change on bad input, recorded in runtime.toml, and
/// kept by the commit that a reload makes (config ⊕ runtime edits).
#[test]
fn runtime_customer_edits_are_live_at_once_and_survive_a_reload() {
    use sipguard_tests::capacity::PinnedFilter;
    let cfg = parse(CONFIG);
    let mut pf = PinnedFilter::new("custedit", 4096);
    pf.filter
        .maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&cfg.customers.entries()))
        .unwrap();
    pf.state.save_customers(&cfg.customers).unwrap();
    let from = |src: &str, uri: &str| Pkt::v4(&invite(uri)).src(src).build();
    let verdict =
        |pf: &PinnedFilter, src: &str, uri: &str| pf.filter.test_run(&from(src, uri)).unwrap();
    let list = |pf: &PinnedFilter| pf.cli(&["customers", "list"]).1;
    assert_eq!(verdict(&pf, "192.0.2.10", UK), Verdict::Pass);

    let (ok, out, err) = pf.cli(&[
        "customers",
        "add",
        "c",
        "--source",
        "192.0.2.0/26",
        "--source",
        "2001:db8:c::/48",
        "--policy",
        "intl-barring",
    ]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("added customer `c`: 2 source entries"),
        "{out}"
    );
    assert_eq!(
        verdict(&pf, "192.0.2.10", UK),
        Verdict::Drop,
        "barred at once"
    );
    assert_eq!(
        verdict(&pf, "192.0.2.100", UK),
        Verdict::Pass,
        "outside the /26"
    );
    let l = list(&pf);
    assert!(
        l.lines()
            .any(|r| r.starts_with("c ") && r.contains("intl-barring") && r.contains("runtime")),
        "{l}"
    );
    assert!(l.contains("5 customer(s), 7 live entries"), "{l}");

    // Bad edits: the reason, exit 1, nothing changed (customers, live entries, verdicts).
    let before = (
        list(&pf),
        std::fs::read_to_string(pf.state.dir.join("runtime.toml")).unwrap(),
    );
    for (args, reason) in [
        (
            vec!["c", "--source", "192.0.2.64/26"],
            "customer `c` exists already: pass --replace",
        ),
        (
            vec!["d", "--source", "198.51.100.0/24"],
            "source 198.51.100.0/24 is already customer `a`'s",
        ),
        (
            vec!["d", "--source", "192.0.2.65/26"],
            "has host bits set (the network is 192.0.2.64/26)",
        ),
        (
            vec!["d", "--source", "192.0.2.64/26", "--policy", "nope"],
            "unknown policy `nope` (policies: intl-barring, sl-office, standalone)",
        ),
        (
            vec!["d", "--source", "192.0.2.64/26", "--vlan", "4095"],
            "VLAN 4095 is outside 1..4094",
        ),
        (
            vec!["d", "--source", "192.0.2.300/26"],
            "`192.0.2.300/26` is not an IPv4 or IPv6 CIDR",
        ),
        (
            vec!["d e", "--source", "192.0.2.64/26"],
            "customer name `d e`",
        ),
    ] {
        let mut argv = vec!["customers", "add"];
        argv.extend(args.iter().copied());
        let (ok, out, err) = pf.cli(&argv);
        assert!(!ok, "{argv:?} was accepted: {out}");
        assert!(err.contains(reason), "{argv:?}: {err}");
    }
    let (ok, _, err) = pf.cli(&["customers", "del", "nobody"]);
    assert!(
        !ok && err.contains("no customer is named `nobody`"),
        "{err}"
    );
    assert_eq!(
        (
            list(&pf),
            std::fs::read_to_string(pf.state.dir.join("runtime.toml")).unwrap()
        ),
        before
    );
    assert_eq!(verdict(&pf, "192.0.2.10", UK), Verdict::Drop);

    // Replace (another policy) and delete a config customer.
    let (ok, out, err) = pf.cli(&[
        "customers",
        "add",
        "c",
        "--source",
        "192.0.2.0/26",
        "--policy",
        "standalone",
        "--replace",
    ]);
    assert!(ok && out.contains("replaced customer `c`"), "{out}{err}");
    assert_eq!(
        verdict(&pf, "192.0.2.10", SL),
        Verdict::Pass,
        "standalone: no +232"
    );
    assert_eq!(
        verdict(&pf, "192.0.2.10", UK),
        Verdict::Drop,
        "standalone: +44"
    );
    assert_eq!(verdict(&pf, "198.51.100.7", UK), Verdict::Drop);
    let (ok, out, err) = pf.cli(&["customers", "del", "a"]);
    assert!(ok && out.contains("deleted customer `a`"), "{out}{err}");
    assert_eq!(
        verdict(&pf, "198.51.100.7", UK),
        Verdict::Pass,
        "a's sources: global rules"
    );
    assert_eq!(
        verdict(&pf, "198.51.100.7", SL),
        Verdict::Drop,
        "global +232"
    );

    // A reload: the config again, with the runtime edits over it, ids kept by name.
    let overlay = pf.state.overlay().unwrap();
    let previous = pf.state.customers();
    let eff = overlay
        .effective(&cfg.rules, &cfg.customers, &previous)
        .expect("the edits fit the config");
    let names: Vec<(&str, u32)> = eff
        .customers
        .customers
        .iter()
        .map(|c| (c.name.as_str(), c.id))
        .collect();
    let id = |n: &str| previous.customers.iter().find(|c| c.name == n).unwrap().id;
    assert_eq!(
        names,
        [
            ("b", id("b")),
            ("b-lab", id("b-lab")),
            ("a-vlan", id("a-vlan")),
            ("c", id("c"))
        ]
    );
    assert_eq!(id("c"), 5, "a new customer's id follows the config's");
    pf.filter
        .maps
        .commit_all(&cfg.settings, &eff.rules, Some(&eff.customers.entries()))
        .unwrap();
    assert_eq!(
        verdict(&pf, "192.0.2.10", UK),
        Verdict::Drop,
        "c survives the reload"
    );
    assert_eq!(
        verdict(&pf, "198.51.100.7", UK),
        Verdict::Pass,
        "a stays deleted"
    );

    // A config that no longer admits a runtime customer: the reason; nothing is committed.
    let clash = parse(&CONFIG.replace(
        "sources = [\"203.0.113.0/24\"]",
        "sources = [\"203.0.113.0/24\", \"192.0.2.0/26\"]",
    ));
    let e = overlay
        .effective(&clash.rules, &clash.customers, &previous)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "customer `c`: source 192.0.2.0/26 is already customer `b`'s"
    );
}
