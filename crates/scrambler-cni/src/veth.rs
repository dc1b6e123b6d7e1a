//! The `xfrm` backend's attachment: a routed veth pair (no bridge).
//!
//! Design (as Calico does it, with the gateway address on the host end instead of proxy
//! ARP, so it works on nodes without a default route):
//!
//! - A veth pair per attachment. The pod end is created directly inside the pod namespace
//!   with the name `CNI_IFNAME`; the host end stays in the node namespace and is called
//!   [`host_ifname`] (`scr` + 11 hex digits of SHA-256 over container id and ifname: stable,
//!   unique, ≤ 15 bytes). Its `ifalias` is `scrambler/<network>/<container id>/<ifname>`,
//!   which marks it as ours for DEL and GC.
//! - The pod gets each IPAM address as a host route (`/32`, `/128`): it has no on-link
//!   subnet, so every packet goes to the gateway, including to pods of the same node.
//! - The gateway is link-local and the same in every pod: [`GATEWAY_V4`] (`169.254.1.1`,
//!   assigned `/32 scope link` to every host end) and [`GATEWAY_V6`] (`fe80::1/64` on every
//!   host end). The pod has `169.254.1.1 dev eth0 scope link` and a default route (or the
//!   IPAM's routes) via the gateway. IPAM gateways are not used for routing.
//! - The node routes `pod-ip/32` (and `/128`) out of the host end (`proto 0x5c`,
//!   [`crate::netlink::ROUTE_PROTO`]) and has forwarding on; from there the node's routing
//!   and the xfrm mesh carry the packet to other nodes.
//! - MTU: the conf's `mtu`, else [`scrambler_core::esp::pod_mtu`] of the MTU of the node's
//!   default-route interface (1500 when it has none), so ESP never fragments.
//!
//! Everything hangs off the host end: deleting it removes the pod end, the node routes and
//! the pod's addresses and routes. That is how a failed ADD is undone and how DEL works.

use crate::fault;
use crate::netlink::{add_route, create_veth, route_present, Nl, VethSpec};
use crate::sysctl;
use async_trait::async_trait;
use ipnet::IpNet;
use scrambler_core::{
    esp, Attach, AttachRequest, AttachmentId, CniResult, Error, Interface, IpConfig, Netns, Result,
    Route,
};
use std::net::IpAddr;
use std::os::fd::AsRawFd;

/// The routed-pod plan this attachment shares with scrambler-vpp's: the gateways (addresses
/// of every host-side veth here), the gateway of a family, the pod's routes.
pub use scrambler_core::routed::{gateway_for, pod_routes, GATEWAY_V4, GATEWAY_V6};

/// Prefix of the names of host-side veths.
pub const HOST_IFNAME_PREFIX: &str = "scr";
/// Underlay MTU assumed when the node has no default route.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// Prefix of the `ifalias` of host-side veths.
pub const ALIAS_PREFIX: &str = "scrambler/";

/// Name of the host-side veth of an attachment ([`scrambler_core::routed::host_ifname`]).
pub fn host_ifname(id: &AttachmentId) -> String {
    scrambler_core::routed::host_ifname(HOST_IFNAME_PREFIX, id)
}

/// The veth attachment of the `xfrm` backend.
#[derive(Debug, Clone)]
pub struct VethAttach {
    network: String,
    fault: Option<String>,
}

impl VethAttach {
    /// An attachment for network `network` (the conf's `name`, part of the ownership mark).
    pub fn new(network: impl Into<String>) -> Self {
        VethAttach {
            network: network.into(),
            fault: None,
        }
    }

    /// Injects a fault at `stage` (see [`crate::fault`]); for tests.
    pub fn with_fault(mut self, stage: Option<String>) -> Self {
        self.fault = stage;
        self
    }

    fn fault(&self, stage: &str) -> Result<()> {
        fault::inject(self.fault.as_deref(), stage)
    }

    /// The `ifalias` marking the host end of `id`.
    pub fn alias(&self, id: &AttachmentId) -> String {
        format!(
            "{ALIAS_PREFIX}{}/{}/{}",
            self.network, id.container_id, id.ifname
        )
    }

    fn owner_of(&self, alias: &str) -> Option<AttachmentId> {
        let rest = alias
            .strip_prefix(ALIAS_PREFIX)?
            .strip_prefix(self.network.as_str())?
            .strip_prefix('/')?;
        let (cid, ifname) = rest.rsplit_once('/')?;
        Some(AttachmentId::new(cid, ifname))
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
        let (underlay, v6) = host
            .default_route_mtu()
            .await?
            .unwrap_or((DEFAULT_UNDERLAY_MTU, false));
        Ok(esp::pod_mtu(underlay, v6))
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

    async fn attach_inner(
        &self,
        host: &Nl,
        pod: &Nl,
        req: &AttachRequest,
        addrs: &CniResult,
        mtu: u32,
    ) -> Result<CniResult> {
        let host_name = host_ifname(&req.id);
        tracing::debug!(stage = "veth created");
        self.fault("after-veth")?;
        let host_link = host.existing_link(&host_name).await?;
        host.set_alias(host_link.index, &host_name, &self.alias(&req.id))
            .await?;
        let pod_link = pod.existing_link(&req.id.ifname).await?;
        let has_v6 = addrs.ips.iter().any(|c| c.address.addr().is_ipv6());
        let has_v4 = addrs.ips.iter().any(|c| c.address.addr().is_ipv4());

        // node side: gateway addresses, forwarding, link up
        if has_v4 {
            host.add_new_address(&host_link, IpNet::from(IpAddr::V4(GATEWAY_V4)), true)
                .await?;
            sysctl::ensure(host.netns(), "net/ipv4/ip_forward", "1").await?;
        }
        if has_v6 {
            let gw6 = IpNet::new(IpAddr::V6(GATEWAY_V6), 64)
                .map_err(|e| Error::config(format!("gateway: {e}")))?;
            host.add_new_address(&host_link, gw6, true).await?;
            sysctl::ensure(host.netns(), "net/ipv6/conf/all/forwarding", "1").await?;
        }
        host.set_up(host_link.index, &host_name).await?;

        // pod side: addresses as host routes, link up
        let mut ips = Vec::new();
        for ipc in &addrs.ips {
            let addr = IpNet::from(ipc.address.addr());
            pod.add_new_address(&pod_link, addr, false).await?;
            ips.push(IpConfig {
                address: addr,
                gateway: Some(gateway_for(addr.addr())),
                interface: Some(1),
            });
        }
        pod.set_up(pod_link.index, &req.id.ifname).await?;
        tracing::debug!(stage = "node side and pod addresses set");
        self.fault("after-pod-addr")?;

        // pod routes via the gateway
        let routes = pod_routes(addrs);
        if has_v4 {
            add_route(
                pod,
                IpNet::from(IpAddr::V4(GATEWAY_V4)),
                None,
                pod_link.index,
                None,
            )
            .await?;
        }
        for r in &routes {
            add_route(pod, r.dst, r.gw, pod_link.index, r.mtu).await?;
        }
        tracing::debug!(stage = "pod routes set");
        self.fault("after-pod-routes")?;

        // node routes to the pod
        for ipc in &ips {
            add_route(host, ipc.address, None, host_link.index, None).await?;
        }
        self.fault("after-host-route")?;

        Ok(CniResult {
            interfaces: vec![
                Interface {
                    name: host_name,
                    mac: host_link.mac,
                    mtu: Some(mtu),
                    sandbox: None,
                },
                Interface {
                    name: req.id.ifname.clone(),
                    mac: pod_link.mac,
                    mtu: Some(mtu),
                    sandbox: Some(req.pod_netns.sandbox()),
                },
            ],
            ips,
            routes,
            dns: addrs.dns.clone(),
        })
    }
}

/// Checks that the pod namespace exists (code 3 when it does not) and is a network
/// namespace (code 4, as `CNI_NETNS` is then invalid; also seen while a namespace is being
/// deleted, between the unmount and the unlink of its file).
pub fn check_pod_netns(netns: &Netns) -> Result<()> {
    netns.check().map_err(|e| match e {
        Error::InvalidConfig(reason) => Error::InvalidEnvironment {
            var: "CNI_NETNS".into(),
            reason,
        },
        other => other,
    })
}

#[async_trait]
impl Attach for VethAttach {
    async fn attach(
        &self,
        host: &Netns,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        check_pod_netns(&req.pod_netns)?;
        if addrs.ips.is_empty() {
            return Err(Error::config("IPAM returned no addresses"));
        }
        let pod_file = req.pod_netns.open()?;
        let (host_nl, pod_nl) = futures::try_join!(Nl::open(host), Nl::open(&req.pod_netns))?;
        if pod_nl.link_by_name(&req.id.ifname).await?.is_some() {
            return Err(Error::AlreadyExists {
                object: format!("interface {} in {}", req.id.ifname, req.pod_netns),
                reason: "CNI_IFNAME is taken in the pod namespace".into(),
            });
        }
        let host_name = host_ifname(&req.id);
        if host_nl.link_by_name(&host_name).await?.is_some() {
            return Err(Error::AlreadyExists {
                object: format!("host veth {host_name} in {host}"),
                reason: format!(
                    "attachment {} is already attached (ADD without DEL?)",
                    req.id
                ),
            });
        }
        tracing::debug!(stage = "netlink open, names free");
        let mtu = self.pod_mtu(&host_nl, req.mtu).await?;
        create_veth(
            &host_nl,
            &VethSpec {
                name: &host_name,
                peer_name: &req.id.ifname,
                peer_netns_fd: pod_file.as_raw_fd(),
                mtu,
            },
        )
        .await?;
        drop(pod_file);
        match self.attach_inner(&host_nl, &pod_nl, req, addrs, mtu).await {
            Ok(r) => {
                tracing::info!(attachment = %req.id, host_veth = %host_name, mtu, "attached");
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(attachment = %req.id, error = %e, "attach failed, removing veth");
                if let Some(l) = host_nl.link_by_name(&host_name).await.ok().flatten() {
                    if let Err(e2) = host_nl.delete_link(l.index, &host_name).await {
                        tracing::error!(error = %e2, "undo: delete host veth failed");
                    }
                }
                Err(e)
            }
        }
    }

    async fn check(&self, host: &Netns, req: &AttachRequest, expected: &CniResult) -> Result<()> {
        check_pod_netns(&req.pod_netns)?;
        let (host_nl, pod_nl) = futures::try_join!(Nl::open(host), Nl::open(&req.pod_netns))?;
        let mut diffs: Vec<String> = Vec::new();
        let sb = req.pod_netns.sandbox();
        let Some(pod_idx) = expected
            .interfaces
            .iter()
            .position(|i| i.name == req.id.ifname && i.sandbox.as_deref() == Some(sb.as_str()))
        else {
            return Err(check_failed(
                &req.id,
                format!(
                    "prevResult lists no interface {} in sandbox {sb}",
                    req.id.ifname
                ),
            ));
        };
        let want = &expected.interfaces[pod_idx];
        let want_mtu = match want.mtu {
            Some(m) => m,
            None => self.pod_mtu(&host_nl, req.mtu).await?,
        };
        let pod_ips: Vec<IpNet> = expected
            .ips
            .iter()
            .filter(|c| c.interface.is_none() || c.interface == Some(pod_idx))
            .map(|c| c.address)
            .collect();

        match pod_nl.link_by_name(&req.id.ifname).await? {
            None => diffs.push(format!("interface {} is missing in {sb}", req.id.ifname)),
            Some(link) => {
                if link.kind.as_deref() != Some("veth") {
                    diffs.push(format!("{} is {:?}, not a veth", link.name, link.kind));
                }
                if !link.up {
                    diffs.push(format!("{} is down", link.name));
                }
                if link.mtu != Some(want_mtu) {
                    diffs.push(format!(
                        "{} has mtu {:?}, expected {want_mtu}",
                        link.name, link.mtu
                    ));
                }
                if let (Some(w), Some(h)) = (&want.mac, &link.mac) {
                    if !w.eq_ignore_ascii_case(h) {
                        diffs.push(format!("{} has mac {h}, expected {w}", link.name));
                    }
                }
                let have = pod_nl.addresses(link.index).await?;
                for a in &pod_ips {
                    if !have.contains(a) {
                        diffs.push(format!("address {a} is missing on {}", link.name));
                    }
                }
                let routes = pod_nl.routes().await?;
                for r in &expected.routes {
                    if !route_present(&routes, r, link.index) {
                        diffs.push(format!(
                            "route {}{} is missing in the pod",
                            r.dst,
                            r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
                        ));
                    }
                }
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
                && sysctl::read(host, key).await? != "1"
            {
                diffs.push(format!("forwarding is off in the node ({key})"));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(check_failed(&req.id, diffs.join("; ")))
        }
    }

    async fn detach(&self, host: &Netns, req: &AttachRequest) -> Result<()> {
        let nl = Nl::open(host).await?;
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

fn check_failed(id: &AttachmentId, reason: String) -> Error {
    Error::CheckFailed {
        object: format!("attachment {id}"),
        reason,
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
}
