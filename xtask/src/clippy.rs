//! `cargo xtask clippy`: clippy with warnings as errors on the host crates and on the kernel
//! crate (nightly, for its BPF target), then rustfmt --check.

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
    // The shipped binary alone: the tests crate turns on guard-userspace's `test-util` feature
    // in the workspace run, which would hide code that builds only with it.
    let shipped = util::status(util::cargo().args([
        "clippy",
        "-p",
        "guard-userspace",
        "--bins",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The XDP program: its own target and nightly's build-std, as guard-userspace/build.rs
    // builds it.
    let kernel = util::status(
        util::tool("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("CARGO")
            .env_remove("RUSTC")
            .env_remove("RUSTUP_TOOLCHAIN")
            .current_dir(util::workspace_root().join("guard-ebpf")),
    )?;
    let fmt = util::status(util::cargo().args(["fmt", "--all", "--", "--check"]))?;
    if !clippy.success() {
        eprintln!("clippy failed ({clippy})");
    }
    if !shipped.success() {
        eprintln!("clippy on the shipped guard-userspace (no test-util) failed ({shipped})");
    }
    if !kernel.success() {
        eprintln!("clippy on guard-ebpf failed ({kernel})");
    }
    if !fmt.success() {
        eprintln!("rustfmt check failed ({fmt}); run `cargo fmt --all`");
    }
    Ok(
        if clippy.success() && shipped.success() && kernel.success() && fmt.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
