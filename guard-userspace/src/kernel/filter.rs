//! The loaded XDP program and its maps.

use std::path::Path;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
#[cfg(any(test, feature = "test-util"))]
use guard_common::Action;
use guard_common::{Counter, GlobalCounters, RuleCounters, maps::names, programs};
use thiserror::Error;

use super::{
    maps::{AUX_PINNED, Maps, MapsError, PINNED_MAPS, SIZED_BY_MAX_RULES, stats_entries},
    memory::{self, MapMemory, MemoryError},
};
#[cfg(any(test, feature = "test-util"))]
use crate::model::rules::Prefix;
use crate::model::{
    rules::RuleSet,
    settings::{Settings, SettingsError},
};

/// The XDP object, built by build.rs (aya-build) from guard-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

#[derive(Debug, Error)]
pub enum FilterError {
    #[error("loading the eBPF object failed (are you root, with CAP_BPF and CAP_NET_ADMIN?)")]
    Load(#[source] EbpfError),
    #[error("the eBPF object has no {kind} `{name}`; the build is inconsistent")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("program `{name}`: {action} failed")]
    Program {
        name: &'static str,
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("invalid settings")]
    Settings(#[from] SettingsError),
    #[error("reading the kernel memory of the maps failed")]
    Memory(#[from] MemoryError),
}

/// What the program returned for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Any other XDP action (the program never returns one; tests assert that).
    Other(u32),
}

impl Verdict {
    pub fn from_xdp(rc: u32) -> Self {
        match rc {
            2 => Self::Pass,
            1 => Self::Drop,
            other => Self::Other(other),
        }
    }
}

/// The loaded filter: both programs loaded (not attached) and the maps.
pub struct Filter {
    ebpf: Ebpf,
    pub maps: Maps,
}

impl Filter {
    /// Loads a private instance (no pins) with `settings` applied and no rules; its rule maps
    /// hold `settings.max_rules`. Tests and `sipguard replay` use this; it never touches a live
    /// filter's maps.
    pub fn load(settings: &Settings) -> Result<Self, FilterError> {
        // Validate before touching the kernel.
        settings.to_config()?;
        let mut loader = EbpfLoader::new();
        for name in SIZED_BY_MAX_RULES {
            loader.map_max_entries(name, settings.max_rules);
        }
        loader.map_max_entries(names::RULE_STATS, stats_entries(settings.max_rules));
        loader.map_max_entries(names::BUCKETS, settings.limit_buckets);
        let ebpf = loader.load(OBJECT).map_err(FilterError::Load)?;
        let mut f = Self::finish_load(ebpf)?;
        f.maps.commit(settings, &RuleSet::new())?;
        Ok(f)
    }

    /// Loads the programs with their maps pinned in `dir`: maps already pinned there are
    /// reused with their rules and counters (a restart or an upgrade), missing ones are created
    /// (the rule maps with `max_rules` entries) and pinned. Pinned maps keep their size: compare
    /// [`Maps::capacity`] with `max_rules`. Settings and rules are left as they are; commit them
    /// next.
    pub fn load_pinned(dir: &Path, max_rules: u32) -> Result<Self, FilterError> {
        Self::load_pinned_sized(dir, max_rules, guard_common::DEFAULT_BUCKETS)
    }

    /// [`Filter::load_pinned`] with the size of the limits' bucket map (`limit_buckets`) for a
    /// map that does not exist yet.
    pub fn load_pinned_sized(
        dir: &Path,
        max_rules: u32,
        limit_buckets: u32,
    ) -> Result<Self, FilterError> {
        // Rule tries pinned before policies existed are re-keyed into the new ones.
        let unscoped = super::maps::take_unscoped_tries(dir)?;
        // Counters pinned by an older version (a per-CPU array) move into the new hash.
        let legacy = super::maps::take_legacy_stats(dir)?;
        // Counters pinned before limits (five fields) are widened into the new maps.
        let short = super::maps::take_short_counters(dir)?;
        let paths: Vec<(&'static str, std::path::PathBuf)> = PINNED_MAPS
            .iter()
            .chain(AUX_PINNED.iter())
            .map(|&n| (n, dir.join(n)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        for name in SIZED_BY_MAX_RULES {
            loader.map_max_entries(name, max_rules);
        }
        loader.map_max_entries(names::RULE_STATS, stats_entries(max_rules));
        loader.map_max_entries(names::BUCKETS, limit_buckets);
        let ebpf = loader.load(OBJECT).map_err(FilterError::Load)?;
        let mut f = Self::finish_load(ebpf)?;
        if !legacy.is_empty() {
            tracing::info!(
                rules = legacy.len(),
                "carried the counters of an older sipguard's pinned array over"
            );
        }
        for (id, values) in legacy {
            f.maps.set_rule_counters(id, values)?;
        }
        if !short.is_empty() {
            tracing::info!(
                entries = short.len(),
                "carried the counters of an older sipguard's pinned maps over (new fields zero)"
            );
            f.maps.restore_counters(short)?;
        }
        if !unscoped.is_empty() {
            f.maps.restore_rules(&unscoped)?;
            tracing::info!(
                rules = unscoped.len(),
                "carried the rules of an older sipguard's pinned tries over (ids and counters kept)"
            );
        }
        Ok(f)
    }

    fn finish_load(ebpf: Ebpf) -> Result<Self, FilterError> {
        let mut ebpf = ebpf;
        for name in [programs::FILTER, programs::EMPTY] {
            xdp_mut(&mut ebpf, name)?
                .load()
                .map_err(|source| FilterError::Program {
                    name,
                    action: "load (verifier)",
                    source,
                })?;
        }
        let maps = Maps::from_ebpf(&mut ebpf)?;
        Ok(Self { ebpf, maps })
    }

    fn xdp(&self, name: &'static str) -> Result<&Xdp, FilterError> {
        typed(self.ebpf.program(name), name)
    }

    /// The filter program, to attach or pin.
    pub fn program_mut(&mut self) -> Result<&mut Xdp, FilterError> {
        xdp_mut(&mut self.ebpf, programs::FILTER)
    }

    /// The drop-event ring buffer (taken once, by the daemon's reader).
    pub fn take_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        let m = self.ebpf.take_map(guard_common::maps::names::EVENTS)?;
        aya::maps::RingBuf::try_from(m).ok()
    }

    /// The reply ring buffer of rejected INVITEs (taken once, by the daemon's reply sender).
    pub fn take_replies(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        let m = self.ebpf.take_map(guard_common::maps::names::REPLIES)?;
        aya::maps::RingBuf::try_from(m).ok()
    }

    /// The loaded object, for aya-log.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Applies settings (keeping the live rules), atomically.
    #[cfg(any(test, feature = "test-util"))]
    pub fn apply_settings(&mut self, settings: &Settings) -> Result<(), FilterError> {
        let rules = self.maps.rule_set()?;
        self.maps.commit(settings, &rules)?;
        Ok(())
    }

    /// Inserts or replaces the rule for `prefix` with an explicit counter id (any u32),
    /// straight into the live trie. For tests and benchmarks that need fixed ids; operators'
    /// changes go through [`Maps::commit`], which is atomic and assigns ids itself. The next
    /// commit is a full one (the other trie no longer matches).
    #[cfg(any(test, feature = "test-util"))]
    pub fn insert_rule(
        &mut self,
        prefix: &Prefix,
        action: Action,
        id: u32,
    ) -> Result<(), FilterError> {
        let slot = self.maps.active_slot()? as usize;
        let key = prefix.key();
        let value = super::maps::rule_value(prefix, id, action);
        let key = aya::maps::lpm_trie::Key::new(key.prefix_len, key.data);
        self.maps.insert_live(slot, &key, value)?;
        Ok(())
    }

    /// The kernel's information about the filter program.
    fn info(&self) -> Result<aya::programs::ProgramInfo, FilterError> {
        self.xdp(programs::FILTER)?
            .info()
            .map_err(|source| FilterError::Program {
                name: programs::FILTER,
                action: "read info",
                source,
            })
    }

    /// Kernel memory of every map the filter program uses (see [`crate::kernel::memory`]).
    pub fn kernel_memory(&self) -> Result<Vec<MapMemory>, FilterError> {
        let info = self.info()?;
        let ids = info
            .map_ids()
            .map_err(|source| FilterError::Program {
                name: programs::FILTER,
                action: "read map ids",
                source,
            })?
            .unwrap_or_default();
        let stats = self.maps.stats_ids()?.len() as u64;
        Ok(memory::of_maps(&ids, |name| {
            (name == names::RULE_STATS).then_some(stats)
        })?)
    }

    /// Counters of rule `id`, summed over CPUs.
    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters, FilterError> {
        Ok(self.maps.rule_counters(id)?)
    }

    /// Global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters, FilterError> {
        Ok(self.maps.global_counters()?)
    }

    /// One global counter, summed over CPUs.
    pub fn counter(&self, which: Counter) -> Result<u64, FilterError> {
        Ok(self.global_counters()?.counters[which as usize])
    }

    /// The verifier's processed-instruction count for the filter program (kernel 5.16+).
    pub fn verified_insns(&self) -> Result<Option<u32>, FilterError> {
        let info = self.info()?;
        Ok(info.verified_instruction_count())
    }

    /// Runs one frame through the loaded program with `BPF_PROG_TEST_RUN`.
    pub fn test_run(&self, frame: &[u8]) -> Result<Verdict, FilterError> {
        Ok(Verdict::from_xdp(self.run(programs::FILTER, frame, 1)?.0))
    }

    /// Runs `frame` `repeat` times through the filter (or the empty baseline program); returns
    /// the XDP action and the kernel's average ns per run.
    pub fn run(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, f64), FilterError> {
        let prog = self.xdp(static_name(program))?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let r = prog.test_run(opts).map_err(|source| FilterError::Program {
            name: static_name(program),
            action: "test run",
            source,
        })?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    /// Attaches the filter to `iface`.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId, FilterError> {
        self.program_mut()?
            .attach(iface, mode)
            .map_err(|source| FilterError::Program {
                name: programs::FILTER,
                action: "attach",
                source,
            })
    }
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, FilterError> {
    typed(ebpf.program_mut(name), name)
}

/// A program of the object as its concrete type (`&Xdp` or `&mut Xdp`), or the error naming it.
fn typed<P, X>(program: Option<P>, name: &'static str) -> Result<X, FilterError>
where
    X: TryFrom<P, Error = ProgramError>,
{
    program
        .ok_or(FilterError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| FilterError::Program {
            name,
            action: "type check",
            source,
        })
}

fn static_name(name: &str) -> &'static str {
    if name == programs::EMPTY {
        programs::EMPTY
    } else {
        programs::FILTER
    }
}
