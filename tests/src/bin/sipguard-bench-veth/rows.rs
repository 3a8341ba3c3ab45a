//! The configurations the bench compares, each installed on the receiving veth by a guard that
//! removes it again on drop (also on failure or Ctrl-C).

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use sipguard_tests::harness::Instance;

use crate::rig::{Rig, in_ns, run};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    Floor,
    Sipguard,
    SipguardNewCalls,
    SipguardNoCalls,
    Nft,
    Iptables,
    Nothing,
}

/// The start of the request line the nft row matches: `INVITE sip:+232` (15 bytes).
const NFT_MATCH: &[u8] = b"INVITE sip:+232";
const NFT_TABLE: &str = "sgbench";

impl Row {
    pub const ALL: [Row; 7] = [
        Row::Floor,
        Row::Sipguard,
        Row::SipguardNewCalls,
        Row::SipguardNoCalls,
        Row::Nft,
        Row::Iptables,
        Row::Nothing,
    ];

    /// The name `--only` takes.
    pub fn key(self) -> &'static str {
        match self {
            Row::Floor => "floor",
            Row::Sipguard => "sipguard",
            Row::SipguardNewCalls => "sipguard-new-calls",
            Row::SipguardNoCalls => "sipguard-no-calls",
            Row::Nft => "nft",
            Row::Iptables => "iptables",
            Row::Nothing => "nothing",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Row::Floor => "floor: XDP program that only returns XDP_DROP (native)",
            Row::Sipguard => "sipguard (native), same Call-ID every packet",
            Row::SipguardNewCalls => "sipguard (native), a new Call-ID every packet",
            Row::SipguardNoCalls => "sipguard (native), track_calls = false",
            Row::Nft => "nftables netdev ingress, payload match, drop",
            Row::Iptables => "iptables-legacy -t raw PREROUTING -m string, DROP",
            Row::Nothing => "nothing installed (UDP: ICMP port unreachable)",
        }
    }

    /// Whether the sender writes a new Call-ID into every frame.
    pub fn new_call_ids(self) -> bool {
        self == Row::SipguardNewCalls
    }

    /// Whether the configuration drops the flood (the others hand it to UDP).
    pub fn drops(self) -> bool {
        self != Row::Nothing
    }

    /// The programs this row runs, with the Debian package that has them.
    pub fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Row::Floor => &[("clang", "clang")],
            Row::Nft => &[("nft", "nftables")],
            Row::Iptables => &[("iptables-legacy", "iptables")],
            _ => &[],
        }
    }

    /// Installs the configuration on the receiving veth. `floor_obj` is the compiled XDP_DROP
    /// program (needed by the floor only).
    pub fn install<'a>(
        self,
        rig: &'a Rig,
        floor_obj: Option<&Path>,
    ) -> Result<Box<dyn Installed + 'a>> {
        Ok(match self {
            Row::Floor => Box::new(XdpDrop::attach(
                rig,
                floor_obj.context("the floor's XDP object was not built")?,
            )?),
            Row::Sipguard | Row::SipguardNewCalls => Box::new(Sipguard::start(rig, true, self)?),
            Row::SipguardNoCalls => Box::new(Sipguard::start(rig, false, self)?),
            Row::Nft => Box::new(NftIngress::add(rig)?),
            Row::Iptables => Box::new(IptString::add(rig)?),
            Row::Nothing => Box::new(Nothing),
        })
    }

    /// What the row runs, for the notes under the table.
    pub fn describe(self) -> String {
        match self {
            Row::Floor => "`ip link set dev IF xdpdrv obj xdp_drop.o sec xdp` \
                           (tests/bpf/xdp_drop.c, clang -O2 -target bpf)"
                .into(),
            Row::Sipguard | Row::SipguardNewCalls | Row::SipguardNoCalls => format!(
                "`sipguard run --iface IF --xdp-mode native` with {}",
                config(self != Row::SipguardNoCalls)
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with('['))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Row::Nft => format!(
                "table netdev {NFT_TABLE}, chain hook ingress priority 0: \
                 `udp dport 5060 @th,64,{} 0x{} drop` (\"{}\")",
                NFT_MATCH.len() * 8,
                hex(NFT_MATCH),
                String::from_utf8_lossy(NFT_MATCH)
            ),
            Row::Iptables => format!(
                "`iptables-legacy -t raw -A PREROUTING {}`",
                IPT_RULE.join(" ")
            ),
            Row::Nothing => "no filter; the UDP stack finds no socket on 5060 and answers \
                             ICMP port unreachable (rate-limited)"
                .into(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What sipguard counted (from `sipguard stats --json`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SgCounters {
    pub dropped: u64,
    pub calls: u64,
}

/// An installed configuration. Dropping it removes it; `finish` removes it the orderly way and
/// reports failures.
pub trait Installed {
    /// sipguard's own counters, for the rows that run sipguard.
    fn sipguard_counters(&self) -> Result<Option<SgCounters>> {
        Ok(None)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

struct Nothing;
impl Installed for Nothing {}

/// The floor: a native XDP program that drops everything, attached with `ip`.
struct XdpDrop<'a> {
    rig: &'a Rig,
}

impl<'a> XdpDrop<'a> {
    fn attach(rig: &'a Rig, obj: &Path) -> Result<Self> {
        // The guard exists before the attach, so a half-done attach is undone too.
        let guard = Self { rig };
        let obj = obj.to_str().context("object path is not UTF-8")?;
        run(Command::new("ip").args([
            "-n",
            &rig.rx.name,
            "link",
            "set",
            "dev",
            &rig.rx_if,
            "xdpdrv",
            "obj",
            obj,
            "sec",
            "xdp",
        ]))?;
        Ok(guard)
    }

    fn detach(&self) -> Result<()> {
        run(Command::new("ip").args([
            "-n",
            &self.rig.rx.name,
            "link",
            "set",
            "dev",
            &self.rig.rx_if,
            "xdpdrv",
            "off",
        ]))
        .map(drop)
    }
}

impl Installed for XdpDrop<'_> {}

impl Drop for XdpDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// The sipguard config of the sipguard rows: block +232, no metrics listener (no port clash).
pub fn config(track_calls: bool) -> String {
    let settings = if track_calls {
        String::new()
    } else {
        "[settings]\ntrack_calls = false\n\n".into()
    };
    format!(
        "{settings}[[rule]]\nprefix = \"+232\"\naction = \"block\"\ncomment = \"Sierra Leone\"\n\n\
         [metrics]\nlisten = \"off\"\n"
    )
}

/// `sipguard run` inside the receiving namespace, with its own pin root and state directory.
/// On drop, the harness kills the daemon by the PID it started and removes the pins.
struct Sipguard<'a> {
    rig: &'a Rig,
    sg: Instance,
}

impl<'a> Sipguard<'a> {
    fn start(rig: &'a Rig, track_calls: bool, row: Row) -> Result<Self> {
        let mut sg = Instance::new(&format!("vb-{}", row.key()));
        let cfg = sg.write("sipguard.toml", &config(track_calls));
        // The daemon inherits this process's CPU affinity (the sender's CPU), so its own work
        // never lands on the measured CPU. `start` waits for its "running" log line.
        sg.start(&rig.rx, &[&rig.rx_if], &cfg, &["--xdp-mode", "native"]);
        let me = Self { rig, sg };
        me.wait_attached()?;
        Ok(me)
    }

    /// Waits (bounded) until `sipguard status` shows the interface attached.
    fn wait_attached(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.sg.cli_in(&self.rig.rx, &["status", "--json"]);
            if r.ok {
                let v: Value = serde_json::from_str(&r.stdout).context("status --json")?;
                let attached = v["interfaces"].as_array().is_some_and(|ifs| {
                    ifs.iter().any(|i| {
                        i["iface"].as_str() == Some(self.rig.rx_if.as_str())
                            && i["attached"].as_bool() == Some(true)
                    })
                });
                if attached {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "sipguard status does not show {} attached after 20 s:\n{}{}\ndaemon log:\n{}",
                    self.rig.rx_if,
                    r.stdout,
                    r.stderr,
                    self.sg.log_text()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Installed for Sipguard<'_> {
    fn sipguard_counters(&self) -> Result<Option<SgCounters>> {
        let r = self.sg.cli_in(&self.rig.rx, &["stats", "--json"]);
        ensure!(r.ok, "sipguard stats --json: {}", r.stderr.trim());
        let v: Value = serde_json::from_str(&r.stdout).context("stats --json")?;
        let calls = v["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["prefix"] == "+232"))
            .and_then(|r| r["calls"].as_u64())
            .unwrap_or(0);
        Ok(Some(SgCounters {
            dropped: v["global"]["dropped"].as_u64().unwrap_or(0),
            calls,
        }))
    }

    /// Stops the daemon by its PID (SIGTERM; `fail_mode = "keep"` leaves the program attached),
    /// then `sipguard detach`, which detaches and removes the pins.
    fn finish(mut self: Box<Self>) -> Result<()> {
        self.sg.stop(libc::SIGTERM);
        let r = self
            .sg
            .cli_in(&self.rig.rx, &["detach", "--iface", &self.rig.rx_if]);
        ensure!(
            r.ok,
            "sipguard detach --iface {}: {}",
            self.rig.rx_if,
            r.stderr.trim()
        );
        Ok(())
    }
}

/// nftables: a netdev table with an ingress chain on the receiving veth and one payload rule.
struct NftIngress<'a> {
    rig: &'a Rig,
}

impl<'a> NftIngress<'a> {
    fn add(rig: &'a Rig) -> Result<Self> {
        run(in_ns(&rig.rx, "nft").args(["add", "table", "netdev", NFT_TABLE]))?;
        let guard = Self { rig };
        let chain = format!(
            "{{ type filter hook ingress device \"{}\" priority 0; policy accept; }}",
            rig.rx_if
        );
        run(in_ns(&rig.rx, "nft").args(["add", "chain", "netdev", NFT_TABLE, "in", &chain]))?;
        let field = format!("@th,64,{}", NFT_MATCH.len() * 8);
        let value = format!("0x{}", hex(NFT_MATCH));
        run(in_ns(&rig.rx, "nft").args([
            "add", "rule", "netdev", NFT_TABLE, "in", "udp", "dport", "5060", &field, &value,
            "drop",
        ]))?;
        Ok(guard)
    }
}

impl Installed for NftIngress<'_> {}

impl Drop for NftIngress<'_> {
    fn drop(&mut self) {
        if let Err(e) =
            run(in_ns(&self.rig.rx, "nft").args(["delete", "table", "netdev", NFT_TABLE]))
        {
            eprintln!("cleanup: {e:#}");
        }
    }
}

/// The iptables rule's match and target (the chain is raw PREROUTING).
const IPT_RULE: [&str; 12] = [
    "-p", "udp", "--dport", "5060", "-m", "string", "--algo", "bm", "--string", "sip:+232", "-j",
    "DROP",
];

/// iptables-legacy (xtables, not the nft backend): a string match in raw PREROUTING.
struct IptString<'a> {
    rig: &'a Rig,
}

/// `iptables-legacy -t raw OP PREROUTING RULE` in the receiving namespace.
fn ipt(rig: &Rig, op: &str) -> Result<()> {
    run(in_ns(&rig.rx, "iptables-legacy")
        .args(["-t", "raw", op, "PREROUTING"])
        .args(IPT_RULE))
    .map(drop)
}

impl<'a> IptString<'a> {
    fn add(rig: &'a Rig) -> Result<Self> {
        ipt(rig, "-A")?;
        Ok(Self { rig })
    }
}

impl Installed for IptString<'_> {}

impl Drop for IptString<'_> {
    fn drop(&mut self) {
        if let Err(e) = ipt(self.rig, "-D") {
            eprintln!("cleanup: {e:#}");
        }
    }
}
