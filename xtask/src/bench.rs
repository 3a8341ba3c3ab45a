//! `cargo xtask bench [-- ARGS]`: setup, a release build of the `sipguard` binary (the capacity
//! section runs the real CLI), then the sipguard-bench binary.

use std::{ffi::OsString, process::ExitCode};

use crate::{build, setup, util};

pub fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    setup::run(setup::Scope::Full)?;
    if !util::is_root() {
        eprintln!("warning: not running as root; the benchmark needs root to attach XDP programs");
    }
    // The capacity section runs the real CLI (target/release/sipguard).
    build::build_userspace()?;
    let st = util::status(
        util::cargo()
            .args([
                "run",
                "--release",
                "-p",
                "sipguard-tests",
                "--bin",
                "sipguard-bench",
                "--",
            ])
            .args(args),
    )?;
    Ok(util::exit_code(st))
}
