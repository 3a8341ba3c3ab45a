//! `sipguard run`: load, attach and pin the filter on each interface, apply the config, and
//! keep it applied: reload on SIGHUP and when the config file changes, and leave the pinned
//! program attached on SIGTERM (`fail_mode = "keep"`) so a restart or an upgrade has no gap.
//!
//! A restarted daemon adopts the pinned state: it loads the new program against the pinned
//! maps (rules and counters kept) and swaps it into the pinned XDP link with
//! `bpf_link_update`, which replaces the program atomically (kernel 5.9+ XDP links).

mod attach;
pub mod events;
mod klog;
pub mod metrics;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    config::{
        self, ConfigLocation, FailMode,
        state::{DaemonInfo, IfaceInfo, StateDir},
    },
    kernel::{
        filter::Filter,
        maps::{Maps, PINNED_MAPS},
        pins::{self, LINK_PIN, PinRoot},
        sys,
    },
    model::rules::Prefix,
    report::DaemonStatus,
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
    rule_ids: Arc<Mutex<BTreeMap<u32, Prefix>>>,
}

fn id_map(maps: &Maps) -> BTreeMap<u32, Prefix> {
    maps.rules()
        .map(|rs| rs.into_iter().map(|(p, v)| (v.id, p)).collect())
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
    if !sys::is_root() {
        bail!(
            "sipguard run must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load, attach and pin the XDP program)"
        );
    }
    if ifaces.is_empty() {
        bail!("no interface given: use --iface IF (repeat it for several interfaces)");
    }
    for iface in ifaces {
        if sys::if_index(iface).is_none() {
            bail!("no such interface: {iface}");
        }
    }
    Ok(())
}

pub async fn run(opts: RunOptions) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "sipguard run must run as root (it needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN to load, attach and pin the XDP program)"
        );
    }
    let source = ConfigLocation::resolve(opts.config.as_deref());
    let cfg = source
        .load()
        .context("the config is invalid; nothing was loaded")?;
    if source == ConfigLocation::Embedded {
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
        for w in cfg.settings.unreachable_rules(&rules) {
            warn!("{w}");
        }
        for iface in &opts.ifaces {
            let had_state = opts.pins.iface_dir(iface).join(PINNED_MAPS[0]).exists();
            let attached = attach::attach_iface(&opts, iface, &cfg, &rules);
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
            ConfigLocation::File(p) => Some(p.clone()),
            ConfigLocation::Embedded => None,
        },
        ifaces: infos,
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })?;
    // Events: one ring-buffer reader per interface, fanned out to the outputs and the socket.
    let hub = events::Hub::new(cfg.events.clone());
    for g in guarded.iter_mut() {
        if let Some(ring) = g.filter.take_events() {
            tokio::spawn(events::read_ring(
                ring,
                g.iface.clone(),
                opts.pins.iface_dir(&g.iface),
                g.rule_ids.clone(),
                hub.clone(),
            ));
        }
    }
    let socket = events::socket_path(&opts.state.dir);
    {
        let (socket, hub) = (socket.clone(), hub.clone());
        tokio::spawn(async move {
            if let Err(e) = events::serve(socket, hub).await {
                error!("events socket: {e:#}");
            }
        });
    }
    let status = Arc::new(Mutex::new(DaemonStatus {
        last_reload: None,
        last_reload_ok: true,
    }));
    if let Some(addr) = cfg.metrics {
        let listener = metrics::bind(addr).await?;
        tokio::spawn(metrics::serve(
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
    let source = ConfigLocation::resolve(opts.config.as_deref());
    let cfg = source.load()?;
    let _lock = opts.state.lock()?;
    let rules = opts.state.overlay()?.apply(&cfg.rules);
    for w in cfg.settings.unreachable_rules(&rules) {
        warn!("{w}");
    }
    for g in guarded.iter_mut() {
        attach::warn_capacity(&g.iface, &g.filter.maps, cfg.settings.max_rules);
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
