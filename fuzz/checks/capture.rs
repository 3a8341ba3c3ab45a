//! The pcap/pcapng reader on arbitrary bytes (`sipguard::replay::capture::parse_frames`, the
//! in-memory form of `read_frames`): never panics; output is bounded by the input (at most one
//! frame per 12 input bytes, each at most the input plus a synthesized 14-byte Ethernet header,
//! numbered 1, 2, ...); every error names the file and then the problem. Run with `-max_len`
//! (the xtask passes 16 KiB) so inputs, and what is allocated for them, stay bounded.
//!
//! Shared by the cargo-fuzz target and guard-userspace's corpus test (`tests/fuzz_corpus.rs`), so
//! that both check the same invariants.

use sipguard::replay::capture::parse_frames;

const NAME: &str = "fuzz.pcap";

/// Panics when `data` breaks an invariant.
pub fn check(data: &[u8]) {
    match parse_frames(NAME, data) {
        Ok(frames) => {
            assert!(
                frames.len() <= data.len() / 12,
                "{} frames from {} bytes",
                frames.len(),
                data.len()
            );
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(f.number, i as u64 + 1);
                assert!(
                    f.data.len() <= data.len() + 14,
                    "frame {} is {} bytes",
                    f.number,
                    f.data.len()
                );
            }
        }
        Err(e) => {
            let shown = e.to_string();
            let problem = shown
                .strip_prefix(NAME)
                .and_then(|s| s.strip_prefix(": "))
                .unwrap_or_else(|| panic!("error does not start with the file name: {shown}"));
            assert!(
                problem.trim().len() > 3,
                "error names no problem: {shown:?}"
            );
        }
    }
}
