//! Builds the XDP program (guard-ebpf) with nightly for bpfel-unknown-none and leaves the object
//! in OUT_DIR, where src/filter.rs embeds it (`OBJECT`). Fails with a pointer to
//! `cargo xtask setup` when the eBPF toolchain is missing, instead of a linker error deep in a
//! nested cargo.
use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    if env::var_os("AYA_BUILD_SKIP").is_none() {
        preflight()?;
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../guard-ebpf");
    let root = root.to_str().context("non-UTF-8 path to guard-ebpf")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "guard-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the XDP program (guard-ebpf) failed; `cargo xtask setup` installs its toolchain",
    )
}

/// Checks for bpf-linker and nightly's rust-src, the two things a fresh machine lacks.
fn preflight() -> anyhow::Result<()> {
    let hint = "run `cargo xtask setup` (installs nightly rust-src, bpf-linker and test packages)";
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(&linker, Ok(o) if o.status.success()) {
        bail!("bpf-linker is not installed or does not run: {hint}");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .with_context(|| format!("cannot run the nightly toolchain: {hint}"))?;
    if !sysroot.status.success() {
        bail!("the nightly toolchain is not installed: {hint}");
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core.is_dir() {
        bail!(
            "nightly has no rust-src component ({} is missing): {hint}",
            core.display()
        );
    }
    Ok(())
}
