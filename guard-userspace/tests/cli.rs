//! The `sipguard` binary's verbs that need no root and no kernel.

use std::{
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    process::{Command, Stdio},
};

fn sipguard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sipguard"))
}

/// A pipe whose read end is already closed: the first write to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds are new and ours.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    for args in [
        &["default-config"][..],
        &["classify", "INVITE sip:+232@x SIP/2.0"],
    ] {
        let out = sipguard()
            .args(args)
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?}",
            out.status
        );
    }
}

#[test]
fn classify_and_default_config_work_without_root() {
    let out = sipguard()
        .args(["classify", "INVITE sip:0023276123456@pbx SIP/2.0"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "INVITE to +23276123456 (international)\n"
    );
    let out = sipguard().arg("default-config").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[[rule]]"));
}

#[test]
fn bad_arguments_are_refused_with_the_problem_named() {
    let out = sipguard()
        .args(["rules", "add", "+23x", "--action", "block"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`x` at position 4 is not a digit"),
        "{stderr}"
    );
}

/// `check-config` without root: as the unprivileged user `nobody` when the tests run as root
/// (setpriv), else as the user running them. Exit codes 0 valid, 1 invalid, 2 unreadable.
#[test]
fn check_config_works_without_root_and_documents_its_exit_codes() {
    let dir = std::env::temp_dir().join(format!("sg-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    };
    let good = write(
        "good.toml",
        "[settings]\nsip_ports = [5060]\n[[rule]]\ncountry = \"SL\"\naction = \"block\"\n\
         [[rule]]\nprefix = \"+\"\naction = \"allow\"\nlimit = \"10/min\"\n\
         [[policy]]\nname = \"barred\"\n[[policy.rule]]\nprefix = \"+\"\naction = \"reject\"\n\
         [[customer]]\nname = \"a\"\nsources = [\"198.51.100.0/24\", \"2001:db8::/32\"]\npolicy = \"barred\"\n\
         [quarantine]\nover_limit = 3\n",
    );
    let bad = write(
        "bad.toml",
        "[[rule]]\nprefix = \"+232\"\naction = \"drop\"\n",
    );
    let missing = dir.join("missing.toml");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let run = |file: &std::path::Path| {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_sipguard"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_sipguard"))
        };
        let out = c.arg("check-config").arg(file).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&good);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("good.toml: valid"), "{out}");
    assert!(out.contains("rules: "), "{out}");
    assert!(
        out.contains("1 in policies") || out.contains("1 of them in policies"),
        "{out}"
    );
    assert!(out.contains("countries expanded: SL (1 prefixes)"), "{out}");
    assert!(
        out.contains("customers: 1 (2 source entries); policies: 1"),
        "{out}"
    );
    assert!(out.contains("rules with limits: 1"), "{out}");
    assert!(
        out.contains("quarantine: after more than 0 calls or 3 over-limit calls"),
        "{out}"
    );
    let (code, _, err) = run(&bad);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("bad.toml:3: unknown action `drop`"), "{err}");
    let (code, _, err) = run(&missing);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.toml: cannot read"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The manual pages and completions come from the clap definitions: a page per verb, each
/// rendering with `man -l` without a warning; the bash completion loads and completes verbs.
#[test]
fn man_pages_render_and_completions_load() {
    let dir = std::env::temp_dir().join(format!("sg-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = sipguard().arg("man").arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for want in [
        "sipguard.1",
        "sipguard-run.1",
        "sipguard-check-config.1",
        "sipguard-quarantine-release.1",
        "sipguard-customers-add.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "no {want} in {pages:?}");
    }
    for p in &pages {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.join(p))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man (man-db)");
        assert!(out.status.success(), "{p}");
        assert!(
            out.stderr.is_empty(),
            "{p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sipguard"),
            "{p}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    // bash: the script loads, and completes the verbs.
    let script = sipguard().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            "source /dev/stdin; COMP_WORDS=(sipguard qua); COMP_CWORD=1; \
             _sipguard sipguard qua sipguard; echo \"${COMPREPLY[@]}\"; complete -p sipguard",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(&script.stdout)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quarantine"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("complete -o bashdefault -o default -o nosort -F _sipguard sipguard"),
        "{text}"
    );
    for shell in ["zsh", "fish"] {
        let out = sipguard().args(["completions", shell]).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
}
