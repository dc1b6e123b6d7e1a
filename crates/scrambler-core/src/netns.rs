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

    /// What the VM tests watch and drive between pods, shared by the xfrm, ipvlan and VPP
    /// VM tests: a tcpdump of the underlay bridge ([`Capture`]), numbered UDP streams
    /// ([`Stream`]) and a ping-reply counter ([`ping_replies`]).
    pub mod wire {
        use super::TestNetns;
        use crate::Netns;
        use std::collections::HashSet;
        use std::io::{BufRead, BufReader};
        use std::net::UdpSocket;
        use std::process::{Child, Command, Stdio};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        /// `n` nodes on a wire: namespace `wire` holds bridge `br0`; node i (1-based) has
        /// `ul0` = 192.0.2.i/24 plugged into it and a default route via 192.0.2.254; one
        /// empty pod namespace per node. Everything goes when it is dropped.
        pub struct Underlay {
            /// Node namespaces, node i at index i - 1.
            pub nodes: Vec<TestNetns>,
            /// One pod namespace per node, same order.
            pub pods: Vec<TestNetns>,
            /// The wire namespace (capture on its `br0`).
            pub wire: TestNetns,
        }

        impl Underlay {
            /// Builds it, naming namespaces `<prefix>w`, `<prefix>n<i>`, `<prefix>p<i>`.
            pub fn new(prefix: &str, n: usize) -> Underlay {
                let wire = TestNetns::new(&format!("{prefix}w"));
                wire.ip(&["link", "add", "br0", "type", "bridge"]);
                wire.ip(&["link", "set", "br0", "up"]);
                let mut nodes = Vec::new();
                let mut pods = Vec::new();
                for i in 1..=n {
                    let node = TestNetns::new(&format!("{prefix}n{i}"));
                    let port = format!("w{i}");
                    node.ip(&[
                        "link", "add", "ul0", "type", "veth", "peer", "name", &port, "netns",
                        &wire.name,
                    ]);
                    node.ip(&["link", "set", "ul0", "up"]);
                    wire.ip(&["link", "set", &port, "master", "br0", "up"]);
                    node.ip(&["addr", "add", &format!("192.0.2.{i}/24"), "dev", "ul0"]);
                    node.ip(&["route", "add", "default", "via", "192.0.2.254"]);
                    nodes.push(node);
                    pods.push(TestNetns::new(&format!("{prefix}p{i}")));
                }
                Underlay { nodes, pods, wire }
            }
        }

        /// tcpdump of the IP packets on bridge `br0` of a wire namespace.
        pub struct Capture {
            child: Child,
        }

        impl Capture {
            /// Starts tcpdump on `br0` of `wire` and waits until it listens.
            pub fn start(wire: &TestNetns) -> Capture {
                let mut child = Command::new("ip")
                    .args(["netns", "exec", &wire.name])
                    .args(["tcpdump", "-Z", "root", "-n", "-l", "-U", "-i", "br0", "ip"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn tcpdump");
                let stderr = child.stderr.take().unwrap();
                // wait for "listening on br0"
                for l in BufReader::new(stderr).lines() {
                    if l.unwrap_or_default().contains("listening on") {
                        break;
                    }
                }
                Capture { child }
            }

            /// Stops the capture and returns its lines.
            pub fn finish(mut self) -> Vec<String> {
                std::thread::sleep(Duration::from_millis(300));
                let _ = self.child.kill();
                let _ = self.child.wait();
                let mut out = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                out.lines().map(str::to_string).collect()
            }
        }

        impl Drop for Capture {
            fn drop(&mut self) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }

        /// Numbered UDP datagrams from one pod to another, one every `every`, while a receiver
        /// thread in the other pod collects them.
        pub struct Stream {
            stop: Arc<AtomicBool>,
            sender: std::thread::JoinHandle<u32>,
            receiver: std::thread::JoinHandle<HashSet<u32>>,
        }

        impl Stream {
            /// Starts sending from address `from.1` in namespace `from.0` to `to.1`:5555 in `to.0`.
            pub fn start(from: (&Netns, &str), to: (&Netns, &str), every: Duration) -> Stream {
                let dst = format!("{}:5555", to.1);
                let bind = dst.clone();
                let rx =
                    to.0.run(move || Ok(UdpSocket::bind(&bind).unwrap()))
                        .unwrap();
                rx.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let src = format!("{}:0", from.1);
                let tx = from
                    .0
                    .run(move || Ok(UdpSocket::bind(&src).unwrap()))
                    .unwrap();
                let stop = Arc::new(AtomicBool::new(false));
                let sending = stop.clone();
                let sender = std::thread::spawn(move || {
                    let mut seq = 0u32;
                    while !sending.load(Ordering::Relaxed) {
                        if let Err(e) = tx.send_to(&seq.to_be_bytes(), &dst) {
                            eprintln!("send {seq}: {e}");
                            break;
                        }
                        seq += 1;
                        std::thread::sleep(every);
                    }
                    seq
                });
                let receiving = stop.clone();
                let receiver = std::thread::spawn(move || {
                    let mut seen = HashSet::new();
                    let mut buf = [0u8; 16];
                    let mut idle_since: Option<Instant> = None;
                    loop {
                        match rx.recv(&mut buf) {
                            Ok(4) => {
                                seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                                idle_since = None;
                            }
                            Ok(_) => {}
                            Err(_) if receiving.load(Ordering::Relaxed) => {
                                // stopped: wait for stragglers for up to 1 s of silence
                                let t = *idle_since.get_or_insert_with(Instant::now);
                                if t.elapsed() > Duration::from_secs(1) {
                                    return seen;
                                }
                            }
                            Err(_) => {}
                        }
                    }
                });
                Stream {
                    stop,
                    sender,
                    receiver,
                }
            }

            /// Stops sending; returns (sent, distinct received).
            pub fn finish(self) -> (u32, u32) {
                self.stop.store(true, Ordering::Relaxed);
                let sent = self.sender.join().unwrap();
                let seen = self.receiver.join().unwrap();
                (sent, seen.len() as u32)
            }
        }

        /// busybox ping from `pod` to `to` (`count` echoes, 2 s wait after the last); the number
        /// of replies.
        pub fn ping_replies(pod: &TestNetns, to: &str, count: u32) -> u32 {
            let (_, out) = pod.exec(&["busybox", "ping", "-c", &count.to_string(), "-W", "2", to]);
            eprintln!("ping {} -> {to}: {}", pod.name, out.trim());
            out.split(" packets received")
                .next()
                .and_then(|s| s.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        }
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
