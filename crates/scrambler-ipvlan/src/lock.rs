//! [`NodeLock`]: the exclusive lock serialising every change of one node namespace's
//! ipvlan node setup ([`crate::node`]) and registry ([`crate::registry`]) between
//! concurrent CNI invocations of every network.
//!
//! Without it an ADD's registration could interleave with the DEL of the node's last pod
//! (which removes the setup), or two networks' ADDs could each write the table from what
//! they read before the other wrote: a pod would run without re-route and cleartext guard
//! while its ADD reported success.
//!
//! The lock is a `flock(2)` on one file per node namespace in a fixed place,
//! [`crate::registry::NodeRegistry::lock_path`] (`/run/scrambler-ipvlan/_node/<host
//! id>.lock`), whatever `stateDir` a network names. A `flock` belongs to the open file
//! description, so it is released when the holder exits, even by a crash, and two
//! holders in one process exclude each other too. The file is never deleted (deleting a
//! lock file lets two holders lock two different files); it is empty and lives on
//! `/run`'s tmpfs.

use nix::fcntl::{Flock, FlockArg};
use scrambler_core::{Error, Result};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An exclusive lock on the node setup of one node namespace; released on drop.
#[derive(Debug)]
pub struct NodeLock {
    _lock: Flock<File>,
}

impl NodeLock {
    /// Waits for and takes the lock on file `path` (created, with its directory, if
    /// needed). The wait blocks a thread of tokio's blocking pool, not the runtime.
    pub async fn acquire(path: PathBuf) -> Result<NodeLock> {
        tokio::task::spawn_blocking(move || lock_file(&path))
            .await
            .map_err(|e| Error::io("lock ipvlan node setup", "(task)", std::io::Error::other(e)))?
    }
}

fn lock_file(path: &Path) -> Result<NodeLock> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create ipvlan node directory", dir.display(), e))?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(|e| Error::io("open ipvlan node lock", path.display(), e))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        Error::io(
            "lock ipvlan node lock",
            path.display(),
            std::io::Error::from(errno),
        )
    })?;
    Ok(NodeLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Many concurrent holders (tasks on several threads, each with its own open file, as
    /// separate CNI processes have) are never inside at the same time; another file's lock
    /// is independent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn holders_of_one_node_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let seven = dir.path().join("node/7.lock");
        let inside = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (path, inside, entered) = (seven.clone(), inside.clone(), entered.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let _l = NodeLock::acquire(path.clone()).await.unwrap();
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    entered.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(entered.load(Ordering::SeqCst), 80);

        // node 7 held: node 8 still locks at once
        let held = NodeLock::acquire(seven.clone()).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            NodeLock::acquire(dir.path().join("node/8.lock")),
        )
        .await
        .expect("another node's lock does not wait")
        .unwrap();
        // and a second holder of node 7 waits until the first lets go
        let second = tokio::spawn(async move { NodeLock::acquire(seven).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "node 7 is held");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("released on drop")
            .unwrap();
    }
}
