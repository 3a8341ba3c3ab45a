//! `cargo xtask demo`: sipguard doing its main job, in one command.
//!
//! Builds a PBX / router / carrier topology in network namespaces, starts `sipguard run` on the
//! router with the shipped default rules, has a "hacked PBX" (sipp) place a mix of domestic,
//! international and toll-fraud calls at 50 calls/s for 10 s through it to a carrier (sipp),
//! prints what happened per destination and sipguard's own stats. Then a second customer, an
//! office behind another router port whose policy bars international calls with a 403 (the
//! example of `sipguard default-config`), calls too, and a short table per customer shows who
//! got what. Everything is torn down, also on Ctrl-C or failure (every piece is removed by its
//! Drop).

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use sipguard_tests::{
    harness::Instance,
    mix::{ADD_EXCEPTION, MIX, uris},
    sipp::{UacSpec, Uas, run_uac, uas_calls},
    topology::{CARRIER4, PBX2_4, PBX4, Topology},
};

const CALLS: u32 = 500;
const RATE: u32 = 50;

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo builds network namespaces and attaches XDP: run it as root");
        return ExitCode::FAILURE;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        if let Err(e) = ctrlc::set_handler(move || {
            flag.store(true, Ordering::SeqCst);
            sipguard_tests::sipp::INTERRUPTED.store(true, Ordering::SeqCst);
        }) {
            eprintln!("cannot install the Ctrl-C handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Everything below is owned by `demo`'s stack: returning (or panicking) tears it down.
    let result = std::panic::catch_unwind(|| demo(&interrupted));
    match result {
        Ok(Outcome::AsExpected) => ExitCode::SUCCESS,
        Ok(Outcome::Unexpected) => {
            eprintln!("some calls did not end as the rules say (see the table)");
            ExitCode::FAILURE
        }
        Ok(Outcome::Interrupted) => {
            eprintln!("interrupted: everything was torn down");
            ExitCode::from(130)
        }
        Err(_) => {
            eprintln!("the demo failed (see above); everything was torn down");
            ExitCode::FAILURE
        }
    }
}

enum Outcome {
    AsExpected,
    Unexpected,
    Interrupted,
}

fn step(msg: &str) {
    println!("==> {msg}");
}

fn demo(interrupted: &AtomicBool) -> Outcome {
    let t0 = Instant::now();
    step(
        "building the topology: pbx (192.0.2.10) -> router -> carrier (203.0.113.10), IPv4 + IPv6",
    );
    let topo = Topology::new("demo");
    let mut sg = Instance::new("demo");
    let dir = sg.dir.clone();
    if interrupted.load(Ordering::SeqCst) {
        return Outcome::Interrupted;
    }

    let office = topo.second_pbx("demo");
    step(&format!(
        "starting `sipguard run --iface {} --iface {}` (native XDP) with the shipped default rules and their example customer uncommented (an office at 198.51.100.0/24 with international call barring by 403)",
        topo.guarded_if, office.guarded_if
    ));
    let cfg = sg.write(
        "demo.toml",
        &sipguard::config::file::with_example_customer(),
    );
    sg.start_with(
        &topo.router,
        &[&topo.guarded_if, &office.guarded_if],
        Some(&cfg),
        &[],
    );
    sg.ok(&ADD_EXCEPTION);
    println!("    blocks +232 +870 +881 +882 +883 +979, monitors every other international call;");
    println!("    runtime exception added: `sipguard rules add +23222 --action allow`");
    if interrupted.load(Ordering::SeqCst) {
        return Outcome::Interrupted;
    }

    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "demo");
    step(&format!(
        "the hacked PBX places {CALLS} calls at {RATE} calls/s (sipp UAC -> sipp UAS)"
    ));
    let mix = uris(CARRIER4);
    let run = run_uac(&UacSpec {
        ns: &topo.pbx,
        local_ip: PBX4,
        remote: format!("{CARRIER4}:5060"),
        uris: &mix,
        calls: CALLS,
        rate: RATE,
        dir: &dir,
        tag: "demo",
    });
    if interrupted.load(Ordering::SeqCst) {
        return Outcome::Interrupted;
    }
    let at_carrier = uas_calls(&uas.finish());

    // Per destination: attempted, completed, blocked, INVITE packets sent, reached the carrier.
    #[derive(Default)]
    struct Row {
        attempted: u32,
        completed: u32,
        blocked: u32,
        invites: u32,
        at_carrier: u32,
    }
    let mut rows: BTreeMap<usize, Row> = BTreeMap::new();
    for c in &run.calls {
        let idx = MIX
            .iter()
            .position(|m| m.uri.replace("HOST", CARRIER4) == c.uri)
            .unwrap_or(0);
        let r = rows.entry(idx).or_default();
        r.attempted += 1;
        r.invites += c.invites_sent;
        if c.completed {
            r.completed += 1;
        }
        if !c.answered {
            r.blocked += 1;
        }
        if at_carrier.contains_key(&c.call_id) {
            r.at_carrier += 1;
        }
    }
    println!();
    println!(
        "{:<34} {:<8} {:>9} {:>9} {:>7} {:>8} {:>10}",
        "DESTINATION (Request-URI)",
        "RULE",
        "ATTEMPTED",
        "COMPLETED",
        "BLOCKED",
        "INVITES",
        "AT CARRIER"
    );
    let mut wrong = 0;
    for (idx, r) in &rows {
        let d = &MIX[*idx];
        let uri = d.uri.replace("@HOST", "@carrier");
        println!(
            "{:<34} {:<8} {:>9} {:>9} {:>7} {:>8} {:>10}",
            uri,
            d.rule.unwrap_or("-"),
            r.attempted,
            r.completed,
            r.blocked,
            r.invites,
            r.at_carrier
        );
        let expected_ok = if d.blocked {
            r.blocked == r.attempted && r.at_carrier == 0
        } else {
            r.completed == r.attempted
        };
        if !expected_ok {
            wrong += 1;
        }
    }
    let total_blocked: u32 = rows.values().map(|r| r.blocked).sum();
    let total_completed: u32 = rows.values().map(|r| r.completed).sum();
    println!(
        "\n{} calls: {total_completed} completed, {total_blocked} blocked by sipguard, none of them reached the carrier{}",
        run.calls.len(),
        if wrong == 0 {
            ""
        } else {
            " -- UNEXPECTED RESULTS ABOVE"
        }
    );
    println!(
        "(INVITES counts retransmissions: a silently dropped INVITE is sent 3 times before the PBX gives up)"
    );

    println!();
    step("sipguard stats --top 8");
    println!("{}", sg.ok(&["stats", "--top", "8"]));
    if interrupted.load(Ordering::SeqCst) {
        return Outcome::Interrupted;
    }

    step("the office (customer `example-office`, policy `intl-barring`) calls too");
    let uas = Uas::start(&topo.carrier, CARRIER4, &dir, "office");
    let office_uris: Vec<String> = [
        "0312345678",
        "+442079460000",
        "+23276123456",
        "+81312345678",
    ]
    .iter()
    .flat_map(|n| std::iter::repeat_n(format!("sip:{n}@{CARRIER4}:5060"), 3))
    .collect();
    let office_run = run_uac(&UacSpec {
        ns: &office.pbx,
        local_ip: PBX2_4,
        remote: format!("{CARRIER4}:5060"),
        uris: &office_uris,
        calls: office_uris.len() as u32,
        rate: 10,
        dir: &dir,
        tag: "office",
    });
    let at_carrier_office = uas_calls(&uas.finish());
    println!();
    println!(
        "{:<16} {:<16} {:>6} {:>10} {:>14} {:>17} {:>11}",
        "CUSTOMER",
        "POLICY",
        "CALLS",
        "COMPLETED",
        "REFUSED (403)",
        "DROPPED SILENTLY",
        "AT CARRIER"
    );
    let summary = |name: &str,
                   policy: &str,
                   calls: &[sipguard_tests::sipp::Call],
                   carrier: &BTreeMap<String, (String, Vec<String>)>| {
        let completed = calls.iter().filter(|c| c.completed).count();
        let refused = calls.iter().filter(|c| c.refused == Some(403)).count();
        let silent = calls
            .iter()
            .filter(|c| !c.answered && c.refused.is_none())
            .count();
        // An INVITE at the carrier (a refused call's ACK goes there too, its INVITE never).
        let reached = calls
            .iter()
            .filter(|c| {
                carrier
                    .get(&c.call_id)
                    .is_some_and(|(_, m)| m.iter().any(|m| m == "INVITE"))
            })
            .count();
        println!(
            "{name:<16} {policy:<16} {:>6} {completed:>10} {refused:>14} {silent:>17} {reached:>11}",
            calls.len()
        );
        (completed, refused, silent)
    };
    summary("(no customer)", "global rules", &run.calls, &at_carrier);
    let (_, refused, _) = summary(
        "example-office",
        "intl-barring",
        &office_run.calls,
        &at_carrier_office,
    );
    let office_intl = office_run
        .calls
        .iter()
        .filter(|c| c.uri.contains('+'))
        .count();
    if refused != office_intl {
        wrong += 1;
    }
    println!(
        "(the office's international calls get 403 at once and are never retransmitted; its domestic calls complete)"
    );
    println!();
    step("sipguard stats --customers");
    println!("{}", sg.ok(&["stats", "--customers"]));
    if interrupted.load(Ordering::SeqCst) {
        return Outcome::Interrupted;
    }
    wrong += hacked_pbx_act(&mut sg, &topo, &office, &dir, &cfg);

    step(&format!(
        "tearing down (namespaces, veths, pins, processes); the demo took {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    drop(sg);
    drop(topo);
    if wrong == 0 {
        Outcome::AsExpected
    } else {
        Outcome::Unexpected
    }
}

/// Act three, the story of the seed: the PBX is a customer now (`acme`, international calls at
/// most 6 a minute, 3 at once), and it is hacked: a burst of international calls to
/// destinations on no list. The limit refuses them (403), the quarantine trips within seconds
/// in the kernel (603 from then on), the daemon announces it, and the office calls on.
/// Returns the number of unexpected results.
fn hacked_pbx_act(
    sg: &mut Instance,
    topo: &Topology,
    office: &sipguard_tests::topology::SecondPbx,
    dir: &std::path::Path,
    cfg: &std::path::Path,
) -> u32 {
    let limited = format!(
        "{}\n[[policy]]\nname = \"limited\"\n[[policy.rule]]\nprefix = \"+\"\naction = \"allow\"\n\
         limit = \"6/min\"\nburst = 3\nover_limit = \"reject\"\n\n\
         [[customer]]\nname = \"acme\"\nsources = [\"192.0.2.0/24\", \"2001:db8:1::/64\"]\npolicy = \"limited\"\n\n\
         [quarantine]\nover_limit = 10\nwindow = \"10min\"\nduration = \"1h\"\nreject_code = 603\nreject_reason = \"Decline\"\n",
        std::fs::read_to_string(cfg).unwrap_or_default()
    );
    step(
        "reload: the PBX becomes customer `acme` (policy `limited`: + allow, limit 6/min, burst 3, over it 403) with a [quarantine] (more than 10 over-limit calls in 10 min: 1 h, 603)",
    );
    let applied = sg.log_text().matches("config applied").count();
    sg.write("demo.toml", &limited);
    sg.signal(libc::SIGHUP);
    sg.wait_log("config applied", applied + 1);

    step(
        "acme's PBX is hacked: 40 calls at 10 calls/s to international numbers on no list; the office calls at the same time",
    );
    let uas = Uas::start(&topo.carrier, CARRIER4, dir, "hacked");
    let burst: Vec<String> = (0..40)
        .map(|i| format!("sip:+4420794{:05}@{CARRIER4}:5060", 60000 + i))
        .collect();
    let office_uris: Vec<String> = (0..6)
        .map(|i| format!("sip:03123456{i:02}@{CARRIER4}:5060"))
        .collect();
    let (hacked, office_run) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            run_uac(&UacSpec {
                ns: &topo.pbx,
                local_ip: PBX4,
                remote: format!("{CARRIER4}:5060"),
                uris: &burst,
                calls: burst.len() as u32,
                rate: 10,
                dir,
                tag: "hacked",
            })
        });
        let o = s.spawn(|| {
            run_uac(&UacSpec {
                ns: &office.pbx,
                local_ip: PBX2_4,
                remote: format!("{CARRIER4}:5060"),
                uris: &office_uris,
                calls: office_uris.len() as u32,
                rate: 2,
                dir,
                tag: "office2",
            })
        });
        (h.join().unwrap(), o.join().unwrap())
    });
    let _ = uas.finish();
    let mut calls: Vec<&sipguard_tests::sipp::Call> = hacked.calls.iter().collect();
    calls.sort_by(|a, b| {
        a.first_invite_at
            .partial_cmp(&b.first_invite_at)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let count =
        |f: &dyn Fn(&&sipguard_tests::sipp::Call) -> bool| calls.iter().filter(|c| f(c)).count();
    let completed = count(&|c| c.completed);
    let limited_403 = count(&|c| c.refused == Some(403));
    let quarantined_603 = count(&|c| c.refused == Some(603));
    let first_603 = calls.iter().position(|c| c.refused == Some(603));
    let start = calls.first().and_then(|c| c.first_invite_at).unwrap_or(0.0);
    let tripped_after = first_603
        .and_then(|i| calls[i].first_invite_at)
        .map(|t| t - start);
    println!();
    println!(
        "{:<20} {:>6} {:>10} {:>22} {:>24}",
        "CALLER", "CALLS", "COMPLETED", "REFUSED: LIMIT (403)", "REFUSED: QUARANTINE (603)"
    );
    println!(
        "{:<20} {:>6} {completed:>10} {limited_403:>22} {quarantined_603:>24}",
        "acme (hacked PBX)",
        calls.len()
    );
    let office_ok = office_run.calls.iter().filter(|c| c.completed).count();
    println!(
        "{:<20} {:>6} {office_ok:>10} {:>22} {:>24}",
        "example-office",
        office_run.calls.len(),
        0,
        0
    );
    if let Some(t) = tripped_after {
        println!(
            "(the quarantine tripped {t:.1} s into the burst, in the kernel: every later call got 603 at once)"
        );
    }
    println!();
    // The daemon announces the quarantine within half a second.
    std::thread::sleep(std::time::Duration::from_millis(700));
    step("sipguard events (the quarantine)");
    for l in sg
        .ok(&["events"])
        .lines()
        .filter(|l| l.contains("quarantine of"))
    {
        println!("{l}");
    }
    step("sipguard quarantine list");
    let list = sg.ok(&["quarantine", "list"]);
    println!("{list}");
    let mut wrong = 0;
    if completed != 3 || quarantined_603 == 0 || !list.contains("customer acme") {
        wrong += 1;
    }
    if office_ok != office_run.calls.len() {
        wrong += 1;
    }
    step("sipguard quarantine release acme (service back at once)");
    println!("{}", sg.ok(&["quarantine", "release", "acme"]));
    wrong
}
