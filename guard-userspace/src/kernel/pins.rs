//! The pinned state under bpffs: one directory per interface holding the program, its XDP link
//! and its maps, so the filter and its counters outlive the daemon (xdp-tools style).
//!
//! ```text
//! /sys/fs/bpf/sipguard/          0700
//!   eth1/                        0700
//!     prog  link                 0600
//!     SG_RULES_A SG_RULES_B SG_RULE_STATS SG_COUNTERS SG_CONFIG SG_SIP_PORTS   0600
//!     SG_CALLS SG_SOURCES SG_EVENTS                                            0600
//! ```

use std::{
    ffi::CString,
    fs, io,
    os::{fd::AsFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

use super::{maps::PINNED_MAPS, sys};

/// Default pin root.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/sipguard";
/// Where bpffs is mounted when it is not.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Pin names of the program and link inside an interface directory.
pub const PROG_PIN: &str = "prog";
pub const LINK_PIN: &str = "link";

#[derive(Debug, Error)]
pub enum PinsError {
    #[error(
        "bpffs cannot be mounted at {path}: {source} (mount it with `mount -t bpf bpf {path}`)"
    )]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot create {path}: permission denied; a daemon that does not run as root needs the pin root made for it: as root, run `sipguard prepare --user USER` (the systemd unit does, before every start)"
    )]
    NotOurs { path: String },
    #[error("{path} is not on a bpf filesystem; the pin root must be below a bpffs mount")]
    NotBpffs { path: String },
    #[error("{path}: {action} failed")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "no pinned sipguard state under {root}: the filter is not attached (start it with `sipguard run --iface IF`)"
    )]
    NoState { root: String },
    #[error("interface {iface} has no pinned sipguard state under {root} (attached: {attached})")]
    NoIface {
        iface: String,
        root: String,
        attached: String,
    },
    #[error("detaching the XDP link pinned at {path} failed")]
    Detach {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> PinsError {
    let path = path.display().to_string();
    move |source| PinsError::Io {
        path,
        action,
        source,
    }
}

/// The pin root and its per-interface directories.
#[derive(Clone, Debug)]
pub struct PinRoot {
    pub root: PathBuf,
}

impl PinRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn iface_dir(&self, iface: &str) -> PathBuf {
        self.root.join(iface)
    }

    /// Whether `iface`'s XDP link is pinned and still filters an interface (the kernel severs
    /// the link when the interface is deleted; the pin stays).
    pub fn is_attached(&self, iface: &str) -> bool {
        matches!(
            self.link_state(iface),
            LinkState::Attached { .. } | LinkState::Unknown
        )
    }

    /// The truth about `iface`'s pinned XDP link.
    pub fn link_state(&self, iface: &str) -> LinkState {
        link_state(&self.iface_dir(iface).join(LINK_PIN))
    }

    /// The kernel's id of `iface`'s pinned program, if it is pinned.
    pub fn program_id(&self, iface: &str) -> Option<u32> {
        aya::programs::ProgramInfo::from_pin(self.iface_dir(iface).join(PROG_PIN))
            .ok()
            .map(|i| i.id())
    }

    /// Interfaces with pinned state (directories that hold a link or maps), sorted.
    pub fn ifaces(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(PINNED_MAPS[0]).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        out.sort();
        out
    }

    /// Interfaces with pinned state, or the error a CLI verb should print.
    pub fn require_ifaces(&self) -> Result<Vec<String>, PinsError> {
        let ifaces = self.ifaces();
        if ifaces.is_empty() {
            return Err(PinsError::NoState {
                root: self.root.display().to_string(),
            });
        }
        Ok(ifaces)
    }

    /// The directory of `iface`, which must have pinned state.
    pub fn require_iface(&self, iface: &str) -> Result<PathBuf, PinsError> {
        let all = self.ifaces();
        if !all.iter().any(|i| i == iface) {
            return Err(PinsError::NoIface {
                iface: iface.to_string(),
                root: self.root.display().to_string(),
                attached: if all.is_empty() {
                    "none".into()
                } else {
                    all.join(", ")
                },
            });
        }
        Ok(self.iface_dir(iface))
    }

    /// Makes sure the root is on bpffs (mounting bpffs at /sys/fs/bpf if the root is below it
    /// and nothing is mounted there), then creates the root and `iface`'s directory, 0700.
    pub fn prepare(&self, iface: &str) -> Result<PathBuf, PinsError> {
        ensure_bpffs(&self.root)?;
        let dir = self.iface_dir(iface);
        for d in [&self.root, &dir] {
            if let Err(e) = fs::create_dir_all(d) {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    return Err(PinsError::NotOurs {
                        path: d.display().to_string(),
                    });
                }
                return Err(io_err(d, "create directory")(e));
            }
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(io_err(d, "chmod 0700"))?;
        }
        Ok(dir)
    }

    /// Gives the pin root to `uid`:`gid` for a daemon that runs as that user (root's step
    /// before it starts): mounts bpffs if needed, creates the root (0700), hands it and every
    /// pin below it over, and lets the user pass through the directories above it (search
    /// only: `o+x`, which lists nothing; every pin stays 0600). Returns what it changed.
    pub fn hand_over(&self, uid: u32, gid: u32) -> Result<Vec<String>, PinsError> {
        use std::os::unix::fs::MetadataExt as _;
        ensure_bpffs(&self.root)?;
        let mut changed = Vec::new();
        for a in self.root.ancestors().skip(1) {
            if !sys::is_bpffs(a) {
                break;
            }
            let m = fs::metadata(a).map_err(io_err(a, "stat"))?;
            if m.mode() & 0o001 == 0 {
                fs::set_permissions(a, fs::Permissions::from_mode((m.mode() & 0o7777) | 0o001))
                    .map_err(io_err(a, "chmod o+x"))?;
                changed.push(format!(
                    "{}: search permission for others (o+x)",
                    a.display()
                ));
            }
        }
        fs::create_dir_all(&self.root).map_err(io_err(&self.root, "create directory"))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.root, "chmod 0700"))?;
        let mut n = 0;
        chown_tree(&self.root, uid, gid, &mut n)?;
        changed.push(format!(
            "{}: owned by {uid}:{gid} ({n} entries)",
            self.root.display()
        ));
        Ok(changed)
    }

    /// Removes `iface`'s program and link pins, and its map pins unless `keep_maps`; the
    /// directory goes too when it is empty.
    pub fn remove(&self, iface: &str, keep_maps: bool) -> Result<(), PinsError> {
        let dir = self.iface_dir(iface);
        let mut names = vec![PROG_PIN, LINK_PIN];
        if !keep_maps {
            names.extend(PINNED_MAPS);
            names.extend(super::maps::AUX_PINNED);
        }
        for name in names {
            let p = dir.join(name);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "unpin")(e)),
            }
        }
        if !keep_maps {
            let _ = fs::remove_dir(&dir);
            // The root goes when the last interface does (it is ours).
            let _ = fs::remove_dir(&self.root);
        }
        Ok(())
    }
}

/// What a pinned XDP link is, as the kernel sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// No pin (never attached, or detached by `sipguard detach`).
    Missing,
    /// Pinned, but attached to no interface: the interface was deleted (and maybe created
    /// again, with a new ifindex), so nothing is filtered. `bpf_link_update` on it fails with
    /// ENOLINK ("Link has been severed").
    Severed,
    /// Pinned and filtering the interface with this ifindex.
    Attached { ifindex: u32 },
    /// Pinned, but the kernel's link info could not be read.
    Unknown,
}

/// The state of the XDP link pinned at `path`.
pub fn link_state(path: &Path) -> LinkState {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return LinkState::Unknown;
    };
    let fd = match sys::obj_get(&c) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return LinkState::Missing,
        Err(_) if !path.exists() => return LinkState::Missing,
        Err(_) => return LinkState::Unknown,
    };
    match sys::link_info(fd.as_fd()) {
        Ok(i) if i.ifindex == 0 => LinkState::Severed,
        Ok(i) => LinkState::Attached { ifindex: i.ifindex },
        Err(_) => LinkState::Unknown,
    }
}

/// chmod 0600 on a pin.
pub fn secure(path: &Path) -> Result<(), PinsError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path, "chmod 0600"))
}

/// chown -R, counting the entries it changed; symbolic links are not followed.
pub fn chown_tree(path: &Path, uid: u32, gid: u32, n: &mut usize) -> Result<(), PinsError> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::symlink_metadata(path).map_err(io_err(path, "stat"))?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(path, "chown"))?;
        *n += 1;
    }
    if m.is_dir() {
        for e in fs::read_dir(path).map_err(io_err(path, "list"))? {
            let e = e.map_err(io_err(path, "list"))?;
            chown_tree(&e.path(), uid, gid, n)?;
        }
    }
    Ok(())
}

/// The deepest existing ancestor of `path` (itself included).
fn existing_ancestor(path: &Path) -> Option<&Path> {
    path.ancestors().find(|p| p.exists())
}

/// Mounts bpffs at /sys/fs/bpf when `root` lies below it and it is not mounted.
pub fn ensure_bpffs(root: &Path) -> Result<(), PinsError> {
    let probe = existing_ancestor(root).unwrap_or(Path::new("/"));
    if sys::is_bpffs(probe) {
        return Ok(());
    }
    if root.starts_with(BPFFS) && !sys::is_bpffs(Path::new(BPFFS)) {
        sys::mount_bpffs().map_err(|source| PinsError::Mount {
            path: BPFFS.into(),
            source,
        })?;
        tracing::info!("mounted bpffs at {BPFFS}");
        return Ok(());
    }
    Err(PinsError::NotBpffs {
        path: root.display().to_string(),
    })
}

/// Detaches the XDP link pinned at `path` with BPF_LINK_DETACH (kernel 5.9+), which works even
/// while another process (a running daemon) holds the link open, then removes the pin.
pub fn detach_link(path: &Path) -> Result<(), PinsError> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| PinsError::Detach {
        path: path.display().to_string(),
        source: io::Error::other(e),
    })?;
    let fd = sys::obj_get(&c).map_err(|source| PinsError::Detach {
        path: path.display().to_string(),
        source,
    })?;
    sys::link_detach(fd.as_fd()).map_err(|source| PinsError::Detach {
        path: path.display().to_string(),
        source,
    })?;
    fs::remove_file(path).map_err(io_err(path, "unpin"))
}
