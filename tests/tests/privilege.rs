//! Least privilege without systemd as PID 1: the daemon runs as an unprivileged user (nobody)
//! with exactly the capabilities of packaging/sipguard.service as ambient capabilities
//! (setpriv), on a bpffs mounted 0700 as systemd mounts /sys/fs/bpf, after root's
//! `sipguard prepare` (the unit's ExecStartPre=+). It attaches, enforces, takes root's runtime
//! edits, reloads, and logs as journald wants; without CAP_BPF it refuses and names it.
//! Run as root.

use std::{
    fs,
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sipguard_tests::{
    harness::{Instance, Launch, burst, receiver_socket, sipguard_bin},
    netns::VethPair,
};

const SL: &str = "sip:+23276123456@carrier.example.net";
const FR: &str = "sip:+33142685300@carrier.example.net";
const UK: &str = "sip:+442071234567@carrier.example.net";

const CONFIG: &str = r#"
[[rule]]
prefix = "+232"
action = "block"
"#;

const RELOADED: &str = r#"
[[rule]]
prefix = "+232"
action = "block"

[[rule]]
prefix = "+44"
action = "block"
"#;

/// The capabilities of the unit's `AmbientCapabilities=`, lower case without `CAP_`
/// (setpriv's spelling).
fn unit_caps() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sipguard.service");
    let unit = fs::read_to_string(&path).expect("read the unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit has AmbientCapabilities=");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// The capability bit of a setpriv name.
fn cap_bit(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("unexpected capability {other}"),
    }
}

/// `setpriv` switching to `uid` with `caps` as inheritable and ambient capabilities.
fn setpriv(uid: u32, caps: &[String]) -> Vec<String> {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = list.join(",");
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={uid}"),
        "--clear-groups".into(),
        format!("--inh-caps=-all,{list}"),
        format!("--ambient-caps=-all,{list}"),
        "--".into(),
    ]
}

/// A bpffs of its own, mounted 0700 like systemd's /sys/fs/bpf; unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sgt-{}-{tag}-bpffs", std::process::id()));
        fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&dir)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount -t bpf on {}", dir.display());
        Self(dir)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

const NOBODY: u32 = 65534;

/// The next notify datagram that contains `want` (bounded by the socket's read timeout).
fn next_notify(sock: &UnixDatagram, want: &str) -> String {
    let mut buf = [0u8; 4096];
    for _ in 0..200 {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no `{want}` from the daemon: {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
    panic!("no `{want}` in 200 notify messages");
}

#[test]
fn an_unprivileged_user_with_the_units_capabilities_attaches_enforces_and_reloads() {
    let caps = unit_caps();
    let mut sorted = caps.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["bpf", "net_admin", "net_raw", "perfmon"],
        "{caps:?}"
    );

    let bpffs = Bpffs::mount("lp");
    let pair = VethPair::new("lp");
    let mut sg = Instance::new("lp");
    sg.pin_root = bpffs.0.join("sipguard");

    // Root's step: the pin root and the state directory become nobody's; the 0700 bpffs
    // becomes searchable (not listable) for nobody.
    let prep = sg.ok(&["prepare", "--user", "nobody"]);
    assert!(
        prep.contains("search permission for others (o+x)"),
        "{prep}"
    );
    assert!(prep.contains(&format!("owned by {NOBODY}:")), "{prep}");
    {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(&sg.pin_root).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (NOBODY, 0o700));
        assert_eq!(fs::metadata(&bpffs.0).unwrap().mode() & 0o777, 0o701);
        assert_eq!(fs::metadata(&sg.state_dir).unwrap().uid(), NOBODY);
    }

    let cfg = sg.write("sipguard.toml", CONFIG);
    // systemd's side of Type=notify and WatchdogSec=: a datagram socket the daemon (nobody)
    // may write to.
    let notify_path = sg.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o777)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sg.launch(
        &pair.rx,
        &[&pair.rx_if],
        Some(&cfg),
        &["--xdp-mode", "native"],
        &Launch {
            wrapper: setpriv(NOBODY, &caps),
            journal: true,
            colour_allowed: true,
            env: vec![
                ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
                ("WATCHDOG_USEC".into(), "2000000".into()),
            ],
        },
    );
    // READY=1 once attached and applied, with a status line for `systemctl status`.
    let ready = next_notify(&notify, "READY=1");
    assert!(
        ready.contains(&format!("STATUS=enforcing 1 rules on {}", pair.rx_if)),
        "{ready}"
    );
    next_notify(&notify, "WATCHDOG=1");

    // It is nobody, with exactly the unit's capabilities in force.
    let st = fs::read_to_string(format!("/proc/{}/status", sg.pid())).unwrap();
    let field = |name: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in {st}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), NOBODY.to_string());
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        want,
        "{st}"
    );

    // It attached and enforces.
    let status: serde_json::Value =
        serde_json::from_str(&sg.ok(&["status", "--json"])).expect("status JSON");
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    assert_eq!(status["daemon"]["running"], true, "{status}");
    let rx = receiver_socket(&pair.tx, &pair.rx);
    assert!(
        burst(&pair.tx, &rx, "sl", SL, 5).is_empty(),
        "SL got through"
    );
    assert_eq!(burst(&pair.tx, &rx, "fr", FR, 5).len(), 5, "FR must pass");

    // Root edits at run time (sudo sipguard rules add): live at once, and the files it
    // writes stay readable to the daemon, whose reload re-reads them.
    sg.ok(&["rules", "add", "+33", "--action", "block"]);
    assert!(
        burst(&pair.tx, &rx, "fr2", FR, 5).is_empty(),
        "FR after rules add"
    );
    {
        use std::os::unix::fs::MetadataExt as _;
        for f in ["runtime.toml", "lock"] {
            let m = fs::metadata(sg.state_dir.join(f)).unwrap();
            assert_eq!(m.uid(), NOBODY, "{f} must be the daemon user's");
        }
    }

    // A reload (SIGHUP, the unit's ExecReload) applies the new config; the edit stays.
    sg.write("sipguard.toml", RELOADED);
    sg.signal(libc::SIGHUP);
    sg.wait_log("reloaded", 1);
    // The reload is told to systemd: RELOADING=1, then READY=1 with the new rule count.
    next_notify(&notify, "RELOADING=1");
    let ready = next_notify(&notify, "READY=1");
    assert!(ready.contains("STATUS=enforcing 3 rules"), "{ready}");
    assert!(
        !sg.log_text().contains("reload failed"),
        "{}",
        sg.log_text()
    );
    assert!(
        burst(&pair.tx, &rx, "uk", UK, 5).is_empty(),
        "UK after reload"
    );
    assert!(
        burst(&pair.tx, &rx, "fr3", FR, 5).is_empty(),
        "FR after reload"
    );

    // journald's form: every line has its priority and its level, and no colour.
    let log = sg.log_text();
    for line in log.lines() {
        let prio = line
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(prio, Some("3" | "4" | "6" | "7")),
            "no priority: {line}"
        );
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG"]
                .iter()
                .any(|l| line.contains(l)),
            "no level: {line}"
        );
        assert!(!line.contains('\x1b'), "colour in the journal: {line}");
    }
    assert!(log.contains("<6> INFO"), "{log}");

    // Stopped, the filter stays attached and enforcing (fail_mode = keep).
    sg.stop(libc::SIGTERM);
    assert!(sg.pin_root.join(&pair.rx_if).join("link").exists());
    assert!(
        burst(&pair.tx, &rx, "sl2", SL, 5).is_empty(),
        "SL after stop"
    );

    // Without CAP_BPF: refused at once, naming it; the enforcing filter is untouched.
    let no_bpf: Vec<String> = caps.iter().filter(|c| *c != "bpf").cloned().collect();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.rx.name))
        .arg("--")
        .args(setpriv(NOBODY, &no_bpf))
        .arg(sipguard_bin())
        .env("SIPGUARD_PIN_ROOT", &sg.pin_root)
        .env("SIPGUARD_STATE_DIR", &sg.state_dir)
        .args(["run", "--iface", &pair.rx_if])
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run without CAP_BPF");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ran without CAP_BPF:\n{err}");
    assert!(
        err.contains("lacks:") && err.contains("CAP_BPF (to load the XDP program"),
        "{err}"
    );
    assert!(
        !err.contains("CAP_NET_ADMIN ("),
        "only CAP_BPF is missing:\n{err}"
    );
    assert!(
        burst(&pair.tx, &rx, "sl3", SL, 5).is_empty(),
        "SL after refusal"
    );

    // Not under journald (a file, colour allowed): plain lines with their level, no colour.
    let before = sg.log_text().len();
    sg.launch(
        &pair.rx,
        &[&pair.rx_if],
        Some(&cfg),
        &["--xdp-mode", "native"],
        &Launch {
            wrapper: setpriv(NOBODY, &caps),
            journal: false,
            colour_allowed: true,
            env: Vec::new(),
        },
    );
    let plain = sg.log_text()[before..].to_string();
    assert!(plain.contains(" INFO "), "{plain}");
    assert!(!plain.contains('\x1b') && !plain.contains("<6>"), "{plain}");
    sg.stop(libc::SIGTERM);
}
