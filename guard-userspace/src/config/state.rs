//! The state directory (default /var/lib/sipguard): what must survive the daemon besides the
//! pinned maps.
//!
//! - `runtime.toml`: runtime rule and customer edits (`sipguard rules add/del/import`,
//!   `sipguard customers add/del`). The daemon's rule set
//!   is always *config file ⊕ runtime edits*: runtime rules are added (replacing a config rule
//!   of the same prefix), and runtime deletions remove config rules. A reload re-reads the
//!   config file and re-applies the runtime edits, so an edit is never silently undone. To make
//!   an edit permanent, put it in the config file and `sipguard rules del` / re-add it, or
//!   remove `runtime.toml`. Customers work the same way, by name: a runtime customer replaces
//!   the config's customer of its name, a runtime deletion removes it. A reload whose config no
//!   longer admits a runtime customer (its policy is gone, its CIDR now belongs to a config
//!   customer) fails with that reason, and nothing changes.
//! - `rules.json`: the rule set of the daemon's last commit with comments and countries (the
//!   kernel keeps only prefix, action and counter id). Runtime edits after it are in
//!   `runtime.toml`; [`StateDir::rule_meta`] merges the two, so a `rules add` into a million
//!   rules does not rewrite a 60 MB file.
//! - `daemon.json`: the running daemon (pid, config path, interfaces and XDP modes).
//! - `lock`: an flock that serialises every change of the maps (daemon reloads, CLI edits).
//! - `run.IFACE.lock`: held (flock) by the one daemon that guards IFACE, for its whole life;
//!   holds its pid. A second `sipguard run` on the interface is refused.
//! - `reload.json`: the daemon's last reload: when, why, and its result (error text).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{
    customers::{Customer, CustomerError, Customers, remap_policies},
    rules::{Origin, Prefix, Rule, RuleSet},
};

/// Default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/sipguard";

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{path}: {action} failed")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{path}: corrupt state file: {reason}")]
    Corrupt { path: String, reason: String },
}

fn io_err(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError {
    let path = path.display().to_string();
    move |source| StateError::Io {
        path,
        action,
        source,
    }
}

/// Runtime rule edits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Prefixes deleted at runtime (config rules that must stay out).
    #[serde(default)]
    pub deleted: BTreeSet<Prefix>,
    /// Customers deleted at runtime (config customers that must stay out), by name.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deleted_customers: BTreeSet<String>,
    /// Rules added at runtime.
    #[serde(default)]
    pub rule: Vec<OverlayRule>,
    /// Customers added (or replacing a config customer of the same name) at runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customer: Vec<OverlayCustomer>,
}

/// A runtime customer: a [`Customer`] without its id (ids are given at each commit, see
/// [`Customers::keep_ids`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayCustomer {
    pub name: String,
    pub sources: Vec<ipnet::IpNet>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl OverlayCustomer {
    pub fn customer(&self) -> Customer {
        Customer {
            name: self.name.clone(),
            id: 0,
            sources: self.sources.clone(),
            vlans: self.vlans.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl From<&Customer> for OverlayCustomer {
    fn from(c: &Customer) -> Self {
        Self {
            name: c.name.clone(),
            sources: c.sources.clone(),
            vlans: c.vlans.clone(),
            policy: c.policy.clone(),
        }
    }
}

/// What the daemon commits: the config's rules and customers with the runtime edits over them,
/// ids kept from the last commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effective {
    pub rules: RuleSet,
    pub customers: Customers,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayRule {
    pub prefix: Prefix,
    #[serde(with = "crate::model::rules::action_serde")]
    pub action: guard_common::Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

impl Overlay {
    /// How many edits it holds (rules added or deleted, customers added or deleted).
    pub fn edits(&self) -> usize {
        self.deleted.len() + self.deleted_customers.len() + self.rule.len() + self.customer.len()
    }

    /// Records a runtime add (which also cancels an earlier runtime delete of that prefix).
    pub fn add(&mut self, prefix: Prefix, entry: &Rule) {
        self.deleted.remove(&prefix);
        self.rule.retain(|r| r.prefix != prefix);
        self.rule.push(OverlayRule {
            prefix,
            action: entry.action,
            comment: entry.comment.clone(),
            country: entry.country.clone(),
        });
        self.rule.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    }

    /// Records a runtime delete.
    pub fn delete(&mut self, prefix: Prefix) {
        self.rule.retain(|r| r.prefix != prefix);
        self.deleted.insert(prefix);
    }

    /// Records a runtime customer add or replacement.
    pub fn add_customer(&mut self, c: &Customer) {
        self.deleted_customers.remove(&c.name);
        self.customer.retain(|o| o.name != c.name);
        self.customer.push(c.into());
        self.customer.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Records a runtime customer delete.
    pub fn delete_customer(&mut self, name: &str) {
        self.customer.retain(|o| o.name != name);
        self.deleted_customers.insert(name.to_string());
    }

    /// Config customers with these edits applied, each runtime customer checked against the
    /// rest ([`Customers::admit`]).
    pub fn apply_customers(&self, config: &Customers) -> Result<Customers, CustomerError> {
        let mut out = config.clone();
        out.customers
            .retain(|c| !self.deleted_customers.contains(&c.name));
        for c in &self.customer {
            out.upsert(c.customer())?;
        }
        Ok(out)
    }

    /// The config's rules and customers with these edits over them; customers and policies
    /// keep the ids they had in `previous` (the last commit), and the policies' rules follow
    /// their policy's id.
    pub fn effective(
        &self,
        rules: &RuleSet,
        customers: &Customers,
        previous: &Customers,
    ) -> Result<Effective, CustomerError> {
        let mut customers = self.apply_customers(customers)?;
        let map = customers.keep_ids(previous)?;
        let rules = self.apply(&remap_policies(rules.clone(), &map));
        Ok(Effective { rules, customers })
    }

    /// Config rules with these edits applied.
    pub fn apply(&self, config: &RuleSet) -> RuleSet {
        let mut out: RuleSet = config
            .iter()
            .filter(|(p, _)| !self.deleted.contains(*p))
            .map(|(p, e)| (p.clone(), e.clone()))
            .collect();
        for r in &self.rule {
            out.insert(
                r.prefix.clone(),
                Rule {
                    action: r.action,
                    comment: r.comment.clone(),
                    country: r.country.clone(),
                    origin: Origin::Runtime,
                    status: None,
                    limits: None,
                },
            );
        }
        out
    }
}

/// One attached interface, as the daemon recorded it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceInfo {
    pub name: String,
    /// `native` or `generic`.
    pub xdp_mode: String,
    /// What the daemon knows that the pins may not say: empty (guarded), "interface gone"
    /// (deleted; re-attached when it comes back) or "detached" (by `sipguard detach`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// The daemon's last reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRecord {
    pub unix: u64,
    /// "SIGHUP" or "config file changed".
    pub reason: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The running daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub config: Option<PathBuf>,
    pub ifaces: Vec<IfaceInfo>,
    pub started_unix: u64,
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub dir: PathBuf,
}

/// An exclusive flock on the state directory; released on drop.
pub struct Lock {
    _file: fs::File,
}

/// The daemon's hold on one interface (`run.IFACE.lock`); released on drop (or exit).
pub struct IfaceLock {
    pub path: PathBuf,
    _file: fs::File,
}

/// Why an interface lock could not be taken.
#[derive(Debug, Error)]
pub enum IfaceLockError {
    #[error(
        "interface {iface} is already guarded by pid {pid} (lock {path}); stop that daemon first, or use another interface"
    )]
    Held {
        iface: String,
        pid: String,
        path: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates the directory (0700) if needed.
    pub fn create(&self) -> Result<(), StateError> {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir, "create directory"))?;
        let m = fs::metadata(&self.dir).map_err(io_err(&self.dir, "stat"))?;
        if m.mode() & 0o777 == 0o700 {
            return Ok(());
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.dir, "chmod 0700"))
    }

    /// Gives a file that root just made in the directory to the directory's owner, so that a
    /// daemon running as its own user (the systemd unit's `sipguard`) can still read and
    /// replace what `sudo sipguard rules add` wrote. Nothing to do when not root or when root
    /// owns the directory.
    fn adopt(&self, file: &fs::File, path: &Path) -> Result<(), StateError> {
        use std::os::unix::fs::MetadataExt as _;
        if !sys_is_root() {
            return Ok(());
        }
        let dir = fs::metadata(&self.dir).map_err(io_err(&self.dir, "stat"))?;
        if dir.uid() == 0 {
            return Ok(());
        }
        std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid()))
            .map_err(io_err(path, "chown to the state directory's owner"))
    }

    /// Takes the lock that serialises map changes (blocking).
    pub fn lock(&self) -> Result<Lock, StateError> {
        self.create()?;
        let path = self.path("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open lock"))?;
        self.adopt(&file, &path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&path, "flock")(io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }

    /// Takes the daemon's lock on `iface` (not blocking) and writes our pid into it; refused
    /// while another live process holds it.
    pub fn lock_iface(&self, iface: &str) -> Result<IfaceLock, IfaceLockError> {
        use std::io::{Read as _, Seek as _, Write as _};
        self.create()?;
        let path = self.path(&format!("run.{iface}.lock"));
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open lock"))?;
        self.adopt(&file, &path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(IfaceLockError::Held {
                    iface: iface.to_string(),
                    pid: if pid.is_empty() {
                        "?".into()
                    } else {
                        pid.into()
                    },
                    path: path.display().to_string(),
                });
            }
            return Err(io_err(&path, "flock")(e).into());
        }
        file.set_len(0).map_err(io_err(&path, "truncate"))?;
        file.rewind().map_err(io_err(&path, "rewind"))?;
        writeln!(file, "{}", std::process::id()).map_err(io_err(&path, "write"))?;
        Ok(IfaceLock { path, _file: file })
    }

    /// The pid holding `iface`'s daemon lock, if a live process holds it.
    pub fn iface_guard(&self, iface: &str) -> Option<u32> {
        let path = self.path(&format!("run.{iface}.lock"));
        let file = fs::File::open(&path).ok()?;
        // SAFETY: flock on an fd we own; a shared lock that we get is released at once.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return None;
        }
        fs::read_to_string(&path).ok()?.trim().parse().ok()
    }

    pub fn save_reload(&self, r: &ReloadRecord) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(r).map_err(|e| StateError::Corrupt {
            path: self.path("reload.json").display().to_string(),
            reason: e.to_string(),
        })?;
        self.write("reload.json", &text)
    }

    /// Forgets the last reload (a new daemon has made none yet).
    pub fn clear_reload(&self) {
        let _ = fs::remove_file(self.path("reload.json"));
    }

    /// The last reload the daemon recorded.
    pub fn last_reload(&self) -> Option<ReloadRecord> {
        let (_, text) = self.read_opt("reload.json").ok()??;
        serde_json::from_str(&text).ok()
    }

    /// Whether the directory still holds the running daemon's record (it goes when somebody
    /// removes the directory under the daemon).
    pub fn has_daemon_record(&self) -> bool {
        self.path("daemon.json").exists()
    }

    /// The modification stamp of `runtime.toml` (size, mtime, inode), if it exists.
    pub fn overlay_stamp(&self) -> Option<(u64, Option<std::time::SystemTime>, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = fs::metadata(self.path("runtime.toml")).ok()?;
        Some((m.len(), m.modified().ok(), m.ino()))
    }

    fn read_opt(&self, name: &str) -> Result<Option<(PathBuf, String)>, StateError> {
        let path = self.path(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some((path, s))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    /// Writes `name` atomically (temp file + rename), 0600.
    fn write(&self, name: &str, text: &str) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt as _;
        self.create()?;
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        fs::write(&tmp, text).map_err(io_err(&tmp, "write"))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(io_err(&tmp, "chmod 0600"))?;
        self.adopt(&fs::File::open(&tmp).map_err(io_err(&tmp, "open"))?, &tmp)?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "replace"))
    }

    pub fn overlay(&self) -> Result<Overlay, StateError> {
        match self.read_opt("runtime.toml")? {
            None => Ok(Overlay::default()),
            Some((path, text)) => toml::from_str(&text).map_err(|e| StateError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn save_overlay(&self, o: &Overlay) -> Result<(), StateError> {
        let text = toml::to_string(o).map_err(|e| StateError::Corrupt {
            path: self.path("runtime.toml").display().to_string(),
            reason: e.to_string(),
        })?;
        self.write(
            "runtime.toml",
            &format!("# Runtime rule edits (sipguard rules add/del/import). Merged over the config file.\n{text}"),
        )
    }

    /// The last committed rule set (comments, countries); empty when none was recorded.
    pub fn committed(&self) -> Result<RuleSet, StateError> {
        match self.read_opt("rules.json")? {
            None => Ok(RuleSet::new()),
            Some((path, text)) => {
                let v: BTreeMap<Prefix, Rule> =
                    serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                Ok(v)
            }
        }
    }

    /// Comments, countries and origins of the live rules: the last commit's, with the runtime
    /// edits made since then over them.
    pub fn rule_meta(&self) -> RuleSet {
        let mut meta = self.committed().unwrap_or_default();
        if let Ok(o) = self.overlay() {
            for r in o.rule {
                meta.insert(
                    r.prefix,
                    Rule {
                        action: r.action,
                        comment: r.comment,
                        country: r.country,
                        origin: Origin::Runtime,
                        status: None,
                        limits: None,
                    },
                );
            }
        }
        meta
    }

    /// Writes `rules.json`: one rule per line (a million rules make a 60 MB file; pretty
    /// printing would double it and the time to write it).
    pub fn save_committed(&self, rules: &RuleSet) -> Result<(), StateError> {
        let corrupt = |e: serde_json::Error| StateError::Corrupt {
            path: self.path("rules.json").display().to_string(),
            reason: e.to_string(),
        };
        let mut text = String::with_capacity(rules.len() * 64 + 4);
        text.push('{');
        for (i, (prefix, entry)) in rules.iter().enumerate() {
            text.push_str(if i == 0 { "\n" } else { ",\n" });
            text.push_str(&serde_json::to_string(prefix).map_err(corrupt)?);
            text.push(':');
            text.push_str(&serde_json::to_string(entry).map_err(corrupt)?);
        }
        text.push_str("\n}\n");
        self.write("rules.json", &text)
    }

    /// Records the committed customers and policies (what views name policies and customers
    /// by), `customers.json`.
    pub fn save_customers(&self, c: &Customers) -> Result<(), StateError> {
        let text = serde_json::to_string(c).map_err(|e| StateError::Corrupt {
            path: self.path("customers.json").display().to_string(),
            reason: e.to_string(),
        })?;
        self.write("customers.json", &text)
    }

    /// The last committed customers and policies; none when none were recorded.
    pub fn customers(&self) -> Customers {
        self.read_opt("customers.json")
            .ok()
            .flatten()
            .and_then(|(_, text)| serde_json::from_str(&text).ok())
            .unwrap_or_default()
    }

    pub fn save_daemon(&self, d: &DaemonInfo) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(d).map_err(|e| StateError::Corrupt {
            path: self.path("daemon.json").display().to_string(),
            reason: e.to_string(),
        })?;
        self.write("daemon.json", &text)
    }

    /// The recorded daemon, whether or not it still runs.
    pub fn daemon_record(&self) -> Result<Option<DaemonInfo>, StateError> {
        match self.read_opt("daemon.json")? {
            None => Ok(None),
            Some((path, text)) => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }

    /// XDP modes of the attached interfaces (kept while the filter stays attached, also after
    /// the daemon stops).
    pub fn iface_modes(&self) -> BTreeMap<String, String> {
        self.read_opt("ifaces.json")
            .ok()
            .flatten()
            .and_then(|(_, t)| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Records (`Some`) or forgets (`None`) the XDP mode of `iface`.
    pub fn set_iface_mode(&self, iface: &str, mode: Option<&str>) -> Result<(), StateError> {
        let mut all = self.iface_modes();
        match mode {
            Some(m) => all.insert(iface.to_string(), m.to_string()),
            None => all.remove(iface),
        };
        let text = serde_json::to_string_pretty(&all).map_err(|e| StateError::Corrupt {
            path: self.path("ifaces.json").display().to_string(),
            reason: e.to_string(),
        })?;
        self.write("ifaces.json", &text)
    }

    /// The daemon, if its recorded pid is alive and is a sipguard process.
    pub fn running_daemon(&self) -> Result<Option<DaemonInfo>, StateError> {
        Ok(self.daemon_record()?.filter(|d| pid_is_sipguard(d.pid)))
    }

    /// Where a fleet router keeps the last document it applied (the daemon's config file in
    /// fleet mode).
    pub fn fleet_doc(&self) -> PathBuf {
        self.path(super::fleet::APPLIED_DOC)
    }

    /// Writes the fleet document `run --fleet` applies next (atomically, 0600).
    pub fn save_fleet_doc(&self, text: &str) -> Result<(), StateError> {
        self.write(super::fleet::APPLIED_DOC, text)
    }

    /// The fleet record: this router takes its rules from etcd (read by the edit verbs, which
    /// refuse), and the revision it applied.
    pub fn fleet_record(&self) -> Option<super::fleet::FleetRecord> {
        let (_, text) = self.read_opt(super::fleet::APPLIED_RECORD).ok()??;
        serde_json::from_str(&text).ok()
    }

    pub fn save_fleet_record(&self, r: &super::fleet::FleetRecord) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(r).map_err(|e| StateError::Corrupt {
            path: self
                .path(super::fleet::APPLIED_RECORD)
                .display()
                .to_string(),
            reason: e.to_string(),
        })?;
        self.write(super::fleet::APPLIED_RECORD, &text)
    }

    /// Leaves fleet mode: the record and the cached document go.
    pub fn clear_fleet(&self) {
        let _ = fs::remove_file(self.path(super::fleet::APPLIED_RECORD));
        let _ = fs::remove_file(self.fleet_doc());
    }

    /// Forgets the daemon record if it is ours.
    pub fn clear_daemon(&self, pid: u32) {
        if let Ok(Some(d)) = self.daemon_record()
            && d.pid == pid
        {
            let _ = fs::remove_file(self.path("daemon.json"));
        }
    }
}

/// Whether `pid` is a live process whose executable is named sipguard.
pub fn pid_is_sipguard(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            let argv0 = c.split(|&b| b == 0).next()?.to_vec();
            let name = String::from_utf8_lossy(&argv0).into_owned();
            Some(Path::new(&name).file_name()?.to_string_lossy() == "sipguard")
        })
        .unwrap_or(false)
}

/// Whether this process is root (uid 0), whose files in the state directory go to its owner.
fn sys_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::Action;

    fn entry(action: Action, origin: Origin) -> Rule {
        Rule::new(action, origin)
    }

    #[test]
    fn overlay_adds_replaces_and_deletes_over_config() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let config: RuleSet = [
            (p("+232"), entry(Action::Block, Origin::Config)),
            (p("+44"), entry(Action::Monitor, Origin::Config)),
            (p("+881"), entry(Action::Block, Origin::Config)),
        ]
        .into_iter()
        .collect();
        let mut o = Overlay::default();
        o.add(p("+44"), &entry(Action::Block, Origin::Runtime));
        o.add(p("+99"), &entry(Action::Block, Origin::Runtime));
        o.delete(p("+881"));
        o.delete(p("+99"));
        o.add(p("+99"), &entry(Action::Allow, Origin::Runtime));
        let out = o.apply(&config);
        // rules.json round trip, one rule per line.
        let dir0 = std::env::temp_dir().join(format!("sg-committed-{}", std::process::id()));
        let st0 = StateDir::new(&dir0);
        st0.save_committed(&out).unwrap();
        assert_eq!(st0.committed().unwrap(), out);
        let text = fs::read_to_string(dir0.join("rules.json")).unwrap();
        assert_eq!(text.lines().count(), out.len() + 2, "{text}");
        st0.save_committed(&RuleSet::new()).unwrap();
        assert!(st0.committed().unwrap().is_empty());
        let _ = fs::remove_dir_all(&dir0);
        assert_eq!(out[&p("+232")].origin, Origin::Config);
        assert_eq!(out[&p("+44")].action, Action::Block);
        assert_eq!(out[&p("+44")].origin, Origin::Runtime);
        assert!(!out.contains_key(&p("+881")));
        assert_eq!(out[&p("+99")].action, Action::Allow);
        // Round trip through the file format.
        let dir = std::env::temp_dir().join(format!("sg-state-{}", std::process::id()));
        let st = StateDir::new(&dir);
        st.save_overlay(&o).unwrap();
        assert_eq!(st.overlay().unwrap(), o);
        // Customer edits: recorded by name, over the config's customers.
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        let config = Customers {
            policies: vec![],
            customers: vec![
                Customer {
                    name: "a".into(),
                    id: 1,
                    sources: vec![net("198.51.100.0/24")],
                    vlans: vec![],
                    policy: None,
                },
                Customer {
                    name: "b".into(),
                    id: 2,
                    sources: vec![net("203.0.113.0/24")],
                    vlans: vec![],
                    policy: None,
                },
            ],
        };
        o.delete_customer("a");
        o.add_customer(&Customer {
            name: "c".into(),
            id: 0,
            sources: vec![net("198.51.100.0/24"), net("2001:db8::/32")],
            vlans: vec![7],
            policy: None,
        });
        st.save_overlay(&o).unwrap();
        assert_eq!(st.overlay().unwrap(), o);
        let text = fs::read_to_string(dir.join("runtime.toml")).unwrap();
        assert!(text.contains("[[customer]]"), "{text}");
        let eff = o
            .effective(
                &config
                    .clone()
                    .customers
                    .iter()
                    .map(|_| (p("+1"), entry(Action::Block, Origin::Config)))
                    .collect(),
                &config,
                &config,
            )
            .unwrap();
        let names: Vec<(&str, u32)> = eff
            .customers
            .customers
            .iter()
            .map(|c| (c.name.as_str(), c.id))
            .collect();
        assert_eq!(names, [("b", 2), ("c", 3)]);
        // A runtime customer that the config no longer admits: the reason, nothing else.
        let mut clash = config.clone();
        clash.customers[1].sources.push(net("2001:db8::/32"));
        clash.customers[1].vlans = vec![7];
        let e = o.apply_customers(&clash).unwrap_err().to_string();
        assert_eq!(
            e,
            "customer `c`: source 2001:db8::/32 on VLAN 7 is already customer `b`'s"
        );
        fs::write(dir.join("runtime.toml"), "bogus = 1").unwrap();
        let e = st.overlay().unwrap_err().to_string();
        assert!(e.contains("runtime.toml: corrupt state file"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
