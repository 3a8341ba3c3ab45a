//! `sipguard run`: load, attach and pin the filter on each interface, apply the config, and
//! keep it applied: reload on SIGHUP and when the config file changes, and leave the pinned
//! program attached on SIGTERM (`fail_mode = "keep"`) so a restart or an upgrade has no gap.
//!
//! A restarted daemon adopts the pinned state: it loads the new program against the pinned
//! maps (rules and counters kept) and swaps it into the pinned XDP link with
//! `bpf_link_update`, which replaces the program atomically (kernel 5.9+ XDP links). A pinned
//! link that the kernel severed (its interface was deleted) is unpinned and replaced by a new
//! one.
//!
//! While it runs, the daemon keeps what it says true ([`Daemon::check_ifaces`],
//! [`Daemon::check_state`]), on every tick and on every netlink link notification:
//! - an interface that is deleted is reported gone (status, metrics, log) and re-attached when
//!   it comes back (a new link, pinned);
//! - an interface detached by `sipguard detach` is reported detached and left alone: a
//!   deliberate detach is not undone;
//! - a state directory removed under it is re-created (daemon.json, reload.json, the events
//!   socket, runtime.toml from the runtime edits it holds), so no runtime rule is dropped;
//! - one daemon per interface: `run.IFACE.lock` in the state directory is held for its life.
//!
//! A changed config file is applied once it has been stable over two polls (500 ms apart), so
//! an editor that truncates and rewrites in place is never read half-written.

mod attach;
pub mod events;
mod fleet;
mod klog;
pub mod metrics;
mod notify;
mod replies;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
    task::JoinHandle,
};
use tracing::{error, info, warn};

use crate::{
    config::fleet::{FleetConfig, FleetRecord, NodeError, NodeStatus},
    config::{
        self, ConfigFile, ConfigLocation, EventOutputs, FailMode,
        state::{DaemonInfo, Effective, IfaceInfo, IfaceLock, Overlay, ReloadRecord, StateDir},
    },
    kernel::{
        filter::Filter,
        maps::{Maps, PINNED_MAPS},
        pins::{self, LINK_PIN, LinkState, PinRoot},
        privilege, sys,
    },
    model::{
        customers::Customers,
        reply::Status,
        rules::{Prefix, RuleSet},
        time,
    },
    report::metrics::Tops,
    report::{DaemonStatus, FleetMetrics},
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
    /// `--fleet`: the rules come from etcd.
    pub fleet: Option<FleetConfig>,
    pub pins: PinRoot,
    pub state: StateDir,
}

/// What the daemon knows of a guarded interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IfState {
    /// The pinned link filters the interface.
    Attached,
    /// The interface was deleted (the link is severed): re-attached when it comes back.
    Gone,
    /// `sipguard detach` removed the link: not guarded until the daemon is restarted.
    Detached,
}

impl IfState {
    /// The `state` recorded in daemon.json (what `status` shows).
    fn note(self) -> &'static str {
        match self {
            IfState::Attached => "",
            IfState::Gone => "interface gone",
            IfState::Detached => "detached by `sipguard detach`",
        }
    }
}

/// One guarded interface.
struct Guarded {
    iface: String,
    filter: Filter,
    /// Rule id -> prefix, for decoding events; refreshed after every commit.
    rule_ids: Arc<Mutex<BTreeMap<u32, Prefix>>>,
    /// Rule id -> response of `reject` rules, for the reply sender; refreshed after every
    /// commit.
    statuses: replies::Statuses,
    reply_stats: Arc<replies::ReplyStats>,
    /// `native` or `generic`.
    mode: &'static str,
    state: IfState,
    /// The ifindex a re-attach failed on (not retried until the interface changes again).
    failed_ifindex: Option<u32>,
}

/// The config's rules and customers with the runtime edits over them (ids kept from
/// `previous`, the last commit). A runtime customer the config no longer admits is an error
/// that says how to resolve it.
fn effective(overlay: &Overlay, cfg: &ConfigFile, previous: &Customers) -> Result<Effective> {
    overlay
        .effective(&cfg.rules, &cfg.customers, previous)
        .map_err(|e| {
            anyhow::anyhow!(
                "the runtime customer edits (runtime.toml) do not fit the config: {e}; change the config, or the edit (`sipguard customers add --replace` / `customers del`)"
            )
        })
}

/// Records the responses of the live rule set's `reject` rules (and the default for the
/// others) under its generation.
fn refresh_statuses(g: &Guarded, rules: &RuleSet, cfg: &ConfigFile) {
    let default = &cfg.reject;
    let ids = g.rule_ids.lock().map(|i| i.clone()).unwrap_or_default();
    let mut map: BTreeMap<u32, Status> = ids
        .into_iter()
        .filter_map(|(id, p)| {
            let r = rules.get(&p)?;
            (r.action == guard_common::Action::Reject)
                .then(|| (id, r.status.clone().unwrap_or_else(|| default.clone())))
        })
        .collect();
    // Over-limit rejects of a rule that is not itself `reject` get the default; the
    // quarantine answers with its own.
    if let Some(q) = &cfg.quarantine {
        map.insert(guard_common::QUARANTINE_RULE_ID, q.status.clone());
    }
    let generation = g.filter.maps.config().map_or(0, |c| c.generation);
    if let Ok(mut s) = g.statuses.lock() {
        s.record(generation, map, default.clone());
    }
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
    privilege::check("sipguard run", privilege::DAEMON).map_err(anyhow::Error::msg)?;
    if ifaces.is_empty() {
        // Under systemd (INVOCATION_ID is set for every unit), the interfaces come from the
        // unit's environment file.
        let hint = if std::env::var_os("INVOCATION_ID").is_some() {
            " (sipguard.service: set SIPGUARD_OPTS=\"--iface eth1\" in /etc/default/sipguard)"
        } else {
            ""
        };
        bail!("no interface given: use --iface IF (repeat it for several interfaces){hint}");
    }
    for iface in ifaces {
        if sys::if_index(iface).is_none() {
            bail!("no such interface: {iface}");
        }
    }
    Ok(())
}

pub async fn run(mut opts: RunOptions) -> Result<()> {
    privilege::check("sipguard run", privilege::DAEMON).map_err(anyhow::Error::msg)?;
    // A fleet router enforces the last document it applied until etcd answers; a new one
    // enforces its local config (or the built-in default) until the first document arrives.
    let fleet_record = match &opts.fleet {
        Some(f) => {
            let rec = opts.state.fleet_record().filter(|r| r.prefix == f.prefix);
            match &rec {
                Some(r) if opts.state.fleet_doc().exists() => {
                    opts.config = Some(opts.state.fleet_doc());
                    info!(
                        revision = r.revision,
                        "fleet mode ({}): enforcing the last applied revision until etcd answers",
                        f.describe()
                    );
                }
                _ => warn!(
                    "fleet mode ({}): no fleet document applied yet; enforcing the local config until etcd delivers one",
                    f.describe()
                ),
            }
            Some(rec.unwrap_or_else(|| FleetRecord {
                endpoints: f.endpoints.clone(),
                prefix: f.prefix.clone(),
                node: f.node.clone(),
                revision: 0,
                applied_unix: 0,
            }))
        }
        None => {
            opts.state.clear_fleet();
            None
        }
    };
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
    // One daemon per interface: held until we exit.
    let mut locks = Vec::new();
    for iface in &opts.ifaces {
        locks.push(opts.state.lock_iface(iface)?);
    }
    let mut guarded = Vec::new();
    // Interfaces this start attached from nothing: undone if a later one fails.
    let mut fresh: Vec<String> = Vec::new();
    let (overlay, committed) = {
        let _lock = opts.state.lock()?;
        let overlay = opts.state.overlay()?;
        let eff = effective(&overlay, &cfg, &opts.state.customers())?;
        let rules = &eff.rules;
        for w in cfg.settings.unreachable_rules(rules) {
            warn!("{w}");
        }
        for w in &cfg.warnings {
            warn!("{w}");
        }
        for iface in &opts.ifaces {
            let had_state = opts.pins.iface_dir(iface).join(PINNED_MAPS[0]).exists();
            let attached = attach::attach_iface(&opts, iface, &cfg, &eff);
            let (g, _mode) = match attached {
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
            guarded.push(g);
        }
        opts.state.save_committed(rules)?;
        opts.state.save_customers(&eff.customers)?;
        (overlay, eff)
    };
    let (committed, customers) = (committed.rules, committed.customers);
    let me = std::process::id();
    let started_unix = unix_now();
    opts.state.clear_reload();
    // Events: one ring-buffer reader per interface, fanned out to the outputs and the socket.
    let hub = events::Hub::new(cfg.events.clone());
    let customer_names = Arc::new(Mutex::new(customers));
    for g in guarded.iter_mut() {
        if let Some(ring) = g.filter.take_events() {
            tokio::spawn(events::read_ring(
                ring,
                g.iface.clone(),
                opts.pins.iface_dir(&g.iface),
                g.rule_ids.clone(),
                customer_names.clone(),
                hub.clone(),
            ));
        }
    }
    for g in guarded.iter_mut() {
        refresh_statuses(g, &committed, &cfg);
        match (g.filter.take_replies(), sys::if_index(&g.iface)) {
            (Some(ring), Some(ifindex)) => {
                tokio::spawn(replies::serve(
                    ring,
                    g.iface.clone(),
                    ifindex,
                    g.statuses.clone(),
                    g.reply_stats.clone(),
                ));
            }
            _ => warn!(iface = %g.iface, "no reply ring: reject rules drop without a response"),
        }
    }
    let socket = events::socket_path(&opts.state.dir);
    let events_task = spawn_events(socket.clone(), hub.clone());
    let status = Arc::new(Mutex::new(DaemonStatus {
        last_reload: None,
        last_reload_ok: true,
        quarantine_releases: 0,
        fleet: None,
    }));
    let tops = Arc::new(metrics::SharedTops::new(Tops {
        rules: cfg.top_rules as usize,
        customers: cfg.top_customers as usize,
    }));
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            Some((addr, spawn_metrics(listener, &opts, &status, &tops)))
        }
        None => None,
    };
    // Link notifications wake the interface check at once (the tick checks too).
    let links = Arc::new(Notify::new());
    let link_watch = match watch_links(links.clone()) {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(
                "no netlink link notifications ({e:#}): interfaces are checked every 500 ms instead"
            );
            None
        }
    };
    let source_path = source.watched().to_path_buf();
    let mut d = Daemon {
        overlay_stamp: opts.state.overlay_stamp(),
        opts,
        config: match &source {
            ConfigLocation::File(p) => Some(p.clone()),
            ConfigLocation::Embedded => None,
        },
        started_unix,
        guarded,
        _locks: locks,
        overlay,
        overlay_missing: 0,
        committed,
        hub,
        socket,
        events_task,
        metrics: metrics_task,
        customer_names,
        quarantines_seen: HashMap::new(),
        tops,
        status,
        applied_events: cfg.events.clone(),
        applied_debug_log: cfg.settings.kernel_debug_log,
        fail_mode: cfg.fail_mode,
        last_reload: None,
        fleet: None,
    };
    d.opts.state.save_daemon(&d.info())?;
    info!(
        pid = me,
        "sipguard running; SIGHUP or a change of the config file reloads it"
    );
    if let (Some(f), Some(rec)) = (d.opts.fleet.clone(), fleet_record) {
        if let Err(e) = d.opts.state.save_fleet_record(&rec) {
            warn!("recording fleet mode: {e:#}");
        }
        let status = d.node_status(&f, &rec, None);
        d.set_fleet_metrics(&rec, false);
        d.fleet = Some(FleetState {
            task: fleet::spawn(f.clone(), rec.revision, status),
            cfg: f,
            record: rec,
            error: None,
        });
    }
    notify::ready(&d.status_line());
    let watchdog = notify::watchdog();

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut seen = stamp(&source_path);
    // A changed stamp seen once: applied when the next poll sees the same (the file is stable).
    let mut pending: Option<Option<Stamp>> = None;
    loop {
        let why = tokio::select! {
            _ = hup.recv() => Some("SIGHUP"),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = links.notified() => None,
            ev = fleet_event(&mut d.fleet) => {
                if let Some(ev) = ev {
                    d.on_fleet(ev).await;
                    // The document file changed under our hands: not a reload of its own.
                    seen = stamp(&source_path);
                    pending = None;
                }
                None
            }
            _ = tick.tick() => {
                let now = stamp(&source_path);
                if now == seen {
                    pending = None;
                    None
                } else if pending.as_ref() == Some(&now) {
                    seen = now;
                    pending = None;
                    Some("config file changed")
                } else {
                    pending = Some(now);
                    None
                }
            }
        };
        d.check_state();
        d.check_ifaces();
        d.check_quarantines();
        if let Some(why) = why {
            notify::reloading();
            d.reload(why).await;
            notify::ready(&d.status_line());
        }
        if watchdog.is_some() {
            notify::ping();
        }
    }
    notify::stopping(match d.fail_mode {
        FailMode::Keep => "stopping; the filter stays attached and enforcing (fail_mode = keep)",
        FailMode::Detach => "stopping; detaching the filter (fail_mode = detach)",
    });

    if let Some(t) = link_watch {
        t.abort();
    }
    match d.fail_mode {
        FailMode::Keep => {
            info!("stopping; the filter stays attached (fail_mode = keep)");
        }
        FailMode::Detach => {
            for g in d.guarded.iter().filter(|g| g.state != IfState::Detached) {
                let dir = d.opts.pins.iface_dir(&g.iface);
                if let Err(e) = pins::detach_link(&dir.join(LINK_PIN)) {
                    warn!(iface = %g.iface, "detach: {e:#}");
                }
                if let Err(e) = d.opts.pins.remove(&g.iface, false) {
                    warn!(iface = %g.iface, "removing pins: {e:#}");
                }
                let _ = d.opts.state.set_iface_mode(&g.iface, None);
            }
            info!("stopped and detached (fail_mode = detach)");
        }
    }
    d.opts.state.clear_daemon(me);
    let _ = std::fs::remove_file(&d.socket);
    drop(d);
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn spawn_events(socket: PathBuf, hub: events::Hub) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = events::serve(socket, hub).await {
            error!("events socket: {e:#}");
        }
    })
}

fn spawn_metrics(
    listener: tokio::net::TcpListener,
    opts: &RunOptions,
    status: &Arc<Mutex<DaemonStatus>>,
    tops: &Arc<metrics::SharedTops>,
) -> JoinHandle<()> {
    tokio::spawn(metrics::serve(
        listener,
        opts.pins.clone(),
        opts.state.clone(),
        status.clone(),
        tops.clone(),
    ))
}

/// Subscribes to the kernel's link notifications (RTMGRP_LINK) and wakes `notify` on each:
/// an interface deleted, created or changed. The task only reads a non-blocking socket when
/// the runtime says it is readable; it ends with the daemon (aborted) or on a socket error.
fn watch_links(notify: Arc<Notify>) -> Result<JoinHandle<()>> {
    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
    /// `RTMGRP_LINK` (include/uapi/linux/rtnetlink.h).
    const RTMGRP_LINK: u32 = 1;
    let mut sock = Socket::new(NETLINK_ROUTE).context("netlink socket")?;
    sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
        .context("subscribing to link notifications")?;
    sock.set_non_blocking(true)
        .context("netlink socket: non-blocking")?;
    // SAFETY: the socket owns its fd and moves into the AsyncFd, which keeps it open (and its
    // `as_raw_fd` the same) until the AsyncFd is dropped.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(sock) }
        .map_err(|e| anyhow::anyhow!("watching the netlink socket: {e}"))?;
    Ok(tokio::spawn(async move {
        let mut buf: Vec<u8> = Vec::with_capacity(32 * 1024);
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            match guard.try_io(|s| {
                buf.clear();
                s.get_ref().recv(&mut buf, 0)
            }) {
                Ok(Ok(_)) => notify.notify_one(),
                // Notifications were lost (the socket buffer overflowed): check all the same.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => notify.notify_one(),
                Ok(Err(e)) => {
                    warn!("link notifications stopped: {e}; interfaces are checked every 500 ms");
                    return;
                }
                Err(_would_block) => {}
            }
        }
    }))
}

/// The running daemon.
struct Daemon {
    opts: RunOptions,
    config: Option<PathBuf>,
    started_unix: u64,
    guarded: Vec<Guarded>,
    _locks: Vec<IfaceLock>,
    /// The runtime edits, as last read from runtime.toml (restored from here if the state
    /// directory is removed).
    overlay: Overlay,
    overlay_stamp: Option<(u64, Option<SystemTime>, u64)>,
    /// Ticks on which runtime.toml was missing (while daemon.json was there).
    overlay_missing: u32,
    /// The rule set of the last commit (rules.json).
    committed: RuleSet,
    hub: events::Hub,
    socket: PathBuf,
    events_task: JoinHandle<()>,
    metrics: Option<(SocketAddr, JoinHandle<()>)>,
    /// The customers and policies of the last commit, for naming them in events.
    customer_names: Arc<Mutex<Customers>>,
    /// Quarantines already announced, by interface and subject: their start time.
    quarantines_seen: HashMap<(String, guard_common::limits::Subject), (u64, u64)>,
    /// `[metrics] top_rules` and `top_customers`, read by each scrape (a reload stores the new
    /// values).
    tops: Arc<metrics::SharedTops>,
    status: Arc<Mutex<DaemonStatus>>,
    applied_events: EventOutputs,
    applied_debug_log: bool,
    fail_mode: FailMode,
    last_reload: Option<ReloadRecord>,
    /// `--fleet`: the etcd task and what was applied from it.
    fleet: Option<FleetState>,
}

struct FleetState {
    cfg: FleetConfig,
    task: fleet::FleetTask,
    record: FleetRecord,
    /// The last revision refused, and why.
    error: Option<NodeError>,
}

/// The fleet task's next event; never, without a fleet.
async fn fleet_event(f: &mut Option<FleetState>) -> Option<fleet::FleetEvent> {
    match f {
        Some(f) => f.task.events.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            pid: std::process::id(),
            config: self.config.clone(),
            ifaces: self
                .guarded
                .iter()
                .map(|g| IfaceInfo {
                    name: g.iface.clone(),
                    xdp_mode: g.mode.into(),
                    state: g.state.note().into(),
                })
                .collect(),
            started_unix: self.started_unix,
        }
    }

    fn save_info(&self) {
        if let Err(e) = self.opts.state.save_daemon(&self.info()) {
            warn!("recording the daemon: {e:#}");
        }
    }

    /// Keeps the state directory there: re-created with everything the daemon holds when it
    /// was removed; otherwise the runtime edits in memory follow runtime.toml.
    /// Announces the quarantines the kernel started since the last look (one event each:
    /// who, why, the counts, until when). The kernel quarantines by itself; this only tells.
    fn check_quarantines(&mut self) {
        use guard_common::limits::REASON_MANUAL;
        let customers = self
            .customer_names
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut live = HashMap::new();
        for g in self.guarded.iter().filter(|g| g.state == IfState::Attached) {
            let Ok(entries) = g.filter.maps.quarantined() else {
                continue;
            };
            for (who, q) in entries {
                let key = (g.iface.clone(), who);
                live.insert(key.clone(), (q.since_ns, q.until_ns));
                if q.reason == REASON_MANUAL
                    || self.quarantines_seen.get(&key).map(|s| s.0) == Some(q.since_ns)
                {
                    continue;
                }
                let name = crate::model::limits::subject_name(&who, &customers);
                let (customer, src) = match name.strip_prefix("customer ") {
                    Some(c) => (Some(c.to_string()), String::new()),
                    None => (None, name.clone()),
                };
                let rec = crate::report::event::EventRecord {
                    time: time::rfc3339(time::boot_ns_to_system(q.since_ns)),
                    iface: g.iface.clone(),
                    verdict: "drop".into(),
                    src,
                    dst: String::new(),
                    vlan: 0,
                    number: String::new(),
                    rule: String::new(),
                    rule_id: 0,
                    action: "quarantine".into(),
                    customer,
                    cause: "quarantine_started".into(),
                    until: Some(time::rfc3339(time::boot_ns_to_system(q.until_ns))),
                    reason: Some(format!(
                        "{}: {} calls, {} over limit in the window",
                        crate::model::limits::reason_str(q.reason),
                        q.calls,
                        q.over_limit
                    )),
                };
                warn!(iface = %g.iface, who = %name, until = rec.until.as_deref().unwrap_or("?"), "quarantine started: {}", rec.reason.as_deref().unwrap_or(""));
                self.hub.publish(&rec);
            }
        }
        // An entry gone from the map before its time was released (the kernel never deletes
        // one; an expired entry stays until the next trip replaces it).
        let now = time::boot_now_ns();
        let released = self
            .quarantines_seen
            .iter()
            .filter(|(k, (_, until))| !live.contains_key(*k) && *until > now)
            .count() as u64;
        if released > 0
            && let Ok(mut st) = self.status.lock()
        {
            st.quarantine_releases += released;
        }
        self.quarantines_seen = live;
    }

    fn check_state(&mut self) {
        let state = &self.opts.state;
        if state.has_daemon_record() {
            match state.overlay_stamp() {
                Some(st) => {
                    self.overlay_missing = 0;
                    if Some(st) != self.overlay_stamp
                        && let Ok(o) = state.overlay()
                    {
                        self.overlay = o;
                        self.overlay_stamp = Some(st);
                        // A customer edit records its customers before runtime.toml.
                        if let Ok(mut c) = self.customer_names.lock() {
                            *c = state.customers();
                        }
                    }
                }
                // Removed on purpose (the edits are dropped), unless the whole directory goes
                // in the next tick: then they are restored.
                None => {
                    self.overlay_missing += 1;
                    if self.overlay_missing >= 2 {
                        self.overlay = Overlay::default();
                        self.overlay_stamp = None;
                    }
                }
            }
            return;
        }
        warn!(
            dir = %state.dir.display(),
            runtime_added = self.overlay.rule.len(),
            runtime_deleted = self.overlay.deleted.len(),
            "the state directory was removed under the running daemon (daemon.json is gone): re-creating it with the daemon record, the events socket, the interface locks and the runtime rule edits the daemon holds"
        );
        let mut errors = Vec::new();
        if let Err(e) = state.create() {
            errors.push(format!("{e:#}"));
        }
        for (i, iface) in self.opts.ifaces.iter().enumerate() {
            match state.lock_iface(iface) {
                Ok(l) if i < self._locks.len() => self._locks[i] = l,
                Ok(l) => self._locks.push(l),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if self.overlay != Overlay::default()
            && let Err(e) = state.save_overlay(&self.overlay)
        {
            errors.push(format!("{e:#}"));
        }
        if let Ok(c) = self.customer_names.lock()
            && let Err(e) = state.save_customers(&c)
        {
            errors.push(format!("{e:#}"));
        }
        if let Err(e) = state.save_committed(&self.committed) {
            errors.push(format!("{e:#}"));
        }
        for g in self.guarded.iter().filter(|g| g.state != IfState::Detached) {
            if let Err(e) = state.set_iface_mode(&g.iface, Some(g.mode)) {
                errors.push(format!("{e:#}"));
            }
        }
        if let Some(r) = &self.last_reload
            && let Err(e) = state.save_reload(r)
        {
            errors.push(format!("{e:#}"));
        }
        self.save_info();
        self.overlay_stamp = state.overlay_stamp();
        self.overlay_missing = 0;
        self.events_task.abort();
        self.events_task = spawn_events(self.socket.clone(), self.hub.clone());
        if errors.is_empty() {
            info!(dir = %state.dir.display(), "state directory re-created");
        } else {
            error!(
                dir = %state.dir.display(),
                "re-creating the state directory: {}",
                errors.join("; ")
            );
        }
    }

    /// Checks every guarded interface against the kernel: its link pinned, not severed, and
    /// attached to the interface that has its name now.
    fn check_ifaces(&mut self) {
        let mut changed = false;
        for g in self.guarded.iter_mut() {
            if g.state == IfState::Detached {
                continue;
            }
            let iface = g.iface.clone();
            let link = self.opts.pins.link_state(&iface);
            let now = sys::if_index(&iface);
            let filtering = match link {
                LinkState::Missing => {
                    warn!(
                        iface,
                        "{iface} was detached by `sipguard detach`: the daemon no longer guards it and will not attach it again by itself; restart sipguard (`sipguard run --iface {iface}`) to guard it again"
                    );
                    g.state = IfState::Detached;
                    changed = true;
                    continue;
                }
                LinkState::Attached { ifindex } => now == Some(ifindex),
                LinkState::Severed => false,
                LinkState::Unknown => true,
            };
            if filtering {
                if g.state != IfState::Attached {
                    g.state = IfState::Attached;
                    changed = true;
                }
                continue;
            }
            if g.state == IfState::Attached {
                warn!(
                    iface,
                    "interface {iface} is gone (deleted, or moved): nothing is filtered on it; sipguard attaches again when it comes back"
                );
                g.state = IfState::Gone;
                changed = true;
            }
            let Some(idx) = now else { continue };
            if g.failed_ifindex == Some(idx) {
                continue;
            }
            match attach::reattach(&self.opts, g) {
                Ok(()) => {
                    info!(
                        iface,
                        ifindex = idx,
                        xdp_mode = g.mode,
                        "interface {iface} is back: re-attached (a new XDP link, pinned)"
                    );
                    g.state = IfState::Attached;
                    g.failed_ifindex = None;
                    changed = true;
                }
                Err(e) => {
                    error!(
                        iface,
                        ifindex = idx,
                        "interface {iface} is back but attaching to it failed (retried when it changes again): {e:#}"
                    );
                    g.failed_ifindex = Some(idx);
                }
            }
        }
        if changed {
            self.save_info();
        }
    }

    /// What this router reports at `<prefix>/status/<node>`.
    fn node_status(
        &self,
        f: &FleetConfig,
        rec: &FleetRecord,
        error: Option<NodeError>,
    ) -> NodeStatus {
        NodeStatus {
            node: f.node.clone(),
            revision: rec.revision,
            applied_unix: rec.applied_unix,
            rules: self.committed.len(),
            local_edits: self.overlay.edits(),
            error,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn set_fleet_metrics(&self, rec: &FleetRecord, connected: bool) {
        if let Ok(mut st) = self.status.lock() {
            let last = st.fleet.as_ref().map_or(0, |f| f.last_watch_unix);
            st.fleet = Some(FleetMetrics {
                revision: rec.revision,
                connected,
                last_watch_unix: last,
            });
        }
    }

    /// One event of the fleet task.
    async fn on_fleet(&mut self, ev: fleet::FleetEvent) {
        match ev {
            fleet::FleetEvent::Connected(up, why) => {
                if let Some(f) = &self.fleet {
                    if up {
                        info!("{}: connected", f.cfg.describe());
                    } else {
                        warn!(
                            revision = f.record.revision,
                            "{} unreachable ({}): the rules in force stay, reconnecting",
                            f.cfg.describe(),
                            why.unwrap_or_default()
                        );
                    }
                    self.set_fleet_metrics(&f.record, up);
                }
            }
            fleet::FleetEvent::Watched => {
                if let Ok(mut st) = self.status.lock()
                    && let Some(m) = st.fleet.as_mut()
                {
                    m.last_watch_unix = unix_now();
                }
            }
            fleet::FleetEvent::Document { text, revision } => {
                self.apply_fleet(text, revision).await
            }
        }
    }

    /// Validates and applies one revision of the fleet's document, as a reload: all of it,
    /// or nothing (the previous revision stays in force and the error goes to etcd).
    async fn apply_fleet(&mut self, text: String, revision: i64) {
        let Some(f) = &self.fleet else { return };
        if revision <= f.record.revision {
            return;
        }
        let label = format!("{}@{revision}", f.cfg.config_key());
        let result: Result<()> = async {
            config::parse(std::path::Path::new(&label), &text)?;
            let previous = std::fs::read_to_string(self.opts.state.fleet_doc()).ok();
            self.opts.state.save_fleet_doc(&text)?;
            // From now on the daemon's config file is the fleet's document.
            self.opts.config = Some(self.opts.state.fleet_doc());
            self.config = self.opts.config.clone();
            self.reload(&format!("fleet revision {revision}")).await;
            match &self.last_reload {
                Some(r) if !r.ok => {
                    if let Some(p) = previous {
                        let _ = self.opts.state.save_fleet_doc(&p);
                    }
                    bail!("{}", r.error.clone().unwrap_or_default())
                }
                _ => Ok(()),
            }
        }
        .await;
        let Some(f) = self.fleet.as_mut() else { return };
        match result {
            Ok(()) => {
                f.record.revision = revision;
                f.record.applied_unix = unix_now();
                f.error = None;
                if let Err(e) = self.opts.state.save_fleet_record(&f.record) {
                    warn!("recording the fleet revision: {e:#}");
                }
                info!(revision, "fleet revision applied");
            }
            Err(e) => {
                error!(
                    revision,
                    in_force = f.record.revision,
                    "fleet revision refused, the rules in force stay: {e:#}"
                );
                f.error = Some(NodeError {
                    revision,
                    message: format!("{e:#}"),
                });
            }
        }
        let Some(f) = &self.fleet else { return };
        let status = self.node_status(&f.cfg, &f.record, f.error.clone());
        let _ = f.task.status.send(status);
        let connected = self
            .status
            .lock()
            .ok()
            .and_then(|s| s.fleet.as_ref().map(|m| m.connected))
            .unwrap_or(false);
        self.set_fleet_metrics(&f.record, connected);
        self.save_info();
    }

    /// One line for `systemctl status`: what is enforced where, and the last reload.
    fn status_line(&self) -> String {
        let ifaces: Vec<&str> = self
            .guarded
            .iter()
            .filter(|g| g.state != IfState::Detached)
            .map(|g| g.iface.as_str())
            .collect();
        let reload = match &self.last_reload {
            Some(r) if !r.ok => "; the last reload FAILED, the previous rules stay in force",
            _ => "",
        };
        format!(
            "enforcing {} rules on {}{reload}",
            self.committed.len(),
            if ifaces.is_empty() {
                "no interface".to_string()
            } else {
                ifaces.join(", ")
            }
        )
    }

    async fn reload(&mut self, why: &str) {
        let result = self.commit();
        let ok = result.is_ok();
        if let Ok(mut st) = self.status.lock() {
            st.last_reload = Some(SystemTime::now());
            st.last_reload_ok = ok;
        }
        let error = match result {
            Ok((n, cfg)) => {
                self.fail_mode = cfg.fail_mode;
                self.apply_live(&cfg).await;
                info!(reason = why, rules = n, "reloaded");
                None
            }
            Err(e) => {
                error!(
                    reason = why,
                    "reload failed, the previous rules stay in force: {e:#}"
                );
                Some(format!("{e:#}"))
            }
        };
        let record = ReloadRecord {
            unix: unix_now(),
            reason: why.into(),
            ok,
            error,
        };
        if let Err(e) = self.opts.state.save_reload(&record) {
            warn!("recording the reload: {e:#}");
        }
        self.last_reload = Some(record);
    }

    /// Re-reads the config and commits config ⊕ runtime edits to every guarded interface.
    /// Nothing changes when the file is invalid.
    fn commit(&mut self) -> Result<(usize, ConfigFile)> {
        // Resolved again: an /etc file that appeared (or went) since the start is picked up.
        let source = ConfigLocation::resolve(self.opts.config.as_deref());
        let cfg = source.load()?;
        let _lock = self.opts.state.lock()?;
        let overlay = self.opts.state.overlay()?;
        let Effective { rules, customers } =
            effective(&overlay, &cfg, &self.opts.state.customers())?;
        for w in cfg.settings.unreachable_rules(&rules) {
            warn!("{w}");
        }
        for w in &cfg.warnings {
            warn!(config = %source, "{w}");
        }
        let entries = customers.entries();
        for g in self.guarded.iter_mut() {
            if g.state == IfState::Detached {
                info!(
                    iface = %g.iface,
                    "not guarded (detached by `sipguard detach`): restart sipguard to guard it again"
                );
                continue;
            }
            attach::warn_capacity(&g.iface, &g.filter.maps, cfg.settings.max_rules);
            g.filter.maps.quarantine = cfg.quarantine.as_ref().map(|q| q.config());
            let r = g
                .filter
                .maps
                .commit_all(&cfg.settings, &rules, Some(&entries))
                .with_context(|| format!("interface {}", g.iface))?;
            info!(iface = %g.iface, added = r.added, changed = r.changed, removed = r.removed, total = r.total, "rules committed");
            if let Ok(mut ids) = g.rule_ids.lock() {
                *ids = id_map(&g.filter.maps);
            }
            refresh_statuses(g, &rules, &cfg);
        }
        self.opts.state.save_committed(&rules)?;
        self.opts.state.save_customers(&customers)?;
        if let Ok(mut c) = self.customer_names.lock() {
            *c = customers;
        }
        self.overlay = overlay;
        self.overlay_stamp = self.opts.state.overlay_stamp();
        self.committed = rules;
        info!(config = %source, "config applied");
        Ok((self.committed.len(), cfg))
    }

    /// Applies what a reload changed besides the rules and settings: `[events]`,
    /// `[metrics] listen` and `top_rules` live; says which settings need a restart.
    async fn apply_live(&mut self, cfg: &ConfigFile) {
        if cfg.events != self.applied_events {
            self.hub.set_outputs(cfg.events.clone());
            info!(
                file = ?cfg.events.file,
                stdout = cfg.events.stdout,
                "events output switched ([events] changed)"
            );
            self.applied_events = cfg.events.clone();
        }
        let top_customers = cfg.top_customers as usize;
        if self.tops.customers.swap(top_customers, Ordering::Relaxed) != top_customers {
            info!(
                top_customers,
                "metrics: series for the {top_customers} customers with the most stopped calls ([metrics] top_customers changed)"
            );
        }
        let top_rules = cfg.top_rules as usize;
        if self.tops.rules.swap(top_rules, Ordering::Relaxed) != top_rules {
            info!(
                top_rules,
                "metrics: per-rule series for the {top_rules} busiest rules ([metrics] top_rules changed)"
            );
        }
        let current = self.metrics.as_ref().map(|(a, _)| *a);
        if cfg.metrics != current {
            self.rebind_metrics(cfg.metrics, current).await;
        }
        let mut restart = Vec::new();
        if cfg.settings.kernel_debug_log != self.applied_debug_log {
            restart.push("kernel_debug_log");
        }
        if self
            .guarded
            .iter()
            .any(|g| g.filter.maps.capacity() != cfg.settings.max_rules)
        {
            restart.push("max_rules (after `sipguard detach`, see above)");
        }
        if !restart.is_empty() {
            warn!(
                "not applied by a reload: {}: restart sipguard to apply",
                restart.join(", ")
            );
        }
    }

    async fn rebind_metrics(&mut self, want: Option<SocketAddr>, current: Option<SocketAddr>) {
        let stop = |t: Option<(SocketAddr, JoinHandle<()>)>| async move {
            if let Some((_, t)) = t {
                t.abort();
                // Bounded: the task is cancelled at its next await; its listener is closed then.
                let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
            }
        };
        let Some(addr) = want else {
            stop(self.metrics.take()).await;
            info!("metrics endpoint closed ([metrics] listen = \"off\")");
            return;
        };
        // The new address first, so a busy one leaves the old listener serving; then (the same
        // port on another address may conflict with the old listener) after closing the old.
        let bound = match metrics::bind(addr).await {
            Ok(l) => {
                stop(self.metrics.take()).await;
                Ok(l)
            }
            Err(_) => {
                stop(self.metrics.take()).await;
                metrics::bind(addr).await
            }
        };
        match bound {
            Ok(l) => {
                self.metrics = Some((addr, spawn_metrics(l, &self.opts, &self.status, &self.tops)));
                info!(listen = %addr, "metrics endpoint moved ([metrics] listen changed)");
            }
            Err(e) => {
                error!(
                    "metrics listen changed to {addr} but binding it failed: {e:#}; restart sipguard to apply"
                );
                if let Some(old) = current
                    && let Ok(l) = metrics::bind(old).await
                {
                    self.metrics =
                        Some((old, spawn_metrics(l, &self.opts, &self.status, &self.tops)));
                    warn!(listen = %old, "metrics endpoint kept on the previous address");
                }
            }
        }
    }
}
