//! The raw system calls aya does not wrap, each `bpf(2)` command by name ([`Cmd`]):
//!
//! - batched map commands (`BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH`, kernel 5.6+; the LPM trie
//!   and array maps use the kernel's generic implementations): one syscall for thousands of
//!   elements, which is most of the cost of loading a million rules one `bpf()` call at a
//!   time. Callers fall back to one call per element when the kernel refuses a batch command
//!   ([`unsupported`]);
//! - `BPF_OBJ_GET` and `BPF_LINK_DETACH`, to detach a pinned XDP link that another process may
//!   hold open;
//! - `BPF_OBJ_GET_INFO_BY_FD` on a link ([`link_info`]), to tell a pinned XDP link that still
//!   filters its interface from one the kernel severed (the interface was deleted);
//! - `membarrier(2)` as an RCU grace period, `statfs(2)`/`mount(2)` for bpffs, `geteuid(2)` and
//!   `if_nametoindex(3)`.

use std::{
    ffi::CStr,
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use aya::Pod;

/// The `bpf(2)` commands used here (`enum bpf_cmd`, include/uapi/linux/bpf.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Cmd {
    ObjGet = 7,
    ObjGetInfoByFd = 15,
    MapLookupBatch = 24,
    MapUpdateBatch = 26,
    MapDeleteBatch = 27,
    LinkDetach = 34,
}

impl Cmd {
    /// The command's name in the kernel's headers, for error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Cmd::ObjGet => "BPF_OBJ_GET",
            Cmd::ObjGetInfoByFd => "BPF_OBJ_GET_INFO_BY_FD",
            Cmd::MapLookupBatch => "BPF_MAP_LOOKUP_BATCH",
            Cmd::MapUpdateBatch => "BPF_MAP_UPDATE_BATCH",
            Cmd::MapDeleteBatch => "BPF_MAP_DELETE_BATCH",
            Cmd::LinkDetach => "BPF_LINK_DETACH",
        }
    }
}

/// `bpf(cmd, attr, sizeof(attr))`. Returns the syscall's non-negative result.
///
/// # Safety
/// `attr` must have the layout of the `union bpf_attr` member of `cmd`, and every pointer in it
/// must refer to memory that stays valid and large enough for the call.
unsafe fn bpf<A>(cmd: Cmd, attr: &mut A) -> io::Result<i64> {
    // SAFETY: as the caller guarantees.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd as i64, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Elements per batch syscall.
pub const CHUNK: usize = 8192;

fn batch(cmd: Cmd, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: an attr of the batch layout; every pointer in it refers to a buffer the caller
    // keeps alive and sized for `count` elements for the duration of the call.
    unsafe { bpf(cmd, attr) }.map(|_| ())
}

/// Whether `e` means "this kernel or map type has no such batch command".
pub fn unsupported(e: &io::Error) -> bool {
    const ENOTSUPP: i32 = 524; // the kernel's internal "not supported" errno
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Sets `keys[i]` to `values[i]`. Returns how many were set before an error, and the error.
pub fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, Option<io::Error>) {
    assert_eq!(keys.len(), values.len());
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = batch(Cmd::MapUpdateBatch, &mut attr);
        // On error the kernel reports how many elements it processed.
        done += (attr.count as usize).min(n);
        if let Err(e) = r {
            return (done, Some(e));
        }
    }
    (done, None)
}

/// Deletes `keys`; keys that are not there are skipped. Returns how many were handled before an
/// error, and the error.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < keys.len() {
        let n = (keys.len() - done).min(CHUNK);
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            count: n as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = batch(Cmd::MapDeleteBatch, &mut attr);
        done += (attr.count as usize).min(n);
        match r {
            Ok(()) => {}
            // The key at `done` is not there: nothing to delete, go on after it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && done < keys.len() => done += 1,
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Every (key, value) of the map, in the map's iteration order.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK);
    let mut values: Vec<V> = Vec::with_capacity(CHUNK);
    // The kernel's generic batch uses a key as the position (in_batch / out_batch).
    let mut pos = std::mem::MaybeUninit::<K>::zeroed();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { pos.as_ptr() as u64 },
            out_batch: pos.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = batch(Cmd::MapLookupBatch, &mut attr);
        let n = (attr.count as usize).min(CHUNK);
        // SAFETY: the kernel wrote `n` whole keys and values (plain data) into the buffers.
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(keys.drain(..).zip(values.drain(..)));
        match r {
            Ok(()) => first = false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
    }
}

/// `BPF_OBJ_GET`: opens the object pinned at `path`.
pub fn obj_get(path: &CStr) -> io::Result<OwnedFd> {
    /// `union bpf_attr`'s `obj` member (pathname, bpf_fd, file_flags, path_fd).
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: the obj layout; the kernel reads the NUL-terminated path we own for the call.
    let fd = unsafe { bpf(Cmd::ObjGet, &mut attr) }?;
    // SAFETY: the kernel returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `BPF_OBJ_GET_INFO_BY_FD` says of a link (`struct bpf_link_info`, the XDP member).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// `enum bpf_link_type` (6 = XDP).
    pub link_type: u32,
    pub id: u32,
    pub prog_id: u32,
    /// For an XDP link, the interface it filters; 0 once the kernel severed the link (the
    /// interface was deleted) or it was detached (`BPF_LINK_DETACH`).
    pub ifindex: u32,
}

/// `BPF_LINK_TYPE_XDP`.
pub const LINK_TYPE_XDP: u32 = 6;

/// `BPF_OBJ_GET_INFO_BY_FD` on a link fd.
pub fn link_info(link: BorrowedFd<'_>) -> io::Result<LinkInfo> {
    /// `union bpf_attr`'s `info` member.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // type, id, prog_id, then the per-type union, 8-byte aligned (so at offset 16; xdp:
    // ifindex first); the rest stays zero, as the kernel requires of the bytes past its own
    // struct.
    let mut info = [0u32; 16];
    let mut attr = InfoAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: size_of::<[u32; 16]>() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: the info layout; `info` points to a zeroed buffer of `info_len` bytes that
    // outlives the call.
    unsafe { bpf(Cmd::ObjGetInfoByFd, &mut attr) }?;
    Ok(LinkInfo {
        link_type: info[0],
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

/// `BPF_LINK_DETACH` (kernel 5.9+): detaches a link even while other processes hold it open.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    /// `union bpf_attr`'s `link_detach` member, padded.
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
        _pad: [u32; 3],
    }
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
        _pad: [0; 3],
    };
    // SAFETY: the link_detach layout, no pointers.
    unsafe { bpf(Cmd::LinkDetach, &mut attr) }.map(|_| ())
}

/// Waits for an RCU grace period: every XDP program run that started before (and so may still
/// read the trie that was live before a switch) has finished. `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// is `synchronize_rcu()` in the kernel; where it is refused (nohz_full), a generous sleep.
pub fn wait_for_readers() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier(2) takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts a bpffs at `/sys/fs/bpf`.
pub fn mount_bpffs() -> io::Result<()> {
    let (src, dst, ty) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: plain mount(2) with NUL-terminated constant strings.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether we run as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The interface index of `name`, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: NUL-terminated name; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Restores the default action of SIGPIPE (Rust ignores it): a verb whose output goes to a
/// pipe that closes early (`| head`) ends quietly, as every Unix tool does, instead of failing
/// with "Broken pipe". Not for the daemon, whose sockets must not kill it.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with a constant disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// A packet socket that sends whole Ethernet frames out of one interface (`AF_PACKET`,
/// `SOCK_RAW`, protocol 0: it receives nothing). Non-blocking: a full transmit queue is an
/// error for the caller to count, never a wait.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
        Ok(Self { fd, ifindex })
    }

    /// Sends `frame` (Ethernet header included) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too short",
            ));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid buffer and address of the stated sizes.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
