//! The header scanner on arbitrary bytes: `scan_headers` never panics, stepping
//! `HeaderScanner::step` by hand ends within `HDR_MAX_STEPS` and agrees with it, every step
//! changes the state, and on messages with CRLF line ends that fit the window the result agrees
//! with a plain line-by-line reference (the one in guard-common/tests/headers.rs, made
//! byte-based and stopping, as the scanner does, once both the Call-ID and the To header have
//! been read).
#![no_main]

use guard_common::headers::{CALL_ID_MAX, call_id_hash};
use guard_common::{HDR_MAX_STEPS, HDR_WINDOW, HeaderScanner, Headers, scan_headers};
use libfuzzer_sys::fuzz_target;

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Call-ID hash and To tag, the obvious way.
fn reference(msg: &[u8]) -> Headers {
    let mut call = None;
    let mut tag = false;
    let mut to_seen = false;
    let mut lines = msg
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // the request line
    for line in lines {
        if line.is_empty() {
            break;
        }
        if is_blank(line[0]) {
            continue; // a folded continuation line
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let end = name
            .iter()
            .rposition(|&b| !is_blank(b))
            .map_or(0, |i| i + 1);
        let name = name[..end].to_ascii_lowercase();
        if (name == b"call-id" || name == b"i") && call.is_none() {
            let start = value
                .iter()
                .position(|&b| !is_blank(b))
                .unwrap_or(value.len());
            let v = &value[start..];
            let v = &v[..v.len().min(CALL_ID_MAX as usize)];
            let end = v.iter().rposition(|&b| !is_blank(b)).map_or(0, |i| i + 1);
            if !v.is_empty() {
                call = Some(call_id_hash(&v[..end]));
            }
        } else if name == b"to" || name == b"t" {
            to_seen = true;
            let mut in_angle = false;
            for (i, &b) in value.iter().enumerate() {
                match b {
                    b'<' => in_angle = true,
                    b'>' => in_angle = false,
                    b';' if !in_angle => {
                        let rest = &value[i + 1..];
                        let start = rest
                            .iter()
                            .position(|&b| !is_blank(b))
                            .unwrap_or(rest.len());
                        let rest = &rest[start..];
                        if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case(b"tag=") {
                            tag = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        if call.is_some() && to_seen {
            break;
        }
    }
    Headers {
        call_hash: call,
        to_tag: tag,
    }
}

/// Every CR is followed by LF and every LF preceded by CR: the reference's line model.
fn crlf_only(msg: &[u8]) -> bool {
    msg.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => msg.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && msg[i - 1] == b'\r',
        _ => true,
    })
}

fuzz_target!(|data: &[u8]| {
    let got = scan_headers(data);

    // Stepped by hand, as the kernel's bpf_loop does.
    let src = &data[..data.len().min(HDR_WINDOW)];
    let mut s = HeaderScanner::new();
    let mut calls = 0u32;
    loop {
        assert!(
            calls < HDR_MAX_STEPS,
            "no end within HDR_MAX_STEPS on {} bytes",
            src.len()
        );
        calls += 1;
        let before = s;
        if !s.step(src) {
            break;
        }
        assert_ne!(before, s, "step {calls} said go on but changed nothing");
    }
    assert!(!s.step(src), "step after done said go on");
    assert_eq!(s.finish(src), got, "stepping disagrees with scan_headers");
    if s.complete {
        assert!(
            src.windows(2).any(|w| w == b"\n\n" || w == b"\n\r") || src.first() == Some(&b'\n')
        );
    }

    if data.len() < HDR_WINDOW && crlf_only(data) {
        assert_eq!(got, reference(data), "scanner disagrees with the reference");
    }
});
