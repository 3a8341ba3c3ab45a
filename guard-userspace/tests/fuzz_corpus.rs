//! The seed corpora of the config and capture fuzz targets (`fuzz/corpus/`), run through the same
//! checks as the targets (`fuzz/checks/`), then a short mutation smoke of each: seeded random
//! mutations of the seeds (bit flips, byte inserts and deletes, cuts, splices of two seeds),
//! through the same checks. The CI fuzz smoke builds and runs the scanner targets under
//! libFuzzer; the host targets' libFuzzer build (the whole daemon under the sanitizer) takes too
//! long for CI and is left to `cargo xtask fuzz`, so their smoke is this one.

use std::{fs, path::Path};

#[path = "../../fuzz/checks/config.rs"]
mod config;

#[path = "../../fuzz/checks/capture.rs"]
mod capture;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{}: {} seeds", dir.display(), out.len());
    out
}

#[test]
fn the_config_corpus_passes_the_config_target_checks() {
    for (name, data) in corpus("config") {
        let r = std::panic::catch_unwind(|| config::check(&data));
        assert!(r.is_ok(), "{name}");
    }
}

#[test]
fn the_capture_corpus_passes_the_capture_target_checks() {
    for (name, data) in corpus("capture") {
        let r = std::panic::catch_unwind(|| capture::check(&data));
        assert!(r.is_ok(), "{name}");
    }
}

/// xorshift64*: deterministic, so a failing input is found again by the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of a seed, the kind libFuzzer makes.
fn mutate(rng: &mut Rng, seeds: &[(String, Vec<u8>)], max_len: usize) -> Vec<u8> {
    let mut d = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(d.len() + 1);
        match rng.below(6) {
            0 if !d.is_empty() => {
                let i = at.min(d.len() - 1);
                d[i] ^= 1 << rng.below(8);
            }
            1 => d.insert(at, rng.next() as u8),
            2 if at < d.len() => {
                d.remove(at);
            }
            3 => d.truncate(at),
            4 => {
                // Splice: the head of this input, the tail of another seed.
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            _ => {
                // Interesting bytes where parsers branch.
                let b = [0u8, 0xff, b'\n', b'"', b'[', b'=', b'#', 0x7f][rng.below(8)];
                if at < d.len() {
                    d[at] = b;
                } else {
                    d.push(b);
                }
            }
        }
    }
    d.truncate(max_len);
    d
}

/// Runs `check` over `runs` mutations of the target's seeds; a failing input is written to
/// `target/fuzz-smoke-TARGET-N` and named in the failure.
fn smoke(target: &str, runs: u32, max_len: usize, check: fn(&[u8])) {
    let seeds = corpus(target);
    let mut rng = Rng(0x5195_9a4d_0010_0002 ^ target.len() as u64);
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = None;
    for n in 0..runs {
        let data = mutate(&mut rng, &seeds, max_len);
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed = Some((n, data));
            break;
        }
    }
    std::panic::set_hook(quiet);
    if let Some((n, data)) = failed {
        let out = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("fuzz-smoke-{target}-{n}"));
        fs::write(&out, &data).unwrap();
        // Run it again with the hook back, for the panic message.
        check(&data);
        panic!("mutation {n} failed the {target} checks: {}", out.display());
    }
}

#[test]
fn config_mutation_smoke() {
    // -max_len as `cargo xtask fuzz` runs the target.
    smoke("config", 200_000, 4096, config::check);
}

#[test]
fn capture_mutation_smoke() {
    smoke("capture", 200_000, 16384, capture::check);
}
