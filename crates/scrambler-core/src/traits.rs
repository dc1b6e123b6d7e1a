//! The three traits every dataplane implements: [`Ipam`], [`Tunnel`] and [`Attach`].
//!
//! None of them holds process-global state: each call names the network namespace it acts
//! on, so one process can drive many nodes (the lab, tests, an embedding agent).

use crate::error::{Error, Result};
use crate::keys::ClusterSecret;
use crate::mesh::{Generation, Mesh};
use crate::netns::Netns;
use crate::result::CniResult;
use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What identifies one attachment: the container and the interface inside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentId {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl AttachmentId {
    /// A new id.
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        AttachmentId {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// [`Error::CheckFailed`] on this attachment (`attachment <id>`), for `reason`.
    pub fn check_failed(&self, reason: impl Into<String>) -> Error {
        Error::CheckFailed {
            object: format!("attachment {self}"),
            reason: reason.into(),
        }
    }

    /// The outcome of [`Attach::check`] for this attachment: `Ok` when `diffs` is empty,
    /// else [`AttachmentId::check_failed`] listing them, `; `-separated.
    pub fn check_outcome(&self, diffs: &[String]) -> Result<()> {
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(self.check_failed(diffs.join("; ")))
        }
    }
}

impl std::fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// A request for addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocRequest {
    /// Who the addresses are for.
    pub id: AttachmentId,
    /// Specific addresses asked for (`args.cni.ips`, `CNI_ARGS IP=`); empty means any.
    #[serde(default)]
    pub requested: Vec<IpAddr>,
}

/// One lease held by the allocator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Holder.
    pub id: AttachmentId,
    /// The leased address.
    pub address: IpAddr,
    /// The range (subnet) it came from.
    pub subnet: IpNet,
}

/// Address management.
///
/// ```
/// use scrambler_core::{AllocRequest, AttachmentId, CniResult, Ipam, IpConfig, Lease, Result};
/// use std::sync::Mutex;
///
/// /// A toy allocator handing out 10.0.0.2 to one holder.
/// struct One(Mutex<Option<AttachmentId>>);
///
/// #[async_trait::async_trait]
/// impl Ipam for One {
///     async fn allocate(&self, req: &AllocRequest) -> Result<CniResult> {
///         *self.0.lock().unwrap() = Some(req.id.clone());
///         Ok(CniResult { ips: vec![IpConfig { address: "10.0.0.2/24".parse().unwrap(),
///             gateway: None, interface: None }], ..Default::default() })
///     }
///     async fn release(&self, _: &AttachmentId) -> Result<()> { *self.0.lock().unwrap() = None; Ok(()) }
///     async fn check(&self, id: &AttachmentId) -> Result<Vec<Lease>> { Ok(vec![]) }
///     async fn gc(&self, _: &[AttachmentId]) -> Result<Vec<Lease>> { Ok(vec![]) }
///     async fn list(&self) -> Result<Vec<Lease>> { Ok(vec![]) }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let ipam = One(Mutex::new(None));
/// let r = ipam.allocate(&AllocRequest { id: AttachmentId::new("c1", "eth0"), requested: vec![] }).await?;
/// assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
/// ipam.release(&AttachmentId::new("c1", "eth0")).await?;
/// # Ok::<(), scrambler_core::Error>(()) }).unwrap();
/// ```
#[async_trait]
pub trait Ipam: Send + Sync {
    /// Allocates one address per configured range set. Idempotent: a second call for the
    /// same id returns the same addresses.
    async fn allocate(&self, req: &AllocRequest) -> Result<CniResult>;
    /// Releases every lease of `id`; releasing an unknown id succeeds.
    async fn release(&self, id: &AttachmentId) -> Result<()>;
    /// The leases of `id` (empty when it holds none).
    async fn check(&self, id: &AttachmentId) -> Result<Vec<Lease>>;
    /// Releases every lease whose holder is not in `valid`; returns what was released.
    async fn gc(&self, valid: &[AttachmentId]) -> Result<Vec<Lease>>;
    /// Every lease.
    async fn list(&self) -> Result<Vec<Lease>>;
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// Objects created.
    pub added: usize,
    /// Objects changed in place.
    pub updated: usize,
    /// Stale objects deleted.
    pub removed: usize,
    /// Objects already as desired.
    pub unchanged: usize,
}

impl ReconcileReport {
    /// True when the dataplane already matched.
    pub fn is_noop(&self) -> bool {
        self.added == 0 && self.updated == 0 && self.removed == 0
    }
}

/// One peer's tunnel as the dataplane has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Peer underlay address.
    pub underlay: Option<IpAddr>,
    /// An outbound SA of the tx generation is installed.
    pub outbound: bool,
    /// Inbound SAs are installed for every live rx generation.
    pub inbound: bool,
    /// Policies / routes steering the peer's pod CIDRs into the tunnel are installed.
    pub steering: bool,
    /// The generation used to send.
    pub tx_generation: Option<Generation>,
    /// Generations with an inbound SA.
    pub rx_generations: Vec<Generation>,
    /// Packets sent / received.
    pub packets_out: u64,
    /// Packets received.
    pub packets_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Replay-window drops on inbound SAs.
    pub replay_errors: u64,
    /// Integrity (ICV) failures on inbound SAs.
    pub integrity_errors: u64,
}

impl PeerStatus {
    /// Tunnel fully up.
    pub fn is_up(&self) -> bool {
        self.outbound && self.inbound && self.steering
    }
}

/// A node's tunnel status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    /// Dataplane name.
    pub dataplane: String,
    /// Traffic between pod CIDRs is encrypted (false must be shown loudly).
    pub encrypted: bool,
    /// The fail-closed guard (catch-all block) is in place.
    pub fail_closed: bool,
    /// Per-peer state.
    pub peers: Vec<PeerStatus>,
    /// Global error counters of the dataplane (e.g. /proc/net/xfrm_stat), non-zero ones.
    pub errors: BTreeMap<String, u64>,
    /// Bytes of ESP overhead the dataplane adds.
    pub overhead: u32,
}

/// Key in [`TunnelStatus::errors`] when the dataplane's host link (the link joining the
/// node's host to a dataplane outside the kernel, e.g. VPP's) is missing or incomplete:
/// a reconcile makes it again, so a caller that reconciles when the dataplane is not as it
/// should be treats it like a peer that is not up.
pub const HOST_LINK_MISSING: &str = "ScramblerHostLinkMissing";

impl TunnelStatus {
    /// True when the dataplane holds the mesh as a reconcile leaves it: fail closed, every
    /// peer up, and no part a reconcile makes reported missing ([`HOST_LINK_MISSING`]).
    pub fn in_place(&self) -> bool {
        self.fail_closed
            && self.peers.iter().all(PeerStatus::is_up)
            && !self.errors.contains_key(HOST_LINK_MISSING)
    }
}

/// The encrypted node-to-node mesh.
///
/// ```no_run
/// use scrambler_core::{ClusterSecret, Cluster, Netns, Tunnel};
/// async fn apply(tunnel: &dyn Tunnel, cluster: &Cluster, me: &str) -> scrambler_core::Result<()> {
///     let secret = ClusterSecret::from_file("/etc/scrambler/cluster.key".as_ref())?;
///     let mesh = cluster.mesh_for(me)?;
///     let node = Netns::named("node1");
///     let report = tunnel.reconcile(&node, &mesh, &secret).await?;
///     assert!(tunnel.reconcile(&node, &mesh, &secret).await?.is_noop()); // idempotent
///     println!("{} added, {} removed", report.added, report.removed);
///     for p in tunnel.status(&node, &mesh).await?.peers { println!("{} up={}", p.name, p.is_up()); }
///     Ok(())
/// }
/// ```
#[async_trait]
pub trait Tunnel: Send + Sync {
    /// Brings the dataplane in `netns` to `mesh`: adds what is missing, updates what
    /// changed, deletes what is stale — only objects this dataplane owns.
    async fn reconcile(
        &self,
        netns: &Netns,
        mesh: &Mesh,
        secret: &ClusterSecret,
    ) -> Result<ReconcileReport>;
    /// What the dataplane has, per peer of `mesh`.
    async fn status(&self, netns: &Netns, mesh: &Mesh) -> Result<TunnelStatus>;
    /// Removes everything this dataplane owns in `netns`, including the fail-closed guard:
    /// pods that still run on the node may then reach other nodes' pods in cleartext.
    async fn remove(&self, netns: &Netns) -> Result<ReconcileReport>;
    /// Removes the mesh from `netns` — SAs, tunnels, steering into them — but leaves the
    /// fail-closed guard for the cluster's pod supernets in place (steering of pod CIDRs
    /// may stay as drops), so traffic between pod CIDRs is dropped, never sent in
    /// cleartext, while pods still run. A later `reconcile` brings the mesh back; `remove`
    /// takes the guard too.
    async fn remove_keeping_guard(&self, netns: &Netns) -> Result<ReconcileReport>;
}

/// A request to attach a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachRequest {
    /// Container and interface.
    pub id: AttachmentId,
    /// The pod's network namespace (CNI_NETNS).
    pub pod_netns: Netns,
    /// Extra CNI_ARGS, as key/value pairs.
    #[serde(default)]
    pub args: Vec<(String, String)>,
    /// Interface MTU; `None` lets the backend derive one.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// Puts an interface into a pod's network namespace.
///
/// A driver holds only its topology (network, mode, MTU policy): the caller opens the
/// connections into the node's and the pod's namespace once per command, checking the pod
/// namespace on the way, and hands them to every call as [`Attach::Sockets`] (all of
/// Scrambler's attachments use scrambler-netlink's `AttachSockets`, whose `open_for_add`,
/// `open` and `open_for_del` are the prologues of ADD, CHECK and DEL).
///
/// ```no_run
/// use scrambler_core::{Attach, AttachRequest, AttachmentId, CniResult, Netns};
/// async fn add<A: Attach + ?Sized>(
///     attach: &A,
///     sockets: &A::Sockets, // opened by the caller for this pod's ADD
///     addrs: &CniResult,
/// ) -> scrambler_core::Result<CniResult> {
///     let req = AttachRequest {
///         id: AttachmentId::new("c0ffee", "eth0"),
///         pod_netns: Netns::path("/run/netns/pod1"),
///         args: vec![],
///         mtu: None,
///     };
///     let result = attach.attach(sockets, &req, addrs).await?;
///     attach.check(sockets, &req, &result).await?;
///     Ok(result)
/// }
/// ```
#[async_trait]
pub trait Attach: Send + Sync {
    /// The connections a call works through: to the node's namespace (where the node side
    /// lives) and to `req.pod_netns`, opened once per command by the caller.
    type Sockets: Send + Sync;

    /// Creates the pod interface in `req.pod_netns` with the addresses and routes of
    /// `addrs`, wiring the node side, through `sockets` (opened for this ADD, with the
    /// pod namespace checked and `CNI_IFNAME` free in it). All-or-nothing: on error
    /// nothing is left. Returns the result with `interfaces` filled and
    /// `ips[].interface` pointing at them.
    async fn attach(
        &self,
        sockets: &Self::Sockets,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult>;
    /// Verifies the interface, addresses and routes against `expected`, saying what differs.
    async fn check(
        &self,
        sockets: &Self::Sockets,
        req: &AttachRequest,
        expected: &CniResult,
    ) -> Result<()>;
    /// Removes what `attach` made. Idempotent: succeeds when the netns or interface is gone
    /// (`sockets` then has no pod connection; DEL may come without `CNI_NETNS`).
    async fn detach(&self, sockets: &Self::Sockets, req: &AttachRequest) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_host_link_means_the_dataplane_is_not_in_place() {
        let up = PeerStatus {
            outbound: true,
            inbound: true,
            steering: true,
            ..Default::default()
        };
        let mut st = TunnelStatus {
            fail_closed: true,
            peers: vec![up.clone()],
            ..Default::default()
        };
        assert!(st.in_place());
        // counters (e.g. a stats segment not read) say nothing about what is in place
        st.errors.insert("ScramblerStatsUnavailable".into(), 1);
        assert!(st.in_place());
        st.errors.insert(HOST_LINK_MISSING.into(), 1);
        assert!(!st.in_place());
        st.errors.clear();
        st.peers[0].steering = false;
        assert!(!st.in_place());
        st.peers[0].steering = true;
        st.fail_closed = false;
        assert!(!st.in_place());
    }
}
