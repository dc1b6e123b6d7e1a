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
                let f = std::fs::File::open(p).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::UnknownContainer(format!(
                        "network namespace {} does not exist",
                        p.display()
                    )),
                    _ => Error::io("open netns", p.display(), e),
                })?;
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
            .spawn(move || -> Result<T> {
                let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Error::UnknownContainer(format!(
                        "network namespace {} does not exist",
                        path.display()
                    )),
                    _ => Error::io("open netns", path.display(), e),
                })?;
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::io("enter netns", path.display(), e.into()))?;
                f()
            })
            .map_err(|e| Error::io("spawn netns thread", self.display(), e))?;
        handle
            .join()
            .map_err(|_| Error::kernel("run in netns", self.display(), "thread panicked"))?
    }

    /// Like [`Netns::run`], without blocking the async runtime.
    pub async fn run_async<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.run(f))
            .await
            .map_err(|e| Error::kernel("run in netns", "task", e))?
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

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

/// Test helpers: namespaces that tests create and always remove.
#[cfg(feature = "test-util")]
pub mod testing {
    use super::Netns;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A named network namespace (`ip netns add`), deleted on drop with everything in it.
    #[derive(Debug)]
    pub struct TestNetns {
        /// Its name under /run/netns.
        pub name: String,
    }

    impl TestNetns {
        /// Creates `scr-<prefix>-<pid>-<n>` with `lo` up.
        pub fn new(prefix: &str) -> Self {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("scr-{prefix}-{}-{n}", std::process::id());
            quiet_del(&name);
            run(&["ip", "netns", "add", &name]);
            run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
            TestNetns { name }
        }

        /// As a [`Netns`].
        pub fn netns(&self) -> Netns {
            Netns::named(&self.name)
        }

        /// Path of the namespace file.
        pub fn path(&self) -> std::path::PathBuf {
            std::path::Path::new("/run/netns").join(&self.name)
        }

        /// Runs `ip -n NAME args…` and returns stdout; panics on failure (tests only).
        pub fn ip(&self, args: &[&str]) -> String {
            let mut v = vec!["ip", "-n", &self.name];
            v.extend_from_slice(args);
            run(&v)
        }

        /// Two echoes to `dst` from inside the namespace; true when one came back.
        pub fn ping(&self, dst: &str) -> bool {
            Command::new("ip")
                .args([
                    "netns", "exec", &self.name, "ping", "-c", "2", "-W", "2", dst,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }

        /// A veth `a_if` here — `b_if` in `b`, both up.
        pub fn veth(&self, a_if: &str, b: &TestNetns, b_if: &str) {
            veth(self, a_if, b, b_if)
        }

        /// Deletes the namespace now (dropping it later is harmless).
        pub fn delete(&self) {
            quiet_del(&self.name);
        }

        /// Runs `ip netns exec NAME cmd…`, returns (success, stdout+stderr).
        pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(cmd)
                .output()
                .expect("spawn ip netns exec");
            let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&out.stderr));
            (out.status.success(), s)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            quiet_del(&self.name);
        }
    }

    /// `ip netns del NAME`, silently: a missing namespace is fine, and stray stderr would
    /// garble libtest's result lines when tests run inside the VM.
    fn quiet_del(name: &str) {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Joins two namespaces with a veth pair `a_if` (in `a`) – `b_if` (in `b`), both up.
    pub fn veth(a: &TestNetns, a_if: &str, b: &TestNetns, b_if: &str) {
        a.ip(&[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ]);
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }

    fn run(args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
    fn current_netns_runs_inline() {
        assert_eq!(Netns::Current.run(|| Ok(5)).unwrap(), 5);
        assert!(Netns::path("/proc/self/ns/net").check().is_ok());
    }
}
