//! `sipguard prepare --user USER`: root's step before a daemon that runs as its own user
//! starts (the systemd unit's `ExecStartPre=+`). It mounts bpffs when nothing is mounted at
//! /sys/fs/bpf, creates the pin root and the state directory and gives both to USER, with
//! whatever a root-run daemon left in them, and lets USER pass through the bpffs directories
//! above the pin root. Everything else the daemon does, it does with its own capabilities
//! (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_PERFMON`, `CAP_NET_RAW`): only this step needs root.

use std::ffi::CString;

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use crate::kernel::{pins, sys};

/// The uid and gid of `user` (a name or a number).
pub fn lookup(user: &str) -> Result<(u32, u32)> {
    let c = CString::new(user).context("a user name cannot hold a NUL byte")?;
    // SAFETY: getpwnam reads the NUL-terminated name; the record it returns is read at once,
    // before any other call could overwrite it (the CLI is single-threaded here).
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if !pw.is_null() {
        // SAFETY: non-null: a valid passwd record.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        return Ok((uid, gid));
    }
    match user.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => bail!("no such user: {user} (create it first, e.g. with systemd-sysusers)"),
    }
}

pub fn run(ctx: &Ctx, user: &str) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "sipguard prepare must run as root: it mounts bpffs and hands the pin root and the state directory to {user}"
        );
    }
    let (uid, gid) = lookup(user)?;
    let mut changed = ctx.pins.hand_over(uid, gid)?;
    ctx.state.create()?;
    let mut n = 0;
    pins::chown_tree(&ctx.state.dir, uid, gid, &mut n)?;
    changed.push(format!(
        "{}: owned by {uid}:{gid} ({n} entries)",
        ctx.state.dir.display()
    ));
    for c in changed {
        println!("{c}");
    }
    Ok(())
}
