//! A minimal capture writer for the integration tests: crafted frames go into a classic pcap or
//! a pcapng file, which `sipguard replay` then reads.
//!
//! The headers are written by hand (std only); timestamps are arbitrary but increasing, and
//! every frame is stored whole (captured length = original length).

use std::io::Write;
use std::path::Path;

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
    /// The link type number in the file header.
    fn number(self) -> u32 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::LinuxSll => 113,
        }
    }
}

/// First timestamp written, in seconds (2023-11-14).
const TS_BASE: u32 = 1_700_000_000;

/// Writes a classic little-endian microsecond pcap with the given link type.
///
/// `frames` must already be in the form `link` calls for (see [`from_ethernet`]).
pub fn write_pcap(path: &Path, link: LinkType, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 262_144, link.number()] {
        // magic; version 2.4 (major, minor as two LE u16 = one LE u32); thiszone; sigfigs;
        // snaplen; link type
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
        for v in [TS_BASE, i as u32, len, len] {
            // seconds; microseconds; captured length; original length
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// Writes a pcapng file with one Ethernet interface.
///
/// One little-endian section: a Section Header Block, an Interface Description Block (link
/// type 1, no snapshot limit), then one Enhanced Packet Block per frame.
pub fn write_pcapng(path: &Path, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    // Section Header Block: byte-order magic, version 1.0, section length unknown (-1).
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    ng_block(&mut out, 0x0a0d_0d0a, &shb)?;
    // Interface Description Block: link type 1, reserved, snaplen 0 (no limit).
    ng_block(&mut out, 1, &[1, 0, 0, 0, 0, 0, 0, 0])?;
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).map_err(std::io::Error::other)?;
        // Timestamp in microseconds (the default resolution), split in high and low words.
        let ts = u64::from(TS_BASE) * 1_000_000 + i as u64;
        let mut epb = Vec::with_capacity(20 + frame.len());
        for v in [0, (ts >> 32) as u32, ts as u32, len, len] {
            // interface id; timestamp high; timestamp low; captured length; original length
            epb.extend_from_slice(&v.to_le_bytes());
        }
        epb.extend_from_slice(frame);
        ng_block(&mut out, 6, &epb)?;
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// Appends a little-endian pcapng block: type, total length, `body` padded to 32 bits, total
/// length again.
fn ng_block(out: &mut Vec<u8>, block_type: u32, body: &[u8]) -> std::io::Result<()> {
    let padded = body.len().div_ceil(4) * 4;
    let total = u32::try_from(12 + padded).map_err(std::io::Error::other)?;
    out.extend_from_slice(&block_type.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len() + padded - body.len(), 0);
    out.extend_from_slice(&total.to_le_bytes());
    Ok(())
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
