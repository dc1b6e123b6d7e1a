//! Kernel parameters under `/proc/sys`, read and written inside a given namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens it, so the access to
//! another namespace runs on a thread inside it ([`Netns::run_async`], [`Netns::run`]); the
//! caller's own namespace is read in place (procfs answers at once, like the netlink
//! requests made on the same thread). Keys are paths below `/proc/sys`, e.g.
//! `net/ipv4/ip_forward`.
//!
//! A container runtime mounts the container's `/proc/sys` read-only; a node agent in a pod
//! (host network, `CAP_NET_ADMIN`) is given the host's `/proc/sys/net` as a writable
//! `hostPath` mount elsewhere instead (Cilium's way), and the environment variable
//! `SCRAMBLER_PROC_SYS` names where: keys are then read and written below it. `/proc/sys/net`
//! shows the network namespace of the thread that opens it, wherever it is mounted.

use scrambler_core::{Error, Netns, Result};
use std::path::PathBuf;

/// The environment variable naming where `/proc/sys` is mounted writable, if not there.
pub const PROC_SYS_ENV: &str = "SCRAMBLER_PROC_SYS";

/// Sets `key` to `value` in `netns`, writing only when the current value differs.
pub async fn ensure(netns: &Netns, key: &str, value: &str) -> Result<()> {
    in_netns(netns, ensure_here(netns, key, value)).await
}

/// [`ensure`] for callers without a runtime: blocks while a thread inside `netns` does it.
pub fn ensure_blocking(netns: &Netns, key: &str, value: &str) -> Result<()> {
    netns.run(ensure_here(netns, key, value))
}

/// Reads `key` in `netns`.
pub async fn read(netns: &Netns, key: &str) -> Result<String> {
    let (path, what) = locate(netns, key);
    in_netns(netns, move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::io("read sysctl", &what, e))
    })
    .await
}

/// The path of `key` and how errors name it.
fn locate(netns: &Netns, key: &str) -> (PathBuf, String) {
    let root = std::env::var_os(PROC_SYS_ENV).unwrap_or_else(|| "/proc/sys".into());
    let path = PathBuf::from(root).join(key);
    let what = format!("{} in {netns}", path.display());
    (path, what)
}

/// Sets `key` to `value` in the namespace of the thread that runs it (the one named
/// `netns` in errors), writing only when the current value differs.
fn ensure_here(netns: &Netns, key: &str, value: &str) -> impl FnOnce() -> Result<()> {
    let (path, what) = locate(netns, key);
    let value = value.to_string();
    move || {
        let cur = std::fs::read_to_string(&path).map_err(|e| Error::io("read sysctl", &what, e))?;
        if cur.trim() == value {
            return Ok(());
        }
        std::fs::write(&path, value.as_bytes()).map_err(|e| Error::io("write sysctl", &what, e))
    }
}

async fn in_netns<T, F>(netns: &Netns, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match netns {
        Netns::Current => f(),
        Netns::Path(_) => netns.run_async(f).await,
    }
}
