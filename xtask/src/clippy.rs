//! `cargo xtask clippy`: clippy with warnings as errors on the host crates, then rustfmt --check.

use std::process::ExitCode;

use crate::{setup, util};

pub fn run() -> anyhow::Result<ExitCode> {
    // guard-userspace's build script compiles the eBPF object, which needs the toolchain.
    setup::run(setup::Scope::Toolchain)?;
    let clippy = util::status(util::cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let fmt = util::status(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    if !clippy.success() {
        eprintln!("clippy failed ({clippy})");
    }
    if !fmt.success() {
        eprintln!("rustfmt check failed ({fmt}); run `cargo fmt --all`");
    }
    Ok(if clippy.success() && fmt.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
