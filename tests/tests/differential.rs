//! Kernel vs host, differential: generated and mutated frames through the loaded program
//! (BPF_PROG_TEST_RUN) and through the host model (`sipguard_tests::model`); the verdicts and
//! the counter deltas must agree on every frame. Run as root.
//!
//! `SIPGUARD_DIFF_FRAMES` sets the number of frames (default 100,000), `SIPGUARD_DIFF_SEED` the
//! seed (default below; hex with `0x` or decimal). A disagreement prints the seed, the frame
//! index, the frame in hex and both results, and writes the frame to target/diff-failures/.

use sipguard_tests::diff;

const DEFAULT_SEED: u64 = 0x5195_9a4d_0010_0001;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    Some(match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).expect("hex number"),
        None => v.parse().expect("number"),
    })
}

#[test]
fn kernel_and_host_model_agree() {
    let frames = env_u64("SIPGUARD_DIFF_FRAMES").unwrap_or(100_000);
    let seed = env_u64("SIPGUARD_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let report = diff::run(seed, frames);
    println!("{}", report.summary(seed));
    println!("frames per counter moved: {:?}", report.coverage);
    for s in &report.samples {
        println!("{s}");
    }
    assert_eq!(
        report.disagreements(),
        0,
        "kernel and model disagree (seed {seed:#x}):\n{}",
        report.samples.join("\n")
    );
}
