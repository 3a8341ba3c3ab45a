//! A host model of the filter's whole decision, for the differential test
//! (`tests/tests/differential.rs`): layers 2 to 4 walked with `etherparse`'s header slices as the
//! README's "What the filter does" describes them, then the shared guard-common scanners
//! (`parse_payload`, `scan_headers`, `IntlPrefixes::normalize`), a plain longest-prefix search
//! over the rules, and the decision table (mode, `incomplete_action`, tiny first fragments, TCP).
//!
//! It predicts the verdict, the change of every global counter, and the matched rule with the
//! change of its counters. Call accounting is modelled with the set of Call-ID hashes seen since
//! the filter was loaded (the caller keeps the kernel's call table far below its LRU size, so
//! nothing is evicted). Drop events are compared as `events_sent + events_suppressed`: which of
//! the two moves depends on the token bucket (wall-clock time), that one of them moves does not.

use std::collections::HashSet;

use etherparse::{
    Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice, Ipv6HeaderSlice,
    SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice, err::ipv4::HeaderSliceError,
};
use guard_common::{
    Action, Config, Counter, Headers, Mode, Parsed, RuleCounters, TINY_FRAGMENT_PAYLOAD, WINDOW,
    keepalive_len, parse_payload, scan_headers,
};
use sipguard::{Settings, TinyFragment, Verdict};

use crate::TestRule;

/// The most of a frame BPF_PROG_TEST_RUN puts in the linear part (a page less the XDP headroom
/// and the shared info); the generator keeps frames within it, so every byte is linear.
pub const MAX_LINEAR: usize = 4096 - 256 - 320;

/// What the model (or the kernel) did with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Change of every global counter, by index.
    pub counters: [u64; Counter::COUNT],
    /// The rule whose counters moved, and by how much.
    pub rule: Option<(u32, RuleCounters)>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            verdict: Verdict::Pass,
            counters: [0; Counter::COUNT],
            rule: None,
        }
    }

    fn bump(&mut self, c: Counter) {
        self.counters[c as usize] += 1;
    }

    /// The counters that moved, as `name+n` (for messages).
    pub fn moved(&self) -> String {
        Counter::ALL
            .iter()
            .filter(|&&c| self.counters[c as usize] != 0)
            .map(|&c| format!("{}+{}", c.name(), self.counters[c as usize]))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every way `other` (the kernel) differs from `self` (the model), as short kinds
    /// (`verdict`, `counter:<name>`, `rule`); events are compared as their sum.
    pub fn differences(&self, other: &Outcome) -> Vec<String> {
        let mut d = Vec::new();
        if self.verdict != other.verdict {
            d.push("verdict".to_string());
        }
        for c in Counter::ALL {
            if matches!(
                c,
                Counter::EventsSent | Counter::EventsSuppressed | Counter::RepliesLost
            ) {
                continue;
            }
            if self.counters[c as usize] != other.counters[c as usize] {
                d.push(format!("counter:{}", c.name()));
            }
        }
        let events = |o: &Outcome| {
            o.counters[Counter::EventsSent as usize]
                + o.counters[Counter::EventsSuppressed as usize]
        };
        if events(self) != events(other) {
            d.push("counter:events_sent+events_suppressed".to_string());
        }
        if self.rule != other.rule {
            d.push("rule".to_string());
        }
        d
    }
}

/// Why layers 2 to 4 pass a frame without a look at its payload (the kernel's `layers::Skip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    Truncated,
    NotUdp,
    NonFirstFragment,
    Ipv6ExtLimit,
    NotSipPort,
    TcpOther,
    TinyFirstFragment,
}

/// Where the payload of a UDP datagram or TCP segment to a SIP port is.
struct L4 {
    tcp: bool,
    first_fragment: bool,
    lying_len: bool,
    payload_off: usize,
    payload_len: usize,
}

/// IPv6 extension headers walked (hop-by-hop, destination options, routing, fragment,
/// destination options, plus one spare): README, Layer 3.
const MAX_IPV6_EXT: usize = 6;

/// The model, with the call table of one loaded filter.
pub struct Model {
    settings: Settings,
    config: Config,
    rules: Vec<TestRule>,
    seen_calls: HashSet<u64>,
}

impl Model {
    pub fn new(settings: &Settings, rules: &[TestRule]) -> Self {
        Self {
            settings: settings.clone(),
            config: settings.to_config().expect("valid settings"),
            rules: rules.to_vec(),
            seen_calls: HashSet::new(),
        }
    }

    /// Forgets the calls seen (the filter was loaded again).
    pub fn reset_calls(&mut self) {
        self.seen_calls.clear();
    }

    /// Distinct Call-IDs seen since the last reset.
    pub fn calls_seen(&self) -> usize {
        self.seen_calls.len()
    }

    /// What the filter does with `frame`.
    pub fn predict(&mut self, frame: &[u8]) -> Outcome {
        let mut o = Outcome::new();
        o.bump(Counter::Frames);
        match self.layers(frame) {
            Ok(l4) => self.inspect(frame, l4, &mut o),
            Err(Skip::TinyFirstFragment) => self.tiny(&mut o),
            Err(skip) => {
                let c = match skip {
                    Skip::Truncated => Some(Counter::Truncated),
                    Skip::NotUdp => Some(Counter::NotUdp),
                    Skip::NonFirstFragment => Some(Counter::NonFirstFragments),
                    Skip::Ipv6ExtLimit => Some(Counter::Ipv6ExtLimit),
                    Skip::TcpOther => Some(Counter::TcpUninspected),
                    Skip::NotSipPort | Skip::TinyFirstFragment => None,
                };
                if let Some(c) = c {
                    o.bump(c);
                }
            }
        }
        o
    }

    /// Layers 2 to 4: Ethernet and up to two VLAN tags, IPv4 or IPv6, UDP or TCP to a SIP port.
    fn layers(&self, frame: &[u8]) -> Result<L4, Skip> {
        let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Skip::Truncated)?;
        let mut proto = eth.ether_type().0;
        let mut off = eth.slice().len();
        for _ in 0..2 {
            if proto != 0x8100 && proto != 0x88a8 {
                break;
            }
            let tag =
                SingleVlanHeaderSlice::from_slice(&frame[off..]).map_err(|_| Skip::Truncated)?;
            proto = tag.ether_type().0;
            off += tag.slice().len();
        }
        let (l4_off, end, lying_len, ip_proto, first_fragment) = match proto {
            0x0800 => ipv4(frame, off)?,
            0x86dd => ipv6(frame, off)?,
            _ => return Err(Skip::NotUdp),
        };
        let tcp = ip_proto == 6;
        self.transport(frame, l4_off, end, lying_len, tcp, first_fragment)
    }

    /// The UDP or TCP header, which must lie inside the IP packet (not only the frame).
    fn transport(
        &self,
        frame: &[u8],
        l4: usize,
        end: usize,
        lying_len: bool,
        tcp: bool,
        first_fragment: bool,
    ) -> Result<L4, Skip> {
        let cut = if first_fragment {
            Skip::TinyFirstFragment
        } else if tcp {
            Skip::TcpOther
        } else {
            Skip::Truncated
        };
        if l4 > 4096 {
            return Err(Skip::Truncated);
        }
        let packet = frame.get(l4..end).ok_or(cut)?;
        let l4_mut = L4 {
            tcp,
            first_fragment,
            lying_len,
            payload_off: 0,
            payload_len: 0,
        };
        if tcp {
            if packet.len() < 20 {
                return Err(cut);
            }
            let dport = u16::from_be_bytes([packet[2], packet[3]]);
            if !self.settings.sip_ports.contains(&dport) {
                return Err(Skip::TcpOther);
            }
            // Data offset under 5 words, or options past the packet: not inspected.
            let h = TcpHeaderSlice::from_slice(packet).map_err(|_| Skip::TcpOther)?;
            let off = l4 + h.slice().len();
            Ok(L4 {
                payload_off: off,
                payload_len: end - off,
                ..l4_mut
            })
        } else {
            let h = UdpHeaderSlice::from_slice(packet).map_err(|_| cut)?;
            if !self.settings.sip_ports.contains(&h.destination_port()) {
                return Err(Skip::NotSipPort);
            }
            let udp_len = h.length() as usize;
            if udp_len < 8 {
                return Err(Skip::Truncated);
            }
            let off = l4 + 8;
            let claimed = udp_len - 8;
            let available = end - off;
            Ok(L4 {
                payload_off: off,
                payload_len: claimed.min(available),
                lying_len: lying_len || claimed > available,
                ..l4_mut
            })
        }
    }

    /// A tiny first fragment: counted, dropped unless configured to pass (or monitor mode).
    fn tiny(&self, o: &mut Outcome) {
        o.bump(Counter::TinyFirstFragments);
        if self.settings.tiny_first_fragment == TinyFragment::Drop
            && self.settings.mode == Mode::Enforce
        {
            o.verdict = Verdict::Drop;
        }
    }

    /// A datagram or segment to a SIP port: README "Layer 4", "TCP, best effort" and "SIP".
    fn inspect(&mut self, frame: &[u8], l4: L4, o: &mut Outcome) {
        let tiny_limit = TINY_FRAGMENT_PAYLOAD as usize;
        if l4.first_fragment && l4.payload_len < tiny_limit {
            return self.tiny(o);
        }
        // The first byte is looked at in the frame (two bytes must be there), before the
        // payload length is: the kernel reads it with a two-byte bounds check.
        let starts_request = frame.len() >= l4.payload_off + 2
            && matches!(frame[l4.payload_off], b'I' | b'\r' | b'\n');
        if l4.tcp {
            if !starts_request {
                o.bump(Counter::TcpUninspected);
                return;
            }
            o.bump(Counter::TcpInspected);
        }
        o.bump(Counter::SipCandidates);
        if l4.lying_len {
            o.bump(Counter::Truncated);
        }
        if !starts_request {
            return;
        }
        let payload = &frame[l4.payload_off..l4.payload_off + l4.payload_len];
        let request = &payload[keepalive_len(payload)..];
        if request.len() < payload.len() && l4.first_fragment && request.len() < tiny_limit {
            return self.tiny(o);
        }
        if request.is_empty() {
            return;
        }
        // A first fragment whose data ended inside the Request-URI is as tiny as a short one.
        let cut_fragment = l4.first_fragment && request.len() < WINDOW;
        match parse_payload(payload) {
            Parsed::NotInvite => {}
            Parsed::UnparsableUri => {
                o.bump(Counter::Invites);
                o.bump(Counter::UnparsableUri);
            }
            Parsed::NoNumber => {
                o.bump(Counter::Invites);
                o.bump(Counter::NoNumber);
            }
            Parsed::Unresolved { .. } => {
                o.bump(Counter::Invites);
                o.bump(Counter::NumberIncomplete);
                if cut_fragment {
                    return self.tiny(o);
                }
                self.incomplete(o);
            }
            Parsed::Number { number, complete } => {
                o.bump(Counter::Invites);
                o.bump(Counter::NumbersParsed);
                if !complete {
                    o.bump(Counter::NumberIncomplete);
                    if cut_fragment {
                        return self.tiny(o);
                    }
                }
                let (domain, n) = self.config.intl_prefixes.normalize(&number);
                let digits: Vec<u8> = n.digits().collect();
                let best = self
                    .rules
                    .iter()
                    .filter(|r| r.prefix.domain == domain && digits.starts_with(&r.prefix.digits))
                    .max_by_key(|r| r.prefix.digits.len())
                    .cloned();
                match best {
                    Some(rule) => self.matched(request, &rule, o),
                    None if !complete => self.incomplete(o),
                    None => {}
                }
            }
        }
    }

    /// `incomplete_action` under the mode; no rule, so no rule counters or events.
    fn incomplete(&self, o: &mut Outcome) {
        o.bump(Counter::IncompleteActionApplied);
        match self.settings.incomplete_action {
            Action::Block | Action::Reject if self.settings.mode == Mode::Enforce => {
                o.bump(Counter::Dropped);
                o.verdict = Verdict::Drop;
            }
            Action::Block | Action::Reject | Action::Monitor => o.bump(Counter::WouldDrop),
            Action::Allow => {}
        }
    }

    /// A rule matched: call accounting, then the rule's action under the mode.
    fn matched(&mut self, request: &[u8], rule: &TestRule, o: &mut Outcome) {
        let mut rc = RuleCounters {
            matched: 1,
            ..RuleCounters::default()
        };
        let mut new_call = false;
        if self.settings.track_calls {
            let Headers { call_hash, to_tag } = scan_headers(request);
            if to_tag {
                rc.reinvites += 1;
                o.bump(Counter::Reinvites);
            } else {
                match call_hash {
                    None => {
                        o.bump(Counter::NoCallId);
                        new_call = true;
                    }
                    Some(h) if !self.seen_calls.insert(h) => o.bump(Counter::Retransmissions),
                    Some(_) => new_call = true,
                }
                if new_call {
                    rc.calls += 1;
                    o.bump(Counter::Calls);
                }
            }
        }
        match rule.action {
            Action::Block | Action::Reject if self.settings.mode == Mode::Enforce => {
                o.bump(Counter::Dropped);
                rc.dropped += 1;
                o.verdict = Verdict::Drop;
                if rule.action == Action::Reject {
                    // A reply record is queued, or counted as lost when the ring is full
                    // (`replies_lost` is not compared: it depends on the ring's state).
                    o.bump(Counter::Rejected);
                }
            }
            Action::Block | Action::Reject | Action::Monitor => {
                o.bump(Counter::WouldDrop);
                rc.would_drop += 1;
            }
            Action::Allow => o.bump(Counter::AllowedByException),
        }
        let event = matches!(
            rule.action,
            Action::Block | Action::Monitor | Action::Reject
        );
        if new_call && event {
            // Sent or suppressed (the rate budget): compared as the sum.
            o.bump(Counter::EventsSent);
        }
        o.rule = Some((rule.id, rc));
    }
}

/// Where an IP packet that starts at `start` and claims `claimed` bytes ends (clamped to the
/// frame), and whether the claim is more than the frame holds.
fn ip_end(frame: &[u8], start: usize, claimed: usize) -> (usize, bool) {
    let want = start.saturating_add(claimed);
    if want > frame.len() {
        (frame.len(), true)
    } else {
        (want, false)
    }
}

/// IPv4, options (IHL) honoured: (transport offset, packet end, lying length, protocol,
/// first fragment).
fn ipv4(frame: &[u8], off: usize) -> Result<(usize, usize, bool, u8, bool), Skip> {
    let rest = &frame[off..];
    let (ihl, frag_offset, more, proto, tot_len) = match Ipv4HeaderSlice::from_slice(rest) {
        Ok(h) => (
            h.slice().len(),
            h.fragments_offset().value(),
            h.more_fragments(),
            h.protocol().0,
            h.total_len() as usize,
        ),
        // Options cut by the frame end: the fixed header still says whether this is a later
        // fragment or another protocol; if not, the frame is cut short.
        Err(HeaderSliceError::Len(_)) if rest.len() >= 20 => {
            let frags = u16::from_be_bytes([rest[6], rest[7]]);
            if frags & 0x1fff != 0 {
                return Err(Skip::NonFirstFragment);
            }
            if rest[9] != 17 && rest[9] != 6 {
                return Err(Skip::NotUdp);
            }
            return Err(Skip::Truncated);
        }
        // Shorter than 20 bytes, a version other than 4, an IHL under 5.
        Err(_) => return Err(Skip::Truncated),
    };
    if frag_offset != 0 {
        return Err(Skip::NonFirstFragment);
    }
    if proto != 17 && proto != 6 {
        return Err(Skip::NotUdp);
    }
    if tot_len < ihl {
        return Err(Skip::Truncated);
    }
    let (end, lying) = ip_end(frame, off, tot_len);
    if off + ihl > end {
        return Err(Skip::Truncated);
    }
    Ok((off + ihl, end, lying, proto, more))
}

/// IPv6 and up to six extension headers (hop-by-hop, routing, destination options, fragment).
fn ipv6(frame: &[u8], off: usize) -> Result<(usize, usize, bool, u8, bool), Skip> {
    let h = Ipv6HeaderSlice::from_slice(&frame[off..]).map_err(|_| Skip::Truncated)?;
    let mut next = h.next_header().0;
    let mut cur = off + 40;
    let (end, lying) = match h.payload_length() as usize {
        // A jumbogram (RFC 2675): the frame decides, and it does not lie.
        0 => (frame.len(), false),
        n => ip_end(frame, cur, n),
    };
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            17 | 6 => break,
            0 | 43 | 60 => {
                // Only the next-header and length bytes are read.
                let b = frame.get(cur..cur + 2).ok_or(Skip::Truncated)?;
                next = b[0];
                cur += (b[1] as usize + 1) * 8;
            }
            44 => {
                let f = Ipv6FragmentHeaderSlice::from_slice(frame.get(cur..).unwrap_or_default())
                    .map_err(|_| Skip::Truncated)?;
                if f.fragment_offset().value() != 0 {
                    return Err(Skip::NonFirstFragment);
                }
                first_fragment = f.more_fragments();
                next = f.next_header().0;
                cur += 8;
            }
            _ => return Err(Skip::NotUdp),
        }
    }
    if next != 17 && next != 6 {
        return Err(Skip::Ipv6ExtLimit);
    }
    Ok((cur, end, lying, next, first_fragment))
}
