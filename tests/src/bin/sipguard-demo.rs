//! `cargo xtask demo`: sipguard doing its main job, in one command.
//!
//! Builds a PBX / router / carrier topology in network namespaces, starts `sipguard run` on the
//! router with the shipped default rules, has a "hacked PBX" (sipp) place a mix of domestic,
//! international and toll-fraud calls at 50 calls/s for 10 s through it to a carrier (sipp),
//! prints what happened per destination and sipguard's own stats, and tears everything down,
//! also on Ctrl-C or failure (every piece is removed by its Drop).

use std::{
    collections::BTreeMap,
    path::Path,
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
    topology::{CARRIER4, PBX4, Topology},
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

    let etc = Path::new("/etc/sipguard/sipguard.toml");
    step(&format!(
        "starting `sipguard run --iface {}` (native XDP) with the shipped default rules",
        topo.guarded_if
    ));
    if etc.exists() {
        // Keep the demo about the shipped defaults even on a machine with its own config.
        let cfg = sg.write("defaults.toml", &sg.ok(&["default-config"]));
        sg.start_with(&topo.router, &[&topo.guarded_if], Some(&cfg), &[]);
    } else {
        sg.start_with(&topo.router, &[&topo.guarded_if], None, &[]);
    }
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
