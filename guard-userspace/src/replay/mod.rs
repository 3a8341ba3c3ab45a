//! `sipguard replay --config FILE CAPTURE`: every frame of a capture through a private instance
//! of the same XDP program (BPF_PROG_TEST_RUN), with the rules and settings of FILE. The live
//! pins are never touched. The verdict is the kernel's; the method and number shown next to it
//! come from the shared guard-common parser, and the rule from a lookup in the instance's trie.
//!
//! [`run`] returns typed results ([`Replay`]); `cli::replay` renders them.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, Result};
use etherparse::{
    IpNumber, Ipv6ExtensionSlice, LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, TcpSlice, UdpSlice,
};
use guard_common::{Action, Counter, Parsed, parse_payload};

pub mod capture;
pub mod explain;

use crate::{
    config,
    kernel::filter::{Filter, Verdict},
    model::rules::Prefix,
};

/// The shortest frame `BPF_PROG_TEST_RUN` runs through an XDP program: an Ethernet header
/// (`ETH_HLEN`); shorter is `EINVAL`.
pub const MIN_FRAME: usize = 14;

/// The longest frame `BPF_PROG_TEST_RUN` runs through an XDP program on 4 KiB pages: the
/// linear part is a page less the XDP headroom (256) and the `skb_shared_info` tailroom (320),
/// 3,520 bytes; the rest goes into at most `MAX_SKB_FRAGS` (17) page fragments. Longer is
/// `ENOMEM` ("Cannot allocate memory").
pub const MAX_FRAME: usize = 4096 - 256 - 320 + 17 * 4096;

/// What became of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The program ran; its verdict.
    Ran(Verdict),
    /// Not run, for this reason (too short or too long for the kernel's test run, a packet the
    /// capture reader could not turn into a frame).
    Skipped(String),
}

/// Why the kernel would not run `frame`, if it would not.
pub fn unrunnable(frame: &[u8]) -> Option<String> {
    let n = frame.len();
    if n < MIN_FRAME {
        Some(format!(
            "{n} bytes, shorter than the {MIN_FRAME}-byte Ethernet header the kernel's test run needs"
        ))
    } else if n > MAX_FRAME {
        Some(format!(
            "{n} bytes, longer than the {MAX_FRAME} bytes the kernel's XDP test run takes"
        ))
    } else {
        None
    }
}

/// One frame of the capture as replay saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameResult {
    /// Frame number in the capture, from 1.
    pub number: u64,
    /// The program's verdict, or why the frame was skipped.
    pub verdict: Outcome,
    /// The request method, for a frame the program took as a SIP candidate.
    pub method: Option<String>,
    /// The dialled number after normalisation, as [`guard_common::Number::display`] shows it.
    pub number_dialled: Option<String>,
    /// The rule the number matched, and its action.
    pub rule: Option<(Prefix, Action)>,
    /// For a frame cut short by the capture's snap length: bytes captured, bytes on the wire.
    pub snapped: Option<(usize, usize)>,
    /// Why a frame that ran was dropped without a rule: a tiny first fragment, or
    /// `incomplete_action` (a skipped frame's reason is in [`Outcome::Skipped`]).
    pub reason: Option<&'static str>,
}

/// Totals over a replay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub frames: u64,
    pub dropped: u64,
    pub passed: u64,
    /// Frames not run (see [`Outcome::Skipped`]).
    pub skipped: u64,
    /// Drops per matched rule (the prefix as written), in prefix-string order.
    pub dropped_by_rule: BTreeMap<String, u64>,
}

impl Summary {
    /// The totals of `frames`.
    pub fn of(frames: &[FrameResult]) -> Self {
        let mut s = Summary::default();
        for f in frames {
            s.add(f);
        }
        s
    }

    /// Counts one more frame.
    pub fn add(&mut self, f: &FrameResult) {
        self.frames += 1;
        match f.verdict {
            Outcome::Ran(Verdict::Drop) => {
                self.dropped += 1;
                if let Some((p, _)) = &f.rule {
                    *self.dropped_by_rule.entry(p.to_string()).or_default() += 1;
                }
            }
            Outcome::Ran(Verdict::Pass) => self.passed += 1,
            Outcome::Ran(Verdict::Other(_)) => {}
            Outcome::Skipped(_) => self.skipped += 1,
        }
    }
}

/// A whole replay: every frame in capture order, and the totals (for rendering tests; `run`
/// hands frames out one at a time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    pub frames: Vec<FrameResult>,
    pub summary: Summary,
}

/// What the host sees in a frame, for display: UDP or TCP destination port and payload (the bytes the
/// frame holds when an IP or UDP length claims more). The same headers as the XDP program:
/// Ethernet II, at most two VLAN tags, IPv4 or IPv6 with extension headers, UDP; a non-first
/// fragment has no UDP header.
fn sip_payload(frame: &[u8]) -> Option<(u16, &[u8])> {
    let p = LaxSlicedPacket::from_ethernet(frame).ok()?;
    if p.link_exts.len() > 2
        || p.link_exts
            .iter()
            .any(|e| !matches!(e, LaxLinkExtSlice::Vlan(_)))
    {
        return None;
    }
    let ip = match p.net? {
        LaxNetSlice::Ipv4(ip) => {
            if ip.header().fragments_offset().value() != 0 {
                return None;
            }
            ip.payload().clone()
        }
        LaxNetSlice::Ipv6(ip) => {
            for ext in ip.extensions().clone() {
                match ext {
                    Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() != 0 => {
                        return None;
                    }
                    Ipv6ExtensionSlice::Authentication(_) => return None,
                    _ => {}
                }
            }
            ip.payload().clone()
        }
        LaxNetSlice::Arp(_) => return None,
    };
    match ip.ip_number {
        IpNumber::UDP => {
            let udp = UdpSlice::from_slice_lax(ip.payload).ok()?;
            Some((udp.destination_port(), udp.payload()))
        }
        // SIP over TCP: the segment's own payload (the program does not reassemble).
        IpNumber::TCP => {
            let tcp = TcpSlice::from_slice(ip.payload).ok()?;
            Some((tcp.destination_port(), tcp.payload()))
        }
        _ => None,
    }
}

/// The request method (first token after keep-alive CRLFs), if the payload looks like SIP.
fn method(payload: &[u8]) -> Option<String> {
    let p = payload
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .map(|i| &payload[i..])?;
    let end = p.iter().position(|&b| b == b' ').unwrap_or(p.len()).min(32);
    let tok = std::str::from_utf8(&p[..end]).ok()?;
    (!tok.is_empty() && tok.bytes().all(|b| b.is_ascii_graphic())).then(|| tok.to_string())
}

/// What [`run`] reports as it goes.
pub enum Event<'a> {
    /// A frame's result.
    Frame(&'a FrameResult),
    /// A note about the capture (e.g. an interface whose frames are all skipped).
    Note(&'a str),
}

/// Every frame of the capture at `capture_path` through a private filter instance loaded with
/// the rules and settings of the config at `config_path`, one at a time: `on` gets each result
/// as it comes (nothing is kept but the totals). Frames the kernel will not run are skipped
/// with their reason; only a capture file that cannot be read is an error.
pub fn run(
    config_path: &Path,
    capture_path: &Path,
    mut on: impl FnMut(Event<'_>) -> Result<()>,
) -> Result<Summary> {
    let cfg = config::load(config_path)?;
    let mut reader = capture::open(capture_path)?;
    let filter = private_filter(&cfg)?;
    let intl = cfg.settings.to_config()?.intl_prefixes;
    let by_id: BTreeMap<u32, Prefix> = filter
        .maps
        .rules()?
        .into_iter()
        .map(|(p, v)| (v.id, p))
        .collect();

    let mut summary = Summary::default();
    while let Some(item) = reader.next_item()? {
        let f = match item {
            capture::Item::Frame(f) => f,
            capture::Item::Note(n) => {
                on(Event::Note(&n))?;
                continue;
            }
            capture::Item::Skipped { number, problem } => {
                let result = FrameResult::skipped(number, problem.reason());
                summary.add(&result);
                on(Event::Frame(&result))?;
                continue;
            }
        };
        let snapped = f.snapped.then_some((f.data.len(), f.original_len as usize));
        if let Some(reason) = unrunnable(&f.data) {
            let result = FrameResult {
                snapped,
                ..FrameResult::skipped(f.number, reason)
            };
            summary.add(&result);
            on(Event::Frame(&result))?;
            continue;
        }
        let before = filter.global_counters()?;
        let verdict = match filter.test_run(&f.data) {
            Ok(v) => v,
            Err(e) => {
                // Whatever else the kernel refuses: this frame is skipped, not the capture.
                let result = FrameResult {
                    snapped,
                    ..FrameResult::skipped(
                        f.number,
                        format!(
                            "{} bytes, the kernel's test run refused it: {}",
                            f.data.len(),
                            anyhow::Error::from(e).root_cause()
                        ),
                    )
                };
                summary.add(&result);
                on(Event::Frame(&result))?;
                continue;
            }
        };
        let after = filter.global_counters()?;
        let moved = |c: Counter| after.counters[c as usize] > before.counters[c as usize];
        let payload = sip_payload(&f.data).filter(|_| moved(Counter::SipCandidates));
        let mut result = FrameResult {
            number: f.number,
            verdict: Outcome::Ran(verdict),
            method: payload.and_then(|(_, p)| method(p)),
            number_dialled: None,
            rule: None,
            snapped,
            reason: if moved(Counter::TinyFirstFragments) {
                Some("tiny first fragment")
            } else if moved(Counter::IncompleteActionApplied) {
                Some("number not read to its end: incomplete_action")
            } else {
                None
            },
        };
        if let Some((_, p)) = payload
            && let Parsed::Number { number: n, .. } = parse_payload(p)
        {
            let (domain, norm) = intl.normalize(&n);
            result.number_dialled = Some(norm.display(domain).to_string());
            if let Some(v) = filter.maps.lookup(&norm.key(domain))? {
                // The trie was just loaded from validated rules: every action byte decodes.
                result.rule = by_id
                    .get(&v.id)
                    .zip(Action::from_u8(v.action))
                    .map(|(p, a)| (p.clone(), a));
            }
        }
        summary.add(&result);
        on(Event::Frame(&result))?;
    }
    Ok(summary)
}

impl FrameResult {
    /// A frame not run, for `reason`.
    pub fn skipped(number: u64, reason: String) -> Self {
        FrameResult {
            number,
            verdict: Outcome::Skipped(reason),
            method: None,
            number_dialled: None,
            rule: None,
            snapped: None,
            reason: None,
        }
    }
}

/// A private instance of the program (no pins, nothing attached) loaded with `cfg`: its
/// settings, rules, customers and quarantine, as the daemon would commit them. `replay` and
/// `explain` run frames through it.
pub fn private_filter(cfg: &crate::config::ConfigFile) -> anyhow::Result<Filter> {
    let mut filter = Filter::load(&cfg.settings).context("loading a private filter instance")?;
    filter.maps.quarantine = cfg.quarantine.as_ref().map(|q| q.config());
    filter
        .maps
        .commit_all(&cfg.settings, &cfg.rules, Some(&cfg.customers.entries()))
        .context("loading the rules and customers of the config into the private instance")?;
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use etherparse::{
        IpFragOffset, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
        Ipv6RawExtHeader, PacketBuilder, VlanId,
    };

    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const SIP: &[u8] = b"INVITE sip:+23276123456@example.net SIP/2.0\r\n\r\n";

    fn ipv4_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .udp(5070, 5060)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn ipv6_header() -> Ipv6Header {
        Ipv6Header {
            hop_limit: 64,
            source: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            destination: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            ..Default::default()
        }
    }

    /// IPv6 with a hop-by-hop header and a fragment header at `offset` (8-byte units).
    fn ipv6_fragment_frame(offset: u16, payload: &[u8]) -> Vec<u8> {
        let exts = Ipv6Extensions {
            hop_by_hop_options: Some(
                Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[1, 4, 0, 0, 0, 0]).unwrap(),
            ),
            fragment: Some(Ipv6FragmentHeader::new(
                IpNumber::UDP,
                IpFragOffset::try_new(offset).unwrap(),
                true,
                0x1234,
            )),
            ..Default::default()
        };
        let mut out = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv6(ipv6_header(), exts))
            .udp(5070, 5061)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    #[test]
    fn ipv4_payload() {
        let frame = ipv4_frame(SIP);
        assert_eq!(sip_payload(&frame), Some((5060, SIP)));
    }

    #[test]
    fn ipv4_with_options_payload() {
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [192, 0, 2, 1], [192, 0, 2, 2]).unwrap();
        ip.options = [1, 1, 1, 1, 1, 1, 1, 0].into();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(5070, 5060)
            .write(&mut frame, SIP)
            .unwrap();
        assert_eq!(frame[14] & 0x0f, 7, "IHL with 8 bytes of options");
        assert_eq!(sip_payload(&frame), Some((5060, SIP)));
    }

    #[test]
    fn ipv6_hop_by_hop_and_first_fragment_payload() {
        let frame = ipv6_fragment_frame(0, SIP);
        assert_eq!(frame[14 + 6], 0, "hop-by-hop first");
        assert_eq!(sip_payload(&frame), Some((5061, SIP)));
    }

    #[test]
    fn non_first_fragments_have_no_payload() {
        assert_eq!(sip_payload(&ipv6_fragment_frame(185, SIP)), None);
        let mut ip = Ipv4Header::new(0, 64, IpNumber::UDP, [192, 0, 2, 1], [192, 0, 2, 2]).unwrap();
        ip.fragment_offset = IpFragOffset::try_new(185).unwrap();
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ip(IpHeaders::Ipv4(ip, Default::default()))
            .udp(5070, 5060)
            .write(&mut frame, SIP)
            .unwrap();
        assert_eq!(sip_payload(&frame), None);
    }

    #[test]
    fn double_vlan_payload() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(200).unwrap())
            .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .udp(5070, 5060)
            .write(&mut frame, SIP)
            .unwrap();
        assert_eq!(&frame[12..14], &[0x88, 0xa8], "802.1ad outer tag");
        assert_eq!(&frame[16..18], &[0x81, 0x00], "802.1Q inner tag");
        assert_eq!(sip_payload(&frame), Some((5060, SIP)));
    }

    #[test]
    fn three_vlan_tags_are_more_than_the_program_takes() {
        let frame = ipv4_frame(SIP);
        let tag = [0x81, 0x00, 0x00, 0x0a];
        let mut tagged = frame[..12].to_vec();
        for _ in 0..3 {
            tagged.extend_from_slice(&tag);
        }
        tagged.extend_from_slice(&frame[12..]);
        assert_eq!(sip_payload(&tagged), None);
        // Two are fine.
        let mut two = frame[..12].to_vec();
        two.extend_from_slice(&tag);
        two.extend_from_slice(&tag);
        two.extend_from_slice(&frame[12..]);
        assert_eq!(sip_payload(&two), Some((5060, SIP)));
    }

    #[test]
    fn truncated_payload_is_the_bytes_present() {
        let frame = ipv4_frame(SIP);
        let cut = &frame[..frame.len() - 10];
        assert_eq!(sip_payload(cut), Some((5060, &SIP[..SIP.len() - 10])));
        // Only the UDP header left.
        assert_eq!(sip_payload(&frame[..14 + 20 + 8]), Some((5060, &[][..])));
        // Not even that.
        assert_eq!(sip_payload(&frame[..14 + 20 + 4]), None);
    }

    #[test]
    fn udp_length_bounds_the_payload() {
        // A UDP length shorter than the datagram: only what it claims.
        let mut frame = ipv4_frame(SIP);
        let udp_len = (8 + 6) as u16;
        frame[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&udp_len.to_be_bytes());
        assert_eq!(sip_payload(&frame), Some((5060, &SIP[..6])));
    }

    #[test]
    fn tcp_gives_its_segment_and_garbage_has_no_payload() {
        let mut tcp = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([192, 0, 2, 1], [192, 0, 2, 2], 64)
            .tcp(5070, 5060, 1, 1024)
            .write(&mut tcp, SIP)
            .unwrap();
        // SIP over TCP: the segment's payload, as the program inspects it.
        assert_eq!(sip_payload(&tcp), Some((5060, SIP)));
        let mut arp = ipv4_frame(SIP);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(sip_payload(&arp), None);
        assert_eq!(sip_payload(&[]), None);
        assert_eq!(sip_payload(&[0xff; 13]), None);
        assert_eq!(sip_payload(&[0xa5; 200]), None);
        let mut bad_version = ipv4_frame(SIP);
        bad_version[14] = 0x35;
        assert_eq!(sip_payload(&bad_version), None);
    }

    #[test]
    fn method_is_the_first_token() {
        assert_eq!(method(SIP).as_deref(), Some("INVITE"));
        assert_eq!(method(b"\r\n\r\nBYE sip:x SIP/2.0").as_deref(), Some("BYE"));
        assert_eq!(method(b"OPTIONS").as_deref(), Some("OPTIONS"));
        assert_eq!(method(b"SIP/2.0 200 OK\r\n").as_deref(), Some("SIP/2.0"));
        // At most 32 bytes of it.
        let long = [b'A'; 40];
        assert_eq!(method(&long), Some("A".repeat(32)));
        assert_eq!(method(b""), None);
        assert_eq!(method(b"\r\n\r\n"), None);
        assert_eq!(method(b" INVITE"), None);
        assert_eq!(method(b"INV\x01TE sip:x"), None);
        assert_eq!(method(b"\xc3\xa9t\xc3\xa9 x"), None);
    }

    #[test]
    fn summary_counts_verdicts_and_drops_per_rule() {
        let frame = |number, verdict, rule: Option<&str>| FrameResult {
            number,
            verdict: Outcome::Ran(verdict),
            method: None,
            number_dialled: None,
            rule: rule.map(|p| (p.parse().unwrap(), Action::Block)),
            snapped: None,
            reason: None,
        };
        let s = Summary::of(&[
            frame(1, Verdict::Drop, Some("+232")),
            frame(2, Verdict::Pass, Some("+232")),
            frame(3, Verdict::Drop, Some("+232")),
            frame(4, Verdict::Drop, Some("0900")),
            frame(5, Verdict::Other(7), None),
            frame(6, Verdict::Drop, None),
            FrameResult::skipped(7, "too short".into()),
        ]);
        assert_eq!(
            s,
            Summary {
                frames: 7,
                dropped: 4,
                passed: 1,
                skipped: 1,
                dropped_by_rule: [("+232".to_string(), 2), ("0900".to_string(), 1)].into(),
            }
        );
    }

    #[test]
    fn frames_the_kernel_will_not_run_name_the_limit() {
        assert_eq!(
            unrunnable(&[]).unwrap(),
            "0 bytes, shorter than the 14-byte Ethernet header the kernel's test run needs"
        );
        assert!(unrunnable(&[0; 10]).unwrap().contains("14-byte"));
        assert_eq!(unrunnable(&[0; 14]), None);
        assert_eq!(unrunnable(&vec![0; MAX_FRAME]), None);
        assert_eq!(
            unrunnable(&vec![0; 70_000]),
            None,
            "multi-buffer test runs take more than a page"
        );
        assert_eq!(
            unrunnable(&vec![0; MAX_FRAME + 1]).unwrap(),
            format!(
                "{} bytes, longer than the 73152 bytes the kernel's XDP test run takes",
                MAX_FRAME + 1
            )
        );
    }
}
