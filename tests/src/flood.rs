//! A SIP INVITE flood for the veth benchmark: one prebuilt Ethernet/IPv4/UDP frame, sent as fast
//! as the kernel takes it through an `AF_PACKET` socket bound to an interface in a namespace
//! (`PACKET_QDISC_BYPASS`, `sendmmsg` in batches), on one pinned CPU. Optionally every frame
//! carries a new Call-ID: a 16-digit hex counter written into the Call-ID value before it is
//! sent (the UDP checksum is 0, so nothing else changes).

use std::{
    ffi::CString,
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
};

use crate::netns::Netns;

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;
/// Length of the Call-ID counter (hex digits) that [`Flood`] rewrites.
pub const CALL_ID_DIGITS: usize = 16;

/// Addresses of the flood frame.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

/// A frame to flood, and where its Call-ID counter is.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the [`CALL_ID_DIGITS`] hex digits of the Call-ID value in `bytes`.
    pub call_id_at: usize,
}

/// A realistic INVITE from a PBX to `+23276123456` (Sierra Leone) with an SDP offer, in an
/// Ethernet/IPv4/UDP frame to port 5060 (592 bytes; UDP checksum 0).
pub fn invite_frame(ep: &Endpoints) -> Frame {
    let (src, dst) = (ep.src_ip, ep.dst_ip);
    let sdp = format!(
        "v=0\r\n\
         o=pbx 2890844526 2890844526 IN IP4 {src}\r\n\
         s=call\r\n\
         c=IN IP4 {src}\r\n\
         t=0 0\r\n\
         m=audio 49170 RTP/AVP 0 8\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n"
    );
    let zeros = "0".repeat(CALL_ID_DIGITS);
    let sip = format!(
        "INVITE sip:+23276123456@{dst} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bK-5d8a1c3e7\r\n\
         Max-Forwards: 70\r\n\
         From: \"PBX 100\" <sip:100@{src}>;tag=4f2a9c1d\r\n\
         To: <sip:+23276123456@{dst}>\r\n\
         Call-ID: {zeros}@{src}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:100@{src}:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let call_id_at = sip
        .find("Call-ID: ")
        .expect("the INVITE has a Call-ID header")
        + "Call-ID: ".len();
    let bytes = udp4_frame(ep, 5060, 5060, sip.as_bytes());
    Frame {
        call_id_at: ETH_IP_UDP + call_id_at,
        bytes,
    }
}

/// Ethernet (14) + IPv4 without options (20) + UDP (8).
const ETH_IP_UDP: usize = 42;

/// An Ethernet/IPv4/UDP frame with a correct IP header checksum and UDP checksum 0.
pub fn udp4_frame(ep: &Endpoints, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let ip_len = u16::try_from(28 + payload.len()).expect("payload fits an IPv4 datagram");
    let mut f = Vec::with_capacity(ETH_IP_UDP + payload.len());
    f.extend_from_slice(&ep.dst_mac);
    f.extend_from_slice(&ep.src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&ep.src_ip.octets());
    ip[16..20].copy_from_slice(&ep.dst_ip.octets());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(ip_len - 20).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The one's complement sum of a header (RFC 1071); a header with its checksum in place sums to 0.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes `n` as fixed-width lowercase hex into `out`.
fn write_hex(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// What a flood has done so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodCounts {
    /// Frames the kernel accepted (the veth took them).
    pub sent: u64,
    /// `sendmmsg` calls that stopped on ENOBUFS/EAGAIN (the device queue was full or stopped):
    /// one frame lost each.
    pub rejected: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    sent: AtomicU64,
    rejected: AtomicU64,
}

/// A running flood; stopped (and its thread joined) by [`Flood::stop`] or on drop.
pub struct Flood {
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
}

impl Flood {
    /// Opens the socket on `iface` inside `ns` and starts sending `frame` from a thread pinned to
    /// `cpu`. With `new_call_ids`, every frame gets the next Call-ID counter value.
    pub fn start(
        ns: &Netns,
        iface: &str,
        frame: &Frame,
        new_call_ids: bool,
        cpu: usize,
    ) -> io::Result<Self> {
        let fd = ns.run(|| packet_socket(iface))?;
        let shared = Arc::new(Shared::default());
        let bufs = vec![frame.bytes.clone(); BATCH];
        let call_id_at = new_call_ids.then_some(frame.call_id_at);
        if let Some(at) = call_id_at
            && frame.bytes.len() < at + CALL_ID_DIGITS
        {
            return Err(io::Error::other(
                "the Call-ID counter lies outside the frame",
            ));
        }
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("sg-flood".into())
            .spawn(move || {
                pin_current_thread(cpu)?;
                send_loop(&fd, bufs, call_id_at, &s)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The counts so far.
    pub fn counts(&self) -> FloodCounts {
        FloodCounts {
            sent: self.shared.sent.load(Ordering::Relaxed),
            rejected: self.shared.rejected.load(Ordering::Relaxed),
        }
    }

    /// Stops the sender; fails if it had stopped on an error.
    pub fn stop(mut self) -> io::Result<FloodCounts> {
        self.join()?;
        Ok(self.counts())
    }

    fn join(&mut self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the flood thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("flood: {e}");
        }
    }
}

/// An `AF_PACKET` raw socket bound to `iface` of the calling thread's namespace, with protocol 0
/// (it never receives) and the qdisc bypassed.
pub fn packet_socket(iface: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!(
            "no interface {iface}: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` outlives the call and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    set_affinity(0, cpu)
}

/// Pins task `pid` (0: the calling thread) to `cpu`.
pub fn set_affinity(pid: libc::pid_t, cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET only write inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_loop(
    fd: &OwnedFd,
    mut bufs: Vec<Vec<u8>>,
    call_id_at: Option<usize>,
    shared: &Shared,
) -> io::Result<()> {
    // The iovecs point into `bufs`, which is never resized; only bytes inside are rewritten.
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all zeroes is a valid value.
            let mut m: libc::mmsghdr = unsafe { mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut next_id = 0u64;
    let mut other_errors = 0u32;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(at) = call_id_at {
            for iov in &iovs {
                // SAFETY: each iovec covers a whole buffer of `bufs`, which the check in
                // `Flood::start` makes long enough; nothing else touches it meanwhile.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), iov.iov_len)
                };
                write_hex(&mut buf[at..at + CALL_ID_DIGITS], next_id);
                next_id += 1;
            }
        }
        // SAFETY: `msgs` holds BATCH valid headers whose iovecs point into live buffers.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n >= 0 {
            shared.sent.fetch_add(n as u64, Ordering::Relaxed);
            if (n as usize) < BATCH {
                // The frame after the last one sent failed (the queue filled up).
                shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
            other_errors = 0;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN) => {
                shared.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Some(libc::EINTR) => {}
            _ => {
                // Tolerate a short hiccup (e.g. the link bouncing while XDP is attached), not
                // a persistent failure.
                other_errors += 1;
                if other_errors > 1000 {
                    return Err(e);
                }
                thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
    // `iovs` must outlive every sendmmsg call above.
    drop(msgs);
    drop(iovs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(198, 51, 100, 1),
            dst_ip: Ipv4Addr::new(198, 51, 100, 2),
        }
    }

    #[test]
    fn invite_frame_is_592_bytes_with_valid_lengths_and_checksum() {
        let f = invite_frame(&endpoints());
        assert_eq!(f.bytes.len(), 592);
        assert_eq!(ipv4_checksum(&f.bytes[14..34]), 0, "IP header checksum");
        let ip_len = u16::from_be_bytes([f.bytes[16], f.bytes[17]]) as usize;
        assert_eq!(ip_len, f.bytes.len() - 14);
        let udp_len = u16::from_be_bytes([f.bytes[38], f.bytes[39]]) as usize;
        assert_eq!(udp_len, f.bytes.len() - 34);
        let payload = String::from_utf8_lossy(&f.bytes[ETH_IP_UDP..]).into_owned();
        assert!(payload.starts_with("INVITE sip:+23276123456@198.51.100.2 SIP/2.0\r\n"));
        let (head, body) = payload.split_once("\r\n\r\n").expect("headers end");
        assert!(head.ends_with(&format!("\r\nContent-Length: {}", body.len())));
        for h in [
            "Via:",
            "Max-Forwards:",
            "From:",
            "To:",
            "Call-ID:",
            "CSeq:",
            "Contact:",
            "Content-Type:",
        ] {
            assert!(head.contains(&format!("\r\n{h} ")), "{h} header");
        }
    }

    #[test]
    fn call_id_counter_is_fixed_width_hex_inside_the_call_id() {
        let mut f = invite_frame(&endpoints());
        let at = f.call_id_at;
        write_hex(&mut f.bytes[at..at + CALL_ID_DIGITS], 0x1234_abcd);
        let text = String::from_utf8_lossy(&f.bytes[ETH_IP_UDP..]).into_owned();
        assert!(text.contains("\r\nCall-ID: 000000001234abcd@198.51.100.1\r\n"));
        assert_eq!(f.bytes.len(), 592);
    }
}
