//! `cargo xtask bench fleet [N ...] [--rounds R]`: the time from `sipguard fleet push` to the
//! last router's applied revision, for fleets of N routers (default 10, 50 and 100), each a
//! namespace with its own daemon against one real etcd (see `sipguard_tests::fleet`). Each
//! round pushes a new document (the shipped default rules plus one changing rule) and waits
//! until every router's state directory records the new revision (polled every 5 ms).
//! Prints the median, best and worst of R rounds (default 5). The goal: at most 2 s at 100.

use std::time::{Duration, Instant};

use sipguard_tests::fleet::Fleet;

fn main() {
    let mut sizes: Vec<usize> = Vec::new();
    let mut rounds = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            rounds = args
                .next()
                .and_then(|r| r.parse().ok())
                .expect("--rounds N");
        } else {
            sizes.push(
                a.parse()
                    .unwrap_or_else(|_| panic!("a router count, not {a}")),
            );
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 50, 100];
    }
    let base = sipguard::config::EMBEDDED;
    println!("fleet convergence: push -> every router applied (rounds: {rounds})");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12}",
        "routers", "median", "best", "worst", "start (all)"
    );
    for n in sizes {
        let t0 = Instant::now();
        let mut f = Fleet::new("b", false);
        f.add_routers(n);
        let started = t0.elapsed();
        let mut times: Vec<Duration> = Vec::new();
        for round in 0..rounds {
            let text = format!(
                "{base}\n[metrics]\nlisten = \"0.0.0.0:9960\"\n\n[[rule]]\nprefix = \"+99{round}\"\naction = \"block\"\n"
            );
            let t = Instant::now();
            let rev = f.push(&format!("round{round}.toml"), &text);
            f.converge(rev, Duration::from_secs(120));
            times.push(t.elapsed());
        }
        times.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{n:>8} {:>10} {:>10} {:>10} {:>10.1} s",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            started.as_secs_f64()
        );
        drop(f);
    }
}
