//! Batched map syscalls (`BPF_MAP_{LOOKUP,UPDATE,DELETE}_BATCH`, kernel 5.6+; the LPM trie
//! and array maps use the kernel's generic implementations): one syscall for thousands of
//! elements, which is most of the cost of loading a million rules one `bpf()` call at a time.
//! aya does not wrap them, so they are raw `bpf(2)` calls here. Callers fall back to one call per
//! element when the kernel refuses a batch command ([`unsupported`]).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

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

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: bpf(2) with an attr of the batch layout; every pointer in it refers to a buffer
    // the caller keeps alive and sized for `count` elements for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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
        let r = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
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
        let r = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
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
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
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
