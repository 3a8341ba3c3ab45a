//! `cargo xtask test [-- ARGS]`: the one test command CI runs.
//!
//! Setup, a release build of guard-userspace, the Debian package (tests/tests/package.rs
//! installs it), then a single `cargo test` over the host crates.
//! Its stdout is streamed live and scanned for libtest's `test result:` lines; we print the summed
//! `N passed, M failed, K skipped`, and cargo's exit status is handed on.
//!
//! Then a fuzz smoke: every cargo-fuzz target runs for [`FUZZ_SMOKE_SECS`] seconds (see
//! [`crate::fuzz`]); its summary line `fuzz smoke: ...` comes just before the test summary,
//! which stays the last line. A crash fails the run. The smoke is skipped when test arguments
//! are given (a filtered run) or when `SIPGUARD_FUZZ_SMOKE=0`.

use std::{
    ffi::OsString,
    io::{self, Read as _, Write as _},
    process::{ExitCode, Stdio},
};

use anyhow::Context as _;

use crate::{build, fuzz, package, setup, util};

/// Seconds each fuzz target runs in the smoke (5 targets: under a minute, plus the build).
pub const FUZZ_SMOKE_SECS: u64 = 8;

pub fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    setup::run(setup::Scope::Full)?;
    if !util::is_root() {
        eprintln!("warning: not running as root; kernel tests need root to attach XDP programs");
    }
    build::build_userspace()?;
    // The package tests install this .deb (built from the release binary just built).
    let deb = package::build_deb()?;

    let mut cmd = util::cargo();
    cmd.env("RUST_BACKTRACE", "1")
        .env("SIPGUARD_DEB", &deb)
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            "guard-ebpf",
            "--exclude",
            "xtask",
        ])
        .stdout(Stdio::piped());
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start `{}`", util::describe(&cmd)))?;
    let mut pipe = child.stdout.take().context("child stdout was not piped")?;

    let mut totals = Totals::default();
    let mut line = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut out = io::stdout();
    loop {
        let n = match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the output of cargo test"),
        };
        // Echo as it arrives (libtest prints "test x ... " before the verdict), parse by line.
        // A closed stdout (e.g. piped into head) must not stop us draining the child.
        let _ = out.write_all(&chunk[..n]).and_then(|()| out.flush());
        for &b in &chunk[..n] {
            if b == b'\n' {
                totals.add_line(&String::from_utf8_lossy(&line));
                line.clear();
            } else {
                line.push(b);
            }
        }
    }
    totals.add_line(&String::from_utf8_lossy(&line));
    let status = child.wait().context("waiting for cargo test")?;

    let _ = out.flush();
    io::stderr().flush().ok();
    let tests = format!(
        "{} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );

    let skip_smoke =
        !args.is_empty() || std::env::var_os("SIPGUARD_FUZZ_SMOKE").is_some_and(|v| v == "0");
    let smoke = if skip_smoke {
        Ok("fuzz smoke: skipped (test arguments given, or SIPGUARD_FUZZ_SMOKE=0)".to_string())
    } else {
        fuzz::smoke(FUZZ_SMOKE_SECS)
    };
    // The test runner's summary is the last line, after the smoke's own.
    let smoke_ok = match &smoke {
        Ok(line) => {
            println!("{line}");
            true
        }
        Err(e) => {
            println!("{e:#}");
            false
        }
    };
    println!("{tests}");
    Ok(if smoke_ok {
        util::exit_code(status)
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of a libtest summary such as
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn sums_result_lines() {
        let mut t = Totals::default();
        for line in [
            "running 4 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "",
            "test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 1 filtered out; finished in 1.20s",
            "   Doc-tests guard_common",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\r",
            "test foo prints test result: ok. 9 passed",
        ] {
            t.add_line(line);
        }
        assert_eq!(
            t,
            Totals {
                passed: 8,
                failed: 2,
                ignored: 1
            }
        );
    }
}
