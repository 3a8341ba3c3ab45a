//! `cargo xtask setup`: installs only what is missing and prints one line per item.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

use crate::util;

/// Debian packages the tests use: `ip` (iproute2), `sipp` (sip-tester), `tshark`, and
/// `nsenter`/`setpriv` (util-linux, essential on Debian, listed so a slim image gets it),
/// `promtool` (prometheus) for the alerting rules, `man` (man-db) to render the manual pages,
/// `lintian` to check the Debian package, `systemd-analyze` (systemd) to check its unit,
/// `protoc` (protobuf-compiler) to build etcd-client, `etcd` and `etcdctl` (etcd-server,
/// etcd-client) for the fleet tests, `openssl` for their certificates, `curl` for their
/// HTTP queries.
const PACKAGES: [&str; 13] = [
    "iproute2",
    "sip-tester",
    "tshark",
    "util-linux",
    "prometheus",
    "man-db",
    "lintian",
    "systemd",
    "protobuf-compiler",
    "etcd-server",
    "etcd-client",
    "openssl",
    "curl",
];
/// The cargo-deb that `cargo xtask package` runs (3.8 builds with rustc 1.95).
const CARGO_DEB: &str = "3.8.0";
const BPFFS: &str = "/sys/fs/bpf";
/// bpf-linker versions below this are replaced.
const MIN_BPF_LINKER: (u64, u64) = (0, 13);

/// What a verb needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only what building the eBPF object needs (no root required).
    Toolchain,
    /// Everything, including the test packages and the bpffs mount.
    Full,
}

enum Linker {
    Ok(String),
    TooOld(String),
    Missing,
}

pub fn run(scope: Scope) -> anyhow::Result<()> {
    // Look at everything first, so a missing root fails before any slow install starts.
    let sysroot = nightly_sysroot();
    let rust_src_ok = sysroot.as_deref().is_some_and(has_rust_src);
    let linker = bpf_linker();
    let (missing_pkgs, bpffs_ok) = match scope {
        Scope::Full => (missing_packages(&PACKAGES), bpffs_mounted()?),
        Scope::Toolchain => (Vec::new(), true),
    };

    let mut needs_root = Vec::new();
    if !missing_pkgs.is_empty() {
        needs_root.push(format!("apt-get install {}", missing_pkgs.join(" ")));
    }
    if !bpffs_ok {
        needs_root.push(format!("mounting bpffs at {BPFFS}"));
    }
    if !needs_root.is_empty() && !util::is_root() {
        bail!(
            "setup must run as root for: {}; rerun `cargo xtask setup` as root (e.g. with sudo -E)",
            needs_root.join(", ")
        );
    }

    // a. nightly + rust-src
    match (&sysroot, rust_src_ok) {
        (Some(_), true) => println!("ok: nightly rust-src"),
        (Some(_), false) => {
            println!("installing: nightly rust-src");
            util::run(util::tool("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        (None, _) => {
            println!("installing: nightly toolchain with rust-src");
            util::run(util::tool("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }

    // b. bpf-linker
    match linker {
        Linker::Ok(version) => println!("ok: bpf-linker {version}"),
        Linker::TooOld(version) => {
            println!("installing: bpf-linker ^0.13 (found {version})");
            install_bpf_linker()?;
        }
        Linker::Missing => {
            println!("installing: bpf-linker ^0.13");
            install_bpf_linker()?;
        }
    }

    if scope == Scope::Toolchain {
        return Ok(());
    }

    // c. Debian packages
    for pkg in PACKAGES {
        if missing_pkgs.contains(&pkg) {
            println!("installing: {pkg} (apt)");
        } else {
            println!("ok: {pkg} (apt)");
        }
    }
    if !missing_pkgs.is_empty() {
        util::run(util::tool("apt-get").args(["update", "-q"]))?;
        util::run(
            util::tool("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&missing_pkgs),
        )?;
    }

    // d. cargo-deb
    match util::stdout_of(util::tool("cargo-deb").arg("--version")) {
        Some(v) if v.contains(CARGO_DEB) => println!("ok: {v}"),
        _ => {
            println!("installing: cargo-deb {CARGO_DEB}");
            util::run(util::cargo().current_dir(util::home_dir()?).args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB,
            ]))
            .context("installing cargo-deb")?;
        }
    }

    // e. bpffs
    if bpffs_ok {
        println!("ok: bpffs at {BPFFS}");
    } else {
        println!("installing: bpffs mount at {BPFFS}");
        util::run(util::tool("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    }
    Ok(())
}

/// `rustup run nightly rustc --print sysroot`, or `None` without a nightly toolchain.
fn nightly_sysroot() -> Option<PathBuf> {
    util::stdout_of(util::tool("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

fn has_rust_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core").is_dir()
}

/// Runs `bpf-linker --version` (PATH, then the cargo bin dir) and judges the version.
fn bpf_linker() -> Linker {
    let Some(out) = util::stdout_of(util::tool("bpf-linker").arg("--version")) else {
        return Linker::Missing;
    };
    // "bpf-linker 0.13.0"
    let version = out.split_whitespace().last().unwrap_or_default().to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_BPF_LINKER => Linker::Ok(version),
        _ => Linker::TooOld(out),
    }
}

/// Builds bpf-linker against the LLVM 22 shared library shipped with the nightly toolchain.
fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot =
        nightly_sysroot().context("no nightly toolchain (`rustup run nightly` failed)")?;
    let lib_dir = sysroot.join("lib");
    let llvm = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.22.1-rust-"))
        })
        .max()
        .with_context(|| {
            format!(
                "no libLLVM.so.22.1-rust-* in {}; bpf-linker needs the nightly's LLVM 22",
                lib_dir.display()
            )
        })?;
    let soname = llvm.file_name().expect("read_dir entries have names");

    // bpf-linker gets an rpath into this directory, so it must stay.
    let prefix = util::home_dir()?.join(".cache/sipguard-llvm");
    let link_dir = prefix.join("lib");
    fs::create_dir_all(&link_dir).with_context(|| format!("creating {}", link_dir.display()))?;
    for name in [Path::new("libLLVM.so").as_os_str(), soname] {
        let link = link_dir.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        symlink(&llvm, &link)
            .with_context(|| format!("symlinking {} -> {}", link.display(), llvm.display()))?;
    }

    let home = util::home_dir()?;
    util::run(
        util::cargo()
            .current_dir(home)
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--no-default-features",
                "--features",
                "llvm-22",
            ]),
    )
    .context("installing bpf-linker")
}

/// Installs those of `packages` that dpkg does not report as installed, one line per package.
/// `apt-get update` runs only when the install fails without it (stale or missing lists).
pub fn ensure_packages(packages: &[&'static str]) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    for pkg in packages {
        if missing.contains(pkg) {
            println!("installing: {pkg} (apt)");
        } else {
            println!("ok: {pkg} (apt)");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "installing {} needs root (apt-get install)",
            missing.join(" ")
        );
    }
    let install = || {
        util::run(
            util::tool("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&missing),
        )
    };
    if install().is_err() {
        println!("apt-get install failed: updating the package lists, then retrying");
        util::run(util::tool("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

/// Those of `packages` that dpkg does not report as installed.
fn missing_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|pkg| {
            !util::stdout_of(util::tool("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect()
}

/// Whether /proc/mounts has a `bpf` filesystem at /sys/fs/bpf.
fn bpffs_mounted() -> anyhow::Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}
