//! A reader of VPP's statistics segment: counters without an API round trip.
//!
//! VPP keeps its counters (interfaces, IPsec SAs, node errors, …) in a shared-memory segment.
//! A client connects to the unix socket named by `statseg { socket-name … }` (`stats.sock`),
//! receives the segment's memfd (`SCM_RIGHTS`), maps it read-only and reads it in place:
//!
//! * the segment starts with a header: `version`, `base` (the address VPP maps the segment
//!   at: every pointer inside is relative to it), `epoch`, `in_progress` and the pointer to
//!   the *directory*, a VPP vector of entries `{ type, data/value, name[128] }`;
//! * a VPP vector is a pointer to its first element, with its length (`u32`) in the 8-byte
//!   header just before it;
//! * a simple counter entry points at a vector (one per thread) of vectors of `u64`; a
//!   combined one at per-thread vectors of `{ packets, bytes }`; a name vector at a vector
//!   of C strings; a symlink names another entry and an index in it;
//! * VPP sets `in_progress` while it changes the directory and bumps `epoch` after. A reader
//!   waits for `in_progress == 0`, notes the epoch, reads, and retries when the epoch moved
//!   or a change started meanwhile (optimistic locking). Counter values themselves are
//!   updated without the lock; each 64-bit read is atomic on x86-64.
//!
//! Every pointer read from the segment is translated and bounds-checked against the mapping,
//! so a torn read yields an error or a retry, never a read outside it. Lookups by name use
//! an index of the directory built on first use and rebuilt only when the epoch moves: a
//! counter read then costs microseconds (measured in `tests/stats_live.rs` against
//! `cli_inband`), the first one a scan of the few thousand directory names.
//!
//! ```no_run
//! use scrambler_vpp_api::stats::StatsClient;
//! # fn f() -> Result<(), scrambler_vpp_api::stats::StatsError> {
//! let stats = StatsClient::connect("/run/vpp/stats.sock")?;
//! let sa = stats.combined("/net/ipsec/sa", 0)?; // SA with stat_index 0, summed over threads
//! println!("{} packets, {} bytes", sa.packets, sa.bytes);
//! for name in stats.names()?.iter().filter(|n| n.starts_with("/if/")) {
//!     println!("{name}");
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{
    connect, recvmsg, socket, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

/// The segment layout version this reader understands (`STAT_SEGMENT_VERSION`).
pub const SEGMENT_VERSION: u64 = 2;

/// Size of one directory entry: `u32 type`, padding, 8-byte union, `char name[128]`.
pub(crate) const ENTRY_SIZE: usize = 144;
pub(crate) const NAME_OFFSET: usize = 16;
const NAME_SIZE: usize = 128;
/// How often a read is retried while VPP keeps changing the directory.
const RETRIES: usize = 1000;

/// What went wrong reading the statistics segment.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The socket could not be used or no segment came over it.
    #[error("VPP stats socket {path}: {op}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The segment has a layout this reader does not know.
    #[error("VPP stats segment has layout version {0}, this reader knows {SEGMENT_VERSION}")]
    Version(u64),
    /// No directory entry has that name.
    #[error("VPP stats segment has no entry {0:?}")]
    NotFound(String),
    /// The entry exists but is of another kind than asked for.
    #[error("VPP stats entry {name:?} is {found}, not {wanted}")]
    WrongType {
        /// Entry name.
        name: String,
        /// Kind found.
        found: &'static str,
        /// Kind asked for.
        wanted: &'static str,
    },
    /// A pointer or length in the segment leads outside it (a torn read or a corrupt segment).
    #[error("VPP stats segment: {0}")]
    Corrupt(String),
    /// VPP kept changing the directory during every attempt.
    #[error("VPP stats segment was being updated during {RETRIES} read attempts")]
    Busy,
}

type Result<T> = std::result::Result<T, StatsError>;

/// One combined counter: packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Combined {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl std::ops::AddAssign for Combined {
    fn add_assign(&mut self, o: Combined) {
        self.packets = self.packets.wrapping_add(o.packets);
        self.bytes = self.bytes.wrapping_add(o.bytes);
    }
}

/// The value of one directory entry, copied out of the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatValue {
    /// A gauge or scalar (`STAT_DIR_TYPE_SCALAR_INDEX`).
    Scalar(u64),
    /// Simple counters, `[thread][index]`.
    Simple(Vec<Vec<u64>>),
    /// Combined counters, `[thread][index]`.
    Combined(Vec<Vec<Combined>>),
    /// A vector of names (`None` for a free slot).
    Names(Vec<Option<String>>),
    /// An entry without data (a deleted counter's slot).
    Empty,
}

impl StatValue {
    fn kind(&self) -> &'static str {
        match self {
            StatValue::Scalar(_) => "a scalar",
            StatValue::Simple(_) => "a simple counter vector",
            StatValue::Combined(_) => "a combined counter vector",
            StatValue::Names(_) => "a name vector",
            StatValue::Empty => "empty",
        }
    }

    /// The simple counter at `index`, summed over threads (0 when no thread has it).
    pub fn simple_sum(&self, index: usize) -> Option<u64> {
        match self {
            StatValue::Simple(t) => Some(
                t.iter()
                    .filter_map(|v| v.get(index))
                    .fold(0u64, |a, b| a.wrapping_add(*b)),
            ),
            _ => None,
        }
    }

    /// The combined counter at `index`, summed over threads.
    pub fn combined_sum(&self, index: usize) -> Option<Combined> {
        match self {
            StatValue::Combined(t) => {
                let mut sum = Combined::default();
                for c in t.iter().filter_map(|v| v.get(index)) {
                    sum += *c;
                }
                Some(sum)
            }
            _ => None,
        }
    }
}

/// Directory positions by entry name.
type DirIndex = Arc<HashMap<String, usize>>;

/// A read-only mapping of a VPP statistics segment.
///
/// Reads are synchronous and cheap (no syscalls): copy what you need, the values keep
/// changing underneath. Holding the mapping keeps the segment alive even if VPP exits.
#[derive(Debug)]
pub struct StatsClient {
    path: PathBuf,
    map: NonNull<std::ffi::c_void>,
    len: usize,
    /// Directory positions by name, and the epoch they were read under (the directory only
    /// changes with the epoch).
    index: Mutex<Option<(u64, DirIndex)>>,
}

// SAFETY: the mapping is read-only shared memory owned by this value; reading it from any
// thread is as safe as from the one that mapped it.
unsafe impl Send for StatsClient {}
// SAFETY: all access is through `&self` reads of the read-only mapping.
unsafe impl Sync for StatsClient {}

impl Drop for StatsClient {
    fn drop(&mut self) {
        // SAFETY: `map`/`len` are the mapping made in `connect`, unmapped only here.
        let _ = unsafe { munmap(self.map, self.len) };
    }
}

impl StatsClient {
    /// Connects to VPP's stats socket at `path`, receives the segment and maps it read-only.
    pub fn connect(path: impl AsRef<Path>) -> Result<StatsClient> {
        let path = path.as_ref().to_path_buf();
        let fd = receive_segment_fd(&path)?;
        Self::map_segment(path, fd)
    }

    /// Maps the segment behind `fd` (received from `path`) and checks its version.
    fn map_segment(path: PathBuf, fd: OwnedFd) -> Result<StatsClient> {
        let err = |op: &'static str| {
            let path = path.clone();
            move |e: nix::Error| StatsError::Connect {
                path,
                op,
                source: std::io::Error::from(e),
            }
        };
        let st = nix::sys::stat::fstat(&fd).map_err(err("stat the segment"))?;
        let len = usize::try_from(st.st_size)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| StatsError::Corrupt(format!("segment size {}", st.st_size)))?;
        // SAFETY: a fresh read-only shared mapping of the whole memfd; nothing aliases it
        // mutably in this process.
        let map = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(err("map the segment"))?;
        let me = StatsClient {
            path,
            map,
            len: len.get(),
            index: Mutex::new(None),
        };
        let v = me.seg().u64_at(0)?;
        if v != SEGMENT_VERSION {
            return Err(StatsError::Version(v));
        }
        Ok(me)
    }

    /// A client over a segment as VPP sends it (any file or memfd holding one), without the
    /// socket; for tests.
    #[cfg(any(test, feature = "test-util"))]
    pub fn from_segment_fd(fd: OwnedFd) -> Result<StatsClient> {
        Self::map_segment(PathBuf::from("(test segment)"), fd)
    }

    /// The socket this client came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of every directory entry.
    pub fn names(&self) -> Result<Vec<String>> {
        self.consistent(|seg, _| {
            let (dir, n) = seg.directory()?;
            (0..n)
                .map(|i| seg.entry_name(dir + i * ENTRY_SIZE))
                .collect()
        })
    }

    /// The value of the entry `name` (symlinks resolved to their one element).
    pub fn read(&self, name: &str) -> Result<StatValue> {
        self.read_many(&[name]).map(|mut v| v.remove(0))
    }

    /// The values of several entries from one consistent snapshot of the directory; fails
    /// with [`StatsError::NotFound`] when one is missing.
    pub fn read_many(&self, names: &[&str]) -> Result<Vec<StatValue>> {
        self.read_present(names)?
            .into_iter()
            .zip(names)
            .map(|(v, n)| v.ok_or_else(|| StatsError::NotFound(n.to_string())))
            .collect()
    }

    /// Like [`StatsClient::read_many`], with `None` for the entries this VPP lacks (counters
    /// differ between VPP versions).
    pub fn read_present(&self, names: &[&str]) -> Result<Vec<Option<StatValue>>> {
        self.consistent(|seg, epoch| {
            let (dir, n) = seg.directory()?;
            let index = self.index_at(seg, epoch, dir, n)?;
            names
                .iter()
                .map(|name| match index.get(*name) {
                    Some(i) => seg.entry_value(dir, n, *i, 0).map(Some),
                    None => Ok(None),
                })
                .collect()
        })
    }

    /// The simple counter `name[index]` summed over threads.
    pub fn simple(&self, name: &str, index: usize) -> Result<u64> {
        let v = self.read(name)?;
        v.simple_sum(index).ok_or_else(|| StatsError::WrongType {
            name: name.into(),
            found: v.kind(),
            wanted: "a simple counter vector",
        })
    }

    /// The combined counter `name[index]` summed over threads.
    pub fn combined(&self, name: &str, index: usize) -> Result<Combined> {
        let v = self.read(name)?;
        v.combined_sum(index).ok_or_else(|| StatsError::WrongType {
            name: name.into(),
            found: v.kind(),
            wanted: "a combined counter vector",
        })
    }

    fn seg(&self) -> Segment<'_> {
        // SAFETY: the mapping is `len` readable bytes for the lifetime of `self`. VPP writes
        // to it concurrently, so bytes are only read through volatile loads (`Segment`).
        Segment {
            base: self.map.as_ptr() as *const u8,
            len: self.len,
            _life: std::marker::PhantomData,
        }
    }

    /// Runs `f` under the segment's optimistic lock, retrying while VPP changes it.
    /// The name index of the directory at `epoch`: cached, rebuilt when the epoch moved.
    fn index_at(&self, seg: &Segment<'_>, epoch: u64, dir: usize, n: usize) -> Result<DirIndex> {
        let mut cache = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, idx)) = cache.as_ref() {
            if *e == epoch {
                return Ok(idx.clone());
            }
        }
        let mut idx = HashMap::with_capacity(n);
        for i in 0..n {
            idx.insert(seg.entry_name(dir + i * ENTRY_SIZE)?, i);
        }
        // kept only if the epoch held: `consistent` retries otherwise, and a stale epoch
        // never matches again
        let idx = Arc::new(idx);
        *cache = Some((epoch, idx.clone()));
        Ok(idx)
    }

    fn consistent<T>(&self, f: impl Fn(&Segment<'_>, u64) -> Result<T>) -> Result<T> {
        let seg = self.seg();
        for attempt in 0..RETRIES {
            let epoch = seg.u64_at(16)?;
            if seg.u64_at(24)? != 0 {
                backoff(attempt);
                continue;
            }
            fence(Ordering::Acquire);
            let r = f(&seg, epoch);
            fence(Ordering::Acquire);
            if seg.u64_at(16)? == epoch && seg.u64_at(24)? == 0 {
                return r;
            }
            backoff(attempt);
        }
        Err(StatsError::Busy)
    }
}

fn backoff(attempt: usize) {
    if attempt < 10 {
        std::hint::spin_loop();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Connects to the stats socket and takes the memfd VPP sends on accept.
fn receive_segment_fd(path: &Path) -> Result<OwnedFd> {
    let err = |op: &'static str| {
        move |e: nix::Error| StatsError::Connect {
            path: path.to_path_buf(),
            op,
            source: std::io::Error::from(e),
        }
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("create socket"))?;
    let addr = UnixAddr::new(path).map_err(err("build address"))?;
    connect(sock.as_raw_fd(), &addr).map_err(err("connect"))?;
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(err("receive the segment"))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(err("read control messages"))? {
        if let ControlMessageOwned::ScmRights(v) = c {
            fds.extend(v);
        }
    }
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: SCM_RIGHTS gave us these descriptors; nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.is_empty() {
        return Err(StatsError::Connect {
            path: path.to_path_buf(),
            op: "receive the segment",
            source: std::io::Error::other("VPP sent no file descriptor"),
        });
    }
    Ok(owned.swap_remove(0))
}

/// Bounds-checked volatile reads of the mapped segment.
struct Segment<'a> {
    base: *const u8,
    len: usize,
    _life: std::marker::PhantomData<&'a ()>,
}

/// Directory entry types (`stat_directory_type_t`).
pub(crate) mod dir_type {
    pub const SCALAR_INDEX: u32 = 1;
    pub const COUNTER_VECTOR_SIMPLE: u32 = 2;
    pub const COUNTER_VECTOR_COMBINED: u32 = 3;
    pub const NAME_VECTOR: u32 = 4;
    pub const EMPTY: u32 = 5;
    pub const SYMLINK: u32 = 6;
}

/// Upper bounds that catch garbage read during a concurrent change.
const MAX_THREADS: usize = 1024;
const MAX_ELEMS: usize = 1 << 24;

impl Segment<'_> {
    fn check(&self, off: usize, size: usize) -> Result<()> {
        match off.checked_add(size) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StatsError::Corrupt(format!(
                "{size} bytes at offset {off:#x} lie outside the {:#x}-byte segment",
                self.len
            ))),
        }
    }

    fn u64_at(&self, off: usize) -> Result<u64> {
        self.check(off, 8)?;
        if off % 8 != 0 {
            return Err(StatsError::Corrupt(format!("unaligned u64 at {off:#x}")));
        }
        // SAFETY: in bounds and aligned (the mapping is page aligned).
        Ok(unsafe { std::ptr::read_volatile(self.base.add(off) as *const u64) })
    }

    fn u32_at(&self, off: usize) -> Result<u32> {
        self.check(off, 4)?;
        if off % 4 != 0 {
            return Err(StatsError::Corrupt(format!("unaligned u32 at {off:#x}")));
        }
        // SAFETY: in bounds and aligned.
        Ok(unsafe { std::ptr::read_volatile(self.base.add(off) as *const u32) })
    }

    fn bytes_at(&self, off: usize, n: usize) -> Result<Vec<u8>> {
        self.check(off, n)?;
        // SAFETY: in bounds; byte reads have no alignment needs.
        Ok((0..n)
            .map(|i| unsafe { std::ptr::read_volatile(self.base.add(off + i)) })
            .collect())
    }

    /// The offset in the mapping of the VPP pointer `ptr` (VPP's address space).
    fn translate(&self, ptr: u64) -> Result<usize> {
        let base = self.u64_at(8)?;
        ptr.checked_sub(base)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| *o > 0 && *o < self.len)
            .ok_or_else(|| {
                StatsError::Corrupt(format!(
                    "pointer {ptr:#x} is outside the segment at {base:#x}"
                ))
            })
    }

    /// Offset and length of the VPP vector at `ptr` (null is the empty vector).
    fn vector(&self, ptr: u64, elem: usize) -> Result<(usize, usize)> {
        if ptr == 0 {
            return Ok((0, 0));
        }
        let off = self.translate(ptr)?;
        let n = usize::try_from(self.u32_at(off.checked_sub(8).unwrap_or(usize::MAX))?)
            .unwrap_or(usize::MAX);
        if n > MAX_ELEMS {
            return Err(StatsError::Corrupt(format!("vector of {n} elements")));
        }
        self.check(off, n * elem)?;
        Ok((off, n))
    }

    fn directory(&self) -> Result<(usize, usize)> {
        let ptr = self.u64_at(32)?;
        self.vector(ptr, ENTRY_SIZE)
    }

    fn entry_name(&self, entry: usize) -> Result<String> {
        // word by word: 16 loads instead of 128
        let mut raw = [0u8; NAME_SIZE];
        for (i, chunk) in raw.chunks_mut(8).enumerate() {
            let w = self.u64_at(entry + NAME_OFFSET + i * 8)?;
            chunk.copy_from_slice(&w.to_ne_bytes());
            if chunk.contains(&0) {
                break;
            }
        }
        Ok(c_string(&raw))
    }

    fn entry_value(&self, dir: usize, n: usize, i: usize, depth: u8) -> Result<StatValue> {
        let entry = dir + i * ENTRY_SIZE;
        let ty = self.u32_at(entry)?;
        let data = self.u64_at(entry + 8)?;
        Ok(match ty {
            dir_type::SCALAR_INDEX => StatValue::Scalar(data),
            dir_type::COUNTER_VECTOR_SIMPLE => StatValue::Simple(
                self.per_thread(data, 8)?
                    .into_iter()
                    .map(|(off, m)| (0..m).map(|j| self.u64_at(off + j * 8)).collect())
                    .collect::<Result<_>>()?,
            ),
            dir_type::COUNTER_VECTOR_COMBINED => StatValue::Combined(
                self.per_thread(data, 16)?
                    .into_iter()
                    .map(|(off, m)| {
                        (0..m)
                            .map(|j| {
                                Ok(Combined {
                                    packets: self.u64_at(off + j * 16)?,
                                    bytes: self.u64_at(off + j * 16 + 8)?,
                                })
                            })
                            .collect()
                    })
                    .collect::<Result<_>>()?,
            ),
            dir_type::NAME_VECTOR => {
                let (off, m) = self.vector(data, 8)?;
                let mut names = Vec::with_capacity(m);
                for j in 0..m {
                    let p = self.u64_at(off + j * 8)?;
                    names.push(if p == 0 {
                        None
                    } else {
                        let (s, len) = self.vector(p, 1)?;
                        Some(c_string(&self.bytes_at(s, len)?))
                    });
                }
                StatValue::Names(names)
            }
            dir_type::EMPTY => StatValue::Empty,
            dir_type::SYMLINK if depth == 0 => {
                // index1 (low half): the target entry; index2: the element in it
                let (target, elem) = split_symlink(data);
                if target >= n {
                    return Err(StatsError::Corrupt(format!(
                        "symlink to entry {target} of {n}"
                    )));
                }
                match self.entry_value(dir, n, target, depth + 1)? {
                    StatValue::Simple(t) => StatValue::Simple(
                        t.into_iter()
                            .map(|v| v.get(elem).copied().into_iter().collect())
                            .collect(),
                    ),
                    StatValue::Combined(t) => StatValue::Combined(
                        t.into_iter()
                            .map(|v| v.get(elem).copied().into_iter().collect())
                            .collect(),
                    ),
                    other => other,
                }
            }
            other => {
                return Err(StatsError::Corrupt(format!(
                    "entry {i} has unknown type {other}"
                )))
            }
        })
    }

    /// The per-thread vectors of a counter entry: (offset, elements) each.
    fn per_thread(&self, data: u64, elem: usize) -> Result<Vec<(usize, usize)>> {
        let (off, threads) = self.vector(data, 8)?;
        if threads > MAX_THREADS {
            return Err(StatsError::Corrupt(format!("{threads} threads")));
        }
        (0..threads)
            .map(|t| self.vector(self.u64_at(off + t * 8)?, elem))
            .collect()
    }
}

/// Splits a symlink's union into (entry index, element index): two `u32`s in memory order.
fn split_symlink(data: u64) -> (usize, usize) {
    let b = data.to_ne_bytes();
    let index1 = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let index2 = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
    (index1 as usize, index2 as usize)
}

/// The text of a NUL-terminated (or full-length) C string.
fn c_string(raw: &[u8]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::stats_segment::SyntheticSegment;

    fn seg(f: &SyntheticSegment) -> Segment<'_> {
        Segment {
            base: f.words.as_ptr() as *const u8,
            len: f.words.len() * 8,
            _life: std::marker::PhantomData,
        }
    }

    fn value(f: &SyntheticSegment, name: &str) -> StatValue {
        let seg = seg(f);
        let (dir, n) = seg.directory().unwrap();
        let i = (0..n)
            .find(|i| seg.entry_name(dir + i * ENTRY_SIZE).unwrap() == name)
            .unwrap();
        seg.entry_value(dir, n, i, 0).unwrap()
    }

    #[test]
    fn reads_every_entry_kind() {
        let f = SyntheticSegment::sample();
        assert_eq!(value(&f, "/sys/heartbeat"), StatValue::Scalar(42));
        let sa = value(&f, "/net/ipsec/sa");
        assert_eq!(
            sa.combined_sum(1),
            Some(Combined {
                packets: 22,
                bytes: 2200
            })
        );
        assert_eq!(sa.combined_sum(5), Some(Combined::default()));
        assert_eq!(value(&f, "/if/drops").simple_sum(2), Some(9));
        assert_eq!(
            value(&f, "/if/names"),
            StatValue::Names(vec![Some("local0".into()), None])
        );
        assert_eq!(
            value(&f, "/interfaces/ul0/drops"),
            StatValue::Simple(vec![vec![9]])
        );
        assert_eq!(value(&f, "/gone"), StatValue::Empty);
        assert_eq!(value(&f, "/if/drops").combined_sum(0), None);
    }

    #[test]
    fn pointers_outside_the_segment_are_errors() {
        let mut f = SyntheticSegment::sample();
        // directory pointer below the base
        f.words[4] = 0x1000;
        assert!(matches!(seg(&f).directory(), Err(StatsError::Corrupt(_))));
        // a vector whose length runs past the end
        let mut f = SyntheticSegment::sample();
        let d = f.words[4];
        let hdr = ((d - f.base) / 8 - 1) as usize;
        f.words[hdr] = 1 << 20;
        assert!(matches!(seg(&f).directory(), Err(StatsError::Corrupt(_))));
    }

    /// A client over a file holding the fake segment (VPP hands out a memfd; a file maps
    /// the same way), and the file to change it through.
    fn client_over(f: &SyntheticSegment) -> (StatsClient, std::fs::File, PathBuf) {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!(
            "scrambler-stats-test-{}-{:p}",
            std::process::id(),
            f
        ));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&f.to_bytes()).unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&path).unwrap());
        (
            StatsClient::map_segment(path.clone(), fd).unwrap(),
            file,
            path,
        )
    }

    fn write_word(file: &std::fs::File, word: usize, value: u64) {
        use std::os::unix::fs::FileExt;
        file.write_all_at(&value.to_ne_bytes(), (word * 8) as u64)
            .unwrap();
    }

    #[test]
    fn reads_wait_for_vpp_and_follow_the_epoch() {
        let f = SyntheticSegment::sample();
        let (st, file, path) = client_over(&f);
        assert_eq!(st.simple("/if/drops", 1).unwrap(), 5);
        assert_eq!(
            st.read_present(&["/sys/heartbeat", "/no/such"]).unwrap(),
            vec![Some(StatValue::Scalar(42)), None]
        );
        assert!(matches!(
            st.read_many(&["/no/such"]),
            Err(StatsError::NotFound(_))
        ));
        assert!(matches!(
            st.combined("/if/drops", 0),
            Err(StatsError::WrongType { .. })
        ));
        // VPP busy changing the directory: no read until it is done
        write_word(&file, 3, 1);
        assert!(matches!(st.read("/if/drops"), Err(StatsError::Busy)));
        write_word(&file, 3, 0);
        assert!(st.read("/if/drops").is_ok());
        // the directory changed (the first entry renamed) and the epoch moved: the cached
        // index is dropped
        let dir = ((f.words[4] - f.base) / 8) as usize;
        write_word(&file, dir + 2, u64::from_ne_bytes(*b"/sys/bea"));
        assert!(
            st.read("/sys/beartbeat").is_err(),
            "index rebuilt without an epoch change"
        );
        write_word(&file, 2, 8);
        assert_eq!(st.read("/sys/beartbeat").unwrap(), StatValue::Scalar(42));
        assert!(st.names().unwrap().contains(&"/sys/beartbeat".to_string()));
        // a segment of another layout version is refused
        write_word(&file, 0, 1);
        let fd = OwnedFd::from(std::fs::File::open(&path).unwrap());
        assert!(matches!(
            StatsClient::map_segment(path.clone(), fd),
            Err(StatsError::Version(1))
        ));
        drop(st);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn symlink_halves_are_in_memory_order() {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&3u32.to_ne_bytes());
        b[4..].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(split_symlink(u64::from_ne_bytes(b)), (3, 9));
    }

    #[test]
    fn c_strings_stop_at_nul() {
        assert_eq!(c_string(b"/if/rx\0junk"), "/if/rx");
        assert_eq!(c_string(b"full"), "full");
    }
}
