//! Test support: a real etcd-server on 127.0.0.1 (random free ports, temporary data dir,
//! killed on drop) and a fake `Tunnel` that records every reconcile.
#![allow(dead_code)]

use async_trait::async_trait;
use scrambler_agent::{Agent, AgentConfig, EtcdConfig, Store};
use scrambler_core::{
    ClusterSecret, Mesh, Netns, PeerStatus, ReconcileReport, Result, Tunnel, TunnelStatus,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A real etcd on loopback.
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
}

fn free_port() -> u16 {
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

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::plain(vec![self.endpoint()])
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.config()).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One entry of the shared reconcile log.
#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    pub node: String,
    pub mesh: Mesh,
}

/// A tunnel that records reconciles, and holds "SAs" for the peers of its last mesh.
#[derive(Default)]
pub struct FakeTunnel {
    pub name: String,
    pub applied: Mutex<Vec<Mesh>>,
    pub current: Mutex<Option<Mesh>>,
    /// While set, reconciles of a mesh with more than one rx generation fail.
    pub refuse_new_generation: AtomicBool,
    pub log: Option<Arc<Mutex<Vec<Logged>>>>,
}

impl FakeTunnel {
    pub fn new(name: &str, log: Option<Arc<Mutex<Vec<Logged>>>>) -> Arc<Self> {
        Arc::new(FakeTunnel {
            name: name.into(),
            log,
            ..Default::default()
        })
    }

    pub fn reconciles(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    pub fn mesh(&self) -> Option<Mesh> {
        self.current.lock().unwrap().clone()
    }

    pub fn peer_names(&self) -> Vec<String> {
        self.mesh()
            .map(|m| m.peers.iter().map(|p| p.name.clone()).collect())
            .unwrap_or_default()
    }
}

#[async_trait]
impl Tunnel for FakeTunnel {
    async fn reconcile(&self, _: &Netns, mesh: &Mesh, _: &ClusterSecret) -> Result<ReconcileReport> {
        if self.refuse_new_generation.load(Ordering::SeqCst) && mesh.keys.rx.len() > 1 {
            return Err(scrambler_core::Error::Dataplane {
                dataplane: "fake".into(),
                op: "reconcile".into(),
                reason: "held by the test".into(),
            });
        }
        self.applied.lock().unwrap().push(mesh.clone());
        if let Some(l) = &self.log {
            l.lock().unwrap().push(Logged {
                at: Instant::now(),
                node: self.name.clone(),
                mesh: mesh.clone(),
            });
        }
        *self.current.lock().unwrap() = Some(mesh.clone());
        Ok(ReconcileReport {
            added: mesh.peers.len(),
            ..Default::default()
        })
    }

    async fn status(&self, _: &Netns, mesh: &Mesh) -> Result<TunnelStatus> {
        let cur = self.mesh();
        let peers = mesh
            .peers
            .iter()
            .map(|p| {
                let has = cur.as_ref().is_some_and(|c| c.peer(&p.name).is_some());
                PeerStatus {
                    name: p.name.clone(),
                    outbound: has,
                    inbound: has,
                    steering: has,
                    ..Default::default()
                }
            })
            .collect();
        Ok(TunnelStatus {
            dataplane: "fake".into(),
            encrypted: true,
            fail_closed: true,
            peers,
            ..Default::default()
        })
    }

    async fn remove(&self, _: &Netns) -> Result<ReconcileReport> {
        *self.current.lock().unwrap() = None;
        Ok(ReconcileReport::default())
    }
}

pub fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(vec![7u8; 32]).unwrap()
}

/// A config for node `name` (underlay 192.0.2.<n>), timers short for tests, pod CIDRs
/// claimed from 10.244.0.0/16.
pub fn config(name: &str, n: u8, state: &Path) -> AgentConfig {
    let mut c = AgentConfig::new(
        name,
        vec![format!("192.0.2.{n}").parse().unwrap()],
        state.join(name),
        PathBuf::from("/etc/scrambler/cluster.key"),
    );
    c.pod_cidr_pool = Some(("10.244.0.0/16".parse().unwrap(), 24));
    c.debounce = Duration::from_millis(100);
    c.max_delay = Duration::from_secs(1);
    c.lease_ttl = 2;
    c.retry = Duration::from_millis(200);
    c
}

/// A running agent.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<()>>,
}

impl Running {
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.join.await.unwrap().unwrap();
    }
}

pub async fn spawn(etcd: &Etcd, cfg: AgentConfig, tunnel: Arc<FakeTunnel>) -> Running {
    let store = Store::connect(&etcd.config()).await.unwrap();
    let agent = Agent::new(cfg, store, tunnel, secret()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let join = tokio::spawn(agent.run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        join,
    }
}

/// Polls `f` every 50 ms until it holds or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
