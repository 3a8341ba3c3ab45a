//! SIP final responses to rejected INVITEs (RFC 3261 §8.2.6), and the frame that carries one
//! back to the caller.
//!
//! The kernel drops a rejected INVITE and queues a reply record ([`ReplyRecord`]: the frame's
//! addresses, MAC addresses and VLAN, and the request's first bytes). The daemon turns it into
//! a response: the status line, every `Via` in order, `From`, `To` with a tag added, `Call-ID`,
//! `CSeq` and `Content-Length: 0`. The To tag is a hash of the dialog's identifiers, so a
//! retransmitted INVITE gets the same response. The frame goes back out of the interface it came
//! in on, to the MAC, address and port it came from (symmetric, as RFC 3581 does), from the
//! INVITE's destination address and port, so that the caller matches it to its transaction.

use std::{
    fmt,
    hash::{Hash as _, Hasher as _},
    net::IpAddr,
};

use bytes::{BufMut as _, Bytes, BytesMut};
use guard_common::{Endpoint, REPLY_RECORD_LEN, ReplyHead};
use thiserror::Error;

/// A response status: code 400..=699 and a reason phrase of printable ASCII.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub code: u16,
    pub reason: String,
}

impl Status {
    /// `403 Forbidden`: the default for `reject` rules.
    pub fn forbidden() -> Self {
        Self {
            code: 403,
            reason: "Forbidden".into(),
        }
    }

    /// A status with its code and reason checked (what a config may give).
    pub fn new(code: i64, reason: &str) -> Result<Self, StatusError> {
        let code = match u16::try_from(code) {
            Ok(c @ 400..=699) => c,
            _ => return Err(StatusError::Code(code)),
        };
        if reason.is_empty() || reason.len() > 100 {
            return Err(StatusError::ReasonLength(reason.len()));
        }
        if let Some(c) = reason.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(StatusError::ReasonChar(c));
        }
        Ok(Self {
            code,
            reason: reason.to_string(),
        })
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::forbidden()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("reject code {0} is outside 400..699 (a final error response)")]
    Code(i64),
    #[error("reject reason has {0} characters; give 1 to 100")]
    ReasonLength(usize),
    #[error(
        "reject reason contains {0:?}: only printable ASCII (no CR, LF or other control characters)"
    )]
    ReasonChar(char),
}

/// A reply record from the kernel's ring buffer, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyRecord {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub head: ReplyHead,
    /// The request's first bytes (`head.payload_len` of them).
    pub payload: Vec<u8>,
}

impl ReplyRecord {
    /// Decodes a ring-buffer item (`None` if it is not a whole record).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < REPLY_RECORD_LEN {
            return None;
        }
        let ep = size_of::<Endpoint>();
        let head_at = 2 * ep;
        let payload_at = head_at + size_of::<ReplyHead>();
        // SAFETY: the length is checked; both types are plain data, read unaligned.
        let (src, dst, head): (Endpoint, Endpoint, ReplyHead) = unsafe {
            (
                std::ptr::read_unaligned(bytes.as_ptr().cast()),
                std::ptr::read_unaligned(bytes[ep..].as_ptr().cast()),
                std::ptr::read_unaligned(bytes[head_at..].as_ptr().cast()),
            )
        };
        let len = (head.payload_len as usize).min(bytes.len() - payload_at);
        Some(Self {
            src,
            dst,
            head,
            payload: bytes[payload_at..payload_at + len].to_vec(),
        })
    }

    /// Whether the INVITE came over TCP (no response is sent: a segment of the stream cannot be
    /// answered without its sequence numbers).
    pub fn tcp(&self) -> bool {
        self.head.flags & 1 != 0
    }
}

/// Why no response could be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("not an INVITE request line")]
    NotInvite,
    #[error("no {0} header in the inspected bytes (cut by the window, or missing)")]
    Missing(&'static str),
    #[error("building the frame: {0}")]
    Frame(String),
}

/// The header lines a response copies, as received (folded lines joined).
#[derive(Debug, Default)]
struct Copied<'a> {
    via: Vec<&'a [u8]>,
    from: Option<&'a [u8]>,
    to: Option<&'a [u8]>,
    call_id: Option<&'a [u8]>,
    cseq: Option<&'a [u8]>,
}

/// Header name (before the colon, trimmed) and value (after it, trimmed) of one line.
fn split_header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((line[..colon].trim_ascii(), line[colon + 1..].trim_ascii()))
}

/// The request's header lines up to the blank line (or the end of what was copied). A line
/// that starts with SP or HTAB continues the previous one (RFC 3261 §7.3.1): such a header is
/// left out rather than unfolded; when the response needs it, it is then missing, and the
/// INVITE is dropped without a response, as `block` does.
fn header_lines(payload: &[u8]) -> Result<Vec<&[u8]>, ReplyError> {
    let start = payload
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(payload.len());
    let mut lines = payload[start..].split(|&b| b == b'\n');
    let request = lines.next().ok_or(ReplyError::NotInvite)?;
    if !request.starts_with(b"INVITE ") {
        return Err(ReplyError::NotInvite);
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let mut continued = false;
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if !continued {
                out.pop();
            }
            continued = true;
            continue;
        }
        continued = false;
        out.push(line);
    }
    Ok(out)
}

fn copied(payload: &[u8]) -> Result<Copied<'_>, ReplyError> {
    let lines = header_lines(payload)?;
    let mut c = Copied::default();
    for line in lines {
        let Some((name, _)) = split_header(line) else {
            continue;
        };
        let is = |long: &str, short: &str| {
            name.eq_ignore_ascii_case(long.as_bytes())
                || (!short.is_empty() && name.eq_ignore_ascii_case(short.as_bytes()))
        };
        if is("Via", "v") {
            c.via.push(line);
        } else if is("From", "f") {
            c.from.get_or_insert(line);
        } else if is("To", "t") {
            c.to.get_or_insert(line);
        } else if is("Call-ID", "i") {
            c.call_id.get_or_insert(line);
        } else if is("CSeq", "") {
            c.cseq.get_or_insert(line);
        }
    }
    Ok(c)
}

/// Whether a To or From value has a `tag` parameter (after the URI: past any `>`).
fn has_tag(value: &[u8]) -> bool {
    let params = match value.iter().rposition(|&b| b == b'>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(|&b| b == b';').skip(1).any(|p| {
        let name = p
            .split(|&b| b == b'=')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        name.eq_ignore_ascii_case(b"tag")
    })
}

/// The To tag of the response: a hash of Call-ID, From and CSeq, so that every retransmission
/// of the INVITE gets the same one.
pub fn to_tag(call_id: &[u8], from: &[u8], cseq: &[u8]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    from.hash(&mut h);
    cseq.hash(&mut h);
    format!("sg{:016x}", h.finish())
}

/// The top Via with RFC 3581's `rport` filled in: an empty `rport` parameter gets the port the
/// request came from, and `received` its address.
fn top_via(via: &[u8], source: Option<std::net::SocketAddr>) -> Vec<u8> {
    let Some(src) = source else {
        return via.to_vec();
    };
    let mut out = Vec::with_capacity(via.len() + 40);
    let mut filled = false;
    for (i, param) in via.split(|&b| b == b';').enumerate() {
        if i > 0 {
            out.push(b';');
        }
        if i > 0 && !filled && param.trim_ascii().eq_ignore_ascii_case(b"rport") {
            out.extend_from_slice(format!("rport={};received={}", src.port(), src.ip()).as_bytes());
            filled = true;
        } else {
            out.extend_from_slice(param);
        }
    }
    out
}

/// The response's SIP message: status line, the copied headers (a tag added to To when it has
/// none; `rport` filled in the top Via for a request from `source`), `Content-Length: 0`.
pub fn response(
    payload: &[u8],
    status: &Status,
    source: Option<std::net::SocketAddr>,
) -> Result<Bytes, ReplyError> {
    let c = copied(payload)?;
    if c.via.is_empty() {
        return Err(ReplyError::Missing("Via"));
    }
    let from = c.from.ok_or(ReplyError::Missing("From"))?;
    let to = c.to.ok_or(ReplyError::Missing("To"))?;
    let call_id = c.call_id.ok_or(ReplyError::Missing("Call-ID"))?;
    let cseq = c.cseq.ok_or(ReplyError::Missing("CSeq"))?;
    let mut out = BytesMut::with_capacity(payload.len() + 64);
    out.put_slice(format!("SIP/2.0 {status}\r\n").as_bytes());
    for (i, v) in c.via.iter().enumerate() {
        if i == 0 {
            out.put_slice(&top_via(v, source));
        } else {
            out.put_slice(v);
        }
        out.put_slice(b"\r\n");
    }
    out.put_slice(from);
    out.put_slice(b"\r\n");
    out.put_slice(to);
    let (_, to_value) = split_header(to).unwrap_or_default();
    if !has_tag(to_value) {
        let (_, call) = split_header(call_id).unwrap_or_default();
        let (_, from_value) = split_header(from).unwrap_or_default();
        let (_, cseq_value) = split_header(cseq).unwrap_or_default();
        out.put_slice(format!(";tag={}", to_tag(call, from_value, cseq_value)).as_bytes());
    }
    out.put_slice(b"\r\n");
    out.put_slice(call_id);
    out.put_slice(b"\r\n");
    out.put_slice(cseq);
    out.put_slice(b"\r\nContent-Length: 0\r\n\r\n");
    Ok(out.freeze())
}

/// The Ethernet frame that carries `sip` back to the sender of `r`: MACs, addresses and ports
/// swapped, the same outer VLAN (802.1Q), UDP with its checksum.
pub fn frame(r: &ReplyRecord, sip: &[u8]) -> Result<Vec<u8>, ReplyError> {
    use etherparse::{PacketBuilder, VlanId};
    let m = r.head.macs;
    let (wire_dst, wire_src) = (
        <[u8; 6]>::try_from(&m[..6]).unwrap_or_default(),
        <[u8; 6]>::try_from(&m[6..]).unwrap_or_default(),
    );
    let err = |e: &dyn fmt::Display| ReplyError::Frame(e.to_string());
    let eth = PacketBuilder::ethernet2(wire_dst, wire_src);
    let (from, to) = (r.dst, r.src);
    let mut out = Vec::with_capacity(sip.len() + 80);
    macro_rules! finish {
        ($l2:expr) => {
            match (from.ip(), to.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => $l2
                    .ipv4(s.octets(), d.octets(), 64)
                    .udp(from.port, to.port)
                    .write(&mut out, sip)
                    .map_err(|e| err(&e))?,
                (IpAddr::V6(s), IpAddr::V6(d)) => $l2
                    .ipv6(s.octets(), d.octets(), 64)
                    .udp(from.port, to.port)
                    .write(&mut out, sip)
                    .map_err(|e| err(&e))?,
                _ => return Err(ReplyError::Frame("mixed address families".into())),
            }
        };
    }
    if r.head.vlan != 0 {
        let id = VlanId::try_new(r.head.vlan).map_err(|e| err(&e))?;
        finish!(eth.single_vlan(id));
    } else {
        finish!(eth);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+23276123456@gw.example.net SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-1;rport\r\n\
v: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK-0\r\n\
Max-Forwards: 70\r\n\
f: \"PBX\" <sip:100@198.51.100.7>;tag=abc\r\n\
To: <sip:+23276123456@gw.example.net>\r\n\
i: call-1@198.51.100.7\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:100@198.51.100.7>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 3\r\n\
\r\n\
v=0";

    #[test]
    fn a_response_copies_vias_from_to_call_id_cseq_and_tags_to() {
        let r = response(
            INVITE,
            &Status::forbidden(),
            Some("198.51.100.7:5062".parse().unwrap()),
        )
        .unwrap();
        let text = std::str::from_utf8(&r).unwrap();
        let tag = to_tag(
            b"call-1@198.51.100.7",
            b"\"PBX\" <sip:100@198.51.100.7>;tag=abc",
            b"1 INVITE",
        );
        assert_eq!(
            text,
            format!(
                "SIP/2.0 403 Forbidden\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-1;rport=5062;received=198.51.100.7\r\n\
v: SIP/2.0/UDP 192.0.2.99:5060;branch=z9hG4bK-0\r\n\
f: \"PBX\" <sip:100@198.51.100.7>;tag=abc\r\n\
To: <sip:+23276123456@gw.example.net>;tag={tag}\r\n\
i: call-1@198.51.100.7\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
            )
        );
        // A retransmission gets the same response.
        assert_eq!(
            response(
                INVITE,
                &Status::forbidden(),
                Some("198.51.100.7:5062".parse().unwrap())
            )
            .unwrap(),
            r
        );
        // Another call, another tag.
        let other = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("call-1@", "call-2@");
        let r2 = response(other.as_bytes(), &Status::forbidden(), None).unwrap();
        assert_ne!(r2, r);
    }

    #[test]
    fn a_to_tag_already_there_is_kept() {
        let re = std::str::from_utf8(INVITE).unwrap().replace(
            "To: <sip:+23276123456@gw.example.net>",
            "t: <sip:+1@x>;TAG=zz",
        );
        let r = response(re.as_bytes(), &Status::new(603, "Decline").unwrap(), None).unwrap();
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("SIP/2.0 603 Decline\r\n"), "{text}");
        assert!(text.contains("\r\nt: <sip:+1@x>;TAG=zz\r\n"), "{text}");
    }

    #[test]
    fn missing_headers_are_named() {
        let cut = &INVITE[..INVITE.len() - 200];
        assert!(matches!(
            response(cut, &Status::forbidden(), None),
            Err(ReplyError::Missing(_))
        ));
        assert_eq!(
            response(b"OPTIONS sip:x SIP/2.0\r\n\r\n", &Status::forbidden(), None),
            Err(ReplyError::NotInvite)
        );
        let no_via = std::str::from_utf8(INVITE)
            .unwrap()
            .replace("Via:", "X-Via:")
            .replace("v:", "x-v:");
        assert_eq!(
            response(no_via.as_bytes(), &Status::forbidden(), None),
            Err(ReplyError::Missing("Via"))
        );
    }

    #[test]
    fn status_checks_code_and_reason() {
        assert_eq!(Status::new(399, "x"), Err(StatusError::Code(399)));
        assert_eq!(Status::new(700, "x"), Err(StatusError::Code(700)));
        assert_eq!(Status::new(403, ""), Err(StatusError::ReasonLength(0)));
        assert_eq!(
            Status::new(403, "No\r\nX: y"),
            Err(StatusError::ReasonChar('\r'))
        );
        assert_eq!(
            Status::new(403, "Verboten é"),
            Err(StatusError::ReasonChar('é'))
        );
        assert_eq!(
            Status::new(699, "Busy Everywhere").unwrap().to_string(),
            "699 Busy Everywhere"
        );
    }

    #[test]
    fn the_frame_goes_back_with_everything_swapped() {
        let mut head = ReplyHead {
            payload_len: 0,
            vlan: 100,
            macs: [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        head.family = 4;
        let r = ReplyRecord {
            src: Endpoint::from_ip("198.51.100.7".parse().unwrap(), 5062),
            dst: Endpoint::from_ip("203.0.113.5".parse().unwrap(), 5060),
            head,
            payload: Vec::new(),
        };
        let f = frame(&r, b"SIP/2.0 403 Forbidden\r\n\r\n").unwrap();
        let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!()
        };
        assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(eth.source(), [2, 0, 0, 0, 0, 2]);
        let Some(etherparse::VlanSlice::SingleVlan(v)) = p.vlan() else {
            panic!("{:?}", p.vlan())
        };
        assert_eq!(v.vlan_identifier().value(), 100);
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!()
        };
        assert_eq!(ip.header().source_addr().to_string(), "203.0.113.5");
        assert_eq!(ip.header().destination_addr().to_string(), "198.51.100.7");
        let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
            panic!()
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (5060, 5062));
        assert_eq!(udp.payload(), b"SIP/2.0 403 Forbidden\r\n\r\n");
    }
}
