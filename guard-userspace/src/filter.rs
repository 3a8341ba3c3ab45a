//! The loaded XDP program and its maps.

use std::collections::BTreeSet;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp, XdpMode, xdp::XdpLinkId},
};
use guard_common::{
    CONFIG_SELECTOR, Config, Counter, GlobalCounters, RuleCounters, RuleKeyData, RuleValue,
    maps::names, programs,
};
use thiserror::Error;

use crate::{
    rules::{Prefix, Rule},
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
    #[error("map `{name}`: {action} failed")]
    Map {
        name: &'static str,
        action: String,
        #[source]
        source: MapError,
    },
    #[error("invalid settings")]
    Settings(#[from] SettingsError),
    #[error("rule id {id} is out of range (at most {max})")]
    RuleId { id: u32, max: u32 },
}

fn map_err(name: &'static str, action: impl Into<String>) -> impl FnOnce(MapError) -> FilterError {
    let action = action.into();
    move |source| FilterError::Map {
        name,
        action,
        source,
    }
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

/// The loaded filter: both programs loaded (not attached) and the maps configured.
pub struct Filter {
    ebpf: Ebpf,
    ports: BTreeSet<u16>,
}

impl Filter {
    /// Loads the object into the kernel with `settings` applied and no rules.
    pub fn load(settings: &Settings) -> Result<Self, FilterError> {
        // Validate before touching the kernel.
        settings.to_config()?;
        let ebpf = EbpfLoader::new().load(OBJECT).map_err(FilterError::Load)?;
        let mut f = Self {
            ebpf,
            ports: BTreeSet::new(),
        };
        for name in [programs::FILTER, programs::EMPTY] {
            f.xdp_mut(name)?
                .load()
                .map_err(|source| FilterError::Program {
                    name: static_name(name),
                    action: "load (verifier)",
                    source,
                })?;
        }
        f.apply_settings(settings)?;
        Ok(f)
    }

    fn xdp_mut(&mut self, name: &'static str) -> Result<&mut Xdp, FilterError> {
        self.ebpf
            .program_mut(name)
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

    fn xdp(&self, name: &'static str) -> Result<&Xdp, FilterError> {
        self.ebpf
            .program(name)
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

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, FilterError> {
        self.ebpf
            .map_mut(name)
            .ok_or(FilterError::Missing { kind: "map", name })
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, FilterError> {
        self.ebpf
            .map(name)
            .ok_or(FilterError::Missing { kind: "map", name })
    }

    /// Applies settings: the config goes into the inactive slot and is then switched live in one
    /// word write; new SIP ports are added before old ones are removed.
    pub fn apply_settings(&mut self, settings: &Settings) -> Result<(), FilterError> {
        let mut config = settings.to_config()?;
        let new_ports: BTreeSet<u16> = settings.sip_ports.iter().copied().collect();
        let old_ports = std::mem::take(&mut self.ports);
        {
            let mut ports: Array<&mut MapData, u8> =
                Array::try_from(self.map_mut(names::SIP_PORTS)?)
                    .map_err(map_err(names::SIP_PORTS, "open"))?;
            for &p in new_ports.difference(&old_ports) {
                ports
                    .set(p as u32, 1u8, 0)
                    .map_err(map_err(names::SIP_PORTS, format!("add port {p}")))?;
            }
            for &p in old_ports.difference(&new_ports) {
                ports
                    .set(p as u32, 0u8, 0)
                    .map_err(map_err(names::SIP_PORTS, format!("remove port {p}")))?;
            }
        }
        self.ports = new_ports;
        let mut cfg: Array<&mut MapData, Config> = Array::try_from(self.map_mut(names::CONFIG)?)
            .map_err(map_err(names::CONFIG, "open"))?;
        let selector = cfg
            .get(&CONFIG_SELECTOR, 0)
            .map_err(map_err(names::CONFIG, "read selector"))?;
        let next = (selector.active ^ 1) & 1;
        config.active = next;
        cfg.set(next, config, 0)
            .map_err(map_err(names::CONFIG, format!("write slot {next}")))?;
        // The flip: one aligned 32-bit word is what changes in the selector slot.
        let mut sel = selector;
        sel.active = next;
        cfg.set(CONFIG_SELECTOR, sel, 0)
            .map_err(map_err(names::CONFIG, "switch slot"))?;
        Ok(())
    }

    /// Inserts or replaces the rule for `rule.prefix` (an LPM update is atomic per key).
    pub fn insert_rule(&mut self, rule: &Rule) -> Result<(), FilterError> {
        if rule.id >= guard_common::MAX_RULES {
            return Err(FilterError::RuleId {
                id: rule.id,
                max: guard_common::MAX_RULES - 1,
            });
        }
        let key = rule.prefix.key();
        let value = RuleValue {
            id: rule.id,
            action: rule.action as u8,
            flags: 0,
            _reserved: 0,
        };
        let mut trie: LpmTrie<&mut MapData, RuleKeyData, RuleValue> =
            LpmTrie::try_from(self.map_mut(names::RULES)?)
                .map_err(map_err(names::RULES, "open"))?;
        trie.insert(&Key::new(key.prefix_len, key.data), value, 0)
            .map_err(map_err(names::RULES, format!("insert {}", rule.prefix)))
    }

    /// Removes the rule for `prefix`.
    pub fn remove_rule(&mut self, prefix: &Prefix) -> Result<(), FilterError> {
        let key = prefix.key();
        let mut trie: LpmTrie<&mut MapData, RuleKeyData, RuleValue> =
            LpmTrie::try_from(self.map_mut(names::RULES)?)
                .map_err(map_err(names::RULES, "open"))?;
        trie.remove(&Key::new(key.prefix_len, key.data))
            .map_err(map_err(names::RULES, format!("remove {prefix}")))
    }

    /// Counters of rule `id`, summed over CPUs.
    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters, FilterError> {
        let stats: PerCpuArray<&MapData, RuleCounters> =
            PerCpuArray::try_from(self.map(names::RULE_STATS)?)
                .map_err(map_err(names::RULE_STATS, "open"))?;
        let per_cpu = stats
            .get(&id, 0)
            .map_err(map_err(names::RULE_STATS, format!("read rule {id}")))?;
        Ok(per_cpu
            .iter()
            .fold(RuleCounters::default(), |a, c| RuleCounters {
                matched: a.matched + c.matched,
                dropped: a.dropped + c.dropped,
                would_drop: a.would_drop + c.would_drop,
            }))
    }

    /// Global counters, summed over CPUs.
    pub fn global_counters(&self) -> Result<GlobalCounters, FilterError> {
        let counters: PerCpuArray<&MapData, GlobalCounters> =
            PerCpuArray::try_from(self.map(names::COUNTERS)?)
                .map_err(map_err(names::COUNTERS, "open"))?;
        let per_cpu = counters
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

    /// One global counter, summed over CPUs.
    pub fn counter(&self, which: Counter) -> Result<u64, FilterError> {
        Ok(self.global_counters()?.counters[which as usize])
    }

    /// The verifier's processed-instruction count for the filter program (kernel 5.16+).
    pub fn verified_insns(&self) -> Result<Option<u32>, FilterError> {
        let info = self
            .xdp(programs::FILTER)?
            .info()
            .map_err(|source| FilterError::Program {
                name: programs::FILTER,
                action: "read info",
                source,
            })?;
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
        self.xdp_mut(programs::FILTER)?
            .attach(iface, mode)
            .map_err(|source| FilterError::Program {
                name: programs::FILTER,
                action: "attach",
                source,
            })
    }
}

fn static_name(name: &str) -> &'static str {
    if name == programs::EMPTY {
        programs::EMPTY
    } else {
        programs::FILTER
    }
}
