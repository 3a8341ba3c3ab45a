//! cargo-fuzz target: see `fuzz/checks/capture.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/capture.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
