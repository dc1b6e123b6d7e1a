//! The `scrambler-ipam` binary on storage that refuses writes, exec'd inside a private
//! mount namespace the test makes (root ignores mode bits, so only a read-only mount or a
//! full file system really refuses): a read-only dataDir answers everything that needs no
//! write, and a write that fails leaves neither a lease nor a temp file; and a network
//! name that is not a CNI name never names a lease directory.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_scrambler-ipam");
const NETWORK: &str = "storenet";

/// A private mount namespace, set up by the shell commands `setup` and held open by a
/// `sleep` until dropped.
struct MountNs {
    holder: Child,
}

impl MountNs {
    fn new(setup: &str) -> Self {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-ec"])
            .arg(format!("{setup}\necho ready\nexec sleep 600"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn unshare (util-linux, essential on Debian)");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "mount setup failed: {setup}");
        MountNs { holder }
    }

    /// `path` as seen inside the namespace.
    fn path(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.holder.id())).join(path.strip_prefix("/").unwrap())
    }

    /// Runs the plugin inside the namespace: `cmd` for container `id`, `conf` on stdin.
    fn ipam(&self, cmd: &str, id: &str, conf: &Value) -> Out {
        let mut child = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg(BIN)
            .env_clear()
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/var/run/netns/test")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsenter");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        }
    }
}

impl Drop for MountNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

struct Out {
    ok: bool,
    stdout: String,
}

impl Out {
    #[track_caller]
    fn expect_ok(&self) -> &Self {
        assert!(self.ok, "plugin failed: {}", self.stdout);
        self
    }

    /// The error object's code and details.
    #[track_caller]
    fn error(&self) -> (u64, String) {
        assert!(!self.ok, "expected failure, got {:?}", self.stdout);
        let v: Value = serde_json::from_str(&self.stdout).unwrap();
        let details = v["details"].as_str().unwrap_or_default().to_string();
        (v["code"].as_u64().unwrap(), details)
    }
}

fn conf(data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "bridge",
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": [[{"subnet": "10.40.0.0/24"}]],
            "dataDir": data_dir,
        },
    })
}

/// `conf` with GC's list of valid attachments.
fn gc_conf(data_dir: &Path, valid: &[&str]) -> Value {
    let mut c = conf(data_dir);
    c["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    c
}

/// Every entry under `dir`, recursively, sorted (empty when `dir` does not exist).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().unwrap().is_dir() {
            out.extend(tree(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
        }
        out.push(name);
    }
    out.sort();
    out
}

fn temp_files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// A read-only bind mount of `dir` onto itself.
fn read_only(dir: &Path) -> MountNs {
    let d = dir.display();
    MountNs::new(&format!(
        "mount --bind '{d}' '{d}'\nmount -o remount,bind,ro '{d}'"
    ))
}

#[test]
fn a_read_only_data_dir_answers_what_needs_no_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = MountNs::new("true");
    let added = ns
        .ipam("ADD", "held", &conf(dir))
        .expect_ok()
        .stdout
        .clone();
    let before = tree(dir);
    assert!(before.contains(&format!("{NETWORK}/lock")), "{before:?}");

    let ro = read_only(dir);
    // nothing to release, nothing to collect, nothing to change: success
    let del = ro.ipam("DEL", "never-added", &conf(dir));
    assert!(del.expect_ok().stdout.is_empty());
    ro.ipam("GC", "", &gc_conf(dir, &["held"])).expect_ok();
    ro.ipam("STATUS", "", &conf(dir)).expect_ok();
    let mut check = conf(dir);
    check["prevResult"] = serde_json::from_str(&added).unwrap();
    ro.ipam("CHECK", "held", &check).expect_ok();
    // an ADD the lease already answers needs no write either
    ro.ipam("ADD", "held", &conf(dir)).expect_ok();
    // what must write fails, saying why
    for (cmd, id, c) in [
        ("DEL", "held", conf(dir)),
        ("GC", "", gc_conf(dir, &[])),
        ("ADD", "new", conf(dir)),
    ] {
        let (code, details) = ro.ipam(cmd, id, &c).error();
        assert_eq!(code, 5, "{cmd}: {details}");
        assert!(
            details.contains("is not writable") && details.contains("Read-only file system"),
            "{cmd}: {details}"
        );
    }
    drop(ro);
    assert_eq!(tree(dir), before);

    // a read-only dataDir where this network never leased anything
    let fresh = tempfile::tempdir().unwrap();
    let ro = read_only(fresh.path());
    ro.ipam("DEL", "c1", &conf(fresh.path())).expect_ok();
    ro.ipam("GC", "", &gc_conf(fresh.path(), &[])).expect_ok();
    let (code, details) = ro.ipam("ADD", "c1", &conf(fresh.path())).error();
    assert_eq!(code, 5, "{details}");
    assert!(details.contains("is not writable"), "{details}");
    drop(ro);
    assert!(tree(fresh.path()).is_empty(), "{:?}", tree(fresh.path()));
}

#[test]
fn a_full_file_system_fails_writes_without_leaving_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = MountNs::new(&format!(
        "mount -t tmpfs -o size=64k,mode=0700 tmpfs '{}'",
        tmp.path().display()
    ));
    let dir = ns.path(tmp.path());
    let leases = dir.join(NETWORK);
    ns.ipam("ADD", "c1", &conf(tmp.path())).expect_ok();

    // fill it up, page by page
    let fill_path = dir.join("fill");
    let mut fill = std::fs::File::create(&fill_path).unwrap();
    let page = [0u8; 4096];
    let full = loop {
        if let Err(e) = fill.write_all(&page) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(28), "{full}");

    // the lease itself cannot be written: ADD fails, nothing of it is left
    let (code, details) = ns.ipam("ADD", "c2", &conf(tmp.path())).error();
    assert_eq!(code, 5, "{details}");
    assert!(details.contains("No space left on device"), "{details}");
    assert!(temp_files(&leases).is_empty(), "{:?}", tree(&leases));
    assert!(
        !tree(&leases).iter().any(|n| n.contains("c2")),
        "{:?}",
        tree(&leases)
    );

    // one page free: the lease fits, and the rotation pointer, rewritten in place in the
    // block it has, advances
    let len = fill.metadata().unwrap().len();
    fill.set_len(len - 4096).unwrap();
    ns.ipam("ADD", "c3", &conf(tmp.path())).expect_ok();
    assert!(temp_files(&leases).is_empty(), "{:?}", tree(&leases));
    let pointer = std::fs::read_to_string(leases.join("last_reserved_ip.0")).unwrap();
    assert!(pointer.trim_end().ends_with(".3"), "{pointer:?}");
    ns.ipam("DEL", "c3", &conf(tmp.path())).expect_ok();
    ns.ipam("DEL", "c1", &conf(tmp.path())).expect_ok();
    drop(fill);
}

#[test]
fn a_network_name_the_spec_does_not_allow_names_no_lease_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ns = MountNs::new("true");
    for name in ["a/b", "..", "-a", "a b", ""] {
        let mut c = conf(dir);
        c["name"] = json!(name);
        for cmd in ["ADD", "DEL"] {
            let (code, details) = ns.ipam(cmd, "c1", &c).error();
            assert_eq!(code, 7, "{cmd} {name:?}: {details}");
            assert!(details.contains("field \"name\""), "{details}");
        }
    }
    assert!(tree(dir).is_empty(), "{:?}", tree(dir));
}
