//! `cargo xtask demo`: setup, build, then the sipguard-demo binary (PBX / router / carrier in
//! network namespaces, real SIP calls through sipguard, a report, and a full teardown).

use std::process::ExitCode;

use crate::{build, setup, util};

pub fn run() -> anyhow::Result<ExitCode> {
    setup::run(setup::Scope::Full)?;
    if !util::is_root() {
        anyhow::bail!("the demo builds network namespaces and attaches XDP: run it as root");
    }
    build::build_userspace()?;
    let st = util::status(util::cargo().args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "sipguard-tests",
        "--bin",
        "sipguard-demo",
    ]))?;
    Ok(util::exit_code(st))
}
