//! A small frame builder for fixtures: Ethernet, VLAN tags, IPv4 (options, fragments) or IPv6
//! (extension headers), UDP or TCP, payload, and deliberate lies (lengths, truncation).

/// IPv6 extension headers the builder can insert before UDP.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// Fragment header with this offset (in 8-byte units) and the M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
}

#[derive(Clone, Debug)]
enum L3 {
    V4 {
        options: usize,
        frag_offset: u16,
        more_frags: bool,
        proto: u8,
        ihl_override: Option<u8>,
    },
    V6 {
        exts: Vec<Ext>,
    },
}

/// TCP flags for [`Pkt::tcp`].
pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// Frame under construction. `build()` gives the bytes.
#[derive(Clone, Debug)]
pub struct Pkt {
    /// (TPID, VLAN id), outermost first.
    tags: Vec<(u16, u16)>,
    ethertype: Option<u16>,
    l3: L3,
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
    ip_len_delta: i32,
    udp_len: Option<u16>,
    truncate: Option<usize>,
    /// TCP instead of UDP: flags and bytes of options.
    tcp: Option<(u8, usize)>,
    /// Source address instead of [`SRC4`] / [`SRC6`].
    src: Option<std::net::IpAddr>,
}

pub const SRC4: [u8; 4] = [192, 0, 2, 10];
pub const DST4: [u8; 4] = [198, 51, 100, 20];
pub const SRC6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
pub const DST6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20,
];

impl Pkt {
    fn new(l3: L3, payload: &[u8]) -> Self {
        Self {
            tags: Vec::new(),
            ethertype: None,
            l3,
            sport: 5060,
            dport: 5060,
            payload: payload.to_vec(),
            ip_len_delta: 0,
            udp_len: None,
            truncate: None,
            tcp: None,
            src: None,
        }
    }

    /// From `ip` (IPv4 for a [`Pkt::v4`] frame, IPv6 for a [`Pkt::v6`] one).
    pub fn src(mut self, ip: &str) -> Self {
        self.src = Some(ip.parse().expect("an IP address"));
        self
    }

    /// IPv4/UDP to port 5060.
    pub fn v4(payload: &[u8]) -> Self {
        Self::new(
            L3::V4 {
                options: 0,
                frag_offset: 0,
                more_frags: false,
                proto: 17,
                ihl_override: None,
            },
            payload,
        )
    }

    /// IPv6/UDP to port 5060.
    pub fn v6(payload: &[u8]) -> Self {
        Self::new(L3::V6 { exts: Vec::new() }, payload)
    }

    /// Adds an 802.1Q tag with VLAN `id`, after any tags already added.
    pub fn vlan_id(mut self, id: u16) -> Self {
        self.tags.push((0x8100, id));
        self
    }

    /// Adds a VLAN tag with this TPID (0x8100 or 0x88a8), outermost first: VLAN 100, then 101.
    pub fn vlan(mut self, tpid: u16) -> Self {
        let id = 100 + self.tags.len() as u16;
        self.tags.push((tpid, id));
        self
    }

    /// Overrides the innermost EtherType (for non-IP frames).
    pub fn ethertype(mut self, et: u16) -> Self {
        self.ethertype = Some(et);
        self
    }

    /// IPv4 options of `bytes` (a multiple of 4, at most 40): NOPs ending in EOL.
    pub fn ipv4_options(mut self, bytes: usize) -> Self {
        if let L3::V4 { options, .. } = &mut self.l3 {
            *options = bytes;
        }
        self
    }

    /// Sets the IPv4 header length field (words) to a lie.
    pub fn ihl(mut self, words: u8) -> Self {
        if let L3::V4 { ihl_override, .. } = &mut self.l3 {
            *ihl_override = Some(words);
        }
        self
    }

    /// IPv4 fragment fields.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        if let L3::V4 {
            frag_offset,
            more_frags,
            ..
        } = &mut self.l3
        {
            *frag_offset = offset;
            *more_frags = more;
        }
        self
    }

    /// IP protocol number (IPv4 only).
    pub fn proto(mut self, p: u8) -> Self {
        if let L3::V4 { proto, .. } = &mut self.l3 {
            *proto = p;
        }
        self
    }

    /// TCP (with these flags and `options` bytes of NOP options, a multiple of 4) instead of
    /// UDP; the IPv4 protocol or the IPv6 next header says 6.
    pub fn tcp(mut self, flags: u8, options: usize) -> Self {
        self.tcp = Some((flags, options));
        if let L3::V4 { proto, .. } = &mut self.l3 {
            *proto = 6;
        }
        self
    }

    /// Appends an IPv6 extension header.
    pub fn ext(mut self, e: Ext) -> Self {
        if let L3::V6 { exts } = &mut self.l3 {
            exts.push(e);
        }
        self
    }

    pub fn dport(mut self, p: u16) -> Self {
        self.dport = p;
        self
    }

    /// Makes the IP length field claim `delta` bytes more (or fewer) than it should.
    pub fn ip_len_delta(mut self, delta: i32) -> Self {
        self.ip_len_delta = delta;
        self
    }

    /// Sets the UDP length field to a lie.
    pub fn udp_len(mut self, len: u16) -> Self {
        self.udp_len = Some(len);
        self
    }

    /// Cuts the finished frame to `len` bytes.
    pub fn truncate(mut self, len: usize) -> Self {
        self.truncate = Some(len);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC (locally administered)
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
        let inner = self.ethertype.unwrap_or(match self.l3 {
            L3::V4 { .. } => 0x0800,
            L3::V6 { .. } => 0x86dd,
        });
        for (tpid, id) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes()); // TCI: priority 0, the VLAN id
        }
        f.extend_from_slice(&inner.to_be_bytes());

        let udp = match self.tcp {
            None => {
                let udp_len = 8 + self.payload.len();
                let mut udp = Vec::with_capacity(udp_len);
                udp.extend_from_slice(&self.sport.to_be_bytes());
                udp.extend_from_slice(&self.dport.to_be_bytes());
                udp.extend_from_slice(&self.udp_len.unwrap_or(udp_len as u16).to_be_bytes());
                udp.extend_from_slice(&[0, 0]); // no checksum: XDP does not verify it
                udp.extend_from_slice(&self.payload);
                udp
            }
            Some((flags, options)) => {
                let hlen = 20 + options;
                let mut tcp = Vec::with_capacity(hlen + self.payload.len());
                tcp.extend_from_slice(&self.sport.to_be_bytes());
                tcp.extend_from_slice(&self.dport.to_be_bytes());
                tcp.extend_from_slice(&1000u32.to_be_bytes()); // seq
                tcp.extend_from_slice(&2000u32.to_be_bytes()); // ack
                tcp.push(((hlen / 4) as u8) << 4);
                tcp.push(flags);
                tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
                tcp.resize(hlen, 1); // NOP options
                tcp.extend_from_slice(&self.payload);
                tcp
            }
        };

        match &self.l3 {
            L3::V4 {
                options,
                frag_offset,
                more_frags,
                proto,
                ihl_override,
            } => {
                let hlen = 20 + options;
                let total = (hlen + udp.len()) as i32 + self.ip_len_delta;
                let ihl = ihl_override.unwrap_or((hlen / 4) as u8);
                let mut h = vec![0x40 | (ihl & 0x0f), 0];
                h.extend_from_slice(&(total as u16).to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34]);
                let frags = (frag_offset & 0x1fff) | if *more_frags { 0x2000 } else { 0 };
                h.extend_from_slice(&frags.to_be_bytes());
                h.extend_from_slice(&[64, *proto, 0, 0]);
                h.extend_from_slice(&match self.src {
                    Some(std::net::IpAddr::V4(a)) => a.octets(),
                    _ => SRC4,
                });
                h.extend_from_slice(&DST4);
                h.resize(20 + options - if *options > 0 { 1 } else { 0 }, 1); // NOPs
                if *options > 0 {
                    h.push(0); // EOL
                }
                let sum = checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                f.extend_from_slice(&h);
            }
            L3::V6 { exts } => {
                let mut ext_bytes = Vec::new();
                let codes: Vec<u8> = exts
                    .iter()
                    .map(|e| match e {
                        Ext::HopByHop => 0,
                        Ext::Routing => 43,
                        Ext::DestOpts => 60,
                        Ext::Fragment { .. } => 44,
                    })
                    .chain(std::iter::once(if self.tcp.is_some() { 6 } else { 17 }))
                    .collect();
                for (i, e) in exts.iter().enumerate() {
                    let next = codes[i + 1];
                    match e {
                        Ext::Fragment { offset, more } => {
                            let fo = (offset << 3) | u16::from(*more);
                            ext_bytes.extend_from_slice(&[next, 0]);
                            ext_bytes.extend_from_slice(&fo.to_be_bytes());
                            ext_bytes.extend_from_slice(&[0, 0, 0, 7]);
                        }
                        Ext::Routing => {
                            // Type 4 (segment routing) with no segments left: 16 bytes, len 1.
                            ext_bytes.extend_from_slice(&[next, 1, 4, 0]);
                            ext_bytes.extend_from_slice(&[0; 12]);
                        }
                        _ => {
                            // PadN filling 8 bytes.
                            ext_bytes.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                        }
                    }
                }
                let payload_len = (ext_bytes.len() + udp.len()) as i32 + self.ip_len_delta;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
                f.extend_from_slice(&[codes[0], 64]);
                f.extend_from_slice(&match self.src {
                    Some(std::net::IpAddr::V6(a)) => a.octets(),
                    _ => SRC6,
                });
                f.extend_from_slice(&DST6);
                f.extend_from_slice(&ext_bytes);
            }
        }
        f.extend_from_slice(&udp);
        if let Some(n) = self.truncate {
            f.truncate(n);
        }
        f
    }
}

fn checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A complete SIP INVITE with `uri` as Request-URI.
pub fn invite(uri: &str) -> Vec<u8> {
    request("INVITE", uri)
}

/// A SIP request with this method and Request-URI.
pub fn request(method: &str, uri: &str) -> Vec<u8> {
    request_with_call_id(method, uri, "a84b4c76e66710@192.0.2.10")
}

/// A SIP request with a chosen Call-ID (tests use it to recognise what arrived).
pub fn request_with_call_id(method: &str, uri: &str, call_id: &str) -> Vec<u8> {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds\r\n\
         Max-Forwards: 70\r\n\
         To: <{uri}>\r\n\
         From: <sip:100@192.0.2.10>;tag=1928301774\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 314159 {method}\r\n\
         Contact: <sip:100@192.0.2.10>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}
