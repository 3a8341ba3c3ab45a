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

/// `sipguard replay --json` of `capture` with the fixture config: (exit ok, stdout lines,
/// stderr, the process's peak RSS in bytes from wait4).
// Reaped with wait4(2) (for its rusage), which clippy does not see.
#[allow(clippy::zombie_processes)]
fn replay_measured(sg: &Instance, capture: &Path) -> (bool, Vec<String>, String, u64) {
    use std::process::{Command, Stdio};
    let cfg = sg.write("m.toml", &config_for(Setup::Default));
    let out = sg.dir.join("replay.out");
    let err = sg.dir.join("replay.err");
    let child = Command::new(sipguard_tests::harness::sipguard_bin())
        .args(["replay", "--config", cfg.to_str().unwrap(), "--json"])
        .arg(capture)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let lines = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (
        ok,
        lines,
        fs::read_to_string(&err).unwrap(),
        ru.ru_maxrss as u64 * 1024,
    )
}

#[test]
fn frames_the_kernel_will_not_run_are_skipped_with_their_reason() {
    let sg = Instance::new("replay-skip");
    let good = fixtures::case_named("l2/eth-ipv4").frame.clone();
    let mut jumbo = good.clone();
    jumbo.resize(70_000, 0);
    let frames: Vec<(u32, Vec<u8>)> = vec![
        (0, Vec::new()),
        (0, vec![0xaa; 10]),
        (0, good.clone()),
        (0, jumbo),
        (0, vec![0x55; 80_000]),
        (1, good.clone()),
        (1, good.clone()),
        (0, good.clone()),
    ];
    let p = sg.dir.join("odd.pcapng");
    pcap::write_pcapng_interfaces(&p, &[1, 147], &frames).unwrap();
    let (ok, lines, stderr, _) = replay_measured(&sg, &p);
    assert!(ok, "replay failed: {stderr}");
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(v.len(), 9, "{lines:#?}");
    let verdict = |i: usize| v[i]["verdict"].as_str().unwrap().to_string();
    let reason = |i: usize| v[i]["reason"].as_str().unwrap_or("").to_string();
    assert_eq!(verdict(0), "skipped");
    assert!(
        reason(0).contains("0 bytes") && reason(0).contains("14-byte"),
        "{}",
        reason(0)
    );
    assert_eq!(verdict(1), "skipped");
    assert!(reason(1).starts_with("10 bytes"), "{}", reason(1));
    assert_eq!(verdict(2), "drop");
    // 70,000 bytes: a multi-buffer test run (more than a page), run by the kernel.
    assert_eq!(verdict(3), "drop", "{}", lines[3]);
    assert_eq!(verdict(4), "skipped");
    assert!(reason(4).contains("73152"), "{}", reason(4));
    assert_eq!(verdict(5), "skipped");
    assert_eq!(reason(5), "unsupported link type 147");
    assert_eq!(verdict(6), "skipped");
    assert_eq!(verdict(7), "drop");
    let s = &v[8]["summary"];
    assert_eq!(s["frames"], 8);
    assert_eq!(s["skipped"], 5);
    assert_eq!(s["dropped"], 3);
    assert_eq!(
        stderr.matches("link type 147").count(),
        1,
        "one note per interface: {stderr}"
    );
}

#[test]
fn sparse_zero_filled_and_special_files_are_refused_in_bounded_memory() {
    let sg = Instance::new("replay-sparse");
    // A valid pcap header and one frame, then 1 GiB of holes (zeros).
    let p = sg.dir.join("sparse.pcap");
    pcap::write_pcap(
        &p,
        LinkType::Ethernet,
        &[fixtures::case_named("l2/eth-ipv4").frame],
    )
    .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let start = std::time::Instant::now();
    let (ok, lines, stderr, rss) = replay_measured(&sg, &p);
    let took = start.elapsed();
    assert!(!ok, "a zero-filled file was accepted");
    assert!(stderr.contains("zero-filled"), "{stderr}");
    assert!(
        lines[0].contains("\"verdict\":\"drop\""),
        "frames before the error are shown"
    );
    assert!(rss < 128 << 20, "peak RSS {} MB", rss >> 20);
    assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    eprintln!(
        "sparse 1 GiB: refused in {took:.2?}, peak RSS {:.1} MB",
        rss as f64 / 1e6
    );

    let (ok, _, stderr, rss) = replay_measured(&sg, Path::new("/dev/zero"));
    assert!(!ok);
    assert!(
        stderr.contains("/dev/zero: a device, not a regular file"),
        "{stderr}"
    );
    assert!(rss < 128 << 20, "peak RSS {} MB", rss >> 20);

    let fifo = sg.dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (ok, _, stderr, _) = replay_measured(&sg, &fifo);
    assert!(!ok);
    assert!(stderr.contains("a FIFO, not a regular file"), "{stderr}");
}
