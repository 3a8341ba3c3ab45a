//! The rig: two namespaces joined by a veth pair, the receiving end prepared so that its whole
//! receive path runs on one known CPU (GRO on, so veth uses NAPI for every configuration;
//! threaded NAPI; the NAPI thread pinned), and the readings a measurement takes.

use std::{fs, net::Ipv4Addr, process::Command};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use sipguard_tests::{
    flood::{Endpoints, set_affinity},
    netns::{self, Netns},
};

pub const TX_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const RX_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// Runs `cmd` and returns its stdout; the error names the command and quotes its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let line = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    ensure!(
        out.status.success(),
        "`{line}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec NS PROG`: PROG runs in the namespace, with /sys remounted for it.
pub fn in_ns(ns: &Netns, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name, prog]);
    c
}

pub struct Rig {
    pub tx: Netns,
    pub rx: Netns,
    /// The sending end (in `tx`).
    pub tx_if: String,
    /// The receiving end (in `rx`), where every configuration is installed.
    pub rx_if: String,
    pub endpoints: Endpoints,
}

impl Rig {
    /// Builds the namespaces and the veth pair; dropping the rig deletes both namespaces, which
    /// deletes the veths and everything installed inside (nft tables, iptables rules).
    pub fn new(coalesce_us: u64) -> Result<Self> {
        let tx = Netns::new("vb-tx");
        let rx = Netns::new("vb-rx");
        for ns in [&tx, &rx] {
            // No IPv6: no router solicitations or MLD reports in the counters.
            run(in_ns(ns, "sysctl").args([
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]))?;
        }
        let id = std::process::id() % 100_000;
        // Short names: the NAPI thread is `napi/<iface>-<id>`, cut to 15 characters.
        let (tx_if, rx_if) = (format!("sgv{id}t"), format!("sgv{id}r"));
        netns::ip(&[
            "link", "add", &tx_if, "netns", &tx.name, "type", "veth", "peer", "name", &rx_if,
            "netns", &rx.name,
        ])
        .map_err(anyhow::Error::msg)?;
        tx.ip(&["addr", "add", &format!("{TX_IP}/24"), "dev", &tx_if])
            .map_err(anyhow::Error::msg)?;
        rx.ip(&["addr", "add", &format!("{RX_IP}/24"), "dev", &rx_if])
            .map_err(anyhow::Error::msg)?;
        // veth receives through NAPI (on the receiving end's NAPI thread) only when that end
        // has GRO on or an XDP program, and the sending end cannot make TSO frames (attaching
        // XDP turns the peer's TSO off; we do it for every configuration). Otherwise frames
        // go to the sender CPU's backlog and the receiving CPU sees none of the work.
        run(in_ns(&rx, "ethtool").args(["-K", &rx_if, "gro", "on"]))?;
        run(in_ns(&tx, "ethtool").args(["-K", &tx_if, "tso", "off"]))?;
        for (ns, dev) in [(&tx, &tx_if), (&rx, &rx_if)] {
            ns.ip(&["link", "set", dev, "up"])
                .map_err(anyhow::Error::msg)?;
        }
        let mut sysfs = format!("echo 1 > /sys/class/net/{rx_if}/threaded");
        if coalesce_us > 0 {
            // Interrupt coalescing, as a NIC does it: after a poll that found work, NAPI does
            // not re-arm the "interrupt" (veth's wake-up of the thread) but polls again from a
            // timer after `coalesce_us`, so the thread takes batches instead of waking per few
            // frames.
            sysfs.push_str(&format!(
                " && echo 1 > /sys/class/net/{rx_if}/napi_defer_hard_irqs \
                 && echo {} > /sys/class/net/{rx_if}/gro_flush_timeout",
                coalesce_us * 1000
            ));
        }
        run(in_ns(&rx, "sh").args(["-c", &sysfs]))?;
        let endpoints = Endpoints {
            src_mac: mac(&tx, &tx_if)?,
            dst_mac: mac(&rx, &rx_if)?,
            src_ip: TX_IP,
            dst_ip: RX_IP,
        };
        Ok(Self {
            tx,
            rx,
            tx_if,
            rx_if,
            endpoints,
        })
    }

    /// The PIDs of the receiving veth's NAPI threads (one per receive queue).
    pub fn napi_threads(&self) -> Result<Vec<i32>> {
        let mut want = format!("napi/{}-", self.rx_if);
        want.truncate(15); // TASK_COMM_LEN - 1
        let mut pids = Vec::new();
        for e in fs::read_dir("/proc").context("reading /proc")? {
            let e = e?;
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // A task can exit between readdir and read.
            if let Ok(comm) = fs::read_to_string(e.path().join("comm"))
                && comm.trim_end().starts_with(&want)
            {
                pids.push(pid);
            }
        }
        ensure!(
            !pids.is_empty(),
            "no NAPI thread `{want}...` for {} (threaded NAPI not enabled?)",
            self.rx_if
        );
        Ok(pids)
    }

    /// Pins the NAPI threads to `cpu` and returns their PIDs.
    pub fn pin_napi(&self, cpu: usize) -> Result<Vec<i32>> {
        let pids = self.napi_threads()?;
        for &pid in &pids {
            set_affinity(pid, cpu).with_context(|| format!("pinning NAPI thread {pid}"))?;
        }
        Ok(pids)
    }

    /// Counters of the receiving veth.
    pub fn rx_link(&self) -> Result<LinkStats> {
        link_stats(&self.rx, &self.rx_if)
    }

    /// Counters of the sending veth.
    pub fn tx_link(&self) -> Result<LinkStats> {
        link_stats(&self.tx, &self.tx_if)
    }

    /// Datagrams that reached UDP in the receiving namespace (delivered, no port, or errors).
    pub fn udp_in(&self) -> Result<u64> {
        let snmp = run(in_ns(&self.rx, "cat").arg("/proc/net/snmp"))?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            bail!("no Udp lines in /proc/net/snmp");
        };
        let mut total = 0;
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if matches!(n, "InDatagrams" | "NoPorts" | "InErrors") {
                total += v.parse::<u64>().context("Udp counter")?;
            }
        }
        Ok(total)
    }
}

fn mac(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let v = link_json(ns, dev)?;
    let text = v["address"].as_str().context("no link address")?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    ensure!(parts.len() == 6, "MAC address {text}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("MAC address {text}"))?;
    }
    Ok(mac)
}

fn link_json(ns: &Netns, dev: &str) -> Result<Value> {
    let out =
        run(Command::new("ip").args(["-n", &ns.name, "-j", "-s", "link", "show", "dev", dev]))?;
    let v: Value = serde_json::from_str(&out).context("ip -j link output")?;
    Ok(v.get(0).cloned().unwrap_or(Value::Null))
}

/// A veth's counters (`ip -s link`, from the kernel's rtnl_link_stats64).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

fn link_stats(ns: &Netns, dev: &str) -> Result<LinkStats> {
    let v = link_json(ns, dev)?;
    let s = &v["stats64"];
    let get = |dir: &str, key: &str| {
        s[dir][key]
            .as_u64()
            .with_context(|| format!("no stats64.{dir}.{key} for {dev}"))
    };
    Ok(LinkStats {
        rx_packets: get("rx", "packets")?,
        tx_packets: get("tx", "packets")?,
        tx_dropped: get("tx", "dropped")?,
    })
}

/// One CPU's time from /proc/stat, in USER_HZ ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    /// Everything but idle and iowait.
    pub busy: u64,
    pub total: u64,
    pub steal: u64,
}

pub fn cpu_ticks(cpu: usize) -> Result<CpuTicks> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} in /proc/stat"))?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
    // part of user and nice.
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().context("/proc/stat field"))
        .collect::<Result<_>>()?;
    ensure!(v.len() == 8, "short {label} line in /proc/stat");
    let total: u64 = v.iter().sum();
    Ok(CpuTicks {
        busy: total - v[3] - v[4],
        total,
        steal: v[7],
    })
}

/// USER_HZ, the unit of /proc/stat.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// CPU time and scheduling of a set of tasks.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskTime {
    /// Time on a CPU, in ns.
    pub ns: u64,
    /// Times the tasks were scheduled in (each NAPI thread run is one).
    pub runs: u64,
}

/// CPU time of tasks `pids` (/proc/PID/schedstat: time on CPU in ns, run delay, runs).
pub fn task_time(pids: &[i32]) -> Result<TaskTime> {
    let mut total = TaskTime::default();
    for pid in pids {
        let path = format!("/proc/{pid}/schedstat");
        let text = fs::read_to_string(&path)
            .with_context(|| format!("reading {path} (the NAPI thread went away?)"))?;
        let f: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{path}: {text}"))?;
        ensure!(f.len() >= 3, "{path}: {text}");
        total.ns += f[0];
        total.runs += f[2];
    }
    Ok(total)
}
