//! Netlink plumbing shared by Scrambler's attachments (scrambler-cni's veth backend,
//! scrambler-ipvlan and scrambler-vpp's attachment): an rtnetlink connection bound to one
//! network namespace, the link, address and route operations they need, and the veth pairs
//! of the two veth dataplanes ([`veth`]).
//!
//! The socket of another namespace is opened on a thread that has entered it
//! ([`Netns::run_async`]); it stays bound to that namespace, so every request made through
//! the returned [`Nl`] acts there while the process itself never changes namespace.
//! Operations specific to one attachment (creating a veth pair, an ipvlan slave) live in
//! that attachment's crate and use [`Nl::handle`], [`errno`] and [`kernel_error`].
#![warn(missing_docs)]

#[cfg(test)]
mod fuzz;
pub mod veth;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, IpVlanFlags, IpVlanMode, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use scrambler_core::{Error, Netns, Result, Route};
use std::net::IpAddr;

/// Route protocol number marking the routes Scrambler creates (`ip route … proto 0x5c`).
pub const ROUTE_PROTO: u8 = 0x5c;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// `ENOENT`.
pub const ENOENT: i32 = 2;
/// `EEXIST`.
pub const EEXIST: i32 = 17;
/// `ENODEV`.
pub const ENODEV: i32 = 19;

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
    /// Link kind (`ipvlan`, `veth`, `bridge`, …).
    pub kind: Option<String>,
    /// `ifalias`.
    pub alias: Option<String>,
    /// Parent link index (`IFLA_LINK`; for a slave in another namespace, an index there).
    pub parent: Option<u32>,
    /// Ipvlan mode as the kernel reports it, for ipvlan links.
    pub ipvlan_mode: Option<IpVlanMode>,
    /// Ipvlan flags as the kernel reports them, for ipvlan links.
    pub ipvlan_flags: Option<IpVlanFlags>,
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

impl Nl {
    /// Opens a connection inside `netns`.
    pub async fn open(netns: &Netns) -> Result<Nl> {
        let what = netns.display();
        let open = move || {
            rtnetlink::new_connection().map_err(|e| Error::io("open netlink socket in", what, e))
        };
        // opening a socket does not block: the current namespace's is opened right here
        let (conn, handle, _) = match netns {
            Netns::Current => open()?,
            Netns::Path(_) => {
                let rt = tokio::runtime::Handle::current();
                netns
                    .run_async(move || {
                        let _guard = rt.enter();
                        open()
                    })
                    .await?
            }
        };
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

    /// The underlying rtnetlink handle, for operations specific to one attachment.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// `what in <namespace>`, naming an object of this connection's namespace in errors.
    pub fn obj(&self, what: impl std::fmt::Display) -> String {
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
            Err(e) => Err(kernel_error("get link", self.obj(name), &e)),
        }
    }

    /// The link called `name`, which was just created: a link that is missing is a kernel
    /// error ("it vanished after creation").
    pub async fn existing_link(&self, name: &str) -> Result<LinkState> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::kernel("find link", self.obj(name), "it vanished after creation"))
    }

    /// Fails with [`Error::AlreadyExists`] when the link `ifname` exists (in a pod
    /// namespace: `CNI_IFNAME` is taken).
    pub async fn ensure_pod_ifname_free(&self, ifname: &str) -> Result<()> {
        match self.link_by_name(ifname).await? {
            None => Ok(()),
            Some(_) => Err(Error::AlreadyExists {
                object: format!("interface {}", self.obj(ifname)),
                reason: "CNI_IFNAME is taken in the pod namespace".into(),
            }),
        }
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let mut req = self.handle.link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(kernel_error(
                "get link",
                self.obj(format!("index {index}")),
                &e,
            )),
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
            .map_err(|e| kernel_error("list links", self.obj("links"), &e))
    }

    /// Adds the link `msg` (built by the caller: a veth pair, an ipvlan slave, …). A name
    /// that exists already is `exists`; any other failure is a kernel error of `op` on
    /// `what` in this namespace.
    pub async fn add_link(
        &self,
        msg: LinkMessage,
        op: &'static str,
        what: impl std::fmt::Display,
        exists: Error,
    ) -> Result<()> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Err(exists),
            Err(e) => Err(kernel_error(op, self.obj(what), &e)),
        }
    }

    /// Sets the `ifalias` of a link (the kernel ignores it at creation).
    pub async fn set_alias(&self, index: u32, name: &str, alias: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(|e| kernel_error("set alias of link", self.obj(name), &e))
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| kernel_error("set link up", self.obj(name), &e))
    }

    /// Deletes a link; a link that is already gone is not an error. Returns whether it
    /// existed.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(kernel_error("delete link", self.obj(name), &e)),
        }
    }

    /// Adds `addr` (with its prefix, so the subnet is on-link) to link `index`, returning
    /// the kernel's error as is. `link_scope` gives it scope link; IPv6 addresses are added
    /// without duplicate address detection (the address is ours by IPAM).
    pub async fn try_add_address(
        &self,
        index: u32,
        addr: IpNet,
        link_scope: bool,
    ) -> std::result::Result<(), rtnetlink::Error> {
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
        req.execute().await
    }

    /// [`Nl::try_add_address`], any failure reported as a kernel error on `addr on name`.
    pub async fn add_address(
        &self,
        index: u32,
        name: &str,
        addr: IpNet,
        link_scope: bool,
    ) -> Result<()> {
        self.try_add_address(index, addr, link_scope)
            .await
            .map_err(|e| kernel_error("add address", format!("{addr} on {}", self.obj(name)), &e))
    }

    /// Adds `addr` to `link` ([`Nl::try_add_address`]); an address already assigned is
    /// [`Error::AlreadyExists`], any other failure a kernel error on `addr on link`.
    pub async fn add_new_address(&self, link: &LinkState, addr: IpNet, scope: bool) -> Result<()> {
        let on_link = || format!("{addr} on {}", self.obj(&link.name));
        match self.try_add_address(link.index, addr, scope).await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Err(Error::AlreadyExists {
                object: format!("address {}", on_link()),
                reason: "already assigned".into(),
            }),
            Err(e) => Err(kernel_error("add address", on_link(), &e)),
        }
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
            .map_err(|e| kernel_error("list addresses", self.obj(format!("link {index}")), &e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(address_of)
            .collect())
    }

    /// Adds a route to `dst` out of link `index` in the main table, via `gw` or on-link
    /// (scope link), marked with [`ROUTE_PROTO`]; any failure is reported as a kernel error.
    pub async fn add_route(
        &self,
        dst: IpNet,
        gw: Option<IpAddr>,
        index: u32,
        mtu: Option<u32>,
    ) -> Result<()> {
        let msg = route_message(dst, gw, index, mtu)?;
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| kernel_error("add route", self.obj(route_name(dst, gw, index)), &e))
    }

    /// The routes of all tables of both families.
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
                .map_err(|e| kernel_error("list routes", self.obj("routes"), &e))?;
            out.extend(msgs.iter().filter_map(route_state));
        }
        Ok(out)
    }

    /// The routes of the main table of both families.
    pub async fn main_routes(&self) -> Result<Vec<RouteState>> {
        let routes = self.routes().await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.table == MAIN_TABLE)
            .collect())
    }

    /// The output interface of the default route of the main table (IPv4 preferred).
    pub async fn default_route_oif(&self) -> Result<Option<u32>> {
        let routes = self.main_routes().await?;
        Ok([false, true]
            .iter()
            .find_map(|v6| default_route(&routes, *v6).and_then(|r| r.oif)))
    }

    /// MTU of the interface that carries the main table's default route, and whether that
    /// route is IPv6 (IPv4 preferred); `None` when there is no default route.
    pub async fn default_route_mtu(&self) -> Result<Option<(u32, bool)>> {
        let routes = self.main_routes().await?;
        for v6 in [false, true] {
            if let Some(oif) = default_route(&routes, v6).and_then(|r| r.oif) {
                let link = self.link_by_index(oif).await?;
                if let Some(mtu) = link.and_then(|l| l.mtu) {
                    return Ok(Some((mtu, v6)));
                }
            }
        }
        Ok(None)
    }
}

fn default_route(routes: &[RouteState], v6: bool) -> Option<&RouteState> {
    routes
        .iter()
        .find(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv6() == v6)
}

/// Whether `have` holds `want` in the main table out of link `oif` (with `want`'s gateway,
/// when it has one).
pub fn route_present(have: &[RouteState], want: &Route, oif: u32) -> bool {
    have.iter().any(|r| {
        r.table == MAIN_TABLE
            && r.dst == want.dst.trunc()
            && r.oif == Some(oif)
            && (want.gw.is_none() || r.gw == want.gw)
    })
}

/// `dst via gw` or `dst dev index`, naming a route in errors.
pub fn route_name(dst: IpNet, gw: Option<IpAddr>, index: u32) -> String {
    match gw {
        Some(g) => format!("{dst} via {g}"),
        None => format!("{dst} dev {index}"),
    }
}

/// The message adding a unicast route to `dst` out of link `index` in the main table, via
/// `gw` or on-link (scope link), marked with [`ROUTE_PROTO`], with an optional route MTU.
pub fn route_message(
    dst: IpNet,
    gw: Option<IpAddr>,
    index: u32,
    mtu: Option<u32>,
) -> Result<RouteMessage> {
    let bad = |e: String| Error::config(format!("route {}: {e}", route_name(dst, gw, index)));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| bad(e.to_string()))?
        .output_interface(index)
        .protocol(RouteProtocol::Other(ROUTE_PROTO));
    match gw {
        Some(g) => b = b.gateway(g).map_err(|e| bad(e.to_string()))?,
        None => b = b.scope(RouteScope::Link),
    }
    let mut msg = b.kind(RouteType::Unicast).build();
    if let Some(mtu) = mtu {
        msg.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    Ok(msg)
}

fn address_of(m: &AddressMessage) -> Option<IpNet> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
        _ => None,
    })
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
                        InfoIpVlan::Mode(m) => s.ipvlan_mode = Some(*m),
                        InfoIpVlan::Flags(f) => s.ipvlan_flags = Some(*f),
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
        InfoKind::Veth => "veth".into(),
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

/// Parses a hardware address `aa:bb:cc:dd:ee:ff` (as [`format_mac`] writes it).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether a netlink error says the object does not exist (`ENODEV`, `ENOENT`).
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV) | Some(ENOENT))
}

/// A kernel error for operation `op` on `object`, with the errno's text as reason.
pub fn kernel_error(
    op: &'static str,
    object: impl std::fmt::Display,
    e: &rtnetlink::Error,
) -> Error {
    let reason = match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    Error::kernel(op, object, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:5c:00:0a:ff:01"),
            Some([2, 0x5c, 0, 10, 255, 1])
        );
        assert_eq!(parse_mac("02:5c"), None);
        assert_eq!(parse_mac("02:5c:00:0a:ff:01:00"), None);
        assert_eq!(
            parse_mac(&format_mac(&[2, 0x5c, 0, 10, 255, 1])),
            Some([2, 0x5c, 0, 10, 255, 1])
        );
    }
}
