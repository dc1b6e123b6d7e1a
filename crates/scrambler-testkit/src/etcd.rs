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
    tls: Option<TlsFiles>,
    /// The named network namespace it runs in (`None`: the caller's).
    netns: Option<String>,
}

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and a client
/// certificate, all signed by that CA (made with `openssl`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: std::path::PathBuf,
    /// etcd's certificate (SAN IP 127.0.0.1).
    pub server_cert: std::path::PathBuf,
    /// etcd's key.
    pub server_key: std::path::PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert: std::path::PathBuf,
    /// Its key.
    pub client_key: std::path::PathBuf,
}

impl TlsFiles {
    /// Makes a CA, a server and a client certificate in `dir`.
    pub fn make(dir: &std::path::Path) -> TlsFiles {
        let f = |n: &str| dir.join(n);
        let openssl = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("openssl: {e}: install openssl"));
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
            ),
            ("client", "extendedKeyUsage=clientAuth"),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ]);
            std::fs::write(f(&format!("{name}.ext")), ext).unwrap();
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        TlsFiles {
            ca: f("ca.crt"),
            server_cert: f("server.crt"),
            server_key: f("server.key"),
            client_cert: f("client.crt"),
            client_key: f("client.key"),
        }
    }
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
            tls: None,
            netns: None,
        };
        e.spawn();
        e
    }

    /// Starts etcd on 127.0.0.1 inside the named network namespace `netns` (`ip netns
    /// exec`), e.g. one a containerised agent joins; its loopback is brought up.
    pub fn start_in(netns: &str) -> Etcd {
        let up = Command::new("ip")
            .args(["netns", "exec", netns, "ip", "link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "lo up in {netns}");
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            // a fresh namespace has every port free
            client_port: free_port(),
            peer_port: free_port(),
            tls: None,
            netns: Some(netns.to_string()),
        };
        e.spawn();
        e
    }

    /// A command run in etcd's namespace.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }

    /// Starts etcd serving clients over TLS only, requiring a client certificate signed by
    /// the test CA (whose files it returns).
    pub fn start_tls() -> (Etcd, TlsFiles) {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::make(dir.path());
        let mut e = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls: Some(tls.clone()),
            netns: None,
        };
        e.spawn();
        (e, tls)
    }

    /// Its client URL (`http://127.0.0.1:<port>`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let mut cmd = self.command("etcd");
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key);
        }
        let child = cmd
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
            let mut ctl = self.command("etcdctl");
            if let Some(t) = &self.tls {
                ctl.arg("--cacert")
                    .arg(&t.ca)
                    .arg("--cert")
                    .arg(&t.client_cert)
                    .arg("--key")
                    .arg(&t.client_key);
            }
            let ok = ctl
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
