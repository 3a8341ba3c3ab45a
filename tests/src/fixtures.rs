//! The fixture table (in the style of Katran's test fixtures): frames built by the test code,
//! each with the settings it runs under, its expected verdict and its expected counter deltas.
//! The kernel tests run every row through the loaded program; the benchmark picks rows by name.

use guard_common::{Action, Counter, Mode};
use sipguard::{Settings, TinyFragment, Verdict};

use crate::{
    TestRule,
    packet::{Ext, Pkt, TCP_ACK, TCP_PSH, TCP_SYN, invite, request},
};

/// The rules every fixture runs against: (prefix, action, id).
pub const RULES: &[(&str, Action, u32)] = &[
    ("+232", Action::Block, 0),   // Sierra Leone
    ("+23222", Action::Allow, 1), // an exception inside it
    ("+881", Action::Block, 2),   // satellite
    ("+44", Action::Monitor, 3),  // watched, not blocked
    ("0990", Action::Block, 4),   // a national premium-rate dial string
    ("+1876", Action::Block, 5),  // Jamaica (NANP: area-code granularity)
];

/// Counters that depend on earlier frames (the Call-ID cache, the event budget, the reply
/// ring); the fixture table does not assert them.
pub const CALL_COUNTERS: [Counter; 7] = [
    Counter::RepliesLost,
    Counter::Calls,
    Counter::Retransmissions,
    Counter::Reinvites,
    Counter::NoCallId,
    Counter::EventsSent,
    Counter::EventsSuppressed,
];

/// Rule ids in `RULES`, for counter checks.
pub const SL: u32 = 0;
pub const SL_EXCEPTION: u32 = 1;
pub const SAT: u32 = 2;
pub const UK: u32 = 3;
pub const PREMIUM: u32 = 4;
pub const JM: u32 = 5;

pub fn rules() -> Vec<TestRule> {
    RULES
        .iter()
        .map(|&(p, a, id)| TestRule::new(p, a, id).expect("fixture rule"))
        .collect()
}

/// Settings a fixture runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Setup {
    /// Ports {5060}, international prefixes ["00", "011"], enforce.
    Default,
    /// Japan: international prefix "010" only (so "011..." is a domestic number).
    Japan,
    /// Australia: "0011" and "00".
    Australia,
    /// Default prefixes, monitor mode.
    Monitor,
    /// Default, plus SIP port 5080.
    TwoPorts,
    /// Default, `incomplete_action = "block"`.
    IncompleteBlock,
    /// Default, `incomplete_action = "allow"`.
    IncompleteAllow,
    /// Default, `tiny_first_fragment = "pass"`.
    TinyPass,
}

impl Setup {
    pub const ALL: [Setup; 8] = [
        Setup::Default,
        Setup::Japan,
        Setup::Australia,
        Setup::Monitor,
        Setup::TwoPorts,
        Setup::IncompleteBlock,
        Setup::IncompleteAllow,
        Setup::TinyPass,
    ];

    pub fn settings(self) -> Settings {
        let mut s = Settings::default();
        match self {
            Setup::Default => {}
            Setup::Japan => s.intl_prefixes = vec!["010".into()],
            Setup::Australia => s.intl_prefixes = vec!["0011".into(), "00".into()],
            Setup::Monitor => s.mode = Mode::Monitor,
            Setup::TwoPorts => s.sip_ports = vec![5060, 5080],
            Setup::IncompleteBlock => s.incomplete_action = Action::Block,
            Setup::IncompleteAllow => s.incomplete_action = Action::Allow,
            Setup::TinyPass => s.tiny_first_fragment = TinyFragment::Pass,
        }
        s
    }
}

/// Expected change of one rule's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleDelta {
    pub id: u32,
    pub matched: u64,
    pub dropped: u64,
    pub would_drop: u64,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub setup: Setup,
    pub frame: Vec<u8>,
    pub verdict: Verdict,
    /// Global counters that change, and by how much; every other counter must stay put.
    pub counters: Vec<(Counter, u64)>,
    /// The rule that must match (others must stay put).
    pub rule: Option<RuleDelta>,
}

use Counter::*;

fn case(name: &'static str, frame: Vec<u8>, verdict: Verdict, counters: &[(Counter, u64)]) -> Case {
    let mut c: Vec<(Counter, u64)> = vec![(Frames, 1)];
    c.extend_from_slice(counters);
    Case {
        name,
        setup: Setup::Default,
        frame,
        verdict,
        counters: c,
        rule: None,
    }
}

impl Case {
    fn on(mut self, setup: Setup) -> Self {
        self.setup = setup;
        self
    }
    fn rule(mut self, id: u32, matched: u64, dropped: u64, would_drop: u64) -> Self {
        self.rule = Some(RuleDelta {
            id,
            matched,
            dropped,
            would_drop,
        });
        self
    }
}

/// Counters of an INVITE to a parsed number, UDP to a SIP port.
const PARSED: [(Counter, u64); 3] = [(SipCandidates, 1), (Invites, 1), (NumbersParsed, 1)];

fn dropped(name: &'static str, frame: Vec<u8>, rule: u32) -> Case {
    let mut c = PARSED.to_vec();
    c.push((Dropped, 1));
    case(name, frame, Verdict::Drop, &c).rule(rule, 1, 1, 0)
}

fn dropped_with(name: &'static str, frame: Vec<u8>, rule: u32, extra: &[(Counter, u64)]) -> Case {
    let mut c = dropped(name, frame, rule);
    c.counters.extend_from_slice(extra);
    c
}

fn passed_unmatched(name: &'static str, frame: Vec<u8>) -> Case {
    case(name, frame, Verdict::Pass, &PARSED)
}

fn skipped(name: &'static str, frame: Vec<u8>, why: Counter) -> Case {
    case(name, frame, Verdict::Pass, &[(why, 1)])
}

/// A blocked destination (Sierra Leone mobile).
pub const BLOCKED_URI: &str = "sip:+23276123456@carrier.example.net";
/// An unruled international destination (France).
pub const ALLOWED_URI: &str = "sip:+33142685300@carrier.example.net";

/// Counters of an INVITE whose number was not read to its end, under `incomplete_action =
/// "monitor"` (the default), without the `numbers_parsed` of a prefix read.
const UNRESOLVED_MONITOR: [(Counter, u64); 5] = [
    (SipCandidates, 1),
    (Invites, 1),
    (NumberIncomplete, 1),
    (IncompleteActionApplied, 1),
    (WouldDrop, 1),
];

/// The request line of bypass 2: 40 other parameters before the phone-context.
pub fn tel_isub_40() -> String {
    format!("tel:76123456;{}phone-context=+232", "isub=1;".repeat(40))
}

/// A request line whose parameters run past the 1,024-byte window before the phone-context.
pub fn tel_params_past_window() -> String {
    format!("tel:76123456;{}phone-context=+232", "isub=1;".repeat(160))
}

/// Bypass 3: RFC 3966 form inside a SIP URI.
pub const SIP_USER_CONTEXT: &str = "sip:76123456;phone-context=+232@gw.example.net;user=phone";

/// `pairs` CR/LF keep-alives before `msg`.
pub fn after_keepalives(pairs: usize, msg: &[u8]) -> Vec<u8> {
    [b"\r\n".repeat(pairs).as_slice(), msg].concat()
}

/// The bytes of a first fragment that carries `head` of a UDP payload of `total` bytes: the UDP
/// length claims the whole datagram, the IP packet holds only `head`.
fn first_fragment_v4(head: &[u8], total: usize) -> Vec<u8> {
    Pkt::v4(head)
        .fragment(0, true)
        .udp_len((8 + total) as u16)
        .build()
}

/// The whole table.
pub fn cases() -> Vec<Case> {
    let blocked = invite(BLOCKED_URI);
    let b = || blocked.clone();
    let sip_line_len = "INVITE ".len();
    vec![
        // ---- Layer 2
        dropped("l2/eth-ipv4", Pkt::v4(&b()).build(), SL),
        dropped("l2/vlan-8021q", Pkt::v4(&b()).vlan(0x8100).build(), SL),
        dropped("l2/vlan-8021ad", Pkt::v4(&b()).vlan(0x88a8).build(), SL),
        dropped("l2/qinq-88a8-8100", Pkt::v4(&b()).vlan(0x88a8).vlan(0x8100).build(), SL),
        dropped("l2/qinq-8100-88a8", Pkt::v4(&b()).vlan(0x8100).vlan(0x88a8).build(), SL),
        dropped("l2/qinq-ipv6", Pkt::v6(&b()).vlan(0x8100).vlan(0x8100).build(), SL),
        skipped("l2/three-tags", Pkt::v4(&b()).vlan(0x88a8).vlan(0x8100).vlan(0x8100).build(), NotUdp),
        skipped("l2/arp", Pkt::v4(&b()).ethertype(0x0806).build(), NotUdp),
        skipped("l2/vlan-cut", Pkt::v4(&b()).vlan(0x8100).truncate(16).build(), Truncated),
        // ---- Layer 3: IPv4
        dropped("l3/ipv4-options-20", Pkt::v4(&b()).ipv4_options(20).build(), SL),
        dropped("l3/ipv4-options-40", Pkt::v4(&b()).ipv4_options(40).build(), SL),
        dropped("l3/ipv4-first-fragment", Pkt::v4(&b()).fragment(0, true).build(), SL),
        skipped("l3/ipv4-non-first-fragment", Pkt::v4(&b()).fragment(185, false).build(), NonFirstFragments),
        skipped("l3/ipv4-middle-fragment", Pkt::v4(&b()).fragment(1, true).build(), NonFirstFragments),
        skipped("l3/ipv4-gre", Pkt::v4(&b()).proto(47).build(), NotUdp),
        skipped("l3/ipv4-ihl-below-5", Pkt::v4(&b()).ihl(4).build(), Truncated),
        skipped("l3/ipv4-header-cut", Pkt::v4(&b()).truncate(14 + 10).build(), Truncated),
        skipped("l3/ipv4-options-cut", Pkt::v4(&b()).ipv4_options(40).truncate(14 + 40).build(), Truncated),
        // ---- Layer 3: IPv6
        dropped("l3/ipv6", Pkt::v6(&b()).build(), SL),
        dropped("l3/ipv6-hop-by-hop", Pkt::v6(&b()).ext(Ext::HopByHop).build(), SL),
        dropped(
            "l3/ipv6-hbh-routing-dstopts-fragment",
            Pkt::v6(&b())
                .ext(Ext::HopByHop)
                .ext(Ext::Routing)
                .ext(Ext::DestOpts)
                .ext(Ext::Fragment { offset: 0, more: true })
                .build(),
            SL,
        ),
        dropped("l3/ipv6-first-fragment", Pkt::v6(&b()).ext(Ext::Fragment { offset: 0, more: true }).build(), SL),
        skipped(
            "l3/ipv6-non-first-fragment",
            Pkt::v6(&b()).ext(Ext::Fragment { offset: 181, more: false }).build(),
            NonFirstFragments,
        ),
        skipped(
            "l3/ipv6-seven-ext-headers",
            (0..7).fold(Pkt::v6(&b()), |p, _| p.ext(Ext::DestOpts)).build(),
            Ipv6ExtLimit,
        ),
        skipped("l3/ipv6-ext-cut", Pkt::v6(&b()).ext(Ext::Routing).truncate(14 + 40 + 4).build(), Truncated),
        // ---- Layer 4 and lengths
        dropped_with("l4/ipv4-total-length-lies-long", Pkt::v4(&b()).ip_len_delta(500).build(), SL, &[(Truncated, 1)]),
        dropped_with("l4/ipv6-payload-length-lies-long", Pkt::v6(&b()).ip_len_delta(500).build(), SL, &[(Truncated, 1)]),
        dropped_with("l4/udp-length-lies-long", Pkt::v4(&b()).udp_len(1400).build(), SL, &[(Truncated, 1)]),
        skipped("l4/udp-length-below-header", Pkt::v4(&b()).udp_len(7).build(), Truncated),
        skipped("l4/udp-header-cut", Pkt::v4(&b()).truncate(14 + 20 + 4).build(), Truncated),
        // The UDP length ends the payload inside the number: only "+23" is there.
        // No rule among "+23": incomplete_action (monitor) decides.
        case(
            "l4/udp-length-cuts-number",
            Pkt::v4(&b()).udp_len((8 + sip_line_len + "sip:+23".len()) as u16).build(),
            Verdict::Pass,
            &[
                (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (NumberIncomplete, 1),
                (IncompleteActionApplied, 1), (WouldDrop, 1),
            ],
        ),
        // The IPv4 length ends the packet inside the number (and Ethernet padding follows).
        case(
            "l4/ip-length-cuts-number",
            Pkt::v4(&b()).ip_len_delta(-((b().len() - sip_line_len - "sip:+23".len()) as i32)).build(),
            Verdict::Pass,
            &[
                (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (NumberIncomplete, 1),
                (IncompleteActionApplied, 1), (WouldDrop, 1), (Truncated, 1),
            ],
        ),
        // A frame cut after "+232" with lengths that claim more: the leading digits still match.
        dropped_with(
            "l4/frame-cut-after-country-code",
            Pkt::v4(&b()).truncate(14 + 20 + 8 + sip_line_len + "sip:+232".len()).build(),
            SL,
            &[(Truncated, 1), (NumberIncomplete, 1)],
        ),
        case("l4/not-a-sip-port", Pkt::v4(&b()).dport(5061).build(), Verdict::Pass, &[]),
        case("l4/port-5080-not-configured", Pkt::v4(&b()).dport(5080).build(), Verdict::Pass, &[]),
        dropped("l4/port-5080-configured", Pkt::v4(&b()).dport(5080).build(), SL).on(Setup::TwoPorts),
        case("l4/empty-payload", Pkt::v4(b"").build(), Verdict::Pass, &[(SipCandidates, 1)]),
        // ---- URI forms
        dropped("uri/sip-plus", Pkt::v4(&invite("sip:+23276123456@gw.example.net;user=phone")).build(), SL),
        dropped("uri/sips-plus", Pkt::v4(&invite("sips:+23276123456@gw.example.net")).build(), SL),
        dropped("uri/scheme-upper-case", Pkt::v4(&invite("SIP:+23276123456@gw.example.net")).build(), SL),
        dropped("uri/scheme-mixed-case", Pkt::v4(&invite("Sips:+23276123456@gw.example.net")).build(), SL),
        dropped("uri/tel-plus-separators", Pkt::v4(&invite("tel:+232-76-123.456")).build(), SL),
        dropped("uri/tel-params", Pkt::v4(&invite("tel:+232-76-123456;isub=1")).build(), SL),
        dropped("uri/tel-upper-case", Pkt::v4(&invite("TEL:+23276123456")).build(), SL),
        dropped("uri/sip-00", Pkt::v4(&invite("sip:0023276123456@gw.example.net")).build(), SL),
        dropped("uri/sip-011", Pkt::v4(&invite("sip:01123276123456@gw.example.net")).build(), SL),
        dropped("uri/escaped-plus", Pkt::v4(&invite("sip:%2B23276123456@gw.example.net")).build(), SL),
        dropped("uri/escaped-plus-lower", Pkt::v4(&invite("sip:%2b23276123456@gw.example.net")).build(), SL),
        dropped("uri/escaped-digits", Pkt::v4(&invite("sip:+%32%33%3276123456@gw.example.net")).build(), SL),
        dropped("uri/escaped-separator", Pkt::v4(&invite("sip:00%2D232%2D76123456@gw.example.net")).build(), SL),
        dropped("uri/separators", Pkt::v4(&invite("sip:+(232)76.123-456@gw.example.net")).build(), SL),
        dropped("uri/user-params", Pkt::v4(&invite("sip:+23276123456;npdi@gw.example.net")).build(), SL),
        dropped("uri/trailing-letters", Pkt::v4(&invite("sip:+23276123456abc@gw.example.net")).build(), SL),
        dropped(
            "uri/number-over-30-digits",
            Pkt::v4(&invite("sip:+2327612345678901234567890123456789@gw.example.net")).build(),
            SL,
        ),
        dropped("uri/crlf-keepalives-first", Pkt::v4(&[b"\r\n\r\n".as_slice(), &b()].concat()).build(), SL),
        dropped("uri/tel-phone-context", Pkt::v4(&invite("tel:76-123456;phone-context=+232")).build(), SL),
        dropped(
            "uri/context-dialled-out-tel",
            Pkt::v4(&invite("tel:0023276123456;phone-context=+44")).build(),
            SL,
        ),
        dropped(
            "uri/context-dialled-out-sip",
            Pkt::v4(&invite("sip:011-232-76123456;phone-context=+1@gw.example.net;user=phone")).build(),
            SL,
        ),
        dropped("uri/satellite", Pkt::v4(&invite("sip:+881631234567@gw.example.net")).build(), SAT),
        dropped("uri/nanp-jamaica", Pkt::v4(&invite("sip:+18765550100@gw.example.net")).build(), JM),
        passed_unmatched("uri/nanp-new-york", Pkt::v4(&invite("sip:+12125550100@gw.example.net")).build()),
        dropped("uri/national-premium-tel", Pkt::v4(&invite("tel:0990-123-456")).build(), PREMIUM),
        dropped("uri/national-premium-sip", Pkt::v4(&invite("sip:0990123456@pbx.example.net")).build(), PREMIUM),
        passed_unmatched("uri/allowed-international", Pkt::v4(&invite(ALLOWED_URI)).build()),
        passed_unmatched("uri/plus-00-is-not-stripped", Pkt::v4(&invite("sip:+0023276123456@gw.example.net")).build()),
        passed_unmatched("uri/tel-domain-context", Pkt::v4(&invite("tel:76123456;phone-context=example.com")).build()),
        case(
            "uri/allow-exception-inside-block",
            Pkt::v4(&invite("sip:+23222123456@gw.example.net")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (AllowedByException, 1)],
        )
        .rule(SL_EXCEPTION, 1, 0, 0),
        case(
            "uri/monitor-rule",
            Pkt::v4(&invite("sip:+442079460000@gw.example.net")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (WouldDrop, 1)],
        )
        .rule(UK, 1, 0, 1),
        case(
            "uri/sip-name",
            Pkt::v4(&invite("sip:alice@example.com")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NoNumber, 1)],
        ),
        case(
            "uri/sip-host-only",
            Pkt::v4(&invite("sip:192.0.2.1")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NoNumber, 1)],
        ),
        case(
            "uri/http-scheme",
            Pkt::v4(&invite("http:+23276123456@gw.example.net")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (UnparsableUri, 1)],
        ),
        case(
            "uri/double-space",
            Pkt::v4(&request("INVITE ", BLOCKED_URI)).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (UnparsableUri, 1)],
        ),
        case(
            "uri/angle-brackets",
            Pkt::v4(&invite("<sip:+23276123456@gw.example.net>")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (UnparsableUri, 1)],
        ),
        // ---- Bypasses of the hostile test pass (issue 10), each closed
        // 1. Keep-alives before the request line do not count against the window.
        dropped("bypass/crlf-121-pairs", Pkt::v4(&after_keepalives(121, &b())).build(), SL),
        dropped("bypass/crlf-125-pairs", Pkt::v4(&after_keepalives(125, &b())).build(), SL),
        dropped("bypass/crlf-600-pairs-ipv6", Pkt::v6(&after_keepalives(600, &b())).build(), SL),
        dropped("bypass/crlf-only-lf-300", Pkt::v4(&[b"\n".repeat(300).as_slice(), &b()].concat()).build(), SL),
        case("bypass/crlf-keepalive-only-long", Pkt::v4(&b"\r\n".repeat(700)).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        // 2. A phone-context anywhere among the parameters.
        dropped("bypass/tel-40-params-then-phone-context", Pkt::v4(&invite(&tel_isub_40())).build(), SL),
        // 3. RFC 3966 form inside a SIP URI.
        dropped("bypass/sip-user-phone-context", Pkt::v4(&invite(SIP_USER_CONTEXT)).build(), SL),
        dropped(
            "bypass/sips-user-params-phone-context",
            Pkt::v4(&invite("sips:76-123-456;isub=1;phone-context=+232@gw.example.net")).build(),
            SL,
        ),
        passed_unmatched(
            "bypass/sip-user-domain-context-stays-national",
            Pkt::v4(&invite("sip:76123456;phone-context=example.com@gw.example.net")).build(),
        ),
        // 4. A number not read to its end is never taken for another one.
        case(
            "bypass/params-past-window-monitor",
            Pkt::v4(&invite(&tel_params_past_window())).build(),
            Verdict::Pass,
            &UNRESOLVED_MONITOR,
        ),
        case(
            "bypass/params-past-window-block",
            Pkt::v4(&invite(&tel_params_past_window())).build(),
            Verdict::Drop,
            &[
                (SipCandidates, 1), (Invites, 1), (NumberIncomplete, 1),
                (IncompleteActionApplied, 1), (Dropped, 1),
            ],
        )
        .on(Setup::IncompleteBlock),
        case(
            "bypass/params-past-window-allow",
            Pkt::v4(&invite(&tel_params_past_window())).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NumberIncomplete, 1), (IncompleteActionApplied, 1)],
        )
        .on(Setup::IncompleteAllow),
        case(
            "bypass/params-past-window-monitor-mode",
            Pkt::v4(&invite(&tel_params_past_window())).build(),
            Verdict::Pass,
            &UNRESOLVED_MONITOR,
        )
        .on(Setup::Monitor),
        case(
            "bypass/sip-params-past-window",
            Pkt::v4(&invite(&format!("sip:76123456;{}phone-context=+232@gw", "x=1;".repeat(260)))).build(),
            Verdict::Drop,
            &[
                (SipCandidates, 1), (Invites, 1), (NumberIncomplete, 1),
                (IncompleteActionApplied, 1), (Dropped, 1),
            ],
        )
        .on(Setup::IncompleteBlock),
        case(
            "bypass/local-number-past-window",
            Pkt::v4(&invite(&format!("sip:{}76123456@gw", "-".repeat(1100)))).build(),
            Verdict::Pass,
            &UNRESOLVED_MONITOR,
        ),
        // A `+` number cut by the window: its digits are a prefix; +232 among them still drops.
        dropped_with(
            "bypass/plus-number-past-window-prefix-drops",
            Pkt::v4(&invite(&format!("sip:+232{}76123456@gw", "-".repeat(1100)))).build(),
            SL,
            &[(NumberIncomplete, 1)],
        ),
        // A prefix with no rule among its digits: incomplete_action decides.
        case(
            "bypass/plus-prefix-no-rule-is-incomplete-action",
            Pkt::v4(&invite(&format!("sip:+2{}3276123456@gw", "-".repeat(1100)))).build(),
            Verdict::Drop,
            &[
                (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (NumberIncomplete, 1),
                (IncompleteActionApplied, 1), (Dropped, 1),
            ],
        )
        .on(Setup::IncompleteBlock),
        // 5. Tiny first fragments.
        case("bypass/ipv4-tiny-first-fragment-8", first_fragment_v4(b"INVITE s", 600), Verdict::Drop, &[(TinyFirstFragments, 1)]),
        case("bypass/ipv4-tiny-first-fragment-16", first_fragment_v4(b"INVITE sip:+2327", 600), Verdict::Drop, &[(TinyFirstFragments, 1)]),
        case(
            "bypass/ipv6-tiny-first-fragment-16",
            Pkt::v6(b"INVITE sip:+2327").ext(Ext::Fragment { offset: 0, more: true }).udp_len(608).build(),
            Verdict::Drop,
            &[(TinyFirstFragments, 1)],
        ),
        case("bypass/ipv4-tiny-first-fragment-empty", first_fragment_v4(b"", 600), Verdict::Drop, &[(TinyFirstFragments, 1)]),
        case(
            "bypass/ipv4-first-fragment-without-udp-header",
            Pkt::v4(b"").fragment(0, true).ip_len_delta(-8).build(),
            Verdict::Drop,
            &[(TinyFirstFragments, 1)],
        ),
        case(
            "bypass/ipv4-tiny-first-fragment-pass",
            first_fragment_v4(b"INVITE s", 600),
            Verdict::Pass,
            &[(TinyFirstFragments, 1)],
        )
        .on(Setup::TinyPass),
        case(
            "bypass/ipv4-tiny-first-fragment-monitor-mode",
            first_fragment_v4(b"INVITE s", 600),
            Verdict::Pass,
            &[(TinyFirstFragments, 1)],
        )
        .on(Setup::Monitor),
        // Long enough, but all keep-alives until the fragment's end.
        case(
            "bypass/ipv4-first-fragment-keepalives-then-cut",
            first_fragment_v4(&[b"\r\n".repeat(40).as_slice(), b"INVITE sip:+2"].concat(), 600),
            Verdict::Drop,
            &[(SipCandidates, 1), (Truncated, 1), (TinyFirstFragments, 1)],
        ),
        // Long enough, but it ends inside the Request-URI's number.
        case(
            "bypass/ipv4-first-fragment-cut-in-number",
            first_fragment_v4(format!("INVITE sip:{}2327", "-".repeat(60)).as_bytes(), 600),
            Verdict::Drop,
            &[(SipCandidates, 1), (Truncated, 1), (Invites, 1), (NumberIncomplete, 1), (TinyFirstFragments, 1)],
        ),
        // A real first fragment (cut at the MTU) is decided as usual, and is not tiny.
        passed_unmatched(
            "frag/ipv4-first-fragment-allowed",
            Pkt::v4(&invite(ALLOWED_URI)).fragment(0, true).build(),
        ),
        // ---- SIP over TCP (best effort)
        case(
            "tcp/ipv4-invite-blocked",
            Pkt::v4(&b()).tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Drop,
            &[(TcpInspected, 1), (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (Dropped, 1)],
        )
        .rule(SL, 1, 1, 0),
        case(
            "tcp/ipv6-invite-blocked-options",
            Pkt::v6(&b()).tcp(TCP_ACK | TCP_PSH, 12).build(),
            Verdict::Drop,
            &[(TcpInspected, 1), (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (Dropped, 1)],
        )
        .rule(SL, 1, 1, 0),
        case(
            "tcp/vlan-sip-user-phone-context",
            Pkt::v4(&invite(SIP_USER_CONTEXT)).vlan(0x8100).tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Drop,
            &[(TcpInspected, 1), (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (Dropped, 1)],
        )
        .rule(SL, 1, 1, 0),
        case(
            "tcp/keepalives-then-invite",
            Pkt::v4(&after_keepalives(200, &b())).tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Drop,
            &[(TcpInspected, 1), (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (Dropped, 1)],
        )
        .rule(SL, 1, 1, 0),
        case(
            "tcp/invite-allowed",
            Pkt::v4(&invite(ALLOWED_URI)).tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Pass,
            &[(TcpInspected, 1), (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1)],
        ),
        case("tcp/keepalive", Pkt::v4(b"\r\n\r\n").tcp(TCP_ACK | TCP_PSH, 0).build(), Verdict::Pass, &[(TcpInspected, 1), (SipCandidates, 1)]),
        case("tcp/syn", Pkt::v4(b"").tcp(TCP_SYN, 8).build(), Verdict::Pass, &[(TcpUninspected, 1)]),
        case("tcp/ack-only-ipv6", Pkt::v6(b"").tcp(TCP_ACK, 0).build(), Verdict::Pass, &[(TcpUninspected, 1)]),
        case(
            "tcp/continuation",
            Pkt::v4(b"Max-Forwards: 70\r\nTo: <sip:+23276123456@x>\r\n\r\n").tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Pass,
            &[(TcpUninspected, 1)],
        ),
        case(
            "tcp/response",
            Pkt::v4(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n").tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Pass,
            &[(TcpUninspected, 1)],
        ),
        case("tcp/other-port", Pkt::v4(&b()).dport(8080).tcp(TCP_ACK | TCP_PSH, 0).build(), Verdict::Pass, &[(TcpUninspected, 1)]),
        case(
            "tcp/tls-5061",
            Pkt::v4(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).dport(5061).tcp(TCP_ACK | TCP_PSH, 0).build(),
            Verdict::Pass,
            &[(TcpUninspected, 1)],
        ),
        case("tcp/header-cut", Pkt::v4(&b()).tcp(TCP_ACK, 0).truncate(14 + 20 + 12).build(), Verdict::Pass, &[(TcpUninspected, 1)]),
        // ---- Methods and responses
        case("sip/lower-case-invite", Pkt::v4(&request("invite", BLOCKED_URI)).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        case("sip/options", Pkt::v4(&request("OPTIONS", BLOCKED_URI)).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        case("sip/info", Pkt::v4(&request("INFO", BLOCKED_URI)).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        case("sip/register", Pkt::v4(&request("REGISTER", "sip:+23276123456@registrar.example.net")).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        case("sip/invitex", Pkt::v4(&request("INVITEX", BLOCKED_URI)).build(), Verdict::Pass, &[(SipCandidates, 1)]),
        case(
            "sip/response-200",
            Pkt::v4(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n").build(),
            Verdict::Pass,
            &[(SipCandidates, 1)],
        ),
        case("sip/crlf-only-keepalive", Pkt::v4(b"\r\n\r\n").build(), Verdict::Pass, &[(SipCandidates, 1)]),
        // ---- International prefix settings
        dropped("intl/japan-010", Pkt::v4(&invite("sip:01023276123456@gw.example.net")).build(), SL).on(Setup::Japan),
        passed_unmatched("intl/japan-011-is-domestic", Pkt::v4(&invite("sip:01123276123456@gw.example.net")).build())
            .on(Setup::Japan),
        passed_unmatched("intl/japan-00-is-domestic", Pkt::v4(&invite("sip:0023276123456@gw.example.net")).build())
            .on(Setup::Japan),
        dropped("intl/japan-plus", Pkt::v4(&b()).build(), SL).on(Setup::Japan),
        // Longest prefix wins: "0011" is stripped, not "00" (which would give +1123..., unblocked).
        dropped("intl/australia-0011", Pkt::v4(&invite("sip:001123276123456@gw.example.net")).build(), SL)
            .on(Setup::Australia),
        dropped("intl/australia-00", Pkt::v4(&invite("sip:0023276123456@gw.example.net")).build(), SL)
            .on(Setup::Australia),
        // ---- Monitor mode
        case("mode/monitor-block-is-would-drop", Pkt::v4(&b()).build(), Verdict::Pass, &[
            (SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (WouldDrop, 1),
        ])
        .on(Setup::Monitor)
        .rule(SL, 1, 0, 1),
        case(
            "mode/monitor-allow-still-allows",
            Pkt::v4(&invite("sip:+23222123456@gw.example.net")).build(),
            Verdict::Pass,
            &[(SipCandidates, 1), (Invites, 1), (NumbersParsed, 1), (AllowedByException, 1)],
        )
        .on(Setup::Monitor)
        .rule(SL_EXCEPTION, 1, 0, 0),
    ]
}

/// Looks a case up by name (benchmarks use this).
pub fn case_named(name: &str) -> Case {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture named {name}"))
}
