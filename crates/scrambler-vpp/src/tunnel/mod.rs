//! Scrambler's VPP dataplane: the encrypted mesh as per-peer IPIP tunnels protected by ESP.
//!
//! For every peer of the mesh, on the node's VPP:
//!
//! * an IPIP tunnel `local underlay -> peer underlay`, instance [`tunnel_instance`] (so it is
//!   named `ipip<instance>`), tagged `scrambler:peer=<name>`;
//! * ESP SAs, AES-GCM-128 with the key and salt of [`ClusterSecret::sa`], ESN and
//!   anti-replay on: one outbound SA of the mesh's tx generation and one inbound SA per rx
//!   generation, with ids from [`sa_id`] — inbound ones in the slot ([`sa_id_in_slot`])
//!   where VPP has them, or a free one — plus, after an epoch change without a reset, one
//!   inbound SA per rx generation for each previous epoch of the local node still kept
//!   ([`scrambler_core::Node::previous_epochs`]: kept while VPP has them, never made anew,
//!   deleted after their deadline; at most 4 inbound SAs per peer, the newest epochs first);
//! * `ipsec tunnel protect` binding them to the tunnel (VPP encrypts what the tunnel carries:
//!   on the wire it is outer IP / ESP / inner IP, like kernel tunnel-mode ESP);
//! * one route per pod CIDR of the peer, leading either into the protected tunnel or to
//!   drop (see *Fail closed*);
//! * in the pods' VRF ([`POD_TABLE_ID`], where the pods' interfaces are), one route per
//!   underlay address of the peer, the same way: pods reach the peer's host (an API
//!   server, a kubelet) through the tunnel, while the tunnel's own packets to that address
//!   are looked up in table 0.
//!
//! And once per node, whatever its peers: a drop route for each of the mesh's
//! `clusterCidrs` (the cluster guard, see *Fail closed*), and the underlay guard, an IPsec
//! SPD on the underlay interfaces dropping local pods' traffic to the peers' underlay
//! addresses that reaches table 0 (pods outside the pods' VRF, a peer's route missing; see
//! `underlay_guard`).
//!
//! What Scrambler owns is recognised by number ranges — tunnel instances
//! `TUNNEL_INSTANCE_BASE..+65536`, SA ids `SA_ID_BASE..+2^24` (slot 0) and, in slots 1..=3
//! up to `SA_ID_BASE+2^26`, only inbound SAs of a peer (see [`owned_sa`]), the SPD
//! [`UNDERLAY_SPD_ID`] — and, for routes (VPP routes
//! carry no tag), by the path preference [`ROUTE_PREFERENCE`] (or a path via an owned
//! tunnel); nothing else is ever touched. [`VppTunnel::reconcile`] dumps the state, diffs it
//! against the mesh and changes only what differs; a second run is a no-op.
//!
//! # Fail closed
//!
//! Pod traffic to a peer must never leave in cleartext, nor as plain IPIP, nor out of the
//! uplink by some other (e.g. default) route while the tunnel, its protection or its SAs are
//! missing or being replaced:
//!
//! * **The guard is the route itself.** As long as a peer is in the mesh, each of its pod
//!   CIDRs has an owned route in table 0, so a less specific route never takes its traffic.
//!   Its single path is `drop` until the tunnel is protected and up; then one FIB update
//!   swaps it into the tunnel (and back to drop before anything is taken away), so there is
//!   no moment without a route.
//! * **The cluster guard.** Each of the mesh's `clusterCidrs` (the pod supernets) has an
//!   owned drop route, below the peers' more specific routes: pod traffic to a node not yet
//!   in the mesh, or removed from it, is dropped, never sent out of the uplink by a default
//!   route. Removing a peer takes its routes away and leaves the guard;
//!   [`Tunnel::remove_keeping_guard`] (`scrambler mesh remove` without `--remove-guard`)
//!   takes tunnels and SAs away but leaves every owned route, pointed to drop, so pods that
//!   still run cannot leak; only [`Tunnel::remove`] takes the guard too.
//! * **The underlay guard.** A local pod's packet to a peer's underlay address would leave
//!   the uplink in the clear by table 0's route; a /32 route cannot stop it (the tunnel's
//!   outer packets use it), so an SPD bound to the underlay interfaces discards `local pod
//!   CIDR → peer underlay` and bypasses everything else. It goes in right after the
//!   cluster guard, follows the peers, is kept by [`Tunnel::remove_keeping_guard`] and
//!   taken by [`Tunnel::remove`]; `status` reports it missing as not fail-closed. A
//!   departed peer's underlay route in the pods' VRF stays as a drop (a tombstone, as on
//!   the kernel: its discard goes with it), one naming a local address goes; only
//!   [`Tunnel::remove`] deletes them.
//! * **Order in reconcile**: routes of new peers go in as drop first; before a tunnel is
//!   re-created, an SA replaced or a lost protection restored, the peer's routes go to drop;
//!   then tunnel (admin down), SAs, protection, admin up, and only then routes into the
//!   tunnel. A key rotation changes the protection with one atomic update and needs no drop.
//!   The cluster guard goes in first, then stale routes go, stale tunnels and SAs last.
//! * **Pipelined**: the peers are reconciled concurrently on the one API socket (up to 256
//!   in flight, so their round trips overlap), and each phase's independent calls (stale
//!   routes, stale tunnels, stale SAs, the state dumps) are sent together. Within a peer the
//!   order above holds: a call is sent only after the reply of the one it depends on was
//!   checked; only calls that do not depend on each other go out together (a new tunnel's
//!   tag, unnumbered and IPv6; a peer's new SAs). On the first error no further call of any
//!   peer is sent.
//! * **Behind our back** (measured with a real VPP, `tests/failclosed_live.rs`, capturing the
//!   underlay while a pod pings, with a 10/8 route out of the uplink in place): with its
//!   protection deleted VPP does *not* send plain IPIP — the tunnel's midchain adjacency
//!   drops (`ip4-drop`), also after the tunnel or uplink flaps; SAs deleted through the API
//!   stay until the protection releases them; a deleted tunnel leaves its route with a
//!   path that drops. In every case the wire carries only ESP, `status` turns
//!   `encrypted`/`fail_closed` false, and the next reconcile repairs it.
//! * **A lost outbound SA is not re-created** under the same key: its sequence numbers, the
//!   AES-GCM IVs, would restart (nonce reuse, and replay drops at the peer). When the SA is
//!   missing but evidence says it existed (see the docs of the private `outbound_lost`: the
//!   inbound SA of the same generation under the current epochs is still there, or the
//!   peer's tunnel is and no inbound SA of the peer under other epochs says the tunnel was
//!   made under those; and no rotation is switching), the peer stays behind its drop routes, its tunnel down,
//!   `status` reports [`LOST_OUTBOUND`], and a new epoch for the node (or a key rotation)
//!   repairs it. An outbound SA
//!   found with other attributes than planned is likewise not replaced but deleted, and the
//!   peer is lost from then on (re-adding it would restart its sequence numbers under the
//!   same key). A VPP that lost
//!   everything (restart) cannot tell: the node comes back with a new epoch (every key
//!   with it new, see [`scrambler_core::epoch`]), and the node's ledger
//!   ([`scrambler_core::Ledger`], used by `scrambler mesh apply`) refuses to install an
//!   outbound SA it installed before. Likewise, while the node keeps a previous epoch,
//!   the new epoch's outbound SA deleted together with the tunnel's protection and the new
//!   epoch's inbound SA looks like one never made (the kept inbound SA of the old epoch
//!   is all that is left, as after a lost outbound SA repaired by a new epoch): only the
//!   ledger refuses it.
//! * Not covered: a third party deleting or overriding Scrambler's route itself (the FIB has
//!   one entry per prefix); `status` then shows `steering` and `fail_closed` false.
//!
//! # Node ↔ remote pod
//!
//! Each node has a tunnel address (the first address of its pod CIDR,
//! [`scrambler_core::Node::tunnel_addresses`]) that its own traffic to remote pods comes
//! from, so that traffic is pod-CIDR traffic the mesh encrypts. On a VPP node the host's
//! stack holds it on the *host link* ([`VppTunnel::with_host_link`], module `host_link`):
//! a veth pair whose VPP end VPP takes with af_packet, like a pod's. The host routes the
//! cluster CIDRs into VPP from the tunnel address, VPP routes the tunnel address to the
//! host; both directions then follow the routes above (drop until the tunnel is protected
//! and up, the cluster guard for nodes not in the mesh). Without the host link a remote
//! pod's packet to the node's tunnel address is dropped by the cluster guard, and the
//! host has no path to remote pods. The host link is reconciled after the tunnels: an
//! error making it (a name taken by someone else's interface, a kernel or VPP error) fails
//! the reconcile with the tunnels already applied, and the next reconcile (an agent's
//! retry, the next `mesh apply`) tries again; `status` reports it missing
//! ([`HOST_LINK_MISSING`]) meanwhile. A veth pair of its names that a reconcile made but
//! did not mark with its alias (it died in between: the kernel takes no alias when creating
//! a link) is adopted. Not done: traffic to the node's own underlay address
//! ends in VPP (VPP holds it; a host service there is not reached); IPv6 tunnel addresses
//! are not held on the host link.
//!
//! # Node encryption
//!
//! With [`Mesh::node_encryption`] on (and the host link), the node's host reaches each
//! peer's underlay address through the mesh, steered like a kernel node's host (see
//! `host_steering`): policy-routing rules in the host's namespace — per bypass port
//! `ipproto tcp|udp sport|dport N goto <nop>` ([`HOST_RULE_PRIORITY`]), per steered protocol
//! `ipproto P lookup` [`HOST_ROUTE_TABLE`] (+1), a `nop` (+2), the shapes and planning
//! shared with the kernel dataplane ([`scrambler_netlink::SteeringRules`]) — and in that
//! table a route `<peer underlay>/32 via` the gateway `src <tunnel address>` (route
//! protocol [`scrambler_netlink::ROUTE_PROTO`]), so the host's steered packets enter VPP's
//! pods' VRF, whose route for that address leads into the peer's tunnel (drop while it is
//! not protected and up). Bypass-port traffic goes on with the host's main table: a host
//! that reaches its datastore at a peer's underlay address through a NIC of its own keeps
//! reaching it whatever the mesh's state (also after `remove_keeping_guard`, which keeps
//! the rules and routes). The inner packet is `tunnel address → peer underlay`:
//! pod-CIDR-sourced, so a kernel peer's mesh policy accepts it and its answer is pod
//! traffic, encrypted; a VPP peer answers ICMP itself into the tunnel. A departed peer's
//! address keeps its route as long as VPP keeps its drop route (the tombstone): the host's
//! traffic to it meets that drop rather than whatever other route the host has. An address
//! the host link cannot carry — an IPv6 one (the link holds no IPv6 tunnel address), or
//! every one on a node without an IPv4 tunnel address — gets `unreachable` in the table:
//! the host's steered traffic to it is refused, never sent another way; status counts
//! such addresses in [`NODE_ENCRYPTION_HOST_UNCOVERED`] and reconcile warns. A missing or
//! changed steering route or rule is [`NODE_STEERING_MISSING`] (`fail_closed` false until
//! a reconcile). Without the host link, Scrambler does not steer the host at all: every
//! target address counts as uncovered, `fail_closed` is false, reconcile warns. Turning
//! node encryption off takes the rules and routes away; [`Tunnel::remove`] too. A release
//! before this one put the /32s into the host's main table: the reconcile removes them
//! (after the table and rules are in place).
//!
//! The underlay guard also discards VPP's own traffic from a local underlay address to a
//! peer's, but for ESP and the bypass ports (see `underlay_guard`): VPP answers a packet
//! to its underlay address from table 0, where the peer's address is the tunnel's outer
//! destination, so that answer would otherwise leave in the clear.
//!
//! Limits: a peer addressing this node's *underlay* address reaches VPP, not the host: a
//! VPP peer's host (which sends from its tunnel address) gets ICMP answers through the
//! mesh, a kernel peer's host (which sends from its underlay address) gets none (the guard
//! drops VPP's answer), and TCP finds no listener on any peer (a host service would need
//! linux-cp or punting); address a VPP node's host at its tunnel address. The rules and
//! routes steer by destination only: a host socket bound to another host address (a
//! management address) still takes the route into VPP, and a VPP peer's answer to that
//! source is not pod or peer traffic and leaves its uplink in the clear. The host's
//! routes to departed peers last as long as VPP's tombstones (until the guard is
//! removed): an address reassigned to another host meanwhile is not reached. IPv6 ESP that
//! VPP fragments (next header 44) and VPP's ICMP errors between underlay addresses meet
//! the node discard: dropped, not leaked (an underlay MTU mis-sizing shows it).
//!
//! # Counters
//!
//! `status` reads VPP's statistics segment ([`scrambler_vpp_api::stats`], `stats.sock` beside
//! `api.sock` unless [`VppTunnel::with_stats_socket`] says otherwise): per peer the
//! packets/bytes of its outbound and inbound SAs (all generations, `/net/ipsec/sa` at each
//! SA's `stat_index`), replay drops (`/net/ipsec/sa/err/replay`) and authentication
//! failures (`integ_error` + `decryption_failed`: VPP counts an AES-GCM tag mismatch as the
//! latter). Non-zero per-SA errors summed over peers go into `errors` as `ipsec-sa/<name>`,
//! tunnel interface drops as `<peer>/tunnel-drops`; [`VppTunnel::counters`] gives the full
//! per-peer view including the tunnel interface's rx/tx. Without the segment, `status`
//! still answers, with [`STATS_UNAVAILABLE`] in `errors`.
//!
//! # Code
//!
//! A reconcile reads top to bottom through: `plan.rs` (what the mesh asks for),
//! `readback.rs` (what VPP has of ours, and how it compares), `reconcile.rs` (the phases and
//! each peer's fail-closed order), `guard.rs` (a peer's drop routes) and `ops.rs` (one VPP
//! call each). `ids.rs` holds the number ranges that mark what is ours, `status.rs` builds
//! `status` and the counters.

mod cluster_guard;
mod guard;
mod host_link;
mod host_steering;
mod ids;
mod ops;
mod plan;
mod readback;
mod reconcile;
mod status;
mod underlay_guard;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use scrambler_core::{
    ClusterSecret, Error, Mesh, Netns, ReconcileReport, Result, Tunnel, TunnelStatus,
};
use scrambler_vpp_api::VppClient;

use self::ops::TunnelCalls;
use self::plan::{place_inbound, plan};
use self::readback::OwnedState;
use self::reconcile::{reconcile_all, remove_all};
use self::status::{peer_counters, CounterSnapshot};
use crate::endpoint::{fixed_socket, vpp_err, NodeVpp, DATAPLANE};

pub use self::cluster_guard::guard_in_place;
pub use self::host_link::{
    HOST_LINK_ALIAS, HOST_LINK_IF, HOST_LINK_MAC, HOST_LINK_TAG, HOST_LINK_VPP_IF,
};
pub use self::host_steering::{HOST_ROUTE_TABLE, HOST_RULE_PRIORITY};
pub use self::ids::{
    owned_sa, sa_id, sa_id_in_slot, sa_id_slots, tunnel_instance, tunnel_peer, Direction,
    POD_TABLE_ID, ROUTE_PREFERENCE, SA_ID_BASE, SA_SLOTS, TAG_PREFIX, TUNNEL_INSTANCE_BASE,
    UNDERLAY_SPD_ID,
};
pub use self::status::{
    PeerCounters, HOST_LINK_MISSING, LOST_OUTBOUND, NODE_ENCRYPTION_HOST_UNCOVERED,
    NODE_STEERING_MISSING, POD_TO_PEER_UNDERLAY_DROPPED, STATS_UNAVAILABLE, UNDERLAY_GUARD_MISSING,
};
pub use crate::endpoint::SocketResolver;

/// The VPP dataplane (implements [`Tunnel`]).
///
/// ```no_run
/// use scrambler_core::{ClusterSecret, Netns, Tunnel};
/// use scrambler_vpp::tunnel::VppTunnel;
/// # async fn f(mesh: scrambler_core::Mesh, secret: ClusterSecret) -> scrambler_core::Result<()> {
/// let vpp = VppTunnel::new("/run/vpp/api.sock");
/// let report = vpp.reconcile(&Netns::Current, &mesh, &secret).await?;
/// assert!(vpp.reconcile(&Netns::Current, &mesh, &secret).await?.is_noop());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VppTunnel {
    vpp: NodeVpp,
    stats: Arc<SocketResolver>,
    host_link: bool,
    underlay_mtu: u32,
}

impl std::fmt::Debug for VppTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VppTunnel")
            .field("opts", &self.vpp.opts)
            .field("host_link", &self.host_link)
            .field("underlay_mtu", &self.underlay_mtu)
            .finish()
    }
}

impl VppTunnel {
    /// One VPP, whose API socket is `api_socket`, for whatever namespace is passed.
    pub fn new(api_socket: impl Into<PathBuf>) -> Self {
        Self::with_resolver(fixed_socket(api_socket))
    }

    /// A VPP per node: `resolve` maps the node's namespace to its VPP's API socket.
    ///
    /// The stats socket defaults to `stats.sock` beside the API socket (where a
    /// startup.conf with `statseg { socket-name <run dir>/stats.sock }` puts it, as the
    /// lab's does); see [`VppTunnel::with_stats_socket`].
    pub fn with_resolver(
        resolve: impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        let resolve: Arc<SocketResolver> = Arc::new(resolve);
        let api = resolve.clone();
        VppTunnel {
            vpp: NodeVpp::new(resolve, "scrambler-tunnel"),
            stats: Arc::new(move |ns| Ok(api(ns)?.with_file_name("stats.sock"))),
            host_link: false,
            underlay_mtu: crate::attach::DEFAULT_UNDERLAY_MTU,
        }
    }

    /// With `on`, reconcile also joins the node's host (the namespace passed to it) to its
    /// VPP by the host link (see [`HOST_LINK_IF`] and the module's *Node ↔ remote pod*):
    /// the host holds the node's tunnel address and reaches remote pods through the mesh,
    /// remote pods reach it there. Off by default (a VPP whose host is not the namespace
    /// Scrambler is given, or that holds the tunnel address itself, must not get one).
    /// Turning it off does not remove an existing link; [`Tunnel::remove`] does. Node
    /// encryption ([`Mesh::node_encryption`]) steers the host's traffic through this link:
    /// without it Scrambler does not steer the host (VPP's own traffic is still guarded),
    /// reconcile warns, and status counts every peer underlay address in
    /// [`NODE_ENCRYPTION_HOST_UNCOVERED`] with `fail_closed` false.
    pub fn with_host_link(mut self, on: bool) -> Self {
        self.host_link = on;
        self
    }

    /// The MTU of the node's underlay; the host link ([`VppTunnel::with_host_link`]) gets
    /// the MTU pods get on it, the ESP and IPIP overhead left room (see
    /// [`crate::VppAttach::with_underlay_mtu`], the CNI conf's `vpp.underlayMtu`); default
    /// [`DEFAULT_UNDERLAY_MTU`](crate::attach::DEFAULT_UNDERLAY_MTU). A reconcile changes
    /// an existing link's MTU to it.
    pub fn with_underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Where the stats segment socket (`statseg { socket-name … }`) of a node's VPP is.
    pub fn with_stats_socket(
        mut self,
        resolve: impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        self.stats = Arc::new(resolve);
        self
    }

    async fn connect(&self, netns: &Netns) -> Result<VppClient> {
        self.vpp.connect(netns).await
    }

    /// The counters of every owned SA and tunnel of the node's VPP, per peer of `mesh`,
    /// read from VPP's statistics segment.
    pub async fn counters(&self, netns: &Netns, mesh: &Mesh) -> Result<Vec<PeerCounters>> {
        let c = self.connect(netns).await?;
        let have = OwnedState::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let _ = c.close().await;
        let snap = self.snapshot(netns).await?;
        Ok(mesh
            .peers
            .iter()
            .map(|p| peer_counters(&have, &snap, p))
            .collect())
    }

    /// Reads the counters Scrambler reports from the stats segment (blocking work off the
    /// runtime: a socket round trip and a map).
    async fn snapshot(&self, netns: &Netns) -> Result<CounterSnapshot> {
        let path = (self.stats)(netns)?;
        tokio::task::spawn_blocking(move || CounterSnapshot::read(&path))
            .await
            .map_err(|e| Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: "read the stats segment".into(),
                reason: e.to_string(),
            })?
    }
}

#[async_trait]
impl Tunnel for VppTunnel {
    /// Reconciles the node's VPP to `mesh` in phases: stale routes, then every peer (each
    /// in the fail-closed order, up to `PIPELINE` peers in flight), then stale tunnels,
    /// then stale SAs; each phase's independent calls are sent together.
    async fn reconcile(
        &self,
        netns: &Netns,
        mesh: &Mesh,
        secret: &ClusterSecret,
    ) -> Result<ReconcileReport> {
        let mut want = plan(mesh, secret)?;
        let c = self.connect(netns).await?;
        let have = OwnedState::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        for p in &mut want {
            place_inbound(p, &have.sas);
        }
        let mut rep = reconcile_all(&TunnelCalls { c: &c }, &have, mesh, &want).await?;
        if !self.host_link && mesh.node_encryption.is_some() {
            tracing::warn!(
                "node encryption is on but the host link is off: Scrambler does not steer \
                 the host's own traffic to its peers' underlay addresses (it takes whatever \
                 route the host has, possibly in the clear)"
            );
        }
        if self.host_link {
            let targets = host_steering::targets(mesh, have.pod_routes.keys());
            let h = host_link::reconcile(&c, netns, mesh, self.underlay_mtu, &targets).await?;
            rep.added += h.added;
            rep.updated += h.updated;
            rep.removed += h.removed;
            rep.unchanged += h.unchanged;
        }
        let _ = c.close().await;
        tracing::info!(
            added = rep.added,
            updated = rep.updated,
            removed = rep.removed,
            unchanged = rep.unchanged,
            "reconciled VPP tunnels"
        );
        Ok(rep)
    }

    async fn status(&self, netns: &Netns, mesh: &Mesh) -> Result<TunnelStatus> {
        let c = self.connect(netns).await?;
        let have = OwnedState::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let local: BTreeSet<IpAddr> = mesh.local.underlay.iter().copied().collect();
        let uplinks: BTreeSet<u32> = TunnelCalls { c: &c }
            .interfaces_holding(&local)
            .await?
            .into_values()
            .collect();
        let spd = underlay_guard::HaveSpd::read(&c).await?;
        // a gateway an earlier release made stays in table 0: its pods are outside the
        // pods' VRF, and the underlay guard drops all their traffic to peers' underlay
        let ops = crate::attach::ops::AttachCalls { c: &c };
        let gateway_in_table_0 = match ops.find_gateway().await? {
            Some(gw) => ops.interface_table(gw).await? != POD_TABLE_ID,
            None => false,
        };
        let host_link_ok = match self.host_link {
            true => host_link::in_place(&c, netns, mesh, self.underlay_mtu).await?,
            false => true,
        };
        let targets = host_steering::targets(mesh, have.pod_routes.keys());
        let (steering_missing, uncovered) = match (self.host_link, &mesh.node_encryption) {
            (_, None) => (0, 0),
            (false, Some(_)) => (0, targets.len()),
            (true, Some(_)) => {
                let nl = scrambler_netlink::Nl::open(netns).await?;
                let plan = host_link::steering_plan(&nl, mesh, &targets).await?;
                (host_steering::missing(&nl, &plan).await?, plan.uncovered)
            }
        };
        let _ = c.close().await;
        let want = underlay_guard::wanted(mesh);
        let guarded = underlay_guard::in_place(&spd, &want, &uplinks);
        let snap = match self.snapshot(netns).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "VPP counters unavailable");
                None
            }
        };
        let mut st = status::build(&have, snap.as_ref(), mesh);
        if !host_link_ok {
            st.errors.insert(HOST_LINK_MISSING.into(), 1);
        }
        if steering_missing > 0 {
            // the host's traffic to a peer's underlay address may take another route
            st.fail_closed = false;
            st.errors
                .insert(NODE_STEERING_MISSING.into(), steering_missing as u64);
        }
        if uncovered > 0 {
            st.errors
                .insert(NODE_ENCRYPTION_HOST_UNCOVERED.into(), uncovered as u64);
            if !self.host_link {
                // nothing of Scrambler's keeps the host's traffic off other routes
                st.fail_closed = false;
            }
        }
        if guarded {
            let n = match gateway_in_table_0 {
                true => underlay_pairs(mesh),
                false => unsteered_underlay_pairs(&have, mesh),
            };
            if n > 0 {
                st.errors
                    .insert(POD_TO_PEER_UNDERLAY_DROPPED.into(), n as u64);
            }
        } else {
            st.fail_closed = false;
            st.errors.insert(UNDERLAY_GUARD_MISSING.into(), 1);
        }
        Ok(st)
    }

    async fn remove(&self, netns: &Netns) -> Result<ReconcileReport> {
        let c = self.connect(netns).await?;
        let have = OwnedState::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let mut rep = remove_all(&TunnelCalls { c: &c }, &have, false).await?;
        rep.removed += host_link::remove(&c, netns).await?;
        let _ = c.close().await;
        Ok(rep)
    }

    async fn remove_keeping_guard(&self, netns: &Netns) -> Result<ReconcileReport> {
        let c = self.connect(netns).await?;
        let have = OwnedState::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let rep = remove_all(&TunnelCalls { c: &c }, &have, true).await?;
        let _ = c.close().await;
        Ok(rep)
    }
}

/// Every (local pod CIDR, peer underlay address) pair of the same family: all of them
/// dropped by the underlay guard for pods attached to a gateway in table 0.
fn underlay_pairs(mesh: &Mesh) -> usize {
    mesh.peers
        .iter()
        .flat_map(|p| &p.underlay)
        .map(|a| {
            mesh.local
                .pod_cidrs
                .iter()
                .filter(|c| c.addr().is_ipv6() == a.is_ipv6())
                .count()
        })
        .sum()
}

/// The (local pod CIDR, peer underlay address) pairs of the same family whose pods' table
/// route does not lead into the peer's tunnel: the underlay guard drops that traffic.
fn unsteered_underlay_pairs(have: &OwnedState, mesh: &Mesh) -> usize {
    mesh.peers
        .iter()
        .map(|p| {
            let sw = have.sw_if_index(tunnel_instance(p.id));
            p.underlay
                .iter()
                .filter(|a| {
                    let r = have.pod_routes.get(&ipnet::IpNet::from(**a));
                    sw.is_none() || r != Some(&readback::OwnedRoute::Via(sw.unwrap_or_default()))
                })
                .map(|a| {
                    mesh.local
                        .pod_cidrs
                        .iter()
                        .filter(|c| c.addr().is_ipv6() == a.is_ipv6())
                        .count()
                })
                .sum::<usize>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use scrambler_core::{Mesh, Node, NodeId};

    #[test]
    fn a_gateway_in_table_0_counts_every_pair_of_one_family() {
        let mut m = mesh(scrambler_core::Keys::single(1));
        assert_eq!(super::underlay_pairs(&m), 1);
        m.local.pod_cidrs.push("fd00:1::/64".parse().unwrap());
        m.peers[0].underlay.push("2001:db8::2".parse().unwrap());
        m.peers[0].underlay.push("192.0.2.22".parse().unwrap());
        assert_eq!(super::underlay_pairs(&m), 3);
        // every pair is also unsteered with nothing in VPP
        let have = super::readback::OwnedState::default();
        assert_eq!(super::unsteered_underlay_pairs(&have, &m), 3);
    }

    pub(super) fn id(n: u32) -> NodeId {
        NodeId::new(n).unwrap()
    }

    pub(super) fn mesh(keys: scrambler_core::Keys) -> Mesh {
        let node = |name: &str, n: u8| Node {
            name: name.into(),
            id: id(u32::from(n)),
            epoch: scrambler_core::Epoch::new(0xe0 + u64::from(n)).unwrap(),
            underlay: vec![format!("192.0.2.{n}").parse().unwrap()],
            pod_cidrs: vec![format!("10.{n}.0.0/24").parse().unwrap()],
            previous_epochs: Vec::new(),
        };
        scrambler_core::Cluster {
            nodes: vec![node("a", 1), node("b", 2)],
            keys,
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            node_encryption: None,
        }
        .mesh_for("a")
        .unwrap()
    }
}
