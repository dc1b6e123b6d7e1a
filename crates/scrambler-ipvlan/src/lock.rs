//! [`NodeLock`]: the exclusive lock serialising every change of one node namespace's
//! ipvlan node setup ([`crate::node`]) between concurrent CNI invocations.
//!
//! Without it an ADD's `ensure` + `add_pod` could interleave with the DEL of the node's
//! last pod (`remove_pod` → 0 → `remove`): the DEL would delete the node link and the
//! nftables table after the ADD registered its pod, leaving that pod without re-route and
//! without cleartext guard while ADD reported success.
//!
//! The lock is a `flock(2)` on `<stateDir>/node-<host id>.lock` ([`crate::record::host_id`]:
//! one file per node namespace, since several nodes of a lab share one filesystem). A
//! `flock` belongs to the open file description, so it is released when the holder exits,
//! even by a crash, and two holders in one process exclude each other too. The file is
//! never deleted (deleting a lock file lets two holders lock two different files); it is
//! empty and lives on the state directory's tmpfs.

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
    /// The lock file of node namespace `host` (its [`crate::record::host_id`]).
    pub fn path(state_dir: &Path, host: u64) -> PathBuf {
        state_dir.join(format!("node-{host}.lock"))
    }

    /// Waits for and takes the lock of node namespace `host` under `state_dir` (created
    /// if needed). The wait blocks a thread of tokio's blocking pool, not the runtime.
    pub async fn acquire(state_dir: &Path, host: u64) -> Result<NodeLock> {
        let dir = state_dir.to_path_buf();
        let path = Self::path(state_dir, host);
        tokio::task::spawn_blocking(move || lock_file(&dir, &path))
            .await
            .map_err(|e| Error::io("lock ipvlan node setup", "(task)", std::io::Error::other(e)))?
    }
}

fn lock_file(dir: &Path, path: &Path) -> Result<NodeLock> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("create ipvlan state directory", dir.display(), e))?;
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
    /// separate CNI processes have) are never inside at the same time; another node
    /// namespace's lock is independent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn holders_of_one_node_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let inside = Arc::new(AtomicUsize::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (state, inside, entered) = (state.clone(), inside.clone(), entered.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let _l = NodeLock::acquire(&state, 7).await.unwrap();
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
        assert!(NodeLock::path(&state, 7).ends_with("node-7.lock"));

        // node 7 held: node 8 still locks at once
        let _seven = NodeLock::acquire(&state, 7).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), NodeLock::acquire(&state, 8))
            .await
            .expect("another node's lock does not wait")
            .unwrap();
        // and a second holder of node 7 waits until the first lets go
        let second = tokio::spawn({
            let state = state.clone();
            async move { NodeLock::acquire(&state, 7).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "node 7 is held");
        drop(_seven);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("released on drop")
            .unwrap();
    }
}
