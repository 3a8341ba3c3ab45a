//! The errors users hit: bad configs, bad CLI arguments and bad environments each give a clear
//! message and a non-zero exit, and what was loaded before stays intact. Run as root.

use std::{os::unix::fs::PermissionsExt as _, process::Command, thread, time::Duration};

use aya::programs::XdpMode;
use sipguard_tests::{
    fixtures,
    harness::{Instance, burst, receiver_socket, sipguard_bin},
    load,
    netns::{Netns, VethPair},
};

const GOOD: &str = r#"
[settings]
sip_ports = [5060]

[[rule]]
prefix = "+232"
action = "block"

[[rule]]
prefix = "+23222"
action = "allow"
"#;

const SL: &str = "sip:+23276123456@carrier.example.net";

/// Bad config files and the message each must give (file:line: problem).
const BAD_CONFIGS: &[(&str, &str)] = &[
    (
        "[[rule]]\nprefix = \"\"\naction = \"block\"\n",
        "bad.toml:2: empty prefix",
    ),
    (
        "[[rule]]\nprefix = \"+23a\"\naction = \"block\"\n",
        "bad.toml:2: prefix `+23a`: `a` at position 4 is not a digit",
    ),
    (
        "[[rule]]\nprefix = \"+1234567890123456789012345678901\"\naction = \"block\"\n",
        "bad.toml:2: prefix `+1234567890123456789012345678901` has 31 digits; at most 30",
    ),
    (
        "[[rule]]\nprefix = \"+232\"\naction = \"drop\"\n",
        "bad.toml:3: unknown action `drop`",
    ),
    (
        "[[rule]]\ncountry = \"XX\"\naction = \"block\"\n",
        "bad.toml:2: unknown country `XX`",
    ),
    (
        "[[rule]]\ncountry = \"US\"\naction = \"block\"\n",
        "bad.toml:2: country `US` (United States of America) cannot be expressed safely",
    ),
    (
        "[[rule]]\nprefix = \"+232\"\naction = \"block\"\n[[rule]]\nprefix = \"+232\"\naction = \"allow\"\n",
        "bad.toml:4: rule conflict: +232 is `allow` here but `block` at line 1",
    ),
    (
        "[[rule]]\nprefix = \"+232\"\nacton = \"block\"\n",
        "bad.toml:3: unknown field `acton`",
    ),
    (
        "[settings]\nsip_port = [5060]\n",
        "bad.toml:2: unknown field `sip_port`",
    ),
    (
        "[settings]\nsip_ports = [0]\n",
        "bad.toml:2: sip_ports: 0 is not a UDP port (1 to 65535)",
    ),
    (
        "[settings]\nsip_ports = [5060, 65536]\n",
        "bad.toml:2: sip_ports: 65536 is not a UDP port (1 to 65535)",
    ),
    (
        "[settings]\nmode = \"block\"\n",
        "bad.toml:2: unknown mode `block`",
    ),
    (
        "[settings]\ninternational_prefixes = [\"0\", \"00\", \"000\", \"0000\", \"1\"]\n",
        "bad.toml:2: international_prefixes: 5 given, at most 4",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"10/fortnight\"\n",
        "bad.toml:4: rate `10/fortnight`: unknown unit `fortnight` (units: s, min, h, d)",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"0/min\"\n",
        "bad.toml:4: rate `0/min`: the count must be at least 1",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"-1/min\"\n",
        "bad.toml:4: rate `-1/min`: the count must be at least 1",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"6/min\"\nburst = 0\n",
        "bad.toml:5: burst 0: must be at least 1",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"6/min\"\nover_limit = \"allow\"\n",
        "bad.toml:5: over_limit `allow`: use block, reject or monitor",
    ),
    (
        "[[rule]]\nprefix = \"+\"\naction = \"allow\"\nrepeat_limit = \"3/fortnight\"\n",
        "bad.toml:4: rate `3/fortnight`: unknown unit `fortnight`",
    ),
    (
        "[quarantine]\nwindow = \"10min\"\n",
        "[quarantine] has no trigger",
    ),
    (
        "[quarantine]\ncalls = 30\nduration = \"0\"\n",
        "bad.toml:3: duration `0`: must be more than 0",
    ),
    (
        "[quarantine]\ncalls = 30\nduration = \"31d\"\n",
        "bad.toml:3: duration `31d`: must be 1 s to 30 days",
    ),
    ("[[rule]\nprefix = \"+232\"\n", "bad.toml:1: "),
];

#[test]
fn bad_input_is_refused_and_nothing_loaded_is_lost() {
    let pair = VethPair::new("er");
    let mut sg = Instance::new("errors");
    let cfg = sg.write("sipguard.toml", GOOD);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &[]);
    let rx = receiver_socket(&pair.tx, &pair.rx);
    let baseline = sg.rules();
    assert_eq!(baseline.len(), 2);
    let intact = |what: &str| {
        assert_eq!(sg.rules(), baseline, "rules changed after: {what}");
        assert!(
            burst(&pair.tx, &rx, "sl", SL, 3).is_empty(),
            "enforcement lost after: {what}"
        );
    };

    // Bad configs: `run` refuses them (before touching anything) ...
    for (text, want) in BAD_CONFIGS {
        let bad = sg.write("bad.toml", text);
        let r = sg.cli(&["run", "--iface", "lo", "--config", bad.to_str().unwrap()]);
        assert!(!r.ok, "run accepted {text:?}");
        assert!(
            r.stderr.contains(want),
            "for {text:?}\nwant: {want}\n got: {}",
            r.stderr
        );
        // `check-config` gives the same message, with exit code 1 (invalid) ...
        let out = std::process::Command::new(sipguard_bin())
            .args(["check-config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "check-config {text:?}: {err}");
        assert!(
            err.contains(want),
            "check-config {text:?}\nwant: {want}\n got: {err}"
        );
        // ... and `rules import` does too.
        let r = sg.cli(&["rules", "import", bad.to_str().unwrap()]);
        assert!(
            !r.ok && r.stderr.contains("bad.toml:"),
            "import: {}",
            r.stderr
        );
    }
    intact("bad configs");

    // A bad config written over the live one: the reload fails and the old rules stay.
    sg.write("sipguard.toml", BAD_CONFIGS[3].0);
    sg.signal(libc::SIGHUP);
    sg.wait_log("reload failed, the previous rules stay in force", 1);
    assert!(
        sg.log_text()
            .contains("sipguard.toml:3: unknown action `drop`")
    );
    intact("a bad reload");
    sg.write("sipguard.toml", GOOD);

    // Bad CLI arguments.
    let many: String = (0..=guard_common::MAX_RULES)
        .map(|i| format!("[[rule]]\nprefix = \"+9{i:07}\"\naction = \"block\"\n"))
        .collect();
    let full = sg.write("full.toml", &many);
    let with_settings = sg.write("settings.toml", "[settings]\nmode = \"monitor\"\n");
    let not_pcap = sg.write("not.pcap", "this is not a capture");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["rules", "add", "+23a", "--action", "block"],
            "`a` at position 4 is not a digit",
        ),
        (
            vec!["rules", "add", "", "--action", "block"],
            "empty prefix",
        ),
        (
            vec!["rules", "add", "+232", "--action", "drop"],
            "unknown action `drop`",
        ),
        (
            vec!["rules", "add", "+232", "--action", "allow"],
            "rule conflict: +232 is already `block` (config), not `allow`",
        ),
        (
            vec!["rules", "add", "--country", "US", "--action", "block"],
            "cannot be expressed safely",
        ),
        (
            vec!["rules", "add", "--country", "ZZ", "--action", "block"],
            "unknown country `ZZ`",
        ),
        (
            vec!["rules", "add", "+1", "--country", "JM", "--action", "block"],
            "cannot be used with",
        ),
        (vec!["rules", "del", "+999"], "no rule for +999"),
        (
            vec!["rules", "import", full.to_str().unwrap()],
            "the rule map holds at most 262144",
        ),
        (
            vec!["rules", "import", with_settings.to_str().unwrap()],
            "an import file holds only [[rule]] entries",
        ),
        (
            vec!["rules", "import", "/nonexistent/rules.toml"],
            "/nonexistent/rules.toml: cannot read",
        ),
        (vec!["stats", "--watch", "0"], "--watch"),
        (vec!["stats", "--top", "many"], "--top"),
        (
            vec!["detach", "--iface", "sgnosuch0"],
            "interface sgnosuch0 has no pinned sipguard state",
        ),
        (
            vec![
                "run",
                "--iface",
                "sgnosuch0",
                "--config",
                cfg.to_str().unwrap(),
            ],
            "no such interface: sgnosuch0",
        ),
        (vec!["run", "--config", cfg.to_str().unwrap()], "--iface"),
        (
            vec!["run", "--iface", "lo", "--config", "/nonexistent.toml"],
            "/nonexistent.toml: cannot read",
        ),
        (
            vec![
                "run",
                "--iface",
                "lo",
                "--xdp-mode",
                "fast",
                "--config",
                cfg.to_str().unwrap(),
            ],
            "--xdp-mode",
        ),
        (
            vec![
                "replay",
                "--config",
                cfg.to_str().unwrap(),
                not_pcap.to_str().unwrap(),
            ],
            "not.pcap: not a pcap or pcapng file",
        ),
        (
            vec![
                "replay",
                "--config",
                cfg.to_str().unwrap(),
                "/nonexistent.pcap",
            ],
            "/nonexistent.pcap: cannot read",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (
            vec!["run", "--config", cfg.to_str().unwrap()],
            "no interface given: use --iface IF",
        ),
    ];
    for (args, want) in &cases {
        let r = sg.cli(args);
        assert!(!r.ok, "sipguard {args:?} succeeded");
        assert!(
            r.stderr.contains(want),
            "sipguard {args:?}\nwant: {want}\n got: {}",
            r.stderr
        );
    }
    intact("bad CLI arguments");

    // Not root.
    let r = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(sipguard_bin())
        .env("SIPGUARD_PIN_ROOT", &sg.pin_root)
        .args(["status"])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success()
            && stderr.contains("this verb needs the capabilities CAP_BPF; this process lacks:")
            && stderr.contains("CAP_BPF (to load the XDP program"),
        "{stderr}"
    );

    // No pinned state, and a pin root that is not on bpffs.
    let empty = Instance::new("empty");
    let r = empty.cli(&["status"]);
    assert!(
        !r.ok && r.stderr.contains("no pinned sipguard state under"),
        "{}",
        r.stderr
    );
    let r = empty.cli(&["rules", "list"]);
    assert!(
        !r.ok && r.stderr.contains("no pinned sipguard state under"),
        "{}",
        r.stderr
    );
    let r = empty.cli(&[
        "--pin-root",
        empty.dir.join("pins").to_str().unwrap(),
        "run",
        "--iface",
        "lo",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        !r.ok && r.stderr.contains("is not on a bpf filesystem"),
        "{}",
        r.stderr
    );
    assert!(!empty.pin_root.exists());
    intact("environment errors");
}

#[test]
fn foreign_program_and_unsupported_native_mode() {
    // A foreign XDP program (a private instance of our own object, attached by this test).
    let pair = VethPair::new("fx");
    let mut foreign = load(&fixtures::Setup::Default.settings(), &[]);
    let rx_if = pair.rx_if.clone();
    pair.rx
        .run(|| foreign.attach(&rx_if, XdpMode::Driver))
        .expect("attach the foreign program");
    let mut sg = Instance::new("foreign");
    let cfg = sg.write("sipguard.toml", GOOD);
    let r = sg.cli_in(
        &pair.rx,
        &[
            "run",
            "--iface",
            &pair.rx_if,
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(!r.ok, "run attached over a foreign program");
    assert!(
        r.stderr
            .contains("already has a foreign XDP program attached"),
        "{}",
        r.stderr
    );
    assert!(
        !sg.pin_root.join(&pair.rx_if).exists(),
        "a failed start left pins behind"
    );
    drop(foreign);

    // A bridge has no native XDP: `native` fails clearly, `auto` falls back to generic.
    let ns = Netns::new("dm");
    ns.ip(&["link", "add", "sgbridge0", "type", "bridge"])
        .expect("bridge");
    ns.ip(&["link", "set", "sgbridge0", "up"]).expect("up");
    let r = sg.cli_in(
        &ns,
        &[
            "run",
            "--iface",
            "sgbridge0",
            "--xdp-mode",
            "native",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("native XDP mode is not supported on sgbridge0"),
        "{}",
        r.stderr
    );
    sg.start(&ns, &["sgbridge0"], &cfg, &["--xdp-mode", "auto"]);
    assert!(
        sg.log_text().contains("falling back to generic"),
        "{}",
        sg.log_text()
    );
    let st: serde_json::Value = serde_json::from_str(&sg.ok(&["status", "--json"])).unwrap();
    assert_eq!(st["interfaces"][0]["xdp_mode"], "generic", "{st}");
    // The state directory is private.
    let mode = std::fs::metadata(&sg.state_dir)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    sg.stop(libc::SIGTERM);
    thread::sleep(Duration::from_millis(50));
}
