//! A minimal capture writer for the integration tests: crafted frames go into a classic pcap or
//! a pcapng file, which `sipguard replay` then reads.
//!
//! The headers, records and blocks are serialized by `pcap-parser` (its `serialize` feature,
//! little-endian); timestamps are arbitrary but increasing, and every frame is stored whole
//! (captured length = original length).

use std::path::Path;

use pcap_parser::{
    EnhancedPacketBlock, InterfaceDescriptionBlock, LegacyPcapBlock, Linktype, PcapHeader,
    SectionHeaderBlock, ToVec,
};

/// Link type of a classic pcap file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// `LINKTYPE_ETHERNET` (1): Ethernet II frames.
    Ethernet,
    /// `LINKTYPE_RAW` (101): bare IPv4 or IPv6 packets.
    Raw,
    /// `LINKTYPE_LINUX_SLL` (113): Linux cooked-mode header (16 bytes), then the packet.
    LinuxSll,
}

impl LinkType {
    /// The link type in the file header.
    fn linktype(self) -> Linktype {
        match self {
            LinkType::Ethernet => Linktype::ETHERNET,
            LinkType::Raw => Linktype::RAW,
            LinkType::LinuxSll => Linktype::LINUX_SLL,
        }
    }
}

/// First timestamp written, in seconds (2023-11-14).
const TS_BASE: u32 = 1_700_000_000;

/// Serializes `item` (lengths and magic numbers fixed by the serializer) onto `out`.
fn append(out: &mut Vec<u8>, item: &mut impl ToVec) -> std::io::Result<()> {
    out.extend(item.to_vec().map_err(std::io::Error::other)?);
    Ok(())
}

/// The length of `frame` as a record field.
fn caplen(frame: &[u8]) -> std::io::Result<u32> {
    u32::try_from(frame.len()).map_err(std::io::Error::other)
}

/// Writes a classic little-endian microsecond pcap (version 2.4) with the given link type.
///
/// `frames` must already be in the form `link` calls for (see [`from_ethernet`]).
pub fn write_pcap(path: &Path, link: LinkType, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    let mut header = PcapHeader {
        snaplen: 262_144,
        network: link.linktype(),
        ..PcapHeader::new()
    };
    append(&mut out, &mut header)?;
    for (i, frame) in frames.iter().enumerate() {
        let len = caplen(frame)?;
        let mut record = LegacyPcapBlock {
            ts_sec: TS_BASE,
            ts_usec: i as u32,
            caplen: len,
            origlen: len,
            data: frame,
        };
        append(&mut out, &mut record)?;
    }
    std::fs::write(path, out)
}

/// Writes a pcapng file with one Ethernet interface.
///
/// One little-endian section: a Section Header Block, an Interface Description Block (link
/// type 1, no snapshot limit, microsecond timestamps), then one Enhanced Packet Block per frame.
pub fn write_pcapng(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let frames: Vec<(u32, Vec<u8>)> = frames.iter().map(|f| (0, f.clone())).collect();
    write_pcapng_interfaces(path, &[Linktype::ETHERNET.0 as u16], &frames)
}

/// Writes a pcapng file with one interface per entry of `links` (link type numbers, in
/// interface id order) and `frames` as (interface id, bytes).
pub fn write_pcapng_interfaces(
    path: &Path,
    links: &[u16],
    frames: &[(u32, Vec<u8>)],
) -> std::io::Result<()> {
    let mut out = Vec::new();
    // Block types, lengths, byte-order magic and version are set by the serializer.
    let mut shb = SectionHeaderBlock {
        block_type: 0,
        block_len1: 0,
        bom: 0,
        major_version: 0,
        minor_version: 0,
        section_len: -1, // unknown
        options: Vec::new(),
        block_len2: 0,
    };
    append(&mut out, &mut shb)?;
    for &link in links {
        let mut idb = InterfaceDescriptionBlock {
            block_type: 0,
            block_len1: 0,
            linktype: Linktype(i32::from(link)),
            reserved: 0,
            snaplen: 0, // no limit
            options: Vec::new(),
            block_len2: 0,
            if_tsresol: 6,
            if_tsoffset: 0,
        };
        append(&mut out, &mut idb)?;
    }
    for (i, (if_id, frame)) in frames.iter().enumerate() {
        let len = caplen(frame)?;
        // Timestamp in microseconds (the interface's resolution), split in high and low words.
        let ts = u64::from(TS_BASE) * 1_000_000 + i as u64;
        let mut epb = EnhancedPacketBlock {
            block_type: 0,
            block_len1: 0,
            if_id: *if_id,
            ts_high: (ts >> 32) as u32,
            ts_low: ts as u32,
            caplen: len,
            origlen: len,
            data: frame,
            options: Vec::new(),
            block_len2: 0,
        };
        append(&mut out, &mut epb)?;
    }
    std::fs::write(path, out)
}

/// Converts an Ethernet II frame (optionally VLAN-tagged: strip tags) into the payload for
/// LinkType::Raw (IP packet) or LinkType::LinuxSll (16-byte SLL header + IP packet).
///
/// 802.1Q (0x8100), 802.1ad (0x88a8) and 0x9100 tags are stripped; the SLL header says
/// "sent to us" (packet type 0), ARPHRD_ETHER, the frame's source MAC, and the inner ethertype.
/// `LinkType::Ethernet` returns the frame unchanged. A frame too short for its headers gives
/// what is left after them (possibly nothing), with ethertype 0 if even that is missing.
pub fn from_ethernet(link: LinkType, frame: &[u8]) -> Vec<u8> {
    if link == LinkType::Ethernet {
        return frame.to_vec();
    }
    let ethertype_at = |at: usize| {
        frame
            .get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    // Skip VLAN tags: each is 4 bytes (TPID, TCI) before the real ethertype.
    let mut at = 12;
    while matches!(ethertype_at(at), 0x8100 | 0x88a8 | 0x9100) {
        at += 4;
    }
    let ethertype = ethertype_at(at);
    let packet = frame.get(at + 2..).unwrap_or_default();
    match link {
        LinkType::Raw => packet.to_vec(),
        _ => {
            let mut sll = Vec::with_capacity(16 + packet.len());
            sll.extend_from_slice(&[0, 0, 0, 1, 0, 6]); // packet type, ARPHRD_ETHER, addr len
            let mut addr = [0u8; 8];
            if let Some(src) = frame.get(6..12) {
                addr[..6].copy_from_slice(src);
            }
            sll.extend_from_slice(&addr);
            sll.extend_from_slice(&ethertype.to_be_bytes());
            sll.extend_from_slice(packet);
            sll
        }
    }
}
