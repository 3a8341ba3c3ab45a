//! `sipguard replay --config FILE CAPTURE`: every frame of a capture through a private instance
//! of the same XDP program (BPF_PROG_TEST_RUN), with the rules and settings of FILE. The live
//! pins are never touched. The verdict is the kernel's; the method and number shown next to it
//! come from the shared guard-common parser, and the rule from a lookup in the instance's trie.

use std::{collections::BTreeMap, io::Write as _, path::Path};

use anyhow::{Context as _, Result};
use guard_common::{Action, Counter, Parsed, parse_payload};
use serde_json::json;

pub mod capture;

use crate::{
    config,
    kernel::filter::{Filter, Verdict},
    model::rules::Prefix,
};

/// What the host sees in a frame, for display: UDP destination port and payload.
fn udp_payload(frame: &[u8]) -> Option<(u16, &[u8])> {
    let be16 = |o: usize| Some(u16::from_be_bytes([*frame.get(o)?, *frame.get(o + 1)?]));
    let mut off = 12;
    let mut et = be16(off)?;
    off += 2;
    let mut tags = 0;
    while (et == 0x8100 || et == 0x88a8) && tags < 2 {
        et = be16(off + 2)?;
        off += 4;
        tags += 1;
    }
    let (mut next, mut cur) = match et {
        0x0800 => {
            let ihl = ((*frame.get(off)? & 0x0f) as usize) * 4;
            (*frame.get(off + 9)?, off + ihl)
        }
        0x86dd => (*frame.get(off + 6)?, off + 40),
        _ => return None,
    };
    for _ in 0..6 {
        match next {
            17 => break,
            0 | 43 | 60 => {
                let (nh, len) = (*frame.get(cur)?, *frame.get(cur + 1)?);
                next = nh;
                cur += (len as usize + 1) * 8;
            }
            44 => {
                next = *frame.get(cur)?;
                cur += 8;
            }
            _ => return None,
        }
    }
    if next != 17 {
        return None;
    }
    let dport = be16(cur + 2)?;
    let udp_len = be16(cur + 4)? as usize;
    let start = cur + 8;
    let end = (cur + udp_len.max(8)).min(frame.len());
    Some((dport, frame.get(start..end.max(start))?))
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

pub fn run(config_path: &Path, capture_path: &Path, json_out: bool) -> Result<bool> {
    let cfg = config::load(config_path)?;
    let frames = capture::read_frames(capture_path)?;
    let mut filter = Filter::load(&cfg.settings).context("loading a private filter instance")?;
    filter
        .maps
        .commit(&cfg.settings, &cfg.rules)
        .context("loading the rules of the config into the private instance")?;
    let intl = cfg.settings.to_config()?.intl_prefixes;
    let by_id: BTreeMap<u32, Prefix> = filter
        .maps
        .rules()?
        .into_iter()
        .map(|(p, v)| (v.id, p))
        .collect();

    let mut out = std::io::stdout().lock();
    let (mut dropped, mut passed) = (0u64, 0u64);
    let mut per_rule: BTreeMap<String, u64> = BTreeMap::new();
    for f in &frames {
        let before = filter.global_counters()?;
        let verdict = filter
            .test_run(&f.data)
            .with_context(|| format!("{}: frame {}", capture_path.display(), f.number))?;
        let after = filter.global_counters()?;
        let moved = |c: Counter| after.counters[c as usize] > before.counters[c as usize];
        let payload = udp_payload(&f.data).filter(|_| moved(Counter::SipCandidates));
        let method = payload.and_then(|(_, p)| method(p));
        let mut number = None;
        let mut rule = None;
        if let Some((_, p)) = payload
            && let Parsed::Number { number: n, .. } = parse_payload(p)
        {
            let (domain, norm) = intl.normalize(&n);
            number = Some(norm.display(domain).to_string());
            if let Some(v) = filter.maps.lookup(&norm.key(domain))? {
                rule = by_id.get(&v.id).map(|p| {
                    (
                        p.to_string(),
                        Action::from_u8(v.action).map_or("?", Action::as_str),
                    )
                });
            }
        }
        let verdict_s = match verdict {
            Verdict::Drop => {
                dropped += 1;
                if let Some((p, _)) = &rule {
                    *per_rule.entry(p.clone()).or_default() += 1;
                }
                "drop"
            }
            Verdict::Pass => {
                passed += 1;
                "pass"
            }
            Verdict::Other(_) => "other",
        };
        if json_out {
            let mut v = json!({ "frame": f.number, "verdict": verdict_s });
            if let Some(m) = &method {
                v["method"] = json!(m);
            }
            if let Some(n) = &number {
                v["number"] = json!(n);
            }
            if let Some((p, a)) = &rule {
                v["rule"] = json!(p);
                v["action"] = json!(a);
            }
            if f.snapped {
                v["snapped"] = json!(true);
            }
            writeln!(out, "{v}")?;
        } else {
            let mut line = format!("frame {:>6}  {:<4}", f.number, verdict_s);
            if let Some(m) = &method {
                line.push_str(&format!("  {m}"));
            }
            if let Some(n) = &number {
                line.push_str(&format!("  {n}"));
            }
            if let Some((p, a)) = &rule {
                line.push_str(&format!("  rule {p} ({a})"));
            }
            if f.snapped {
                line.push_str(&format!(
                    "  [snapped: {} of {} bytes]",
                    f.data.len(),
                    f.original_len
                ));
            }
            writeln!(out, "{line}")?;
        }
    }
    if json_out {
        writeln!(
            out,
            "{}",
            json!({"summary": {"frames": frames.len(), "dropped": dropped, "passed": passed, "dropped_by_rule": per_rule}})
        )?;
    } else {
        writeln!(
            out,
            "summary: {} frames, {dropped} dropped, {passed} passed",
            frames.len()
        )?;
        for (p, n) in &per_rule {
            writeln!(out, "  {p}: {n} dropped")?;
        }
    }
    Ok(true)
}
