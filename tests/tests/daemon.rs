//! The `sipguard` binary against the real kernel: the daemon attached natively to a veth in a
//! namespace the test creates, the CLI verbs on its pins, runtime edits and reloads under
//! traffic, restarts, and the errors users hit. Run as root.

use std::{thread, time::Duration};

use sipguard_tests::{
    harness::{Dest, Instance, Traffic, burst, receiver_socket},
    netns::VethPair,
};

const BASE_CONFIG: &str = r#"
[settings]
sip_ports = [5060]

[[rule]]
prefix = "+232"
action = "block"
comment = "Sierra Leone"

[[rule]]
prefix = "+23222"
action = "allow"
comment = "exception: a partner network"

[[rule]]
country = "JM"
action = "block"

[[rule]]
prefix = "+44"
action = "monitor"
"#;

const SL: &str = "sip:+23276123456@carrier.example.net";
const FR: &str = "sip:+33142685300@carrier.example.net";
const SL_PARTNER: &str = "sip:+23222123456@carrier.example.net";

/// Continuous traffic to one blocked (Sierra Leone) and one allowed (France) destination.
fn blocked_and_allowed() -> Vec<Dest> {
    vec![
        Dest {
            tag: "blocked",
            uri: SL,
            arrives: false,
        },
        Dest {
            tag: "allowed",
            uri: FR,
            arrives: true,
        },
    ]
}

#[test]
fn every_verb_against_a_daemon_on_a_veth() {
    let pair = VethPair::new("vb");
    let mut sg = Instance::new("verbs");
    let cfg = sg.write("sipguard.toml", BASE_CONFIG);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);

    // status: attached natively, program id, rule count, mode, config, daemon.
    let st: serde_json::Value =
        serde_json::from_str(&sg.ok(&["status", "--json"])).expect("status JSON");
    let i = &st["interfaces"][0];
    assert_eq!(i["iface"], pair.rx_if.as_str());
    assert_eq!(i["attached"], true);
    assert_eq!(i["xdp_mode"], "native");
    assert!(i["program_id"].as_u64().unwrap_or(0) > 0, "{st}");
    assert_eq!(i["rules"], 5, "+232 +23222 +1658 +1876 +44: {st}");
    assert_eq!(i["mode"], "enforce");
    assert_eq!(st["daemon"]["running"], true);
    assert_eq!(st["daemon"]["pid"], sg.pid());
    assert_eq!(st["config"], cfg.to_str().unwrap());
    let human = sg.ok(&["status"]);
    assert!(human.contains("attached xdp=native"), "{human}");

    // Pins: directory 0700, pins 0600.
    use std::os::unix::fs::PermissionsExt as _;
    let dir = sg.pin_root.join(&pair.rx_if);
    for d in [&sg.pin_root, &dir] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    for pin in [
        "prog",
        "link",
        "SG_RULES_A",
        "SG_RULES_B",
        "SG_RULE_STATS",
        "SG_CONFIG",
    ] {
        let mode = std::fs::metadata(dir.join(pin))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{pin}");
    }

    // rules list: countries and comments.
    let list = sg.ok(&["rules", "list"]);
    assert!(list.contains("+1876") && list.contains("Jamaica"), "{list}");
    assert!(list.contains("Sierra Leone"), "{list}");
    let json_rules = sg.ok(&["rules", "list", "--json"]);
    let first: serde_json::Value =
        serde_json::from_str(json_rules.lines().next().unwrap()).unwrap();
    assert!(first["prefix"].is_string() && first["action"].is_string());

    // Traffic: blocked, allowed, exception.
    let rx = receiver_socket(&pair.tx, &pair.rx);
    assert!(
        burst(&pair.tx, &rx, "sl", SL, 10).is_empty(),
        "blocked INVITEs arrived"
    );
    assert_eq!(burst(&pair.tx, &rx, "fr", FR, 10).len(), 10);
    assert_eq!(burst(&pair.tx, &rx, "partner", SL_PARTNER, 4).len(), 4);

    // stats: per rule, sorted by drops, global counters.
    let s = sg.stats();
    let rules = s["rules"].as_array().unwrap();
    assert_eq!(rules[0]["prefix"], "+232", "sorted by drops: {s}");
    assert_eq!(rules[0]["dropped"], 10);
    assert_eq!(rules[0]["country"], "Sierra Leone");
    assert_eq!(sg.rule_stats("+23222"), Some((4, 0, 0)));
    assert_eq!(s["global"]["dropped"], 10);
    assert_eq!(s["global"]["allowed_by_exception"], 4);
    assert!(s["global"]["invites"].as_u64().unwrap() >= 24);
    let top: serde_json::Value =
        serde_json::from_str(&sg.ok(&["stats", "--top", "1", "--json"])).unwrap();
    assert_eq!(top["rules"].as_array().unwrap().len(), 1);
    let text = sg.ok(&["stats"]);
    assert!(text.lines().nth(1).unwrap().starts_with("+232"), "{text}");

    // stats --watch prints repeatedly (stopped by the test, by PID).
    let mut watch = std::process::Command::new(sipguard_tests::harness::sipguard_bin())
        .env("SIPGUARD_PIN_ROOT", &sg.pin_root)
        .env("SIPGUARD_STATE_DIR", &sg.state_dir)
        .args(["stats", "--watch", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(2500));
    watch.kill().unwrap();
    let out = watch.wait_with_output().unwrap();
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(n >= 2, "stats --watch 1 printed {n} times in 2.5 s");

    // stats --reset zeroes the counters.
    sg.ok(&["stats", "--reset"]);
    assert_eq!(sg.rule_stats("+232"), Some((0, 0, 0)));
    assert_eq!(sg.stats()["global"]["dropped"], 0);

    // classify needs no kernel.
    let c = sg.ok(&["classify", "INVITE sip:01123276123456@pbx SIP/2.0"]);
    assert!(c.contains("+23276123456 (international)"), "{c}");

    // detach --keep-maps: traffic flows again, rules and counters stay pinned.
    assert_eq!(burst(&pair.tx, &rx, "sl2", SL, 3).len(), 0);
    sg.stop(libc::SIGTERM);
    sg.ok(&["detach", "--iface", &pair.rx_if, "--keep-maps"]);
    assert_eq!(
        burst(&pair.tx, &rx, "sl3", SL, 3).len(),
        3,
        "detached: traffic passes"
    );
    assert!(!dir.join("link").exists() && dir.join("SG_RULES_A").exists());
    let st = sg.ok(&["status"]);
    assert!(st.contains("NOT attached"), "{st}");
    assert_eq!(sg.rule_stats("+232").map(|s| s.1), Some(3), "counters kept");

    // run again on the kept maps, then detach completely.
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    assert!(burst(&pair.tx, &rx, "sl4", SL, 3).is_empty());
    assert_eq!(
        sg.rule_stats("+232").map(|s| s.1),
        Some(6),
        "counters continue"
    );
    sg.stop(libc::SIGTERM);
    sg.ok(&["detach", "--iface", &pair.rx_if]);
    assert!(!dir.exists(), "detach without --keep-maps removes the pins");
    assert_eq!(burst(&pair.tx, &rx, "sl5", SL, 3).len(), 3);
    let e = sg.cli(&["status"]);
    assert!(
        !e.ok && e.stderr.contains("no pinned sipguard state"),
        "{}",
        e.stderr
    );
}

#[test]
fn runtime_edits_take_effect_at_once_and_survive_reload_and_restart() {
    let pair = VethPair::new("ed");
    let mut sg = Instance::new("edits");
    let cfg = sg.write("sipguard.toml", BASE_CONFIG);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let rx = receiver_socket(&pair.tx, &pair.rx);

    assert_eq!(burst(&pair.tx, &rx, "fr0", FR, 20).len(), 20);
    sg.ok(&[
        "rules",
        "add",
        "+33",
        "--action",
        "block",
        "--comment",
        "test block",
    ]);
    assert!(
        burst(&pair.tx, &rx, "fr1", FR, 20).is_empty(),
        "+33 block is live"
    );
    assert_eq!(sg.rule_stats("+33"), Some((20, 20, 0)));

    // A reload of the (unchanged) config must not undo the runtime edit.
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    assert!(
        burst(&pair.tx, &rx, "fr2", FR, 10).is_empty(),
        "edit survived SIGHUP"
    );

    // Nor does a restart.
    sg.stop(libc::SIGTERM);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    assert!(
        burst(&pair.tx, &rx, "fr3", FR, 10).is_empty(),
        "edit survived restart"
    );
    assert_eq!(
        sg.rule_stats("+33").map(|s| s.1),
        Some(40),
        "counters persisted"
    );

    // Deleting lifts it; deleting a config rule sticks across a reload too.
    sg.ok(&["rules", "del", "+33"]);
    assert_eq!(burst(&pair.tx, &rx, "fr4", FR, 20).len(), 20);
    sg.ok(&["rules", "del", "+232"]);
    assert_eq!(burst(&pair.tx, &rx, "sl0", SL, 5).len(), 5);
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 2);
    assert_eq!(
        burst(&pair.tx, &rx, "sl1", SL, 5).len(),
        5,
        "config rule stays deleted"
    );
    sg.ok(&["rules", "add", "+232", "--action", "block"]);
    assert!(burst(&pair.tx, &rx, "sl2", SL, 5).is_empty());

    // Country rules and import.
    sg.ok(&["rules", "add", "--country", "SL", "--action", "block"]);
    let imp = sg.write(
        "import.toml",
        "[[rule]]\nprefix = \"+881\"\naction = \"block\"\ncomment = \"satellite\"\n\n[[rule]]\nprefix = \"+882\"\naction = \"block\"\n",
    );
    let out = sg.ok(&["rules", "import", imp.to_str().unwrap()]);
    assert!(out.contains("added 2 rule(s)"), "{out}");
    let rules = sg.rules();
    assert!(
        rules.contains(&("+881".into(), "block".into())),
        "{rules:?}"
    );
    assert!(burst(&pair.tx, &rx, "sat", "sip:+881631234567@gw.example.net", 5).is_empty());
    let list = sg.ok(&["rules", "list"]);
    assert!(
        list.contains("runtime") && list.contains("satellite"),
        "{list}"
    );
}

#[test]
fn reload_under_traffic_never_leaks_or_loses() {
    // The two configs differ so that a naive per-key update could open a window either way:
    // +23276... is blocked by both, but B adds "+2327 allow" next to "+23276 block";
    // +3314... is allowed by both, but B adds "+33 block" next to "+331 allow".
    //
    // Filler rules sort between the pairs, so a non-atomic update would keep such a window open
    // for thousands of map updates (milliseconds), where the traffic would hit it.
    const A: &str = "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n";
    let fillers: String = (0..1000)
        .map(|i| {
            format!(
                "[[rule]]\nprefix = \"+23270{i:04}\"\naction = \"monitor\"\n[[rule]]\nprefix = \"+330{i:04}\"\naction = \"monitor\"\n"
            )
        })
        .collect();
    const B_PAIRS: &str = "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n\n[[rule]]\nprefix = \"+2327\"\naction = \"allow\"\n\n[[rule]]\nprefix = \"+23276\"\naction = \"block\"\n\n[[rule]]\nprefix = \"+33\"\naction = \"block\"\n\n[[rule]]\nprefix = \"+331\"\naction = \"allow\"\n";
    let b = format!("{B_PAIRS}{fillers}");
    let pair = VethPair::new("rl");
    let mut sg = Instance::new("reload");
    let cfg = sg.write("sipguard.toml", A);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);

    let traffic = Traffic::start(
        &pair.tx,
        &pair.rx,
        blocked_and_allowed(),
        Duration::from_micros(500),
    );
    let reloads = 12;
    for i in 0..reloads {
        thread::sleep(Duration::from_millis(150));
        sg.write("sipguard.toml", if i % 2 == 0 { &b } else { A });
        // Half the reloads by SIGHUP, half by the file watcher.
        if i % 3 == 0 {
            sg.signal(libc::SIGHUP);
        }
        sg.wait_log("reloaded", i + 1);
    }
    thread::sleep(Duration::from_millis(150));
    let seen = traffic.finish();
    let log = sg.log_text();
    assert!(!log.contains("reload failed"), "{log}");
    assert!(
        seen.sent_to("blocked") > 1000,
        "traffic ran: {}",
        seen.sent.len()
    );
    assert!(
        seen.leaked().is_empty(),
        "blocked INVITEs leaked during reloads: {:?}",
        seen.leaked()
    );
    assert!(
        seen.lost().is_empty(),
        "allowed INVITEs lost during reloads: {} of {}",
        seen.lost().len(),
        seen.sent_to("allowed")
    );
    // Every blocked INVITE was dropped by one of the two block rules that cover it.
    let dropped: u64 = ["+232", "+23276"]
        .iter()
        .filter_map(|p| sg.rule_stats(p))
        .map(|s| s.1)
        .sum();
    let g = sg.stats()["global"]["dropped"].as_u64().unwrap();
    assert_eq!(
        g,
        seen.sent_to("blocked") as u64,
        "global drops = blocked INVITEs sent"
    );
    assert!(dropped <= g);
    println!(
        "{reloads} reloads under {} INVITEs: 0 leaked, 0 lost",
        seen.sent.len()
    );
}

#[test]
fn daemon_kill_and_restart_keep_enforcing_and_counting() {
    let pair = VethPair::new("rs");
    let mut sg = Instance::new("restart");
    let cfg = sg.write("sipguard.toml", BASE_CONFIG);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let traffic = Traffic::start(
        &pair.tx,
        &pair.rx,
        blocked_and_allowed(),
        Duration::from_millis(1),
    );
    thread::sleep(Duration::from_millis(300));
    sg.stop(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300)); // no daemon at all: the pinned filter enforces
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    thread::sleep(Duration::from_millis(300));
    sg.stop(libc::SIGKILL);
    thread::sleep(Duration::from_millis(300));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    thread::sleep(Duration::from_millis(300));
    let seen = traffic.finish();
    assert!(
        seen.leaked().is_empty(),
        "blocked INVITEs leaked: {:?}",
        seen.leaked()
    );
    assert!(
        seen.lost().is_empty(),
        "allowed INVITEs lost: {:?}",
        seen.lost()
    );
    let sent = seen.sent_to("blocked") as u64;
    assert!(sent > 500, "traffic ran: {sent}");
    assert_eq!(
        sg.rule_stats("+232").map(|s| s.1),
        Some(sent),
        "the +232 drop counter counts every blocked INVITE across two restarts"
    );
    let log = sg.log_text();
    assert_eq!(
        log.matches("adopted the pinned XDP link").count(),
        2,
        "{log}"
    );
}

#[test]
fn fail_mode_detach_and_the_kernel_debug_log() {
    let pair = VethPair::new("fd");
    let mut sg = Instance::new("detachmode");
    let cfg = sg.write(
        "sipguard.toml",
        &BASE_CONFIG.replace(
            "sip_ports = [5060]",
            "sip_ports = [5060]\nfail_mode = \"detach\"\nkernel_debug_log = true",
        ),
    );
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let rx = receiver_socket(&pair.tx, &pair.rx);
    assert!(burst(&pair.tx, &rx, "sl", SL, 3).is_empty());
    // aya-log: the program's debug line for the match reaches the daemon's log.
    sg.wait_log("matched, action 1", 1);

    sg.stop(libc::SIGTERM);
    assert!(
        sg.log_text()
            .contains("stopped and detached (fail_mode = detach)")
    );
    assert!(!sg.pin_root.join(&pair.rx_if).exists(), "pins removed");
    assert_eq!(
        burst(&pair.tx, &rx, "sl2", SL, 3).len(),
        3,
        "the filter is gone"
    );
}

#[test]
fn repeating_a_config_rule_keeps_it_the_configs_and_unreachable_rules_are_named() {
    let pair = VethPair::new("vr");
    let mut sg = Instance::new("repeat");
    let with_intl = |extra: &str| {
        format!(
            "{}\n[[rule]]\nprefix = \"0101\"\naction = \"block\"\n{extra}",
            BASE_CONFIG.replace(
                "sip_ports = [5060]",
                "sip_ports = [5060]\ninternational_prefixes = [\"00\", \"010\"]"
            )
        )
    };
    let cfg = sg.write("sipguard.toml", &with_intl(""));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    // 0101 is read as +1 under the international prefix 010: the daemon names it.
    sg.wait_log("national rule 0101 can never match", 1);

    // A runtime add of the config's own rule changes nothing and says so.
    let out = sg.ok(&["rules", "add", "+232", "--action", "block"]);
    assert!(
        out.contains("already present (config, same action): +232; nothing was changed"),
        "{out}"
    );
    let list = sg.ok(&["rules", "list", "--json"]);
    let sl: serde_json::Value = list
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["prefix"] == "+232")
        .unwrap();
    assert_eq!(sl["origin"], "config", "{list}");
    // So a later change of the config file still applies to it.
    let cfg2 = with_intl("").replace(
        "prefix = \"+232\"\naction = \"block\"",
        "prefix = \"+232\"\naction = \"monitor\"",
    );
    sg.write("sipguard.toml", &cfg2);
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    assert!(
        sg.rules().contains(&("+232".into(), "monitor".into())),
        "{:?}",
        sg.rules()
    );

    // A mixed add: the new rule is added, the repeated one reported.
    let out = sg.ok(&["rules", "add", "--country", "JM", "--action", "block"]);
    assert!(
        out.contains("already present (config, same action): +1658 +1876"),
        "{out}"
    );
    // An unreachable national rule added at runtime gets a warning naming it.
    let r = sg.cli(&["rules", "add", "01012", "--action", "block"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("warning: national rule 01012 can never match: dial strings that start with the international prefix 010"),
        "{}",
        r.stderr
    );
}
