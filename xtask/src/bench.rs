//! `cargo xtask bench [-- ARGS]`: setup, a release build of the `sipguard` binary (the capacity
//! section runs the real CLI), then the sipguard-bench binary (BPF_PROG_TEST_RUN, capacity).
//!
//! `cargo xtask bench fleet [N ...]`: the time from `sipguard fleet push` to the last
//! router's applied revision, for fleets of N routers (default 10, 50, 100).
//!
//! `cargo xtask bench veth [ARGS]`: setup, the Debian packages the veth bench needs, a release
//! build of the sipguard binary, then the sipguard-bench-veth binary (a SIP INVITE flood on a
//! veth pair, ns per packet on the receiving CPU for sipguard and the alternatives).

use std::{ffi::OsString, process::ExitCode};

use anyhow::bail;

use crate::{build, setup, util};

/// What the veth bench runs besides sipguard: `clang` (the XDP_DROP floor), `nft`,
/// `iptables-legacy` and `ethtool` (GRO on the receiving veth).
const VETH_PACKAGES: [&str; 4] = ["clang", "nftables", "iptables", "ethtool"];

pub fn run(args: &[OsString]) -> anyhow::Result<ExitCode> {
    setup::run(setup::Scope::Full)?;
    if args.first().is_some_and(|a| a == "veth") {
        return veth(&args[1..]);
    }
    if args.first().is_some_and(|a| a == "fleet") {
        return fleet(&args[1..]);
    }
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

/// `bench fleet [N ...] [--rounds R]`: push-to-applied time for fleets of N routers.
fn fleet(args: &[OsString]) -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("the fleet bench builds namespaces and attaches XDP programs: run it as root");
    }
    build::build_userspace()?;
    run_bin("sipguard-bench-fleet", args)
}

/// `cargo run --release --quiet -p sipguard-tests --bin BIN -- ARGS`.
fn run_bin(bin: &str, args: &[OsString]) -> anyhow::Result<ExitCode> {
    let st = util::status(
        util::cargo()
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "sipguard-tests",
                "--bin",
                bin,
                "--",
            ])
            .args(args),
    )?;
    Ok(util::exit_code(st))
}

fn veth(args: &[OsString]) -> anyhow::Result<ExitCode> {
    if !util::is_root() {
        bail!("the veth bench builds namespaces and attaches XDP programs: run it as root");
    }
    setup::ensure_packages(&VETH_PACKAGES)?;
    // The bench drives the sipguard binary, which `cargo run` of the tests crate does not build.
    build::build_userspace()?;
    run_bin("sipguard-bench-veth", args)
}
