//! Attachment records: which pod addresses an `"encrypt": true` ADD registered with the
//! node setup, kept on disk so that a DEL (or GC) can unregister exactly them even when the
//! pod's network namespace — and with it the interface that carried the addresses — is
//! already gone (kubelet after a crashed runtime, say; CNI requires DEL to succeed then).
//!
//! One small JSON file per attachment, `<stateDir>/<network>/<container id>:<ifname>`
//! (`:` is the one character neither a container id nor an interface name may contain, so
//! the name is unambiguous), written atomically (temporary file, then rename), mode 0644:
//! it holds nothing secret. The default `stateDir`, [`DEFAULT_STATE_DIR`], is on `/run`, a
//! tmpfs: a record then lives exactly as long as the kernel state it describes (a reboot
//! wipes both the host routes and the records).
//!
//! A record also names the node namespace it was made in (its inode, [`host_id`]), so that
//! nodes sharing one filesystem (the lab, tests: several network namespaces on one host)
//! never unregister each other's pods.
//!
//! The files are a few hundred bytes on tmpfs; they are read and written with blocking
//! calls.

use scrambler_core::cni::validate_network_name;
use scrambler_core::{AttachmentId, Error, Netns, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where records live when the conf has no `"stateDir"`.
pub const DEFAULT_STATE_DIR: &str = "/run/scrambler-ipvlan";

/// What one attachment registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The attachment.
    pub id: AttachmentId,
    /// The node namespace the addresses were registered in ([`host_id`]).
    pub host: u64,
    /// The pod's addresses (host routes out of the node link).
    pub ips: Vec<IpAddr>,
}

/// The records of one network: the directory `<state dir>/<network>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordStore {
    dir: PathBuf,
}

/// The identity of a network namespace while it lives: the inode of its nsfs file.
pub fn host_id(netns: &Netns) -> Result<u64> {
    let path = match netns {
        Netns::Current => PathBuf::from("/proc/thread-self/ns/net"),
        Netns::Path(p) => p.clone(),
    };
    std::fs::metadata(&path)
        .map(|m| m.ino())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::UnknownContainer(format!(
                "network namespace {} does not exist",
                path.display()
            )),
            _ => Error::io("stat netns", path.display(), e),
        })
}

impl RecordStore {
    /// The records of network `network` under `state_dir` (which must be absolute); code 7
    /// for a network name the CNI spec does not allow ([`validate_network_name`]).
    pub fn new(state_dir: &Path, network: &str) -> Result<Self> {
        if !state_dir.is_absolute() {
            return Err(Error::config(format!(
                "ipvlan stateDir {} must be an absolute path",
                state_dir.display()
            )));
        }
        validate_network_name(network)?;
        Ok(RecordStore {
            dir: state_dir.join(network),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `id`; code 4 for an id that cannot be a file name.
    pub fn path(&self, id: &AttachmentId) -> Result<PathBuf> {
        Ok(self.dir.join(file_name(id)?))
    }

    /// Writes `rec` atomically (replacing an older record of the same attachment).
    pub fn write(&self, rec: &Record) -> Result<()> {
        let path = self.path(&rec.id)?;
        let text = serde_json::to_vec(rec)
            .map_err(|e| Error::decode(format!("ipvlan record of {}", rec.id), e))?;
        write_atomically(&self.dir, &path, &text, "write ipvlan record")
    }

    /// The record of `id`, if there is one. A record that cannot be decoded is an error
    /// naming its file.
    pub fn read(&self, id: &AttachmentId) -> Result<Option<Record>> {
        let path = self.path(id)?;
        let rec = match read_file(&path)? {
            Some(r) => r,
            None => return Ok(None),
        };
        if &rec.id != id {
            return Err(Error::decode(
                format!("ipvlan record {}", path.display()),
                format!("it names attachment {}, not {id}", rec.id),
            ));
        }
        Ok(Some(rec))
    }

    /// Deletes the record of `id` (and a temporary file a crashed write left); returns
    /// whether there was one.
    pub fn remove(&self, id: &AttachmentId) -> Result<bool> {
        let name = file_name(id)?;
        remove_file(&self.dir.join(format!(".{name}.tmp")))?;
        remove_file(&self.dir.join(name))
    }

    /// Every record, sorted by attachment. Files that are not records (temporary files,
    /// names that do not parse) are skipped; a record that cannot be decoded is logged and
    /// skipped (it is left in place for a human to look at).
    pub fn list(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for name in dir_names(&self.dir, "list ipvlan records in")? {
            let Some(id) = parse_file_name(&name) else {
                continue;
            };
            match self.read(&id) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {} // removed meanwhile
                Err(e) => tracing::warn!(error = %e, "ipvlan record skipped"),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

/// The names (UTF-8 ones) in directory `dir`; none when it does not exist.
pub(crate) fn dir_names(dir: &Path, op: &'static str) -> Result<Vec<String>> {
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(op, dir.display(), e)),
    };
    let mut out = Vec::new();
    for item in list {
        let item = item.map_err(|e| Error::io(op, dir.display(), e))?;
        if let Ok(name) = item.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

/// Writes `text` to `path` in `dir` (created if needed) through a temporary file renamed
/// over it, mode 0644; a failed write removes the temporary file.
pub(crate) fn write_atomically(
    dir: &Path,
    path: &Path,
    text: &[u8],
    op: &'static str,
) -> Result<()> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::io(
            op,
            path.display(),
            std::io::ErrorKind::InvalidInput.into(),
        ));
    };
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("create ipvlan state directory", dir.display(), e))?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(op, path.display(), e)
    })
}

fn read_file(path: &Path) -> Result<Option<Record>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read ipvlan record", path.display(), e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| Error::decode(format!("ipvlan record {}", path.display()), e))
}

fn remove_file(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove ipvlan record", path.display(), e)),
    }
}

/// `<container id>:<ifname>`, both checked as CNI restricts them (code 4 otherwise).
fn file_name(id: &AttachmentId) -> Result<String> {
    scrambler_core::cni::validate_container_id(&id.container_id)?;
    scrambler_core::cni::validate_ifname(&id.ifname)?;
    Ok(format!("{}:{}", id.container_id, id.ifname))
}

/// The attachment a record file is named for.
fn parse_file_name(name: &str) -> Option<AttachmentId> {
    let (cid, ifname) = name.split_once(':')?;
    let id = AttachmentId::new(cid, ifname);
    file_name(&id).ok().map(|_| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn rec(cid: &str, ifname: &str, ips: &[&str]) -> Record {
        Record {
            id: AttachmentId::new(cid, ifname),
            host: 4026531840,
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn store() -> (tempfile::TempDir, RecordStore) {
        let tmp = tempfile::tempdir().unwrap();
        let s = RecordStore::new(tmp.path(), "pods").unwrap();
        (tmp, s)
    }

    #[test]
    fn write_read_remove_round_trip() {
        let (tmp, s) = store();
        let r = rec("c0ffee", "eth0", &["10.1.1.2", "fd00:1::2"]);
        assert_eq!(s.read(&r.id).unwrap(), None, "nothing before ADD");
        s.write(&r).unwrap();
        let path = tmp.path().join("pods").join("c0ffee:eth0");
        assert_eq!(s.path(&r.id).unwrap(), path);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(s.read(&r.id).unwrap(), Some(r.clone()));
        // a second write replaces it; no temporary file is left
        let r2 = rec("c0ffee", "eth0", &["10.1.1.3"]);
        s.write(&r2).unwrap();
        assert_eq!(s.read(&r.id).unwrap(), Some(r2));
        let names: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["c0ffee:eth0"]);
        assert!(s.remove(&r.id).unwrap());
        assert!(!s.remove(&r.id).unwrap(), "idempotent");
        assert_eq!(s.read(&r.id).unwrap(), None);
    }

    #[test]
    fn names_are_unambiguous_and_listed_sorted() {
        let (_tmp, s) = store();
        // "a-b" + "c" and "a" + "b-c" would both be "a-b-c" with a dash
        for r in [
            rec("a-b", "c", &["10.0.0.1"]),
            rec("a", "b-c", &["10.0.0.2"]),
        ] {
            s.write(&r).unwrap();
        }
        // a leftover temporary file and a stray file are not records
        std::fs::write(s.dir().join(".x:eth0.tmp"), "{").unwrap();
        std::fs::write(s.dir().join("README"), "hello").unwrap();
        let ids: Vec<String> = s.list().unwrap().iter().map(|r| r.id.to_string()).collect();
        assert_eq!(ids, ["a/b-c", "a-b/c"]);
        // remove also takes a crashed write's temporary file
        s.remove(&AttachmentId::new("x", "eth0")).unwrap();
        assert!(!s.dir().join(".x:eth0.tmp").exists());
    }

    #[test]
    fn garbled_or_misnamed_records_are_reported_not_trusted() {
        let (_tmp, s) = store();
        std::fs::create_dir_all(s.dir()).unwrap();
        std::fs::write(s.dir().join("c1:eth0"), "not json").unwrap();
        let id = AttachmentId::new("c1", "eth0");
        let e = s.read(&id).unwrap_err();
        assert!(e.to_string().contains("c1:eth0"), "{e}");
        // a record copied under another attachment's name
        let r = rec("c2", "eth0", &["10.0.0.2"]);
        std::fs::write(s.dir().join("c3:eth0"), serde_json::to_vec(&r).unwrap()).unwrap();
        let e = s.read(&AttachmentId::new("c3", "eth0")).unwrap_err();
        assert!(e.to_string().contains("not c3/eth0"), "{e}");
        assert!(s.list().unwrap().is_empty(), "neither is listed");
    }

    #[test]
    fn bad_names_and_dirs_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(
            RecordStore::new(Path::new("run/x"), "pods")
                .unwrap_err()
                .code(),
            7
        );
        // the CNI name rule: `_node` (the node registry's directory) and `.x` are no
        // network's records
        for net in ["", ".", "..", "a/b", "_node", ".x", "a b"] {
            assert_eq!(
                RecordStore::new(tmp.path(), net).unwrap_err().code(),
                7,
                "{net:?}"
            );
        }
        let s = RecordStore::new(tmp.path(), "pods").unwrap();
        for id in [
            AttachmentId::new("../x", "eth0"),
            AttachmentId::new("c1", "a/b"),
            AttachmentId::new("c:1", "eth0"),
        ] {
            assert_eq!(s.path(&id).unwrap_err().code(), 4, "{id}");
        }
        assert!(s.list().unwrap().is_empty(), "no directory yet: no records");
    }

    #[test]
    fn host_id_is_the_netns_inode() {
        let me = host_id(&Netns::Current).unwrap();
        assert_eq!(
            me,
            host_id(&Netns::path("/proc/thread-self/ns/net")).unwrap()
        );
        assert_eq!(
            host_id(&Netns::path("/run/netns/scr-not-here"))
                .unwrap_err()
                .code(),
            3
        );
    }
}
