//! The steering side over rtnetlink: the xfrm interface and the routes into it.

use crate::config::{LinkMode, XfrmConfig};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoXfrm, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkXfrm, RouteMessageBuilder};
use scrambler_core::{Error, Netns, Result};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// What [`Rtnl::ensure_interface`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkChange {
    None,
    Created,
    Updated,
}

/// Main routing table.
const RT_TABLE_MAIN: u8 = 254;

/// An rtnetlink handle whose socket lives in a given namespace.
pub(crate) struct Rtnl {
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Rtnl {
    /// Opens an rtnetlink socket inside `netns` and drives it on the current runtime.
    pub async fn open(netns: &Netns) -> Result<Rtnl> {
        let fd: OwnedFd = netns
            .run_async(|| {
                let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
                    .map_err(|e| Error::io("open rtnetlink socket", "NETLINK_ROUTE", e))?;
                s.bind_auto()
                    .map_err(|e| Error::io("bind rtnetlink socket", "NETLINK_ROUTE", e))?;
                // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
                Ok(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) })
            })
            .await?;
        // SAFETY: the descriptor is an open netlink socket we own; TokioSocket takes it.
        let sock = unsafe { netlink_sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, handle, _) = rtnetlink::from_socket(sock);
        let task = tokio::spawn(conn);
        Ok(Rtnl { handle, task })
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(l) => Ok(l),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == nix::libc::ENODEV => {
                Ok(None)
            }
            Err(e) => Err(rt_error("get link", name, e)),
        }
    }

    /// Makes sure the steering interface exists, is up and has `mtu`; returns its index
    /// and what changed.
    pub async fn ensure_interface(&self, cfg: &XfrmConfig, mtu: u32) -> Result<(u32, LinkChange)> {
        let name = &cfg.interface;
        let existing = self.link(name).await?;
        let mut changed = LinkChange::None;
        let link = match (existing, cfg.link) {
            (Some(l), LinkMode::Existing) => return Ok((l.header.index, LinkChange::None)),
            (None, LinkMode::Existing) => {
                return Err(Error::config(format!(
                    "interface {name} does not exist (link mode \"existing\")"
                )))
            }
            (Some(l), LinkMode::Create) => {
                if xfrm_if_id(&l) != Some(cfg.if_id) {
                    return Err(Error::AlreadyExists {
                        object: format!("interface {name}"),
                        reason: format!(
                            "it is not an xfrm interface with if_id {:#x}; Scrambler does not touch it",
                            cfg.if_id
                        ),
                    });
                }
                l
            }
            (None, LinkMode::Create) => {
                let msg = LinkXfrm::new(name, 0, cfg.if_id).mtu(mtu).build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|e| match e {
                        rtnetlink::Error::NetlinkError(ref m)
                            if m.raw_code().abs() == nix::libc::EOPNOTSUPP =>
                        {
                            Error::Unsupported(format!(
                                "create xfrm interface {name}: the kernel lacks xfrm interfaces \
                                 (CONFIG_XFRM_INTERFACE)"
                            ))
                        }
                        e => rt_error("create xfrm interface", name, e),
                    })?;
                changed = LinkChange::Created;
                self.link(name).await?.ok_or_else(|| {
                    Error::kernel("create xfrm interface", name, "gone right after creation")
                })?
            }
        };
        let index = link.header.index;
        let cur_mtu = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        let up = link.header.flags.contains(LinkFlags::Up);
        if cur_mtu != Some(mtu) || !up {
            let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(|e| rt_error("set mtu/up of", name, e))?;
            if changed == LinkChange::None {
                changed = LinkChange::Updated;
            }
        }
        Ok((index, changed))
    }

    /// Deletes the interface when it is Scrambler's xfrm interface.
    pub async fn delete_interface(&self, cfg: &XfrmConfig) -> Result<bool> {
        if cfg.link != LinkMode::Create {
            return Ok(false);
        }
        match self.link(&cfg.interface).await? {
            Some(l) if xfrm_if_id(&l) == Some(cfg.if_id) => {
                self.handle
                    .link()
                    .del(l.header.index)
                    .execute()
                    .await
                    .map_err(|e| rt_error("delete xfrm interface", &cfg.interface, e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Scrambler's routes: via `index`, with Scrambler's protocol, in the main table.
    pub async fn owned_routes(&self, index: u32, proto: u8) -> Result<Vec<(IpNet, RouteMessage)>> {
        let mut out = Vec::new();
        for req in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut s = self.handle.route().get(req).execute();
            while let Some(r) = s.next().await {
                let r = r.map_err(|e| rt_error("dump routes", "main table", e))?;
                if u8::from(r.header.protocol) != proto || r.header.table != RT_TABLE_MAIN {
                    continue;
                }
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                if oif != Some(index) {
                    continue;
                }
                if let Some(net) = route_dst(&r) {
                    out.push((net, r));
                }
            }
        }
        Ok(out)
    }

    /// Adds routes to `nets` via `index`, pipelined; every answer is checked.
    pub async fn add_routes(&self, nets: &BTreeSet<IpNet>, index: u32, proto: u8) -> Result<()> {
        let reqs = nets.iter().map(|net| {
            let msg = route_msg(net, index, proto);
            let h = self.handle.clone();
            async move {
                h.route().add(msg).execute().await.map_err(|e| match e {
                    rtnetlink::Error::NetlinkError(ref m)
                        if m.raw_code().abs() == nix::libc::EEXIST =>
                    {
                        Error::AlreadyExists {
                            object: format!("route {net}"),
                            reason: "a route not made by Scrambler holds it; Scrambler does \
                                         not touch it"
                                .into(),
                        }
                    }
                    e => rt_error("add route", net, e),
                })
            }
        });
        first_error(futures::future::join_all(reqs).await)
    }

    /// Deletes the given (dumped) routes, pipelined; routes already gone are fine.
    pub async fn delete_routes(&self, routes: Vec<(IpNet, RouteMessage)>) -> Result<()> {
        let reqs = routes.into_iter().map(|(net, msg)| {
            let h = self.handle.clone();
            async move {
                match h.route().del(msg).execute().await {
                    Ok(()) => Ok(()),
                    Err(rtnetlink::Error::NetlinkError(m))
                        if m.raw_code().abs() == nix::libc::ESRCH =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(rt_error("delete route", net, e)),
                }
            }
        });
        first_error(futures::future::join_all(reqs).await)
    }
}

fn first_error(results: Vec<Result<()>>) -> Result<()> {
    let mut errs = results.into_iter().filter_map(|r| r.err());
    match errs.next() {
        None => Ok(()),
        Some(e) => {
            let more = errs.count();
            if more > 0 {
                tracing::warn!(more, "further route operations failed too");
            }
            Err(e)
        }
    }
}

fn route_msg(net: &IpNet, index: u32, proto: u8) -> RouteMessage {
    let mut msg = match net {
        IpNet::V4(n) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .build(),
        IpNet::V6(n) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(n.network(), n.prefix_len())
            .output_interface(index)
            .build(),
    };
    msg.header.protocol = RouteProtocol::from(proto);
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    msg.header.table = RT_TABLE_MAIN;
    msg
}

fn route_dst(r: &RouteMessage) -> Option<IpNet> {
    let len = r.header.destination_prefix_length;
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(std::net::IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(std::net::IpAddr::V6(*a)),
        _ => None,
    });
    match (addr, r.header.address_family) {
        (Some(a), _) => IpNet::new(a, len).ok(),
        (None, AddressFamily::Inet) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok(),
        (None, AddressFamily::Inet6) => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok(),
        _ => None,
    }
}

/// The if_id of an xfrm interface, `None` for other kinds.
fn xfrm_if_id(l: &LinkMessage) -> Option<u32> {
    let infos = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    })?;
    let mut is_xfrm = false;
    let mut if_id = None;
    for i in infos {
        match i {
            LinkInfo::Kind(InfoKind::Xfrm) => is_xfrm = true,
            LinkInfo::Data(InfoData::Xfrm(d)) => {
                if_id = d.iter().find_map(|x| match x {
                    InfoXfrm::IfId(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    if is_xfrm {
        if_id
    } else {
        None
    }
}

/// Sets `net.ipv4.conf.<ifname>.disable_xfrm = 1` inside `netns`: routes through the
/// xfrm interface then skip the if_id-0 policy lookup (where the guard lives), and the
/// interface's own lookup with its if_id applies the mesh policies.
pub(crate) async fn disable_xfrm_lookup(netns: &Netns, ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/disable_xfrm");
    netns
        .run_async(move || {
            let cur = std::fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
            if cur.trim() != "1" {
                std::fs::write(&path, "1").map_err(|e| Error::io("write", &path, e))?;
            }
            Ok(())
        })
        .await
}

fn rt_error(op: &'static str, object: impl std::fmt::Display, e: rtnetlink::Error) -> Error {
    Error::kernel(op, object, e)
}
