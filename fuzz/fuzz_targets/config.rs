//! cargo-fuzz target: see `fuzz/checks/config.rs` for what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks/config.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check(data));
