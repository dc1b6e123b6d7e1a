//! Routes: one message builder ([`RouteSpec`]), adding and deleting (one at a time or
//! pipelined), reading them as [`RouteState`], and the queries over them.

use crate::{errno, first_error, is_gone, kernel_error, Exists, Nl, EEXIST, ESRCH};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;
use scrambler_core::{Error, Result, Route};
use std::net::IpAddr;

/// Route protocol number marking the routes Scrambler creates (`ip route … proto 0x5c`).
pub const ROUTE_PROTO: u8 = 0x5c;
/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A unicast route of routing table `table` (the main table unless told otherwise) to
/// `dst` out of link `oif`, via `gw` or on-link (scope link), marked with `protocol`, with
/// an optional route MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination.
    pub dst: IpNet,
    /// Gateway; `None`: on-link.
    pub gw: Option<IpAddr>,
    /// Output interface.
    pub oif: u32,
    /// Route MTU.
    pub mtu: Option<u32>,
    /// Route protocol number.
    pub protocol: u8,
    /// Preferred source address (`src`) for traffic the node itself sends on this route;
    /// it must be one of the node's addresses.
    pub src: Option<IpAddr>,
    /// Routing table ([`MAIN_TABLE`] unless set with [`RouteSpec::in_table`]).
    pub table: u32,
    /// An `unreachable` route (no interface, gateway or source: `oif` is ignored) instead
    /// of a unicast one ([`RouteSpec::unreachable`]).
    pub unreachable: bool,
    /// Route metric (`ip route … metric N`); `None`: the kernel's default.
    pub metric: Option<u32>,
}

impl RouteSpec {
    /// A route to `dst` out of `oif`, via `gw` or on-link, marked with [`ROUTE_PROTO`].
    pub fn new(dst: IpNet, gw: Option<IpAddr>, oif: u32) -> RouteSpec {
        RouteSpec {
            dst,
            gw,
            oif,
            mtu: None,
            protocol: ROUTE_PROTO,
            src: None,
            table: MAIN_TABLE,
            unreachable: false,
            metric: None,
        }
    }

    /// `unreachable dst metric metric` in the main table, marked with [`ROUTE_PROTO`]: a
    /// lookup ending there fails (`ENETUNREACH` for the node's own sockets, an ICMP
    /// unreachable for forwarded packets) instead of falling through to a shorter prefix.
    pub fn unreachable(dst: IpNet, metric: u32) -> RouteSpec {
        RouteSpec {
            unreachable: true,
            metric: Some(metric),
            ..RouteSpec::new(dst, None, 0)
        }
    }

    /// The route `r` out of `oif` (with its gateway and MTU), marked with [`ROUTE_PROTO`].
    pub fn of(r: &Route, oif: u32) -> RouteSpec {
        RouteSpec {
            mtu: r.mtu,
            ..RouteSpec::new(r.dst, r.gw, oif)
        }
    }

    /// The same route marked with `protocol`.
    pub fn with_protocol(self, protocol: u8) -> RouteSpec {
        RouteSpec { protocol, ..self }
    }

    /// The same route with preferred source `src`.
    pub fn with_src(self, src: Option<IpAddr>) -> RouteSpec {
        RouteSpec { src, ..self }
    }

    /// The same route in routing table `table`.
    pub fn in_table(self, table: u32) -> RouteSpec {
        RouteSpec { table, ..self }
    }

    /// `dst via gw` or `dst dev oif` (and `table N` outside the main table), naming the
    /// route in errors.
    pub fn name(&self) -> String {
        let r = match (self.unreachable, self.gw) {
            (true, _) => format!("unreachable {}", self.dst),
            (false, Some(g)) => format!("{} via {g}", self.dst),
            (false, None) => format!("{} dev {}", self.dst, self.oif),
        };
        let r = match self.metric {
            Some(m) => format!("{r} metric {m}"),
            None => r,
        };
        match self.table {
            MAIN_TABLE => r,
            t => format!("{r} table {t}"),
        }
    }

    /// The rtnetlink message adding (or deleting) this route.
    pub fn message(&self) -> Result<RouteMessage> {
        let bad = |e: String| Error::config(format!("route {}: {e}", self.name()));
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(self.dst.network(), self.dst.prefix_len())
            .map_err(|e| bad(e.to_string()))?
            .table_id(self.table)
            .protocol(RouteProtocol::from(self.protocol));
        if let Some(m) = self.metric {
            b = b.priority(m);
        }
        if self.unreachable {
            return Ok(b.kind(RouteType::Unreachable).build());
        }
        b = b.output_interface(self.oif);
        match self.gw {
            Some(g) => b = b.gateway(g).map_err(|e| bad(e.to_string()))?,
            None => b = b.scope(RouteScope::Link),
        }
        let mut msg = b.kind(RouteType::Unicast).build();
        if let Some(mtu) = self.mtu {
            msg.attributes
                .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        }
        if let Some(src) = self.src {
            msg.attributes.push(RouteAttribute::PrefSource(match src {
                IpAddr::V4(a) => RouteAddress::Inet(a),
                IpAddr::V6(a) => RouteAddress::Inet6(a),
            }));
        }
        Ok(msg)
    }
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
    /// Route protocol number.
    pub protocol: u8,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// An `unreachable` route.
    pub unreachable: bool,
    /// Route metric (`RTA_PRIORITY`), when the kernel reports one.
    pub metric: Option<u32>,
}

impl Nl {
    /// Adds `route`. `exists` says what a route to that destination that the kernel has
    /// already means; returns whether the route was added. Any other failure is a kernel
    /// error.
    pub async fn add_route(&self, route: &RouteSpec, exists: Exists) -> Result<bool> {
        let msg = route.message()?;
        match self.handle().route().add(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => match exists {
                Exists::Keep => Ok(false),
                Exists::Fail => Err(Error::AlreadyExists {
                    object: format!("route {} {}", route.name(), self.obj("")),
                    reason: "a route to that destination exists".into(),
                }),
            },
            Err(e) => Err(kernel_error("add route", self.obj(route.name()), &e)),
        }
    }

    /// Adds `routes`, pipelined on this connection; every answer is checked and the first
    /// failure returned ([`Nl::add_route`]).
    pub async fn add_routes(&self, routes: &[RouteSpec], exists: Exists) -> Result<()> {
        let reqs = routes.iter().map(|r| self.add_route(r, exists));
        first_error(futures::future::join_all(reqs).await, "route adds").map(drop)
    }

    /// Deletes `route`; a route that is already gone is not an error. Returns whether it
    /// existed.
    pub async fn delete_route(&self, route: &RouteSpec) -> Result<bool> {
        let msg = route.message()?;
        match self.handle().route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) || errno(&e) == Some(ESRCH) => Ok(false),
            Err(e) => Err(kernel_error("delete route", self.obj(route.name()), &e)),
        }
    }

    /// Deletes `routes`, pipelined on this connection ([`Nl::delete_route`]).
    pub async fn delete_routes(&self, routes: &[RouteSpec]) -> Result<()> {
        let reqs = routes.iter().map(|r| self.delete_route(r));
        first_error(futures::future::join_all(reqs).await, "route deletes").map(drop)
    }

    /// The routes of all tables of both families.
    pub async fn routes(&self) -> Result<Vec<RouteState>> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            let msgs: Vec<RouteMessage> = self
                .handle()
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

    /// The routes of the main table out of link `oif` marked with `protocol`.
    pub async fn owned_routes(&self, oif: u32, protocol: u8) -> Result<Vec<RouteState>> {
        let routes = self.main_routes().await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.oif == Some(oif) && r.protocol == protocol)
            .collect())
    }

    /// The `unreachable` routes of the main table marked with `protocol` at `metric`.
    pub async fn owned_unreachable_routes(
        &self,
        protocol: u8,
        metric: u32,
    ) -> Result<Vec<RouteState>> {
        let routes = self.main_routes().await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.unreachable && r.protocol == protocol && r.metric == Some(metric))
            .collect())
    }

    /// The routes of table `table` out of link `oif` marked with `protocol`.
    pub async fn owned_routes_in(
        &self,
        table: u32,
        oif: u32,
        protocol: u8,
    ) -> Result<Vec<RouteState>> {
        let routes = self.routes().await?;
        Ok(routes
            .into_iter()
            .filter(|r| r.table == table && r.oif == Some(oif) && r.protocol == protocol)
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
        Ok(self.default_route_mtus().await?.into_iter().next())
    }

    /// The MTU of the interface of each default route in the main table, IPv4's first:
    /// `(mtu, is_ipv6)` per family that has one.
    pub async fn default_route_mtus(&self) -> Result<Vec<(u32, bool)>> {
        let routes = self.main_routes().await?;
        let mut out = Vec::new();
        for v6 in [false, true] {
            if let Some(oif) = default_route(&routes, v6).and_then(|r| r.oif) {
                let link = self.link_by_index(oif).await?;
                if let Some(mtu) = link.and_then(|l| l.mtu) {
                    out.push((mtu, v6));
                }
            }
        }
        Ok(out)
    }
}

pub(crate) fn default_route(routes: &[RouteState], v6: bool) -> Option<&RouteState> {
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

pub(crate) fn route_state(m: &RouteMessage) -> Option<RouteState> {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut src = None;
    let mut metric = None;
    let mut table = u32::from(m.header.table);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(a) => dst = route_ip(a),
            RouteAttribute::PrefSource(a) => src = route_ip(a),
            RouteAttribute::Gateway(a) => gw = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = Some(*p),
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
        protocol: u8::from(m.header.protocol),
        src,
        unreachable: m.header.kind == RouteType::Unreachable,
        metric,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_route_message_has_no_interface_and_reads_back() {
        let spec =
            RouteSpec::unreachable("fd00:10::/56".parse().unwrap(), 0x5c5c).with_protocol(92);
        assert_eq!(spec.name(), "unreachable fd00:10::/56 metric 23644");
        let msg = spec.message().unwrap();
        assert_eq!(msg.header.kind, RouteType::Unreachable);
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_))));
        let st = route_state(&msg).unwrap();
        assert!(st.unreachable);
        assert_eq!(st.metric, Some(0x5c5c));
        assert_eq!(st.protocol, 92);
        assert_eq!(st.dst.to_string(), "fd00:10::/56");
        let unicast = route_state(&RouteSpec::new(spec.dst, None, 3).message().unwrap()).unwrap();
        assert!(!unicast.unreachable);
        assert_eq!(unicast.metric, None);
    }
}
