//! Kernel memory of a loaded filter: the `memlock` of every map its program uses, as the kernel
//! accounts it (`/proc/self/fdinfo/<map fd>`, the map's `map_mem_usage`), and what the same maps
//! would take on a machine with more CPUs (per-CPU values scale with the possible CPUs).

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{MapError, MapInfo, MapType};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("map id {id}: {action} failed")]
    Map {
        id: u32,
        action: &'static str,
        #[source]
        source: MapError,
    },
    #[error("/proc/self/fdinfo/{fd}: no memlock line (kernel too old?)")]
    NoMemlock { fd: i32 },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
}

/// One map's kernel memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: String,
    pub map_type: String,
    pub max_entries: u32,
    /// Bytes, as the kernel accounts them on this machine.
    pub memlock: u64,
    /// The part of `memlock` that is per-CPU (it scales with the number of CPUs).
    pub per_cpu: u64,
}

impl MapMemory {
    /// `memlock` on a machine with `cpus` possible CPUs instead of `here`.
    pub fn at_cpus(&self, here: usize, cpus: usize) -> u64 {
        let shared = self.memlock - self.per_cpu;
        shared + self.per_cpu / here.max(1) as u64 * cpus as u64
    }
}

/// Possible CPUs (what the kernel sizes per-CPU maps by).
pub fn possible_cpus() -> Result<usize, MemoryError> {
    aya::util::nr_cpus().map_err(|(what, e)| MemoryError::Cpus(format!("{what}: {e}")))
}

/// `memlock:` of a BPF object's fd, from /proc/self/fdinfo.
pub fn memlock_of_fd(fd: i32) -> Result<u64, MemoryError> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or(MemoryError::NoMemlock { fd })
}

/// Kernel memory of the maps with these ids. `entries(name)` gives the number of entries of a
/// per-CPU hash map (the kernel allocates their per-CPU values per entry, not up front).
pub fn of_maps(
    ids: &[u32],
    entries: impl Fn(&str) -> Option<u64>,
) -> Result<Vec<MapMemory>, MemoryError> {
    let cpus = possible_cpus()? as u64;
    let mut out = Vec::new();
    for &id in ids {
        let err = |action| move |source| MemoryError::Map { id, action, source };
        let info = MapInfo::from_id(id).map_err(err("read info"))?;
        let fd = info.fd().map_err(err("open"))?;
        let memlock = memlock_of_fd(fd.as_fd().as_raw_fd())?;
        let name = info.name_as_str().unwrap_or("?").to_string();
        let value = u64::from(info.value_size()).div_ceil(8) * 8;
        let map_type = info.map_type().ok();
        // kernel/bpf/arraymap.c and hashtab.c, *_map_mem_usage.
        let locks = 4 * 8 * cpus; // htab->map_locked: HASHTAB_MAP_LOCK_COUNT ints per CPU
        let per_cpu = match map_type {
            Some(MapType::PerCpuArray) => u64::from(info.max_entries()) * value * cpus,
            Some(MapType::PerCpuHash) => {
                let n = entries(&name).unwrap_or(0);
                n * value * cpus + locks
            }
            Some(MapType::Hash | MapType::LruHash | MapType::LruPerCpuHash) => locks,
            _ => 0,
        }
        .min(memlock);
        out.push(MapMemory {
            map_type: map_type.map_or_else(|| "?".into(), |t| format!("{t:?}")),
            name,
            max_entries: info.max_entries(),
            memlock,
            per_cpu,
        });
    }
    out.sort_by(|a, b| b.memlock.cmp(&a.memlock).then(a.name.cmp(&b.name)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_part_scales_with_cpus() {
        let m = MapMemory {
            name: "SG_RULE_STATS".into(),
            map_type: "PerCpuArray".into(),
            max_entries: 262_144,
            memlock: 1_000 + 2 * 10_485_760,
            per_cpu: 2 * 10_485_760,
        };
        assert_eq!(m.at_cpus(2, 2), m.memlock);
        assert_eq!(m.at_cpus(2, 64), 1_000 + 64 * 10_485_760);
    }
}
