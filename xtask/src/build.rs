//! `cargo xtask build`: setup, then a release build of guard-userspace, whose build script
//! compiles the XDP program (guard-ebpf) with aya-build.

use crate::{setup, util};

pub fn run() -> anyhow::Result<()> {
    setup::run(setup::Scope::Full)?;
    build_userspace()
}

pub fn build_userspace() -> anyhow::Result<()> {
    util::run(util::cargo().args(["build", "--release", "-p", "guard-userspace"]))
}
