//! The Debian package that `cargo xtask package` builds (cargo xtask test builds it first):
//! its file list and conffiles, lintian, then on this machine `dpkg -i`, the installed binary,
//! unit, pages and completions, a daemon started the unit's way (root's `sipguard prepare`,
//! then the sipguard user with the unit's capabilities), `dpkg -r` while its filter is
//! attached (the filter goes, and says so), and `dpkg -P` (nothing of the package is left).
//! Run as root; the package is purged at the end, also when the test fails.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sipguard_tests::{
    harness::{burst, receiver_socket},
    netns::VethPair,
};

/// The .deb: `SIPGUARD_DEB`, else the newest target/debian/sipguard_*.deb.
fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("SIPGUARD_DEB") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    let newest = fs::read_dir(&dir).ok().and_then(|rd| {
        rd.filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("sipguard_") && n.ends_with(".deb")
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no sipguard_*.deb in {}: build it with `cargo xtask package` (cargo xtask test does)",
            dir.display()
        )
    })
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The paths in the package (without the leading `.`), files and directories.
fn contents(deb: &Path) -> Vec<(char, String)> {
    ok("dpkg-deb", &["-c", deb.to_str().unwrap()])
        .lines()
        .map(|l| {
            let kind = l.chars().next().unwrap();
            let path = l.split_whitespace().nth(5).unwrap();
            (kind, path.trim_start_matches('.').to_string())
        })
        .collect()
}

#[test]
fn the_package_holds_everything_and_lintian_finds_no_error() {
    let deb = deb();
    let files: BTreeSet<String> = contents(&deb)
        .into_iter()
        .filter(|(k, _)| *k == '-')
        .map(|(_, p)| p)
        .collect();
    for want in [
        "/usr/sbin/sipguard",
        "/etc/sipguard/sipguard.toml",
        "/etc/default/sipguard",
        "/usr/lib/systemd/system/sipguard.service",
        "/usr/lib/sysusers.d/sipguard.conf",
        "/usr/share/man/man1/sipguard.1.gz",
        "/usr/share/man/man1/sipguard-run.1.gz",
        "/usr/share/man/man1/sipguard-check-config.1.gz",
        "/usr/share/man/man5/sipguard.toml.5.gz",
        "/usr/share/bash-completion/completions/sipguard",
        "/usr/share/zsh/vendor-completions/_sipguard",
        "/usr/share/fish/vendor_completions.d/sipguard.fish",
        "/usr/share/sipguard/grafana/sipguard.json",
        "/usr/share/sipguard/prometheus/alerts.yml",
        "/usr/share/sipguard/prometheus/fleet.yml",
        "/usr/share/sipguard/prometheus/scrape-fleet.yml",
        "/usr/share/doc/sipguard/README.md",
        "/usr/share/doc/sipguard/copyright",
        "/usr/share/doc/sipguard/changelog.Debian.gz",
    ] {
        assert!(
            files.contains(want),
            "{want} is not in the package:\n{files:#?}"
        );
    }
    // One page per verb: as many as `sipguard man` writes.
    let tmp = std::env::temp_dir().join(format!("sgt-{}-pages", std::process::id()));
    ok(
        sipguard_tests::harness::sipguard_bin().to_str().unwrap(),
        &["man", tmp.to_str().unwrap()],
    );
    let pages = fs::read_dir(&tmp).unwrap().count();
    let _ = fs::remove_dir_all(&tmp);
    let packaged = files
        .iter()
        .filter(|f| f.starts_with("/usr/share/man/"))
        .count();
    assert_eq!(packaged, pages, "{files:#?}");

    // The conffiles: both files under /etc, so an upgrade never overwrites an operator's edit.
    let conffiles = ok("dpkg-deb", &["--info", deb.to_str().unwrap(), "conffiles"]);
    let conffiles: BTreeSet<&str> = conffiles.lines().map(str::trim).collect();
    assert_eq!(
        conffiles,
        BTreeSet::from(["/etc/sipguard/sipguard.toml", "/etc/default/sipguard"])
    );
    let control = ok("dpkg-deb", &["--field", deb.to_str().unwrap()]);
    assert!(control.contains("Package: sipguard"), "{control}");

    // lintian: no error (its warnings are printed by `cargo xtask package`).
    let l = run(
        "lintian",
        &["--no-tag-display-limit", deb.to_str().unwrap()],
    );
    let tags = String::from_utf8_lossy(&l.stdout);
    let errors: Vec<&str> = tags.lines().filter(|t| t.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
}

/// Purges the package and removes what the test made, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "sipguard"]);
        let _ = fs::remove_dir_all("/sys/fs/bpf/sipguard");
    }
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "sipguard"])
        .stdout
        .starts_with(b"install ok installed")
}

#[test]
fn dpkg_install_run_remove_and_purge_leave_nothing_behind() {
    assert!(
        !installed(),
        "a sipguard package is installed on this machine; this test installs and purges its own: remove it first (dpkg -P sipguard)"
    );
    assert!(
        !Path::new("/sys/fs/bpf/sipguard").exists(),
        "/sys/fs/bpf/sipguard exists: a sipguard outside this test uses the default pin root"
    );
    let deb = deb();
    let entries = contents(&deb);
    let _guard = Installed;

    let out = run("dpkg", &["-i", deb.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg -i:\n{said}");
    assert!(said.contains("systemctl enable --now sipguard"), "{said}");
    let version = ok("/usr/sbin/sipguard", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("sipguard {}", env!("CARGO_PKG_VERSION"))
    );
    ok("id", &["sipguard"]); // the system user, from sysusers.d

    // The unit passes systemd's own checks now that its binary and pages are installed.
    let v = run(
        "systemd-analyze",
        &["verify", "/usr/lib/systemd/system/sipguard.service"],
    );
    assert!(
        v.status.success() && v.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        String::from_utf8_lossy(&v.stderr)
    );
    // The installed pages render without a warning; the completions load.
    for page in ["sipguard", "sipguard-run", "sipguard.toml"] {
        let o = Command::new("man")
            .args(["--warnings", page])
            .env("MANPAGER", "cat")
            .env("LC_ALL", "C.UTF-8")
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "man {page}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let fail_open = ok("man", &["-P", "cat", "sipguard-run"]);
    assert!(
        fail_open.contains("attached and enforcing"),
        "the run page must say that stopping leaves the filter enforcing"
    );
    let complete = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/sipguard && complete -p sipguard",
        ],
    );
    assert!(complete.contains("sipguard"), "{complete}");

    // A daemon started the unit's way on a veth: root's prepare, then the sipguard user with
    // the unit's capabilities; blocked INVITEs are dropped by the installed package.
    let pair = VethPair::new("pk");
    ok("/usr/sbin/sipguard", &["prepare", "--user", "sipguard"]);
    let setpriv = [
        "--reuid=sipguard",
        "--regid=sipguard",
        "--clear-groups",
        "--inh-caps=-all,+bpf,+net_admin,+perfmon,+net_raw",
        "--ambient-caps=-all,+bpf,+net_admin,+perfmon,+net_raw",
        "--",
    ];
    let log = std::env::temp_dir().join(format!("sgt-{}-pk.log", std::process::id()));
    let mut daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.rx.name))
        .arg("--")
        .arg("setpriv")
        .args(setpriv)
        .args([
            "/usr/sbin/sipguard",
            "run",
            "--config",
            "/etc/sipguard/sipguard.toml",
            "--iface",
            &pair.rx_if,
        ])
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the installed daemon");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("sipguard running")
    {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the installed daemon exited:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        assert!(std::time::Instant::now() < deadline, "not running in 20 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let rx = receiver_socket(&pair.tx, &pair.rx);
    let sl = "sip:+23276123456@carrier.example.net";
    assert!(
        burst(&pair.tx, &rx, "sl", sl, 5).is_empty(),
        "SL got through"
    );
    // Stop it as systemctl stop does: the filter stays attached and enforcing.
    // SAFETY: kill(2) on the PID of the child we spawned (setpriv execs the daemon).
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    daemon.wait().unwrap();
    let _ = fs::remove_file(&log);
    assert!(
        burst(&pair.tx, &rx, "sl2", sl, 5).is_empty(),
        "SL after stop"
    );

    // The operator's edit of a conffile.
    let conf = "/etc/sipguard/sipguard.toml";
    let edited = fs::read_to_string(conf).unwrap() + "\n# edited by the operator\n";
    fs::write(conf, &edited).unwrap();

    // dpkg -r while attached: the filter goes, and the terminal says from where.
    let out = run("dpkg", &["-r", "sipguard"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dpkg -r:\n{said}");
    assert!(
        said.contains(&format!("removing the filter from {}", pair.rx_if)),
        "{said}"
    );
    assert!(
        !Path::new("/sys/fs/bpf/sipguard").join(&pair.rx_if).exists(),
        "pins left after dpkg -r"
    );
    assert_eq!(
        burst(&pair.tx, &rx, "sl3", sl, 5).len(),
        5,
        "the filter must be gone after dpkg -r"
    );
    for (kind, path) in &entries {
        if *kind == '-' && !path.starts_with("/etc/") {
            assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
        }
    }
    assert_eq!(
        fs::read_to_string(conf).unwrap(),
        edited,
        "the conffile stays, with the edit"
    );

    // dpkg -P: the conffiles and the state go too.
    ok("dpkg", &["--purge", "sipguard"]);
    for path in [
        "/etc/sipguard",
        "/etc/default/sipguard",
        "/var/lib/sipguard",
    ] {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -P");
    }
    assert!(!installed());
}

/// The unit's settings that the issue asks for, and systemd's own exposure score for it.
#[test]
fn the_unit_is_a_hardened_notify_service() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/sipguard.service");
    let unit = fs::read_to_string(&path).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "User=sipguard",
        "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW",
        "CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON CAP_NET_RAW",
        "ProtectSystem=strict",
        "StateDirectory=sipguard",
        "LogsDirectory=sipguard",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET",
        "SystemCallFilter=@system-service bpf",
    ] {
        assert!(has(line), "the unit lacks `{line}`");
    }
    let out = run(
        "systemd-analyze",
        &["security", "--offline=true", path.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for sipguard.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{text}"));
    let mut words = score.split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let verdict = words.next().unwrap();
    println!("systemd-analyze security: {value} {verdict}");
    assert!(
        value <= 4.9 && matches!(verdict, "OK" | "SAFE" | "PERFECT"),
        "exposure {value} {verdict}: systemd calls OK at most 4.9"
    );
}
