//! `sipguard replay` on captures the test writes: every fixture frame (IPv4, IPv6, VLAN,
//! fragments, lying lengths, every URI form) in pcap and pcapng, plus raw-IP and Linux cooked
//! captures, must get the verdict the kernel-filter fixture table expects. Run as root.

use std::{fs, path::Path};

use sipguard::Verdict;
use sipguard_tests::{
    fixtures::{self, Case, Setup},
    harness::Instance,
    pcap::{self, LinkType},
};

/// The config file equivalent of the fixture rules under `setup`.
fn config_for(setup: Setup) -> String {
    let s = setup.settings();
    let mut out = format!(
        "[settings]\nsip_ports = {:?}\ninternational_prefixes = {:?}\nmode = \"{}\"\n",
        s.sip_ports, s.intl_prefixes, s.mode
    );
    // Written only when they differ from the defaults (the setups that need them).
    if s.incomplete_action != guard_common::Action::Monitor {
        out.push_str(&format!(
            "incomplete_action = \"{}\"\n",
            s.incomplete_action
        ));
    }
    if s.tiny_first_fragment != sipguard::TinyFragment::Drop {
        out.push_str(&format!(
            "tiny_first_fragment = \"{}\"\n",
            s.tiny_first_fragment
        ));
    }
    for &(prefix, action, _) in fixtures::RULES {
        out.push_str(&format!(
            "\n[[rule]]\nprefix = \"{prefix}\"\naction = \"{action}\"\n"
        ));
    }
    out
}

fn replay(sg: &Instance, config: &Path, capture: &Path) -> Vec<serde_json::Value> {
    let out = sg.ok(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--json",
        capture.to_str().unwrap(),
    ]);
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn check(label: &str, cases: &[&Case], lines: &[serde_json::Value]) -> Vec<String> {
    let mut errs = Vec::new();
    let (frames, summary) = lines.split_at(lines.len() - 1);
    if frames.len() != cases.len() {
        return vec![format!(
            "{label}: {} frame lines for {} frames",
            frames.len(),
            cases.len()
        )];
    }
    let mut dropped = 0;
    for (i, (case, line)) in cases.iter().zip(frames).enumerate() {
        assert_eq!(line["frame"], i as u64 + 1, "frames are numbered from 1");
        let want = match case.verdict {
            Verdict::Drop => "drop",
            _ => "pass",
        };
        if want == "drop" {
            dropped += 1;
            // A drop names its rule and number, or why no rule decided it (a tiny first
            // fragment, a number not read to its end).
            let by_rule = line["rule"].as_str().is_some() && line["number"].as_str().is_some();
            if !by_rule && line["reason"].as_str().is_none() {
                errs.push(format!(
                    "{label} {}: drop without rule/number or reason: {line}",
                    case.name
                ));
            }
        }
        if line["verdict"] != want {
            errs.push(format!(
                "{label} {}: replay says {}, fixture expects {want}",
                case.name, line["verdict"]
            ));
        }
    }
    assert_eq!(summary[0]["summary"]["frames"], cases.len());
    assert_eq!(summary[0]["summary"]["dropped"], dropped, "{label}");
    errs
}

#[test]
fn replay_gives_the_fixture_verdicts_for_every_capture_format() {
    let sg = Instance::new("replay");
    let all = fixtures::cases();
    let mut errs = Vec::new();
    let mut checked = 0;
    for setup in Setup::ALL {
        let cases: Vec<&Case> = all.iter().filter(|c| c.setup == setup).collect();
        if cases.is_empty() {
            continue;
        }
        let cfg = sg.write(&format!("{setup:?}.toml"), &config_for(setup));
        let frames: Vec<Vec<u8>> = cases.iter().map(|c| c.frame.clone()).collect();
        let p = sg.dir.join(format!("{setup:?}.pcap"));
        pcap::write_pcap(&p, LinkType::Ethernet, &frames).unwrap();
        errs.extend(check(
            &format!("{setup:?} pcap"),
            &cases,
            &replay(&sg, &cfg, &p),
        ));
        let p = sg.dir.join(format!("{setup:?}.pcapng"));
        pcap::write_pcapng(&p, &frames).unwrap();
        errs.extend(check(
            &format!("{setup:?} pcapng"),
            &cases,
            &replay(&sg, &cfg, &p),
        ));
        checked += 2 * cases.len();

        // Raw IP and Linux cooked captures carry no Ethernet header (and no VLAN tags): the
        // untagged IP frames must give the same verdicts.
        let untagged: Vec<&Case> = cases
            .iter()
            .copied()
            .filter(|c| {
                matches!(
                    u16::from_be_bytes([c.frame[12], c.frame[13]]),
                    0x0800 | 0x86dd
                )
            })
            .filter(|c| c.frame.len() > 14 + 20)
            .collect();
        for link in [LinkType::Raw, LinkType::LinuxSll] {
            let frames: Vec<Vec<u8>> = untagged
                .iter()
                .map(|c| pcap::from_ethernet(link, &c.frame))
                .collect();
            let p = sg.dir.join(format!("{setup:?}-{link:?}.pcap"));
            pcap::write_pcap(&p, link, &frames).unwrap();
            errs.extend(check(
                &format!("{setup:?} {link:?}"),
                &untagged,
                &replay(&sg, &cfg, &p),
            ));
            checked += untagged.len();
        }
    }
    assert!(
        errs.is_empty(),
        "replay disagrees with the fixtures:\n{}",
        errs.join("\n")
    );
    println!(
        "replay: {checked} frames in pcap, pcapng, raw and cooked captures match the fixtures"
    );

    // The human output ends with a summary.
    let cfg = sg.write("d.toml", &config_for(Setup::Default));
    let p = sg.dir.join("one.pcap");
    pcap::write_pcap(
        &p,
        LinkType::Ethernet,
        &[fixtures::case_named("l2/eth-ipv4").frame],
    )
    .unwrap();
    let text = sg.ok(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    assert!(
        text.contains("frame      1  drop  INVITE  +23276123456  rule +232 (block)"),
        "{text}"
    );
    assert!(
        text.contains("summary: 1 frames, 1 dropped, 0 passed"),
        "{text}"
    );
}

#[test]
fn a_truncated_capture_names_the_frame() {
    let sg = Instance::new("replay-trunc");
    let cfg = sg.write("d.toml", &config_for(Setup::Default));
    let frames: Vec<Vec<u8>> = fixtures::cases()
        .iter()
        .take(5)
        .map(|c| c.frame.clone())
        .collect();
    let p = sg.dir.join("cut.pcap");
    pcap::write_pcap(&p, LinkType::Ethernet, &frames).unwrap();
    // Cut the file in the middle of the third record.
    let len_of = |n: usize| frames[..n].iter().map(|f| 16 + f.len()).sum::<usize>() + 24;
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..len_of(2) + 16 + 10]).unwrap();
    let r = sg.cli(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        p.to_str().unwrap(),
    ]);
    assert!(!r.ok, "a truncated capture was accepted");
    assert!(
        r.stderr.contains("cut.pcap: frame 3: truncated record"),
        "{}",
        r.stderr
    );
}
