//! Layers 2 to 4: Ethernet with up to two VLAN tags, IPv4 (IHL honoured) or IPv6 (extension
//! headers walked), UDP or TCP to a configured SIP port. One function per header; the result is a
//! [`Frame`] (where the payload is, and what the SIP stage needs to find the addresses later) or
//! the [`Skip`] reason that decides which counter the frame goes to.
//!
//! This path runs for every frame, so it reads headers straight from the packet, calls no helper
//! unless a length field claims more than the linear part holds, and writes nothing.
//!
//! network-types' accessors are used where a reference to the header is sound: its IPv4, IPv6
//! and UDP headers are byte arrays (alignment 1). Its Ethernet and VLAN headers hold a `u16`
//! EtherType, so a reference to one at an odd packet offset would be unaligned; those two fields
//! are read with `read_unaligned` instead.

use core::{ffi::c_void, mem::size_of, ptr};

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use guard_common::{Counter, Endpoint, plain};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, udp::UdpHdr, vlan::VlanHdr};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_TCP: u8 = 6;
/// The TCP header without options.
const TCP_HDR_LEN: usize = 20;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (hop-by-hop, destination options, routing,
/// fragment, destination options, plus one spare).
const MAX_IPV6_EXT: usize = 6;

/// Why a frame passes without a look at its payload.
#[derive(Clone, Copy)]
pub enum Skip {
    Truncated,
    NotUdp,
    NonFirstFragment,
    Ipv6ExtLimit,
    NotSipPort,
    /// TCP to another port, or a TCP header that is cut short.
    TcpOther,
    /// A first fragment whose transport header is not all there (the port cannot be known).
    TinyFirstFragment,
}

impl Skip {
    /// The global counter this frame is counted in, if any.
    #[inline(always)]
    pub fn counter(self) -> Option<Counter> {
        match self {
            Skip::Truncated => Some(Counter::Truncated),
            Skip::NotUdp => Some(Counter::NotUdp),
            Skip::NonFirstFragment => Some(Counter::NonFirstFragments),
            Skip::Ipv6ExtLimit => Some(Counter::Ipv6ExtLimit),
            Skip::NotSipPort => None,
            Skip::TcpOther => Some(Counter::TcpUninspected),
            // Counted by `sip::tiny_fragment`, which also decides it.
            Skip::TinyFirstFragment => None,
        }
    }
}

/// `Frame::flags`: the payload is a TCP segment's.
pub const FRAME_TCP: u8 = 1;
/// `Frame::flags`: the packet is a first fragment (more fragments follow).
pub const FRAME_FIRST_FRAGMENT: u8 = 2;

/// A UDP datagram or TCP segment to a SIP port: where its headers and payload are. Handed from the layers to
/// the SIP stage (through the scratch map, see `maps::Scratch`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Frame {
    /// Offset of the IP header.
    pub l3_off: u16,
    /// Offset of the UDP or TCP header.
    pub l4_off: u16,
    /// Offset of the payload (after any keep-alives the SIP stage skipped).
    pub payload_off: u16,
    /// Payload bytes present: never more than the frame (or the IP packet) holds.
    pub payload_len: u16,
    /// Outer VLAN id (0: untagged).
    pub vlan: u16,
    /// 4 or 6.
    pub family: u8,
    /// An IP or UDP length claimed more than the frame holds.
    pub lying_len: bool,
    /// [`FRAME_TCP`], [`FRAME_FIRST_FRAGMENT`].
    pub flags: u8,
    /// Where the IP packet ends, clamped to the frame.
    pub l3_end: u32,
}

/// Layers 2 and 3 of the frame in `ctx`: a frame for the transport stage (`sip::l4`, which
/// parses the UDP or TCP header with [`transport`]) or the reason to pass it. Inlined into the
/// entry point, so verified once per header layout: what it does after the IP header is kept
/// to a few branch-free stores, and everything else runs in the transport stage, a BPF function
/// of its own that is verified once.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Frame, Skip> {
    let l2 = ethernet(ctx)?;
    let ip = match l2.proto {
        ETH_P_IPV4 => ipv4(ctx, l2.off)?,
        ETH_P_IPV6 => ipv6(ctx, l2.off)?,
        _ => return Err(Skip::NotUdp),
    };
    Ok(Frame {
        l3_off: l2.off as u16,
        l4_off: ip.l4_off as u16,
        payload_off: 0,
        payload_len: 0,
        vlan: l2.vlan,
        family: ip.family,
        lying_len: ip.lying_len,
        // Branch-free: bit 1 of the protocol number is set for TCP (6), clear for UDP (17).
        flags: ((ip.proto >> 1) & 1) | (ip.first_fragment << 1),
        l3_end: ip.end as u32,
    })
}

/// The largest transport header offset `transport` accepts (the linear part of a frame is at
/// most a page; the bound lets the verifier check packet accesses at offsets read from the
/// scratch map).
const MAX_L4_OFF: usize = 4096;

/// The transport header of `frame` (from [`parse`], handed over through the scratch map): the
/// destination port must be a SIP port; fills in where the payload is. UDP: the UDP length is never trusted beyond the IP packet. TCP: the
/// payload follows the header and its options.
#[inline(always)]
pub fn transport(ctx: &XdpContext, frame: &mut Frame) -> Result<(), Skip> {
    let first_fragment = frame.flags & FRAME_FIRST_FRAGMENT != 0;
    let tcp = frame.flags & FRAME_TCP != 0;
    let cut = if first_fragment {
        Skip::TinyFirstFragment
    } else if tcp {
        Skip::TcpOther
    } else {
        Skip::Truncated
    };
    let l4 = frame.l4_off as usize;
    let end = frame.l3_end as usize;
    if l4 > MAX_L4_OFF {
        return Err(Skip::Truncated);
    }
    let hdr = if tcp { TCP_HDR_LEN } else { UdpHdr::LEN };
    // The header must be inside the IP packet, not only the frame (Ethernet padding).
    if l4 + hdr > end {
        return Err(cut);
    }
    // The destination port is at the same place in both.
    let ports: *const [u8; 4] = ptr_at(ctx, l4).ok_or(cut)?;
    // SAFETY: bounds-checked by ptr_at.
    let dport = u16::from_be_bytes(unsafe { [(*ports)[2], (*ports)[3]] });
    if !crate::maps::is_sip_port(dport) {
        return Err(if tcp {
            Skip::TcpOther
        } else {
            Skip::NotSipPort
        });
    }
    let (off, claimed) = if tcp {
        let h: *const [u8; TCP_HDR_LEN] = ptr_at(ctx, l4).ok_or(cut)?;
        // SAFETY: bounds-checked by ptr_at.
        let hlen = (unsafe { (*h)[12] } >> 4) as usize * 4;
        if hlen < TCP_HDR_LEN || l4 + hlen > end {
            return Err(Skip::TcpOther);
        }
        (l4 + hlen, usize::MAX)
    } else {
        let h: *const [u8; 8] = ptr_at(ctx, l4).ok_or(cut)?;
        // SAFETY: bounds-checked by ptr_at.
        let udp_len = u16::from_be_bytes(unsafe { [(*h)[4], (*h)[5]] }) as usize;
        if udp_len < UdpHdr::LEN {
            return Err(Skip::Truncated);
        }
        (l4 + UdpHdr::LEN, udp_len - UdpHdr::LEN)
    };
    let available = end - off;
    frame.payload_off = off as u16;
    frame.payload_len = if claimed < available {
        claimed
    } else {
        available
    } as u16;
    if claimed != usize::MAX && claimed > available {
        frame.lying_len = true;
    }
    Ok(())
}

/// What layer 2 found.
struct L2 {
    proto: u16,
    /// Offset of the layer 3 header.
    off: usize,
    vlan: u16,
}

/// What layer 3 found.
struct L3 {
    /// Offset of the UDP header.
    l4_off: usize,
    /// Where the IP packet ends, clamped to the frame.
    end: usize,
    lying_len: bool,
    family: u8,
    /// IPPROTO_UDP or IPPROTO_TCP.
    proto: u8,
    /// 1 for a first fragment (offset 0, more fragments follow), else 0.
    first_fragment: u8,
}

/// A bounds-checked pointer into the frame's linear part.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Where the IP packet that starts at `off` and claims `claimed` bytes ends, and whether the
/// claim is more than the frame holds. The helper that counts the frame's fragments is called
/// only when the linear part does not already hold the claim.
#[inline(always)]
fn ip_end(ctx: &XdpContext, off: usize, claimed: usize) -> (usize, bool) {
    let want = off + claimed;
    if want <= ctx.data_end() - ctx.data() {
        return (want, false);
    }
    // SAFETY: plain helper call on the program's own context.
    let frame = (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize;
    if want > frame {
        (frame, true)
    } else {
        (want, false)
    }
}

/// Ethernet II, then up to two VLAN tags (802.1Q or 802.1ad, in any order).
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Result<L2, Skip> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at; a u16 field of a frame is not necessarily aligned.
    let mut proto = u16::from_be(unsafe { ptr::read_unaligned(ptr::addr_of!((*eth).ether_type)) });
    let mut off = EthHdr::LEN;
    let mut vlan = 0;
    let mut tags = 0;
    while tags < 2 && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        let tag: *const VlanHdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
        // SAFETY: bounds-checked by ptr_at; the u16 field is read unaligned.
        let (tci, ether_type) = unsafe {
            (
                (*tag).tci,
                ptr::read_unaligned(ptr::addr_of!((*tag).ether_type)),
            )
        };
        if tags == 0 {
            vlan = u16::from_be_bytes(tci) & 0x0fff;
        }
        proto = u16::from_be(ether_type);
        off += VlanHdr::LEN;
        tags += 1;
    }
    Ok(L2 { proto, off, vlan })
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, off: usize) -> Result<L3, Skip> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Skip::Truncated);
    }
    // Fragment offset in 8-byte units; non-zero means not the first fragment (RFC 791).
    if ip.frag_offset() != 0 {
        return Err(Skip::NonFirstFragment);
    }
    if ip.proto != IPPROTO_UDP && ip.proto != IPPROTO_TCP {
        return Err(Skip::NotUdp);
    }
    let tot_len = ip.tot_len() as usize;
    if tot_len < ihl {
        return Err(Skip::Truncated);
    }
    let (end, lying_len) = ip_end(ctx, off, tot_len);
    if off + ihl > end {
        return Err(Skip::Truncated);
    }
    Ok(L3 {
        l4_off: off + ihl,
        end,
        lying_len,
        family: 4,
        proto: ip.proto,
        // MF (RFC 791): the flags are the top three bits of the 16-bit field.
        first_fragment: (ip.frags[0] >> 5) & 1,
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, off: usize) -> Result<L3, Skip> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Skip::Truncated)?;
    // SAFETY: bounds-checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.version() != 6 {
        return Err(Skip::Truncated);
    }
    let mut next = ip.next_hdr;
    let mut cur = off + Ipv6Hdr::LEN;
    let payload_len = ip.payload_len() as usize;
    // A zero payload length means a jumbogram (RFC 2675): the frame decides.
    let (end, lying_len) = if payload_len == 0 {
        (ip_end(ctx, cur, usize::MAX / 2).0, false)
    } else {
        ip_end(ctx, cur, payload_len)
    };
    let mut first_fragment = 0;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        match next {
            IPPROTO_UDP | IPPROTO_TCP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr: *const [u8; 2] = ptr_at(ctx, cur).ok_or(Skip::Truncated)?;
                // SAFETY: bounds-checked by ptr_at.
                let [nh, len] = unsafe { *hdr };
                next = nh;
                cur += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let hdr: *const [u8; 8] = ptr_at(ctx, cur).ok_or(Skip::Truncated)?;
                // SAFETY: bounds-checked by ptr_at.
                let h = unsafe { *hdr };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Err(Skip::NonFirstFragment);
                }
                // The M flag (RFC 8200 §4.5).
                first_fragment = h[3] & 1;
                next = h[0];
                cur += 8;
            }
            _ => return Err(Skip::NotUdp),
        }
        i += 1;
    }
    if next != IPPROTO_UDP && next != IPPROTO_TCP {
        return Err(Skip::Ipv6ExtLimit);
    }
    Ok(L3 {
        l4_off: cur,
        end,
        lying_len,
        family: 6,
        proto: next,
        first_fragment,
    })
}

/// The frame's source and destination (addresses and ports), read from the packet into `src`
/// and `dst`. Only INVITEs that matched a rule need them (sources, events).
#[inline(always)]
pub fn endpoints(ctx: &XdpContext, frame: &Frame, src: &mut Endpoint, dst: &mut Endpoint) {
    plain::zero(src);
    plain::zero(dst);
    src.family = frame.family;
    dst.family = frame.family;
    let l3 = frame.l3_off as u32;
    // IPv4: source at 12, destination at 16; IPv6: at 8 and 24.
    let (src_off, dst_off, len) = if frame.family == 4 {
        (l3 + 12, l3 + 16, 4)
    } else {
        (l3 + 8, l3 + 24, 16)
    };
    // SAFETY: each helper copies at most 16 bytes into a 16-byte address; a failed copy leaves
    // the zeroed address.
    unsafe {
        load(ctx, src_off, src.addr.as_mut_ptr() as *mut c_void, len);
        load(ctx, dst_off, dst.addr.as_mut_ptr() as *mut c_void, len);
    }
    let mut ports = [0u8; 4];
    // SAFETY: copies 4 bytes into a 4-byte array.
    unsafe {
        load(
            ctx,
            frame.l4_off as u32,
            ports.as_mut_ptr() as *mut c_void,
            4,
        )
    };
    src.port = u16::from_be_bytes([ports[0], ports[1]]);
    dst.port = u16::from_be_bytes([ports[2], ports[3]]);
}

/// `bpf_xdp_load_bytes`: copies `len` bytes at `off` of the frame (fragments included) to `to`.
/// Returns whether it copied.
///
/// # Safety
/// `to` must be valid for `len` bytes.
#[inline(always)]
pub unsafe fn load(ctx: &XdpContext, off: u32, to: *mut c_void, len: u32) -> bool {
    // SAFETY: the caller guarantees the destination.
    unsafe { aya_ebpf::helpers::generated::bpf_xdp_load_bytes(ctx.ctx, off, to, len) == 0 }
}
