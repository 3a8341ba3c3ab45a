//! Property tests: the header scanner (Call-ID hash, To tag) against a plain line-by-line
//! reference implementation, on generated SIP messages.

use guard_common::headers::{CALL_ID_MAX, call_id_hash, scan_headers};
use proptest::prelude::*;

/// The reference: split into lines, read `Call-ID`/`i` and `To`/`t` the obvious way.
fn reference(msg: &str) -> (Option<u64>, bool) {
    let mut call = None;
    let mut tag = false;
    for line in msg.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            continue; // a folded continuation line
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim_end_matches([' ', '\t']).to_ascii_lowercase();
        if (name == "call-id" || name == "i") && call.is_none() {
            let v = value.trim_start_matches([' ', '\t']).as_bytes();
            let v = &v[..v.len().min(CALL_ID_MAX as usize)];
            let end = v
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |i| i + 1);
            if !v.is_empty() {
                call = Some(call_id_hash(&v[..end]));
            }
        } else if name == "to" || name == "t" {
            let mut in_angle = false;
            let b = value.as_bytes();
            for i in 0..b.len() {
                match b[i] {
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b';' if !in_angle => {
                        let rest = &value[i + 1..];
                        let rest = rest.trim_start_matches([' ', '\t']);
                        if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("tag=") {
                            tag = true;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    (call, tag)
}

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9.@_-]{1,40}"
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        token().prop_map(|v| format!("Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK{v}")),
        token().prop_map(|v| format!("From: <sip:{v}@192.0.2.10>;tag={v}")),
        token().prop_map(|v| format!("Contact: <sip:{v}@192.0.2.10>")),
        token().prop_map(|v| format!("X-Call-ID: {v}")),
        token().prop_map(|v| format!("Tone: x;tag={v}")),
        Just("Max-Forwards: 70".to_string()),
        Just("c: application/sdp".to_string()),
        Just("Content-Type: application/sdp".to_string()),
        Just("Call-Info: <http://example.net/x>".to_string()),
        Just("Identity: x".to_string()),
        token().prop_map(|v| format!("i: other-{v}")),
        Just("Tag: x;tag=1".to_string()),
        token().prop_map(|v| format!("Contact: <sip:{v}@192.0.2.10>;expires=3600")),
        Just("CSeq: 1 INVITE".to_string()),
        token().prop_map(|v| format!(" folded {v}")),
        token().prop_map(|v| format!("Subject: {v}")),
    ]
}

fn call_id_header() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("Call-ID"), Just("call-id"), Just("CALL-ID"), Just("i")],
        prop_oneof![Just(""), Just(" "), Just("\t")],
        prop_oneof![Just(""), Just(" "), Just("  ")],
        prop_oneof![token(), "[a-zA-Z0-9.@_ -]{100,160}"],
        prop_oneof![Just(""), Just(" "), Just(" \t"), Just("           \t ")],
    )
        .prop_map(|(n, before, after, v, trail)| format!("{n}{before}:{after}{v}{trail}"))
}

fn to_header() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("To"), Just("to"), Just("t"), Just("T")],
        token(),
        prop_oneof![
            Just("".to_string()),
            token().prop_map(|t| format!(";tag={t}")),
            token().prop_map(|t| format!(" ; TAG={t}")),
            Just(";tagx=1".to_string()),
            Just(";user=phone".to_string()),
        ],
        any::<bool>(),
    )
        .prop_map(|(n, user, params, inside)| {
            if inside {
                // Parameters inside the brackets belong to the URI, not to the header.
                format!("{n}: <sip:{user}@example.net{params}>")
            } else {
                format!("{n}: <sip:{user}@example.net>{params}")
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn scanner_agrees_with_the_reference(
        before in proptest::collection::vec(header(), 0..6),
        between in proptest::collection::vec(header(), 0..4),
        after in proptest::collection::vec(header(), 0..4),
        call in proptest::option::of(call_id_header()),
        to in proptest::option::of(to_header()),
        to_first in any::<bool>(),
    ) {
        let mut lines = vec!["INVITE sip:+23276123456@example.net SIP/2.0".to_string()];
        lines.extend(before);
        let (first, second) = if to_first { (to, call) } else { (call, to) };
        lines.extend(first);
        lines.extend(between);
        lines.extend(second);
        lines.extend(after);
        let msg = format!("{}\r\n\r\nv=0\r\nCall-ID: in-the-body\r\n", lines.join("\r\n"));
        prop_assume!(msg.len() < guard_common::HDR_WINDOW);
        let got = scan_headers(msg.as_bytes());
        let (call_hash, to_tag) = reference(&msg);
        prop_assert_eq!(got.call_hash, call_hash, "{}", msg);
        prop_assert_eq!(got.to_tag, to_tag, "{}", msg);
    }
}
