//! Kernel parameters under `/proc/sys/net`, read and written inside a given namespace.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens it, so the access to
//! another namespace runs on a thread inside it ([`Netns::run_async`]); the caller's own
//! namespace is read in place (procfs answers at once, like the netlink requests made on
//! the same thread).

use scrambler_core::{Error, Netns, Result};
use std::path::PathBuf;

/// Sets `key` (a path below `/proc/sys`, e.g. `net/ipv4/ip_forward`) to `value` in `netns`,
/// writing only when the current value differs.
pub async fn ensure(netns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = PathBuf::from("/proc/sys").join(key);
    let value = value.to_string();
    let what = format!("{} in {netns}", path.display());
    in_netns(netns, move || {
        let cur = std::fs::read_to_string(&path).map_err(|e| Error::io("read sysctl", &what, e))?;
        if cur.trim() == value {
            return Ok(());
        }
        std::fs::write(&path, value.as_bytes()).map_err(|e| Error::io("write sysctl", &what, e))
    })
    .await
}

/// Reads `key` (below `/proc/sys`) in `netns`.
pub async fn read(netns: &Netns, key: &str) -> Result<String> {
    let path = PathBuf::from("/proc/sys").join(key);
    let what = format!("{} in {netns}", path.display());
    in_netns(netns, move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .map_err(|e| Error::io("read sysctl", &what, e))
    })
    .await
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
