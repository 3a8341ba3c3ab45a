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
