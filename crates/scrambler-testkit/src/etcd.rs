//! A real etcd (Debian's etcd-server) for tests: on 127.0.0.1 on random free ports, with a
//! temporary data dir, killed when dropped. A missing etcd fails the test naming the
//! package to install (scripts/install-deps.sh test installs it).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real etcd on loopback.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

/// A free TCP port on 127.0.0.1 (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts etcd; panics naming what to install when it is missing.
    pub fn start() -> Etcd {
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        e.spawn();
        e
    }

    /// Its client URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn();
        match child {
            Ok(c) => self.child = Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("etcd not found: install etcd-server (scripts/install-deps.sh test)")
            }
            Err(e) => panic!("start etcd: {e}"),
        }
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.endpoint(), "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            match ok {
                Ok(s) if s.success() => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!("etcdctl not found: install etcd-client (scripts/install-deps.sh test)")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        panic!("etcd did not become healthy in 30s; its log:\n{log}");
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
