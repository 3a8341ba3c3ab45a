//! Shared test support for sipguard's kernel tests and benchmarks: the frame builder, the
//! fixture table, a host-side reference verdict, network-namespace plumbing, and the INVITE
//! flood of the veth benchmark.

pub mod capacity;
pub mod diff;
pub mod fixtures;
pub mod fleet;
pub mod flood;
pub mod harness;
pub mod mix;
pub mod model;
pub mod netns;
pub mod packet;
pub mod pcap;
pub mod sipp;
pub mod topology;

use guard_common::{
    Action, Counter, Mode, Parsed, TINY_FRAGMENT_PAYLOAD, WINDOW, keepalive_len, parse_payload,
};
use sipguard::{Filter, Prefix, Settings, TinyFragment, Verdict};

/// A rule with a fixed counter id, written straight into the live trie (the daemon's commits
/// assign ids themselves): what the fixture table and the benchmarks check counters by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRule {
    pub prefix: Prefix,
    pub action: Action,
    pub id: u32,
}

impl TestRule {
    /// `TestRule::new("+232", Action::Block, 7)`.
    pub fn new(prefix: &str, action: Action, id: u32) -> Result<Self, sipguard::RuleError> {
        Ok(Self {
            prefix: prefix.parse()?,
            action,
            id,
        })
    }
}

/// Loads the filter with `settings` and `rules`.
pub fn load(settings: &Settings, rules: &[TestRule]) -> Filter {
    let mut f = Filter::load(settings).expect("load the XDP program (tests must run as root)");
    for r in rules {
        f.insert_rule(&r.prefix, r.action, r.id)
            .expect("insert rule");
    }
    f
}

/// What the filter should do with a UDP payload to a SIP port, computed on the host with the
/// shared parser and a plain longest-prefix search over `rules`.
pub fn host_verdict(
    payload: &[u8],
    settings: &Settings,
    rules: &[TestRule],
) -> (Verdict, Option<u32>) {
    let config = settings.to_config().expect("valid settings");
    // A number not read to its end that no rule decides: `incomplete_action`.
    let incomplete = || match settings.incomplete_action {
        Action::Block if settings.mode == Mode::Enforce => (Verdict::Drop, None),
        _ => (Verdict::Pass, None),
    };
    let (number, complete) = match parse_payload(payload) {
        Parsed::Number { number, complete } => (number, complete),
        Parsed::Unresolved { .. } => return incomplete(),
        _ => return (Verdict::Pass, None),
    };
    let (domain, n) = config.intl_prefixes.normalize(&number);
    let digits: Vec<u8> = n.digits().collect();
    let best = rules
        .iter()
        .filter(|r| r.prefix.domain == domain && digits.starts_with(&r.prefix.digits))
        .max_by_key(|r| r.prefix.digits.len());
    match best {
        Some(r) if r.action == Action::Block && settings.mode == Mode::Enforce => {
            (Verdict::Drop, Some(r.id))
        }
        Some(r) => (Verdict::Pass, Some(r.id)),
        None if !complete => incomplete(),
        None => (Verdict::Pass, None),
    }
}

/// What the filter should do with a whole frame, on the host: layers 2 to 4 as the README
/// describes them (VLAN tags, IPv4 or IPv6 with extension headers, fragments, UDP or TCP to a
/// SIP port), tiny first fragments, TCP segments that do not start a request, then
/// [`host_verdict`] on the payload. `None` for frames the host reference does not model
/// (truncated headers, lengths that claim more than the frame holds).
pub fn host_frame_verdict(
    frame: &[u8],
    settings: &Settings,
    rules: &[TestRule],
) -> Option<(Verdict, Option<u32>)> {
    let pass = Some((Verdict::Pass, None));
    let tiny = || {
        let drop =
            settings.tiny_first_fragment == TinyFragment::Drop && settings.mode == Mode::Enforce;
        Some((if drop { Verdict::Drop } else { Verdict::Pass }, None))
    };
    let be16 = |i: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*frame.get(i)?, *frame.get(i + 1)?]) as usize)
    };
    let mut off = 12;
    let mut et = be16(off)?;
    off += 2;
    let mut tags = 0;
    while tags < 2 && (et == 0x8100 || et == 0x88a8) {
        et = be16(off + 2)?;
        off += 4;
        tags += 1;
    }
    let (proto, l4, end, first_fragment) = match et {
        0x0800 => {
            let ihl = (*frame.get(off)? as usize & 0x0f) * 4;
            let frags = be16(off + 6)?;
            if frags & 0x1fff != 0 {
                return pass;
            }
            let end = off + be16(off + 2)?;
            if end > frame.len() {
                return None;
            }
            (*frame.get(off + 9)?, off + ihl, end, frags & 0x2000 != 0)
        }
        0x86dd => {
            let end = off + 40 + be16(off + 4)?;
            if end > frame.len() {
                return None;
            }
            let mut next = *frame.get(off + 6)?;
            let mut cur = off + 40;
            let mut first = false;
            for _ in 0..6 {
                match next {
                    0 | 43 | 60 => {
                        let len = (*frame.get(cur + 1)? as usize + 1) * 8;
                        next = *frame.get(cur)?;
                        cur += len;
                    }
                    44 => {
                        let fo = be16(cur + 2)?;
                        if fo & 0xfff8 != 0 {
                            return pass;
                        }
                        first = fo & 1 != 0;
                        next = *frame.get(cur)?;
                        cur += 8;
                    }
                    _ => break,
                }
            }
            (next, cur, end, first)
        }
        _ => return pass,
    };
    let (payload_from, payload_to) = match proto {
        17 => {
            if l4 + 8 > end {
                return if first_fragment { tiny() } else { None };
            }
            let udp_len = be16(l4 + 4)?;
            if !settings.sip_ports.contains(&(be16(l4 + 2)? as u16)) {
                return pass;
            }
            (l4 + 8, (l4 + udp_len).min(end))
        }
        6 => {
            if l4 + 20 > end {
                return if first_fragment { tiny() } else { pass };
            }
            let hlen = (*frame.get(l4 + 12)? as usize >> 4) * 4;
            if !settings.sip_ports.contains(&(be16(l4 + 2)? as u16)) || hlen < 20 || l4 + hlen > end
            {
                return pass;
            }
            (l4 + hlen, end)
        }
        _ => return pass,
    };
    let payload = frame.get(payload_from..payload_to.max(payload_from))?;
    let tiny_limit = TINY_FRAGMENT_PAYLOAD as usize;
    if first_fragment && payload.len() < tiny_limit {
        return tiny();
    }
    if !matches!(payload.first(), Some(b'I' | b'\r' | b'\n')) || payload.len() < 2 {
        return pass;
    }
    let request = &payload[keepalive_len(payload)..];
    if first_fragment && request.len() < tiny_limit {
        return tiny();
    }
    let cut = matches!(
        parse_payload(payload),
        Parsed::Unresolved { .. }
            | Parsed::Number {
                complete: false,
                ..
            }
    );
    if first_fragment && cut && request.len() < WINDOW {
        return tiny();
    }
    Some(host_verdict(payload, settings, rules))
}

/// Global counters as a name → value list, for messages.
pub fn counter_snapshot(f: &Filter) -> Vec<(Counter, u64)> {
    let g = f.global_counters().expect("read counters");
    Counter::ALL.iter().map(|&c| (c, g.get(c))).collect()
}
