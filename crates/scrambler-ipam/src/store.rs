//! Leases on disk: `dataDir/<network>/`, one file per leased address, named by the address.
//!
//! * A lease file holds `{"containerId": …, "ifname": …}`. Files in host-local's format
//!   (`<id>\r\n<ifname>`) are read too, so a network can move over from host-local.
//! * Writes are atomic and durable: temp file, fsync, rename, fsync of the directory. A
//!   crash leaves either no lease or a whole one, never a torn file; so a file that does
//!   not parse was damaged by something else: it is reported (warn, with its path) and its
//!   address counts as taken — never as free.
//! * Removals are not fsynced: a removal lost in a crash leaves a stale lease (an address
//!   leaked until GC), never an address handed out twice.
//! * Every read-modify-write runs under an exclusive `flock` on `<dir>/lock`, so any number
//!   of plugin processes at once never hand out one address twice.
//! * `last_reserved_ip.<set>` remembers where each range set's allocation resumes.

use fs2::FileExt;
use scrambler_core::{AttachmentId, Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TEMP_PREFIX: &str = ".tmp.";

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
}

impl Store {
    /// Opens (creating it if needed) the lease directory `data_dir/network`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store> {
        check_network_name(network)?;
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create lease directory", dir.display(), e))?;
        Ok(Store { dir })
    }

    /// The lease directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the network's lock; it is held until the returned guard is dropped.
    pub fn lock(&self) -> Result<Locked<'_>> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock file", path.display(), e))?;
        file.lock_exclusive()
            .map_err(|e| Error::io("lock", path.display(), e))?;
        Ok(Locked {
            store: self,
            _lock: file,
        })
    }
}

/// A network name becomes a directory name: refuse anything that would escape `dataDir`.
fn check_network_name(network: &str) -> Result<()> {
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(Error::config(format!(
            "network name {network:?} cannot name a lease directory"
        )));
    }
    Ok(())
}

/// The store with its lock held.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: File,
}

impl Locked<'_> {
    fn path_of(&self, ip: IpAddr) -> PathBuf {
        self.store.dir.join(ip.to_string())
    }

    /// Every lease file, corrupt ones included (each corrupt one is logged).
    pub fn scan(&self) -> Result<Vec<LeaseFile>> {
        let dir = &self.store.dir;
        let entries =
            fs::read_dir(dir).map_err(|e| Error::io("read lease directory", dir.display(), e))?;
        let mut leases = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read lease directory", dir.display(), e))?;
            let name = entry.file_name();
            let Some(address) = name.to_str().and_then(|n| n.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let holder = read_holder(&path);
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
        leases.sort_by_key(|l| {
            (
                crate::addr::family_of(l.address) == crate::addr::Family::V6,
                crate::addr::to_u128(l.address),
            )
        });
        Ok(leases)
    }

    /// Writes the lease of `ip` for `id` atomically (temp file, fsync, rename). Call
    /// [`Locked::sync_dir`] once after a batch of writes to make the renames durable.
    pub fn write(&self, ip: IpAddr, id: &AttachmentId) -> Result<()> {
        let record = LeaseRecord {
            container_id: id.container_id.clone(),
            ifname: id.ifname.clone(),
        };
        let body = serde_json::to_vec(&record).map_err(|e| Error::decode("lease record", e))?;
        let path = self.path_of(ip);
        let tmp = self.store.dir.join(format!("{TEMP_PREFIX}{ip}"));
        write_synced(&tmp, &body).map_err(|e| Error::io("write lease", tmp.display(), e))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("commit lease", path.display(), e)
        })
    }

    /// Removes the lease of `ip` (absent is fine).
    pub fn remove(&self, ip: IpAddr) -> Result<()> {
        let path = self.path_of(ip);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(Error::io("remove lease", path.display(), e))
            }
            _ => Ok(()),
        }
    }

    /// Makes renames and removals in the directory durable.
    pub fn sync_dir(&self) -> Result<()> {
        let dir = &self.store.dir;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("sync lease directory", dir.display(), e))
    }

    /// Where allocation from range set `set` resumes (host-local's `last_reserved_ip.N`).
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let path = self.store.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Records the last address reserved from range set `set`. Not fsynced: losing it
    /// only changes where the next allocation starts.
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<()> {
        let path = self.store.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        let tmp = self
            .store
            .dir
            .join(format!("{TEMP_PREFIX}{LAST_RESERVED_PREFIX}{set}"));
        fs::write(&tmp, ip.to_string())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| Error::io("write last reserved address", path.display(), e))
    }
}

fn write_synced(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(body)?;
    f.sync_all()
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
        l.sync_dir().unwrap();
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
        l.remove("10.0.0.2".parse().unwrap()).unwrap();
        l.remove("10.0.0.2".parse().unwrap()).unwrap();
        assert_eq!(l.scan().unwrap().len(), 4);
        l.set_last_reserved(0, "10.0.0.9".parse().unwrap()).unwrap();
        assert_eq!(l.last_reserved(0), Some("10.0.0.9".parse().unwrap()));
        assert_eq!(l.last_reserved(1), None);
    }

    #[test]
    fn network_names_cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "..", "a/b", "."] {
            assert_eq!(Store::open(tmp.path(), bad).unwrap_err().code(), 7);
        }
    }
}
