//! Netlink plumbing: an rtnetlink connection bound to one network namespace, and the few
//! link, address and route operations the veth attachment needs.
//!
//! The socket is opened on a thread that has entered the namespace
//! ([`Netns::run_async`]); it stays bound to that namespace, so every request made through
//! the returned [`Nl`] acts there while the process itself never changes namespace.

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use scrambler_core::{Error, Netns, Result};
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Route protocol number marking the routes Scrambler's CNI creates (`ip route … proto 0x5c`).
pub const ROUTE_PROTO: u8 = 0x5c;

const ENODEV: i32 = 19;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// An rtnetlink connection inside one namespace.
#[derive(Debug)]
pub struct Nl {
    handle: rtnetlink::Handle,
    netns: Netns,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the kernel reports about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address, `aa:bb:…`.
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Link kind (`veth`, `bridge`, …).
    pub kind: Option<String>,
    /// `ifalias`.
    pub alias: Option<String>,
}

/// One route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    /// Destination.
    pub dst: IpNet,
    /// Gateway.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// Routing table.
    pub table: u32,
}

/// What to create with [`Nl::create_veth`].
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in this namespace.
    pub name: &'a str,
    /// Name of the other end.
    pub peer_name: &'a str,
    /// Namespace (open file descriptor) that receives the other end.
    pub peer_netns_fd: RawFd,
    /// MTU of both ends.
    pub mtu: u32,
}

impl Nl {
    /// Opens a connection inside `netns`.
    pub async fn open(netns: &Netns) -> Result<Nl> {
        let rt = tokio::runtime::Handle::current();
        let what = netns.display();
        let (conn, handle, _) = netns
            .run_async(move || {
                let _guard = rt.enter();
                rtnetlink::new_connection()
                    .map_err(|e| Error::io("open netlink socket in", what, e))
            })
            .await?;
        let task = tokio::spawn(conn);
        Ok(Nl {
            handle,
            netns: netns.clone(),
            task,
        })
    }

    /// The namespace this connection acts in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    fn obj(&self, what: impl std::fmt::Display) -> String {
        format!("{what} in {}", self.netns)
    }

    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkState>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_state(&msg))),
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(kernel("get link", self.obj(name), &e)),
        }
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| link_state(&m))
            .try_collect()
            .await
            .map_err(|e| kernel("list links", self.obj("links"), &e))
    }

    /// Creates a veth pair whose peer is created directly in another namespace.
    pub async fn create_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(spec.peer_name.to_string())
            .mtu(spec.mtu)
            .setns_by_fd(spec.peer_netns_fd)
            .build();
        let msg = LinkVeth::new(spec.name, spec.peer_name)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .mtu(spec.mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| match errno(&e) {
                Some(EEXIST) => Error::AlreadyExists {
                    object: format!("veth {} / {}", spec.name, spec.peer_name),
                    reason: "an interface with that name exists".into(),
                },
                _ => kernel("create veth", self.obj(spec.name), &e),
            })
    }

    /// Sets the `ifalias` of a link (the kernel ignores it at creation).
    pub async fn set_alias(&self, index: u32, name: &str, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(|e| kernel("set alias of link", self.obj(name), &e))
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel("set link up", self.obj(name), &e))
    }

    /// Deletes a link; a link that is already gone is not an error. Returns whether it
    /// existed.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(false),
            Err(e) => Err(kernel("delete link", self.obj(name), &e)),
        }
    }

    /// Adds `addr` to link `index`. `link_scope` gives it scope link; IPv6 addresses are
    /// added without duplicate address detection (the address is ours by IPAM).
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: IpNet,
        link_scope: bool,
    ) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        let msg = req.message_mut();
        if link_scope {
            msg.header.scope = AddressScope::Link;
        }
        if addr.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute().await.map_err(|e| match errno(&e) {
            Some(EEXIST) => Error::AlreadyExists {
                object: format!("address {addr} on {}", self.obj(name)),
                reason: "already assigned".into(),
            },
            _ => kernel("add address", format!("{addr} on {}", self.obj(name)), &e),
        })
    }

    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel("list addresses", self.obj(format!("link {index}")), &e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds a route to `dst` out of link `index`, via `gw` or on-link (scope link), in the
    /// main table, marked with [`ROUTE_PROTO`].
    pub async fn add_route(
        &self,
        dst: IpNet,
        gw: Option<IpAddr>,
        index: u32,
        mtu: Option<u32>,
    ) -> Result<()> {
        let msg = route_message(dst, gw, index, mtu)?;
        self.handle.route().add(msg).execute().await.map_err(|e| {
            let what = match gw {
                Some(g) => format!("{dst} via {g}"),
                None => format!("{dst} dev {index}"),
            };
            match errno(&e) {
                Some(EEXIST) => Error::AlreadyExists {
                    object: format!("route {what} {}", self.obj("")),
                    reason: "a route to that destination exists".into(),
                },
                _ => kernel("add route", self.obj(what), &e),
            }
        })
    }

    /// The routes of the main table of both families.
    pub async fn routes(&self) -> Result<Vec<RouteState>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            let msgs: Vec<RouteMessage> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel("list routes", self.obj("routes"), &e))?;
            out.extend(msgs.iter().filter_map(route_state));
        }
        Ok(out)
    }

    /// MTU of the interface that carries the default route, and whether that route is
    /// IPv6 (IPv4 preferred); `None` when there is no default route.
    pub async fn default_route_mtu(&self) -> Result<Option<(u32, bool)>> {
        let routes = self.routes().await?;
        for v6 in [false, true] {
            let found = routes.iter().find(|r| {
                r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6 && r.table == 254
            });
            if let Some(oif) = found.and_then(|r| r.oif) {
                let link = self.link_by_index(oif).await?;
                if let Some(mtu) = link.and_then(|l| l.mtu) {
                    return Ok(Some((mtu, v6)));
                }
            }
        }
        Ok(None)
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(kernel("get link", self.obj(index), &e)),
        }
    }
}

fn route_message(
    dst: IpNet,
    gw: Option<IpAddr>,
    index: u32,
    mtu: Option<u32>,
) -> Result<RouteMessage> {
    let bad = bad_route(dst);
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(&bad)?
        .output_interface(index)
        .protocol(RouteProtocol::Other(ROUTE_PROTO));
    match gw {
        Some(g) => b = b.gateway(g).map_err(&bad)?,
        None => b = b.scope(RouteScope::Link),
    }
    let mut msg = b.kind(RouteType::Unicast).build();
    if let Some(mtu) = mtu {
        use rtnetlink::packet_route::route::RouteMetric;
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    Ok(msg)
}

fn bad_route<E: std::fmt::Display>(dst: IpNet) -> impl Fn(E) -> Error {
    move |e| Error::config(format!("route {dst}: {e}"))
}

fn route_state(m: &RouteMessage) -> Option<RouteState> {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::Gateway(a) => gw = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let dst = match dst {
        Some(ip) => IpNet::new(ip, m.header.destination_prefix_length).ok()?,
        None => match m.header.address_family {
            AddressFamily::Inet6 => "::/0".parse().ok()?,
            _ => "0.0.0.0/0".parse().ok()?,
        },
    };
    Some(RouteState {
        dst,
        gw,
        oif,
        table,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn link_state(m: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: m.header.index,
        name: String::new(),
        mtu: None,
        mac: None,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(v) => s.mtu = Some(*v),
            LinkAttribute::Address(mac) => s.mac = Some(format_mac(mac)),
            LinkAttribute::IfAlias(al) => s.alias = Some(al.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        s.kind = Some(kind_name(k));
                    }
                }
            }
            _ => {}
        }
    }
    s
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn kernel(op: &'static str, object: impl std::fmt::Display, e: &rtnetlink::Error) -> Error {
    let reason = match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    Error::kernel(op, object, reason)
}
