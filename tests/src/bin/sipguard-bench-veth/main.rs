//! `cargo xtask bench veth`: what dropping a flood of SIP INVITEs costs the receiving CPU, per
//! packet, on a veth pair, for sipguard and for the alternatives, in one run. Not a test.
//!
//! A sender pinned to CPU 0 floods one end of a veth pair with a 592-byte INVITE to `+232...`
//! (`AF_PACKET`, `sendmmsg`, qdisc bypassed); the other end receives through threaded NAPI (GRO
//! on, the sender's TSO off, so that veth uses NAPI for every configuration), its NAPI thread
//! pinned to CPU 1. Per row, after a warm-up: the busy time of CPU 1 (/proc/stat) and the NAPI
//! thread's CPU time, each divided by the packets the receiving veth took off its ring, as ns per
//! packet and as a ratio to an XDP program that only drops.
//!
//! Everything (namespaces, veths, XDP programs, nft tables, iptables rules, sipguard pins and
//! daemons, files) is removed on the way out, also on failure and Ctrl-C.

mod rig;
mod rows;

use std::{
    fmt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use sipguard_tests::flood::{BATCH, Flood, FloodCounts, Frame, invite_frame, set_affinity};

use crate::{
    rig::{
        CpuTicks, LinkStats, RX_IP, Rig, TX_IP, TaskTime, cpu_ticks, run, task_time,
        ticks_per_second,
    },
    rows::{Installed, Row, SgCounters},
};

/// The sender (and this process, and everything it starts) runs here.
const TX_CPU: usize = 0;
/// The receiving veth's NAPI thread runs here; this CPU is measured.
const RX_CPU: usize = 1;

/// Above this share (percent) of CPU 1 going to other work, a row's CPU 1 figure is marked.
const CONTENDED: f64 = 10.0;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Sleeps for `d`, returning early with [`Interrupted`] on Ctrl-C.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(Interrupted.into());
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

struct Opts {
    seconds: u64,
    coalesce_us: u64,
    warmup: u64,
    rows: Vec<Row>,
}

const USAGE: &str = "usage: sipguard-bench-veth [--seconds N (default 10)] [--warmup N (default 2)] \
                     [--coalesce-us N (default 0: off)] [--only ROW[,ROW...]]\n\
                     rows: floor sipguard sipguard-new-calls sipguard-no-calls nft iptables nothing \
                     (the floor is always measured)";

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        seconds: 10,
        coalesce_us: 0,
        warmup: 2,
        rows: Row::ALL.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--help" || a == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        match a.as_str() {
            "--coalesce-us" => {
                opts.coalesce_us = value
                    .parse()
                    .ok()
                    .filter(|&n| n <= 10_000)
                    .ok_or_else(|| format!("{a}: {value} is not 0..10000"))?;
            }
            "--seconds" | "--warmup" => {
                let n: u64 = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0 && n <= 600)
                    .ok_or_else(|| format!("{a}: {value} is not 1..600"))?;
                if a == "--seconds" {
                    opts.seconds = n;
                } else {
                    opts.warmup = n;
                }
            }
            "--only" => {
                let mut rows = vec![Row::Floor];
                for key in value.split(',') {
                    let row = Row::ALL
                        .into_iter()
                        .find(|r| r.key() == key)
                        .ok_or_else(|| format!("unknown row `{key}`"))?;
                    if !rows.contains(&row) {
                        rows.push(row);
                    }
                }
                opts.rows = rows;
            }
            _ => return Err(format!("unknown argument `{a}`")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the veth bench builds namespaces and attaches XDP programs: run it as root");
        return ExitCode::FAILURE;
    }
    // Before any thread or child exists, so that all of them (the Ctrl-C thread, the sender,
    // the sipguard daemon, every command) inherit it and stay off the measured CPU.
    if let Err(e) = set_affinity(0, TX_CPU) {
        eprintln!("cannot pin the bench to CPU {TX_CPU}: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)) {
        eprintln!("cannot install the Ctrl-C handler: {e}");
        return ExitCode::FAILURE;
    }
    // Whatever happens inside (an error, a panic in a helper, Ctrl-C), the guards on bench's
    // stack are dropped before we get here, so everything is torn down.
    let result = std::panic::catch_unwind(|| bench(&opts));
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        // Ctrl-C also reaches the commands we run, so the error may be theirs.
        Ok(Err(_)) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("interrupted: everything was torn down");
            ExitCode::from(130)
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            eprintln!("everything was torn down");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("the bench failed (see above); everything was torn down");
            ExitCode::FAILURE
        }
    }
}

/// A private directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("sgt-{}-vbench", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails with what to install when a program the selected rows need is missing.
fn check_tools(rows: &[Row]) -> Result<()> {
    let mut need = vec![("ip", "iproute2"), ("ethtool", "ethtool")];
    need.extend(rows.iter().flat_map(|r| r.tools().iter().copied()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = need
        .into_iter()
        .filter(|(prog, _)| !std::env::split_paths(&path).any(|d| d.join(prog).is_file()))
        .map(|(prog, pkg)| format!("{prog} (Debian package {pkg})"))
        .collect();
    ensure!(
        missing.is_empty(),
        "missing: {}; `cargo xtask bench veth` installs them",
        missing.join(", ")
    );
    Ok(())
}

/// Compiles tests/bpf/xdp_drop.c into `dir`.
fn build_floor(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/xdp_drop.c");
    let obj = dir.join("xdp_drop.o");
    run(Command::new("clang")
        .args(["-O2", "-g", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj))?;
    Ok(obj)
}

/// What one row measured, over the window.
struct Measured {
    row: Row,
    secs: f64,
    /// Frames the receiving veth took off its ring (and so processed).
    packets: u64,
    cpu_busy_ns: f64,
    steal_ns: f64,
    napi: TaskTime,
    flood: FloodCounts,
    tx: LinkStats,
    udp: u64,
    sipguard: Option<SgCounters>,
}

impl Measured {
    fn per_packet(&self, v: f64) -> f64 {
        v / self.packets as f64
    }
    fn pps(&self) -> f64 {
        self.packets as f64 / self.secs
    }
    fn ns_cpu(&self) -> f64 {
        self.per_packet(self.cpu_busy_ns)
    }
    fn ns_napi(&self) -> f64 {
        self.per_packet(self.napi.ns as f64)
    }
    /// Share of CPU 1 that went to something other than the NAPI thread, in percent.
    fn other_work(&self) -> f64 {
        self.busy((self.cpu_busy_ns - self.napi.ns as f64).max(0.0))
    }
    fn contended(&self) -> bool {
        self.other_work() > CONTENDED
    }
    /// Share of the window, in percent.
    fn busy(&self, ns: f64) -> f64 {
        ns / (self.secs * 1e9) * 100.0
    }
}

/// The counters one end of the window reads.
struct Reading {
    at: Instant,
    rx: LinkStats,
    cpu: CpuTicks,
    napi: TaskTime,
    tx: LinkStats,
    flood: FloodCounts,
    udp: u64,
    sipguard: Option<SgCounters>,
}

fn read(rig: &Rig, napi: &[i32], flood: &Flood, installed: &dyn Installed) -> Result<Reading> {
    // The packet count first, then the CPU times right after it, in the same order at both ends
    // of the window, so that both cover the same interval; the checks after that.
    let rx = rig.rx_link()?;
    let cpu = cpu_ticks(RX_CPU)?;
    let napi = task_time(napi)?;
    let at = Instant::now();
    Ok(Reading {
        at,
        rx,
        cpu,
        napi,
        tx: rig.tx_link()?,
        flood: flood.counts(),
        udp: rig.udp_in()?,
        sipguard: installed.sipguard_counters()?,
    })
}

fn measure(
    rig: &Rig,
    row: Row,
    frame: &Frame,
    floor_obj: Option<&Path>,
    opts: &Opts,
) -> Result<Measured> {
    let installed = row.install(rig, floor_obj)?;
    // Attaching XDP can re-create the NAPI instance (and its thread): pin after installing.
    let napi = rig.pin_napi(RX_CPU)?;
    let flood = Flood::start(&rig.tx, &rig.tx_if, frame, row.new_call_ids(), TX_CPU)
        .context("starting the sender")?;
    pause(Duration::from_secs(opts.warmup))?;
    let a = read(rig, &napi, &flood, &*installed)?;
    pause(Duration::from_secs(opts.seconds))?;
    let b = read(rig, &napi, &flood, &*installed)?;
    flood.stop().context("the sender")?;
    installed.finish()?;

    let hz = ticks_per_second() as f64;
    let ticks = |f: fn(&CpuTicks) -> u64| f(&b.cpu).saturating_sub(f(&a.cpu)) as f64;
    let packets = b.rx.rx_packets - a.rx.rx_packets;
    ensure!(
        packets > 0,
        "{}: the receiving veth took no packets in {} s",
        row.key(),
        opts.seconds
    );
    let napi = TaskTime {
        ns: b.napi.ns - a.napi.ns,
        runs: b.napi.runs - a.napi.runs,
    };
    // A few ns per packet at most would be a thread that only woke up now and then: the
    // frames went through some other path (the sender CPU's backlog) and nothing here would be
    // about the receiving CPU.
    ensure!(
        napi.ns / packets >= 10,
        "{}: the receiving veth's NAPI thread spent {} ns on {packets} packets; they were not \
         received through it",
        row.key(),
        napi.ns
    );
    Ok(Measured {
        row,
        secs: (b.at - a.at).as_secs_f64(),
        packets,
        cpu_busy_ns: ticks(|c| c.busy) * 1e9 / hz,
        steal_ns: ticks(|c| c.steal) * 1e9 / hz,
        napi,
        flood: FloodCounts {
            sent: b.flood.sent - a.flood.sent,
            rejected: b.flood.rejected - a.flood.rejected,
        },
        tx: LinkStats {
            rx_packets: b.tx.rx_packets - a.tx.rx_packets,
            tx_packets: b.tx.tx_packets - a.tx.tx_packets,
            tx_dropped: b.tx.tx_dropped - a.tx.tx_dropped,
        },
        udp: b.udp - a.udp,
        sipguard: match (a.sipguard, b.sipguard) {
            (Some(x), Some(y)) => Some(SgCounters {
                dropped: y.dropped - x.dropped,
                calls: y.calls - x.calls,
            }),
            _ => None,
        },
    })
}

/// Busy share of CPU `cpu` over `d` with nothing of ours running, in percent.
fn background_load(cpu: usize, d: Duration) -> Result<f64> {
    let a = cpu_ticks(cpu)?;
    pause(d)?;
    let b = cpu_ticks(cpu)?;
    Ok((b.busy - a.busy) as f64 * 100.0 / (b.total - a.total).max(1) as f64)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model} ({cpus} CPUs), Linux {}", kernel.trim())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

fn bench(opts: &Opts) -> Result<()> {
    let t0 = Instant::now();
    check_tools(&opts.rows)?;
    ensure!(
        cpu_ticks(RX_CPU).is_ok(),
        "the bench needs two CPUs (sender on CPU {TX_CPU}, receiver on CPU {RX_CPU})"
    );
    let iptables = run(Command::new("iptables-legacy").arg("-V"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "iptables-legacy".into());

    let tmp = TempDir::new()?;
    let floor_obj = if opts.rows.contains(&Row::Floor) {
        Some(build_floor(&tmp.0)?)
    } else {
        None
    };
    eprintln!("==> building two namespaces joined by a veth pair ({TX_IP} -> {RX_IP})");
    let rig = Rig::new(opts.coalesce_us)?;
    let frame = invite_frame(&rig.endpoints);
    let background = background_load(RX_CPU, Duration::from_secs(1))?;
    eprintln!(
        "    receiving veth {}: GRO on, threaded NAPI pinned to CPU {RX_CPU}; CPU {RX_CPU} was \
         {background:.0}% busy before the flood",
        rig.rx_if
    );

    let mut results = Vec::new();
    for &row in &opts.rows {
        eprintln!(
            "==> {} ({} s after {} s of warm-up)",
            row.label(),
            opts.seconds,
            opts.warmup
        );
        let m = measure(&rig, row, &frame, floor_obj.as_deref(), opts)
            .with_context(|| format!("row `{}`", row.key()))?;
        eprintln!(
            "    {:.0} kpps; {:.0} ns/packet on CPU {RX_CPU}, {:.0} ns/packet in the NAPI thread",
            m.pps() / 1e3,
            m.ns_cpu(),
            m.ns_napi()
        );
        results.push(m);
    }
    drop(rig);
    drop(tmp);
    report(opts, &results, &frame, background, &iptables, t0.elapsed());
    Ok(())
}

fn report(
    opts: &Opts,
    results: &[Measured],
    frame: &Frame,
    background: f64,
    iptables: &str,
    took: Duration,
) {
    let floor = results.iter().find(|m| m.row == Row::Floor);
    let ratio = |m: &Measured, f: fn(&Measured) -> f64| {
        floor.map_or_else(|| "-".into(), |fl| format!("{:.2}", f(m) / f(fl)))
    };
    println!();
    println!("sipguard veth bench, {}, {}", now_utc(), machine());
    println!(
        "flood: a {}-byte Ethernet/IPv4/UDP SIP INVITE to sip:+23276123456@{RX_IP}, AF_PACKET \
         sendmmsg ({BATCH} per call, qdisc bypass) on CPU {TX_CPU}",
        frame.bytes.len()
    );
    let coalescing = if opts.coalesce_us > 0 {
        format!(
            "NAPI polls every {} µs while traffic flows (--coalesce-us)",
            opts.coalesce_us
        )
    } else {
        "no interrupt coalescing".to_owned()
    };
    println!(
        "receiver: the other veth, GRO on, threaded NAPI, its NAPI thread pinned to CPU {RX_CPU}, \
         {coalescing}; {} s per row after {} s of warm-up; CPU {RX_CPU} was {background:.0}% \
         busy before the flood",
        opts.seconds, opts.warmup
    );
    println!();
    println!(
        "| configuration | kpps | ns/pkt, CPU {RX_CPU} | ratio | ns/pkt, NAPI thread | ratio | \
         CPU {RX_CPU} busy | NAPI thread busy | pkts per NAPI run | reached UDP |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in results {
        println!(
            "| {} | {:.0} | {:.0}{} | {} | {:.0} | {} | {:.0}% | {:.0}% | {:.1} | {:.1}% |",
            m.row.label(),
            m.pps() / 1e3,
            m.ns_cpu(),
            if m.contended() { " *" } else { "" },
            ratio(m, Measured::ns_cpu),
            m.ns_napi(),
            ratio(m, Measured::ns_napi),
            m.busy(m.cpu_busy_ns),
            m.busy(m.napi.ns as f64),
            m.packets as f64 / m.napi.runs.max(1) as f64,
            // The UDP counter is read a moment after the packet count.
            (m.per_packet(m.udp as f64) * 100.0).min(100.0)
        );
    }
    println!();
    println!(
        "- packets: frames the receiving veth took off its ring (its rx_packets), whatever their fate."
    );
    println!(
        "- ns/pkt, CPU {RX_CPU}: busy time of CPU {RX_CPU} (/proc/stat: all but idle and \
         iowait) / packets. It counts everything that ran on CPU {RX_CPU}, also other processes."
    );
    println!(
        "- ns/pkt, NAPI thread: CPU time of the receiving veth's NAPI thread (/proc/PID/schedstat) \
         / packets: the receive path itself (XDP or the stack, including what the softirqs run \
         in its context), without the time of other processes on CPU {RX_CPU} (which still \
         slow it down, through caches and the sibling hyperthread)."
    );
    println!(
        "- ratio: ns/pkt over the floor's ns/pkt, same run and column. pkts per NAPI run: packets \
         per time the NAPI thread was scheduled in; below the NAPI budget (64) the thread goes \
         to sleep and is woken again, and that cost is spread over fewer packets."
    );
    println!(
        "- veth: before the program runs, native XDP on veth copies every frame into a new page \
         (the AF_PACKET skb lacks XDP headroom), so the floor and the sipguard rows include a \
         page allocation and a {}-byte copy per frame that XDP in a real NIC's driver does not \
         pay; nft, iptables and the stack get the skb without that copy. On a NIC, XDP rows \
         would be cheaper relative to the rest.",
        frame.bytes.len()
    );
    println!("- iptables: {iptables}, the xtables backend (not iptables-nft).");
    println!(
        "- the sender is clocked by its socket send buffer (the frames in flight hold it), so \
         the veth ring never overflows: nothing is dropped at the sender (tx_dropped below)."
    );
    if results.iter().any(Measured::contended) {
        println!(
            "- *: more than {CONTENDED:.0}% of CPU {RX_CPU} went to something other than the \
             NAPI thread during the row (other processes on this machine), and its CPU {RX_CPU} \
             figure includes that time; read the NAPI thread column for those rows."
        );
    }
    println!();
    println!("configurations:");
    for m in results {
        println!("- {}: {}", m.row.key(), m.row.describe());
    }
    println!();
    println!("per row, in the window:");
    for m in results {
        let mut line = format!(
            "- {}: {} packets in {:.2} s; NAPI thread: {} runs; other work on CPU {RX_CPU}: {:.0}%; \
             sender: {} sent, {} sendmmsg calls cut short; sending veth: tx_packets {}, \
             tx_dropped {}; reached UDP: {}",
            m.row.key(),
            m.packets,
            m.secs,
            m.napi.runs,
            m.other_work(),
            m.flood.sent,
            m.flood.rejected,
            m.tx.tx_packets,
            m.tx.tx_dropped,
            m.udp
        );
        if m.steal_ns > 0.0 {
            line.push_str(&format!(
                "; steal on CPU {RX_CPU}: {:.0}%",
                m.busy(m.steal_ns)
            ));
        }
        if let Some(sg) = m.sipguard {
            line.push_str(&format!(
                "; sipguard: {} dropped, {} new calls counted",
                sg.dropped, sg.calls
            ));
        }
        println!("{line}");
    }
    let warnings = checks(results);
    if !warnings.is_empty() {
        println!();
        for w in warnings {
            println!("WARNING: {w}");
        }
    }
    println!();
    println!("the veth bench took {:.0} s", took.as_secs_f64());
}

/// Whether each row did what it should; anything odd is reported under the table.
fn checks(results: &[Measured]) -> Vec<String> {
    let mut w = Vec::new();
    for m in results {
        let to_udp = m.per_packet(m.udp as f64);
        if m.row.drops() && to_udp > 0.01 {
            w.push(format!(
                "{}: {:.1}% of the packets reached UDP; the configuration did not drop them",
                m.row.key(),
                to_udp * 100.0
            ));
        }
        if !m.row.drops() && to_udp < 0.99 {
            w.push(format!(
                "{}: only {:.1}% of the packets reached UDP",
                m.row.key(),
                to_udp * 100.0
            ));
        }
        if let Some(sg) = m.sipguard
            && (sg.dropped as f64) < m.packets as f64 * 0.99
        {
            w.push(format!(
                "{}: sipguard dropped {} of {} packets",
                m.row.key(),
                sg.dropped,
                m.packets
            ));
        }
    }
    w
}
