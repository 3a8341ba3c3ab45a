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
