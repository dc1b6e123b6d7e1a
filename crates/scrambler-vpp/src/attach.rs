//! Pods attached to VPP ([`VppAttach`], the [`Attach`] of the VPP dataplane).
//!
//! Without `/dev/vhost-net` (no tap interfaces) a pod is joined to VPP by a veth pair whose
//! node end VPP takes with `af_packet`:
//!
//! * **veth**: the pod end is created directly in the pod namespace with the name
//!   `CNI_IFNAME`; the node end stays in the node namespace, named [`host_ifname`]
//!   (`scv` + 11 hex digits of SHA-256 over container id and ifname: stable, unique,
//!   ≤ 15 bytes), up, without addresses.
//! * **VPP interface**: `af_packet` on the node end (`host-<node end>`), with the fixed MAC
//!   [`vpp_mac`] (derived from the attachment, so it survives a VPP restart), tagged
//!   [`pod_tag`] (`scrambler:pod=<network>/<container id>/<ifname>`, `<network>` being
//!   [`network_digest`] of the network's name, the id shortened to fit VPP's 63-byte tags),
//!   put in the gateway's table and unnumbered to it, admin up. Once it exists, the node veth gets the
//!   `ifalias` [`VppAttach::alias`] (`scrambler-vpp/<network>/<container id>/<ifname>`):
//!   GC only touches interfaces and veths of its own network, parsing tags and aliases
//!   into their fields and comparing the network digest for equality.
//! * **gateway**: one VPP loopback per node, tagged [`GATEWAY_TAG`], instance
//!   [`GATEWAY_INSTANCE`], MAC [`GATEWAY_MAC`], holding [`GATEWAY_V4`]`/32`, in the pods'
//!   VRF ([`crate::tunnel::POD_TABLE_ID`], created with a default route looking up table 0
//!   again; a gateway an earlier release made in table 0 stays there, and so do the pods
//!   then). It is created by
//!   the first attachment (idempotently, also under concurrent ADDs) and never removed by
//!   [`Attach::detach`]: it is shared by every pod of the node ([`VppAttach::remove_gateway`]
//!   removes it).
//! * **pod side** (fully static, no ARP / ND at all): the IPAM addresses as host addresses
//!   (`/32`, `/128`), MTU, a link route to the gateway ([`GATEWAY_V4`], [`GATEWAY_V6`]) and
//!   the default route (or the IPAM's routes) via it, and a permanent neighbour
//!   gateway → the VPP interface's MAC, and GSO capped at one segment
//!   (`gso_max_segs` 1, see below).
//! * **VPP side**: per pod address a static neighbour (pod address → pod MAC, without FIB
//!   entry) and a route `pod-address/32 via pod-address` out of the pod's interface, in
//!   table 0 (where the tunnels deliver) and in the pods' VRF.
//!
//! # GSO
//!
//! VPP forwards what it reads from the af_packet ring as is and does not segment before
//! the tunnel: a pod's TCP GSO packet (up to 64 KB) would be encrypted and sent whole,
//! larger than the underlay MTU, and TCP between nodes stalls. The pod end of the veth
//! therefore gets `IFLA_GSO_MAX_SEGS` = 1: the pod's kernel segments TCP (and any other
//! GSO packet) itself at the pod MTU, which is ESP-aware ([`esp::pod_mtu`]), so every
//! packet fits the tunnel. Checksum offload stays on (`AF_PACKET_API_FLAG_CKSUM_GSO`
//! carries the partial checksums to VPP as metadata). The cost: pod-to-pod traffic inside
//! one node is segmented too. (Creating the interface without `CKSUM_GSO` would not help:
//! a packet socket does not segment what it receives, so VPP would still get the whole
//! GSO packet, only without the metadata saying so, and the partial checksums unfilled:
//! tried with the bulk TCP test of `tests/attach_live.rs`, no byte of TCP arrived.)
//!
//! # Rings
//!
//! VPP's default af_packet rings take ~76 MB per interface (measured: VPP's RSS grew by
//! 77.8 MB per pod interface; a 10-node × 5-pod lab used ~5 GB), almost all of it the TX
//! ring (1024 frames of 66 KB). Pod interfaces use smaller rings: VPP's RSS grows by
//! 12.4 MB per pod (measured with 5 interfaces on one VPP, `VmRSS` before/after):
//!
//! * **RX** ([`POD_RX_FRAME_SIZE`] × [`POD_RX_FRAMES_PER_BLOCK`] = 64 KB blocks, VPP's
//!   default; VPP always makes 160 blocks, so 10 MB). A TPACKET_V3 block must hold a whole
//!   packet, and with `AF_PACKET_API_FLAG_CKSUM_GSO` a packet may be a GSO packet of up to
//!   64 KB (the pods' own are capped, see GSO above, but the node veth's GRO is not
//!   Scrambler's to rule out): smaller blocks would truncate them, and the block size must
//!   be a multiple of the page size.
//! * **TX** ([`POD_TX_FRAMES`] frames of [`POD_TX_FRAME_SIZE`] = 66 KB, 2 MB): VPP hands a
//!   GSO packet to the pod as one frame. With 2048-byte TX frames a 100 kB TCP transfer
//!   between two pods of one VPP stalled (`tests/attach_live.rs`); 66 KB is VPP's own
//!   default frame size for this. The kernel empties the ring on every send (a veth
//!   delivers synchronously), so 32 frames suffice.
//!
//! From VPP the pod's traffic is routed in the pods' VRF: to pods of the same node through
//! their `/32` routes, to the peers' underlay addresses into their tunnels, everything else
//! by table 0 (to other nodes' pods through the ESP-protected tunnels of
//! [`crate::tunnel::VppTunnel`]).
//!
//! [`Attach::attach`] is all-or-nothing: any failure removes the VPP objects it made and the
//! veth. [`Attach::detach`] is idempotent: a pod namespace that is gone, an interface that is
//! gone, an attachment never made, or a VPP that is not running (no socket or connection
//! refused: its objects died with it) all succeed; a VPP that does not answer (hung) fails
//! with code 11 so the runtime retries. [`Attach::check`] compares the pod, the node and VPP with the expected
//! result and lists every difference.
//!
//! ```no_run
//! use scrambler_core::{Attach, AttachRequest, AttachmentId, CniResult, Netns};
//! use scrambler_netlink::AttachSockets;
//! use scrambler_vpp::attach::VppAttach;
//! # async fn f(addrs: CniResult) -> scrambler_core::Result<()> {
//! let vpp = VppAttach::new("/run/vpp/api.sock");
//! let req = AttachRequest {
//!     id: AttachmentId::new("c0ffee", "eth0"),
//!     pod_netns: Netns::path("/run/netns/pod1"),
//!     args: vec![],
//!     mtu: None,
//! };
//! // one set of connections per command, as the CNI plugin opens them
//! let add = AttachSockets::open_for_add(&Netns::Current, &req).await?;
//! let result = vpp.attach(&add, &req, &addrs).await?;
//! let check = AttachSockets::open(&Netns::Current, &req.pod_netns).await?;
//! vpp.check(&check, &req, &result).await?;
//! let del = AttachSockets::open_for_del(&Netns::Current, &req.pod_netns).await?;
//! vpp.detach(&del, &req).await?;
//! # Ok(()) }
//! ```

pub(crate) mod ops;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;
use scrambler_core::fault::{Fault, FaultStage};
use scrambler_core::routed::attachment_digest;
use scrambler_core::routed::{owner_alias, parse_owner_alias, pod_result};
use scrambler_core::{esp, Attach, AttachRequest, AttachmentId, CniResult, Error, Netns, Result};
use scrambler_netlink::address::Scope;
use scrambler_netlink::veth::{
    check_pod_end, check_pod_routes, create_pod_veth, pod_interfaces, Initially,
};
use scrambler_netlink::{format_mac, parse_mac, AttachSockets, Exists, Nl, RouteSpec};

use self::ops::{host_vpp, vpp_err, AttachCalls};
use crate::endpoint::{fixed_socket, NodeVpp};
use scrambler_vpp_api::api::{interface, ip};
use scrambler_vpp_api::VppClient;

/// The routed-pod plan this attachment shares with scrambler-cni's veth attachment: the
/// gateways ([`GATEWAY_V4`] is the address of the gateway loopback; VPP answers no ND for
/// [`GATEWAY_V6`], pods have it as a permanent neighbour), the gateway of a family, the
/// pod's routes.
pub use scrambler_core::routed::{gateway_for, pod_routes, GATEWAY_V4, GATEWAY_V6};
/// Tag of the gateway loopback.
pub const GATEWAY_TAG: &str = "scrambler:gateway";
/// Instance of the gateway loopback (`loop<GATEWAY_INSTANCE>` in VPP).
pub const GATEWAY_INSTANCE: u32 = 0x5c;
/// MAC of the gateway loopback.
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 1];
/// Prefix of the tags of pod interfaces.
pub const POD_TAG_PREFIX: &str = "scrambler:pod=";
/// Prefix of the names of node-side veths.
pub const HOST_IFNAME_PREFIX: &str = "scv";
/// The API socket of a VPP installed as a system service.
pub const DEFAULT_API_SOCKET: &str = "/run/vpp/api.sock";
/// Underlay MTU assumed for the default pod MTU.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Frame size of a pod interface's af_packet RX ring (see the module's *Rings*).
pub const POD_RX_FRAME_SIZE: u32 = 2048;
/// Frames per block of a pod interface's RX ring (a block must hold a 64 KB GSO packet).
pub const POD_RX_FRAMES_PER_BLOCK: u32 = 32;
/// Frame size of a pod interface's af_packet TX ring (must hold a 64 KB GSO packet).
pub const POD_TX_FRAME_SIZE: u32 = 33 * 2048;
/// Frames (in its single block) of a pod interface's TX ring.
pub const POD_TX_FRAMES: u32 = 32;

/// VPP's longest tag (64 bytes with the NUL).
const TAG_MAX: usize = 63;

/// Name of the node-side veth of an attachment (and, prefixed `host-`, of its VPP interface;
/// [`scrambler_core::routed::host_ifname`]).
pub fn host_ifname(id: &AttachmentId) -> String {
    scrambler_core::routed::host_ifname(HOST_IFNAME_PREFIX, id)
}

/// MAC of the VPP interface of an attachment: locally administered, unicast, from the same
/// digest as [`host_ifname`].
pub fn vpp_mac(id: &AttachmentId) -> [u8; 6] {
    let d = attachment_digest(id);
    [0x02, 0x5c, d[0], d[1], d[2], d[3]]
}

/// Hex digits of [`network_digest`].
pub const NETWORK_DIGEST_LEN: usize = 8;
/// First field of the `ifalias` of node-side veths
/// ([`scrambler_core::routed::owner_alias`]).
pub const ALIAS_MARK: &str = "scrambler-vpp";

/// The short form of a network's name carried in tags and aliases: the first
/// [`NETWORK_DIGEST_LEN`] hex digits of SHA-256 over the name.
pub fn network_digest(network: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(network.as_bytes());
    d.iter()
        .take(NETWORK_DIGEST_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tag of the VPP interface of an attachment of network `network`
/// ([`network_digest`]): `scrambler:pod=<network digest>/<container id>/<ifname>`, the
/// container id shortened so the tag fits VPP's 63 bytes.
pub fn pod_tag(network: &str, id: &AttachmentId) -> String {
    fitted_tag(&format!("{POD_TAG_PREFIX}{}/", network_digest(network)), id)
}

/// The tag form without the network digest (`scrambler:pod=<container id>/<ifname>`):
/// DEL also removes an interface that carries it.
fn legacy_pod_tag(id: &AttachmentId) -> String {
    fitted_tag(POD_TAG_PREFIX, id)
}

/// `<head><container id>/<ifname>`, the container id shortened to fit VPP's 63 bytes.
fn fitted_tag(head: &str, id: &AttachmentId) -> String {
    let room = TAG_MAX.saturating_sub(head.len() + 1 + id.ifname.len());
    let mut cid = id.container_id.as_str();
    if cid.len() > room {
        let mut end = room;
        while !cid.is_char_boundary(end) {
            end -= 1;
        }
        cid = &cid[..end];
    }
    let mut tag = format!("{head}{cid}/{}", id.ifname);
    while tag.len() > TAG_MAX {
        tag.pop();
    }
    tag
}

/// A pod interface's tag taken apart: (network digest, container id (maybe shortened),
/// ifname). `None` for other tags: those of older releases without a network, and any
/// without exactly three non-empty `/`-separated fields.
pub fn parse_pod_tag(tag: &str) -> Option<(&str, &str, &str)> {
    let mut fields = tag.strip_prefix(POD_TAG_PREFIX)?.split('/');
    let mut next = || fields.next().filter(|f| !f.is_empty());
    let (net, cid, ifname) = (next()?, next()?, next()?);
    let is_digest = net.len() == NETWORK_DIGEST_LEN && net.bytes().all(|b| b.is_ascii_hexdigit());
    (is_digest && fields.next().is_none()).then_some((net, cid, ifname))
}

/// The VPP attachment (implements [`Attach`]).
#[derive(Clone)]
pub struct VppAttach {
    vpp: NodeVpp,
    underlay_mtu: u32,
    underlay_v6: bool,
    pod_tx_frames: u32,
    network: String,
    fault: Fault,
}

impl std::fmt::Debug for VppAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VppAttach")
            .field("opts", &self.vpp.opts)
            .field("underlay_mtu", &self.underlay_mtu)
            .field("underlay_v6", &self.underlay_v6)
            .field("pod_tx_frames", &self.pod_tx_frames)
            .field("network", &self.network)
            .finish()
    }
}

impl VppAttach {
    /// One VPP, whose API socket is `api_socket`, for whatever node namespace is passed.
    pub fn new(api_socket: impl Into<PathBuf>) -> Self {
        Self::with_resolver(fixed_socket(api_socket))
    }

    /// A VPP per node: `resolve` maps the node's namespace to its VPP's API socket.
    pub fn with_resolver(
        resolve: impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        VppAttach {
            vpp: NodeVpp::new(Arc::new(resolve), "scrambler-attach"),
            underlay_mtu: DEFAULT_UNDERLAY_MTU,
            underlay_v6: false,
            pod_tx_frames: POD_TX_FRAMES,
            network: String::new(),
            fault: Fault::default(),
        }
    }

    /// For tests: ADD fails as `fault` says (see [`scrambler_core::fault`]), to prove a
    /// failed ADD leaves nothing behind. The stages this attachment passes: `AfterVeth`,
    /// `AfterPodAddr`, `AfterPodRoutes`, `AfterHostRoute` (after the VPP neighbours and
    /// routes).
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn fault(&self, stage: FaultStage) -> Result<()> {
        self.fault.check(stage)
    }

    /// The network (the conf's `name`) this attachment serves; marks its VPP interfaces
    /// and node veths so [`VppAttach::gc`] of one network leaves the others' alone.
    /// Default: the empty name.
    pub fn with_network(mut self, network: impl Into<String>) -> Self {
        self.network = network.into();
        self
    }

    /// The VPP tag of `id`'s interface ([`pod_tag`] of this network).
    pub fn tag(&self, id: &AttachmentId) -> String {
        pod_tag(&self.network, id)
    }

    /// The `ifalias` of `id`'s node veth:
    /// `scrambler-vpp/<network digest>/<container id>/<ifname>`.
    pub fn alias(&self, id: &AttachmentId) -> String {
        owner_alias(ALIAS_MARK, &network_digest(&self.network), id)
    }

    /// Whether a node veth's `ifalias` marks it as one of this network's.
    fn is_our_alias(&self, alias: &str) -> bool {
        parse_owner_alias(ALIAS_MARK, alias)
            .is_some_and(|(net, _)| net == network_digest(&self.network))
    }

    /// Whether a VPP tag marks an interface as one of this network's.
    fn is_our_tag(&self, tag: &str) -> bool {
        parse_pod_tag(tag).is_some_and(|(net, _, _)| net == network_digest(&self.network))
    }

    /// The underlay MTU the default pod MTU is derived from (pod MTU =
    /// [`esp::pod_mtu`] of it); default [`DEFAULT_UNDERLAY_MTU`].
    pub fn with_underlay_mtu(mut self, mtu: u32) -> Self {
        self.underlay_mtu = mtu;
        self
    }

    /// Whether the node's ESP runs over an IPv6 underlay (or may, to some peer): the
    /// default pod MTU then leaves room for IPv6's larger outer header (20 bytes more);
    /// default `false` (IPv4).
    pub fn with_underlay_v6(mut self, v6: bool) -> Self {
        self.underlay_v6 = v6;
        self
    }

    /// Frames of each new pod interface's af_packet TX ring (VPP → pod), of
    /// [`POD_TX_FRAME_SIZE`] each; default [`POD_TX_FRAMES`]. VPP hands the ring a whole
    /// vector of up to 256 packets at once: under bulk load a smaller ring overruns (VPP's
    /// `tx ring overrun` counter) and the pod's TCP retransmits; each frame costs 66 KB of
    /// kernel memory (the dataplane bench measures both settings).
    pub fn with_pod_tx_frames(mut self, frames: u32) -> Self {
        self.pod_tx_frames = frames.max(1);
        self
    }

    /// The pod MTU: `requested`, else the underlay MTU minus the ESP overhead of the
    /// underlay's family ([`VppAttach::with_underlay_v6`]).
    pub fn pod_mtu(&self, requested: Option<u32>) -> Result<u32> {
        match requested {
            Some(m) if !(68..=65535).contains(&m) => {
                Err(Error::config(format!("mtu {m} is out of range 68..65535")))
            }
            Some(m) => Ok(m),
            None => Ok(esp::pod_mtu(self.underlay_mtu, self.underlay_v6)),
        }
    }

    /// The API socket of the VPP serving `host`.
    pub fn api_socket(&self, host: &Netns) -> Result<PathBuf> {
        self.vpp.api_socket(host)
    }

    /// Connects to the VPP of `host`. A socket that does not exist or refuses connections
    /// is [`Error::TryAgainLater`] (VPP not running) naming the socket.
    pub async fn connect(&self, host: &Netns) -> Result<VppClient> {
        self.vpp.connect_or_try_later(host).await
    }

    /// Removes the gateway loopback from the VPP of `host` (e.g. when the node leaves).
    /// Returns whether it existed. Refused ([`Error::AlreadyExists`], nothing removed)
    /// while pod interfaces (of any network) are still attached to VPP.
    pub async fn remove_gateway(&self, host: &Netns) -> Result<bool> {
        let c = self.connect(host).await?;
        let ops = AttachCalls { c: &c };
        let pods: Vec<String> = ops
            .pod_interfaces()
            .await?
            .into_iter()
            .filter(|p| p.tag.starts_with(POD_TAG_PREFIX) || p.tag == crate::tunnel::HOST_LINK_TAG)
            .map(|p| host_vpp(&p.host_if_name))
            .collect();
        if !pods.is_empty() {
            let _ = c.close().await;
            return Err(Error::AlreadyExists {
                object: "pod interfaces on the VPP gateway loopback".into(),
                reason: format!(
                    "{} still attached ({}): detach them before removing the gateway",
                    pods.len(),
                    pods.join(", ")
                ),
            });
        }
        let found = match ops.find_gateway().await? {
            Some(sw) => {
                ops.c
                    .request(&interface::DeleteLoopback { sw_if_index: sw })
                    .await
                    .map_err(vpp_err("delete", "gateway loopback"))?;
                true
            }
            None => false,
        };
        let _ = c.close().await;
        Ok(found)
    }

    /// Removes the pod interfaces (VPP interface and node veth) of this network's
    /// attachments not in `valid`; returns the node-side veth names removed.
    ///
    /// Only objects marked with this network ([`VppAttach::with_network`]) are touched:
    /// VPP interfaces tagged [`pod_tag`] of this network, and node veths whose `ifalias` is
    /// this network's [`VppAttach::alias`] and that have no VPP interface any more (e.g.
    /// VPP restarted). A veth gets its alias only after its VPP interface exists, so the
    /// veth of an ADD in progress is never taken for an orphan.
    pub async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        let keep: BTreeSet<String> = valid.iter().map(host_ifname).collect();
        let c = self.connect(host).await?;
        let ops = AttachCalls { c: &c };
        let nl = Nl::open(host).await?;
        let mut removed = Vec::new();
        let pifs = ops.pod_interfaces().await?;
        for pif in &pifs {
            if keep.contains(&pif.host_if_name) || !self.is_our_tag(&pif.tag) {
                continue;
            }
            tracing::info!(veth = %pif.host_if_name, tag = %pif.tag, "gc: removing orphaned pod interface");
            ops.remove_found_pod_interface(pif).await?;
            if let Some(l) = nl.link_by_name(&pif.host_if_name).await? {
                nl.delete_link(l.index, &pif.host_if_name).await?;
            }
            removed.push(pif.host_if_name.clone());
        }
        let _ = c.close().await;
        // node veths of this network whose VPP interface is gone (e.g. VPP restarted)
        for l in nl.links().await? {
            if !l.name.starts_with(HOST_IFNAME_PREFIX)
                || l.kind.as_deref() != Some("veth")
                || keep.contains(&l.name)
                || removed.contains(&l.name)
                || pifs.iter().any(|p| p.host_if_name == l.name)
                || !l.alias.as_deref().is_some_and(|a| self.is_our_alias(a))
            {
                continue;
            }
            tracing::info!(veth = %l.name, "gc: removing orphaned node veth");
            if nl.delete_link(l.index, &l.name).await? {
                removed.push(l.name);
            }
        }
        Ok(removed)
    }

    async fn attach_inner(
        &self,
        ops: &AttachCalls<'_>,
        host: &Nl,
        pod: &Nl,
        req: &AttachRequest,
        addrs: &CniResult,
        mtu: u32,
    ) -> Result<CniResult> {
        let host_name = host_ifname(&req.id);
        self.fault(FaultStage::AfterVeth)?;
        let host_link = host.existing_link(&host_name).await?;
        host.set_up(host_link.index, &host_name).await?;
        let pod_link = pod.existing_link(&req.id.ifname).await?;
        let pod_mac = pod_link.mac.as_deref().and_then(parse_mac).ok_or_else(|| {
            Error::kernel(
                "read MAC of",
                pod.obj(&req.id.ifname),
                "the veth reports no MAC",
            )
        })?;
        let has_v4 = addrs.ips.iter().any(|c| c.address.addr().is_ipv4());
        let has_v6 = addrs.ips.iter().any(|c| c.address.addr().is_ipv6());
        let vmac = vpp_mac(&req.id);

        // VPP: gateway, then the pod's interface
        let (gw, table) = ops.ensure_gateway().await?;
        let sw = ops
            .create_pod_interface(&self.tag(&req.id), &host_name, vmac, self.pod_tx_frames)
            .await?;
        // unnumbered to the gateway: in its table (the pods' VRF) first
        if table != 0 {
            ops.set_table(sw, table).await?;
        }
        // marks the veth as this network's only now that its VPP interface exists (GC)
        host.set_alias(host_link.index, &host_name, &self.alias(&req.id))
            .await?;
        ops.c
            .request(&interface::SwInterfaceSetUnnumbered {
                sw_if_index: gw,
                unnumbered_sw_if_index: sw,
                is_add: true,
            })
            .await
            .map_err(vpp_err(
                "make unnumbered to the gateway",
                &host_vpp(&host_name),
            ))?;
        if has_v6 {
            ops.c
                .request(&ip::SwInterfaceIp6EnableDisable {
                    sw_if_index: sw,
                    enable: true,
                })
                .await
                .map_err(vpp_err("enable IPv6 on", &host_vpp(&host_name)))?;
        }
        ops.c
            .request(&interface::SwInterfaceSetMtu {
                sw_if_index: sw,
                mtu: [mtu, 0, 0, 0],
            })
            .await
            .map_err(vpp_err("set mtu of", &host_vpp(&host_name)))?;
        ops.set_up(sw, &host_name).await?;

        // pod: addresses as host addresses, link up, gateway as permanent neighbour, routes
        let interfaces = pod_interfaces(&host_link, &pod_link, mtu, &req.pod_netns);
        let result = pod_result(addrs, interfaces);
        for c in &result.ips {
            pod.add_address(&pod_link, c.address, Scope::Global, Exists::Fail)
                .await?;
        }
        // VPP forwards what it reads from the af_packet ring as is: a pod's 64 KB TCP GSO
        // packet would leave through the tunnel whole, larger than the underlay's MTU, and
        // be lost. The pod's kernel segments before its veth instead.
        pod.disable_gso(pod_link.index, &req.id.ifname).await?;
        pod.set_up(pod_link.index, &req.id.ifname).await?;
        self.fault(FaultStage::AfterPodAddr)?;
        for (fam, on) in [
            (IpAddr::V4(GATEWAY_V4), has_v4),
            (IpAddr::V6(GATEWAY_V6), has_v6),
        ] {
            if !on {
                continue;
            }
            pod.add_permanent_neighbour(pod_link.index, &req.id.ifname, fam, &vmac)
                .await?;
            if fam.is_ipv4() {
                let gw = RouteSpec::new(IpNet::from(fam), None, pod_link.index);
                pod.add_route(&gw, Exists::Fail).await?;
            }
        }
        for r in &result.routes {
            pod.add_route(&RouteSpec::of(r, pod_link.index), Exists::Fail)
                .await?;
        }
        self.fault(FaultStage::AfterPodRoutes)?;

        // VPP: the pod's addresses behind its interface
        for c in &result.ips {
            let a = c.address.addr();
            ops.neighbour(sw, a, pod_mac, true).await?;
            // table 0 (what comes out of the tunnels and the uplink) and the pods' own
            ops.route(sw, a, true).await?;
            if table != 0 {
                ops.route_in(table, sw, a, true).await?;
            }
        }
        self.fault(FaultStage::AfterHostRoute)?;
        Ok(result)
    }

    /// Undoes a failed attach: VPP objects first, then the veth.
    async fn undo(&self, ops: &AttachCalls<'_>, host: &Nl, host_name: &str) {
        if let Err(e) = ops.remove_pod_interface(host_name).await {
            tracing::error!(error = %e, "undo: removing the VPP interface failed");
        }
        if let Some(l) = host.link_by_name(host_name).await.ok().flatten() {
            if let Err(e) = host.delete_link(l.index, host_name).await {
                tracing::error!(error = %e, "undo: deleting the veth failed");
            }
        }
    }

    async fn check_pod(
        &self,
        pod: &Nl,
        req: &AttachRequest,
        expected: &CniResult,
        vmac: [u8; 6],
        diffs: &mut Vec<String>,
    ) -> Result<Option<[u8; 6]>> {
        let sb = req.pod_netns.sandbox();
        let Some(pod_idx) = expected.interface_index(&req.id.ifname, &sb) else {
            diffs.push(format!(
                "prevResult lists no interface {} in sandbox {sb}",
                req.id.ifname
            ));
            return Ok(None);
        };
        let want = &expected.interfaces[pod_idx];
        let Some(link) = pod.link_by_name(&req.id.ifname).await? else {
            diffs.push(format!("interface {} is missing in {sb}", req.id.ifname));
            return Ok(None);
        };
        let want_mtu = match want.mtu {
            Some(m) => m,
            None => self.pod_mtu(req.mtu)?,
        };
        check_pod_end(&link, want, want_mtu, diffs);
        if link.gso_max_segs != Some(1) {
            diffs.push(format!(
                "GSO of {} is not capped at one segment (gso_max_segs {:?}): VPP would send \
                 its TCP packets into the tunnel whole",
                link.name, link.gso_max_segs
            ));
        }
        let have = pod.addresses(link.index).await?;
        let pod_ips = expected.addresses_of(pod_idx);
        for a in &pod_ips {
            if !have.iter().any(|h| h.addr() == a.addr()) {
                diffs.push(format!("address {a} is missing on {}", link.name));
            }
        }
        let routes = pod.routes().await?;
        check_pod_routes(&routes, &expected.routes, link.index, diffs);
        let neigh = pod.neighbours(link.index).await?;
        for v6 in [false, true] {
            if !pod_ips.iter().any(|a| a.addr().is_ipv6() == v6) {
                continue;
            }
            let gw = if v6 {
                IpAddr::V6(GATEWAY_V6)
            } else {
                IpAddr::V4(GATEWAY_V4)
            };
            match neigh.iter().find(|n| n.ip == gw) {
                Some(n) if n.mac == Some(vmac) && n.permanent => {}
                Some(n) => diffs.push(format!(
                    "pod neighbour {gw} is {} ({}), expected permanent {}",
                    n.mac
                        .map(|m| format_mac(&m))
                        .unwrap_or_else(|| "incomplete".into()),
                    if n.permanent {
                        "permanent"
                    } else {
                        "not permanent"
                    },
                    format_mac(&vmac)
                )),
                None => diffs.push(format!("pod neighbour {gw} is missing")),
            }
        }
        Ok(link.mac.as_deref().and_then(parse_mac))
    }

    async fn check_vpp(
        &self,
        ops: &AttachCalls<'_>,
        req: &AttachRequest,
        pod_ips: &[IpNet],
        pod_mac: Option<[u8; 6]>,
        want_mtu: u32,
        diffs: &mut Vec<String>,
    ) -> Result<()> {
        let host_name = host_ifname(&req.id);
        let name = host_vpp(&host_name);
        let gw = ops.find_gateway().await?;
        match gw {
            None => diffs.push(format!(
                "the gateway loopback ({GATEWAY_TAG}) is missing in VPP"
            )),
            Some(gw) => {
                let addrs = ops.addresses(gw, false).await?;
                let want = IpNet::from(IpAddr::V4(GATEWAY_V4));
                if pod_ips.iter().any(|a| a.addr().is_ipv4()) && !addrs.contains(&want) {
                    diffs.push(format!("the gateway loopback lacks {want}"));
                }
            }
        }
        let Some(pif) = ops.pod_interface(&host_name).await? else {
            diffs.push(format!("VPP interface {name} is missing"));
            return Ok(());
        };
        let sw = pif.sw_if_index;
        if pif.tag != self.tag(&req.id) {
            diffs.push(format!(
                "VPP interface {name} has tag {:?}, expected {:?}",
                pif.tag,
                self.tag(&req.id)
            ));
        }
        if !pif.up {
            diffs.push(format!("VPP interface {name} is down"));
        }
        if pif.mtu != want_mtu {
            diffs.push(format!(
                "VPP interface {name} has mtu {}, expected {want_mtu}",
                pif.mtu
            ));
        }
        if pif.mac != vpp_mac(&req.id) {
            diffs.push(format!(
                "VPP interface {name} has mac {}, expected {}",
                format_mac(&pif.mac),
                format_mac(&vpp_mac(&req.id))
            ));
        }
        let unnumbered = ops
            .c
            .dump(&ip::IpUnnumberedDump { sw_if_index: sw })
            .await
            .map_err(vpp_err("list unnumbered interfaces", &name))?;
        if gw.is_some() && !unnumbered.iter().any(|u| Some(u.ip_sw_if_index) == gw) {
            diffs.push(format!(
                "VPP interface {name} is not unnumbered to the gateway"
            ));
        }
        for v6 in [false, true] {
            let fam: Vec<IpAddr> = pod_ips
                .iter()
                .map(|a| a.addr())
                .filter(|a| a.is_ipv6() == v6)
                .collect();
            if fam.is_empty() {
                continue;
            }
            let neigh = ops.neighbours(sw, v6).await?;
            let routes = ops.routes_via(sw, v6).await?;
            for a in fam {
                match neigh.iter().find(|n| n.0 == a) {
                    None => diffs.push(format!("VPP neighbour {a} on {name} is missing")),
                    Some((_, mac)) if pod_mac.is_some_and(|p| p != *mac) => diffs.push(format!(
                        "VPP neighbour {a} on {name} is {}, but the pod's MAC is {}",
                        format_mac(mac),
                        pod_mac.map(|m| format_mac(&m)).unwrap_or_default()
                    )),
                    Some(_) => {}
                }
                if !routes.contains(&IpNet::from(a)) {
                    diffs.push(format!(
                        "VPP route {} via {name} is missing",
                        IpNet::from(a)
                    ));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Attach for VppAttach {
    type Sockets = AttachSockets;

    async fn attach(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        let (host, host_nl, pod_nl) = (sockets.host_netns(), sockets.host(), sockets.pod()?);
        addrs.require_addresses()?;
        let mtu = self.pod_mtu(req.mtu)?;
        let c = self.connect(host).await?;
        let ops = AttachCalls { c: &c };
        let host_name = host_ifname(&req.id);
        if host_nl.link_by_name(&host_name).await?.is_some()
            || ops.pod_interface(&host_name).await?.is_some()
        {
            return Err(Error::AlreadyExists {
                object: format!("pod interface {host_name} in {host} / VPP"),
                reason: format!(
                    "attachment {} is already attached (ADD without DEL?)",
                    req.id
                ),
            });
        }
        create_pod_veth(
            host_nl,
            &host_name,
            &req.pod_netns,
            &req.id.ifname,
            mtu,
            Initially::Down,
        )
        .await?;
        let res = self
            .attach_inner(&ops, host_nl, pod_nl, req, addrs, mtu)
            .await;
        match res {
            Ok(r) => {
                tracing::info!(attachment = %req.id, veth = %host_name, mtu, "attached to VPP");
                let _ = c.close().await;
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(attachment = %req.id, error = %e, "attach failed, undoing");
                self.undo(&ops, host_nl, &host_name).await;
                let _ = c.close().await;
                Err(e)
            }
        }
    }

    async fn check(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        expected: &CniResult,
    ) -> Result<()> {
        let (host, host_nl, pod_nl) = (sockets.host_netns(), sockets.host(), sockets.pod()?);
        let c = self.connect(host).await?;
        let ops = AttachCalls { c: &c };
        let mut diffs = Vec::new();
        let vmac = vpp_mac(&req.id);
        let pod_mac = self
            .check_pod(pod_nl, req, expected, vmac, &mut diffs)
            .await?;
        let sb = req.pod_netns.sandbox();
        let pod_idx = expected.interface_index(&req.id.ifname, &sb);
        let ips = pod_idx
            .map(|i| expected.addresses_of(i))
            .unwrap_or_default();
        let host_name = host_ifname(&req.id);
        match host_nl.link_by_name(&host_name).await? {
            None => diffs.push(format!("node veth {host_name} is missing")),
            Some(l) => {
                if !l.up {
                    diffs.push(format!("node veth {host_name} is down"));
                }
                let want = self.alias(&req.id);
                if l.alias.as_deref() != Some(want.as_str()) {
                    diffs.push(format!(
                        "node veth {host_name} has alias {:?}, expected {want:?}",
                        l.alias
                    ));
                }
            }
        }
        let want_mtu = pod_idx
            .and_then(|i| expected.interfaces[i].mtu)
            .map(Ok)
            .unwrap_or_else(|| self.pod_mtu(req.mtu))?;
        self.check_vpp(&ops, req, &ips, pod_mac, want_mtu, &mut diffs)
            .await?;
        let _ = c.close().await;
        req.id.check_outcome(&diffs)
    }

    async fn detach(&self, sockets: &AttachSockets, req: &AttachRequest) -> Result<()> {
        let host = sockets.host_netns();
        let host_name = host_ifname(&req.id);
        // a VPP that is not running has none of its objects; a hung one (timeout) fails
        // the DEL with code 11, so the runtime retries instead of leaking its objects
        match self.vpp.connect_if_running(host).await? {
            Some(c) => {
                let ops = AttachCalls { c: &c };
                match ops.pod_interface(&host_name).await? {
                    Some(p) if p.tag != self.tag(&req.id) && p.tag != legacy_pod_tag(&req.id) => {
                        tracing::warn!(interface = %host_vpp(&host_name), tag = %p.tag, "detach: VPP interface not tagged as ours, left alone");
                        let _ = c.close().await;
                        return Ok(());
                    }
                    Some(p) => ops.remove_found_pod_interface(&p).await?,
                    None => {}
                }
                let _ = c.close().await;
            }
            None => {
                tracing::warn!(attachment = %req.id, "detach: VPP is not running, removing the veth only");
            }
        }
        let nl = sockets.host();
        if let Some(l) = nl.link_by_name(&host_name).await? {
            if l.kind.as_deref() == Some("veth") {
                nl.delete_link(l.index, &host_name).await?;
            } else {
                tracing::warn!(link = %host_name, kind = ?l.kind, "detach: not a veth, left alone");
            }
        }
        tracing::info!(attachment = %req.id, veth = %host_name, "detached from VPP");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_macs_and_tags_are_stable_and_bounded() {
        let id = AttachmentId::new("c0ffee", "eth0");
        assert!(host_ifname(&id).starts_with(HOST_IFNAME_PREFIX));
        assert_eq!(host_ifname(&id).len(), 14);
        let m = vpp_mac(&id);
        assert_eq!(m[0] & 1, 0, "unicast");
        assert_eq!(m[0] & 2, 2, "locally administered");
        let net = network_digest("net1");
        assert_eq!(net.len(), NETWORK_DIGEST_LEN);
        assert_ne!(net, network_digest("net2"));
        assert_eq!(
            pod_tag("net1", &id),
            format!("scrambler:pod={net}/c0ffee/eth0")
        );
        let long = AttachmentId::new("f".repeat(64), "eth0123456789ab");
        let t = pod_tag("net1", &long);
        assert!(
            t.len() <= 63 && t.starts_with(POD_TAG_PREFIX) && t.ends_with("/eth0123456789ab"),
            "{t}"
        );
        assert_eq!(
            parse_pod_tag(&t),
            Some((
                net.as_str(),
                &"f".repeat(63 - 14 - 8 - 2 - 15)[..],
                "eth0123456789ab"
            ))
        );
    }

    #[test]
    fn tags_and_aliases_say_which_network() {
        let id = AttachmentId::new("c0ffee", "eth0");
        let a = VppAttach::new("/x").with_network("net1");
        let b = VppAttach::new("/x").with_network("net2");
        let t = a.tag(&id);
        assert_eq!(
            parse_pod_tag(&t),
            Some((network_digest("net1").as_str(), "c0ffee", "eth0"))
        );
        assert!(a.is_our_tag(&t) && !b.is_our_tag(&t));
        // tags of older releases (no network) and foreign tags are nobody's
        assert_eq!(parse_pod_tag("scrambler:pod=c0ffee/eth0"), None);
        assert_eq!(parse_pod_tag("scrambler:pod=deadbeef/c0ffee/"), None);
        assert_eq!(parse_pod_tag("scrambler:pod=xyz/c0ffee/eth0"), None);
        assert_eq!(parse_pod_tag("other"), None);
        assert!(!a.is_our_tag("scrambler:pod=c0ffee/eth0"));
        assert_eq!(legacy_pod_tag(&id), "scrambler:pod=c0ffee/eth0");
        let long = AttachmentId::new("f".repeat(64), "eth0");
        assert_eq!(legacy_pod_tag(&long).len(), 63);
        let al = a.alias(&id);
        assert!(al.len() <= 255);
        assert!(a.is_our_alias(&al) && !b.is_our_alias(&al));
        assert!(!a.is_our_alias("scrambler/net1/c0ffee/eth0"));
        // one field more or less, or an empty one, is nobody's
        let net1 = network_digest("net1");
        for other in [
            format!("scrambler-vpp/{net1}/x/c0ffee/eth0"),
            format!("scrambler-vpp/{net1}/c0ffee"),
            format!("scrambler-vpp/{net1}x/c0ffee/eth0"),
        ] {
            assert!(!a.is_our_alias(&other), "{other}");
        }
        for other in [
            format!("scrambler:pod={net1}/x/c0ffee/eth0"),
            format!("scrambler:pod={net1}//eth0"),
            format!("scrambler:pod={net1}x/c0ffee/eth0"),
        ] {
            assert_eq!(parse_pod_tag(&other), None, "{other}");
            assert!(!a.is_our_tag(&other), "{other}");
        }
    }
}
