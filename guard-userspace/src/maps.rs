//! The filter's maps, whether they come from a freshly loaded object or from pins: committing a
//! rule set and settings atomically, and reading counters.
//!
//! A commit never changes what the live program sees until its last step. The rule tries and
//! the config slots are double-buffered (slot `i` = config `i` + trie `i`): the new rule set is
//! synced into the inactive trie, the new settings into the inactive config slot, and then one
//! 32-bit word (the selector) switches both live. A commit that fails half-way has only touched
//! the inactive slot, so the live rules and settings are exactly what they were.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
};
use guard_common::{
    CONFIG_SELECTOR, Config, GlobalCounters, MAX_RULES, RuleCounters, RuleKeyData, RuleValue,
    SourceKey, SourceStats, maps::names,
};
use thiserror::Error;

use crate::{
    rules::{Prefix, RuleSet},
    settings::{Settings, SettingsError},
};

/// Maps pinned next to [`PINNED_MAPS`] so calls, sources and queued events survive a restart.
pub const AUX_PINNED: [&str; 3] = [names::CALLS, names::SOURCES, names::EVENTS];

/// Every map userspace works with, by pin name.
pub const PINNED_MAPS: [&str; 6] = [
    names::RULES[0],
    names::RULES[1],
    names::RULE_STATS,
    names::COUNTERS,
    names::CONFIG,
    names::SIP_PORTS,
];

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
    #[error("invalid settings")]
    Settings(#[from] SettingsError),
    #[error(
        "the rule map is full: {wanted} rules do not fit (at most {MAX_RULES}); nothing was changed"
    )]
    Full { wanted: usize },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
}

fn map_err(name: &'static str, action: impl Into<String>) -> impl FnOnce(MapError) -> MapsError {
    let action = action.into();
    move |source| MapsError::Map {
        name,
        action,
        source,
    }
}

type Trie = LpmTrie<MapData, RuleKeyData, RuleValue>;

/// A rule as it is in the kernel: prefix, action and counter id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRule {
    pub prefix: Prefix,
    pub value: RuleValue,
}

/// What a commit changed, for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub total: usize,
}

/// The filter's maps.
pub struct Maps {
    rules: [Trie; 2],
    rule_stats: PerCpuArray<MapData, RuleCounters>,
    counters: PerCpuArray<MapData, GlobalCounters>,
    config: Array<MapData, Config>,
    ports: Array<MapData, u8>,
    /// Sources per rule (absent in pins made before it existed).
    sources: Option<aya::maps::HashMap<MapData, SourceKey, SourceStats>>,
}

impl Maps {
    /// Takes the maps out of a loaded object (the program keeps its own references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        let (a, b) = (take(names::RULES[0])?, take(names::RULES[1])?);
        let (stats, counters) = (take(names::RULE_STATS)?, take(names::COUNTERS)?);
        let (config, ports) = (take(names::CONFIG)?, take(names::SIP_PORTS)?);
        let sources = ebpf.take_map(names::SOURCES);
        Self::from_maps([a, b], stats, counters, config, ports, sources)
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
        let (config, ports) = (open(names::CONFIG)?, open(names::SIP_PORTS)?);
        let sources = dir
            .join(names::SOURCES)
            .exists()
            .then(|| open(names::SOURCES))
            .transpose()?;
        Self::from_maps([a, b], stats, counters, config, ports, sources)
    }

    fn from_maps(
        [a, b]: [Map; 2],
        stats: Map,
        counters: Map,
        config: Map,
        ports: Map,
        sources: Option<Map>,
    ) -> Result<Self, MapsError> {
        Ok(Self {
            rules: [
                Trie::try_from(a).map_err(map_err(names::RULES[0], "open"))?,
                Trie::try_from(b).map_err(map_err(names::RULES[1], "open"))?,
            ],
            rule_stats: PerCpuArray::try_from(stats).map_err(map_err(names::RULE_STATS, "open"))?,
            counters: PerCpuArray::try_from(counters).map_err(map_err(names::COUNTERS, "open"))?,
            config: Array::try_from(config).map_err(map_err(names::CONFIG, "open"))?,
            ports: Array::try_from(ports).map_err(map_err(names::SIP_PORTS, "open"))?,
            sources: sources
                .map(|m| aya::maps::HashMap::try_from(m).map_err(map_err(names::SOURCES, "open")))
                .transpose()?,
        })
    }

    /// The live slot (0 or 1): which config slot and rule trie the program uses.
    pub fn active_slot(&self) -> Result<u32, MapsError> {
        Ok(self
            .config
            .get(&CONFIG_SELECTOR, 0)
            .map_err(map_err(names::CONFIG, "read selector"))?
            .active
            & 1)
    }

    /// The live configuration.
    pub fn config(&self) -> Result<Config, MapsError> {
        let slot = self.active_slot()?;
        self.config
            .get(&slot, 0)
            .map_err(map_err(names::CONFIG, format!("read slot {slot}")))
    }

    /// The configured SIP ports.
    pub fn sip_ports(&self) -> Result<Vec<u16>, MapsError> {
        let mut out = Vec::new();
        for (port, v) in self.ports.iter().enumerate() {
            if v.map_err(map_err(names::SIP_PORTS, format!("read port {port}")))? != 0 {
                out.push(port as u16);
            }
        }
        Ok(out)
    }

    fn trie_rules(&self, slot: u32) -> Result<Vec<LiveRule>, MapsError> {
        let name = names::RULES[slot as usize & 1];
        let trie = &self.rules[slot as usize & 1];
        let mut out = Vec::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(name, "iterate keys"))?;
            let prefix_len = key.prefix_len();
            let data = key.data();
            let Some(prefix) = Prefix::from_key(prefix_len, &data) else {
                continue; // Never written by sipguard; ignored rather than misread.
            };
            // Exact-key lookup: a full-length key returns the rule itself.
            match trie.get(&key, 0) {
                Ok(value) => out.push(LiveRule { prefix, value }),
                // Removed between iteration and lookup (a concurrent commit): skip it.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name, format!("read rule {prefix}"))(e)),
            }
        }
        out.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        Ok(out)
    }

    /// The live rules, sorted by prefix.
    pub fn rules(&self) -> Result<Vec<LiveRule>, MapsError> {
        self.trie_rules(self.active_slot()?)
    }

    /// Longest-prefix lookup of a number key in the live trie (what the program does).
    pub fn lookup(&self, key: &guard_common::LookupKey) -> Result<Option<RuleValue>, MapsError> {
        let slot = self.active_slot()? as usize;
        let k = Key::new(key.prefix_len, key.data);
        match self.rules[slot].get(&k, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(names::RULES[slot], "lookup")(e)),
        }
    }

    /// Writes one rule straight into trie `slot` (see `Filter::insert_rule`).
    pub fn insert_live(
        &mut self,
        slot: usize,
        key: &Key<RuleKeyData>,
        value: RuleValue,
    ) -> Result<(), MapError> {
        self.rules[slot & 1].insert(key, value, 0)
    }

    /// Makes `settings` and `rules` live together, atomically (see the module docs).
    ///
    /// Rule ids (counter slots) are kept for prefixes that stay; new prefixes get ids that
    /// neither trie uses, with their counters zeroed first.
    pub fn commit(
        &mut self,
        settings: &Settings,
        rules: &RuleSet,
    ) -> Result<CommitReport, MapsError> {
        let mut config = settings.to_config()?;
        if rules.len() > MAX_RULES as usize {
            return Err(MapsError::Full {
                wanted: rules.len(),
            });
        }
        let live = self.active_slot()?;
        let next = live ^ 1;
        let current: BTreeMap<Prefix, RuleValue> = self
            .trie_rules(live)?
            .into_iter()
            .map(|r| (r.prefix, r.value))
            .collect();
        let staged: BTreeMap<Prefix, RuleValue> = self
            .trie_rules(next)?
            .into_iter()
            .map(|r| (r.prefix, r.value))
            .collect();

        // Ids: keep the live id of every prefix that stays; allocate the rest from ids that
        // neither trie references (so no in-flight packet can count into a recycled slot).
        let mut used: BTreeSet<u32> = current.values().map(|v| v.id).collect();
        used.extend(staged.values().map(|v| v.id));
        let mut free = (0..MAX_RULES).filter(|id| !used.contains(id));
        let mut report = CommitReport {
            total: rules.len(),
            ..Default::default()
        };
        let mut wanted: BTreeMap<&Prefix, RuleValue> = BTreeMap::new();
        let mut fresh_ids = Vec::new();
        for (prefix, entry) in rules {
            let id = match current.get(prefix) {
                Some(v) => {
                    if v.action != entry.action as u8 {
                        report.changed += 1;
                    }
                    v.id
                }
                None => {
                    report.added += 1;
                    let id = free.next().ok_or(MapsError::Full {
                        wanted: rules.len(),
                    })?;
                    fresh_ids.push(id);
                    id
                }
            };
            wanted.insert(
                prefix,
                RuleValue {
                    id,
                    action: entry.action as u8,
                    flags: 0,
                    _reserved: 0,
                },
            );
        }
        report.removed = current.keys().filter(|p| !rules.contains_key(*p)).count();

        for id in fresh_ids {
            let zero = self.zero_counters()?;
            self.rule_stats
                .set(id, zero, 0)
                .map_err(map_err(names::RULE_STATS, format!("reset rule {id}")))?;
        }

        // Stage: sync the inactive trie to `wanted`.
        let name = names::RULES[next as usize];
        let trie = &mut self.rules[next as usize];
        for prefix in staged.keys().filter(|p| !wanted.contains_key(p)) {
            let k = prefix.key();
            match trie.remove(&Key::new(k.prefix_len, k.data)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name, format!("remove {prefix}"))(e)),
            }
        }
        for (prefix, value) in &wanted {
            if staged.get(*prefix) == Some(value) {
                continue;
            }
            let k = prefix.key();
            trie.insert(&Key::new(k.prefix_len, k.data), *value, 0)
                .map_err(|e| match &e {
                    MapError::SyscallError(s)
                        if s.io_error.raw_os_error() == Some(libc::ENOSPC) =>
                    {
                        MapsError::Full {
                            wanted: rules.len(),
                        }
                    }
                    _ => map_err(name, format!("insert {prefix}"))(e),
                })?;
        }

        // Ports: new ones first (they are not double-buffered; a port added early only means
        // the old rules see it for a moment).
        let new_ports: BTreeSet<u16> = settings.sip_ports.iter().copied().collect();
        let old_ports: BTreeSet<u16> = self.sip_ports()?.into_iter().collect();
        for &p in new_ports.difference(&old_ports) {
            self.ports
                .set(p as u32, 1u8, 0)
                .map_err(map_err(names::SIP_PORTS, format!("add port {p}")))?;
        }

        // Stage the config, then the flip: one aligned 32-bit word changes in the selector.
        config.active = next;
        self.config
            .set(next, config, 0)
            .map_err(map_err(names::CONFIG, format!("write slot {next}")))?;
        let mut sel = self
            .config
            .get(&CONFIG_SELECTOR, 0)
            .map_err(map_err(names::CONFIG, "read selector"))?;
        sel.active = next;
        self.config
            .set(CONFIG_SELECTOR, sel, 0)
            .map_err(map_err(names::CONFIG, "switch slot"))?;

        for &p in old_ports.difference(&new_ports) {
            self.ports
                .set(p as u32, 0u8, 0)
                .map_err(map_err(names::SIP_PORTS, format!("remove port {p}")))?;
        }
        Ok(report)
    }

    fn zero_counters<T: aya::Pod + Default>(&self) -> Result<PerCpuValues<T>, MapsError> {
        let n =
            aya::util::nr_cpus().map_err(|(what, e)| MapsError::Cpus(format!("{what}: {e}")))?;
        PerCpuValues::try_from(vec![T::default(); n]).map_err(|e| MapsError::Cpus(e.to_string()))
    }

    /// Counters of rule `id`, summed over CPUs.
    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters, MapsError> {
        let per_cpu = self
            .rule_stats
            .get(&id, 0)
            .map_err(map_err(names::RULE_STATS, format!("read rule {id}")))?;
        Ok(per_cpu.iter().fold(RuleCounters::default(), |a, c| {
            let RuleCounters {
                matched,
                dropped,
                would_drop,
                calls,
                reinvites,
            } = *c;
            RuleCounters {
                matched: a.matched + matched,
                dropped: a.dropped + dropped,
                would_drop: a.would_drop + would_drop,
                calls: a.calls + calls,
                reinvites: a.reinvites + reinvites,
            }
        }))
    }

    /// Global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters, MapsError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(map_err(names::COUNTERS, "read"))?;
        let mut sum = GlobalCounters::default();
        for cpu in per_cpu.iter() {
            for (s, v) in sum.counters.iter_mut().zip(cpu.counters.iter()) {
                *s += v;
            }
        }
        Ok(sum)
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
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(names::SOURCES, "iterate")(e)),
            }
        }
        Ok(out)
    }

    /// Zeroes the global counters and the counters of the live rules.
    pub fn reset_counters(&mut self) -> Result<(), MapsError> {
        let ids: Vec<u32> = self.rules()?.iter().map(|r| r.value.id).collect();
        for id in ids {
            let zero = self.zero_counters()?;
            self.rule_stats
                .set(id, zero, 0)
                .map_err(map_err(names::RULE_STATS, format!("reset rule {id}")))?;
        }
        let zero = self.zero_counters()?;
        self.counters
            .set(0, zero, 0)
            .map_err(map_err(names::COUNTERS, "reset"))
    }
}
