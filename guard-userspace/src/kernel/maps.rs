//! The filter's maps, whether they come from a freshly loaded object or from pins: committing a
//! rule set and settings atomically, and reading counters.
//!
//! A commit never changes what the live program sees until its switch. The rule tries and
//! the config slots are double-buffered (slot `i` = config `i` + trie `i`): the change is
//! written into the inactive trie and the inactive config slot, and then one 32-bit word (the
//! selector) switches both live. A commit that fails before the switch has only touched the
//! inactive slot, so the live rules and settings are exactly what they were.
//!
//! After the switch (and an RCU grace period, so that no program run still reads the old
//! trie) the same change is applied to the other trie, so **both tries hold the same rule set
//! after every commit**. That is what makes small edits cheap: `rules add/del` is applied as a
//! delta (a few map updates per trie), never as a read and rewrite of the whole trie. Each
//! config slot records the generation its trie was synced to; when the two differ (a commit
//! that died half-way) or are unknown, the next commit is a full sync that reads both tries.
//!
//! Rule ids are the keys of the per-rule counters (a per-CPU hash filled by the program on a
//! rule's first match). They come from a counter in the selector slot that only grows, so a new
//! prefix never reuses the id, and the counters, of a rule that either trie still holds.
//!
//! **Capacity** is exactly `max_rules` live rules in each trie, whatever the set before: a
//! commit writes its removals before its additions, so a set replaced by a disjoint one of the
//! same size, or a full map that loses one prefix and gains another, always fits. Ids are not
//! bounded by the map size (they only key the counter hash). Before the growing counter, ids
//! were taken from `0..max_rules` minus the ids either trie held, so replacing 150k rules by
//! 150k others needed 300k ids and failed as "rule map full", and a full map had no free id
//! for any new prefix.
//!
//! **Counters across a reload that drops a prefix and brings it back.** A full commit (a reload)
//! remembers the prefix and id of every rule it removes (the *retired* rules, in this `Maps`,
//! i.e. for the life of the daemon) and keeps their counters; a later full commit that brings
//! such a prefix back gives it its old id again, so its counters continue instead of restarting
//! from zero (the id is free: no trie holds it, and ids are never handed out twice). The memory
//! is bounded: it keeps the most recently retired rules, at most the counter hash's room beyond
//! `max_rules` (the hash has `2 x max_rules` entries: `max_rules` for the live rules, as many
//! for retired ones, so the counters of live rules always have room, also during a commit that
//! replaces every rule); the counters of a rule that drops out of that memory are deleted. Delta
//! edits (`rules del` from the CLI, a process of its own) delete the counters of what they
//! remove at once, and a daemon restart forgets the retired rules (the next full commit deletes
//! their counters).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    os::fd::AsFd as _,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{
        Array, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues, lpm_trie::Key,
    },
};
use guard_common::{
    Action, CONFIG_FLAG_QUARANTINE, CONFIG_FLAG_QUARANTINE_ALL, CONFIG_SELECTOR,
    CUSTOMER_FLAG_INHERIT, Config, CustomerKeyData, CustomerValue, GlobalCounters, RuleCounters,
    RuleKeyData, RuleValue, SourceKey, SourceStats,
    limits::{
        LimitConfig, LimitParams, QUARANTINE_SCOPE_ALL, Quarantine, RULE_FLAG_LIMIT, Subject,
        limit_key,
    },
    maps::names,
};
use thiserror::Error;

use super::sys::{self, wait_for_readers};
use crate::model::{
    customers::CustomerEntry,
    rules::{Origin, Prefix, Rule, RuleSet},
    settings::{Settings, SettingsError},
};

/// Maps pinned next to [`PINNED_MAPS`] so calls, sources, queued events and customers survive a
/// restart (each may be missing in pins made before it existed).
pub const AUX_PINNED: [&str; 11] = [
    names::CALLS,
    names::SOURCES,
    names::EVENTS,
    names::CUSTOMERS[0],
    names::CUSTOMERS[1],
    names::CUSTOMER_STATS,
    names::LIMITS,
    names::LIMIT_CONFIG,
    names::BUCKETS,
    names::QUARANTINE,
    names::WINDOWS,
];

/// Every map userspace works with, by pin name.
pub const PINNED_MAPS: [&str; 6] = [
    names::RULES[0],
    names::RULES[1],
    names::RULE_STATS,
    names::COUNTERS,
    names::CONFIG,
    names::SIP_PORTS,
];

/// The maps whose size `max_rules` sets: the rule tries hold `max_rules` entries.
pub const SIZED_BY_MAX_RULES: [&str; 2] = [names::RULES[0], names::RULES[1]];

/// The counter hash holds this many entries per `max_rules`: the live rules' counters, and as
/// many of rules removed by reloads that may come back (see the module docs). It allocates per
/// entry present (no preallocation), so the factor costs only its bucket array up front.
pub const STATS_PER_RULE: u32 = 2;

/// `max_entries` of the counter hash for `max_rules`.
pub fn stats_entries(max_rules: u32) -> u32 {
    max_rules.saturating_mul(STATS_PER_RULE)
}

/// Rules removed by full commits whose ids (and counters) are kept for a while, so that a
/// prefix that comes back gets its id back. Bounded: the oldest are forgotten first.
#[derive(Debug, Default)]
struct Retired {
    ids: HashMap<TrieKey, u32>,
    /// In the order of retirement; entries whose key was taken back or retired again since are
    /// stale (their id differs from `ids`) and skipped.
    order: std::collections::VecDeque<(TrieKey, u32)>,
}

impl Retired {
    /// Remembers `key` -> `id`. Returns the ids forgotten to stay within `max`.
    fn remember(&mut self, key: TrieKey, id: u32, max: usize) -> Vec<u32> {
        self.ids.insert(key, id);
        self.order.push_back((key, id));
        let mut gone = Vec::new();
        while self.ids.len() > max {
            let Some((k, i)) = self.order.pop_front() else {
                break;
            };
            if self.ids.get(&k) == Some(&i) {
                self.ids.remove(&k);
                gone.push(i);
            }
        }
        if self.order.len() > 2 * self.ids.len() + 1024 {
            let ids = &self.ids;
            self.order.retain(|(k, i)| ids.get(k) == Some(i));
        }
        gone
    }

    /// The id `key` had, if it is remembered (and forgets it).
    fn take(&mut self, key: &TrieKey) -> Option<u32> {
        self.ids.remove(key)
    }
}

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map `{name}`: {action} failed")]
    Map {
        name: &'static str,
        action: String,
        #[source]
        source: MapError,
    },
    #[error("the eBPF object has no map `{0}`; the build is inconsistent")]
    Missing(&'static str),
    #[error("pinned map {path}: cannot open")]
    OpenPin {
        path: String,
        #[source]
        source: MapError,
    },
    #[error(
        "pinned map {path} was made by an older sipguard (per-rule counters in an array); restart the daemon (`sipguard run`) once to upgrade the pinned state"
    )]
    LegacyStats { path: String },
    #[error("{path}: unpin failed")]
    Unpin {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid settings")]
    Settings(#[from] SettingsError),
    #[error(
        "the rule map is full: {wanted} rules do not fit (the rule map holds at most {max}; raise max_rules in [settings], then `sipguard detach --iface IF` and restart the daemon to resize it); nothing was changed"
    )]
    Full { wanted: usize, max: u32 },
    #[error(
        "the new rules are live, but bringing the standby rule trie up to date failed (the next commit repairs it)"
    )]
    Standby(#[source] Box<MapsError>),
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
    #[error(
        "the customer map is full: {wanted} customer entries (sources x VLANs) do not fit (it holds at most {max}); nothing was changed"
    )]
    CustomersFull { wanted: usize, max: u32 },
    #[error(
        "the pinned maps have no customer maps (made by an older sipguard): restart the daemon (`sipguard run`) once to add them"
    )]
    NoCustomerMaps,
    #[error(
        "the pinned maps have no limit maps (made by an older sipguard): restart the daemon (`sipguard run`) once to add them"
    )]
    NoLimitMaps,
}

fn map_err(name: &'static str, action: impl Into<String>) -> impl FnOnce(MapError) -> MapsError {
    let action = action.into();
    move |source| MapsError::Map {
        name,
        action,
        source,
    }
}

/// The errno of a failed map syscall.
fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn syscall_err(call: &'static str, io_error: std::io::Error) -> MapError {
    MapError::SyscallError(aya::sys::SyscallError { call, io_error })
}

fn not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound) || errno(e) == Some(libc::ENOENT)
}

type Trie = LpmTrie<MapData, RuleKeyData, RuleValue>;
type CustomerTrie = LpmTrie<MapData, CustomerKeyData, CustomerValue>;

/// The config flags of quarantine settings `q`.
fn quarantine_flags(q: &LimitConfig) -> u32 {
    let mut flags = 0;
    if q.is_on() {
        flags |= CONFIG_FLAG_QUARANTINE;
        if q.flags & QUARANTINE_SCOPE_ALL != 0 {
            flags |= CONFIG_FLAG_QUARANTINE_ALL;
        }
    }
    flags
}

/// What turns customer trie entries `have` into `wanted`: removals, then writes.
fn customer_diff(
    have: &HashMap<CustomerKey, CustomerValue>,
    wanted: &HashMap<CustomerKey, CustomerValue>,
) -> CustomerOps {
    let mut ops: CustomerOps = have
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .map(|k| (*k, None))
        .collect();
    ops.extend(
        wanted
            .iter()
            .filter(|(k, v)| have.get(k) != Some(v))
            .map(|(k, v)| (*k, Some(*v))),
    );
    ops
}

/// A customer trie key that can be compared and hashed: `(prefix_len, scope, addr)`.
type CustomerKey = (u32, [u8; 4], [u32; 4]);

fn customer_key(e: &CustomerEntry) -> (CustomerKey, CustomerValue) {
    let (len, data) = CustomerKeyData::cidr(e.vlan, e.net.addr(), e.net.prefix_len());
    (
        (len, data.scope, data.addr),
        CustomerValue {
            id: e.customer,
            policy: e.policy,
            flags: if e.inherit { CUSTOMER_FLAG_INHERIT } else { 0 },
            _pad: 0,
            prefix_len: len,
        },
    )
}

fn aya_customer_key(k: &CustomerKey) -> Key<CustomerKeyData> {
    Key::new(
        k.0,
        CustomerKeyData {
            scope: k.1,
            addr: k.2,
        },
    )
}

/// Writes to a customer trie: set (`Some`) or remove (`None`).
type CustomerOps = Vec<(CustomerKey, Option<CustomerValue>)>;
type Stats = PerCpuHashMap<MapData, u32, RuleCounters>;

/// What a commit changed, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub total: usize,
    /// Whether the commit was applied as a delta (no full read of the tries).
    pub delta: bool,
}

/// A small edit of the live rule set: prefixes to set (added, or their action changed) and
/// prefixes to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub set: Vec<(Prefix, Action)>,
    pub remove: Vec<Prefix>,
}

/// One write to a trie: set the rule of a key, or remove it (`None`).
type Op = (TrieKey, Option<RuleValue>);

/// A rule trie key that can be compared and hashed (aya's `Key` is packed and has neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrieKey {
    pub prefix_len: u32,
    pub data: RuleKeyData,
}

impl TrieKey {
    /// The key of `prefix`'s rule.
    pub fn of(prefix: &Prefix) -> Self {
        let k = prefix.key();
        Self {
            prefix_len: k.prefix_len,
            data: k.data,
        }
    }

    fn aya(self) -> Key<RuleKeyData> {
        Key::new(self.prefix_len, self.data)
    }

    /// The prefix this key was made from (`None` for a key sipguard never writes).
    pub fn prefix(&self) -> Option<Prefix> {
        Prefix::from_key(self.prefix_len, &self.data)
    }

    /// The trie value of a rule with this key (`flags`: [`RULE_FLAG_LIMIT`] for a rule with
    /// limits).
    fn value(self, id: u32, action: Action, flags: u8) -> RuleValue {
        RuleValue {
            id,
            action: action as u8,
            flags,
            prefix_len: self.prefix_len as u16,
        }
    }
}

impl From<Key<RuleKeyData>> for TrieKey {
    fn from(k: Key<RuleKeyData>) -> Self {
        Self {
            prefix_len: k.prefix_len(),
            data: k.data(),
        }
    }
}

impl std::fmt::Display for TrieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix() {
            Some(p) => write!(f, "{p}"),
            None => write!(f, "key/{}", self.prefix_len),
        }
    }
}

/// A commit that is live (switched) and whose standby trie, the one that was live before, still
/// has to get the same change: [`Maps::finish`] applies it after an RCU grace period.
#[must_use = "finish the commit with Maps::finish (or Maps::commit does both)"]
pub struct Pending {
    /// The standby slot (the one that was live before the switch).
    slot: u32,
    ops: Vec<Op>,
    /// The config to write into the standby slot afterwards (same settings, generation, count).
    config: Config,
    /// Counter entries to delete: ids of removed rules.
    dead_ids: Vec<u32>,
    /// Full commits: every live or retired id, so that any other counter entry can go.
    live_ids: Option<BTreeSet<u32>>,
    /// The standby customer trie's writes.
    customer_ops: CustomerOps,
    /// Commits that set the customers: the ids of the customers that stay, so that the
    /// per-customer counters of the others go (a later customer never inherits them).
    live_customers: Option<HashSet<u32>>,
    /// Full commits: the limits and quarantine settings the standby slot gets.
    limits: Option<(Vec<(u32, LimitParams)>, LimitConfig)>,
}

impl Pending {
    /// Whether the standby trie needs any write (without one, no grace period is needed).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.customer_ops.is_empty()
    }
}

/// Maps that pins made by older versions may lack.
struct Later {
    sources: Option<Map>,
    customers: Option<[Map; 2]>,
    customer_stats: Option<Map>,
    limits: Option<Map>,
    limit_config: Option<Map>,
    quarantine: Option<Map>,
}

/// The filter's maps.
pub struct Maps {
    rules: [Trie; 2],
    rule_stats: Stats,
    counters: PerCpuArray<MapData, GlobalCounters>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u8>,
    /// Sources per rule (absent in pins made before it existed).
    sources: Option<aya::maps::HashMap<MapData, SourceKey, SourceStats>>,
    /// max_entries of the rule tries (the smaller one) and of the counter hash.
    capacity: u32,
    stats_capacity: u32,
    /// Whether the kernel takes batch commands on the rule tries (cleared at the first refusal).
    batch: bool,
    /// Rules removed by full commits, whose ids and counters are kept (see the module docs).
    retired: Retired,
    /// The customer tries, double-buffered like the rule tries (absent in pins made before
    /// customers existed).
    customers: Option<[CustomerTrie; 2]>,
    /// Per (customer, rule) counters (absent in pins made before they existed).
    customer_stats: Option<PerCpuHashMap<MapData, u64, RuleCounters>>,
    /// Rules' limits per slot, the quarantine settings per slot, the quarantined subjects
    /// (absent in pins made before limits existed).
    limits: Option<aya::maps::HashMap<MapData, u64, LimitParams>>,
    limit_config: Option<Array<MapData, LimitConfig>>,
    quarantine_map: Option<aya::maps::HashMap<MapData, Subject, Quarantine>>,
    /// The quarantine settings the next full commit makes live (`None`: no quarantine). Opened
    /// from pins, it is the live slot's, so that an edit keeps it.
    pub quarantine: Option<LimitConfig>,
}

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps its own references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        let (a, b) = (take(names::RULES[0])?, take(names::RULES[1])?);
        let (stats, counters) = (take(names::RULE_STATS)?, take(names::COUNTERS)?);
        let (config, ports) = (take(names::CONFIG)?, take(names::SIP_PORTS)?);
        let customers = [take(names::CUSTOMERS[0])?, take(names::CUSTOMERS[1])?];
        let sources = ebpf.take_map(names::SOURCES);
        let customer_stats = ebpf.take_map(names::CUSTOMER_STATS);
        let limits = ebpf.take_map(names::LIMITS);
        let limit_config = ebpf.take_map(names::LIMIT_CONFIG);
        let quarantine = ebpf.take_map(names::QUARANTINE);
        Self::from_maps(
            [a, b],
            stats,
            counters,
            config,
            ports,
            Later {
                sources,
                customers: Some(customers),
                customer_stats,
                limits,
                limit_config,
                quarantine,
            },
        )
    }

    /// Opens the maps pinned in `dir` (as [`Maps::pin`] left them).
    pub fn from_pins(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| MapsError::OpenPin {
                    path: path.display().to_string(),
                    source,
                })
        };
        let (a, b) = (open(names::RULES[0])?, open(names::RULES[1])?);
        let (stats, counters) = (open(names::RULE_STATS)?, open(names::COUNTERS)?);
        if matches!(stats, Map::PerCpuArray(_)) {
            return Err(MapsError::LegacyStats {
                path: dir.join(names::RULE_STATS).display().to_string(),
            });
        }
        let (config, ports) = (open(names::CONFIG)?, open(names::SIP_PORTS)?);
        // Maps that pins made by older versions may lack.
        let optional = |name: &'static str| dir.join(name).exists().then(|| open(name)).transpose();
        let sources = optional(names::SOURCES)?;
        let customers = if names::CUSTOMERS.iter().all(|n| dir.join(n).exists()) {
            Some([open(names::CUSTOMERS[0])?, open(names::CUSTOMERS[1])?])
        } else {
            None
        };
        let customer_stats = optional(names::CUSTOMER_STATS)?;
        let limits = optional(names::LIMITS)?;
        let limit_config = optional(names::LIMIT_CONFIG)?;
        let quarantine = optional(names::QUARANTINE)?;
        Self::from_maps(
            [a, b],
            stats,
            counters,
            config,
            ports,
            Later {
                sources,
                customers,
                customer_stats,
                limits,
                limit_config,
                quarantine,
            },
        )
    }

    fn from_maps(
        [a, b]: [Map; 2],
        stats: Map,
        counters: Map,
        config: Map,
        ports: Map,
        later: Later,
    ) -> Result<Self, MapsError> {
        let Later {
            sources,
            customers,
            customer_stats,
            limits,
            limit_config,
            quarantine,
        } = later;
        let rules = [
            Trie::try_from(a).map_err(map_err(names::RULES[0], "open"))?,
            Trie::try_from(b).map_err(map_err(names::RULES[1], "open"))?,
        ];
        let rule_stats = Stats::try_from(stats).map_err(map_err(names::RULE_STATS, "open"))?;
        let max_entries = |m: &MapData, name: &'static str| {
            m.info()
                .map(|i| i.max_entries())
                .map_err(map_err(name, "read map info"))
        };
        let capacity = max_entries(rules[0].map(), names::RULES[0])?
            .min(max_entries(rules[1].map(), names::RULES[1])?);
        let stats_capacity = max_entries(rule_stats.map(), names::RULE_STATS)?;
        Ok(Self {
            rules,
            rule_stats,
            counters: PerCpuArray::try_from(counters).map_err(map_err(names::COUNTERS, "open"))?,
            config: Array::try_from(config).map_err(map_err(names::CONFIG, "open"))?,
            ports: Array::try_from(ports).map_err(map_err(names::SIP_PORTS, "open"))?,
            sources: sources
                .map(|m| aya::maps::HashMap::try_from(m).map_err(map_err(names::SOURCES, "open")))
                .transpose()?,
            capacity,
            stats_capacity,
            batch: true,
            retired: Retired::default(),
            customers: match customers {
                Some([a, b]) => Some([
                    CustomerTrie::try_from(a).map_err(map_err(names::CUSTOMERS[0], "open"))?,
                    CustomerTrie::try_from(b).map_err(map_err(names::CUSTOMERS[1], "open"))?,
                ]),
                None => None,
            },
            customer_stats: customer_stats
                .map(|m| PerCpuHashMap::try_from(m).map_err(map_err(names::CUSTOMER_STATS, "open")))
                .transpose()?,
            limits: limits
                .map(|m| aya::maps::HashMap::try_from(m).map_err(map_err(names::LIMITS, "open")))
                .transpose()?,
            limit_config: limit_config
                .map(|m| Array::try_from(m).map_err(map_err(names::LIMIT_CONFIG, "open")))
                .transpose()?,
            quarantine_map: quarantine
                .map(|m| {
                    aya::maps::HashMap::try_from(m).map_err(map_err(names::QUARANTINE, "open"))
                })
                .transpose()?,
            quarantine: None,
        }
        .with_live_quarantine())
    }

    /// Takes the live slot's quarantine settings as the ones to keep.
    fn with_live_quarantine(mut self) -> Self {
        let live = self.active_slot().unwrap_or(0);
        self.quarantine = self
            .limit_config
            .as_ref()
            .and_then(|a| a.get(&live, 0).ok())
            .filter(LimitConfig::is_on);
        self
    }

    /// Writes the limits of slot `slot`: its (rule id, params) entries replace the slot's old
    /// ones, and its quarantine settings.
    fn write_limits(
        &mut self,
        slot: u32,
        entries: &[(u32, LimitParams)],
        quarantine: LimitConfig,
    ) -> Result<(), MapsError> {
        if let Some(m) = &mut self.limits {
            let stale: Vec<u64> = m
                .keys()
                .filter_map(Result::ok)
                .filter(|k| (k >> 32) as u32 == slot)
                .filter(|k| !entries.iter().any(|(id, _)| *id == *k as u32))
                .collect();
            for k in stale {
                match m.remove(&k) {
                    Ok(()) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(map_err(names::LIMITS, "remove")(e)),
                }
            }
            for (id, p) in entries {
                m.insert(limit_key(slot, *id), *p, 0)
                    .map_err(map_err(names::LIMITS, format!("write rule {id}")))?;
            }
        } else if !entries.is_empty() {
            return Err(MapsError::NoLimitMaps);
        }
        if let Some(a) = &mut self.limit_config {
            a.set(slot, quarantine, 0)
                .map_err(map_err(names::LIMIT_CONFIG, format!("write slot {slot}")))?;
        } else if quarantine.is_on() {
            return Err(MapsError::NoLimitMaps);
        }
        Ok(())
    }

    /// The quarantined customers and sources, with their entries.
    pub fn quarantined(&self) -> Result<Vec<(Subject, Quarantine)>, MapsError> {
        let Some(m) = &self.quarantine_map else {
            return Ok(Vec::new());
        };
        m.iter()
            .filter(|kv| !matches!(kv, Err(e) if not_found(e)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(names::QUARANTINE, "iterate"))
    }

    /// Quarantines `who` (`Some`) or releases it (`None`); a release of a subject that is not
    /// quarantined is `Ok(false)`.
    pub fn set_quarantine(
        &mut self,
        who: &Subject,
        entry: Option<Quarantine>,
    ) -> Result<bool, MapsError> {
        let Some(m) = &mut self.quarantine_map else {
            return Err(MapsError::NoLimitMaps);
        };
        match entry {
            Some(q) => m
                .insert(*who, q, 0)
                .map(|()| true)
                .map_err(map_err(names::QUARANTINE, "insert")),
            None => match m.remove(who) {
                Ok(()) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(map_err(names::QUARANTINE, "remove")(e)),
            },
        }
    }

    /// Writes `rules` (from [`take_unscoped_tries`]) into both tries as they are, ids
    /// included, and marks both slots unknown, so that the next commit is a full sync that
    /// keeps these ids.
    pub fn restore_rules(&mut self, rules: &[(TrieKey, RuleValue)]) -> Result<(), MapsError> {
        let ops: Vec<Op> = rules.iter().map(|(k, v)| (*k, Some(*v))).collect();
        for slot in 0..2 {
            self.mark_dirty(slot)?;
            self.apply_ops(slot, &ops, rules.len())?;
        }
        Ok(())
    }

    /// The customer trie `slot`'s entries.
    fn customer_entries(
        &self,
        slot: u32,
    ) -> Result<HashMap<CustomerKey, CustomerValue>, MapsError> {
        let Some(tries) = &self.customers else {
            return Ok(HashMap::new());
        };
        let name = names::CUSTOMERS[slot as usize & 1];
        let trie = &tries[slot as usize & 1];
        let mut out = HashMap::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(name, "iterate keys"))?;
            match trie.get(&key, 0) {
                Ok(v) => {
                    let d = key.data();
                    out.insert((key.prefix_len(), d.scope, d.addr), v);
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(name, "read customer")(e)),
            }
        }
        Ok(out)
    }

    /// The live customer entry that a frame from `ip` on outer VLAN `vlan` belongs to: the
    /// kernel's own lookups in its trie (full-length keys give the longest match), the longer of
    /// the VLAN-specific and the any-VLAN match, the VLAN-specific one on a tie.
    pub fn customer_for(
        &self,
        vlan: u16,
        ip: std::net::IpAddr,
    ) -> Result<Option<CustomerValue>, MapsError> {
        let Some(tries) = &self.customers else {
            return Ok(None);
        };
        let slot = self.active_slot()?;
        let trie = &tries[slot as usize & 1];
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        let get = |vlan: u16| -> Result<Option<CustomerValue>, MapsError> {
            let (len, data) = CustomerKeyData::cidr(vlan, ip, bits);
            match trie.get(&Key::new(len, data), 0) {
                Ok(v) => Ok(Some(v)),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(map_err(names::CUSTOMERS[slot as usize & 1], "look up")(e)),
            }
        };
        let any = get(0)?;
        let tagged = if vlan != 0 { get(vlan)? } else { None };
        Ok(match (tagged, any) {
            (Some(t), Some(a)) if a.prefix_len > t.prefix_len => Some(a),
            (Some(t), _) => Some(t),
            (None, a) => a,
        })
    }

    /// The customers of the live slot, as `(VLAN, CIDR, value)`.
    pub fn customers(&self) -> Result<Vec<(u16, std::net::IpAddr, u32, CustomerValue)>, MapsError> {
        let live = self.active_slot()?;
        let mut out: Vec<_> = self
            .customer_entries(live)?
            .into_iter()
            .map(|((len, scope, addr), v)| {
                let (vlan, ip, bits) = CustomerKeyData { scope, addr }.decode(len);
                (vlan, ip, bits, v)
            })
            .collect();
        out.sort_by_key(|(vlan, ip, bits, _)| (*vlan, *ip, *bits));
        Ok(out)
    }

    /// Applies `ops` to customer trie `slot`: removals first, so a full trie can be replaced.
    fn apply_customer_ops(&mut self, slot: u32, ops: &CustomerOps) -> Result<(), MapsError> {
        if ops.is_empty() {
            return Ok(());
        }
        let Some(tries) = &mut self.customers else {
            return Err(MapsError::NoCustomerMaps);
        };
        let name = names::CUSTOMERS[slot as usize & 1];
        let trie = &mut tries[slot as usize & 1];
        let max = trie.map().info().map(|i| i.max_entries()).unwrap_or(0);
        for (k, _) in ops.iter().filter(|(_, v)| v.is_none()) {
            match trie.remove(&aya_customer_key(k)) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(name, "remove customer")(e)),
            }
        }
        let wanted = ops.iter().filter(|(_, v)| v.is_some()).count();
        for (k, v) in ops {
            let Some(v) = v else { continue };
            trie.insert(&aya_customer_key(k), *v, 0)
                .map_err(|e| match errno(&e) {
                    Some(libc::ENOSPC) | Some(libc::E2BIG) => {
                        MapsError::CustomersFull { wanted, max }
                    }
                    _ => map_err(name, "insert customer")(e),
                })?;
        }
        Ok(())
    }

    /// Rules each trie holds at most (its `max_entries`: `max_rules` when it was created).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The `max_rules` the counter hash was sized for (its `max_entries` is
    /// [`stats_entries`] of it; pins made before that have half of it).
    pub fn stats_capacity(&self) -> u32 {
        self.stats_capacity / STATS_PER_RULE
    }

    /// How many retired rules may keep their counters: the hash's room beyond the live rules.
    fn retired_room(&self) -> usize {
        self.stats_capacity.saturating_sub(self.capacity) as usize
    }

    /// Whether a full commit gave `prefix`, now retired, its old id back (its counters go on).
    #[cfg(any(test, feature = "test-util"))]
    pub fn retired_id(&self, prefix: &Prefix) -> Option<u32> {
        self.retired.ids.get(&TrieKey::of(prefix)).copied()
    }

    fn slot(&self, slot: u32) -> Result<Config, MapsError> {
        self.config
            .get(&slot, 0)
            .map_err(map_err(names::CONFIG, format!("read slot {slot}")))
    }

    fn set_slot(&mut self, slot: u32, config: Config) -> Result<(), MapsError> {
        self.config
            .set(slot, config, 0)
            .map_err(map_err(names::CONFIG, format!("write slot {slot}")))
    }

    /// The live slot (0 or 1): which config slot and rule trie the program uses.
    pub fn active_slot(&self) -> Result<u32, MapsError> {
        Ok(self.slot(CONFIG_SELECTOR)?.active & 1)
    }

    /// The live configuration.
    pub fn config(&self) -> Result<Config, MapsError> {
        self.slot(self.active_slot()?)
    }

    /// The generation both tries hold, when they are known to hold the same rule set.
    fn in_sync(&self) -> Result<Option<(u32, Config)>, MapsError> {
        let live = self.active_slot()?;
        let (l, s) = (self.slot(live)?, self.slot(live ^ 1)?);
        Ok((l.generation != 0 && l.generation == s.generation).then_some((l.generation, l)))
    }

    /// Whether both tries are known to hold the same rule set (so edits can be deltas).
    #[cfg(any(test, feature = "test-util"))]
    pub fn tries_in_sync(&self) -> Result<bool, MapsError> {
        Ok(self.in_sync()?.is_some())
    }

    /// The number of live rules: recorded by the last commit, or counted when unknown.
    pub fn rule_count(&self) -> Result<usize, MapsError> {
        match self.in_sync()? {
            Some((_, live)) => Ok(live.rule_count as usize),
            None => Ok(self.rules()?.len()),
        }
    }

    /// Marks config slot `slot` as being rewritten (generation 0), before its trie changes. The
    /// slot is inactive: the program never reads it.
    fn mark_dirty(&mut self, slot: u32) -> Result<(), MapsError> {
        let mut c = self.slot(slot)?;
        if c.generation != 0 {
            c.generation = 0;
            self.set_slot(slot, c)?;
        }
        Ok(())
    }

    /// The live settings, as a full commit of the live rules needs them.
    pub fn live_settings(&self) -> Result<Settings, MapsError> {
        let mut settings = Settings::live(&self.config()?, self.sip_ports()?);
        settings.max_rules = self.capacity();
        Ok(settings)
    }

    /// The configured SIP ports.
    pub fn sip_ports(&self) -> Result<Vec<u16>, MapsError> {
        // One batch syscall for the 65,536 entries where the kernel has it.
        let fd = self.ports.map().fd().as_fd();
        match sys::lookup_all::<u32, u8>(fd) {
            Ok(all) => {
                return Ok(all
                    .into_iter()
                    .filter(|&(_, v)| v != 0)
                    .map(|(port, _)| port as u16)
                    .collect());
            }
            Err(e) if sys::unsupported(&e) => {}
            Err(e) => {
                return Err(map_err(names::SIP_PORTS, "read ports")(syscall_err(
                    "BPF_MAP_LOOKUP_BATCH",
                    e,
                )));
            }
        }
        let mut out = Vec::new();
        for (port, v) in self.ports.iter().enumerate() {
            if v.map_err(map_err(names::SIP_PORTS, format!("read port {port}")))? != 0 {
                out.push(port as u16);
            }
        }
        Ok(out)
    }

    /// The entries of trie `slot` whose keys a [`Prefix`] makes (anything else was never written
    /// by sipguard and is ignored rather than misread), in the trie's order.
    fn trie_entries(&self, slot: u32) -> Result<Vec<(TrieKey, RuleValue)>, MapsError> {
        let name = names::RULES[slot as usize & 1];
        let trie = &self.rules[slot as usize & 1];
        let valid = |k: &TrieKey| Prefix::from_key(k.prefix_len, &k.data).is_some();
        match sys::lookup_all::<Key<RuleKeyData>, RuleValue>(trie.map().fd().as_fd()) {
            Ok(all) => {
                return Ok(all
                    .into_iter()
                    .map(|(k, v)| (TrieKey::from(k), v))
                    .filter(|(k, _)| valid(k))
                    .collect());
            }
            Err(e) if sys::unsupported(&e) => {}
            Err(e) => {
                return Err(map_err(name, "read rules")(syscall_err(
                    "BPF_MAP_LOOKUP_BATCH",
                    e,
                )));
            }
        }
        let mut out = Vec::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(name, "iterate keys"))?;
            let k = TrieKey::from(key);
            if !valid(&k) {
                continue;
            }
            // Exact-key lookup: a full-length key returns the rule itself.
            match trie.get(&key, 0) {
                Ok(value) => out.push((k, value)),
                // Removed between iteration and lookup (a concurrent commit): skip it.
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(name, format!("read rule {k}"))(e)),
            }
        }
        Ok(out)
    }

    /// The rules in trie `slot` (0 or 1), live or standby, as the kernel holds them.
    pub fn trie_rules(&self, slot: u32) -> Result<BTreeMap<Prefix, RuleValue>, MapsError> {
        Ok(self
            .trie_entries(slot)?
            .into_iter()
            .filter_map(|(k, value)| Some((k.prefix()?, value)))
            .collect())
    }

    /// The live rules, as the kernel holds them.
    pub fn rules(&self) -> Result<BTreeMap<Prefix, RuleValue>, MapsError> {
        self.trie_rules(self.active_slot()?)
    }

    /// The live rules as a rule set: prefix and action only (the kernel keeps no comments or
    /// countries), marked as runtime rules.
    pub fn rule_set(&self) -> Result<RuleSet, MapsError> {
        Ok(self
            .rules()?
            .into_iter()
            .filter_map(|(prefix, v)| {
                let action = Action::from_u8(v.action)?;
                Some((prefix, Rule::new(action, Origin::Runtime)))
            })
            .collect())
    }

    /// Longest-prefix lookup of a number key in the live trie (what the program does).
    pub fn lookup(&self, key: &guard_common::LookupKey) -> Result<Option<RuleValue>, MapsError> {
        let slot = self.active_slot()? as usize;
        let k = Key::new(key.prefix_len, key.data);
        match self.rules[slot].get(&k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(map_err(names::RULES[slot], "lookup")(e)),
        }
    }

    /// The rule of exactly `prefix` in trie `slot`: a longest-prefix lookup with the rule's own
    /// key, which is an exact hit when the rule found has that key's length. The inner `Err`
    /// means the trie holds values of an older version (no prefix length), which cannot tell.
    #[allow(clippy::result_unit_err)]
    fn exact_in(
        &self,
        slot: u32,
        prefix: &Prefix,
    ) -> Result<Result<Option<RuleValue>, ()>, MapsError> {
        let k = TrieKey::of(prefix);
        let slot = slot as usize & 1;
        match self.rules[slot].get(&k.aya(), 0) {
            Ok(v) if v.prefix_len == 0 => Ok(Err(())),
            Ok(v) => Ok(Ok((u32::from(v.prefix_len) == k.prefix_len).then_some(v))),
            Err(e) if not_found(&e) => Ok(Ok(None)),
            Err(e) => Err(map_err(names::RULES[slot], format!("look up {prefix}"))(e)),
        }
    }

    /// The live rule of exactly `prefix`, if there is one.
    pub fn live_rule(&self, prefix: &Prefix) -> Result<Option<RuleValue>, MapsError> {
        let live = self.active_slot()?;
        match self.exact_in(live, prefix)? {
            Ok(v) => Ok(v),
            // Values of an older version: ask the trie itself (slow, but correct).
            Err(()) => Ok(self.rules()?.remove(prefix)),
        }
    }

    /// Writes one rule straight into trie `slot` (see `Filter::insert_rule`). The other trie
    /// no longer matches it, so its slot is marked unknown: the next commit syncs both.
    #[cfg(any(test, feature = "test-util"))]
    pub fn insert_live(
        &mut self,
        slot: usize,
        key: &Key<RuleKeyData>,
        value: RuleValue,
    ) -> Result<(), MapsError> {
        let other = (slot as u32 & 1) ^ 1;
        self.mark_dirty(other)?;
        self.rules[slot & 1]
            .insert(key, value, 0)
            .map_err(map_err(names::RULES[slot & 1], "insert"))
    }

    /// Hands out `n` new rule ids from the selector slot's counter. `None` when the u32 id
    /// space would wrap (the caller then does a full commit, which finds free ids).
    fn take_ids(&mut self, n: usize) -> Result<Option<u32>, MapsError> {
        if n == 0 {
            return Ok(Some(0));
        }
        let mut sel = self.slot(CONFIG_SELECTOR)?;
        let first = sel.next_rule_id;
        let Some(end) = u32::try_from(n).ok().and_then(|n| first.checked_add(n)) else {
            return Ok(None);
        };
        // Written before any trie holds the ids; `active` is rewritten with the value it has.
        sel.next_rule_id = end;
        self.set_slot(CONFIG_SELECTOR, sel)?;
        Ok(Some(first))
    }

    /// Writes `ops` into trie `slot`. Removals first, so that a full trie makes room. In
    /// batches of thousands per syscall where the kernel has batch commands.
    fn apply_ops(&mut self, slot: u32, ops: &[Op], total: usize) -> Result<(), MapsError> {
        let name = names::RULES[slot as usize & 1];
        let max = self.capacity;
        let removes: Vec<Key<RuleKeyData>> = ops
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.aya())
            .collect();
        let (sets, values): (Vec<Key<RuleKeyData>>, Vec<RuleValue>) = ops
            .iter()
            .filter_map(|(k, v)| Some((k.aya(), (*v)?)))
            .unzip();
        let insert_err = |key: &Key<RuleKeyData>, e: MapError| match errno(&e) {
            Some(libc::ENOSPC) | Some(libc::E2BIG) => MapsError::Full { wanted: total, max },
            _ => map_err(name, format!("insert {}", TrieKey::from(*key)))(e),
        };
        let mut use_batch = self.batch;
        let trie = &mut self.rules[slot as usize & 1];
        let mut removed = 0;
        if use_batch {
            let (n, e) = sys::delete(trie.map().fd().as_fd(), &removes);
            removed = n;
            match e {
                None => {}
                Some(e) if n == 0 && sys::unsupported(&e) => use_batch = false,
                Some(e) => {
                    let key = TrieKey::from(removes[n]);
                    return Err(map_err(name, format!("remove {key}"))(syscall_err(
                        "BPF_MAP_DELETE_BATCH",
                        e,
                    )));
                }
            }
        }
        for key in &removes[removed..] {
            match trie.remove(key) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => {
                    let key = TrieKey::from(*key);
                    return Err(map_err(name, format!("remove {key}"))(e));
                }
            }
        }
        let mut set = 0;
        if use_batch {
            let (n, e) = sys::update(trie.map().fd().as_fd(), &sets, &values);
            set = n;
            match e {
                None => {}
                Some(e) if n == 0 && sys::unsupported(&e) => use_batch = false,
                Some(e) => {
                    return Err(insert_err(&sets[n], syscall_err("BPF_MAP_UPDATE_BATCH", e)));
                }
            }
        }
        for (key, value) in sets[set..].iter().zip(&values[set..]) {
            trie.insert(key, *value, 0)
                .map_err(|e| insert_err(key, e))?;
        }
        self.batch = use_batch;
        Ok(())
    }

    /// Stage 1 of a commit into the inactive slot `next`: mark it dirty, write `ops` into its
    /// trie, write `config` (with `generation`) into it, then switch. The caller has written
    /// the ports that must be there before the switch.
    fn stage_and_switch(
        &mut self,
        next: u32,
        ops: &[Op],
        mut config: Config,
        generation: u32,
        total: usize,
    ) -> Result<Config, MapsError> {
        self.mark_dirty(next)?;
        self.apply_ops(next, ops, total)?;
        config.active = next;
        config.generation = generation;
        config.rule_count = total as u32;
        config.next_rule_id = 0;
        self.set_slot(next, config)?;
        // The flip: one aligned 32-bit word changes in the selector.
        let mut sel = self.slot(CONFIG_SELECTOR)?;
        sel.active = next;
        self.config
            .set(CONFIG_SELECTOR, sel, 0)
            .map_err(map_err(names::CONFIG, "switch slot"))?;
        Ok(config)
    }

    /// Makes `settings` and `rules` live together, atomically (see the module docs), and
    /// brings the other trie up to date. Reads both tries: this is the full sync that reloads
    /// and restarts use; small edits go through [`Maps::stage_delta`].
    pub fn commit(
        &mut self,
        settings: &Settings,
        rules: &RuleSet,
    ) -> Result<CommitReport, MapsError> {
        self.commit_all(settings, rules, None)
    }

    /// [`Maps::commit`] with the customers too (`None`: the live customers stay), all three
    /// switched live together.
    pub fn commit_all(
        &mut self,
        settings: &Settings,
        rules: &RuleSet,
        customers: Option<&[CustomerEntry]>,
    ) -> Result<CommitReport, MapsError> {
        let (report, pending) = self.stage_full(settings, rules, customers)?;
        if !pending.is_empty() {
            wait_for_readers();
        }
        self.finish(pending)?;
        Ok(report)
    }

    /// The first half of [`Maps::commit_all`]: `settings`, `rules` and `customers` (`None`:
    /// the live ones) are live when it returns.
    pub fn stage_full(
        &mut self,
        settings: &Settings,
        rules: &RuleSet,
        customers: Option<&[CustomerEntry]>,
    ) -> Result<(CommitReport, Pending), MapsError> {
        let mut config = settings.to_config()?;
        if rules.len() > self.capacity as usize {
            return Err(MapsError::Full {
                wanted: rules.len(),
                max: self.capacity,
            });
        }
        let live = self.active_slot()?;
        let next = live ^ 1;
        let read = |slot| -> Result<HashMap<TrieKey, RuleValue>, MapsError> {
            Ok(self.trie_entries(slot)?.into_iter().collect())
        };
        let current = read(live)?;
        let staged = read(next)?;
        // The rule set by key, in its (prefix) order: consecutive writes share trie paths.
        let mut keyed: Vec<(TrieKey, Action)> = Vec::with_capacity(rules.len());
        keyed.extend(rules.iter().map(|(p, e)| (TrieKey::of(p), e.action)));
        // Rules with limits: their trie values carry RULE_FLAG_LIMIT, their params go into the
        // slot's entries of the limit map.
        let limited: HashMap<TrieKey, LimitParams> = rules
            .iter()
            .filter_map(|(p, e)| Some((TrieKey::of(p), e.limits.as_ref()?.params())))
            .collect();
        let flags_of = |k: &TrieKey| {
            if limited.contains_key(k) {
                RULE_FLAG_LIMIT
            } else {
                0
            }
        };

        // Ids: keep the live id of every prefix that stays; new prefixes get ids from the
        // growing counter, which starts above every id either trie holds.
        let used: BTreeSet<u32> = current
            .values()
            .chain(staged.values())
            .map(|v| v.id)
            .collect();
        let fresh = keyed
            .iter()
            .filter(|(k, _)| !current.contains_key(k))
            .count();
        let mut sel = self.slot(CONFIG_SELECTOR)?;
        let floor = used.last().map_or(0, |&m| m.saturating_add(1));
        let start = sel.next_rule_id.max(floor);
        let wrapped = u32::try_from(fresh)
            .ok()
            .and_then(|f| start.checked_add(f))
            .is_none();
        let mut ids: Box<dyn Iterator<Item = u32>> = if wrapped {
            // The id space is used up: start again from the lowest ids no trie holds.
            let retired: HashSet<u32> = self.retired.ids.values().copied().collect();
            let free: Vec<u32> = (0..u32::MAX)
                .filter(|id| !used.contains(id) && !retired.contains(id))
                .take(fresh)
                .collect();
            sel.next_rule_id = free.last().map_or(0, |&m| m + 1);
            Box::new(free.into_iter())
        } else {
            sel.next_rule_id = start + fresh as u32;
            Box::new(start..)
        };
        self.set_slot(CONFIG_SELECTOR, sel)?;

        let mut report = CommitReport {
            total: rules.len(),
            ..Default::default()
        };
        let mut wanted: Vec<(TrieKey, RuleValue)> = Vec::with_capacity(keyed.len());
        let mut fresh_ids = Vec::new();
        for (key, action) in keyed {
            let id = match current.get(&key) {
                Some(v) => {
                    if v.action != action as u8 || v.flags != flags_of(&key) {
                        report.changed += 1;
                    }
                    v.id
                }
                None => {
                    report.added += 1;
                    // A prefix that a recent reload removed: its old id, and so its counters,
                    // come back (no trie holds the id: ids are never handed out twice).
                    if let Some(id) = self.retired.take(&key).filter(|id| !used.contains(id)) {
                        wanted.push((key, key.value(id, action, flags_of(&key))));
                        continue;
                    }
                    let id = ids.next().expect("one id per new prefix");
                    if wrapped {
                        fresh_ids.push(id);
                    }
                    id
                }
            };
            wanted.push((key, key.value(id, action, flags_of(&key))));
        }
        drop(ids);
        // Recycled ids (after a wrap): their counters, of long-gone rules, start from zero.
        for id in fresh_ids {
            self.remove_stats(id)?;
        }

        // What turns `have` into `wanted`: removals (sorted), then the rules to write. The
        // cost follows the size of both, and nothing is hashed for an empty `have`.
        let diff = |have: &HashMap<TrieKey, RuleValue>| -> Vec<Op> {
            let mut gone: HashSet<TrieKey> = have.keys().copied().collect();
            let mut sets = Vec::with_capacity(wanted.len());
            for (k, v) in &wanted {
                if gone.is_empty() {
                    sets.push((*k, Some(*v)));
                    continue;
                }
                gone.remove(k);
                if have.get(k) != Some(v) {
                    sets.push((*k, Some(*v)));
                }
            }
            let mut ops: Vec<Op> = gone.into_iter().map(|k| (k, None)).collect();
            ops.sort_by_key(|(k, _)| *k);
            ops.extend(sets);
            ops
        };
        let stage_ops = diff(&staged);
        let standby_ops = diff(&current);
        report.removed = standby_ops.iter().filter(|(_, v)| v.is_none()).count();
        // The rules this commit removes are retired: their ids and counters are kept for a
        // while; those that drop out of the bounded memory lose their counters in `finish`.
        let room = self.retired_room();
        let mut dead_ids = Vec::new();
        for (k, _) in standby_ops.iter().filter(|(_, v)| v.is_none()) {
            if let Some(v) = current.get(k) {
                dead_ids.extend(self.retired.remember(*k, v.id, room));
            }
        }
        let generation = next_generation(self.slot(live)?.generation, self.slot(next)?.generation);

        // Customers: the standby trie is made equal to the wanted set before the switch, and
        // the other one after it (in `finish`), as for the rules.
        let live_customers = self.customer_entries(live)?;
        let wanted_customers: HashMap<CustomerKey, CustomerValue> = match customers {
            Some(c) => {
                if !c.is_empty() && self.customers.is_none() {
                    return Err(MapsError::NoCustomerMaps);
                }
                c.iter().map(customer_key).collect()
            }
            None => live_customers.clone(),
        };
        let next_customer_ops = customer_diff(&self.customer_entries(next)?, &wanted_customers);
        let standby_customer_ops = customer_diff(&live_customers, &wanted_customers);
        config.customer_entries = wanted_customers.len() as u32;
        // A failed write leaves the standby trie half-written; it is never switched live (the
        // error returns before the switch; the slot is marked dirty first, so no delta commit
        // takes it for in sync), and the next full commit rewrites it.
        self.mark_dirty(next)?;
        self.apply_customer_ops(next, &next_customer_ops)?;

        // Ports: new ones first (they are not double-buffered; a port added early only means
        // the old rules see it for a moment).
        let new_ports: BTreeSet<u16> = settings.sip_ports.iter().copied().collect();
        let old_ports: BTreeSet<u16> = self.sip_ports()?.into_iter().collect();
        for &p in new_ports.difference(&old_ports) {
            self.ports
                .set(p as u32, 1u8, 0)
                .map_err(map_err(names::SIP_PORTS, format!("add port {p}")))?;
        }
        let limit_entries: Vec<(u32, LimitParams)> = wanted
            .iter()
            .filter_map(|(k, v)| Some((v.id, *limited.get(k)?)))
            .collect();
        let quarantine = self.quarantine.unwrap_or_default();
        config.flags |= quarantine_flags(&quarantine);
        self.write_limits(next, &limit_entries, quarantine)?;
        let config = self.stage_and_switch(next, &stage_ops, config, generation, rules.len())?;
        for &p in old_ports.difference(&new_ports) {
            self.ports
                .set(p as u32, 0u8, 0)
                .map_err(map_err(names::SIP_PORTS, format!("remove port {p}")))?;
        }
        // Counters to keep: the live rules' and the retired rules'.
        let live_ids = wanted
            .iter()
            .map(|(_, v)| v.id)
            .chain(self.retired.ids.values().copied())
            .collect();
        Ok((
            report,
            Pending {
                slot: live,
                ops: standby_ops,
                config,
                dead_ids,
                live_ids: Some(live_ids),
                customer_ops: standby_customer_ops,
                live_customers: customers.map(|c| c.iter().map(|e| e.customer).collect()),
                limits: Some((limit_entries, quarantine)),
            },
        ))
    }

    /// The first half of a customers-only commit: `customers` are live when it returns
    /// `Some`; the rules and settings stay as they are. Only the customer tries are read and
    /// written (a runtime customer edit into a million rules stays fast). `None` when the tries
    /// are not known to be in sync (the caller does a full commit).
    pub fn stage_customers(
        &mut self,
        customers: &[CustomerEntry],
    ) -> Result<Option<Pending>, MapsError> {
        let Some((generation, live_config)) = self.in_sync()? else {
            return Ok(None);
        };
        if !customers.is_empty() && self.customers.is_none() {
            return Err(MapsError::NoCustomerMaps);
        }
        let live = self.active_slot()?;
        let next = live ^ 1;
        let wanted: HashMap<CustomerKey, CustomerValue> =
            customers.iter().map(customer_key).collect();
        let next_ops = customer_diff(&self.customer_entries(next)?, &wanted);
        let standby_ops = customer_diff(&self.customer_entries(live)?, &wanted);
        let mut config = live_config;
        config.customer_entries = wanted.len() as u32;
        self.mark_dirty(next)?;
        self.apply_customer_ops(next, &next_ops)?;
        let generation = next_generation(generation, generation);
        let total = live_config.rule_count as usize;
        let config = self.stage_and_switch(next, &[], config, generation, total)?;
        Ok(Some(Pending {
            slot: live,
            ops: Vec::new(),
            config,
            dead_ids: Vec::new(),
            live_ids: None,
            customer_ops: standby_ops,
            live_customers: Some(customers.iter().map(|e| e.customer).collect()),
            limits: None,
        }))
    }

    /// The first half of a delta commit: `delta` is live when it returns `Some`. It reads only
    /// the rules the delta touches (exact lookups in the live trie), never the whole trie.
    /// `None` when the tries are not known to be in sync (the caller does a full commit).
    pub fn stage_delta(
        &mut self,
        delta: &Delta,
    ) -> Result<Option<(CommitReport, Pending)>, MapsError> {
        let Some((generation, live_config)) = self.in_sync()? else {
            return Ok(None);
        };
        let live = self.active_slot()?;
        let next = live ^ 1;
        let mut report = CommitReport {
            delta: true,
            ..Default::default()
        };
        let mut ops: Vec<Op> = Vec::new();
        let mut dead_ids = Vec::new();
        let mut new_prefixes = Vec::new();
        let mut seen = BTreeSet::new();
        for (prefix, action) in &delta.set {
            if !seen.insert(prefix) {
                continue;
            }
            let Ok(old) = self.exact_in(live, prefix)? else {
                return Ok(None);
            };
            match old {
                Some(v) if v.action == *action as u8 => {}
                Some(v) => {
                    report.changed += 1;
                    ops.push((
                        TrieKey::of(prefix),
                        Some(TrieKey::of(prefix).value(v.id, *action, 0)),
                    ));
                }
                None => {
                    report.added += 1;
                    new_prefixes.push((prefix, *action));
                }
            }
        }
        for prefix in &delta.remove {
            if !seen.insert(prefix) {
                continue;
            }
            let Ok(old) = self.exact_in(live, prefix)? else {
                return Ok(None);
            };
            if let Some(v) = old {
                report.removed += 1;
                dead_ids.push(v.id);
                ops.push((TrieKey::of(prefix), None));
            }
        }
        let total = (live_config.rule_count as usize + report.added).saturating_sub(report.removed);
        report.total = total;
        if total > self.capacity as usize {
            return Err(MapsError::Full {
                wanted: total,
                max: self.capacity,
            });
        }
        if ops.is_empty() && new_prefixes.is_empty() {
            let pending = Pending {
                slot: live,
                ops,
                config: live_config,
                dead_ids,
                live_ids: None,
                customer_ops: Vec::new(),
                live_customers: None,
                limits: None,
            };
            return Ok(Some((report, pending)));
        }
        // A prefix retired by a full commit of this process gets its old id back.
        let mut brand_new = Vec::with_capacity(new_prefixes.len());
        for (prefix, action) in new_prefixes {
            let key = TrieKey::of(prefix);
            match self.retired.take(&key) {
                Some(id) => ops.push((key, Some(key.value(id, action, 0)))),
                None => brand_new.push((key, action)),
            }
        }
        let Some(first) = self.take_ids(brand_new.len())? else {
            return Ok(None);
        };
        for (i, (key, action)) in brand_new.into_iter().enumerate() {
            ops.push((key, Some(key.value(first + i as u32, action, 0))));
        }
        let generation = next_generation(generation, generation);
        let config = self.stage_and_switch(next, &ops, live_config, generation, total)?;
        Ok(Some((
            report,
            Pending {
                slot: live,
                ops,
                config,
                dead_ids,
                live_ids: None,
                customer_ops: Vec::new(),
                live_customers: None,
                limits: None,
            },
        )))
    }

    /// The second half of a commit: applies the change to the standby trie (the caller has
    /// waited for readers of it, see [`wait_for_readers`]), records its generation, and deletes
    /// the counters of removed rules.
    pub fn finish(&mut self, p: Pending) -> Result<(), MapsError> {
        self.finish_inner(p)
            .map_err(|e| MapsError::Standby(Box::new(e)))
    }

    fn finish_inner(&mut self, p: Pending) -> Result<(), MapsError> {
        self.apply_customer_ops(p.slot, &p.customer_ops)?;
        if let Some((entries, quarantine)) = &p.limits {
            self.write_limits(p.slot, entries, *quarantine)?;
        }
        if !p.ops.is_empty() || self.slot(p.slot)?.generation != p.config.generation {
            self.mark_dirty(p.slot)?;
            self.apply_ops(p.slot, &p.ops, p.config.rule_count as usize)?;
            let mut c = p.config;
            c.active = p.slot;
            self.set_slot(p.slot, c)?;
        }
        for id in p.dead_ids {
            self.remove_stats(id)?;
        }
        if let Some(customers) = &p.live_customers {
            self.remove_customer_stats(|k| {
                !customers.contains(&((k >> 32) as u32))
                    || p.live_ids
                        .as_ref()
                        .is_some_and(|ids| !ids.contains(&(k as u32)))
            })?;
        }
        if let Some(live) = p.live_ids {
            // Counters of rules that are gone (an in-flight packet may have recreated one).
            for id in self.stats_ids()? {
                if !live.contains(&id) {
                    self.remove_stats(id)?;
                }
            }
        }
        Ok(())
    }

    /// Deletes the per-customer counters whose key (customer << 32 | rule) `gone` selects.
    fn remove_customer_stats(&mut self, gone: impl Fn(u64) -> bool) -> Result<(), MapsError> {
        let Some(m) = &mut self.customer_stats else {
            return Ok(());
        };
        let keys: Vec<u64> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| gone(*k))
            .collect();
        for k in keys {
            match m.remove(&k) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => {
                    return Err(map_err(names::CUSTOMER_STATS, format!("delete {k:#x}"))(e));
                }
            }
        }
        Ok(())
    }

    fn remove_stats(&mut self, id: u32) -> Result<(), MapsError> {
        match self.rule_stats.remove(&id) {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(map_err(names::RULE_STATS, format!("delete rule {id}"))(e)),
        }
    }

    /// Ids that have counters (rules that were hit since their counters were last reset).
    pub fn stats_ids(&self) -> Result<Vec<u32>, MapsError> {
        self.rule_stats
            .keys()
            .collect::<Result<Vec<u32>, _>>()
            .map_err(map_err(names::RULE_STATS, "iterate"))
    }

    /// Counters of rule `id`, summed over CPUs (zero when the rule was never hit).
    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters, MapsError> {
        match self.rule_stats.get(&id, 0) {
            Ok(per_cpu) => Ok(sum_counters(&per_cpu)),
            Err(e) if not_found(&e) => Ok(RuleCounters::default()),
            Err(e) => Err(map_err(names::RULE_STATS, format!("read rule {id}"))(e)),
        }
    }

    /// Counters of every rule that has some, by id, summed over CPUs.
    pub fn all_rule_counters(&self) -> Result<BTreeMap<u32, RuleCounters>, MapsError> {
        let mut out = BTreeMap::new();
        for kv in self.rule_stats.iter() {
            match kv {
                Ok((id, per_cpu)) => {
                    out.insert(id, sum_counters(&per_cpu));
                }
                // Deleted while we iterate (a commit or a reset): it counts as zero.
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(names::RULE_STATS, "iterate")(e)),
            }
        }
        Ok(out)
    }

    /// Global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters, MapsError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_err(names::COUNTERS, "read"))?;
        Ok(per_cpu.iter().sum())
    }

    /// Every (rule, source) entry of the sources map.
    pub fn sources(&self) -> Result<Vec<(SourceKey, SourceStats)>, MapsError> {
        let Some(m) = &self.sources else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kv in m.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                // An LRU entry evicted while we iterate: skip it.
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(names::SOURCES, "iterate")(e)),
            }
        }
        Ok(out)
    }

    /// Per (customer id, rule id): matched packets and calls, summed over the CPUs.
    pub fn customer_counters(&self) -> Result<BTreeMap<(u32, u32), RuleCounters>, MapsError> {
        let Some(m) = &self.customer_stats else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for kv in m.iter() {
            match kv {
                Ok((k, per_cpu)) => {
                    let sum: RuleCounters = per_cpu.iter().sum();
                    out.insert(((k >> 32) as u32, k as u32), sum);
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(names::CUSTOMER_STATS, "iterate")(e)),
            }
        }
        Ok(out)
    }

    /// Zeroes the global counters and deletes every rule's counters (they come back, zeroed,
    /// at the rule's next match).
    pub fn reset_counters(&mut self) -> Result<(), MapsError> {
        for id in self.stats_ids()? {
            self.remove_stats(id)?;
        }
        let n =
            aya::util::nr_cpus().map_err(|(what, e)| MapsError::Cpus(format!("{what}: {e}")))?;
        let zero = PerCpuValues::try_from(vec![GlobalCounters::default(); n])
            .map_err(|e| MapsError::Cpus(e.to_string()))?;
        self.counters
            .set(0, zero, 0)
            .map_err(map_err(names::COUNTERS, "reset"))
    }

    /// Writes counters for `id` (upgrades carry counters over from an older layout).
    pub fn set_rule_counters(
        &mut self,
        id: u32,
        per_cpu: PerCpuValues<RuleCounters>,
    ) -> Result<(), MapsError> {
        self.rule_stats
            .insert(id, per_cpu, 0)
            .map_err(map_err(names::RULE_STATS, format!("write rule {id}")))
    }

    /// Writes counters carried over by [`take_short_counters`].
    pub fn restore_counters(&mut self, short: ShortCounters) -> Result<(), MapsError> {
        for (id, v) in short.rules {
            self.set_rule_counters(id, v)?;
        }
        if let Some(m) = &mut self.customer_stats {
            for (k, v) in short.customers {
                m.insert(k, v, 0)
                    .map_err(map_err(names::CUSTOMER_STATS, format!("write {k:#x}")))?;
            }
        }
        Ok(())
    }
}

/// Counters of pins whose values have the five fields `RuleCounters` had before limits.
#[derive(Default)]
pub struct ShortCounters {
    pub rules: Vec<(u32, PerCpuValues<RuleCounters>)>,
    pub customers: Vec<(u64, PerCpuValues<RuleCounters>)>,
}

impl ShortCounters {
    pub fn len(&self) -> usize {
        self.rules.len() + self.customers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fields of `RuleCounters` before limits added `over_limit` and `would_limit`.
type FiveCounters = [u64; 5];

/// The per-rule and per-customer counters pinned in `dir` by a sipguard whose `RuleCounters`
/// had five fields, widened (the new fields zero); their pins removed, so that loading creates
/// the maps anew. Put them back with [`Maps::restore_counters`]. Empty when the pins are current
/// or absent.
pub fn take_short_counters(dir: &Path) -> Result<ShortCounters, MapsError> {
    fn widen(v: PerCpuValues<FiveCounters>) -> Result<PerCpuValues<RuleCounters>, MapsError> {
        let wide: Vec<RuleCounters> = v
            .iter()
            .map(|f| RuleCounters {
                matched: f[0],
                dropped: f[1],
                would_drop: f[2],
                calls: f[3],
                reinvites: f[4],
                ..RuleCounters::default()
            })
            .collect();
        PerCpuValues::try_from(wide).map_err(|e| MapsError::Cpus(e.to_string()))
    }
    fn short<K: aya::Pod + Eq + std::hash::Hash>(
        dir: &Path,
        name: &'static str,
    ) -> Result<Vec<(K, PerCpuValues<RuleCounters>)>, MapsError> {
        let path = dir.join(name);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let data = MapData::from_pin(&path).map_err(|source| MapsError::OpenPin {
            path: path.display().to_string(),
            source,
        })?;
        let size = data
            .info()
            .map_err(map_err(name, "read map info"))?
            .value_size();
        if size as usize != std::mem::size_of::<FiveCounters>() {
            return Ok(Vec::new());
        }
        let map = Map::from_map_data(data).map_err(|source| MapsError::OpenPin {
            path: path.display().to_string(),
            source,
        })?;
        let m = PerCpuHashMap::<MapData, K, FiveCounters>::try_from(map)
            .map_err(map_err(name, "open"))?;
        let mut out = Vec::new();
        for kv in m.iter() {
            match kv {
                Ok((k, v)) => out.push((k, widen(v)?)),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(name, "iterate")(e)),
            }
        }
        drop(m);
        std::fs::remove_file(&path).map_err(|source| MapsError::Unpin {
            path: path.display().to_string(),
            source,
        })?;
        Ok(out)
    }
    Ok(ShortCounters {
        rules: short(dir, names::RULE_STATS)?,
        customers: short(dir, names::CUSTOMER_STATS)?,
    })
}

/// Counters pinned by an older sipguard (a per-CPU array indexed by rule id) for the rules in
/// the pinned tries, and the array's pin removed, so that the loader creates the per-CPU hash in
/// its place; the caller writes the counters into it. Empty when the pin is not an array.
/// Key data bytes of the rule tries before policies (domain byte and digit nibbles, no policy).
const UNSCOPED_KEY_DATA: usize = 16;

/// Rule tries pinned in `dir` by a sipguard before policies (keys without the policy bytes):
/// their rules, re-keyed as global rules with the same ids (so their counters go on), and the
/// old pins removed so that loading creates the new tries. Put the rules back with
/// [`Maps::restore_rules`]. Empty when the pins are current or absent.
pub fn take_unscoped_tries(dir: &Path) -> Result<Vec<(TrieKey, RuleValue)>, MapsError> {
    let mut out: BTreeMap<TrieKey, RuleValue> = BTreeMap::new();
    for name in names::RULES {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let open_err = |source| MapsError::OpenPin {
            path: path.display().to_string(),
            source,
        };
        let data = MapData::from_pin(&path).map_err(open_err)?;
        let key_size = data
            .info()
            .map(|i| i.key_size())
            .map_err(map_err(name, "read map info"))?;
        if key_size as usize != 4 + UNSCOPED_KEY_DATA {
            continue;
        }
        let trie = LpmTrie::<MapData, [u8; UNSCOPED_KEY_DATA], RuleValue>::try_from(
            Map::from_map_data(data).map_err(open_err)?,
        )
        .map_err(map_err(name, "open"))?;
        for kv in trie.iter() {
            let (k, mut v) = match kv {
                Ok(kv) => kv,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(map_err(name, "iterate")(e)),
            };
            let mut data = [0u8; guard_common::number::KEY_DATA_LEN];
            data[2..].copy_from_slice(&k.data());
            let scope = guard_common::number::KEY_SCOPE_BITS - 8;
            v.prefix_len += scope as u16;
            out.insert(
                TrieKey {
                    prefix_len: k.prefix_len() + scope,
                    data,
                },
                v,
            );
        }
        drop(trie);
        std::fs::remove_file(&path).map_err(|source| MapsError::Unpin {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(out.into_iter().collect())
}

pub fn take_legacy_stats(dir: &Path) -> Result<Vec<(u32, PerCpuValues<RuleCounters>)>, MapsError> {
    let path = dir.join(names::RULE_STATS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let open = |name: &'static str| {
        let path = dir.join(name);
        MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| MapsError::OpenPin {
                path: path.display().to_string(),
                source,
            })
    };
    let stats = open(names::RULE_STATS)?;
    if !matches!(stats, Map::PerCpuArray(_)) {
        return Ok(Vec::new());
    }
    let stats = PerCpuArray::<MapData, RuleCounters>::try_from(stats)
        .map_err(map_err(names::RULE_STATS, "open"))?;
    let mut ids = BTreeSet::new();
    for name in names::RULES {
        if !dir.join(name).exists() {
            continue;
        }
        let trie = Trie::try_from(open(name)?).map_err(map_err(name, "open"))?;
        for kv in trie.iter() {
            match kv {
                Ok((_, v)) => {
                    ids.insert(v.id);
                }
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(map_err(name, "iterate")(e)),
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        match stats.get(&id, 0) {
            Ok(v) if v.iter().any(|c| *c != RuleCounters::default()) => out.push((id, v)),
            Ok(_) => {}
            Err(e) if not_found(&e) || matches!(e, MapError::OutOfBounds { .. }) => {}
            Err(e) => return Err(map_err(names::RULE_STATS, format!("read rule {id}"))(e)),
        }
    }
    std::fs::remove_file(&path).map_err(|source| MapsError::Unpin {
        path: path.display().to_string(),
        source,
    })?;
    Ok(out)
}

/// The trie value of rule `prefix`.
pub fn rule_value(prefix: &Prefix, id: u32, action: Action) -> RuleValue {
    TrieKey::of(prefix).value(id, action, 0)
}

/// The generation after `a` and `b` (never 0, which means "unknown").
fn next_generation(a: u32, b: u32) -> u32 {
    a.max(b).checked_add(1).unwrap_or(1)
}

fn sum_counters(per_cpu: &PerCpuValues<RuleCounters>) -> RuleCounters {
    per_cpu.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retired_rules_are_remembered_newest_first_within_the_bound() {
        let key = |p: &str| TrieKey::of(&p.parse().unwrap());
        let mut r = Retired::default();
        assert_eq!(r.remember(key("+1"), 1, 2), Vec::<u32>::new());
        assert_eq!(r.remember(key("+2"), 2, 2), Vec::<u32>::new());
        // A third forgets the oldest, whose counters the caller deletes.
        assert_eq!(r.remember(key("+3"), 3, 2), vec![1]);
        assert_eq!(r.take(&key("+1")), None);
        assert_eq!(r.take(&key("+2")), Some(2));
        assert_eq!(r.take(&key("+2")), None);
        // Retired again later: the newer retirement counts, the stale entry is skipped.
        r.remember(key("+2"), 7, 2);
        assert_eq!(r.remember(key("+4"), 4, 2), vec![3]);
        assert_eq!(r.take(&key("+2")), Some(7));
        // No room (pins whose counter hash has only max_rules entries): nothing is kept.
        assert_eq!(Retired::default().remember(key("+5"), 5, 0), vec![5]);
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(0, 0), 1);
        assert_eq!(next_generation(3, 5), 6);
        assert_eq!(next_generation(u32::MAX, 1), 1);
    }

    #[test]
    fn rule_values_carry_their_own_prefix_length() {
        let p: Prefix = "+232".parse().unwrap();
        let v = rule_value(&p, 7, Action::Block);
        let plen = p.key().prefix_len;
        assert_eq!(u32::from(v.prefix_len), plen);
        assert_eq!(v.prefix_len, 24 + 3 * 4);
        let all: Prefix = "+".parse().unwrap();
        assert_eq!(rule_value(&all, 0, Action::Monitor).prefix_len, 24);
    }
}
