//! Capacity: `max_rules` sizes the rule maps (and a set above it is refused without changing
//! anything), a single `rules add` into a large set is a delta that the kernel enforces at once
//! and that leaves both rule tries equal, rule ids only grow, and the counters of rules that an
//! edit does not touch survive it. Run as root.

use std::{collections::BTreeSet, time::Instant};

use guard_common::Action;
use sipguard::{Filter, Prefix, Verdict, kernel::maps::Maps, model::rules::RuleSet};
use sipguard_tests::{
    capacity::{PinnedFilter, entry, invite_under, rule_set, rule_set_seeded},
    fixtures::Setup,
    harness::{Instance, burst, receiver_socket},
    netns::VethPair,
};

const SL: &str = "sip:+23276123456@carrier.example.net";

fn config(max_rules: u32, extra: &str) -> String {
    format!(
        "[settings]\nsip_ports = [5060]\nmax_rules = {max_rules}\n\n[[rule]]\nprefix = \"+232\"\naction = \"block\"\n\n[[rule]]\nprefix = \"+23222\"\naction = \"allow\"\n{extra}"
    )
}

fn rules_file(prefixes: impl Iterator<Item = String>) -> String {
    prefixes
        .map(|p| format!("[[rule]]\nprefix = \"{p}\"\naction = \"block\"\n"))
        .collect()
}

#[test]
fn max_rules_sizes_the_maps_and_a_set_above_it_is_refused() {
    let pair = VethPair::new("mx");
    let mut sg = Instance::new("maxrules");
    let cfg = sg.write("sipguard.toml", &config(8, ""));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let rx = receiver_socket(&pair.tx, &pair.rx);

    let st: serde_json::Value =
        serde_json::from_str(&sg.ok(&["status", "--json"])).expect("status JSON");
    assert_eq!(st["interfaces"][0]["max_rules"], 8, "{st}");
    assert_eq!(st["interfaces"][0]["rules"], 2, "{st}");
    let human = sg.ok(&["status"]);
    assert!(human.contains("rules=2 max_rules=8"), "{human}");

    let baseline = sg.rules();
    let intact = |what: &str, want: &[(String, String)]| {
        assert_eq!(sg.rules(), want, "rules changed after: {what}");
        assert!(
            burst(&pair.tx, &rx, "sl", SL, 3).is_empty(),
            "enforcement lost after: {what}"
        );
    };

    // 2 + 7 > 8: refused, with the live size in the message, and nothing changes.
    let seven = sg.write(
        "seven.toml",
        &rules_file((1..=7).map(|i| format!("+240{i}"))),
    );
    let r = sg.cli(&["rules", "import", seven.to_str().unwrap()]);
    assert!(!r.ok, "an import above max_rules was accepted");
    assert!(
        r.stderr.contains(
            "the rule map is full: 9 rules do not fit (the rule map holds at most 8; raise max_rules"
        ) && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
    intact("an import above max_rules", &baseline);

    // Exactly full is fine; one more is refused.
    let six = sg.write("six.toml", &rules_file((1..=6).map(|i| format!("+250{i}"))));
    sg.ok(&["rules", "import", six.to_str().unwrap()]);
    let full = sg.rules();
    assert_eq!(full.len(), 8);
    let r = sg.cli(&["rules", "add", "+2599", "--action", "block"]);
    assert!(
        !r.ok
            && r.stderr
                .contains("9 rules do not fit (the rule map holds at most 8"),
        "{}",
        r.stderr
    );
    intact("a rules add above max_rules", &full);

    // A config over its own max_rules is refused when it is read ...
    sg.write(
        "sipguard.toml",
        &config(2, "[[rule]]\nprefix = \"+881\"\naction = \"block\"\n"),
    );
    sg.signal(libc::SIGHUP);
    sg.wait_log(
        "3 rules: the rule map holds at most 2 (max_rules in [settings])",
        1,
    );
    intact("a config over its max_rules", &full);
    // ... and config + runtime edits over the live maps' size when they are committed.
    sg.write(
        "sipguard.toml",
        &config(8, "[[rule]]\nprefix = \"+881\"\naction = \"block\"\n"),
    );
    sg.signal(libc::SIGHUP);
    sg.wait_log(
        "the rule map is full: 9 rules do not fit (the rule map holds at most 8",
        1,
    );
    intact("a reload over the live maps' size", &full);

    // A larger max_rules cannot resize pinned maps: the daemon says how to.
    sg.write("sipguard.toml", &config(100, ""));
    sg.signal(libc::SIGHUP);
    sg.wait_log("the pinned rule maps hold 8 rules but max_rules = 100", 1);
    sg.wait_log("reloaded", 1);
    let log = sg.log_text();
    assert!(
        log.contains("the pinned rule maps hold 8 rules but max_rules = 100")
            && log.contains(&format!("sipguard detach --iface {}", pair.rx_if)),
        "{log}"
    );
    sg.stop(libc::SIGTERM);
    sg.ok(&["detach", "--iface", &pair.rx_if]);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let st: serde_json::Value =
        serde_json::from_str(&sg.ok(&["status", "--json"])).expect("status JSON");
    assert_eq!(st["interfaces"][0]["max_rules"], 100, "{st}");
    assert_eq!(
        st["interfaces"][0]["rules"], 8,
        "config + runtime edits: {st}"
    );
    sg.ok(&["rules", "add", "+2599", "--action", "block"]);
    assert!(burst(&pair.tx, &rx, "sl", SL, 3).is_empty());
}

/// Both tries, read back, must hold the same rules with the same ids.
fn assert_tries_equal(pf: &PinnedFilter, n: usize, what: &str) -> Vec<u32> {
    let maps = Maps::from_pins(&pf.pins.iface_dir(PinnedFilter::IFACE)).expect("open pins");
    assert!(maps.tries_in_sync().unwrap(), "{what}: generations differ");
    let a = maps.trie_rules(0).unwrap();
    let b = maps.trie_rules(1).unwrap();
    assert_eq!(a.len(), n, "{what}");
    assert!(a == b, "{what}: the two tries differ");
    assert_eq!(maps.rule_count().unwrap(), n, "{what}");
    let ids: Vec<u32> = a.values().map(|v| v.id).collect();
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(unique.len(), n, "{what}: ids are not unique");
    ids
}

#[test]
fn one_rule_into_200k_is_a_delta_enforced_at_once_and_untouched_counters_survive() {
    const N: usize = 200_000;
    let mut pf = PinnedFilter::new("add200k", 262_144);
    let rules = rule_set(N);
    let settings = pf.settings.clone();
    let t = Instant::now();
    let report = pf.filter.maps.commit(&settings, &rules).expect("commit");
    println!("{N} rules committed in {:.2?}", t.elapsed());
    assert_eq!((report.added, report.total), (N, N));
    let ids = assert_tries_equal(&pf, N, "after the load");
    let max_id = *ids.iter().max().unwrap();

    // Traffic to an untouched rule: its counters must survive every edit below.
    let (hot, _) = rules
        .iter()
        .find(|(_, e)| e.action == Action::Block)
        .unwrap();
    let hot_frame = invite_under(hot);
    for _ in 0..5 {
        assert_eq!(pf.filter.test_run(&hot_frame).unwrap(), Verdict::Drop);
    }
    let hot_id = pf.filter.maps.live_rule(hot).unwrap().unwrap().id;
    let hot_counters = pf.filter.rule_counters(hot_id).unwrap();
    assert_eq!((hot_counters.matched, hot_counters.dropped), (5, 5));

    // One rule added with the CLI: enforced when it returns, as a delta.
    let probe: Prefix = "+3399".parse().unwrap();
    let frame = invite_under(&probe);
    assert_eq!(pf.filter.test_run(&frame).unwrap(), Verdict::Pass);
    let t = Instant::now();
    let (ok, _, err) = pf.cli(&[
        "rules",
        "add",
        "+3399",
        "--action",
        "block",
        "--comment",
        "probe",
    ]);
    let took = t.elapsed();
    assert!(ok, "{err}");
    println!("`sipguard rules add` into {N} rules: {took:.2?} wall");
    assert_eq!(pf.filter.test_run(&frame).unwrap(), Verdict::Drop);
    let ids = assert_tries_equal(&pf, N + 1, "after rules add");
    let probe_id = pf.filter.maps.live_rule(&probe).unwrap().unwrap().id;
    assert!(probe_id > max_id, "a new prefix gets a new id: {probe_id}");
    assert_eq!(ids.iter().filter(|&&i| i == probe_id).count(), 1);
    let runtime = std::fs::read_to_string(pf.state.dir.join("runtime.toml")).unwrap();
    assert!(
        runtime.contains("+3399") && runtime.contains("probe"),
        "{runtime}"
    );

    // Its counters came into being with its first match (above), and go with the rule.
    for _ in 0..3 {
        pf.filter.test_run(&frame).unwrap();
    }
    assert_eq!(pf.filter.rule_counters(probe_id).unwrap().dropped, 4);
    let (ok, _, err) = pf.cli(&["rules", "del", "+3399"]);
    assert!(ok, "{err}");
    assert_eq!(pf.filter.test_run(&frame).unwrap(), Verdict::Pass);
    assert_tries_equal(&pf, N, "after rules del");
    assert!(
        !pf.filter.maps.stats_ids().unwrap().contains(&probe_id),
        "the deleted rule's counters are gone"
    );

    // A conflicting add is refused and changes nothing.
    let (ok, _, err) = pf.cli(&["rules", "add", &hot.to_string(), "--action", "allow"]);
    assert!(
        !ok && err.contains(&format!("rule conflict: {hot} is already `block`")),
        "{err}"
    );
    assert_eq!(pf.filter.test_run(&hot_frame).unwrap(), Verdict::Drop);
    let hot_counters = pf.filter.rule_counters(hot_id).unwrap();
    assert_eq!(
        (hot_counters.matched, hot_counters.dropped),
        (6, 6),
        "the untouched rule counted on through the add and the del"
    );

    // Re-added: a new id, never the deleted one's.
    let (ok, _, err) = pf.cli(&["rules", "add", "+3399", "--action", "block"]);
    assert!(ok, "{err}");
    let again = pf.filter.maps.live_rule(&probe).unwrap().unwrap().id;
    assert!(again > probe_id, "{again} after {probe_id}");
    assert_eq!(
        pf.filter.rule_counters(again).unwrap().matched,
        0,
        "a new rule starts from zero"
    );

    // A commit that stopped half-way (live, standby not synced): the next edit repairs it
    // with a full sync.
    let delta = sipguard::kernel::maps::Delta {
        set: vec![("+33988".parse().unwrap(), Action::Block)],
        remove: Vec::new(),
    };
    let (_, pending) = pf
        .filter
        .maps
        .stage_delta(&delta)
        .unwrap()
        .expect("in sync");
    drop(pending);
    assert!(!pf.filter.maps.tries_in_sync().unwrap());
    let (ok, _, err) = pf.cli(&["rules", "del", "+3399"]);
    assert!(ok, "{err}");
    assert_eq!(pf.filter.test_run(&frame).unwrap(), Verdict::Pass);
    assert_tries_equal(&pf, N + 1, "after the repair (+33988 stays)");

    // A full commit (a reload) keeps the ids and counters of the rules that stay.
    let mut reload: RuleSet = rules.clone();
    reload.insert("+33988".parse().unwrap(), entry(Action::Block));
    reload.insert("+33977".parse().unwrap(), entry(Action::Monitor));
    let r = pf.filter.maps.commit(&settings, &reload).unwrap();
    assert_eq!((r.added, r.removed, r.changed), (1, 0, 0));
    assert_tries_equal(&pf, N + 2, "after a full commit");
    assert_eq!(pf.filter.maps.live_rule(hot).unwrap().unwrap().id, hot_id);
    assert_eq!(
        pf.filter.rule_counters(hot_id).unwrap(),
        hot_counters,
        "the untouched rule's counters survived every edit"
    );
}

#[test]
fn fixed_rule_ids_are_not_bounded_by_the_map_size() {
    let settings = Setup::Default.settings();
    let mut f = Filter::load(&settings).expect("load");
    let id = 5_000_000;
    f.insert_rule(&"+232".parse().unwrap(), Action::Block, id)
        .unwrap();
    let frame = invite_under(&"+2327".parse().unwrap());
    assert_eq!(f.test_run(&frame).unwrap(), Verdict::Drop);
    let c = f.rule_counters(id).unwrap();
    assert_eq!((c.matched, c.dropped), (1, 1));
    // The direct insert leaves the tries out of sync; the next commit repairs that.
    assert!(!f.maps.tries_in_sync().unwrap());
    let rules: RuleSet = [("+232".parse().unwrap(), entry(Action::Block))]
        .into_iter()
        .collect();
    f.maps.commit(&settings, &rules).unwrap();
    assert!(f.maps.tries_in_sync().unwrap());
    assert_eq!(
        f.maps
            .live_rule(&"+232".parse().unwrap())
            .unwrap()
            .unwrap()
            .id,
        id
    );
    assert_eq!(f.rule_counters(id).unwrap().matched, 1);
}

/// `n` rules none of which is in `other`.
fn disjoint_from(other: &RuleSet, n: usize) -> RuleSet {
    let mut out = RuleSet::new();
    let mut seed = 0x0dd_ba11_u64;
    while out.len() < n {
        for (p, e) in rule_set_seeded(n, seed) {
            if out.len() < n && !other.contains_key(&p) {
                out.insert(p, e);
            }
        }
        seed += 1;
    }
    out
}

#[test]
fn a_set_replaces_a_disjoint_set_of_the_same_size() {
    const N: usize = 150_000;
    let mut pf = PinnedFilter::new("disjoint150k", 262_144);
    let settings = pf.settings.clone();
    let a = rule_set(N);
    let b = disjoint_from(&a, N);
    pf.filter.maps.commit(&settings, &a).expect("commit A");
    assert_tries_equal(&pf, N, "after A");
    let t = Instant::now();
    let r = pf
        .filter
        .maps
        .commit(&settings, &b)
        .expect("replace A with B");
    println!(
        "{N} rules replaced by a disjoint {N} in {:.2?}",
        t.elapsed()
    );
    assert_eq!((r.added, r.removed, r.total), (N, N, N));
    assert_tries_equal(&pf, N, "after B");
    // And back again.
    let t = Instant::now();
    pf.filter
        .maps
        .commit(&settings, &a)
        .expect("replace B with A");
    println!("and back in {:.2?}", t.elapsed());
    assert_tries_equal(&pf, N, "after A again");
    for (p, e) in a.iter().take(50) {
        let want = match e.action {
            Action::Block => Verdict::Drop,
            _ => Verdict::Pass,
        };
        assert_eq!(pf.filter.test_run(&invite_under(p)).unwrap(), want, "{p}");
    }
}

#[test]
fn a_full_rule_map_still_takes_edits_within_max_rules() {
    const MAX: u32 = 262_144;
    let mut pf = PinnedFilter::new("full", MAX);
    let settings = pf.settings.clone();
    let mut rules = rule_set(MAX as usize);
    pf.filter
        .maps
        .commit(&settings, &rules)
        .expect("fill the map");
    assert_tries_equal(&pf, MAX as usize, "full");

    // Delete one, add one, with the CLI (a delta).
    let gone = rules.keys().nth(1000).unwrap().clone();
    let (ok, _, err) = pf.cli(&["rules", "del", &gone.to_string()]);
    assert!(ok, "{err}");
    let (ok, _, err) = pf.cli(&["rules", "add", "+3399", "--action", "block"]);
    assert!(ok, "{err}");
    let probe: Prefix = "+3399".parse().unwrap();
    assert_eq!(
        pf.filter.test_run(&invite_under(&probe)).unwrap(),
        Verdict::Drop
    );
    assert_tries_equal(&pf, MAX as usize, "after del + add");
    let (ok, _, err) = pf.cli(&["rules", "add", "+3398", "--action", "block"]);
    assert!(!ok && err.contains("the rule map is full"), "{err}");

    // The same as one full commit (a reload): one prefix out, another in, again and again.
    for i in 0..3 {
        let out = rules.keys().nth(2000 + i).unwrap().clone();
        rules.remove(&out);
        rules.insert(format!("+33{i}7").parse().unwrap(), entry(Action::Block));
        rules.remove(&gone);
        rules.insert(probe.clone(), entry(Action::Block));
        let r = pf
            .filter
            .maps
            .commit(&settings, &rules)
            .expect("swap one rule");
        assert_eq!(r.total, MAX as usize);
        assert_tries_equal(&pf, MAX as usize, "after a full commit that swaps one");
    }
}

fn counters_of(f: &Filter, p: &Prefix) -> (u32, u64) {
    let id = f.maps.live_rule(p).unwrap().expect("live rule").id;
    (id, f.rule_counters(id).unwrap().matched)
}

#[test]
fn counters_of_a_prefix_survive_a_reload_that_drops_it_and_brings_it_back() {
    let mut settings = Setup::Default.settings();
    settings.max_rules = 4;
    let mut f = Filter::load(&settings).expect("load");
    let sl: Prefix = "+232".parse().unwrap();
    let other: Prefix = "+881".parse().unwrap();
    let set = |ps: &[&Prefix]| -> RuleSet {
        ps.iter()
            .map(|p| ((*p).clone(), entry(Action::Block)))
            .collect()
    };
    f.maps.commit(&settings, &set(&[&sl, &other])).unwrap();
    let frame = invite_under(&"+2327".parse().unwrap());
    for _ in 0..3 {
        assert_eq!(f.test_run(&frame).unwrap(), Verdict::Drop);
    }
    let (id, matched) = counters_of(&f, &sl);
    assert_eq!(matched, 3);

    // One reload without +232, then one with it again: the same id, the counters go on.
    let r = f.maps.commit(&settings, &set(&[&other])).unwrap();
    assert_eq!(r.removed, 1);
    assert_eq!(f.test_run(&frame).unwrap(), Verdict::Pass);
    assert_eq!(f.maps.retired_id(&sl), Some(id));
    let r = f.maps.commit(&settings, &set(&[&sl, &other])).unwrap();
    assert_eq!(r.added, 1);
    assert_eq!(counters_of(&f, &sl), (id, 3), "the counters continue");
    assert_eq!(f.test_run(&frame).unwrap(), Verdict::Drop);
    assert_eq!(counters_of(&f, &sl), (id, 4));

    // The memory is bounded (here 4 retired rules, the counter hash's room beyond max_rules):
    // a prefix retired before 4 later ones comes back as a new rule, from zero.
    f.maps.commit(&settings, &set(&[&other])).unwrap();
    for i in 0..4 {
        let p: Prefix = format!("+24{i}").parse().unwrap();
        f.maps.commit(&settings, &set(&[&other, &p])).unwrap();
        f.maps.commit(&settings, &set(&[&other])).unwrap();
    }
    assert_eq!(f.maps.retired_id(&sl), None);
    assert!(
        !f.maps.stats_ids().unwrap().contains(&id),
        "the forgotten rule's counters are deleted"
    );
    f.maps.commit(&settings, &set(&[&sl, &other])).unwrap();
    let (again, matched) = counters_of(&f, &sl);
    assert!(again > id && matched == 0, "{again} {matched}");
}

#[test]
fn counter_hash_memory_at_the_default_max_rules() {
    // The counter hash has 2 x max_rules entries; at max_rules = 131,072 it has the 262,144 it
    // had at the default before. No preallocation: memory follows the entries present.
    for max_rules in [131_072, 262_144] {
        let settings = sipguard::Settings {
            max_rules,
            ..Setup::Default.settings()
        };
        let f = Filter::load(&settings).expect("load");
        let mem = f.kernel_memory().unwrap();
        let stats = mem
            .iter()
            .find(|m| m.name.starts_with("SG_RULE_STAT"))
            .expect("counter hash");
        let tries: u64 = mem
            .iter()
            .filter(|m| m.name.starts_with("SG_RULES_"))
            .map(|m| m.memlock)
            .sum();
        println!(
            "max_rules {max_rules}: counter hash max_entries {} memlock {} bytes (empty); tries {tries} bytes",
            stats.max_entries, stats.memlock
        );
        assert_eq!(stats.max_entries, 2 * max_rules);
    }
}
