//! The Linux capabilities each kind of work needs, checked up front from the effective set
//! (`caps`), so that a start with too few says which one is missing and why, instead of an
//! `EPERM` from deep inside the loader. The uid does not matter: the daemon runs as root, or as
//! an unprivileged user with these capabilities as ambient capabilities (the systemd unit's
//! way).
//!
//! Measured on kernel 6.18 (tests/tests/privilege.rs): `run` works with exactly
//! [`DAEMON`]; `CAP_SYS_ADMIN` is not needed because bpffs is already mounted (systemd mounts
//! it at boot; `sipguard prepare-pins` mounts it when it is not, and runs as root).

use caps::{CapSet, Capability};

/// One capability and what sipguard needs it for.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub cap: Capability,
    pub why: &'static str,
}

const BPF: Need = Need {
    cap: Capability::CAP_BPF,
    why: "to load the XDP program and to create, open and update its maps",
};
const NET_ADMIN: Need = Need {
    cap: Capability::CAP_NET_ADMIN,
    why: "to attach the XDP program to an interface and to detach it",
};
const PERFMON: Need = Need {
    cap: Capability::CAP_PERFMON,
    why: "for the verifier to accept the program's pointer arithmetic (without it: \"pointer arithmetic with it prohibited for !root\")",
};
const NET_RAW: Need = Need {
    cap: Capability::CAP_NET_RAW,
    why: "to send the SIP responses of reject rules through a packet socket",
};

/// What `sipguard run` needs: the systemd unit's `AmbientCapabilities=` is exactly this list.
pub const DAEMON: &[Need] = &[BPF, NET_ADMIN, PERFMON, NET_RAW];
/// What the verbs that read or edit the pinned maps need.
pub const MAPS: &[Need] = &[BPF];
/// What `detach` needs.
pub const DETACH: &[Need] = &[BPF, NET_ADMIN];

/// The capability's name as systemd and `capabilities(7)` spell it (`CAP_BPF`).
pub fn name(c: Capability) -> String {
    format!("{c}").to_uppercase()
}

/// The needs missing from this process's effective set (all of them if it cannot be read).
pub fn missing(needs: &[Need]) -> Vec<Need> {
    let have = caps::read(None, CapSet::Effective).unwrap_or_default();
    needs
        .iter()
        .filter(|n| !have.contains(&n.cap))
        .copied()
        .collect()
}

/// `Err` naming every missing capability and what it is for, or `Ok` when `what` can run.
pub fn check(what: &str, needs: &[Need]) -> Result<(), String> {
    let gone = missing(needs);
    if gone.is_empty() {
        return Ok(());
    }
    let all: Vec<String> = needs.iter().map(|n| name(n.cap)).collect();
    let lines: Vec<String> = gone
        .iter()
        .map(|n| format!("  {} ({})", name(n.cap), n.why))
        .collect();
    Err(format!(
        "{what} needs the capabilities {}; this process lacks:\n{}\nrun it as root, or give \
         these as ambient capabilities (the systemd unit sipguard.service does)",
        all.join(", "),
        lines.join("\n")
    ))
}
