//! Test support: a real etcd-server on 127.0.0.1 (random free ports, temporary data dir,
//! killed on drop) and a fake `Tunnel` that records every reconcile.
#![allow(dead_code)]

use async_trait::async_trait;
use scrambler_agent::{Agent, AgentConfig, EtcdConfig, Store};
use scrambler_core::{
    ClusterSecret, Mesh, Netns, PeerStatus, ReconcileReport, Result, Tunnel, TunnelStatus,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use scrambler_testkit::etcd::Etcd;

/// The agent's view of a test etcd.
pub fn etcd_config(e: &Etcd) -> EtcdConfig {
    EtcdConfig::plain(vec![e.endpoint()])
}

/// A store on a test etcd.
pub async fn store(e: &Etcd) -> Store {
    Store::connect(&etcd_config(e)).await.unwrap()
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
    /// While set (until the next reconcile), every peer's outbound SA reads as lost.
    pub lose_outbound: AtomicBool,
    /// While set, the dataplane reports its fail-closed guard missing.
    pub unguarded: AtomicBool,
    /// While set, every reconcile fails.
    pub refuse_all: AtomicBool,
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
    async fn reconcile(
        &self,
        _: &Netns,
        mesh: &Mesh,
        _: &ClusterSecret,
    ) -> Result<ReconcileReport> {
        if self.refuse_all.load(Ordering::SeqCst)
            || (self.refuse_new_generation.load(Ordering::SeqCst) && mesh.keys.rx.len() > 1)
        {
            return Err(scrambler_core::Error::Dataplane {
                dataplane: "fake".into(),
                op: "reconcile".into(),
                reason: "held by the test".into(),
            });
        }
        self.lose_outbound.store(false, Ordering::SeqCst);
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
                    outbound: has && !self.lose_outbound.load(Ordering::SeqCst),
                    inbound: has,
                    steering: has,
                    ..Default::default()
                }
            })
            .collect();
        Ok(TunnelStatus {
            dataplane: "fake".into(),
            encrypted: true,
            fail_closed: !self.unguarded.load(Ordering::SeqCst),
            peers,
            ..Default::default()
        })
    }

    async fn remove(&self, _: &Netns) -> Result<ReconcileReport> {
        *self.current.lock().unwrap() = None;
        Ok(ReconcileReport::default())
    }

    async fn remove_keeping_guard(&self, netns: &Netns) -> Result<ReconcileReport> {
        self.remove(netns).await
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
    let store = Store::connect(&etcd_config(etcd)).await.unwrap();
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
