//! Netlink plumbing of the ipvlan attachment: an rtnetlink connection bound to one network
//! namespace, and the link, address and route operations the attachment needs.
//!
//! The socket is opened on a thread that has entered the namespace
//! ([`Netns::run_async`]) and stays bound to it, so the process never changes namespace.
//! (scrambler-cni has the same kind of connection for its veth backend; it depends on this
//! crate, so this crate cannot use that one.)

use crate::config::{Flag, Mode};
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, IpVlanFlags, IpVlanMode, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkIpVlan, LinkUnspec, RouteMessageBuilder};
use scrambler_core::{Error, Netns, Result};
use std::net::IpAddr;
use std::os::fd::RawFd;

/// Route protocol number marking routes Scrambler creates (`proto 0x5c`, as scrambler-cni).
pub const ROUTE_PROTO: u8 = 0x5c;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

const ENOENT: i32 = 2;
const ENODEV: i32 = 19;
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// Link kind (`ipvlan`, `veth`, …).
    pub kind: Option<String>,
    /// `ifalias`.
    pub alias: Option<String>,
    /// Parent link index (`IFLA_LINK`; for a slave in another namespace, an index there).
    pub parent: Option<u32>,
    /// Ipvlan mode, for ipvlan links.
    pub ipvlan_mode: Option<Mode>,
    /// Ipvlan flag, for ipvlan links.
    pub ipvlan_flag: Option<Flag>,
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

/// What to create with [`Nl::create_ipvlan`].
#[derive(Debug, Clone)]
pub struct IpvlanSpec<'a> {
    /// Name of the new link (in the target namespace).
    pub name: &'a str,
    /// Index of the master in this connection's namespace.
    pub master: u32,
    /// Mode.
    pub mode: Mode,
    /// Flag.
    pub flag: Flag,
    /// MTU.
    pub mtu: u32,
    /// Namespace (open file descriptor) the link is created in.
    pub netns_fd: RawFd,
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
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(kernel("get link", self.obj(name), &e)),
        }
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(kernel("get link", self.obj(format!("index {index}")), &e)),
        }
    }

    /// Creates an ipvlan slave of `spec.master` (a link of this namespace) directly in
    /// the namespace `spec.netns_fd`, named `spec.name` there.
    pub async fn create_ipvlan(&self, spec: &IpvlanSpec<'_>) -> Result<()> {
        let msg = LinkIpVlan::new(spec.name, spec.master, ipvlan_mode(spec.mode))
            .flag(ipvlan_flags(spec.flag))
            .mtu(spec.mtu)
            .setns_by_fd(spec.netns_fd)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| match errno(&e) {
                Some(EEXIST) => Error::AlreadyExists {
                    object: format!("interface {}", spec.name),
                    reason: "an interface with that name exists in the pod namespace".into(),
                },
                _ => kernel(
                    "create ipvlan",
                    self.obj(format!("{} on master index {}", spec.name, spec.master)),
                    &e,
                ),
            })
    }

    /// Sets the `ifalias` of a link.
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

    /// Deletes a link; returns whether it existed.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(kernel("delete link", self.obj(name), &e)),
        }
    }

    /// Adds `addr` (with its prefix, so the subnet is on-link) to link `index`; IPv6
    /// without duplicate address detection (the address is ours by IPAM).
    pub async fn add_address(&self, index: u32, name: &str, addr: IpNet) -> Result<()> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .map_err(|e| kernel("add address", format!("{addr} on {}", self.obj(name)), &e))
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

    /// Adds a route to `dst` out of link `index` in the main table, via `gw` or on-link
    /// (scope link), marked with [`ROUTE_PROTO`].
    pub async fn add_route(&self, dst: IpNet, gw: Option<IpAddr>, index: u32) -> Result<()> {
        let what = match gw {
            Some(g) => format!("{dst} via {g}"),
            None => format!("{dst} dev {index}"),
        };
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .map_err(|e| Error::config(format!("route {what}: {e}")))?
            .output_interface(index)
            .protocol(RouteProtocol::Other(ROUTE_PROTO));
        match gw {
            Some(g) => {
                b = b
                    .gateway(g)
                    .map_err(|e| Error::config(format!("route {what}: {e}")))?
            }
            None => b = b.scope(RouteScope::Link),
        }
        let msg = b.kind(RouteType::Unicast).build();
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| kernel("add route", self.obj(&what), &e))
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
        Ok(out.into_iter().filter(|r| r.table == MAIN_TABLE).collect())
    }

    /// The output interface of the default route of the main table (IPv4 preferred).
    pub async fn default_route_oif(&self) -> Result<Option<u32>> {
        let routes = self.routes().await?;
        Ok([false, true].iter().find_map(|v6| {
            routes
                .iter()
                .find(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == *v6)
                .and_then(|r| r.oif)
        }))
    }
}

fn ipvlan_mode(m: Mode) -> IpVlanMode {
    match m {
        Mode::L2 => IpVlanMode::L2,
        Mode::L3 => IpVlanMode::L3,
        Mode::L3s => IpVlanMode::L3S,
    }
}

fn ipvlan_flags(f: Flag) -> IpVlanFlags {
    match f {
        Flag::Bridge => IpVlanFlags::empty(),
        Flag::Private => IpVlanFlags::Private,
        Flag::Vepa => IpVlanFlags::Vepa,
    }
}

fn mode_of(m: &IpVlanMode) -> Option<Mode> {
    match m {
        IpVlanMode::L2 => Some(Mode::L2),
        IpVlanMode::L3 => Some(Mode::L3),
        IpVlanMode::L3S => Some(Mode::L3s),
        _ => None,
    }
}

fn flag_of(f: &IpVlanFlags) -> Option<Flag> {
    if *f == IpVlanFlags::empty() {
        Some(Flag::Bridge)
    } else if *f == IpVlanFlags::Private {
        Some(Flag::Private)
    } else if *f == IpVlanFlags::Vepa {
        Some(Flag::Vepa)
    } else {
        None
    }
}

fn link_state(m: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(v) => s.mtu = Some(*v),
            LinkAttribute::Address(mac) => s.mac = Some(format_mac(mac)),
            LinkAttribute::IfAlias(al) => s.alias = Some(al.clone()),
            LinkAttribute::Link(i) => s.parent = Some(*i),
            LinkAttribute::LinkInfo(infos) => link_info(infos, &mut s),
            _ => {}
        }
    }
    s
}

fn link_info(infos: &[LinkInfo], s: &mut LinkState) {
    for i in infos {
        match i {
            LinkInfo::Kind(k) => s.kind = Some(kind_name(k)),
            LinkInfo::Data(InfoData::IpVlan(data)) => {
                for d in data {
                    match d {
                        InfoIpVlan::Mode(m) => s.ipvlan_mode = mode_of(m),
                        InfoIpVlan::Flags(f) => s.ipvlan_flag = flag_of(f),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::IpVlan => "ipvlan".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
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

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV) | Some(ENOENT))
}

fn kernel(op: &'static str, object: impl std::fmt::Display, e: &rtnetlink::Error) -> Error {
    let reason = match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    Error::kernel(op, object, reason)
}
