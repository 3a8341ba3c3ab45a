//! Attaching the filter to one interface: load it against the interface's pins, commit the
//! rules, and attach it, or adopt the pinned XDP link of an earlier run by swapping the new
//! program into it (`bpf_link_update`), so the interface is never without the filter.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use tracing::{info, warn};

use super::{Guarded, IfState, ModeChoice, RunOptions, id_map, klog};
use crate::{
    config::ConfigFile,
    config::state::Effective,
    kernel::{
        filter::Filter,
        maps::{AUX_PINNED, Maps, PINNED_MAPS},
        pins::{self, LINK_PIN, LinkState, PROG_PIN},
        sys,
    },
};

pub(super) fn attach_iface(
    opts: &RunOptions,
    iface: &str,
    cfg: &ConfigFile,
    eff: &Effective,
) -> Result<(Guarded, &'static str)> {
    let rules = &eff.rules;
    let dir = opts.pins.prepare(iface)?;
    let mut filter =
        Filter::load_pinned_sized(&dir, cfg.settings.max_rules, cfg.settings.limit_buckets)?;
    warn_capacity(iface, &filter.maps, cfg.settings.max_rules);
    if cfg.settings.kernel_debug_log {
        match aya_log::EbpfLogger::init_with_logger(filter.ebpf_mut(), klog::KernelLog) {
            Ok(logger) => {
                // Lines are forwarded to `tracing` (through the log bridge) by a reader task.
                tokio::spawn(klog::forward(logger));
            }
            Err(e) => warn!("kernel debug log requested but unavailable: {e}"),
        }
    }
    filter.maps.quarantine = cfg.quarantine.as_ref().map(|q| q.config());
    let report = filter
        .maps
        .commit_all(&cfg.settings, rules, Some(&eff.customers.entries()))?;
    info!(
        iface,
        added = report.added,
        changed = report.changed,
        removed = report.removed,
        total = report.total,
        "rules committed"
    );

    let link_path = dir.join(LINK_PIN);
    let prog_path = dir.join(PROG_PIN);
    let now = sys::if_index(iface);
    match pins::link_state(&link_path) {
        LinkState::Severed => {
            warn!(
                iface,
                "the pinned XDP link of {iface} is severed (the interface was deleted, and maybe created again, since it was attached): unpinning it and attaching afresh"
            );
            let _ = std::fs::remove_file(&link_path);
        }
        LinkState::Attached { ifindex } if now.is_some_and(|n| n != ifindex) => {
            warn!(
                iface,
                link_ifindex = ifindex,
                "the pinned XDP link of {iface} filters another interface (ifindex {ifindex}): unpinning it and attaching afresh"
            );
            let _ = std::fs::remove_file(&link_path);
        }
        _ => {}
    }
    let mode = if link_path.exists() {
        // Adopt: swap the new program into the pinned link; the interface is never without it.
        let pinned = PinnedLink::from_pin(&link_path)
            .with_context(|| format!("opening the pinned link {}", link_path.display()))?;
        let fd: FdLink = pinned.into();
        let link = XdpLink::try_from(fd).context("the pinned link is not an XDP link")?;
        filter
            .program_mut()?
            .attach_to_link(link)
            .context("replacing the program in the pinned XDP link")?;
        let mode = match opts.state.iface_modes().get(iface).map(String::as_str) {
            Some("generic") => "generic",
            _ => "native",
        };
        info!(
            iface,
            "adopted the pinned XDP link (program replaced atomically)"
        );
        mode
    } else {
        let mode = attach_and_pin(&mut filter, iface, opts.xdp_mode, &link_path)?;
        info!(iface, xdp_mode = mode, "attached");
        mode
    };
    if prog_path.exists() {
        std::fs::remove_file(&prog_path)
            .with_context(|| format!("replacing the program pin {}", prog_path.display()))?;
    }
    filter
        .program_mut()?
        .pin(&prog_path)
        .with_context(|| format!("pinning the program at {}", prog_path.display()))?;
    pins::secure(&prog_path)?;
    for name in PINNED_MAPS.iter().chain(&AUX_PINNED) {
        pins::secure(&dir.join(name))?;
    }
    opts.state.set_iface_mode(iface, Some(mode))?;
    let rule_ids = Arc::new(Mutex::new(id_map(&filter.maps)));
    Ok((
        Guarded {
            iface: iface.to_string(),
            filter,
            rule_ids,
            statuses: Default::default(),
            reply_stats: Default::default(),
            mode,
            state: IfState::Attached,
            failed_ifindex: None,
        },
        mode,
    ))
}

/// Attaches the loaded program to `iface` afresh (a new BPF link) and pins the link at
/// `link_path`, replacing what is pinned there only once the new link exists.
fn attach_and_pin(
    filter: &mut Filter,
    iface: &str,
    choice: ModeChoice,
    link_path: &Path,
) -> Result<&'static str> {
    let (id, mode) = attach_fresh(filter, iface, choice)?;
    let prog = filter.program_mut()?;
    let link = prog.take_link(id).context("taking the XDP link")?;
    let fd = FdLink::try_from(link).context(
        "the kernel attached XDP through netlink, not a BPF link; sipguard needs BPF links (kernel 5.9+)",
    )?;
    match std::fs::remove_file(link_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("unpinning {}", link_path.display()));
        }
    }
    fd.pin(link_path)
        .with_context(|| format!("pinning the link at {}", link_path.display()))?;
    pins::secure(link_path)?;
    Ok(mode)
}

/// Attaches a guarded interface again after it came back (deleted and created again): a new
/// link to the new interface, in the mode it had, pinned in place of the severed one (which
/// stays pinned if the attach fails).
pub(super) fn reattach(opts: &RunOptions, g: &mut Guarded) -> Result<()> {
    let link_path = opts.pins.iface_dir(&g.iface).join(LINK_PIN);
    let choice = match g.mode {
        "generic" => ModeChoice::Generic,
        _ => ModeChoice::Native,
    };
    g.mode = attach_and_pin(&mut g.filter, &g.iface, choice, &link_path)?;
    opts.state.set_iface_mode(&g.iface, Some(g.mode))?;
    Ok(())
}

/// Says so when the maps (pinned earlier) are not of the configured size: maps cannot be
/// resized in place, and the daemon never drops pinned rules and counters by itself.
pub(super) fn warn_capacity(iface: &str, maps: &Maps, max_rules: u32) {
    let (have, stats) = (maps.capacity(), maps.stats_capacity());
    if have != max_rules || stats != max_rules {
        warn!(
            iface,
            pinned_max_rules = have,
            config_max_rules = max_rules,
            "the pinned rule maps hold {have} rules but max_rules = {max_rules}; pinned maps keep their size: to resize, run `sipguard detach --iface {iface}` and restart sipguard (the rules come back from the config and runtime.toml; the counters start from zero)"
        );
    }
}

/// Attaches with the requested mode; `auto` tries native first and falls back to generic.
fn attach_fresh(
    filter: &mut Filter,
    iface: &str,
    choice: ModeChoice,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str)> {
    let try_mode = |filter: &mut Filter, mode: XdpMode| -> Result<aya::programs::xdp::XdpLinkId> {
        filter
            .program_mut()?
            .attach(iface, mode)
            .map_err(|e| explain_attach(iface, mode, e))
    };
    match choice {
        ModeChoice::Native => Ok((try_mode(filter, XdpMode::Driver)?, "native")),
        ModeChoice::Generic => Ok((try_mode(filter, XdpMode::Skb)?, "generic")),
        ModeChoice::Auto => match try_mode(filter, XdpMode::Driver) {
            Ok(id) => Ok((id, "native")),
            Err(e) if is_unsupported(&e) => {
                warn!(
                    iface,
                    "native XDP is not supported by this driver; falling back to generic (skb) mode: {e:#}"
                );
                Ok((try_mode(filter, XdpMode::Skb)?, "generic"))
            }
            Err(e) => Err(e),
        },
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct AttachError {
    message: String,
    errno: Option<i32>,
    #[source]
    source: ProgramError,
}

fn is_unsupported(e: &anyhow::Error) -> bool {
    e.downcast_ref::<AttachError>()
        .and_then(|a| a.errno)
        .is_some_and(|n| n == libc::EOPNOTSUPP || n == libc::EINVAL)
}

fn errno_of(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => {
            // Netlink errors carry the errno in their text; look for it through the chain.
            let mut src: Option<&dyn std::error::Error> = Some(e);
            while let Some(s) = src {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    return io.raw_os_error();
                }
                src = s.source();
            }
            None
        }
    }
}

fn explain_attach(iface: &str, mode: XdpMode, e: ProgramError) -> anyhow::Error {
    let errno = errno_of(&e);
    let mode_name = match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        _ => "default",
    };
    let message = match (&e, errno) {
        (ProgramError::UnknownInterface { .. }, _) => format!("no such interface: {iface}"),
        (_, Some(libc::EBUSY) | Some(libc::EEXIST)) => format!(
            "interface {iface} already has a foreign XDP program attached; remove it first (ip link set dev {iface} xdp off) or detach it with its own tool"
        ),
        (_, Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)) => format!(
            "{mode_name} XDP mode is not supported on {iface} (use --xdp-mode generic, or auto to fall back)"
        ),
        (_, Some(libc::EPERM) | Some(libc::EACCES)) => {
            format!("attaching to {iface} was refused: missing CAP_NET_ADMIN / CAP_BPF?")
        }
        _ => format!("attaching to {iface} in {mode_name} mode failed"),
    };
    anyhow::Error::new(AttachError {
        message,
        errno,
        source: e,
    })
}
