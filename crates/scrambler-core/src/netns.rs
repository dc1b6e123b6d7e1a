//! Network namespaces: every Scrambler operation takes the namespace it acts on.
//!
//! A [`Netns`] is either the caller's current namespace or a path (`/run/netns/NAME`,
//! `/proc/PID/ns/net`). [`Netns::run`] runs a closure on a short-lived thread that has
//! entered the namespace; sockets opened there (netlink, …) stay bound to it after the
//! thread ends, which is how the netlink plumbing of every crate reaches a namespace
//! without touching the process's own.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// A network namespace to act on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Netns {
    /// The calling thread's namespace.
    #[default]
    Current,
    /// A namespace file.
    Path(PathBuf),
}

impl Netns {
    /// The namespace at `path`.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Netns::Path(path.into())
    }

    /// The named namespace `/run/netns/NAME` (as `ip netns` makes them).
    pub fn named(name: &str) -> Self {
        Netns::Path(Path::new("/run/netns").join(name))
    }

    /// Checks the namespace exists and is a network namespace.
    pub fn check(&self) -> Result<()> {
        match self {
            Netns::Current => Ok(()),
            Netns::Path(p) => {
                let f = open_file(p)?;
                let st = nix::sys::statfs::fstatfs(f.as_fd())
                    .map_err(|e| Error::io("statfs netns", p.display(), e.into()))?;
                // nsfs (or proc for /proc/PID/ns/net)
                let t = st.filesystem_type();
                if t != nix::sys::statfs::NSFS_MAGIC && t != nix::sys::statfs::PROC_SUPER_MAGIC {
                    return Err(Error::config(format!(
                        "{} is not a network namespace",
                        p.display()
                    )));
                }
                Ok(())
            }
        }
    }

    /// Runs `f` on a thread inside this namespace and returns its result.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = match self {
            Netns::Current => return f(),
            Netns::Path(p) => p.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("scrambler-netns".into())
            .spawn(move || enter_and_call(&path, f))
            .map_err(|e| Error::io("spawn netns thread", self.display(), e))?;
        handle
            .join()
            .map_err(|_| Error::kernel("run in netns", self.display(), "thread panicked"))?
    }

    /// Like [`Netns::run`], without blocking the async runtime: the current namespace's
    /// work goes to the runtime's blocking pool, another namespace's to its own thread,
    /// whose answer the task awaits.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let path = match self {
            Netns::Current => {
                return tokio::task::spawn_blocking(f)
                    .await
                    .map_err(|e| Error::kernel("run in netns", "task", e))?
            }
            Netns::Path(p) => p.clone(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("scrambler-netns".into())
            .spawn(move || {
                let _ = tx.send(enter_and_call(&path, f));
            })
            .map_err(|e| Error::io("spawn netns thread", self.display(), e))?;
        rx.await
            .map_err(|_| Error::kernel("run in netns", self.display(), "thread panicked"))?
    }

    /// The namespace's file as a CNI result names it (an interface's `sandbox`); for the
    /// current namespace, the calling thread's.
    pub fn sandbox(&self) -> String {
        match self {
            Netns::Path(p) => p.display().to_string(),
            Netns::Current => "/proc/thread-self/ns/net".into(),
        }
    }

    /// Opens the namespace's file ([`Netns::sandbox`]), e.g. to create a link in it. A file
    /// that does not exist is [`Error::UnknownContainer`].
    pub fn open(&self) -> Result<std::fs::File> {
        std::fs::File::open(self.sandbox()).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::UnknownContainer(format!("network namespace {self} does not exist"))
            }
            _ => Error::io("open netns", self, e),
        })
    }

    /// For messages.
    pub fn display(&self) -> String {
        match self {
            Netns::Current => "current netns".into(),
            Netns::Path(p) => p.display().to_string(),
        }
    }
}

/// Opens the namespace file `path`; a missing one is [`Error::UnknownContainer`].
fn open_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::UnknownContainer(format!(
            "network namespace {} does not exist",
            path.display()
        )),
        _ => Error::io("open netns", path.display(), e),
    })
}

/// Moves the calling thread into the namespace at `path`, then calls `f`.
fn enter_and_call<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let file = open_file(path)?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("enter netns", path.display(), e.into()))?;
    f()
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_netns_is_unknown_container() {
        let e = Netns::path("/run/netns/definitely-not-here")
            .check()
            .unwrap_err();
        assert_eq!(e.code(), 3);
        let e = Netns::path("/run/netns/definitely-not-here")
            .run(|| Ok(()))
            .unwrap_err();
        assert_eq!(e.code(), 3);
    }

    #[test]
    fn regular_file_is_not_a_netns() {
        let e = Netns::path("/etc/hostname").check().unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
    }

    #[test]
    fn run_async_enters_the_namespace_on_its_own_thread_and_reports_failures() {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ns = Netns::path("/proc/self/ns/net");
            let (entered, thread) = ns
                .run_async(move || {
                    let name = std::thread::current().name().map(String::from);
                    Ok((ino("/proc/thread-self/ns/net"), name))
                })
                .await
                .unwrap();
            assert_eq!(entered, ino("/proc/self/ns/net"));
            assert_eq!(thread.as_deref(), Some("scrambler-netns"));
            let e = Netns::path("/run/netns/definitely-not-here")
                .run_async(|| Ok(()))
                .await
                .unwrap_err();
            assert_eq!(e.code(), 3);
            let e = ns
                .run_async(|| -> Result<()> { panic!("closure fails") })
                .await
                .unwrap_err();
            assert!(format!("{e:?}").contains("thread panicked"), "{e:?}");
            assert_eq!(Netns::Current.run_async(|| Ok(7)).await.unwrap(), 7);
        });
    }

    #[test]
    fn current_netns_runs_inline() {
        assert_eq!(Netns::Current.run(|| Ok(5)).unwrap(), 5);
        assert!(Netns::path("/proc/self/ns/net").check().is_ok());
    }
}
