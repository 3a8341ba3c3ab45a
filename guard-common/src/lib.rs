//! Types shared by the sipguard XDP program and userspace, and the SIP Request-URI number parser
//! that both sides run.
//!
//! Everything here is `no_std`, allocation-free and panic-free: the same code is compiled into the
//! eBPF object (where a panic would be a verifier rejection) and into the host binary.
#![no_std]

pub mod counters;
pub mod headers;
pub mod limits;
pub mod maps;
pub mod number;
pub mod plain;
pub mod sip;
pub mod swar;

pub use headers::{HDR_MAX_STEPS, HDR_WINDOW, HeaderScanner, Headers, scan_headers};
pub use maps::*;
pub use number::{Dialled, Domain, IntlPrefix, IntlPrefixes, LookupKey, Number};
pub use sip::{
    ByteSource, MAX_STEPS, Parsed, Scanner, WINDOW, keepalive_len, parse, parse_payload,
};
