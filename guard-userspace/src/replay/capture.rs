//! Capture files (pcap and pcapng) read into Ethernet II frames, for `sipguard replay`.
//!
//! `sipguard replay CAPTURE` runs every frame of a capture through the XDP program with
//! `BPF_PROG_TEST_RUN`, and the program expects Ethernet II frames. This module reads a capture
//! with the `pcap-parser` crate and turns each captured packet into such a frame:
//!
//! - classic pcap in either byte order, with microsecond or nanosecond timestamps (and the
//!   "modified" Kuznetzov variant `pcap-parser` understands);
//! - pcapng, any number of sections and interfaces: the link type is tracked per interface from
//!   the Interface Description Blocks; Enhanced and Simple Packet Blocks carry frames, every
//!   other block is skipped.
//!
//! Link types: Ethernet (1) frames are kept as they are; Linux cooked captures, `LINUX_SLL`
//! (113) and `LINUX_SLL2` (276), get an Ethernet II header (zero MACs, ethertype from the SLL
//! protocol field) in place of their own header; raw IP, `RAW` (101) with the ethertype taken
//! from the IP version nibble, `IPV4` (228) and `IPV6` (229) with the ethertype the link type
//! names, get an Ethernet II header in front. Any other link type is an error.
//!
//! Frames are numbered from 1 in file order, counting packet blocks only, as Wireshark numbers
//! them. Only the captured bytes are available: a frame cut by the capture's snapshot length is
//! returned as captured, with [`Frame::snapped`] set.
//!
//! The whole file is read into memory (a capture worth replaying is small) and parsed as a slice
//! with `pcap-parser`'s record and block parsers: a record that claims more bytes than the file
//! holds is recognised as truncation, and every record or block parsed shortens what is left,
//! so reading ends on every input.

use std::path::Path;

use pcap_parser::nom::{self, IResult};
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Block, LegacyPcapBlock, Linktype, PcapError, SHB_MAGIC};

/// Length of the Ethernet II header put in front of non-Ethernet packets.
const ETH_HLEN: usize = 14;
/// Length of a `LINUX_SLL` header; its protocol field is at offset 14.
const SLL_HLEN: usize = 16;
/// Length of a `LINUX_SLL2` header; its protocol field is at offset 0.
const SLL2_HLEN: usize = 20;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
/// Block type of the obsolete pcapng Packet Block, which `pcap-parser` does not decode.
const OPB_TYPE: u32 = 2;

/// One frame of a capture, as an Ethernet II frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Position in the file, from 1, counting packet records only (Wireshark's numbering).
    pub number: u64,
    /// The captured bytes, as an Ethernet II frame (a header is synthesized for cooked and raw
    /// IP captures).
    pub data: Vec<u8>,
    /// Length of the frame on the wire, as recorded in the capture and adjusted by the same
    /// amount as `data` when the link-layer header was replaced.
    pub original_len: u32,
    /// The capture holds fewer bytes than were on the wire (captured length < original length):
    /// `data` is only the start of the frame.
    pub snapped: bool,
}

/// Why a capture file cannot be read. Every message names the file, and the frame where one
/// applies.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be read at all.
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path}: empty file (not a pcap or pcapng file)")]
    Empty { path: String },
    /// The file starts with neither a pcap nor a pcapng header.
    #[error("{path}: not a pcap or pcapng file")]
    NotCapture { path: String },
    /// The file starts like a capture but ends inside its file or section header.
    #[error("{path}: truncated file header (file ends inside the pcap or pcapng header)")]
    TruncatedHeader { path: String },
    /// The file ends inside the record of frame `frame`.
    #[error("{path}: frame {frame}: truncated record (file ends inside the packet)")]
    TruncatedFrame { path: String, frame: u64 },
    /// The file ends inside a pcapng block that is not a packet block (or whose type cannot be
    /// told), after `after` complete frames.
    #[error("{path}: truncated pcapng block {} (file ends inside the block)", after_frame(*.after))]
    TruncatedBlock { path: String, after: u64 },
    /// A pcapng block fails the parser's checks (for example mismatched block lengths).
    #[error("{path}: malformed pcapng block {} ({detail})", after_frame(*.after))]
    Malformed {
        path: String,
        after: u64,
        detail: String,
    },
    /// A frame was captured on a link type this reader cannot turn into Ethernet II.
    #[error("{path}: frame {frame}: unsupported link type {link_type}")]
    UnsupportedLinkType {
        path: String,
        frame: u64,
        link_type: i32,
    },
    /// A pcapng packet names an interface no Interface Description Block of its section
    /// described.
    #[error(
        "{path}: frame {frame}: interface {interface} has no Interface Description Block in this section"
    )]
    UnknownInterface {
        path: String,
        frame: u64,
        interface: u32,
    },
    /// A pcapng obsolete Packet Block (type 2), which is not supported.
    #[error("{path}: frame {frame}: obsolete pcapng Packet Block (type 2) is not supported")]
    ObsoletePacketBlock { path: String, frame: u64 },
    /// A cooked-capture frame is shorter than its link-layer header.
    #[error(
        "{path}: frame {frame}: {len} captured bytes, too short for the {header} header ({need} bytes)"
    )]
    ShortLinkHeader {
        path: String,
        frame: u64,
        header: &'static str,
        len: usize,
        need: usize,
    },
    /// A raw IP (link type 101) frame that is neither IPv4 nor IPv6 (`None`: empty packet).
    #[error("{path}: frame {frame}: raw IP packet {}", ip_version(*.version))]
    NotIp {
        path: String,
        frame: u64,
        version: Option<u8>,
    },
}

/// "after frame N", or "before the first frame".
fn after_frame(after: u64) -> String {
    if after == 0 {
        "before the first frame".to_string()
    } else {
        format!("after frame {after}")
    }
}

/// The complaint about a raw IP packet's version nibble.
fn ip_version(version: Option<u8>) -> String {
    match version {
        Some(v) => format!("with IP version {v} (neither 4 nor 6)"),
        None => "is empty (no IP version to tell IPv4 from IPv6)".to_string(),
    }
}

/// Reads every frame (Ethernet II) of a pcap or pcapng file.
///
/// The file is read into memory first; see [`parse_frames`].
pub fn read_frames(path: &Path) -> Result<Vec<Frame>, CaptureError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CaptureError::Io {
        path: name.clone(),
        source,
    })?;
    parse_frames(&name, &bytes)
}

/// The same, from bytes already in memory (`name` is used in error messages).
///
/// The format (pcap or pcapng) is recognised from the magic number at the start; then
/// `pcap-parser`'s record or block parsers walk the slice one record or block at a time. The
/// first problem found ends the reading with an error; frames before it are not returned.
pub fn parse_frames(name: &str, bytes: &[u8]) -> Result<Vec<Frame>, CaptureError> {
    let mut state = State {
        path: name.to_string(),
        frames: Vec::new(),
        interfaces: Vec::new(),
        big_endian: false,
    };
    match Format::of(bytes) {
        Some(Format::Pcap) => state.read_pcap(bytes)?,
        Some(Format::PcapNg) => state.read_pcapng(bytes)?,
        None if bytes.is_empty() => return Err(CaptureError::Empty { path: state.path }),
        None => return Err(CaptureError::NotCapture { path: state.path }),
    }
    Ok(state.frames)
}

/// The two capture formats, told apart by the first four bytes of the file.
enum Format {
    Pcap,
    PcapNg,
}

/// The magic numbers of classic pcap files that `pcap-parser` reads, as little-endian `u32`:
/// microseconds, nanoseconds and the modified (Kuznetzov) format written in little-endian,
/// then microseconds and nanoseconds written in big-endian.
const PCAP_MAGICS: [u32; 5] = [
    0xa1b2_c3d4,
    0xa1b2_3c4d,
    0xa1b2_cd34,
    0xd4c3_b2a1,
    0x4d3c_b2a1,
];

impl Format {
    /// The format of a file starting with `bytes`, if it is a capture at all.
    fn of(bytes: &[u8]) -> Option<Format> {
        let magic = u32::from_le_bytes(*bytes.first_chunk::<4>()?);
        if magic == SHB_MAGIC {
            // A palindrome: the same in both byte orders.
            Some(Format::PcapNg)
        } else if PCAP_MAGICS.contains(&magic) {
            Some(Format::Pcap)
        } else {
            None
        }
    }
}

/// A parser for one classic pcap record.
type RecordParser = fn(&[u8]) -> IResult<&[u8], LegacyPcapBlock<'_>, PcapError<&[u8]>>;

/// A pcapng interface, as its Interface Description Block described it.
struct Interface {
    link: Linktype,
    /// Snapshot length; 0 means no limit.
    snaplen: u32,
}

/// What the reader has learnt so far, and the frames it has made.
struct State {
    path: String,
    frames: Vec<Frame>,
    /// Interfaces of the current pcapng section, by interface id.
    interfaces: Vec<Interface>,
    /// Byte order of the current pcapng section.
    big_endian: bool,
}

impl State {
    /// Number the next frame will get.
    fn next_number(&self) -> u64 {
        self.frames.len() as u64 + 1
    }

    /// Reads a classic pcap file (its magic number checked): the file header, then records to
    /// the end of the file.
    fn read_pcap(&mut self, bytes: &[u8]) -> Result<(), CaptureError> {
        // With a known magic number, the header parser can only fail for want of bytes.
        let Ok((mut rest, header)) = pcap_parser::parse_pcap_header(bytes) else {
            return Err(CaptureError::TruncatedHeader {
                path: self.path.clone(),
            });
        };
        let parse_record: RecordParser = if header.is_modified_format() {
            pcap_parser::parse_pcap_frame_modified
        } else if header.is_bigendian() {
            pcap_parser::parse_pcap_frame_be
        } else {
            pcap_parser::parse_pcap_frame
        };
        while !rest.is_empty() {
            // A record parser only fails for want of bytes: the file ends inside the record
            // header, or before the captured length the header gives.
            let Ok((after, record)) = parse_record(rest) else {
                return Err(CaptureError::TruncatedFrame {
                    path: self.path.clone(),
                    frame: self.next_number(),
                });
            };
            // Every record is at least its 16-byte header long, so `rest` shrinks.
            rest = after;
            self.push(header.network, record.data, record.origlen)?;
        }
        Ok(())
    }

    /// Reads a pcapng file (its magic number checked): blocks to the end of the file, each
    /// parsed in the byte order of its section.
    fn read_pcapng(&mut self, bytes: &[u8]) -> Result<(), CaptureError> {
        let mut rest = match pcap_parser::parse_sectionheaderblock(bytes) {
            Ok((rest, shb)) => {
                self.block(Block::SectionHeader(shb))?;
                rest
            }
            Err(nom::Err::Incomplete(_)) => {
                return Err(CaptureError::TruncatedHeader {
                    path: self.path.clone(),
                });
            }
            // The byte-order magic is wrong.
            Err(nom::Err::Error(PcapError::HeaderNotRecognized)) => {
                return Err(CaptureError::NotCapture {
                    path: self.path.clone(),
                });
            }
            Err(nom::Err::Error(e) | nom::Err::Failure(e)) => return Err(self.malformed(&e)),
        };
        while !rest.is_empty() {
            let parse_block = if self.big_endian {
                pcap_parser::parse_block_be
            } else {
                pcap_parser::parse_block_le
            };
            // Every block is at least 12 bytes long, so `rest` shrinks. pcap-parser 0.17 does not
            // check that for a Process Information Block (it subtracts 12 from a length it only
            // checks against 4: an overflow panic in debug builds), so it is checked here first.
            if let Some(len) = self.block_len(rest)
                && len < 12
            {
                return Err(CaptureError::Malformed {
                    path: self.path.clone(),
                    after: self.frames.len() as u64,
                    detail: format!("block length {len}, less than the 12-byte minimum"),
                });
            }
            match parse_block(rest) {
                Ok((after, block)) => {
                    rest = after;
                    self.block(block)?;
                }
                Err(nom::Err::Incomplete(_)) => return Err(self.truncated(rest)),
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => return Err(self.malformed(&e)),
            }
        }
        Ok(())
    }

    /// Takes in one pcapng block.
    fn block(&mut self, block: Block<'_>) -> Result<(), CaptureError> {
        match block {
            Block::SectionHeader(shb) => {
                self.interfaces.clear();
                self.big_endian = shb.big_endian();
            }
            Block::InterfaceDescription(idb) => {
                self.interfaces.push(Interface {
                    link: idb.linktype,
                    snaplen: idb.snaplen,
                });
            }
            Block::EnhancedPacket(epb) => {
                let link = self.interface(epb.if_id)?.link;
                self.push(link, epb.packet_data(), epb.origlen)?;
            }
            Block::SimplePacket(spb) => {
                // A Simple Packet Block belongs to interface 0 and holds min(original length,
                // snapshot length) bytes, padded to 32 bits.
                let iface = self.interface(0)?;
                let (link, snaplen) = (iface.link, iface.snaplen);
                let mut data = spb.packet_data();
                if snaplen != 0 {
                    data = data.get(..snaplen as usize).unwrap_or(data);
                }
                self.push(link, data, spb.origlen)?;
            }
            // The parser reads the block type as little-endian whatever the section's order.
            Block::Unknown(unknown)
                if unknown.block_type == OPB_TYPE
                    || unknown.block_type == OPB_TYPE.swap_bytes() =>
            {
                return Err(CaptureError::ObsoletePacketBlock {
                    path: self.path.clone(),
                    frame: self.next_number(),
                });
            }
            // Statistics, name resolution, secrets, custom blocks...: nothing to replay.
            _ => {}
        }
        Ok(())
    }

    /// The interface `id` of the current section, for the next frame.
    fn interface(&self, id: u32) -> Result<&Interface, CaptureError> {
        self.interfaces
            .get(id as usize)
            .ok_or_else(|| CaptureError::UnknownInterface {
                path: self.path.clone(),
                frame: self.next_number(),
                interface: id,
            })
    }

    /// Turns the captured bytes of the next frame into an Ethernet II frame and keeps it.
    fn push(&mut self, link: Linktype, captured: &[u8], origlen: u32) -> Result<(), CaptureError> {
        let number = self.next_number();
        let snapped = (captured.len() as u64) < u64::from(origlen);
        let (data, original_len) = to_ethernet(link, captured, origlen).map_err(|p| match p {
            LinkProblem::Unsupported => CaptureError::UnsupportedLinkType {
                path: self.path.clone(),
                frame: number,
                link_type: link.0,
            },
            LinkProblem::Short { header, need } => CaptureError::ShortLinkHeader {
                path: self.path.clone(),
                frame: number,
                header,
                len: captured.len(),
                need,
            },
            LinkProblem::NotIp(version) => CaptureError::NotIp {
                path: self.path.clone(),
                frame: number,
                version,
            },
        })?;
        self.frames.push(Frame {
            number,
            data,
            original_len,
            snapped,
        });
        Ok(())
    }

    /// The error for a pcapng file that ends inside a block; `rest` is what is left of it.
    fn truncated(&self, rest: &[u8]) -> CaptureError {
        let path = self.path.clone();
        if self.is_packet_block(rest) {
            CaptureError::TruncatedFrame {
                path,
                frame: self.next_number(),
            }
        } else {
            CaptureError::TruncatedBlock {
                path,
                after: self.frames.len() as u64,
            }
        }
    }

    /// The total length field of the pcapng block at the start of `rest`, in the section's byte
    /// order, when its first eight bytes are there.
    fn block_len(&self, rest: &[u8]) -> Option<u32> {
        let &len = rest.get(4..)?.first_chunk::<4>()?;
        Some(if self.big_endian {
            u32::from_be_bytes(len)
        } else {
            u32::from_le_bytes(len)
        })
    }

    /// Whether the partial pcapng block `rest` is a packet block (Enhanced, Simple or obsolete
    /// Packet Block), judging by its block type in the section's byte order.
    fn is_packet_block(&self, rest: &[u8]) -> bool {
        let Some(&block_type) = rest.first_chunk::<4>() else {
            return false;
        };
        let block_type = if self.big_endian {
            u32::from_be_bytes(block_type)
        } else {
            u32::from_le_bytes(block_type)
        };
        [pcap_parser::EPB_MAGIC, pcap_parser::SPB_MAGIC, OPB_TYPE].contains(&block_type)
    }

    /// The error for a block the parser rejects.
    fn malformed(&self, e: &PcapError<&[u8]>) -> CaptureError {
        let detail = match e {
            PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
                format!("parser check failed: {kind:?}")
            }
            PcapError::HeaderNotRecognized => "unrecognised section header".to_string(),
            other => format!("{other}"),
        };
        CaptureError::Malformed {
            path: self.path.clone(),
            after: self.frames.len() as u64,
            detail,
        }
    }
}

/// Why a packet cannot become an Ethernet II frame.
enum LinkProblem {
    /// The link type is none of those this module converts.
    Unsupported,
    /// Shorter than the `header` link-layer header of `need` bytes.
    Short { header: &'static str, need: usize },
    /// A raw IP packet with this version nibble (`None`: empty).
    NotIp(Option<u8>),
}

/// The Ethernet II frame for `captured` bytes of link type `link`, and its original length
/// adjusted by the same amount as the header.
fn to_ethernet(
    link: Linktype,
    captured: &[u8],
    origlen: u32,
) -> Result<(Vec<u8>, u32), LinkProblem> {
    // Original length after replacing a header of `removed` bytes by an Ethernet header.
    let adjust = |removed: usize| {
        let removed = u32::try_from(removed).unwrap_or(u32::MAX);
        origlen
            .saturating_sub(removed)
            .saturating_add(ETH_HLEN as u32)
    };
    match link {
        Linktype::ETHERNET => Ok((captured.to_vec(), origlen)),
        Linktype::LINUX_SLL | Linktype::LINUX_SLL2 => {
            let (header, need, proto_at) = if link == Linktype::LINUX_SLL {
                ("Linux cooked-mode (SLL)", SLL_HLEN, 14)
            } else {
                ("Linux cooked-mode v2 (SLL2)", SLL2_HLEN, 0)
            };
            let (Some(payload), Some(&[hi, lo])) =
                (captured.get(need..), captured.get(proto_at..proto_at + 2))
            else {
                return Err(LinkProblem::Short { header, need });
            };
            let ethertype = u16::from_be_bytes([hi, lo]);
            Ok((with_ethernet_header(ethertype, payload), adjust(need)))
        }
        Linktype::RAW => {
            let ethertype = match captured.first().map(|b| b >> 4) {
                Some(4) => ETHERTYPE_IPV4,
                Some(6) => ETHERTYPE_IPV6,
                version => return Err(LinkProblem::NotIp(version)),
            };
            Ok((with_ethernet_header(ethertype, captured), adjust(0)))
        }
        Linktype::IPV4 => Ok((with_ethernet_header(ETHERTYPE_IPV4, captured), adjust(0))),
        Linktype::IPV6 => Ok((with_ethernet_header(ETHERTYPE_IPV6, captured), adjust(0))),
        _ => Err(LinkProblem::Unsupported),
    }
}

/// An Ethernet II frame: zero destination and source MACs, `ethertype`, then `payload`.
fn with_ethernet_header(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + payload.len());
    frame.extend_from_slice(&[0; 12]);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Link type numbers used by the tests.
    const ETHERNET: u32 = 1;
    const RAW: u32 = 101;
    const SLL: u32 = 113;
    const SLL2: u32 = 276;
    const IPV6: u32 = 229;

    /// An Ethernet frame carrying `payload` with `ethertype`, MACs set.
    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The start of an IPv4 packet (version nibble 4) followed by `tag`.
    fn ipv4(tag: u8) -> Vec<u8> {
        vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, tag,
        ]
    }

    /// The start of an IPv6 packet (version nibble 6) followed by `tag`.
    fn ipv6(tag: u8) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        p.extend_from_slice(&[0xfe; 32]);
        p.push(tag);
        p
    }

    /// Writes u16/u32 in a chosen byte order.
    #[derive(Clone, Copy)]
    struct Order(bool);

    impl Order {
        fn u16(self, out: &mut Vec<u8>, v: u16) {
            out.extend_from_slice(&if self.0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            });
        }
        fn u32(self, out: &mut Vec<u8>, v: u32) {
            out.extend_from_slice(&if self.0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            });
        }
    }

    /// A classic pcap file; records are (captured bytes, original length).
    fn pcap(big_endian: bool, nano: bool, link: u32, records: &[(Vec<u8>, u32)]) -> Vec<u8> {
        let o = Order(big_endian);
        let mut out = Vec::new();
        o.u32(&mut out, if nano { 0xa1b2_3c4d } else { 0xa1b2_c3d4 });
        o.u16(&mut out, 2);
        o.u16(&mut out, 4);
        o.u32(&mut out, 0); // thiszone
        o.u32(&mut out, 0); // sigfigs
        o.u32(&mut out, 65535); // snaplen
        o.u32(&mut out, link);
        for (i, (data, origlen)) in records.iter().enumerate() {
            o.u32(&mut out, 1_700_000_000 + i as u32);
            o.u32(&mut out, if nano { 999_999_999 } else { 999_999 });
            o.u32(&mut out, data.len() as u32);
            o.u32(&mut out, *origlen);
            out.extend_from_slice(data);
        }
        out
    }

    /// Records whose original length is their captured length.
    fn whole(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, u32)> {
        frames.iter().map(|f| (f.clone(), f.len() as u32)).collect()
    }

    /// A pcapng file under construction.
    struct Ng {
        out: Vec<u8>,
        order: Order,
    }

    impl Ng {
        /// Starts a file with its first section.
        fn new(big_endian: bool) -> Ng {
            let mut ng = Ng {
                out: Vec::new(),
                order: Order(big_endian),
            };
            ng.section(big_endian);
            ng
        }

        /// Appends a block of `block_type` with `body` (padded to 32 bits).
        fn block(&mut self, block_type: u32, body: &[u8]) -> &mut Ng {
            let padded = body.len().div_ceil(4) * 4;
            let len = (12 + padded) as u32;
            let o = self.order;
            o.u32(&mut self.out, block_type);
            o.u32(&mut self.out, len);
            self.out.extend_from_slice(body);
            self.out.resize(self.out.len() + padded - body.len(), 0);
            o.u32(&mut self.out, len);
            self
        }

        /// Appends a Section Header Block in the given byte order.
        fn section(&mut self, big_endian: bool) -> &mut Ng {
            self.order = Order(big_endian);
            let mut body = Vec::new();
            let o = self.order;
            o.u32(&mut body, 0x1a2b_3c4d);
            o.u16(&mut body, 1);
            o.u16(&mut body, 0);
            body.extend_from_slice(&[0xff; 8]); // section length: unknown
            self.block(0x0a0d_0d0a, &body)
        }

        /// Appends an Interface Description Block.
        fn idb(&mut self, link: u16, snaplen: u32) -> &mut Ng {
            let mut body = Vec::new();
            let o = self.order;
            o.u16(&mut body, link);
            o.u16(&mut body, 0);
            o.u32(&mut body, snaplen);
            self.block(1, &body)
        }

        /// Appends an Enhanced Packet Block.
        fn epb(&mut self, if_id: u32, data: &[u8], origlen: u32) -> &mut Ng {
            let mut body = Vec::new();
            let o = self.order;
            o.u32(&mut body, if_id);
            o.u32(&mut body, 0);
            o.u32(&mut body, 1);
            o.u32(&mut body, data.len() as u32);
            o.u32(&mut body, origlen);
            body.extend_from_slice(data);
            self.block(6, &body)
        }

        /// Appends a Simple Packet Block.
        fn spb(&mut self, data: &[u8], origlen: u32) -> &mut Ng {
            let mut body = Vec::new();
            self.order.u32(&mut body, origlen);
            body.extend_from_slice(data);
            self.block(3, &body)
        }

        /// Appends an Interface Statistics Block (skipped by the reader).
        fn isb(&mut self) -> &mut Ng {
            self.block(5, &[0; 12])
        }

        fn bytes(&self) -> Vec<u8> {
            self.out.clone()
        }
    }

    /// Ethernet frame built by the reader for a non-Ethernet packet.
    fn synthesized(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn datas(frames: &[Frame]) -> Vec<Vec<u8>> {
        frames.iter().map(|f| f.data.clone()).collect()
    }

    fn three_ethernet_frames() -> Vec<Vec<u8>> {
        vec![
            eth(0x0800, &ipv4(1)),
            eth(0x86dd, &ipv6(2)),
            eth(0x0800, &ipv4(3)),
        ]
    }

    #[test]
    fn classic_pcap_little_endian() {
        let frames = three_ethernet_frames();
        let got = parse_frames("le.pcap", &pcap(false, false, ETHERNET, &whole(&frames))).unwrap();
        assert_eq!(datas(&got), frames);
        assert_eq!(
            got.iter().map(|f| f.number).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(got.iter().all(|f| !f.snapped));
        assert!(got.iter().all(|f| f.original_len as usize == f.data.len()));
    }

    #[test]
    fn classic_pcap_big_endian() {
        let frames = three_ethernet_frames();
        let got = parse_frames("be.pcap", &pcap(true, false, ETHERNET, &whole(&frames))).unwrap();
        assert_eq!(datas(&got), frames);
        assert_eq!(got[2].number, 3);
    }

    #[test]
    fn nanosecond_pcap_both_byte_orders() {
        let frames = three_ethernet_frames();
        for big_endian in [false, true] {
            let file = pcap(big_endian, true, ETHERNET, &whole(&frames));
            let got = parse_frames("ns.pcap", &file).unwrap();
            assert_eq!(datas(&got), frames, "big endian: {big_endian}");
        }
    }

    #[test]
    fn pcap_without_frames_is_empty_list() {
        let got = parse_frames("none.pcap", &pcap(false, false, ETHERNET, &[])).unwrap();
        assert!(got.is_empty());
        // No frame, no link type to complain about.
        assert!(parse_frames("none.pcap", &pcap(false, false, 147, &[])).is_ok());
    }

    #[test]
    fn pcapng_two_interfaces_ethernet_and_raw() {
        let e1 = eth(0x0800, &ipv4(1));
        let r2 = ipv4(2);
        let r3 = ipv6(3);
        let e4 = eth(0x86dd, &ipv6(4));
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .idb(RAW as u16, 0)
            .epb(0, &e1, e1.len() as u32)
            .epb(1, &r2, r2.len() as u32)
            .isb()
            .epb(1, &r3, r3.len() as u32)
            .epb(0, &e4, e4.len() as u32)
            .bytes();
        let got = parse_frames("two.pcapng", &file).unwrap();
        assert_eq!(
            datas(&got),
            vec![e1, synthesized(0x0800, &r2), synthesized(0x86dd, &r3), e4]
        );
        assert_eq!(
            got.iter().map(|f| f.number).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(got[1].original_len as usize, r2.len() + 14);
        assert!(got.iter().all(|f| !f.snapped));
    }

    #[test]
    fn pcapng_big_endian_and_second_section() {
        let e1 = eth(0x0800, &ipv4(1));
        let r2 = ipv6(2);
        let file = Ng::new(true)
            .idb(ETHERNET as u16, 0)
            .epb(0, &e1, e1.len() as u32)
            .section(false)
            .idb(IPV6 as u16, 0)
            .epb(0, &r2, r2.len() as u32)
            .bytes();
        let got = parse_frames("be.pcapng", &file).unwrap();
        assert_eq!(datas(&got), vec![e1, synthesized(0x86dd, &r2)]);
        assert_eq!(got[1].number, 2);
    }

    #[test]
    fn pcapng_new_section_forgets_interfaces() {
        let e1 = eth(0x0800, &ipv4(1));
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .idb(ETHERNET as u16, 0)
            .epb(1, &e1, e1.len() as u32)
            .section(false)
            .idb(ETHERNET as u16, 0)
            .epb(1, &e1, e1.len() as u32)
            .bytes();
        let err = parse_frames("s.pcapng", &file).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::UnknownInterface {
                frame: 2,
                interface: 1,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "s.pcapng: frame 2: interface 1 has no Interface Description Block in this section"
        );
    }

    #[test]
    fn pcapng_simple_packet_blocks() {
        let e1 = eth(0x0800, &ipv4(1)); // 35 bytes: padded in the block
        let e2 = eth(0x0800, &ipv4(2));
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 30)
            .spb(&e1, e1.len() as u32)
            .spb(&e2[..30], e2.len() as u32)
            .bytes();
        let got = parse_frames("spb.pcapng", &file).unwrap();
        assert_eq!(got.len(), 2);
        // The first is cut to the interface's snapshot length, as a writer would have done.
        assert_eq!(got[0].data, e1[..30].to_vec());
        assert!(got[0].snapped);
        assert_eq!(got[1].data, e2[..30].to_vec());
        assert!(got[1].snapped);
        assert_eq!(got[1].original_len as usize, e2.len());

        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .spb(&e1, e1.len() as u32)
            .bytes();
        let got = parse_frames("spb.pcapng", &file).unwrap();
        assert_eq!(datas(&got), vec![e1]);
        assert!(!got[0].snapped);
    }

    #[test]
    fn linux_sll_becomes_ethernet() {
        let ip = ipv4(7);
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 9, 0, 0, 0x08, 0x00];
        sll.extend_from_slice(&ip);
        let mut vlan_sll = vec![0, 4, 0, 1, 0, 6, 2, 0, 0, 0, 0, 9, 0, 0, 0x81, 0x00];
        let vlan_payload = [&[0x00, 0x64, 0x08, 0x00][..], &ip].concat();
        vlan_sll.extend_from_slice(&vlan_payload);
        let file = pcap(false, false, SLL, &whole(&[sll.clone(), vlan_sll]));
        let got = parse_frames("sll.pcap", &file).unwrap();
        assert_eq!(
            datas(&got),
            vec![synthesized(0x0800, &ip), synthesized(0x8100, &vlan_payload)]
        );
        assert_eq!(got[0].original_len as usize, sll.len() - 16 + 14);
    }

    #[test]
    fn linux_sll2_becomes_ethernet() {
        let ip = ipv6(8);
        let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 0, 6];
        sll2.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0, 0]);
        sll2.extend_from_slice(&ip);
        let file = Ng::new(false)
            .idb(SLL2 as u16, 0)
            .epb(0, &sll2, sll2.len() as u32)
            .bytes();
        let got = parse_frames("sll2.pcapng", &file).unwrap();
        assert_eq!(datas(&got), vec![synthesized(0x86dd, &ip)]);
        assert_eq!(got[0].original_len as usize, sll2.len() - 20 + 14);
    }

    #[test]
    fn cooked_frame_shorter_than_its_header() {
        let file = pcap(false, false, SLL, &whole(&[vec![0; 15]]));
        let err = parse_frames("short.pcap", &file).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::ShortLinkHeader {
                frame: 1,
                len: 15,
                need: 16,
                ..
            }
        ));
        assert!(
            err.to_string()
                .starts_with("short.pcap: frame 1: 15 captured bytes")
        );
    }

    #[test]
    fn raw_ipv6_and_raw_link_types() {
        let v6 = ipv6(9);
        let v4 = ipv4(9);
        let got = parse_frames(
            "raw.pcap",
            &pcap(false, false, RAW, &whole(&[v6.clone(), v4.clone()])),
        )
        .unwrap();
        assert_eq!(
            datas(&got),
            vec![synthesized(0x86dd, &v6), synthesized(0x0800, &v4)]
        );
        let got = parse_frames(
            "v6.pcap",
            &pcap(true, false, IPV6, &whole(std::slice::from_ref(&v6))),
        )
        .unwrap();
        assert_eq!(datas(&got), vec![synthesized(0x86dd, &v6)]);
        let got = parse_frames(
            "v4.pcap",
            &pcap(false, false, 228, &whole(std::slice::from_ref(&v4))),
        )
        .unwrap();
        assert_eq!(datas(&got), vec![synthesized(0x0800, &v4)]);
    }

    #[test]
    fn raw_packet_that_is_not_ip() {
        let file = pcap(false, false, RAW, &whole(&[ipv4(1), vec![0x20, 0, 0]]));
        let err = parse_frames("raw.pcap", &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "raw.pcap: frame 2: raw IP packet with IP version 2 (neither 4 nor 6)"
        );
        let file = pcap(false, false, RAW, &whole(&[Vec::new()]));
        let err = parse_frames("raw.pcap", &file).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::NotIp {
                frame: 1,
                version: None,
                ..
            }
        ));
    }

    #[test]
    fn truncated_pcap_names_the_frame() {
        let frames = three_ethernet_frames();
        let file = pcap(false, false, ETHERNET, &whole(&frames));
        // Cut in the middle of the third record's data, then inside its record header.
        let third = file.len() - frames[2].len() - 16;
        for cut in [file.len() - 5, third + 3] {
            let err = parse_frames("capture.pcap", &file[..cut]).unwrap_err();
            assert!(matches!(err, CaptureError::TruncatedFrame { frame: 3, .. }));
            assert_eq!(
                err.to_string(),
                "capture.pcap: frame 3: truncated record (file ends inside the packet)"
            );
        }
        // Cut exactly after a complete record: fine.
        assert_eq!(
            parse_frames("capture.pcap", &file[..third]).unwrap().len(),
            2
        );
    }

    #[test]
    fn truncated_pcapng_names_the_frame_or_block() {
        let e1 = eth(0x0800, &ipv4(1));
        let mut ng = Ng::new(false);
        ng.idb(ETHERNET as u16, 0).epb(0, &e1, e1.len() as u32);
        let before_second = ng.bytes().len();
        ng.epb(0, &e1, e1.len() as u32);
        let before_isb = ng.bytes().len();
        ng.isb();
        let file = ng.bytes();
        let err = parse_frames("c.pcapng", &file[..before_second + 20]).unwrap_err();
        assert!(matches!(err, CaptureError::TruncatedFrame { frame: 2, .. }));
        let err = parse_frames("c.pcapng", &file[..before_isb + 10]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.pcapng: truncated pcapng block after frame 2 (file ends inside the block)"
        );
        assert_eq!(
            parse_frames("c.pcapng", &file[..before_isb]).unwrap().len(),
            2
        );
        // Cut inside the section header block.
        let err = parse_frames("c.pcapng", &file[..20]).unwrap_err();
        assert!(matches!(err, CaptureError::TruncatedHeader { .. }));
    }

    #[test]
    fn every_cut_of_a_file_ends_cleanly() {
        let frames = three_ethernet_frames();
        let classic = pcap(true, false, ETHERNET, &whole(&frames));
        let ng = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .epb(0, &frames[0], frames[0].len() as u32)
            .isb()
            .epb(0, &frames[1], frames[1].len() as u32)
            .spb(&frames[2], frames[2].len() as u32)
            .bytes();
        for file in [classic, ng] {
            let mut complete = 0;
            for cut in 0..=file.len() {
                // Never a panic nor a hang; either every frame before the cut or an error.
                if let Ok(got) = parse_frames("cut", &file[..cut]) {
                    complete += 1;
                    assert!(got.len() <= 3);
                }
            }
            assert!(complete >= 3, "cuts at record boundaries parse");
        }
    }

    #[test]
    fn garbage_is_not_a_capture() {
        let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        let err = parse_frames("capture.pcap", &garbage).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }));
        assert_eq!(err.to_string(), "capture.pcap: not a pcap or pcapng file");
        for short in [&b"ab"[..], b"hello world"] {
            let err = parse_frames("capture.pcap", short).unwrap_err();
            assert!(matches!(err, CaptureError::NotCapture { .. }), "{err}");
        }
        // The pcapng magic, but no byte-order magic after it.
        let mut file = Ng::new(false).bytes();
        file[8..12].copy_from_slice(b"\0bad");
        let err = parse_frames("capture.pcapng", &file).unwrap_err();
        assert!(matches!(err, CaptureError::NotCapture { .. }), "{err}");
    }

    #[test]
    fn modified_pcap_records() {
        let frames = three_ethernet_frames();
        let mut file = pcap(false, false, ETHERNET, &[]);
        file[..4].copy_from_slice(&0xa1b2_cd34u32.to_le_bytes());
        for (i, frame) in frames.iter().enumerate() {
            let len = frame.len() as u32;
            for v in [1_700_000_000, i as u32, len, len, 2, 0] {
                // time; captured and original lengths; ifindex, protocol, type and padding
                file.extend_from_slice(&v.to_le_bytes());
            }
            file.extend_from_slice(frame);
        }
        let got = parse_frames("modified.pcap", &file).unwrap();
        assert_eq!(datas(&got), frames);
    }

    #[test]
    fn empty_file_is_an_error() {
        let err = parse_frames("capture.pcap", &[]).unwrap_err();
        assert!(matches!(err, CaptureError::Empty { .. }));
        assert!(err.to_string().starts_with("capture.pcap: empty file"));
    }

    #[test]
    fn truncated_file_header() {
        let file = pcap(false, false, ETHERNET, &[]);
        let err = parse_frames("capture.pcap", &file[..10]).unwrap_err();
        assert!(matches!(err, CaptureError::TruncatedHeader { .. }), "{err}");
    }

    #[test]
    fn unsupported_link_type_names_the_frame() {
        let file = pcap(false, false, 147, &whole(&[vec![1, 2, 3]]));
        let err = parse_frames("capture.pcap", &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "capture.pcap: frame 1: unsupported link type 147"
        );
        let e = eth(0x0800, &ipv4(1));
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .idb(147, 0)
            .epb(0, &e, e.len() as u32)
            .epb(0, &e, e.len() as u32)
            .epb(1, &e, e.len() as u32)
            .bytes();
        let err = parse_frames("capture.pcapng", &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "capture.pcapng: frame 3: unsupported link type 147"
        );
    }

    #[test]
    fn snapped_frame_is_flagged() {
        let full = eth(0x0800, &ipv4(1));
        let cut = full[..20].to_vec();
        let file = pcap(
            false,
            false,
            ETHERNET,
            &[
                (cut.clone(), full.len() as u32),
                (full.clone(), full.len() as u32),
            ],
        );
        let got = parse_frames("snap.pcap", &file).unwrap();
        assert_eq!(got[0].data, cut);
        assert_eq!(got[0].original_len as usize, full.len());
        assert!(got[0].snapped);
        assert!(!got[1].snapped);

        let ip = ipv4(1);
        let file = Ng::new(false)
            .idb(RAW as u16, 0)
            .epb(0, &ip[..10], ip.len() as u32)
            .bytes();
        let got = parse_frames("snap.pcapng", &file).unwrap();
        assert_eq!(got[0].data, synthesized(0x0800, &ip[..10]));
        assert_eq!(got[0].original_len as usize, ip.len() + 14);
        assert!(got[0].snapped);
    }

    #[test]
    fn obsolete_packet_block_is_refused() {
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .block(2, &[0; 20])
            .bytes();
        let err = parse_frames("old.pcapng", &file).unwrap_err();
        assert!(matches!(
            err,
            CaptureError::ObsoletePacketBlock { frame: 1, .. }
        ));
    }

    #[test]
    fn malformed_block_is_an_error() {
        let e = eth(0x0800, &ipv4(1));
        let mut file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .epb(0, &e, e.len() as u32)
            .bytes();
        // Break the trailing copy of the block length.
        let n = file.len();
        file[n - 4] ^= 0x40;
        let err = parse_frames("bad.pcapng", &file).unwrap_err();
        assert!(
            err.to_string().starts_with("bad.pcapng:") && !err.to_string().contains('['),
            "{err}"
        );
    }

    #[test]
    fn block_shorter_than_its_header_is_malformed() {
        // Found by the `capture` fuzz target: a Process Information Block (0x80000001) with a
        // length of 4 made pcap-parser 0.17 subtract 12 from 4.
        for big_endian in [false, true] {
            let mut file = Ng::new(big_endian).bytes();
            let o = Order(big_endian);
            o.u32(&mut file, 0x8000_0001);
            o.u32(&mut file, 4);
            file.extend_from_slice(&[0, 0xff]);
            let err = parse_frames("pib.pcapng", &file).unwrap_err();
            assert_eq!(
                err.to_string(),
                "pib.pcapng: malformed pcapng block before the first frame (block length 4, less \
                 than the 12-byte minimum)"
            );
        }
    }

    #[test]
    fn read_frames_from_disk() {
        let frames = three_ethernet_frames();
        let path =
            std::env::temp_dir().join(format!("sipguard-capture-test-{}.pcap", std::process::id()));
        std::fs::write(&path, pcap(false, false, ETHERNET, &whole(&frames))).unwrap();
        let got = read_frames(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(datas(&got.unwrap()), frames);

        let missing = Path::new("/nonexistent/sipguard/capture.pcap");
        let err = read_frames(missing).unwrap_err();
        assert!(matches!(err, CaptureError::Io { .. }));
        assert!(
            err.to_string()
                .starts_with("/nonexistent/sipguard/capture.pcap: cannot read: ")
        );
    }
}
