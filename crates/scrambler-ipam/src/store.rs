//! Leases on disk: `dataDir/<network>/`, one file per leased address, named by the address.
//!
//! * A lease file holds `{"containerId": …, "ifname": …}`. Files in host-local's format
//!   (`<id>\r\n<ifname>`) are read too, so a network can move over from host-local.
//! * Writes are atomic: temp file, then rename. A crashed process leaves either no lease
//!   or a whole one, never a torn file; so a file that does not parse was damaged by
//!   something else: it is reported (warn, with its path) and its address counts as
//!   taken — never as free.
//! * Nothing is fsynced, as with host-local: a lease only has to outlive its pod, and
//!   what the kernel loses in a power failure or kernel crash (a lease, a removal, an
//!   empty file left by a rename) belongs to pods that the same event killed. A lost
//!   removal or an empty file leaves a stale lease (an address leaked until GC), never an
//!   address handed out twice.
//! * A write that fails (no space, an I/O error, a failed rename) removes its temp file.
//!   Temp files (`.tmp.*`) only exist while a write holds the lock; one that a crash left
//!   is removed by the next scan.
//! * Every read-modify-write runs under an exclusive `flock` on `<dir>/lock`, so any number
//!   of plugin processes at once never hand out one address twice.
//! * A dataDir that cannot be written (a read-only mount, no write permission) still
//!   serves everything that only reads: the lock is then taken shared on the lock file
//!   opened read-only (or not at all where none exists: nothing was ever leased there),
//!   so a DEL or GC with nothing to release, CHECK and STATUS answer as usual, and only
//!   an operation that must write fails, with an I/O error (code 5) saying the lease
//!   directory is not writable.
//! * `last_reserved_ip.<set>` remembers where each range set's allocation resumes. It is
//!   only a hint, rewritten in place ([`Locked::set_last_reserved`]): a torn write only
//!   changes where the next allocation starts.
//! * `by-holder/<container id>@<ifname>@<address>` (names percent-encoded) is a hard link
//!   of each lease file: an index that lets a scan learn every holder from two `readdir`s
//!   instead of reading every lease file. A link is trusted only while it is the same inode
//!   as the lease file it names; as it keeps that inode alive, the number cannot be reused
//!   by a new file, so a lease replaced behind our back (new inode) is read again. Leases
//!   without a valid link (host-local's, a crash between writes) are read and re-linked;
//!   stale links are removed. Links are best effort: the lease files stay
//!   the truth, and [`Locked::scan_verified`] (behind `list`, CHECK, GC, STATUS) reads them
//!   all.

use crate::addr::{family_of, to_u128, Family};
use fs2::FileExt;
use scrambler_core::cni::validate_network_name;
use scrambler_core::{AttachmentId, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TEMP_PREFIX: &str = ".tmp.";
const LINKS_DIR: &str = "by-holder";

/// The content of a lease file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaseRecord {
    container_id: String,
    ifname: String,
}

/// One lease file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseFile {
    /// The leased address (the file name).
    pub address: IpAddr,
    /// The file.
    pub path: PathBuf,
    /// Its holder, or why the file could not be read (a corrupt lease).
    pub holder: std::result::Result<AttachmentId, String>,
}

impl LeaseFile {
    /// True when the file is held by `id`.
    pub fn is_held_by(&self, id: &AttachmentId) -> bool {
        self.holder.as_ref().is_ok_and(|h| h == id)
    }
}

/// The lease directory of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Set when the directory could not be created because the dataDir is not writable.
    unwritable: Option<NotWritable>,
}

/// Why a lease directory cannot be written: the OS error that said so (kept, as a copy,
/// to explain every write refused later).
#[derive(Debug, Clone, Copy)]
struct NotWritable {
    errno: Option<i32>,
    kind: ErrorKind,
}

impl NotWritable {
    /// `Some` when `e` says the file system or the permissions forbid writing.
    fn from_error(e: &std::io::Error) -> Option<Self> {
        matches!(
            e.kind(),
            ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
        )
        .then(|| NotWritable {
            errno: e.raw_os_error(),
            kind: e.kind(),
        })
    }

    fn io_error(self) -> std::io::Error {
        self.errno
            .map(std::io::Error::from_raw_os_error)
            .unwrap_or_else(|| self.kind.into())
    }
}

impl Store {
    /// Opens the lease directory `data_dir/network`, creating it where the dataDir can be
    /// written (see the module's notes on a read-only dataDir). `network` must be a CNI
    /// network name ([`validate_network_name`]; code 7 otherwise).
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        // the name becomes a directory name: a CNI name never escapes `dataDir`
        validate_network_name(network)?;
        let dir = data_dir.join(network);
        let links = dir.join(LINKS_DIR);
        let unwritable = match fs::create_dir_all(&links) {
            Ok(()) => None,
            Err(e) => match NotWritable::from_error(&e) {
                Some(why) => {
                    tracing::debug!(dir = %links.display(), error = %e, "lease directory not writable");
                    Some(why)
                }
                None => return Err(Error::io("create lease directory", links.display(), e)),
            },
        };
        Ok(Store { dir, unwritable })
    }

    /// The lease directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the network's lock; it is held until the returned guard is dropped. Where
    /// the directory cannot be written, the guard is a read-only one: a shared lock (or
    /// none, where no lock file exists), and its writes fail.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let path = self.dir.join(LOCK_FILE);
        let opened = match self.unwritable {
            Some(why) => Err(why),
            None => match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            {
                Ok(file) => Ok(file),
                Err(e) => Err(NotWritable::from_error(&e)
                    .ok_or_else(|| Error::io("open lock file", path.display(), e))?),
            },
        };
        let (lock, read_only) = match opened {
            Ok(file) => {
                file.lock_exclusive()
                    .map_err(|e| Error::io("lock", path.display(), e))?;
                (Some(file), None)
            }
            Err(why) => (self.lock_shared(&path)?, Some(why)),
        };
        Ok(Locked {
            store: self,
            _lock: lock,
            read_only,
        })
    }

    /// The lock file opened read-only and locked shared (writers lock it exclusively; a
    /// shared lock needs no write access), or `None` when there is no lock file.
    fn lock_shared(&self, path: &Path) -> Result<Option<File>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open lock file", path.display(), e)),
        };
        FileExt::lock_shared(&file).map_err(|e| Error::io("lock", path.display(), e))?;
        Ok(Some(file))
    }
}

/// The store with its lock held.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Option<File>,
    /// Set when the lease directory cannot be written: every write is refused.
    read_only: Option<NotWritable>,
}

impl Locked<'_> {
    /// Refuses `op` on `object` when the lease directory cannot be written.
    fn check_writable(&self, op: &'static str, object: &Path) -> Result<()> {
        match self.read_only {
            None => Ok(()),
            Some(why) => Err(Error::io(
                op,
                format!(
                    "{} (the lease directory {} is not writable)",
                    object.display(),
                    self.store.dir.display()
                ),
                why.io_error(),
            )),
        }
    }

    fn path_of(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    fn link_path(&self, ip: IpAddr, id: &AttachmentId) -> PathBuf {
        self.store.dir.join(LINKS_DIR).join(link_name(ip, id))
    }

    /// Every lease file, corrupt ones included (each corrupt one is logged). Holders come
    /// from the `by-holder` links where they are valid; other lease files are read.
    pub fn scan(&self) -> Result<Vec<LeaseFile>> {
        self.scan_with(false)
    }

    /// Like [`Locked::scan`], but reads every lease file (and repairs links that disagree).
    pub fn scan_verified(&self) -> Result<Vec<LeaseFile>> {
        self.scan_with(true)
    }

    fn scan_with(&self, verify: bool) -> Result<Vec<LeaseFile>> {
        let dir = &self.store.dir;
        let links_dir = dir.join(LINKS_DIR);
        // (address, inode) of a lease → the holders its links name (one, unless damaged)
        let mut linked: HashMap<(IpAddr, u64), Vec<(String, AttachmentId)>> = HashMap::new();
        let files = read_dir_inos(dir)?;
        let by_name: HashMap<&str, u64> = files.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        for (name, ino) in read_dir_inos(&links_dir)? {
            match parse_link_name(&name) {
                Some((ip, id)) if by_name.get(ip.to_string().as_str()) == Some(&ino) => {
                    linked.entry((ip, ino)).or_default().push((name, id));
                }
                _ => {
                    let _ = fs::remove_file(links_dir.join(name));
                }
            }
        }
        let mut leases = Vec::new();
        for (name, ino) in &files {
            let Ok(address) = name.parse::<IpAddr>() else {
                if name.starts_with(TEMP_PREFIX) && self.read_only.is_none() {
                    // left by a crash: under the exclusive lock no write is in progress
                    let _ = fs::remove_file(dir.join(name));
                }
                continue;
            };
            let path = dir.join(name);
            let from_link = match linked.remove(&(address, *ino)) {
                Some(mut v) if v.len() == 1 => v.pop().map(|(_, id)| id),
                Some(conflicting) => {
                    for (link, _) in conflicting {
                        let _ = fs::remove_file(links_dir.join(link));
                    }
                    None
                }
                None => None,
            };
            let holder = match from_link {
                Some(id) if !verify => Ok(id),
                _ => {
                    let holder = read_holder(&path);
                    self.repair_link(address, &path, from_link.as_ref(), &holder);
                    holder
                }
            };
            if let Err(why) = &holder {
                tracing::warn!(path = %path.display(), reason = %why,
                    "corrupt lease file: its address stays taken until an operator removes it");
            }
            leases.push(LeaseFile {
                address,
                path,
                holder,
            });
        }
        leases.sort_by_key(|l| (family_of(l.address) == Family::V6, to_u128(l.address)));
        Ok(leases)
    }

    /// Makes the `by-holder` link of a lease file that was read agree with its content.
    fn repair_link(
        &self,
        ip: IpAddr,
        path: &Path,
        linked: Option<&AttachmentId>,
        read: &std::result::Result<AttachmentId, String>,
    ) {
        let read = read.as_ref().ok();
        if linked == read {
            return;
        }
        if let Some(old) = linked {
            let _ = fs::remove_file(self.link_path(ip, old));
        }
        if let Some(id) = read {
            let _ = replace_link(path, &self.link_path(ip, id));
        }
    }

    /// Writes the lease of `ip` for `id` atomically (temp file, rename), with its
    /// `by-holder` link; on failure nothing of it is left.
    pub fn write(&self, ip: IpAddr, id: &AttachmentId) -> Result<()> {
        let path = self.path_of(ip);
        self.check_writable("write lease", &path)?;
        let record = LeaseRecord {
            container_id: id.container_id.clone(),
            ifname: id.ifname.clone(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| Error::decode("lease record", e))?;
        let tmp = self.store.dir.join(format!("{TEMP_PREFIX}{ip}"));
        write_temp(&tmp, &body).map_err(|e| Error::io("write lease", path.display(), e))?;
        // Linked before the rename, so the lease never appears without its link (unless
        // the link fails, e.g. a name too long: then scans read the file).
        let link = self.link_path(ip, id);
        if let Err(e) = replace_link(&tmp, &link) {
            tracing::debug!(link = %link.display(), error = %e, "lease link not made");
        }
        fs::rename(&tmp, &path).map_err(|e| {
            remove_quietly(&tmp);
            let _ = fs::remove_file(&link);
            Error::io("commit lease", path.display(), e)
        })
    }

    /// Removes the lease of `ip` held by `holder` (absent is fine), then its link.
    pub fn remove(&self, ip: IpAddr, holder: Option<&AttachmentId>) -> Result<()> {
        let path = self.path_of(ip);
        self.check_writable("remove lease", &path)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(Error::io("remove lease", path.display(), e))
            }
            _ => {}
        }
        if let Some(id) = holder {
            let _ = fs::remove_file(self.link_path(ip, id));
        }
        Ok(())
    }

    /// Where allocation from range set `set` resumes (host-local's `last_reserved_ip.N`).
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let path = self.store.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let body = read_small(&path).ok()?;
        std::str::from_utf8(&body).ok()?.trim().parse().ok()
    }

    /// Records the last address reserved from range set `set`, overwriting the file in
    /// place, padded with spaces to its length (the reader trims them). Not by temp file
    /// and rename, nor by truncation: replacing a file's data either way makes ext4 write
    /// it out at once (`auto_da_alloc`), which on a busy disk cost a median 0.25 ms and up
    /// to 4 ms per allocation. Losing or tearing it only changes where the next allocation
    /// starts.
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        let path = self.store.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        self.check_writable("write last reserved address", &path)?;
        overwrite_padded(&path, ip.to_string().as_bytes())
            .map_err(|e| Error::io("write last reserved address", path.display(), e))
    }
}

/// The longest `last_reserved_ip` file rewritten in place (an IPv6 address is at most 45
/// bytes); a longer one, not ours, is truncated first.
const LAST_RESERVED_MAX_LEN: u64 = 64;

/// Writes `body` at the start of `path` (created if missing), padded with spaces to the
/// file's length so that nothing of a longer earlier body is left.
fn overwrite_padded(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut len = f.metadata()?.len();
    if len > LAST_RESERVED_MAX_LEN {
        f.set_len(0)?;
        len = 0;
    }
    let mut padded = body.to_vec();
    // at most LAST_RESERVED_MAX_LEN, so it fits
    padded.resize(padded.len().max(len as usize), b' ');
    f.write_all_at(&padded, 0)
}

/// Writes `body` to the new file `tmp`; on failure removes `tmp`.
fn write_temp(tmp: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(tmp)?;
    f.write_all(body).inspect_err(|_| remove_quietly(tmp))
}

/// Removes a file we made and no longer want; a failure leaves nothing worse than the file.
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::debug!(path = %path.display(), error = %e, "could not remove");
    }
}

/// Makes `link` a hard link of `target`, replacing whatever `link` was.
fn replace_link(target: &Path, link: &Path) -> std::io::Result<()> {
    match fs::hard_link(target, link) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            fs::remove_file(link)?;
            fs::hard_link(target, link)
        }
        other => other,
    }
}

/// The names and inode numbers of the entries of `dir` (no per-file syscalls); none when
/// `dir` does not exist (a read-only dataDir where nothing was ever leased).
fn read_dir_inos(dir: &Path) -> Result<Vec<(String, u64)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read lease directory", dir.display(), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read lease directory", dir.display(), e))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.ino()));
        }
    }
    Ok(out)
}

/// `<container id>@<ifname>@<address>`, percent-encoding all but `[A-Za-z0-9._-]`.
fn link_name(ip: IpAddr, id: &AttachmentId) -> String {
    format!("{}@{}@{ip}", encode(&id.container_id), encode(&id.ifname))
}

fn parse_link_name(name: &str) -> Option<(IpAddr, AttachmentId)> {
    let mut parts = name.split('@');
    let (cid, ifname, ip) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let id = AttachmentId::new(decode(cid)?, decode(ifname)?);
    (!id.container_id.is_empty() && !id.ifname.is_empty()).then_some(())?;
    Some((ip.parse().ok()?, id))
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Reads a lease file's holder; `Err` says why the file is corrupt.
fn read_holder(path: &Path) -> std::result::Result<AttachmentId, String> {
    let body = read_small(path).map_err(|e| format!("unreadable: {e}"))?;
    let text = std::str::from_utf8(&body).map_err(|_| "not UTF-8".to_string())?;
    let (container_id, ifname) = if text.trim_start().starts_with('{') {
        let r: LeaseRecord = serde_json::from_str(text).map_err(|e| format!("bad JSON: {e}"))?;
        (r.container_id, r.ifname)
    } else {
        // host-local's format: "<container id>\r\n<ifname>"
        let (id, ifname) = text.split_once("\r\n").ok_or_else(|| {
            format!(
                "neither a JSON lease nor host-local's format: {:?}",
                truncate(text)
            )
        })?;
        (id.trim().to_string(), ifname.trim().to_string())
    };
    if container_id.is_empty() || ifname.is_empty() {
        return Err("empty container id or interface name".into());
    }
    Ok(AttachmentId::new(container_id, ifname))
}

/// Reads a small file with one `open` and one `read` in the common case (no `statx`, no
/// read to hit EOF): scans read every lease file, so syscalls per file count.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 512];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..])?;
        len += n;
        // A regular file reads short only at its end.
        if n == 0 || len < buf.len() {
            buf.truncate(len);
            return Ok(buf);
        }
        buf.resize(len * 2, 0);
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_scans_and_flags_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "net1").unwrap();
        let l = store.lock().unwrap();
        let id = AttachmentId::new("c1", "eth0");
        l.write("10.0.0.2".parse().unwrap(), &id).unwrap();
        fs::write(store.dir().join("10.0.0.3"), "garbage").unwrap();
        fs::write(store.dir().join("10.0.0.4"), "hostlocal-id\r\neth1").unwrap();
        fs::write(
            store.dir().join("fd00::5"),
            "{\"containerId\":\"\",\"ifname\":\"x\"}",
        )
        .unwrap();
        let long = "f".repeat(700);
        fs::write(
            store.dir().join("10.0.0.9"),
            format!("{{\"containerId\":\"{long}\",\"ifname\":\"eth0\"}}"),
        )
        .unwrap();
        let leases = l.scan().unwrap();
        let addrs: Vec<String> = leases.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(
            addrs,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.9", "fd00::5"]
        );
        assert!(leases[0].is_held_by(&id));
        assert!(leases[1].holder.is_err());
        assert_eq!(
            leases[2].holder,
            Ok(AttachmentId::new("hostlocal-id", "eth1"))
        );
        assert_eq!(leases[3].holder, Ok(AttachmentId::new(long, "eth0")));
        assert!(leases[4].holder.is_err());
        l.remove("10.0.0.2".parse().unwrap(), Some(&id)).unwrap();
        l.remove("10.0.0.2".parse().unwrap(), Some(&id)).unwrap();
        assert!(!store
            .dir()
            .join(LINKS_DIR)
            .join(link_name("10.0.0.2".parse().unwrap(), &id))
            .exists());
        assert_eq!(l.scan().unwrap().len(), 4);
        l.set_last_reserved(0, "10.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(l.last_reserved(0), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(l.last_reserved(1), None);
        // rewritten in place: a shorter address after a longer one reads back as itself
        for ip in ["10.0.0.200", "fd00::1:2:3:4", "10.0.0.7"] {
            l.set_last_reserved(0, ip.parse().unwrap()).unwrap();
            assert_eq!(l.last_reserved(0), Some(ip.parse().unwrap()), "{ip}");
        }
        // a file longer than any address (not ours) is replaced, not padded to its length
        let path = store.dir().join("last_reserved_ip.1");
        fs::write(&path, vec![b'x'; 1000]).unwrap();
        l.set_last_reserved(1, "10.0.0.5".parse().unwrap()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"10.0.0.5");
    }

    fn links(store: &Store) -> Vec<String> {
        let mut v: Vec<String> = read_dir_inos(&store.dir().join(LINKS_DIR))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn holder_links_are_trusted_only_for_the_same_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "net1").unwrap();
        let l = store.lock().unwrap();
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let c1 = AttachmentId::new("c1", "eth0");
        l.write(a, &c1).unwrap();
        assert_eq!(links(&store), ["c1@eth0@10.0.0.2"]);
        assert_eq!(l.scan().unwrap()[0].holder, Ok(c1.clone()));

        // replaced behind our back: the link pins the old inode, so the new file is read
        fs::remove_file(store.dir().join("10.0.0.2")).unwrap();
        fs::write(
            store.dir().join("10.0.0.2"),
            "{\"containerId\":\"c2\",\"ifname\":\"eth0\"}",
        )
        .unwrap();
        assert_eq!(
            l.scan().unwrap()[0].holder,
            Ok(AttachmentId::new("c2", "eth0"))
        );
        assert_eq!(links(&store), ["c2@eth0@10.0.0.2"]);

        // a lease without a link (host-local's) is read, then linked
        fs::write(store.dir().join("10.0.0.3"), "hl-ctr\r\neth0").unwrap();
        assert_eq!(
            l.scan().unwrap()[1].holder,
            Ok(AttachmentId::new("hl-ctr", "eth0"))
        );
        assert_eq!(links(&store), ["c2@eth0@10.0.0.2", "hl-ctr@eth0@10.0.0.3"]);

        // damage in place keeps the inode: the fast scan trusts the link, the verified
        // scan reads the file, reports it and drops the link
        fs::write(store.dir().join("10.0.0.3"), "garbage").unwrap();
        assert!(l.scan().unwrap()[1].holder.is_ok());
        assert!(l.scan_verified().unwrap()[1].holder.is_err());
        assert!(l.scan().unwrap()[1].holder.is_err());
        assert_eq!(links(&store), ["c2@eth0@10.0.0.2"]);

        // a link to a lease that is gone is removed
        fs::remove_file(store.dir().join("10.0.0.2")).unwrap();
        l.scan().unwrap();
        assert!(links(&store).is_empty());
    }

    #[test]
    fn link_names_round_trip() {
        let id = AttachmentId::new("a@b%c/d é", "eth0.100");
        let ip: IpAddr = "fd00::1".parse().unwrap();
        let name = link_name(ip, &id);
        assert!(!name.contains('/'));
        assert_eq!(parse_link_name(&name), Some((ip, id)));
        assert_eq!(parse_link_name("x@y"), None);
        assert_eq!(parse_link_name("%zz@eth0@10.0.0.1"), None);
    }

    /// Names in the lease directory that are temp files.
    fn temps(store: &Store) -> Vec<String> {
        read_dir_inos(store.dir())
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    #[test]
    fn failed_writes_leave_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), "net1").unwrap();
        let l = store.lock().unwrap();
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let id = AttachmentId::new("c1", "eth0");
        // a directory where the file goes makes the rename fail
        fs::create_dir_all(store.dir().join("10.0.0.2").join("x")).unwrap();
        fs::create_dir_all(store.dir().join("last_reserved_ip.0").join("x")).unwrap();
        assert_eq!(l.write(ip, &id).unwrap_err().code(), 5);
        assert_eq!(l.set_last_reserved(0, ip).unwrap_err().code(), 5);
        assert!(temps(&store).is_empty(), "{:?}", temps(&store));
        assert!(links(&store).is_empty(), "{:?}", links(&store));
        fs::remove_dir_all(store.dir().join("10.0.0.2")).unwrap();
        // a temp file a crash left is removed by the next scan under the lock
        fs::write(store.dir().join(format!("{TEMP_PREFIX}10.0.0.3")), "{").unwrap();
        assert!(l.scan().unwrap().is_empty());
        assert!(temps(&store).is_empty(), "{:?}", temps(&store));
    }

    #[test]
    fn a_read_only_store_reads_and_refuses_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let erofs = NotWritable::from_error(&std::io::Error::from_raw_os_error(30)).unwrap();
        assert!(NotWritable::from_error(&std::io::Error::from_raw_os_error(28)).is_none());
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let id = AttachmentId::new("c1", "eth0");

        // never created: nothing held, nothing made
        let absent = Store {
            dir: tmp.path().join("absent"),
            unwritable: Some(erofs),
        };
        let l = absent.lock().unwrap();
        assert!(l.scan_verified().unwrap().is_empty());
        let e = l.write(ip, &id).unwrap_err();
        assert_eq!(e.code(), 5);
        assert!(e.to_string().contains("is not writable"), "{e}");
        assert!(e.to_string().contains("Read-only file system"), "{e}");
        drop(l);
        assert!(!tmp.path().join("absent").exists());

        // written before: read under a shared lock, never changed
        let store = Store::open(tmp.path(), "net1").unwrap();
        store.lock().unwrap().write(ip, &id).unwrap();
        let ro = Store {
            dir: store.dir().to_path_buf(),
            unwritable: Some(erofs),
        };
        let l = ro.lock().unwrap();
        let r2 = ro.lock().unwrap();
        assert!(l.scan().unwrap()[0].is_held_by(&id));
        assert_eq!(r2.scan_verified().unwrap().len(), 1);
        assert_eq!(l.remove(ip, Some(&id)).unwrap_err().code(), 5);
        assert_eq!(l.set_last_reserved(0, ip).unwrap_err().code(), 5);
        assert!(store.dir().join("10.0.0.2").exists());
        assert!(temps(&store).is_empty());
    }

    #[test]
    fn network_names_cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "..", "a/b", ".", "-a", "a b"] {
            assert_eq!(Store::open(tmp.path(), bad).unwrap_err().code(), 7);
        }
    }
}
