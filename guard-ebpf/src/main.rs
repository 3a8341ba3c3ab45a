//! sipguard's XDP program: drops SIP INVITEs whose Request-URI dials a blocked destination.
//!
//! Entry points only. The stages, each in its module: `layers` (Ethernet, VLAN, IPv4/IPv6, UDP
//! or TCP to a SIP port) hands a `Frame` to `sip` (is it an INVITE, which number), which hands the number
//! to `verdict` (rule lookup, counters, call accounting), which sends `events`; `maps` holds the
//! maps and typed access to their values.
//!
//! Anything that cannot be parsed passes and is counted. The program never loops unbounded: the
//! VLAN and IPv6 header walks are constant-bounded loops, and the keep-alive skip and the SIP
//! scanners run under `bpf_loop` with constant iteration budgets.
#![no_std]
#![no_main]

mod events;
mod layers;
mod limits;
mod maps;
mod reply;
mod sip;
mod verdict;

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use guard_common::Counter;

/// The filter. `frags`: multi-buffer aware (kernel 6.0+), so it attaches to jumbo-MTU interfaces
/// and test runs take frames larger than a page; headers are read from the linear part, and the
/// payload is copied with `bpf_xdp_load_bytes`, which spans fragments.
#[xdp(frags)]
pub fn sipguard(ctx: XdpContext) -> u32 {
    let Some(c) = maps::counters() else {
        return XDP_PASS;
    };
    c.bump(Counter::Frames);
    match layers::parse(&ctx) {
        Ok(frame) => {
            // Hand over through the scratch map, so that the transport stage is verified once.
            let Some(s) = maps::scratch() else {
                return XDP_PASS;
            };
            s.frame = frame;
            sip::l4(&ctx, c)
        }
        Err(skip) => {
            if let Some(counter) = skip.counter() {
                c.bump(counter);
            }
            XDP_PASS
        }
    }
}

/// The baseline for benchmarks: does nothing.
#[xdp(frags)]
pub fn sipguard_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: nothing in the program can panic (checked indexing only on masked indices).
    // If LLVM ever left a panic path in, the verifier would reject the loop below, so a panic
    // path is a load-time error, never a runtime one.
    loop {}
}
