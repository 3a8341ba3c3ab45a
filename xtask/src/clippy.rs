//! `cargo xtask clippy`: clippy with warnings as errors on the host crates and on the kernel
//! crate (nightly, for its BPF target), then rustfmt --check (the workspace and the fuzz crate).

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
    // The fuzz crate is its own workspace (see fuzz/Cargo.toml), so `--all` does not reach it.
    let fuzz_fmt = util::status(util::cargo().args([
        "fmt",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--",
        "--check",
    ]))?;
    let fmt_ok = fmt.success() && fuzz_fmt.success();
    if !clippy.success() {
        eprintln!("clippy failed ({clippy})");
    }
    if !shipped.success() {
        eprintln!("clippy on the shipped guard-userspace (no test-util) failed ({shipped})");
    }
    if !kernel.success() {
        eprintln!("clippy on guard-ebpf failed ({kernel})");
    }
    if !fmt_ok {
        eprintln!(
            "rustfmt check failed; run `cargo fmt --all && cargo fmt --manifest-path fuzz/Cargo.toml`"
        );
    }
    Ok(
        if clippy.success() && shipped.success() && kernel.success() && fmt_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
