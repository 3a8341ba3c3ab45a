//! `sipguard run`: load, attach and pin the filter on each interface, apply the config, and
//! keep it applied: reload on SIGHUP and when the config file changes, and leave the pinned
//! program attached on SIGTERM (`fail_mode = "keep"`) so a restart or an upgrade has no gap.
//!
//! A restarted daemon adopts the pinned state: it loads the new program against the pinned
//! maps (rules and counters kept) and swaps it into the pinned XDP link with
//! `bpf_link_update`, which replaces the program atomically (kernel 5.9+ XDP links).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    ProgramError, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::{self, ConfigFile, FailMode},
    filter::Filter,
    pins::{self, LINK_PIN, PROG_PIN, PinRoot},
    rules::RuleSet,
    state::{DaemonInfo, IfaceInfo, StateDir},
};

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeChoice {
    /// Native, falling back to generic (and saying so) when the driver has no XDP support.
    Auto,
    Native,
    Generic,
}

pub struct RunOptions {
    pub ifaces: Vec<String>,
    pub xdp_mode: ModeChoice,
    pub config: Option<PathBuf>,
    pub pins: PinRoot,
    pub state: StateDir,
}

/// One guarded interface.
struct Guarded {
    iface: String,
    filter: Filter,
    /// Rule id -> prefix, for decoding events; refreshed after every commit.
    rule_ids: Arc<Mutex<BTreeMap<u32, crate::rules::Prefix>>>,
}

fn id_map(maps: &crate::maps::Maps) -> BTreeMap<u32, crate::rules::Prefix> {
    maps.rules()
        .map(|rs| rs.into_iter().map(|r| (r.value.id, r.prefix)).collect())
        .unwrap_or_default()
}

/// The config path in use and how to recognise a change of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino: m.ino(),
    })
}

/// Checks the things a user gets wrong first, with messages that say what to do.
pub fn preflight(ifaces: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "sipguard run must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load, attach and pin the XDP program)"
        );
    }
    if ifaces.is_empty() {
        bail!("no interface given: use --iface IF (repeat it for several interfaces)");
    }
    for iface in ifaces {
        if crate::if_index(iface).is_none() {
            bail!("no such interface: {iface}");
        }
    }
    Ok(())
}

pub async fn run(opts: RunOptions) -> Result<()> {
    if !crate::is_root() {
        bail!(
            "sipguard run must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load, attach and pin the XDP program)"
        );
    }
    let source = config::ConfigSource::resolve(opts.config.as_deref());
    let cfg = source
        .load()
        .context("the config is invalid; nothing was loaded")?;
    if source == config::ConfigSource::Embedded {
        info!(
            "no --config and no {}: using the built-in default rules (sipguard default-config prints them)",
            config::DEFAULT_PATH
        );
    }
    preflight(&opts.ifaces)?;
    info!(config = %source, rules = cfg.rules.len(), "config loaded");
    opts.state.create()?;
    let mut guarded = Vec::new();
    let mut infos = Vec::new();
    // Interfaces this start attached from nothing: undone if a later one fails.
    let mut fresh: Vec<String> = Vec::new();
    {
        let _lock = opts.state.lock()?;
        let overlay = opts.state.overlay()?;
        let rules = overlay.apply(&cfg.rules);
        for iface in &opts.ifaces {
            let had_state = opts
                .pins
                .iface_dir(iface)
                .join(crate::maps::PINNED_MAPS[0])
                .exists();
            let attached = attach_iface(&opts, iface, &cfg, &rules);
            let (g, mode) = match attached {
                Ok(x) => x,
                Err(e) => {
                    // Leave nothing behind that this failed start created.
                    if !had_state {
                        let _ = opts.pins.remove(iface, false);
                    }
                    for done in &fresh {
                        let dir = opts.pins.iface_dir(done);
                        let _ = pins::detach_link(&dir.join(LINK_PIN));
                        let _ = opts.pins.remove(done, false);
                        let _ = opts.state.set_iface_mode(done, None);
                        warn!(iface = %done, "detached again: the start failed on {iface}");
                    }
                    return Err(e.context(format!("interface {iface}")));
                }
            };
            if !had_state {
                fresh.push(iface.clone());
            }
            infos.push(IfaceInfo {
                name: iface.clone(),
                xdp_mode: mode.into(),
            });
            guarded.push(g);
        }
        opts.state.save_committed(&rules)?;
    }
    let me = std::process::id();
    opts.state.save_daemon(&DaemonInfo {
        pid: me,
        config: match &source {
            config::ConfigSource::File(p) => Some(p.clone()),
            config::ConfigSource::Embedded => None,
        },
        ifaces: infos,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })?;
    // Events: one ring-buffer reader per interface, fanned out to the outputs and the socket.
    let hub = crate::events::Hub::new(cfg.events.clone());
    for g in guarded.iter_mut() {
        if let Some(ring) = g.filter.take_events() {
            tokio::spawn(crate::events::read_ring(
                ring,
                g.iface.clone(),
                opts.pins.iface_dir(&g.iface),
                g.rule_ids.clone(),
                hub.clone(),
            ));
        }
    }
    let socket = crate::events::socket_path(&opts.state.dir);
    {
        let (socket, hub) = (socket.clone(), hub.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::events::serve(socket, hub).await {
                error!("events socket: {e:#}");
            }
        });
    }
    let status = Arc::new(Mutex::new(crate::metrics::DaemonStatus {
        last_reload: None,
        last_reload_ok: true,
    }));
    if let Some(addr) = cfg.metrics {
        let listener = crate::metrics::bind(addr).await?;
        tokio::spawn(crate::metrics::serve(
            listener,
            opts.pins.clone(),
            opts.state.clone(),
            status.clone(),
        ));
    }
    info!(
        pid = me,
        "sipguard running; SIGHUP or a change of the config file reloads it"
    );

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut seen = stamp(source.watched());
    let mut fail_mode = cfg.fail_mode;
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let now = stamp(source.watched());
                if now == seen { continue; }
                seen = now;
                "config file changed"
            }
        };
        let result = reload(&opts, &mut guarded);
        if let Ok(mut st) = status.lock() {
            st.last_reload = Some(SystemTime::now());
            st.last_reload_ok = result.is_ok();
        }
        match result {
            Ok((n, fm)) => {
                fail_mode = fm;
                info!(reason = why, rules = n, "reloaded");
            }
            Err(e) => error!(
                reason = why,
                "reload failed, the previous rules stay in force: {e:#}"
            ),
        }
    }

    match fail_mode {
        FailMode::Keep => {
            info!("stopping; the filter stays attached (fail_mode = keep)");
        }
        FailMode::Detach => {
            for g in &guarded {
                let dir = opts.pins.iface_dir(&g.iface);
                if let Err(e) = pins::detach_link(&dir.join(LINK_PIN)) {
                    warn!(iface = %g.iface, "detach: {e:#}");
                }
                if let Err(e) = opts.pins.remove(&g.iface, false) {
                    warn!(iface = %g.iface, "removing pins: {e:#}");
                }
                let _ = opts.state.set_iface_mode(&g.iface, None);
            }
            info!("stopped and detached (fail_mode = detach)");
        }
    }
    opts.state.clear_daemon(me);
    let _ = std::fs::remove_file(&socket);
    drop(guarded);
    Ok(())
}

/// Re-reads the config and commits config ⊕ runtime edits to every interface. Nothing changes
/// when the file is invalid.
fn reload(opts: &RunOptions, guarded: &mut [Guarded]) -> Result<(usize, FailMode)> {
    // Resolved again: an /etc file that appeared (or went) since the start is picked up.
    let source = config::ConfigSource::resolve(opts.config.as_deref());
    let cfg = source.load()?;
    let _lock = opts.state.lock()?;
    let rules = opts.state.overlay()?.apply(&cfg.rules);
    for g in guarded.iter_mut() {
        warn_capacity(&g.iface, &g.filter.maps, cfg.settings.max_rules);
        let r = g
            .filter
            .maps
            .commit(&cfg.settings, &rules)
            .with_context(|| format!("interface {}", g.iface))?;
        info!(iface = %g.iface, added = r.added, changed = r.changed, removed = r.removed, total = r.total, "rules committed");
        if let Ok(mut ids) = g.rule_ids.lock() {
            *ids = id_map(&g.filter.maps);
        }
    }
    opts.state.save_committed(&rules)?;
    info!(config = %source, "config applied");
    Ok((rules.len(), cfg.fail_mode))
}

fn attach_iface(
    opts: &RunOptions,
    iface: &str,
    cfg: &ConfigFile,
    rules: &RuleSet,
) -> Result<(Guarded, &'static str)> {
    let dir = opts.pins.prepare(iface)?;
    let mut filter = Filter::load_pinned(&dir, cfg.settings.max_rules)?;
    warn_capacity(iface, &filter.maps, cfg.settings.max_rules);
    if cfg.settings.kernel_debug_log {
        match aya_log::EbpfLogger::init_with_logger(filter.ebpf_mut(), KernelLog) {
            Ok(logger) => {
                // Lines are forwarded to `tracing` (through the log bridge) by a reader task.
                tokio::spawn(forward_kernel_logs(logger));
            }
            Err(e) => warn!("kernel debug log requested but unavailable: {e}"),
        }
    }
    let report = filter.maps.commit(&cfg.settings, rules)?;
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
        let (id, mode) = attach_fresh(&mut filter, iface, opts.xdp_mode)?;
        let prog = filter.program_mut()?;
        let link = prog.take_link(id).context("taking the XDP link")?;
        let fd = FdLink::try_from(link).context(
            "the kernel attached XDP through netlink, not a BPF link; sipguard needs BPF links (kernel 5.9+)",
        )?;
        fd.pin(&link_path)
            .with_context(|| format!("pinning the link at {}", link_path.display()))?;
        pins::secure(&link_path)?;
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
    for name in crate::maps::PINNED_MAPS
        .iter()
        .chain(&crate::maps::AUX_PINNED)
    {
        pins::secure(&dir.join(name))?;
    }
    opts.state.set_iface_mode(iface, Some(mode))?;
    let rule_ids = Arc::new(Mutex::new(id_map(&filter.maps)));
    Ok((
        Guarded {
            iface: iface.to_string(),
            filter,
            rule_ids,
        },
        mode,
    ))
}

/// Says so when the maps (pinned earlier) are not of the configured size: maps cannot be
/// resized in place, and the daemon never drops pinned rules and counters by itself.
fn warn_capacity(iface: &str, maps: &crate::maps::Maps, max_rules: u32) {
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

/// Forwards the program's aya-log records to `tracing`, at info level: they are only produced
/// when the operator turned `kernel_debug_log` on, so they should show at the default level.
struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        info!(target: "sipguard::kernel", "{}", record.args());
    }

    fn flush(&self) {}
}

async fn forward_kernel_logs(logger: aya_log::EbpfLogger<KernelLog>) {
    // SAFETY: the logger owns its ring-buffer fd and is moved into the AsyncFd, so the fd stays
    // open and is not used elsewhere while it is registered.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
