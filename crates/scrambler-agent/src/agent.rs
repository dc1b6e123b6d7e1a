//! The agent's loop: watch → debounce → snapshot → reconcile → register → rotation step.
//!
//! Each sync reads the whole prefix once ([`Store::snapshot`]), cuts this node's mesh from
//! it ([`registry::mesh_for`]) and reconciles the [`Tunnel`] only when that mesh differs
//! from the one last applied. The node reconciles *before* it (re-)registers, so by the
//! time peers learn of it, it already has inbound SAs for every peer it knew of.
//!
//! Fail static: when etcd cannot be read, the last mesh stays programmed (the dataplane is
//! not touched, so it stays fail closed), the status file says etcd is unreachable, and the
//! agent retries; once etcd answers, the next sync catches up by diffing, never by
//! rebuilding. A restarted agent starts from the mesh it last applied (`mesh.json` in its
//! state dir) and, when the dataplane still has its SAs, keeps its epoch: its first
//! reconcile finds everything in place.
//!
//! Keys are never reused: before a mesh reaches the tunnel, the node's [`Ledger`] admits it.
//! An outbound SA that was installed before and is not in the dataplane now (a reset
//! dataplane the epoch check missed, a lost SA) is refused; the agent then takes a new
//! epoch, publishes it, and the next sync re-keys every pair of the node under keys that
//! never sent.
//!
//! Departed peers: a peer whose registration goes (its lease expired: agent stopped, a
//! network blip longer than the TTL) while its claim stays is *held*: it stays in this
//! node's mesh exactly as it was (same epoch, same SAs, routes and policies) for
//! [`AgentConfig::departed_hold`]. Its outbound SA is never deleted meanwhile, so when
//! the peer comes back under the same epoch nothing is installed again (the SA carries on
//! with its sequence counter; the ledger has nothing to refuse) and no node re-keys. What
//! pods send to it meanwhile leaves encrypted under that SA and is lost if the peer is
//! really down: still fail closed. A peer that comes back with a new epoch replaces the
//! held one (that pair re-keys); a peer that is deleted (claim released), whose claim
//! changed, or that conflicts with a live node, is dropped at once; after the hold it is
//! dropped for good, and if it then returns under the old epoch the ledger refuses the
//! deleted SA and this node takes a new epoch — the honest answer after that long.
//! The hold is kept in memory: a restarted agent holds a peer that is absent from etcd
//! but in its last mesh for a full hold from its first sync.

use crate::claims::{self, ClaimRequest};
use crate::debounce::Debouncer;
use crate::record::{Claim, NodeRecord};
use crate::registry;
use crate::rotation::{self, Phase, Step};
use crate::status::{AgentStatus, MESH_FILE};
use crate::store::{Snapshot, Store};
use crate::{epoch, lease};
use etcd_client::WatchOptions;
use ipnet::IpNet;
use scrambler_core::mesh::MAX_PREVIOUS_EPOCHS;
use scrambler_core::{
    Cluster, ClusterSecret, Epoch, Error, Keys, Ledger, Mesh, MeshFile, Netns, Node, NodeId,
    OutboundSa, PreviousEpoch, Result, Tunnel,
};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default debounce quiet period.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
/// Default registration lease TTL (seconds).
pub const DEFAULT_LEASE_TTL: i64 = 15;
/// Default full resync interval.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
/// Default state dir.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/scrambler/agent";
/// Default time a departed peer (lease expired, claim kept) stays in the mesh with its SAs
/// in place, so that it comes back under the same epoch without a re-key.
pub const DEFAULT_DEPARTED_HOLD: Duration = Duration::from_secs(600);
/// Default time the node keeps its inbound SAs of the epoch it left after an epoch change
/// without a dataplane reset (see [`AgentConfig::epoch_grace`]).
pub const DEFAULT_EPOCH_GRACE: Duration = Duration::from_secs(30);
/// Longest epoch grace accepted (one hour).
pub const MAX_EPOCH_GRACE: Duration = Duration::from_secs(3600);
/// Longest departed hold accepted (one day).
pub const MAX_DEPARTED_HOLD: Duration = Duration::from_secs(86_400);

/// What the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// Underlay addresses.
    pub underlay: Vec<IpAddr>,
    /// A fixed node id (`None`: claim a free one).
    pub id: Option<NodeId>,
    /// Fixed pod CIDRs (empty: claim one from `pod_cidr_pool`).
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster pod network and the per-node prefix length.
    pub pod_cidr_pool: Option<(IpNet, u8)>,
    /// The cluster's pod supernets, guarded on the node whether or not every peer is known
    /// (empty: the pool's network).
    pub cluster_cidrs: Vec<IpNet>,
    /// Where the node's ledger of outbound SAs lives (see [`Ledger`]); must survive reboots.
    pub ledger_dir: PathBuf,
    /// The tunnel dataplane's name (`xfrm`, `vpp`), published in the registration.
    pub dataplane: String,
    /// The node's network namespace.
    pub netns: Netns,
    /// Where the epoch, the last mesh and the status file live.
    pub state_dir: PathBuf,
    /// The cluster secret's file (named in the saved mesh file for `scrambler status`).
    pub key_file: PathBuf,
    /// Debounce quiet period.
    pub debounce: Duration,
    /// Longest a change waits for its reconcile.
    pub max_delay: Duration,
    /// Lease TTL (seconds).
    pub lease_ttl: i64,
    /// Retry interval while etcd is unreachable or a reconcile failed.
    pub retry: Duration,
    /// Full resync interval without any change (a missed watch event is caught up then,
    /// and the status file stays fresh).
    pub resync: Duration,
    /// How long a peer whose registration went (lease expired: agent stopped, network
    /// blip) but whose claim is still there stays in this node's mesh as it was, SAs
    /// included (see [`Agent`]'s "Departed peers"); zero drops it at once.
    pub departed_hold: Duration,
    /// After an epoch change without a dataplane reset (a lost or refused outbound SA),
    /// how long the node keeps its inbound SAs of the epoch it left (listed in its mesh's
    /// `previousEpochs`), so that peers still sending under it are received until they
    /// re-key; zero keeps none. Never after a reset (nothing is left to keep).
    pub epoch_grace: Duration,
    /// A file where the agent writes the dataplane's [`scrambler_core::TunnelStatus`]
    /// (JSON, plus `updated`: Unix time, `maxAge`: seconds after which it is stale, and
    /// `clusterCidrs`: the mesh's cluster supernets the guard covers) while the node is
    /// guarded: rewritten with every sync (at least every resync),
    /// removed when the guard is found missing, when the agent starts and when it stops.
    /// The CNI plugin's `tunnelStatusFile`: no pod is networked without a fresh one.
    pub tunnel_status_file: Option<PathBuf>,
    /// Node encryption, put into every mesh the agent builds (`None`: off); its bypass
    /// list should hold the datastore's ports ([`crate::node_encryption::setting`] adds
    /// them).
    pub node_encryption: Option<scrambler_core::NodeEncryption>,
}

impl AgentConfig {
    /// A config with defaults for the timers; the ledger is kept in the state dir.
    pub fn new(node: &str, underlay: Vec<IpAddr>, state_dir: PathBuf, key_file: PathBuf) -> Self {
        AgentConfig {
            node: node.into(),
            underlay,
            id: None,
            pod_cidrs: Vec::new(),
            pod_cidr_pool: None,
            cluster_cidrs: Vec::new(),
            dataplane: "xfrm".into(),
            netns: Netns::default(),
            ledger_dir: state_dir.clone(),
            state_dir,
            key_file,
            debounce: DEFAULT_DEBOUNCE,
            max_delay: Duration::from_secs(2),
            lease_ttl: DEFAULT_LEASE_TTL,
            retry: Duration::from_secs(1),
            resync: DEFAULT_RESYNC,
            departed_hold: DEFAULT_DEPARTED_HOLD,
            epoch_grace: DEFAULT_EPOCH_GRACE,
            tunnel_status_file: None,
            node_encryption: None,
        }
    }
}

enum Event {
    Changed,
    LeaseLost(i64),
}

/// One node's agent.
pub struct Agent {
    cfg: AgentConfig,
    store: Store,
    tunnel: Arc<dyn Tunnel>,
    secret: ClusterSecret,
    claim: Option<Claim>,
    epoch: Option<Epoch>,
    /// Epochs the node left without a dataplane reset, whose inbound SAs it keeps until
    /// their deadline (put into the local node of every mesh it applies).
    previous_epochs: Vec<PreviousEpoch>,
    lease: Option<(i64, JoinHandle<()>)>,
    registered: Option<(i64, NodeRecord)>,
    mesh: Option<Mesh>,
    status: AgentStatus,
    wake_at: Option<Instant>,
    /// Held departed peers: the node as last applied and until when it is held.
    departed: BTreeMap<String, (Node, Instant)>,
    /// Peers whose hold ended but that are still in the applied mesh (the reconcile that
    /// drops them has not succeeded yet): never held again meanwhile.
    dropped: BTreeSet<String>,
}

impl Agent {
    /// An agent for `cfg`, on `store`, driving `tunnel`.
    pub fn new(
        cfg: AgentConfig,
        store: Store,
        tunnel: Arc<dyn Tunnel>,
        secret: ClusterSecret,
    ) -> Result<Self> {
        let mut cfg = cfg;
        scrambler_core::mesh::check_node_name(&cfg.node)?;
        if cfg.cluster_cidrs.is_empty() {
            cfg.cluster_cidrs
                .extend(cfg.pod_cidr_pool.map(|(net, _)| net));
        }
        if cfg.cluster_cidrs.is_empty() {
            return Err(Error::config(format!(
                "node {}: no cluster CIDRs: give the cluster's pod supernets \
                 (--cluster-cidr) or a pod CIDR pool (--pod-cidr-pool)",
                cfg.node
            )));
        }
        if cfg.underlay.is_empty() {
            return Err(Error::config(format!(
                "node {}: no underlay address",
                cfg.node
            )));
        }
        if cfg.epoch_grace > MAX_EPOCH_GRACE {
            return Err(Error::config(format!(
                "node {}: epoch grace of {}s: at most {}s",
                cfg.node,
                cfg.epoch_grace.as_secs(),
                MAX_EPOCH_GRACE.as_secs()
            )));
        }
        if cfg.departed_hold > MAX_DEPARTED_HOLD {
            return Err(Error::config(format!(
                "node {}: departed hold of {}s: at most {}s",
                cfg.node,
                cfg.departed_hold.as_secs(),
                MAX_DEPARTED_HOLD.as_secs()
            )));
        }
        let status = AgentStatus {
            node: cfg.node.clone(),
            id: None,
            epoch: String::new(),
            epoch_reused: false,
            etcd_connected: false,
            etcd_unreachable_since: None,
            etcd_error: None,
            registered: false,
            rotation: None,
            tx: None,
            rx: Vec::new(),
            peers: 0,
            reconciles: 0,
            last_reconcile: None,
            sync_error: None,
            last_report: None,
            reconcile_error: None,
            departed: Vec::new(),
            previous_epochs: Vec::new(),
            guarded: false,
            pid: std::process::id(),
            updated: now(),
        };
        Ok(Agent {
            cfg,
            store,
            tunnel,
            secret,
            claim: None,
            epoch: None,
            previous_epochs: Vec::new(),
            lease: None,
            registered: None,
            mesh: None,
            status,
            wake_at: None,
            departed: BTreeMap::new(),
            dropped: BTreeSet::new(),
        })
    }

    /// Runs until `shutdown` completes. The lease is not revoked on the way out: a restart
    /// within its TTL leaves the node in every mesh. The tunnel status file is removed
    /// first thing (a file left by a previous run says nothing about the dataplane now)
    /// and on the way out.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.remove_tunnel_status_file();
        // a "starting" status (not guarded, not registered, this pid) before anything
        // else: probes never read the previous run's status
        create_private_dir(&self.cfg.state_dir)?;
        self.save_status();
        let r = self.run_loop(shutdown).await;
        self.remove_tunnel_status_file();
        r
    }

    async fn run_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.start().await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watch = spawn_watch(&self.store, tx.clone(), self.cfg.retry);
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(id) = lost_rx.recv().await {
                    let _ = tx.send(Event::LeaseLost(id));
                }
            })
        };
        let mut deb = Debouncer::new(self.cfg.debounce, self.cfg.max_delay);
        deb.poke_now(Instant::now());
        tokio::pin!(shutdown);
        loop {
            let due = match (deb.deadline(), self.wake_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = &mut shutdown => break,
                ev = rx.recv() => match ev {
                    Some(Event::Changed) => deb.poke(Instant::now()),
                    Some(Event::LeaseLost(id)) => {
                        if self.lease.as_ref().is_some_and(|(l, _)| *l == id) {
                            self.lease = None;
                            self.registered = None;
                            self.status.registered = false;
                            self.save_status();
                            deb.poke_now(Instant::now());
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    deb.fire();
                    self.wake_at = None;
                    self.sync(&lost_tx).await;
                }
            }
        }
        watch.abort();
        forward.abort();
        if let Some((_, t)) = self.lease.take() {
            t.abort();
        }
        Ok(())
    }

    /// Before the loop: the state dir, the last mesh, the epoch; with the dataplane's SAs
    /// still there, the last mesh is reconciled (fail static from the first second, and a
    /// no-op on a healthy dataplane). A dataplane that starts over (reboot, VPP restart)
    /// gets the guard at once: the node alone, with its new epoch and no peers, before
    /// etcd is even asked, so pods never reach the cluster CIDRs in cleartext.
    async fn start(&mut self) -> Result<()> {
        create_private_dir(&self.cfg.state_dir)?;
        let last = self.load_last_mesh();
        let (e, reused) = epoch::choose(
            &*self.tunnel,
            &self.cfg.netns,
            &self.cfg.state_dir,
            last.as_ref(),
        )
        .await?;
        self.epoch = Some(e);
        self.status.epoch = e.to_string();
        self.status.epoch_reused = reused;
        tracing::info!(node = %self.cfg.node, epoch = %self.status.epoch, reused, "agent starting");
        if reused {
            if let Some(m) = last {
                // the epochs it left before the restart, while their grace runs (a new
                // epoch after a reset keeps none: their SAs are gone)
                self.previous_epochs = m.local.previous_epochs.clone();
                self.prune_previous_epochs();
                // the node's claim is in the last mesh: reuse it while etcd is away
                self.claim = Some(Claim {
                    id: m.local.id,
                    pod_cidrs: m.local.pod_cidrs.clone(),
                });
                self.reconcile(m).await;
            }
        } else if let Some(alone) = self.guard_only_mesh(last.as_ref(), e) {
            self.reconcile(alone).await;
        }
        self.publish_guard().await;
        self.save_status();
        Ok(())
    }

    /// Reads whether the dataplane's fail-closed guard is in place (for the status and
    /// readiness) and publishes the tunnel status file for the CNI plugin only while it
    /// is: a node whose guard is not (yet) in place has no such file, and the plugin
    /// refuses to network pods without it. Nothing is guarded before a mesh is applied.
    async fn publish_guard(&mut self) {
        let st = match &self.mesh {
            None => None,
            Some(m) => match self.tunnel.status(&self.cfg.netns, m).await {
                Ok(st) => Some(st),
                Err(e) => {
                    tracing::warn!(node = %self.cfg.node, "reading the dataplane's status: {e}");
                    None
                }
            },
        };
        let st = st.filter(|st| st.fail_closed);
        if self.status.guarded != st.is_some() {
            tracing::info!(node = %self.cfg.node, guarded = st.is_some(), "fail-closed guard");
        }
        self.status.guarded = st.is_some();
        let Some(path) = &self.cfg.tunnel_status_file else {
            return;
        };
        let Some(st) = st else {
            self.remove_tunnel_status_file();
            return;
        };
        // stale once two resyncs and a margin passed without a rewrite
        let max_age = self
            .cfg
            .resync
            .as_secs()
            .saturating_mul(2)
            .saturating_add(30);
        // the supernets the guard covers: the CNI plugin checks the guard of each itself
        let cluster_cidrs: Vec<String> = self
            .mesh
            .iter()
            .flat_map(|m| &m.cluster_cidrs)
            .map(|c| c.to_string())
            .collect();
        let r = serde_json::to_value(&st)
            .and_then(|mut v| {
                v["updated"] = now().into();
                v["maxAge"] = max_age.into();
                v["clusterCidrs"] = cluster_cidrs.into();
                serde_json::to_vec_pretty(&v)
            })
            .map_err(|e| Error::decode("tunnel status", e))
            .and_then(|j| write_status_file(path, &j));
        if let Err(e) = r {
            tracing::warn!(node = %self.cfg.node, "tunnel status file: {e}");
        }
    }

    /// Removes the tunnel status file (if any): the CNI plugin networks no pod meanwhile.
    fn remove_tunnel_status_file(&self) {
        let Some(path) = &self.cfg.tunnel_status_file else {
            return;
        };
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(node = %self.cfg.node, "remove tunnel status file {}: {e}",
                    path.display());
            }
            _ => {}
        }
    }

    /// The node alone (no peers) with `epoch`: the guard for the cluster CIDRs and the
    /// bypass for its own pod CIDRs. Needs the node's id and pod CIDRs, from the last mesh
    /// or fixed by the config; a node that claims them from etcd on its very first start
    /// gets the guard with its first sync.
    fn guard_only_mesh(&self, last: Option<&Mesh>, epoch: Epoch) -> Option<Mesh> {
        let (id, pod_cidrs) = match (last, self.cfg.id) {
            (Some(m), _) => (m.local.id, m.local.pod_cidrs.clone()),
            (None, Some(id)) if !self.cfg.pod_cidrs.is_empty() => (id, self.cfg.pod_cidrs.clone()),
            _ => return None,
        };
        Some(Mesh {
            local: scrambler_core::Node {
                name: self.cfg.node.clone(),
                id,
                epoch,
                underlay: self.cfg.underlay.clone(),
                pod_cidrs,
                previous_epochs: Vec::new(),
            },
            peers: Vec::new(),
            // no peers, no SAs: the generation only has to pass the ledger
            keys: last.map(|m| m.keys.clone()).unwrap_or_else(|| {
                let sent = Ledger::open(&self.cfg.ledger_dir, &self.cfg.node)
                    .ok()
                    .and_then(|l| l.generation());
                Keys::single(sent.unwrap_or(1))
            }),
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
            node_encryption: self.cfg.node_encryption.clone(),
        })
    }

    /// True when the dataplane holds `mesh` as it should ([`TunnelStatus::in_place`]):
    /// guarded, every peer up, its host link (VPP) in place. A dataplane changed under the
    /// agent (a VPP restart, a flush, a lost SA or route, a deleted host link) is
    /// reconciled on the next sync even when etcd did not change; a lost outbound SA then
    /// meets the ledger, and the node takes a new epoch.
    ///
    /// [`TunnelStatus::in_place`]: scrambler_core::TunnelStatus::in_place
    async fn dataplane_healthy(&self, mesh: &Mesh) -> bool {
        match self.tunnel.status(&self.cfg.netns, mesh).await {
            Ok(st) => st.in_place(),
            Err(e) => {
                tracing::warn!(node = %self.cfg.node, "reading the dataplane's status: {e}");
                false
            }
        }
    }

    fn load_last_mesh(&self) -> Option<Mesh> {
        let p = self.cfg.state_dir.join(MESH_FILE);
        if !p.exists() {
            return None;
        }
        match MeshFile::load(&p).and_then(|mf| mf.mesh_for(&self.cfg.node)) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!("ignoring the last mesh {}: {e}", p.display());
                None
            }
        }
    }

    async fn sync(&mut self, lost: &mpsc::UnboundedSender<i64>) {
        self.wake(Instant::now() + self.cfg.resync);
        match self.try_sync(lost).await {
            Ok(()) => self.status.sync_error = None,
            Err(e) => {
                tracing::warn!(node = %self.cfg.node, "sync: {e}");
                if is_etcd(&e) {
                    self.etcd_down(&e);
                } else {
                    self.status.sync_error = Some(e.to_string());
                }
                self.retry_soon();
            }
        }
        self.publish_guard().await;
        self.save_status();
    }

    async fn try_sync(&mut self, lost: &mpsc::UnboundedSender<i64>) -> Result<()> {
        let snap = self.store.snapshot().await?;
        self.etcd_up();
        let claim = match &self.claim {
            Some(c) if snap.claims.get(&self.cfg.node) == Some(c) => c.clone(),
            _ => {
                let c = claims::claim(&self.store, &self.claim_request()).await?;
                self.claim = Some(c.clone());
                c
            }
        };
        self.status.id = Some(u32::from(claim.id));
        let record = self.record(&claim);
        let mut live: std::collections::BTreeSet<String> = snap.nodes.keys().cloned().collect();
        live.insert(self.cfg.node.clone());
        let (keys, phase) = rotation::desired(&snap.keys, &live, &snap.acks);
        self.status.rotation = Some(phase.clone());
        let mut mesh = registry::mesh_for(
            &record,
            &snap.nodes,
            &self.cfg.cluster_cidrs,
            keys,
            self.cfg.node_encryption.as_ref(),
        )?;
        self.prune_previous_epochs();
        mesh.local.previous_epochs = self.previous_epochs.clone();
        let mesh = self.hold_departed(mesh, &snap);
        let in_place = self.mesh.as_ref() == Some(&mesh) && self.dataplane_healthy(&mesh).await;
        if !in_place && !self.reconcile(mesh).await {
            self.retry_soon();
            return Ok(());
        }
        // the applied mesh no longer has the peers whose hold ended
        self.dropped.clear();
        self.ensure_registered(&snap, record, lost).await?;
        self.rotation_step(&snap, &phase).await
    }

    /// `mesh` (live peers only) plus the held departed peers: a peer of the applied mesh
    /// that is no longer registered starts its hold; a held peer stays while the hold
    /// runs, its claim is unchanged, it is not registered (a registered peer that the
    /// mesh left out — epoch 0, a conflict — is never held under its old record) and it
    /// fits the mesh (a live node always wins). A peer whose hold ended is not held
    /// again until a reconcile without it succeeded.
    fn hold_departed(&mut self, mut mesh: Mesh, snap: &Snapshot) -> Mesh {
        let now = Instant::now();
        if let Some(applied) = &self.mesh {
            for p in &applied.peers {
                if mesh.peer(&p.name).is_none()
                    && !snap.is_registered(&p.name)
                    && !self.dropped.contains(&p.name)
                    && !self.departed.contains_key(&p.name)
                {
                    // the hold is bounded by the config (MAX_DEPARTED_HOLD)
                    let Some(until) = now.checked_add(self.cfg.departed_hold) else {
                        continue;
                    };
                    tracing::info!(node = %self.cfg.node, peer = %p.name,
                        hold = ?self.cfg.departed_hold, "peer departed: held with its SAs");
                    self.departed.insert(p.name.clone(), (p.clone(), until));
                }
            }
        }
        let node = self.cfg.node.clone();
        let mut dropped = Vec::new();
        self.departed.retain(|name, (p, until)| {
            let claimed = snap
                .claims
                .get(name)
                .is_some_and(|c| c.id == p.id && c.pod_cidrs == p.pod_cidrs);
            let registered = snap.is_registered(name);
            let keep = mesh.peer(name).is_none() && *until > now && claimed && !registered;
            if !keep && mesh.peer(name).is_none() {
                tracing::info!(node = %node, peer = %name, claimed, registered,
                    "departed peer dropped");
                dropped.push(name.clone());
            }
            keep
        });
        self.dropped.extend(dropped);
        let mut unfit = Vec::new();
        for (name, (p, _)) in &self.departed {
            mesh.peers.push(p.clone());
            if let Err(e) = mesh.validate() {
                tracing::warn!(node = %node, peer = %name, "departed peer dropped: {e}");
                mesh.peers.pop();
                unfit.push(name.clone());
            }
        }
        for n in unfit {
            self.departed.remove(&n);
            self.dropped.insert(n);
        }
        mesh.peers.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(first) = self.departed.values().map(|(_, u)| *u).min() {
            self.wake(first + Duration::from_millis(10));
        }
        self.status.departed = self
            .departed
            .iter()
            .map(|(name, (_, until))| crate::status::DepartedPeer {
                name: name.clone(),
                held_until: now_plus(until.saturating_duration_since(now)),
            })
            .collect();
        mesh
    }

    fn claim_request(&self) -> ClaimRequest {
        ClaimRequest {
            name: self.cfg.node.clone(),
            id: self.cfg.id,
            pod_cidrs: self.cfg.pod_cidrs.clone(),
            pool: self.cfg.pod_cidr_pool,
        }
    }

    fn record(&self, claim: &Claim) -> NodeRecord {
        NodeRecord {
            name: self.cfg.node.clone(),
            id: claim.id,
            underlay: self.cfg.underlay.clone(),
            pod_cidrs: claim.pod_cidrs.clone(),
            epoch: self.epoch.map_or(0, Epoch::get),
            dataplane: self.cfg.dataplane.clone(),
        }
    }

    /// Reconciles the tunnel to `mesh`; true when it succeeded (the mesh is then the
    /// current one and saved).
    async fn reconcile(&mut self, mesh: Mesh) -> bool {
        let r = match self.admit(&mesh).await {
            Ok(_ledger) => {
                // the ledger's lock is held until the tunnel is done
                self.tunnel
                    .reconcile(&self.cfg.netns, &mesh, &self.secret)
                    .await
            }
            Err(e) => Err(e),
        };
        self.status.reconciles += 1;
        match r {
            Ok(rep) => {
                tracing::info!(node = %self.cfg.node, peers = mesh.peers.len(), tx = mesh.keys.tx,
                    added = rep.added, updated = rep.updated, removed = rep.removed, "reconciled");
                self.status.last_reconcile = Some(now());
                self.status.reconcile_error = None;
                self.status.last_report = Some(rep.clone());
                self.status.tx = Some(mesh.keys.tx);
                self.status.rx = mesh.keys.rx.iter().copied().collect();
                self.status.peers = mesh.peers.len();
                if let Err(e) = self.save_mesh(&mesh) {
                    tracing::warn!("saving the applied mesh: {e}");
                }
                self.mesh = Some(mesh);
                true
            }
            Err(e) => {
                tracing::warn!(node = %self.cfg.node, "reconcile failed, previous mesh kept: {e}");
                self.status.reconcile_error = Some(e.to_string());
                false
            }
        }
    }

    /// The node's ledger admits `mesh` (and records the outbound SAs it newly installs)
    /// before the tunnel sees it; returned locked. A refused outbound SA makes the agent
    /// take a new epoch, published with the next sync.
    async fn admit(&mut self, mesh: &Mesh) -> Result<Ledger> {
        let mut ledger = Ledger::open(&self.cfg.ledger_dir, &self.cfg.node)?;
        let key_id = self.secret.key_id();
        let installed: BTreeSet<String> = if mesh
            .peers
            .iter()
            .any(|p| ledger.contains(&OutboundSa::to_peer(mesh, p, key_id)))
        {
            let st = self.tunnel.status(&self.cfg.netns, mesh).await?;
            st.peers
                .into_iter()
                .filter(|p| p.outbound)
                .map(|p| p.name)
                .collect()
        } else {
            BTreeSet::new()
        };
        match ledger.admit(mesh, key_id, |p| installed.contains(&p.name)) {
            Ok(_) => Ok(ledger),
            Err(Error::AlreadyExists { object, .. }) => {
                // the epoch whose SAs the dataplane holds is the refused mesh's, which
                // may differ from `self.epoch` (an earlier refusal saved a new epoch to
                // the epoch file, then the agent restarted from the mesh it last applied)
                self.keep_previous_epoch(mesh.local.epoch, mesh).await;
                let avoid = epochs_to_avoid(self.epoch, mesh, &self.previous_epochs);
                let e = Epoch::generate_unlike(&avoid)?;
                epoch::save(&self.cfg.state_dir, e)?;
                self.epoch = Some(e);
                self.status.epoch = e.to_string();
                self.status.epoch_reused = false;
                self.retry_soon();
                Err(Error::AlreadyExists {
                    object,
                    reason: format!(
                        "it sent before (ledger {}) and is not in the dataplane now (or was \
                         replaced since, e.g. under another cluster secret); never \
                         installed twice: the node takes a new epoch ({e}) and re-keys every \
                         pair with it",
                        ledger.path().display()
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Lists `old`, the epoch the node is leaving without a reset, among the previous
    /// epochs for [`AgentConfig::epoch_grace`] — only when the dataplane still holds SAs
    /// of `refused`, the mesh under the old epoch (its inbound SAs are there to keep; after
    /// a reset there is nothing, and the dataplane would make none anew anyway). At most
    /// [`MAX_PREVIOUS_EPOCHS`]: the oldest goes first.
    async fn keep_previous_epoch(&mut self, old: Epoch, refused: &Mesh) {
        self.prune_previous_epochs();
        if self.cfg.epoch_grace.is_zero()
            || !epoch::dataplane_has_sas(&*self.tunnel, &self.cfg.netns, Some(refused)).await
        {
            return;
        }
        let until = now_plus(self.cfg.epoch_grace);
        self.previous_epochs.retain(|p| p.epoch != old);
        self.previous_epochs
            .push(PreviousEpoch { epoch: old, until });
        while self.previous_epochs.len() > MAX_PREVIOUS_EPOCHS {
            self.previous_epochs.remove(0);
        }
        tracing::info!(node = %self.cfg.node, epoch = %old, until,
            "epoch left without a reset: its inbound SAs kept until the peers re-key");
        self.status.previous_epochs = self.previous_epochs.clone();
    }

    /// Drops the previous epochs whose deadline passed, and wakes the loop at the next
    /// deadline: the next reconcile deletes that epoch's inbound SAs.
    fn prune_previous_epochs(&mut self) {
        let now_s = now();
        self.previous_epochs.retain(|p| p.until > now_s);
        if let Some(first) = self.previous_epochs.iter().map(|p| p.until).min() {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(first);
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            self.wake(Instant::now() + left + Duration::from_millis(50));
        }
        self.status.previous_epochs = self.previous_epochs.clone();
    }

    /// The applied mesh as a mesh file (`scrambler status --mesh <state dir>/mesh.json`).
    fn save_mesh(&self, mesh: &Mesh) -> Result<()> {
        let mf = MeshFile {
            cluster: Cluster {
                nodes: std::iter::once(mesh.local.clone())
                    .chain(mesh.peers.iter().cloned())
                    .collect(),
                keys: mesh.keys.clone(),
                cluster_cidrs: mesh.cluster_cidrs.clone(),
                node_encryption: mesh.node_encryption.clone(),
            },
            key_file: self.cfg.key_file.clone(),
        };
        let j = serde_json::to_vec_pretty(&mf).map_err(|e| Error::decode("mesh file", e))?;
        crate::status::write_atomic(&self.cfg.state_dir.join(MESH_FILE), &j, 0o600)
    }

    async fn ensure_registered(
        &mut self,
        snap: &Snapshot,
        record: NodeRecord,
        lost: &mpsc::UnboundedSender<i64>,
    ) -> Result<()> {
        let id = match &self.lease {
            Some((id, _)) => *id,
            None => {
                let id = lease::grant(&self.store, self.cfg.lease_ttl).await?;
                let t = lease::keep_alive(&self.store, id, self.cfg.lease_ttl, lost.clone());
                self.lease = Some((id, t));
                id
            }
        };
        let current = self.registered.as_ref() == Some(&(id, record.clone()))
            && snap.nodes.get(&self.cfg.node) == Some(&record);
        if !current {
            if let Err(e) = self.store.register(&record, id).await {
                // most likely the lease expired under us: start over with a new one
                if let Some((_, t)) = self.lease.take() {
                    t.abort();
                }
                self.registered = None;
                self.status.registered = false;
                return Err(e);
            }
            tracing::info!(node = %record.name, id = %record.id, lease = id, "registered");
            self.registered = Some((id, record));
        }
        self.status.registered = true;
        Ok(())
    }

    async fn rotation_step(&mut self, snap: &Snapshot, phase: &Phase) -> Result<()> {
        let Some(programmed) = self.mesh.as_ref().map(|m| m.keys.clone()) else {
            return Ok(());
        };
        let now = now();
        match rotation::step(
            &snap.keys,
            &self.cfg.node,
            &programmed,
            &snap.acks,
            phase,
            now,
        ) {
            Step::None => {}
            Step::Ack(g) => {
                if let Some((lease, _)) = &self.lease {
                    self.store.ack(g, &self.cfg.node, *lease).await?;
                    tracing::info!(node = %self.cfg.node, generation = g, "acknowledged inbound SAs");
                }
            }
            Step::RecordSwitch(ks) => {
                if self.store.swap_keys(snap.keys_revision, &ks).await? {
                    tracing::info!(next = ?ks.next, "every live node acknowledged: switch recorded");
                }
            }
            Step::Retire(ks) => {
                if let Some(next) = snap.keys.next {
                    if self.store.retire(snap.keys_revision, &ks, next).await? {
                        tracing::info!(generation = ks.current, "old generation retired");
                    }
                }
            }
        }
        if let Phase::Switched {
            retire_at: Some(t), ..
        } = phase
        {
            let wait = Duration::from_secs(t.saturating_sub(now)) + Duration::from_millis(50);
            self.wake(Instant::now() + wait);
        }
        Ok(())
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn retry_soon(&mut self) {
        self.wake(Instant::now() + self.cfg.retry);
    }

    fn etcd_up(&mut self) {
        if !self.status.etcd_connected {
            tracing::info!(node = %self.cfg.node, "etcd reachable");
        }
        self.status.etcd_connected = true;
        self.status.etcd_unreachable_since = None;
        self.status.etcd_error = None;
    }

    fn etcd_down(&mut self, e: &Error) {
        if self.status.etcd_connected || self.status.etcd_unreachable_since.is_none() {
            tracing::warn!(node = %self.cfg.node, "etcd unreachable, keeping the last mesh: {e}");
            self.status.etcd_unreachable_since = Some(now());
        }
        self.status.etcd_connected = false;
        self.status.etcd_error = Some(e.to_string());
    }

    fn save_status(&mut self) {
        self.status.updated = now();
        if let Err(e) = self.status.save(&self.cfg.state_dir) {
            tracing::warn!("writing the agent status: {e}");
        }
    }
}

/// The epochs a node leaving `refused` must not take again: the refused mesh's own
/// epoch (its SAs may be in the dataplane), the agent's current epoch when that differs
/// (it may have been published), and every previous epoch still kept.
fn epochs_to_avoid(
    current: Option<Epoch>,
    refused: &Mesh,
    previous: &[PreviousEpoch],
) -> Vec<Epoch> {
    let mut avoid = vec![refused.local.epoch];
    avoid.extend(current);
    avoid.extend(previous.iter().map(|p| p.epoch));
    avoid.sort();
    avoid.dedup();
    avoid
}

fn is_etcd(e: &Error) -> bool {
    matches!(e, Error::Dataplane { dataplane, .. } if dataplane == "etcd")
}

/// Watches the prefix; every change (and every reconnect, which may have missed some) is
/// an [`Event::Changed`]. Reconnects on its own after `retry`.
fn spawn_watch(store: &Store, tx: mpsc::UnboundedSender<Event>, retry: Duration) -> JoinHandle<()> {
    let mut client = store.client();
    let root = store.layout().root();
    tokio::spawn(async move {
        loop {
            if let Ok((_watcher, mut stream)) = client
                .watch(root.clone(), Some(WatchOptions::new().with_prefix()))
                .await
            {
                // events may have been missed while the watch was down
                if tx.send(Event::Changed).is_err() {
                    return;
                }
                while let Ok(Some(r)) = stream.message().await {
                    if r.canceled() {
                        break;
                    }
                    if !r.events().is_empty() && tx.send(Event::Changed).is_err() {
                        return;
                    }
                }
            }
            if tx.send(Event::Changed).is_err() {
                return;
            }
            tokio::time::sleep(retry).await;
        }
    })
}

/// Writes the tunnel status file (public facts, 0644), creating its directory.
fn write_status_file(path: &std::path::Path, data: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create tunnel status dir", dir.display(), e))?;
    }
    crate::status::write_atomic(path, data, 0o644)
}

fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create state dir", dir.display(), e))
}

fn now_plus(d: Duration) -> u64 {
    now()
        .saturating_add(d.as_secs())
        .saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh_with_local_epoch(epoch: u64) -> Mesh {
        Mesh {
            local: Node {
                name: "a".into(),
                id: NodeId::new(1).unwrap(),
                epoch: Epoch::new(epoch).unwrap(),
                underlay: vec!["192.0.2.1".parse().unwrap()],
                pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
                previous_epochs: Vec::new(),
            },
            peers: Vec::new(),
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            node_encryption: None,
        }
    }

    #[test]
    fn a_refusal_after_a_restart_avoids_the_applied_and_the_saved_epoch() {
        // an earlier refusal saved E2 to the epoch file; the agent restarted from
        // mesh.json, still under E1 (whose SAs are in the dataplane), and is refused again
        let e1 = 0x1111_0000_0000_00a1;
        let e2 = 0x2222_0000_0000_00b2;
        let kept = PreviousEpoch {
            epoch: Epoch::new(0x3333_0000_0000_00c3).unwrap(),
            until: now() + 60,
        };
        let avoid = epochs_to_avoid(
            Some(Epoch::new(e2).unwrap()),
            &mesh_with_local_epoch(e1),
            std::slice::from_ref(&kept),
        );
        let tags: BTreeSet<u8> = avoid.iter().map(|e| e.spi_tag()).collect();
        assert_eq!(tags, BTreeSet::from([0xa1, 0xb2, 0xc3]));
        for _ in 0..64 {
            let e = Epoch::generate_unlike(&avoid).unwrap();
            assert!(
                !tags.contains(&e.spi_tag()),
                "{e} reuses a tag of {avoid:?}"
            );
        }
        // the usual case: the agent's epoch is the refused mesh's
        let avoid = epochs_to_avoid(
            Some(Epoch::new(e1).unwrap()),
            &mesh_with_local_epoch(e1),
            &[],
        );
        assert_eq!(avoid, vec![Epoch::new(e1).unwrap()]);
    }
}
