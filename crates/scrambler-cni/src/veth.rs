//! The `veth` backend's attachment (alias `xfrm`): a routed veth pair (no bridge).
//!
//! Design (as Calico does it, with the gateway address on the host end instead of proxy
//! ARP, so it works on nodes without a default route):
//!
//! - A veth pair per attachment. The pod end is created directly inside the pod namespace
//!   with the name `CNI_IFNAME`; the host end stays in the node namespace and is called
//!   [`host_ifname`] (`scr` + 11 hex digits of SHA-256 over container id and ifname: stable,
//!   unique, ≤ 15 bytes). Its `ifalias` is `scrambler/<network>/<container id>/<ifname>`
//!   ([`scrambler_core::routed::owner_alias`] of [`ALIAS_MARK`]), which marks it as ours
//!   for DEL and GC: DEL compares the whole alias, GC parses its fields and compares the
//!   network for equality (never a prefix that another network's name could share).
//! - The pod gets each IPAM address as a host route (`/32`, `/128`): it has no on-link
//!   subnet, so every packet goes to the gateway, including to pods of the same node.
//! - The gateway is link-local and the same in every pod: [`GATEWAY_V4`] (`169.254.1.1`,
//!   assigned `/32 scope link` to every host end) and [`GATEWAY_V6`] (`fe80::1/64` on every
//!   host end). The pod has `169.254.1.1 dev eth0 scope link` and a default route (or the
//!   IPAM's routes) via the gateway. IPAM gateways are not used for routing.
//! - The node routes `pod-ip/32` (and `/128`) out of the host end (`proto 0x5c`,
//!   [`scrambler_netlink::ROUTE_PROTO`]) and has forwarding on; from there the node's routing
//!   and the xfrm mesh carry the packet to other nodes.
//! - MTU: the conf's `mtu`, else [`scrambler_core::esp::pod_mtu`] of the MTU of the node's
//!   default-route interface (1500 when it has none), so ESP never fragments; with default
//!   routes of both families, the smaller result (an IPv6 underlay's outer header is 20
//!   bytes longer, and an IPv6-only underlay may still carry an IPv4 default route).
//!
//! Everything hangs off the host end: deleting it removes the pod end, the node routes and
//! the pod's addresses and routes. That is how a failed ADD is undone and how DEL works.

use crate::backend::{AddError, Allocation};
use async_trait::async_trait;
use ipnet::IpNet;
use scrambler_core::fault::{Fault, FaultStage};
use scrambler_core::routed::{owner_alias, parse_owner_alias, pod_result};
use scrambler_core::{
    esp, Attach, AttachRequest, AttachmentId, CniResult, Error, Netns, Result, Route,
};
use scrambler_netlink::address::Scope;
use scrambler_netlink::veth::{
    check_pod_end, check_pod_routes, create_pod_veth, pod_interfaces, Initially,
};
use scrambler_netlink::{route_present, sysctl, AttachSockets, Exists, Nl, RouteSpec};
use std::net::IpAddr;

/// The routed-pod plan this attachment shares with scrambler-vpp's: the gateways (addresses
/// of every host-side veth here), the gateway of a family, the pod's routes.
pub use scrambler_core::routed::{gateway_for, pod_routes, GATEWAY_V4, GATEWAY_V6};

/// Prefix of the names of host-side veths.
pub const HOST_IFNAME_PREFIX: &str = "scr";
/// Underlay MTU assumed when the node has no default route.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// First field of the `ifalias` of host-side veths.
pub const ALIAS_MARK: &str = "scrambler";

/// Name of the host-side veth of an attachment ([`scrambler_core::routed::host_ifname`]).
pub fn host_ifname(id: &AttachmentId) -> String {
    scrambler_core::routed::host_ifname(HOST_IFNAME_PREFIX, id)
}

/// The attachment of the `veth` backend.
#[derive(Debug, Clone)]
pub struct VethAttach {
    network: String,
    fault: Fault,
}

impl VethAttach {
    /// An attachment for network `network` (the conf's `name`, part of the ownership mark).
    pub fn new(network: impl Into<String>) -> Self {
        VethAttach {
            network: network.into(),
            fault: Fault::default(),
        }
    }

    /// ADD fails as `fault` says (see [`scrambler_core::fault`]); for tests.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }

    fn fault(&self, stage: FaultStage) -> Result<()> {
        self.fault.check(stage)
    }

    /// The `ifalias` marking the host end of `id`.
    pub fn alias(&self, id: &AttachmentId) -> String {
        owner_alias(ALIAS_MARK, &self.network, id)
    }

    /// The attachment a host veth's `ifalias` names, if the alias is this network's.
    fn owner_of(&self, alias: &str) -> Option<AttachmentId> {
        parse_owner_alias(ALIAS_MARK, alias)
            .filter(|(network, _)| *network == self.network)
            .map(|(_, id)| id)
    }

    /// The MTU for a pod: `requested`, else derived from the node's default-route
    /// interface.
    pub async fn pod_mtu(&self, host: &Nl, requested: Option<u32>) -> Result<u32> {
        if let Some(m) = requested {
            if !(68..=65535).contains(&m) {
                return Err(Error::config(format!("mtu {m} is out of range 68..65535")));
            }
            return Ok(m);
        }
        // the ESP's outer family is the underlay's, which a default route does not tell
        // (an IPv6-only underlay may carry an IPv4 default route via an IPv6 next hop):
        // the smallest pod MTU of the families that have a default route, so an IPv6
        // underlay's 40-byte outer header always fits
        let mtus = host.default_route_mtus().await?;
        Ok(mtus
            .into_iter()
            .map(|(underlay, v6)| esp::pod_mtu(underlay, v6))
            .min()
            .unwrap_or(esp::pod_mtu(DEFAULT_UNDERLAY_MTU, false)))
    }

    /// Deletes host-side veths of this network whose attachment is not in `valid`;
    /// returns their names.
    pub async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        let nl = Nl::open(host).await?;
        let mut removed = Vec::new();
        for link in nl.links().await? {
            let Some(owner) = link.alias.as_deref().and_then(|a| self.owner_of(a)) else {
                continue;
            };
            if valid.contains(&owner) {
                continue;
            }
            tracing::info!(link = %link.name, attachment = %owner, "gc: removing orphaned host veth");
            if nl.delete_link(link.index, &link.name).await? {
                removed.push(link.name);
            }
        }
        Ok(removed)
    }

    /// ADD with the addresses `allocation` yields: the veth pair is created while the
    /// allocation runs (so the lease write overlaps the kernel's work), then given its
    /// addresses and routes. Whatever fails, the allocation has finished and the pair is
    /// gone before this returns.
    pub async fn attach_allocating(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        allocation: Allocation<'_>,
    ) -> std::result::Result<CniResult, AddError> {
        match futures::join!(self.create(sockets, req), allocation) {
            (Ok(created), Ok(addrs)) => self
                .configure(sockets, &created, req, &addrs)
                .await
                .map_err(AddError::Leased),
            (Ok(_), Err(e)) => {
                self.remove_created(sockets.host(), req).await;
                Err(e)
            }
            (Err(e), Ok(_)) => Err(AddError::Leased(e)),
            (Err(e), Err(first)) => {
                tracing::debug!(error = %e, "creating the veth pair failed as well");
                Err(first)
            }
        }
    }

    /// Creates the veth pair of `req`, the node end up, with the pod MTU. Its pod name is
    /// free (`sockets` were opened for this ADD); a host name that is taken is reported
    /// as an attachment that is already attached.
    async fn create(&self, sockets: &AttachSockets, req: &AttachRequest) -> Result<Created> {
        let host = sockets.host();
        let host_name = host_ifname(&req.id);
        let mtu = self.pod_mtu(host, req.mtu).await?;
        let pod_netns = &req.pod_netns;
        match create_pod_veth(
            host,
            &host_name,
            pod_netns,
            &req.id.ifname,
            mtu,
            Initially::Up,
        )
        .await
        {
            Ok(()) => {}
            Err(e @ Error::AlreadyExists { .. }) => {
                host_ifname_free(host, &host_name, &req.id).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(stage = "veth created");
        Ok(Created { mtu })
    }

    /// Gives the pair `created` the addresses `addrs` and the routes; removes the pair when
    /// that fails.
    async fn configure(
        &self,
        sockets: &AttachSockets,
        created: &Created,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        let configured = match addrs.require_addresses() {
            Ok(()) => match sockets.pod() {
                Ok(pod) => {
                    self.attach_inner(sockets.host(), pod, req, addrs, created.mtu)
                        .await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match configured {
            Ok(r) => {
                tracing::info!(attachment = %req.id, host_veth = %host_ifname(&req.id),
                    mtu = created.mtu, "attached");
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(attachment = %req.id, error = %e, "attach failed, removing veth");
                self.remove_created(sockets.host(), req).await;
                Err(e)
            }
        }
    }

    /// Deletes the host veth of `req` that this ADD created (the pod end goes with it).
    async fn remove_created(&self, host: &Nl, req: &AttachRequest) {
        let host_name = host_ifname(&req.id);
        if let Some(l) = host.link_by_name(&host_name).await.ok().flatten() {
            if let Err(e) = host.delete_link(l.index, &host_name).await {
                tracing::error!(error = %e, "undo: delete host veth failed");
            }
        }
    }

    /// Configures the pair just created (the node end up): the node side (alias, gateway
    /// addresses, forwarding, the routes to the pod) and the pod side (addresses, link up,
    /// the gateway's link route) side by side, then the pod's routes via the gateway.
    async fn attach_inner(
        &self,
        host: &Nl,
        pod: &Nl,
        req: &AttachRequest,
        addrs: &CniResult,
        mtu: u32,
    ) -> Result<CniResult> {
        let host_name = host_ifname(&req.id);
        self.fault(FaultStage::AfterVeth)?;
        let (host_link, pod_link) = futures::try_join!(
            host.existing_link(&host_name),
            pod.existing_link(&req.id.ifname)
        )?;
        let has_v6 = addrs.ips.iter().any(|c| c.address.addr().is_ipv6());
        let has_v4 = addrs.ips.iter().any(|c| c.address.addr().is_ipv4());
        let interfaces = pod_interfaces(&host_link, &pod_link, mtu, &req.pod_netns);
        let result = pod_result(addrs, interfaces);
        let gw4 = IpNet::from(IpAddr::V4(GATEWAY_V4));

        let node_side = async {
            let alias = self.alias(&req.id);
            host.set_alias(host_link.index, &host_name, &alias).await?;
            if has_v4 {
                host.add_address(&host_link, gw4, Scope::Link, Exists::Fail)
                    .await?;
                sysctl::ensure(host.netns(), "net/ipv4/ip_forward", "1").await?;
            }
            if has_v6 {
                let gw6 = IpNet::new(IpAddr::V6(GATEWAY_V6), 64)
                    .map_err(|e| Error::config(format!("gateway: {e}")))?;
                host.add_address(&host_link, gw6, Scope::Link, Exists::Fail)
                    .await?;
                sysctl::ensure(host.netns(), "net/ipv6/conf/all/forwarding", "1").await?;
            }
            for ipc in &result.ips {
                let to_pod = RouteSpec::new(ipc.address, None, host_link.index);
                host.add_route(&to_pod, Exists::Fail).await?;
            }
            Ok::<(), Error>(())
        };
        let pod_side = async {
            for ipc in &result.ips {
                pod.add_address(&pod_link, ipc.address, Scope::Global, Exists::Fail)
                    .await?;
            }
            pod.set_up(pod_link.index, &req.id.ifname).await?;
            if has_v4 {
                pod.add_route(&RouteSpec::new(gw4, None, pod_link.index), Exists::Fail)
                    .await?;
            }
            Ok::<(), Error>(())
        };
        futures::try_join!(node_side, pod_side)?;
        tracing::debug!(stage = "node side and pod addresses set");
        self.fault(FaultStage::AfterPodAddr)?;

        // pod routes via the gateway
        for r in &result.routes {
            pod.add_route(&RouteSpec::of(r, pod_link.index), Exists::Fail)
                .await?;
        }
        tracing::debug!(stage = "pod routes set");
        self.fault(FaultStage::AfterPodRoutes)?;
        self.fault(FaultStage::AfterHostRoute)?;
        Ok(result)
    }
}

/// A veth pair just created for an attachment.
struct Created {
    mtu: u32,
}

/// Fails with [`Error::AlreadyExists`] when the host veth `name` of `id` exists.
async fn host_ifname_free(host: &Nl, name: &str, id: &AttachmentId) -> Result<()> {
    match host.link_by_name(name).await? {
        None => Ok(()),
        Some(_) => Err(Error::AlreadyExists {
            object: format!("host veth {name} in {}", host.netns()),
            reason: format!("attachment {id} is already attached (ADD without DEL?)"),
        }),
    }
}

#[async_trait]
impl Attach for VethAttach {
    type Sockets = AttachSockets;

    async fn attach(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        addrs.require_addresses()?;
        let created = self.create(sockets, req).await?;
        self.configure(sockets, &created, req, addrs).await
    }

    async fn check(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        expected: &CniResult,
    ) -> Result<()> {
        let (host_nl, pod_nl) = (sockets.host(), sockets.pod()?);
        let mut diffs: Vec<String> = Vec::new();
        let sb = req.pod_netns.sandbox();
        let Some(pod_idx) = expected.interface_index(&req.id.ifname, &sb) else {
            return Err(req.id.check_failed(format!(
                "prevResult lists no interface {} in sandbox {sb}",
                req.id.ifname
            )));
        };
        let want = &expected.interfaces[pod_idx];
        let want_mtu = match want.mtu {
            Some(m) => m,
            None => self.pod_mtu(host_nl, req.mtu).await?,
        };
        let pod_ips = expected.addresses_of(pod_idx);

        match pod_nl.link_by_name(&req.id.ifname).await? {
            None => diffs.push(format!("interface {} is missing in {sb}", req.id.ifname)),
            Some(link) => {
                check_pod_end(&link, want, want_mtu, &mut diffs);
                let have = pod_nl.addresses(link.index).await?;
                for a in &pod_ips {
                    if !have.contains(a) {
                        diffs.push(format!("address {a} is missing on {}", link.name));
                    }
                }
                let routes = pod_nl.routes().await?;
                check_pod_routes(&routes, &expected.routes, link.index, &mut diffs);
            }
        }

        let host_name = host_ifname(&req.id);
        match host_nl.link_by_name(&host_name).await? {
            None => diffs.push(format!("host veth {host_name} is missing")),
            Some(link) => {
                if link.alias.as_deref() != Some(self.alias(&req.id).as_str()) {
                    diffs.push(format!("host veth {host_name} is not marked as ours"));
                }
                if !link.up {
                    diffs.push(format!("host veth {host_name} is down"));
                }
                let routes = host_nl.routes().await?;
                for a in &pod_ips {
                    let host_route = Route {
                        dst: IpNet::from(a.addr()),
                        gw: None,
                        mtu: None,
                    };
                    if !route_present(&routes, &host_route, link.index) {
                        diffs.push(format!(
                            "node route {} dev {host_name} is missing",
                            host_route.dst
                        ));
                    }
                }
            }
        }
        for (v6, key) in [
            (false, "net/ipv4/ip_forward"),
            (true, "net/ipv6/conf/all/forwarding"),
        ] {
            if pod_ips.iter().any(|a| a.addr().is_ipv6() == v6)
                && sysctl::read(host_nl.netns(), key).await? != "1"
            {
                diffs.push(format!("forwarding is off in the node ({key})"));
            }
        }
        req.id.check_outcome(&diffs)
    }

    async fn detach(&self, sockets: &AttachSockets, req: &AttachRequest) -> Result<()> {
        let nl = sockets.host();
        let host_name = host_ifname(&req.id);
        match nl.link_by_name(&host_name).await? {
            None => {
                tracing::debug!(attachment = %req.id, "detach: no host veth, nothing to do");
                Ok(())
            }
            Some(link) if link.alias.as_deref() != Some(self.alias(&req.id).as_str()) => {
                tracing::warn!(link = %host_name, alias = ?link.alias, "detach: host veth not marked as ours, left alone");
                Ok(())
            }
            Some(link) => {
                nl.delete_link(link.index, &host_name).await?;
                tracing::info!(attachment = %req.id, host_veth = %host_name, "detached");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_round_trips() {
        let v = VethAttach::new("net1");
        let id = AttachmentId::new("c0ffee", "eth0");
        assert_eq!(v.owner_of(&v.alias(&id)), Some(id));
        assert_eq!(
            VethAttach::new("net").owner_of(&v.alias(&AttachmentId::new("c", "e"))),
            None
        );
    }

    #[test]
    fn a_network_owns_only_its_own_aliases() {
        let a = VethAttach::new("a");
        let id = AttachmentId::new("c0ffee", "eth0");
        for other in ["a-b", "a.b", "a_b", "ab"] {
            let alias = VethAttach::new(other).alias(&id);
            assert_eq!(a.owner_of(&alias), None, "{alias}");
        }
        // the alias a network named "a/b" got before names were validated
        assert_eq!(a.owner_of("scrambler/a/b/c0ffee/eth0"), None);
        assert_eq!(a.owner_of("scrambler-vpp/a/c0ffee/eth0"), None);
    }
}
