//! What `status`, `/metrics` and the daemon say must be true: an interface deleted and created
//! again, a second daemon on the same interface, `sipguard detach` under a running daemon, the
//! state directory removed, a reload that changes `[metrics]`/`[events]`, and a config file
//! rewritten in place by an editor. Run as root; every namespace, veth, pin and process is
//! removed on drop, also when a test fails.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use sipguard_tests::{
    harness::{Dest, Instance, Traffic, burst, receiver_socket, sipguard_bin},
    netns::{Netns, RX4, RX6, TX4, TX6, VethPair, ip},
};

const SL: &str = "sip:+23276123456@carrier.example.net";
const FR: &str = "sip:+33142685300@carrier.example.net";

fn config(extra: &str) -> String {
    format!(
        r#"
[settings]
sip_ports = [5060]
{extra}
[[rule]]
prefix = "+232"
action = "block"
comment = "Sierra Leone"

[[rule]]
prefix = "+44"
action = "monitor"
"#
    )
}

/// `status --json`, parsed.
fn status(sg: &Instance) -> serde_json::Value {
    serde_json::from_str(&sg.ok(&["status", "--json"])).expect("status --json is JSON")
}

/// The status row of `iface`.
fn iface_status(sg: &Instance, iface: &str) -> serde_json::Value {
    let st = status(sg);
    st["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["iface"] == iface).cloned())
        .unwrap_or_else(|| panic!("{iface} is not in status: {st}"))
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// GET /metrics at `addr` from inside `ns`; `None` when nothing listens there.
fn scrape(ns: &Netns, addr: &str) -> Option<String> {
    ns.run(|| {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

/// The value of `sipguard_program_attached` for `iface`.
fn attached_gauge(text: &str, iface: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with("sipguard_program_attached{") && l.contains(iface))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Creates the veth pair of `pair` again (after `ip link del`), with its addresses.
fn recreate(pair: &VethPair) {
    ip(&[
        "link",
        "add",
        &pair.tx_if,
        "netns",
        &pair.tx.name,
        "type",
        "veth",
        "peer",
        "name",
        &pair.rx_if,
        "netns",
        &pair.rx.name,
    ])
    .expect("create the veth pair again");
    for (ns, dev, a4, a6) in [
        (&pair.tx, &pair.tx_if, TX4, TX6),
        (&pair.rx, &pair.rx_if, RX4, RX6),
    ] {
        ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev])
            .expect("IPv4 address");
        ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"])
            .expect("IPv6 address");
        ns.ip(&["link", "set", dev, "up"]).expect("link up");
    }
}

fn sl_blocked(pair: &VethPair, tag: &str) -> bool {
    let rx = receiver_socket(&pair.tx, &pair.rx);
    burst(&pair.tx, &rx, tag, SL, 5).is_empty()
}

#[test]
fn an_interface_deleted_and_created_again_is_reported_and_attached_again() {
    let pair = VethPair::new("td");
    let mut sg = Instance::new("ifgone");
    let cfg = sg.write(
        "sipguard.toml",
        &config("[metrics]\nlisten = \"127.0.0.1:9961\"\n"),
    );
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    let iface = pair.rx_if.as_str();
    assert_eq!(iface_status(&sg, iface)["attached"], true);
    assert!(sl_blocked(&pair, "before"), "+232 must be blocked");

    // Away: the link is severed; status, metrics and the log say so.
    pair.rx.ip(&["link", "del", iface]).expect("ip link del");
    sg.wait_log("is gone", 1);
    let row = iface_status(&sg, iface);
    assert_eq!(row["attached"], false, "{row}");
    assert_eq!(row["note"], "interface gone", "{row}");
    let human = sg.ok(&["status"]);
    assert!(
        human.contains(&format!("{iface}: NOT attached (interface gone")),
        "{human}"
    );
    let m = scrape(&pair.rx, "127.0.0.1:9961").expect("metrics");
    assert_eq!(attached_gauge(&m, iface), Some(0.0), "{m}");

    // Back: a new link on the new interface, pinned; filtering again.
    recreate(&pair);
    sg.wait_log("is back: re-attached", 1);
    wait_until("status says attached again", || {
        iface_status(&sg, iface)["attached"] == true
    });
    let m = scrape(&pair.rx, "127.0.0.1:9961").expect("metrics");
    assert_eq!(attached_gauge(&m, iface), Some(1.0), "{m}");
    assert!(
        sl_blocked(&pair, "back"),
        "+232 must be blocked after the interface came back"
    );

    // A restart over a severed pinned link: recreated with a message, not a failure.
    sg.stop(libc::SIGTERM);
    pair.rx.ip(&["link", "del", iface]).expect("ip link del");
    recreate(&pair);
    assert_eq!(iface_status(&sg, iface)["attached"], false);
    sg.start(&pair.rx, &[iface], &cfg, &["--xdp-mode", "native"]);
    assert!(sg.log_text().contains("is severed"), "{}", sg.log_text());
    assert_eq!(iface_status(&sg, iface)["attached"], true);
    assert!(sl_blocked(&pair, "restart"), "+232 must be blocked");
}

/// `sipguard run ARGS` inside `ns`, stopped (by its pid) after `limit`; returns whether it
/// exited by itself, and its stderr.
fn run_bounded(sg: &Instance, ns: &Netns, args: &[&str], limit: Duration) -> (bool, String) {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name))
        .arg("--")
        .arg(sipguard_bin())
        .env("SIPGUARD_PIN_ROOT", &sg.pin_root)
        .env("SIPGUARD_STATE_DIR", &sg.state_dir)
        .env("NO_COLOR", "1")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sipguard");
    let deadline = Instant::now() + limit;
    let exited = loop {
        if child.try_wait().expect("wait").is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().expect("collect");
    (exited, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_second_daemon_on_the_same_interface_is_refused() {
    let pair = VethPair::new("t2");
    let mut sg = Instance::new("second");
    let cfg = sg.write("sipguard.toml", &config(""));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    let first = sg.pid();
    let (exited, err) = run_bounded(
        &sg,
        &pair.rx,
        &[
            "run",
            "--iface",
            &pair.rx_if,
            "--config",
            cfg.to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert!(exited, "the second daemon must refuse at once:\n{err}");
    assert!(
        err.contains(&format!(
            "interface {} is already guarded by pid {first}",
            pair.rx_if
        )),
        "{err}"
    );
    let st = status(&sg);
    assert_eq!(st["daemon"]["running"], true, "{st}");
    assert_eq!(st["daemon"]["pid"], first, "{st}");
    assert_eq!(iface_status(&sg, &pair.rx_if)["attached"], true);
    assert!(sl_blocked(&pair, "second"));
}

#[test]
fn detach_under_a_running_daemon_is_reported_and_not_undone() {
    let pair = VethPair::new("tx");
    let mut sg = Instance::new("detach");
    let cfg = sg.write("sipguard.toml", &config(""));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    let iface = pair.rx_if.as_str();
    sg.ok(&["detach", "--iface", iface]);
    sg.wait_log("was detached by `sipguard detach`", 1);
    assert!(
        sg.log_text().contains(&format!(
            "restart sipguard (`sipguard run --iface {iface}`) to guard it again"
        )),
        "{}",
        sg.log_text()
    );
    let row = iface_status(&sg, iface);
    assert_eq!(row["attached"], false, "{row}");
    assert!(
        row["note"].as_str().unwrap_or("").contains("detached"),
        "{row}"
    );
    // A reload does not attach it again, and says it does not guard it.
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    assert!(
        sg.log_text().contains("not guarded (detached"),
        "{}",
        sg.log_text()
    );
    assert!(!sg.pin_root.join(iface).join("link").exists());
    let rx = receiver_socket(&pair.tx, &pair.rx);
    assert_eq!(
        burst(&pair.tx, &rx, "detached", SL, 3).len(),
        3,
        "detached: nothing filters"
    );
}

#[test]
fn a_removed_state_dir_is_recreated_and_runtime_rules_survive_a_reload() {
    let pair = VethPair::new("ts");
    let mut sg = Instance::new("statedir");
    let cfg = sg.write("sipguard.toml", &config(""));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    sg.ok(&["rules", "add", "+33", "--action", "block"]);
    // Let the daemon see runtime.toml (it polls every 500 ms).
    thread::sleep(Duration::from_millis(1200));
    std::fs::remove_dir_all(&sg.state_dir).expect("rm -rf the state dir");
    sg.wait_log("state directory re-created", 1);
    assert!(sg.state_dir.join("runtime.toml").exists());
    assert!(sg.state_dir.join("daemon.json").exists());
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    let rules = sg.rules();
    assert!(
        rules.contains(&("+33".to_string(), "block".to_string())),
        "the runtime rule survives the reload: {rules:?}"
    );
    let rx = receiver_socket(&pair.tx, &pair.rx);
    assert!(burst(&pair.tx, &rx, "fr", FR, 3).is_empty(), "+33 blocked");
    assert!(burst(&pair.tx, &rx, "sl", SL, 3).is_empty(), "+232 blocked");
    // `events` works again (the socket was re-created) and shows those drops.
    let events = sg.cli(&["events"]);
    assert!(events.ok, "sipguard events: {}", events.stderr);
    assert!(events.stdout.contains("+232"), "{}", events.stdout);
    assert_eq!(status(&sg)["daemon"]["pid"], sg.pid());
}

#[test]
fn a_reload_moves_metrics_and_events_and_status_shows_its_result() {
    let pair = VethPair::new("tr");
    let mut sg = Instance::new("reload");
    let (a, b) = (sg.dir.join("events-a.jsonl"), sg.dir.join("events-b.jsonl"));
    let with = |listen: &str, file: &Path| {
        config(&format!(
            "[metrics]\nlisten = \"{listen}\"\n[events]\nfile = \"{}\"\n",
            file.display()
        ))
    };
    let cfg = sg.write("sipguard.toml", &with("127.0.0.1:9962", &a));
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    assert!(scrape(&pair.rx, "127.0.0.1:9962").is_some());
    sg.write("sipguard.toml", &with("127.0.0.1:9963", &b));
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    assert!(
        scrape(&pair.rx, "127.0.0.1:9963").is_some(),
        "metrics on the new address:\n{}",
        sg.log_text()
    );
    assert!(
        scrape(&pair.rx, "127.0.0.1:9962").is_none(),
        "nothing on the old one"
    );
    assert!(sl_blocked(&pair, "moved"));
    wait_until("the drop events go to the new file", || {
        std::fs::read_to_string(&b).is_ok_and(|t| t.contains("+232"))
    });
    assert!(std::fs::read_to_string(&a).unwrap_or_default().is_empty());
    let human = sg.ok(&["status"]);
    assert!(human.contains("(SIGHUP): ok"), "{human}");

    // A failed reload: status shows it, with the error.
    sg.write(
        "sipguard.toml",
        "[[rule]]\nprefix = \"+232\"\naction = \"bogus\"\n",
    );
    sg.signal(libc::SIGHUP);
    sg.wait_log("reload failed", 1);
    let st = status(&sg);
    assert_eq!(st["last_reload"]["ok"], false, "{st}");
    assert!(
        st["last_reload"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("bogus"),
        "{st}"
    );
    let human = sg.ok(&["status"]);
    assert!(human.contains("FAILED"), "{human}");
}

#[test]
fn a_config_rewritten_in_place_is_never_applied_half_written() {
    let pair = VethPair::new("te");
    let mut sg = Instance::new("inplace");
    let text = config("");
    let cfg = sg.write("sipguard.toml", &text);
    sg.start(&pair.rx, &[&pair.rx_if], &cfg, &["--xdp-mode", "native"]);
    let traffic = Traffic::start(
        &pair.tx,
        &pair.rx,
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
        ],
        Duration::from_millis(5),
    );
    // An editor that writes in place: truncate, then (a moment later) the new content.
    for i in 0..16 {
        let mut f = std::fs::File::create(&cfg).expect("truncate");
        thread::sleep(Duration::from_millis(150));
        writeln!(f, "{text}# rewrite {i}").expect("write");
        drop(f);
        thread::sleep(Duration::from_millis(150 + 37 * (i % 5)));
    }
    thread::sleep(Duration::from_millis(1200));
    let seen = traffic.finish();
    assert!(seen.sent_to("blocked") > 200, "traffic ran");
    let leaked = seen.leaked();
    assert!(
        leaked.is_empty(),
        "{} blocked INVITEs arrived while the config was rewritten:\n{}",
        leaked.len(),
        sg.log_text()
    );
    assert!(
        !sg.log_text().contains("rules=0"),
        "an empty config was applied:\n{}",
        sg.log_text()
    );
    sg.wait_log("reloaded", 1);
}
