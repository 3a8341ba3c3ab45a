//! Rejected INVITEs: the program drops them and hands the daemon what it needs to answer them
//! with a SIP final response (RFC 3261 §8.2.6): the addresses, the MAC addresses and VLAN of the
//! frame, and the request's header window. Every rejected packet gets a record, retransmissions
//! included, so that each gets its response.

use core::mem::{offset_of, size_of};

use aya_ebpf::programs::XdpContext;
use guard_common::{Endpoint, HDR_WINDOW, REPLY_RECORD_LEN};

use crate::{
    layers,
    maps::{self, SG_REPLIES, Scratch},
    sip,
};

/// Sends the reply record of the frame in `ctx`, rejected by rule `id` (or by the quarantine:
/// `cause`). Returns 1 when the record
/// was queued, 0 when it could not be (ring full, or the frame would not give its bytes). A BPF
/// function of its own, returning a scalar.
#[inline(never)]
pub fn request(ctx: &XdpContext, id: u32, cause: u32) -> u64 {
    // A quarantine answers with its own response, not the rule's.
    let id = if cause == guard_common::limits::CAUSE_QUARANTINE as u32 {
        guard_common::QUARANTINE_RULE_ID
    } else {
        id
    };
    let Some(s) = maps::scratch() else {
        return 0;
    };
    if !sip::copy_payload(ctx, s, HDR_WINDOW) {
        return 0;
    }
    let frame = s.frame;
    layers::endpoints(ctx, &frame, &mut s.src, &mut s.dst);
    s.reply.rule_id = id;
    s.reply.payload_len = s.copied;
    s.reply.vlan = frame.vlan;
    s.reply.flags = frame.flags;
    s.reply.family = frame.family;
    // SAFETY: copies 12 bytes into a 12-byte array.
    if !unsafe { layers::load(ctx, 0, s.reply.macs.as_mut_ptr().cast(), 12) } {
        return 0;
    }
    // The record is the scratch bytes from `src` on (see `maps::Scratch`).
    let base = (s as *const Scratch).cast::<u8>();
    // SAFETY: `src` to the end of `payload` is REPLY_RECORD_LEN bytes of one map value (checked
    // at compile time in `maps`), valid for this program run.
    let record = unsafe {
        core::slice::from_raw_parts(base.add(offset_of!(Scratch, src)), REPLY_RECORD_LEN)
    };
    const _: () = assert!(size_of::<Endpoint>() * 2 < REPLY_RECORD_LEN);
    match SG_REPLIES.output::<[u8]>(record, 0) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}
