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
//! names, get an Ethernet II header in front. Frames of any other link type are skipped.
//!
//! Frames are numbered from 1 in file order, counting packet blocks only, as Wireshark numbers
//! them. Only the captured bytes are available: a frame cut by the capture's snapshot length is
//! returned as captured, with [`Frame::snapped`] set.
//!
//! The file is read in chunks, one record or block at a time, with `pcap-parser`'s record and
//! block parsers (never whole: memory stays bounded by [`MAX_RECORD`] whatever the file size):
//! a record that claims more bytes than the file holds is recognised as truncation, and every
//! record or block parsed shortens what is left, so reading ends on every input. Only regular
//! files are read (a FIFO or `/dev/zero` is refused), and a run of all-zero pcap records (a
//! preallocated or sparse file) ends the reading with an error.
//!
//! A packet that cannot become a frame (an unsupported link type, a cooked header cut short,
//! raw IP that is not IP) is an [`Item::Skipped`] with its reason, not the end of the file; an
//! unsupported link type is noted once per interface ([`Item::Note`]).

use std::{collections::VecDeque, io::Read, path::Path};

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
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("{path}: {kind}, not a regular file (replay reads capture files only)")]
    NotRegular { path: String, kind: &'static str },
    /// A record or block longer than [`MAX_RECORD`].
    #[error("{path}: frame {frame}: a record or block of more than {} MiB (not a capture replay reads)", MAX_RECORD >> 20)]
    TooLarge { path: String, frame: u64 },
    /// A run of all-zero pcap records: the rest of the file is zeros.
    #[error(
        "{path}: frame {frame}: all-zero records from here on (time 0, length 0): the file is zero-filled, not a capture"
    )]
    ZeroFilled { path: String, frame: u64 },
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

/// The most a record or block may hold: more is refused as not a capture this reader takes
/// (the buffer never grows past it, whatever a length field claims).
pub const MAX_RECORD: usize = 16 << 20;

/// Consecutive all-zero pcap record headers (time 0, lengths 0) that end the reading: the rest
/// of the file is zeros (preallocated, sparse), not packets.
const ZERO_RUN: u32 = 16;

/// What reading yields, in file order.
#[derive(Debug)]
pub enum Item {
    /// A frame to run.
    Frame(Frame),
    /// A packet that cannot become an Ethernet II frame; `problem` names it.
    Skipped { number: u64, problem: CaptureError },
    /// Said once, e.g. for an interface whose link type is not supported (its frames are
    /// skipped).
    Note(String),
}

impl CaptureError {
    /// The message without the `path: frame N: ` it starts with.
    pub fn reason(&self) -> String {
        let msg = self.to_string();
        match msg.split_once(": frame ") {
            Some((_, rest)) => rest
                .split_once(": ")
                .map_or(msg.clone(), |(_, r)| r.to_string()),
            None => msg,
        }
    }
}

/// Opens a capture file for [`Reader`]: a regular file only (a FIFO or device is refused, not
/// waited on or read forever), with a pcap or pcapng magic number.
pub fn open(path: &Path) -> Result<Reader<std::fs::File>, CaptureError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = path.display().to_string();
    let io = |source| CaptureError::Io {
        path: name.clone(),
        source,
    };
    // Non-blocking: opening a FIFO without a writer must not hang.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(CaptureError::NotRegular { path: name, kind });
    }
    Reader::new(name, file)
}

/// Reads every frame (Ethernet II) of a pcap or pcapng file, strictly: the first packet that
/// cannot become a frame is an error (see [`Reader`] for the lenient reading replay does).
pub fn read_frames(path: &Path) -> Result<Vec<Frame>, CaptureError> {
    strict(open(path)?)
}

/// The same, from bytes already in memory (`name` is used in error messages).
pub fn parse_frames(name: &str, bytes: &[u8]) -> Result<Vec<Frame>, CaptureError> {
    strict(Reader::new(name.to_string(), bytes)?)
}

fn strict<R: Read>(mut r: Reader<R>) -> Result<Vec<Frame>, CaptureError> {
    let mut frames = Vec::new();
    while let Some(item) = r.next_item()? {
        match item {
            Item::Frame(f) => frames.push(f),
            Item::Skipped { problem, .. } => return Err(problem),
            Item::Note(_) => {}
        }
    }
    Ok(frames)
}

/// Every item of a capture in memory, leniently (as replay reads a file).
pub fn parse_items(name: &str, bytes: &[u8]) -> Result<Vec<Item>, CaptureError> {
    let mut r = Reader::new(name.to_string(), bytes)?;
    let mut items = Vec::new();
    while let Some(item) = r.next_item()? {
        items.push(item);
    }
    Ok(items)
}

/// The two capture formats, told apart by the first four bytes of the file.
#[derive(Clone, Copy)]
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
    /// Its unsupported link type was noted.
    noted: bool,
}

/// The bytes of the file not parsed yet: read in chunks, at most [`MAX_RECORD`] and a chunk
/// held at once.
struct Input<R> {
    src: R,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

const CHUNK: usize = 64 << 10;

/// Why more bytes could not be had.
enum Short {
    /// The file ends.
    End,
    /// [`MAX_RECORD`] bytes are held and the record is still incomplete.
    TooLarge,
}

impl<R: Read> Input<R> {
    fn rest(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }

    /// Reads more of the file after what is held.
    fn more(&mut self, path: &str) -> Result<Result<(), Short>, CaptureError> {
        if self.eof {
            return Ok(Err(Short::End));
        }
        if self.buf.len() - self.pos >= MAX_RECORD {
            return Ok(Err(Short::TooLarge));
        }
        self.buf.drain(..self.pos);
        self.pos = 0;
        let have = self.buf.len();
        self.buf.resize(have + CHUNK, 0);
        let n = loop {
            match self.src.read(&mut self.buf[have..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(CaptureError::Io {
                        path: path.to_string(),
                        source,
                    });
                }
            }
        };
        self.buf.truncate(have + n);
        if n == 0 {
            self.eof = true;
            return Ok(Err(Short::End));
        }
        Ok(Ok(()))
    }

    /// Whether the file is read to its end.
    fn at_end(&mut self, path: &str) -> Result<bool, CaptureError> {
        while self.pos == self.buf.len() {
            if self.more(path)?.is_err() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Reads a capture one record or block at a time, without holding the file: each packet is
/// an [`Item`] (a frame, or a packet skipped with its reason), and only a problem with the file
/// itself (truncated, malformed, zero-filled, a record over [`MAX_RECORD`]) is an error.
pub struct Reader<R> {
    input: Input<R>,
    state: State,
    format: Format,
    /// Classic pcap: the link type and record parser from the file header.
    pcap: Option<(Linktype, RecordParser)>,
    /// Classic pcap: consecutive all-zero record headers.
    zero_run: u32,
}

impl<R: Read> Reader<R> {
    /// Checks the magic number and reads the file (or first section) header.
    pub fn new(path: String, src: R) -> Result<Self, CaptureError> {
        let mut input = Input {
            src,
            buf: Vec::new(),
            pos: 0,
            eof: false,
        };
        while input.rest().len() < 4 {
            if input.more(&path)?.is_err() {
                break;
            }
        }
        let format = match Format::of(input.rest()) {
            Some(f) => f,
            None if input.rest().is_empty() => return Err(CaptureError::Empty { path }),
            None => return Err(CaptureError::NotCapture { path }),
        };
        let mut r = Reader {
            input,
            state: State {
                path,
                count: 0,
                interfaces: Vec::new(),
                big_endian: false,
                pending: VecDeque::new(),
                noted_file: false,
            },
            format,
            pcap: None,
            zero_run: 0,
        };
        match format {
            Format::Pcap => r.pcap_header()?,
            Format::PcapNg => r.section_header()?,
        }
        Ok(r)
    }

    /// The next item, or `None` at the end of the file.
    pub fn next_item(&mut self) -> Result<Option<Item>, CaptureError> {
        loop {
            if let Some(item) = self.state.pending.pop_front() {
                return Ok(Some(item));
            }
            if self.input.at_end(&self.state.path)? {
                return Ok(None);
            }
            match self.format {
                Format::Pcap => self.pcap_record()?,
                Format::PcapNg => self.pcapng_block()?,
            }
        }
    }

    fn pcap_header(&mut self) -> Result<(), CaptureError> {
        loop {
            let rest = self.input.rest();
            // With a known magic number, the header parser can only fail for want of bytes.
            if let Ok((after, header)) = pcap_parser::parse_pcap_header(rest) {
                let parse_record: RecordParser = if header.is_modified_format() {
                    pcap_parser::parse_pcap_frame_modified
                } else if header.is_bigendian() {
                    pcap_parser::parse_pcap_frame_be
                } else {
                    pcap_parser::parse_pcap_frame
                };
                self.pcap = Some((header.network, parse_record));
                let used = rest.len() - after.len();
                self.input.consume(used);
                return Ok(());
            }
            if self.input.more(&self.state.path)?.is_err() {
                return Err(CaptureError::TruncatedHeader {
                    path: self.state.path.clone(),
                });
            }
        }
    }

    fn section_header(&mut self) -> Result<(), CaptureError> {
        loop {
            let rest = self.input.rest();
            let incomplete = match pcap_parser::parse_sectionheaderblock(rest) {
                Ok((after, shb)) => {
                    let used = rest.len() - after.len();
                    self.state.block(Block::SectionHeader(shb));
                    self.input.consume(used);
                    return Ok(());
                }
                Err(nom::Err::Incomplete(_)) => true,
                // The byte-order magic is wrong.
                Err(nom::Err::Error(PcapError::HeaderNotRecognized)) => {
                    return Err(CaptureError::NotCapture {
                        path: self.state.path.clone(),
                    });
                }
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                    return Err(self.state.malformed(&e));
                }
            };
            if incomplete && self.input.more(&self.state.path)?.is_err() {
                return Err(CaptureError::TruncatedHeader {
                    path: self.state.path.clone(),
                });
            }
        }
    }

    /// One classic pcap record.
    fn pcap_record(&mut self) -> Result<(), CaptureError> {
        let Some((link, parse_record)) = self.pcap else {
            return Ok(());
        };
        loop {
            let rest = self.input.rest();
            // A record parser only fails for want of bytes: the file ends inside the record
            // header, or before the captured length the header gives.
            if let Ok((after, record)) = parse_record(rest) {
                if rest.get(..16).is_some_and(|h| h.iter().all(|&b| b == 0)) {
                    self.zero_run += 1;
                    if self.zero_run >= ZERO_RUN {
                        return Err(CaptureError::ZeroFilled {
                            path: self.state.path.clone(),
                            frame: self.state.count + 2 - u64::from(ZERO_RUN),
                        });
                    }
                } else {
                    self.zero_run = 0;
                }
                // Every record is at least its 16-byte header long, so the input shrinks.
                let used = rest.len() - after.len();
                self.state.push(link, None, record.data, record.origlen);
                self.input.consume(used);
                return Ok(());
            }
            match self.input.more(&self.state.path)? {
                Ok(()) => {}
                Err(Short::End) => {
                    return Err(CaptureError::TruncatedFrame {
                        path: self.state.path.clone(),
                        frame: self.state.count + 1,
                    });
                }
                Err(Short::TooLarge) => return Err(self.state.too_large()),
            }
        }
    }

    /// One pcapng block, parsed in the byte order of its section.
    fn pcapng_block(&mut self) -> Result<(), CaptureError> {
        loop {
            let parse_block = if self.state.big_endian {
                pcap_parser::parse_block_be
            } else {
                pcap_parser::parse_block_le
            };
            let rest = self.input.rest();
            // Every block is at least 12 bytes long, so the input shrinks. pcap-parser 0.17 does
            // not check that for a Process Information Block (it subtracts 12 from a length it
            // only checks against 4: an overflow panic in debug builds, found by fuzzing), so it
            // is checked here first.
            if let Some(&len) = rest.get(4..).and_then(|r| r.first_chunk::<4>()) {
                let len = if self.state.big_endian {
                    u32::from_be_bytes(len)
                } else {
                    u32::from_le_bytes(len)
                };
                if len < 12 {
                    return Err(CaptureError::Malformed {
                        path: self.state.path.clone(),
                        after: self.state.count,
                        detail: format!("block length {len}, less than the 12-byte minimum"),
                    });
                }
            }
            match parse_block(rest) {
                Ok((after, block)) => {
                    let used = rest.len() - after.len();
                    self.state.block(block);
                    self.input.consume(used);
                    return Ok(());
                }
                Err(nom::Err::Incomplete(_)) => {}
                Err(nom::Err::Error(e) | nom::Err::Failure(e)) => {
                    return Err(self.state.malformed(&e));
                }
            }
            match self.input.more(&self.state.path)? {
                Ok(()) => {}
                Err(Short::End) => return Err(self.state.truncated(self.input.rest())),
                Err(Short::TooLarge) => return Err(self.state.too_large()),
            }
        }
    }
}

/// What the reader has learnt so far, and the items it has made but not handed out.
struct State {
    path: String,
    /// Packets seen so far (frames and skipped ones).
    count: u64,
    /// Interfaces of the current pcapng section, by interface id.
    interfaces: Vec<Interface>,
    /// Byte order of the current pcapng section.
    big_endian: bool,
    pending: VecDeque<Item>,
    /// Classic pcap: its unsupported link type was noted.
    noted_file: bool,
}

impl State {
    /// Number the next frame will get.
    fn next_number(&self) -> u64 {
        self.count + 1
    }

    fn skip(&mut self, problem: CaptureError) {
        self.count += 1;
        self.pending.push_back(Item::Skipped {
            number: self.count,
            problem,
        });
    }

    /// Takes in one pcapng block.
    fn block(&mut self, block: Block<'_>) {
        match block {
            Block::SectionHeader(shb) => {
                self.interfaces.clear();
                self.big_endian = shb.big_endian();
            }
            Block::InterfaceDescription(idb) => {
                self.interfaces.push(Interface {
                    link: idb.linktype,
                    snaplen: idb.snaplen,
                    noted: false,
                });
            }
            Block::EnhancedPacket(epb) => match self.interface(epb.if_id) {
                Ok(link) => {
                    self.push(link, Some(epb.if_id), epb.packet_data(), epb.origlen);
                }
                Err(e) => self.skip(e),
            },
            Block::SimplePacket(spb) => {
                // A Simple Packet Block belongs to interface 0 and holds min(original length,
                // snapshot length) bytes, padded to 32 bits.
                match self.interface(0) {
                    Ok(link) => {
                        let snaplen = self.interfaces[0].snaplen;
                        let mut data = spb.packet_data();
                        if snaplen != 0 {
                            data = data.get(..snaplen as usize).unwrap_or(data);
                        }
                        self.push(link, Some(0), data, spb.origlen);
                    }
                    Err(e) => self.skip(e),
                }
            }
            // The parser reads the block type as little-endian whatever the section's order.
            Block::Unknown(unknown)
                if unknown.block_type == OPB_TYPE
                    || unknown.block_type == OPB_TYPE.swap_bytes() =>
            {
                let e = CaptureError::ObsoletePacketBlock {
                    path: self.path.clone(),
                    frame: self.next_number(),
                };
                self.skip(e);
            }
            // Statistics, name resolution, secrets, custom blocks...: nothing to replay.
            _ => {}
        }
    }

    /// The link type of interface `id` of the current section, for the next frame.
    fn interface(&self, id: u32) -> Result<Linktype, CaptureError> {
        self.interfaces
            .get(id as usize)
            .map(|i| i.link)
            .ok_or_else(|| CaptureError::UnknownInterface {
                path: self.path.clone(),
                frame: self.next_number(),
                interface: id,
            })
    }

    /// Turns the captured bytes of the next packet into an Ethernet II frame, or a skipped
    /// packet with its reason; `iface` is the pcapng interface (`None`: classic pcap).
    fn push(&mut self, link: Linktype, iface: Option<u32>, captured: &[u8], origlen: u32) {
        let number = self.next_number();
        let snapped = (captured.len() as u64) < u64::from(origlen);
        let problem = match to_ethernet(link, captured, origlen) {
            Ok((data, original_len)) => {
                self.count += 1;
                self.pending.push_back(Item::Frame(Frame {
                    number,
                    data,
                    original_len,
                    snapped,
                }));
                return;
            }
            Err(p) => p,
        };
        let e = match problem {
            LinkProblem::Unsupported => {
                let noted = match iface {
                    Some(id) => &mut self.interfaces[id as usize].noted,
                    None => &mut self.noted_file,
                };
                if !std::mem::replace(noted, true) {
                    let whose = match iface {
                        Some(id) => format!("interface {id}"),
                        None => "the file".to_string(),
                    };
                    self.pending.push_back(Item::Note(format!(
                        "{}: {whose} has link type {}, which replay cannot turn into Ethernet II frames: its frames are skipped",
                        self.path, link.0
                    )));
                }
                CaptureError::UnsupportedLinkType {
                    path: self.path.clone(),
                    frame: number,
                    link_type: link.0,
                }
            }
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
        };
        self.skip(e);
    }

    /// The error for a record or block over [`MAX_RECORD`].
    fn too_large(&self) -> CaptureError {
        CaptureError::TooLarge {
            path: self.path.clone(),
            frame: self.next_number(),
        }
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
                after: self.count,
            }
        }
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
            after: self.count,
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

    /// The (number, reason) of each skipped item, the numbers of the frames, and the notes.
    fn lenient(name: &str, file: &[u8]) -> (Vec<(u64, String)>, Vec<u64>, Vec<String>) {
        let (mut skipped, mut frames, mut notes) = (Vec::new(), Vec::new(), Vec::new());
        for item in parse_items(name, file).unwrap() {
            match item {
                Item::Frame(f) => frames.push(f.number),
                Item::Skipped { number, problem } => skipped.push((number, problem.reason())),
                Item::Note(n) => notes.push(n),
            }
        }
        (skipped, frames, notes)
    }

    #[test]
    fn unsupported_link_types_are_skipped_per_interface_with_one_note() {
        let e = eth(0x0800, &ipv4(1));
        let file = Ng::new(false)
            .idb(ETHERNET as u16, 0)
            .idb(147, 0)
            .epb(0, &e, e.len() as u32)
            .epb(1, &e, e.len() as u32)
            .epb(0, &e, e.len() as u32)
            .epb(1, &e, e.len() as u32)
            .epb(7, &e, e.len() as u32)
            .bytes();
        let (skipped, frames, notes) = lenient("capture.pcapng", &file);
        assert_eq!(frames, [1, 3]);
        assert_eq!(
            skipped,
            [
                (2, "unsupported link type 147".to_string()),
                (4, "unsupported link type 147".to_string()),
                (
                    5,
                    "interface 7 has no Interface Description Block in this section".to_string()
                ),
            ]
        );
        assert_eq!(
            notes,
            [
                "capture.pcapng: interface 1 has link type 147, which replay cannot turn into Ethernet II frames: its frames are skipped"
            ]
        );
        let file = pcap(false, false, 147, &whole(&[vec![1, 2, 3], vec![4]]));
        let (skipped, frames, notes) = lenient("capture.pcap", &file);
        assert!(frames.is_empty());
        assert_eq!(skipped.len(), 2);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("the file has link type 147"), "{notes:?}");
    }

    #[test]
    fn bad_cooked_and_raw_packets_are_skipped_not_the_file() {
        let file = pcap(
            false,
            false,
            RAW,
            &whole(&[vec![0x20, 0, 0], ipv4(1), Vec::new()]),
        );
        let (skipped, frames, _) = lenient("raw.pcap", &file);
        assert_eq!(frames, [2]);
        assert_eq!(
            skipped,
            [
                (
                    1,
                    "raw IP packet with IP version 2 (neither 4 nor 6)".to_string()
                ),
                (
                    3,
                    "raw IP packet is empty (no IP version to tell IPv4 from IPv6)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_zero_filled_pcap_ends_with_an_error_not_millions_of_frames() {
        let mut file = pcap(false, false, ETHERNET, &whole(&three_ethernet_frames()));
        file.resize(file.len() + (1 << 20), 0);
        let mut r = Reader::new("zeros.pcap".into(), &file[..]).unwrap();
        let mut n = 0;
        let err = loop {
            match r.next_item() {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("read to the end"),
                Err(e) => break e,
            }
        };
        assert_eq!(n, 3 + ZERO_RUN as u64 - 1);
        assert_eq!(
            err.to_string(),
            "zeros.pcap: frame 4: all-zero records from here on (time 0, length 0): the file is zero-filled, not a capture"
        );
        // A few zero-length records are packets (skipped later by replay), not the end.
        let file = pcap(false, false, ETHERNET, &whole(&[Vec::new(), Vec::new()]));
        assert_eq!(parse_frames("two.pcap", &file).unwrap().len(), 2);
    }

    #[test]
    fn a_record_claiming_gigabytes_is_refused_without_reading_them() {
        let mut file = pcap(false, false, ETHERNET, &[]);
        // Captured length 0xffff_fff0, then a little data.
        file.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0xff, 0xff, 0xff, 0xf0, 0xff, 0xff, 0xff,
        ]);
        let err = parse_frames("big.pcap", &file).unwrap_err();
        assert!(
            matches!(err, CaptureError::TruncatedFrame { frame: 1, .. }),
            "{err}"
        );
        // Longer than MAX_RECORD in the file: refused once MAX_RECORD bytes are held.
        file.resize(file.len() + MAX_RECORD + CHUNK, 0xaa);
        let err = parse_frames("big.pcap", &file).unwrap_err();
        assert_eq!(
            err.to_string(),
            "big.pcap: frame 1: a record or block of more than 16 MiB (not a capture replay reads)"
        );
    }

    /// Peak resident memory of this process, in KiB.
    fn vm_hwm_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_sparse_gigabyte_is_refused_quickly_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.pcap");
        let header = pcap(false, false, ETHERNET, &whole(&three_ethernet_frames()));
        std::fs::write(&path, &header).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(1 << 30).unwrap();
        let before = vm_hwm_kib();
        let start = std::time::Instant::now();
        let err = read_frames(&path).unwrap_err();
        assert!(matches!(err, CaptureError::ZeroFilled { .. }), "{err}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        let grown = vm_hwm_kib().saturating_sub(before);
        assert!(grown < 64 * 1024, "peak memory grew {grown} KiB");
        // pcapng: zeros after the section header are a malformed block.
        let ng = Ng::new(false).idb(ETHERNET as u16, 0).bytes();
        std::fs::write(&path, &ng).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let err = read_frames(&path).unwrap_err();
        assert!(matches!(err, CaptureError::Malformed { .. }), "{err}");
    }

    #[test]
    fn only_regular_files_are_read() {
        let err = read_frames(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/zero: a device, not a regular file (replay reads capture files only)"
        );
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: refused at once, not waited on.
        let err = read_frames(&fifo).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("fifo: a FIFO, not a regular file (replay reads capture files only)"),
            "{err}"
        );
        let err = read_frames(dir.path()).unwrap_err();
        assert!(err.to_string().contains("a directory"), "{err}");
    }
}
