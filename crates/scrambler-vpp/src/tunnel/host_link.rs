//! The host link: the node's own (Linux) network stack joined to its VPP, so that node ↔
//! remote pod traffic rides the mesh like pod traffic.
//!
//! VPP owns the node's uplink, so the host has no path to other nodes but through VPP.
//! Without linux-cp the host is attached to VPP as a pod is (see [`crate::attach`]): a veth
//! pair in the node's namespace, [`HOST_LINK_IF`] on the host side, [`HOST_LINK_VPP_IF`]
//! taken by VPP with af_packet, both ends marked with the `ifalias` [`HOST_LINK_ALIAS`].
//!
//! * **host side**: the node's IPv4 tunnel address ([`scrambler_core::Node::tunnel_address`],
//!   the first address of its pod CIDR) as a /32, a permanent neighbour for the VPP gateway
//!   ([`GATEWAY_V4`] → [`HOST_LINK_MAC`]), a link route to it, and a route per IPv4
//!   cluster CIDR via the gateway with the tunnel address as source (route protocol
//!   [`ROUTE_PROTO`]): the host's traffic to pods leaves from its tunnel address, into VPP.
//! * **VPP side**: the af_packet interface, tagged [`HOST_LINK_TAG`], MAC
//!   [`HOST_LINK_MAC`], unnumbered to the gateway loopback (so in the pods' VRF), up; a
//!   static neighbour for the tunnel address and a route `<tunnel address>/32` out of it in
//!   table 0 (where the tunnels deliver).
//!
//! So a remote pod reaches the host at the tunnel address (VPP decrypts and routes the /32
//! into the link), and the host reaches remote pods (VPP routes them by the peers' pod
//! CIDR routes into the protected tunnels): node ↔ remote pod traffic is pod-CIDR traffic
//! on the wire, encrypted, and fails closed with the same routes (drop until the tunnel is
//! protected and up, the cluster guard's drop for nodes not in the mesh). The host's
//! packets to pods have no other way out than VPP, whatever the state of the link.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use ipnet::IpNet;
use scrambler_core::{esp, Error, Mesh, Netns, ReconcileReport, Result};
use scrambler_netlink::address::Scope;
use scrambler_netlink::veth::{create_veth, Initially, VethSpec};
use scrambler_netlink::{
    parse_mac, Exists, LinkState, Neighbour, Nl, RouteSpec, RouteState, ROUTE_PROTO,
};
use scrambler_vpp_api::api::interface;
use scrambler_vpp_api::VppClient;

use super::host_steering::{self, HostLink};
use crate::attach::ops::{vpp_err, AttachCalls};
use crate::attach::{GATEWAY_V4, POD_TX_FRAMES};

/// The host end of the host link (holds the node's tunnel address).
pub const HOST_LINK_IF: &str = "scrambler0";
/// The end of the host link VPP takes (`host-scrambler0-vpp` in VPP).
pub const HOST_LINK_VPP_IF: &str = "scrambler0-vpp";
/// The VPP tag of the host link's interface.
pub const HOST_LINK_TAG: &str = "scrambler:host";
/// The `ifalias` of both veth ends of the host link.
pub const HOST_LINK_ALIAS: &str = "scrambler-vpp/host";
/// The MAC of VPP's end of the host link.
pub const HOST_LINK_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 2];

/// The host link's MTU on an underlay of MTU `underlay_mtu`: what pods get
/// ([`crate::VppAttach::pod_mtu`]), the ESP and IPIP overhead left room, over an IPv6
/// underlay when `outer_v6` (some peer pairs over IPv6: [`Mesh::outer_v6`]).
fn mtu(underlay_mtu: u32, outer_v6: bool) -> u32 {
    esp::pod_mtu(underlay_mtu, outer_v6)
}

/// The node's IPv4 tunnel address, if its pod CIDRs give one.
fn tunnel_v4(mesh: &Mesh) -> Option<Ipv4Addr> {
    match mesh.local.tunnel_address(false) {
        Some(IpAddr::V4(a)) => Some(a),
        _ => None,
    }
}

/// The host's routes into VPP in its main table: every IPv4 cluster CIDR via the gateway,
/// from `src`. (Node encryption's routes to peers' underlay addresses are in their own
/// table: [`super::host_steering`].)
fn host_routes(mesh: &Mesh, oif: u32, src: Ipv4Addr) -> Vec<RouteSpec> {
    mesh.cluster_cidrs
        .iter()
        .filter(|c| c.addr().is_ipv4())
        .map(|c| {
            RouteSpec::new(c.trunc(), Some(IpAddr::V4(GATEWAY_V4)), oif)
                .with_src(Some(IpAddr::V4(src)))
        })
        .collect()
}

/// Node encryption's steering of the host ([`host_steering::plan`]) for `mesh` and
/// `targets` ([`host_steering::targets`]), over the host link when it is there and the
/// node has an IPv4 tunnel address.
pub(super) async fn steering_plan(
    nl: &Nl,
    mesh: &Mesh,
    targets: &[IpAddr],
) -> Result<host_steering::Plan> {
    let link = match (tunnel_v4(mesh), owned_link(nl, HOST_LINK_IF).await?) {
        (Some(src), Some(l)) => Some(HostLink { oif: l.index, src }),
        _ => None,
    };
    let plan = host_steering::plan(mesh, link, targets);
    if plan.uncovered > 0 {
        tracing::warn!(
            uncovered = plan.uncovered,
            "node encryption: the host's traffic to {} peer underlay address(es) cannot ride \
             the mesh (an IPv6 address, or no IPv4 tunnel address on the host link): it is \
             refused by an unreachable route in table {}, but for the bypass ports",
            plan.uncovered,
            host_steering::HOST_ROUTE_TABLE
        );
    }
    Ok(plan)
}

/// A link of ours by name: `None` when there is none, an error when the name is taken by
/// something that is not Scrambler's host link.
async fn owned_link(nl: &Nl, name: &str) -> Result<Option<LinkState>> {
    match nl.link_by_name(name).await? {
        None => Ok(None),
        Some(l)
            if l.kind.as_deref() == Some("veth") && l.alias.as_deref() == Some(HOST_LINK_ALIAS) =>
        {
            Ok(Some(l))
        }
        Some(l) => Err(Error::AlreadyExists {
            object: nl.obj(&l.name),
            reason: format!(
                "the name of Scrambler's VPP host link is taken by an interface that is not \
                 its (kind {:?}, alias {:?}): rename or remove it",
                l.kind, l.alias
            ),
        }),
    }
}

/// True when `host` and `vpp_end`, the links named [`HOST_LINK_IF`] and
/// [`HOST_LINK_VPP_IF`], are a veth pair Scrambler made and did not finish marking: veths,
/// each the other's peer in the same namespace, neither with an alias other than
/// [`HOST_LINK_ALIAS`], one without it. The kernel ignores an alias in the request that
/// creates a link, so the aliases are set right after: a reconcile that died in between
/// leaves such a pair.
fn half_made_pair(host: &LinkState, vpp_end: &LinkState) -> bool {
    let unset = |l: &LinkState| l.alias.as_deref().is_none_or(str::is_empty);
    let ours_or_unset = |l: &LinkState| unset(l) || l.alias.as_deref() == Some(HOST_LINK_ALIAS);
    host.name == HOST_LINK_IF
        && vpp_end.name == HOST_LINK_VPP_IF
        && host.kind.as_deref() == Some("veth")
        && vpp_end.kind.as_deref() == Some("veth")
        && host.parent == Some(vpp_end.index)
        && vpp_end.parent == Some(host.index)
        && ours_or_unset(host)
        && ours_or_unset(vpp_end)
        && (unset(host) || unset(vpp_end))
}

/// Finishes a veth pair that a reconcile made but did not mark (see [`half_made_pair`]):
/// its ends get the alias. Returns whether it did.
async fn adopt_half_made_pair(nl: &Nl) -> Result<bool> {
    let (Some(host), Some(vpp_end)) = (
        nl.link_by_name(HOST_LINK_IF).await?,
        nl.link_by_name(HOST_LINK_VPP_IF).await?,
    ) else {
        return Ok(false);
    };
    if !half_made_pair(&host, &vpp_end) {
        return Ok(false);
    }
    for l in [&host, &vpp_end] {
        if l.alias.as_deref() != Some(HOST_LINK_ALIAS) {
            nl.set_alias(l.index, &l.name, HOST_LINK_ALIAS).await?;
        }
    }
    tracing::info!(
        "host link {HOST_LINK_IF} / {HOST_LINK_VPP_IF} found without its alias (made by a \
         reconcile that stopped before marking it): adopted"
    );
    Ok(true)
}

/// Brings the host link of the node in `netns` (VPP over `c`) to `mesh`, its MTU that of
/// pods on an underlay of MTU `underlay_mtu`, and node encryption's steering of the host
/// for `targets` ([`host_steering::targets`]). A node without an IPv4 tunnel address gets
/// no link (and with node encryption, unreachable routes for `targets`).
pub(super) async fn reconcile(
    c: &VppClient,
    netns: &Netns,
    mesh: &Mesh,
    underlay_mtu: u32,
    targets: &[IpAddr],
) -> Result<ReconcileReport> {
    let mtu = mtu(underlay_mtu, mesh.outer_v6());
    let nl = Nl::open(netns).await?;
    let Some(addr) = tunnel_v4(mesh) else {
        let plan = steering_plan(&nl, mesh, targets).await?;
        return host_steering::reconcile(&nl, &plan).await;
    };
    let mut rep = ReconcileReport::default();
    let ops = AttachCalls { c };
    if adopt_half_made_pair(&nl).await? {
        rep.updated += 1;
    }

    // a link holding another address (the node's pod CIDR changed) is made afresh
    if let Some(l) = owned_link(&nl, HOST_LINK_IF).await? {
        let have = nl.addresses(l.index).await?;
        if have
            .iter()
            .any(|a| a.addr().is_ipv4() && *a != IpNet::from(IpAddr::V4(addr)))
        {
            rep.removed += remove(c, netns).await?;
        }
    }

    // the veth pair, both ends in the node's namespace, marked ours (alias) right after it is
    // made (the kernel takes no alias when creating a link); a name taken by a link
    // without the alias is refused, never adopted — but the half-made pair adopted above
    let host = match owned_link(&nl, HOST_LINK_IF).await? {
        Some(l) => {
            rep.unchanged += 1;
            l
        }
        None => {
            if owned_link(&nl, HOST_LINK_VPP_IF).await?.is_some() {
                // a pair is deleted as a whole: an end alone is not ours to guess about
                return Err(Error::AlreadyExists {
                    object: nl.obj(HOST_LINK_VPP_IF),
                    reason: format!("host link end without its peer {HOST_LINK_IF}"),
                });
            }
            let ns = netns.open()?;
            create_veth(
                &nl,
                &VethSpec {
                    name: HOST_LINK_IF,
                    peer_name: HOST_LINK_VPP_IF,
                    peer_netns_fd: ns.as_raw_fd(),
                    mtu,
                    state: Initially::Up,
                },
            )
            .await?;
            rep.added += 1;
            for name in [HOST_LINK_IF, HOST_LINK_VPP_IF] {
                let l = nl.existing_link(name).await?;
                nl.set_alias(l.index, name, HOST_LINK_ALIAS).await?;
            }
            nl.existing_link(HOST_LINK_IF).await?
        }
    };
    let vpp_end = nl.existing_link(HOST_LINK_VPP_IF).await?;
    for l in [&host, &vpp_end] {
        if !l.up || l.mtu != Some(mtu) {
            nl.set_mtu_and_up(l.index, &l.name, mtu).await?;
            rep.updated += 1;
        }
    }
    let host_mac = host.mac.as_deref().and_then(parse_mac).ok_or_else(|| {
        Error::kernel(
            "read MAC of",
            nl.obj(HOST_LINK_IF),
            "the veth reports no MAC",
        )
    })?;

    // VPP's end: af_packet, unnumbered to the gateway loopback, up
    let (gw, table) = ops.ensure_gateway().await?;
    let sw = match ops.pod_interface(HOST_LINK_VPP_IF).await? {
        Some(p) if p.tag == HOST_LINK_TAG => {
            rep.unchanged += 1;
            p.sw_if_index
        }
        Some(p) => {
            return Err(Error::AlreadyExists {
                object: format!("VPP interface host-{HOST_LINK_VPP_IF}"),
                reason: format!(
                    "it is tagged {:?}, not {HOST_LINK_TAG:?}: not Scrambler's host link",
                    p.tag
                ),
            })
        }
        None => {
            rep.added += 1;
            ops.create_pod_interface(
                HOST_LINK_TAG,
                HOST_LINK_VPP_IF,
                HOST_LINK_MAC,
                POD_TX_FRAMES,
            )
            .await?
        }
    };
    // unnumbered to the gateway, so in its table (the pods' VRF); all idempotent: a
    // reconcile that died between creating and configuring finishes it
    if ops.interface_table(sw).await? != table {
        ops.set_table(sw, table).await?;
    }
    c.request(&interface::SwInterfaceSetUnnumbered {
        sw_if_index: gw,
        unnumbered_sw_if_index: sw,
        is_add: true,
    })
    .await
    .map_err(vpp_err("make unnumbered to the gateway", HOST_LINK_VPP_IF))?;
    ops.set_up(sw, HOST_LINK_VPP_IF).await?;

    // VPP: the tunnel address behind the link
    let ip = IpAddr::V4(addr);
    let neigh = ops.neighbours(sw, false).await?;
    if !neigh.contains(&(ip, host_mac)) {
        for (old, mac) in neigh.iter().filter(|(a, _)| *a == ip) {
            ops.neighbour(sw, *old, *mac, false).await?;
        }
        ops.neighbour(sw, ip, host_mac, true).await?;
        rep.added += 1;
    }
    let routed = ops.routes_via(sw, false).await?;
    if !routed.contains(&IpNet::from(ip)) {
        ops.route(sw, ip, true).await?;
        rep.added += 1;
    }
    // a former tunnel address (the node's pod CIDR changed) goes
    for p in routed
        .iter()
        .filter(|p| p.addr() != ip && p.prefix_len() == 32)
    {
        ops.route(sw, p.addr(), false).await?;
        rep.removed += 1;
    }

    // the host: its tunnel address, the gateway as a permanent neighbour, routes into VPP
    let want = IpNet::from(ip);
    if nl
        .add_address(&host, want, Scope::Global, Exists::Keep)
        .await?
    {
        rep.added += 1;
    }
    let gw_ip = IpAddr::V4(GATEWAY_V4);
    let host_neigh = nl.neighbours(host.index).await?;
    if !host_neigh
        .iter()
        .any(|n| n.ip == gw_ip && n.mac == Some(HOST_LINK_MAC) && n.permanent)
    {
        if host_neigh.iter().any(|n| n.ip == gw_ip) {
            return Err(Error::AlreadyExists {
                object: format!("neighbour {gw_ip} on {}", nl.obj(HOST_LINK_IF)),
                reason: "it is not the permanent entry Scrambler sets".into(),
            });
        }
        nl.add_permanent_neighbour(host.index, HOST_LINK_IF, gw_ip, &HOST_LINK_MAC)
            .await?;
        rep.added += 1;
    }
    let link_route = RouteSpec::new(IpNet::from(gw_ip), None, host.index);
    let routes = host_routes(mesh, host.index, addr);
    let owned = nl.owned_routes(host.index, ROUTE_PROTO).await?;
    for r in std::iter::once(&link_route).chain(&routes) {
        let present = owned
            .iter()
            .any(|o| o.dst == r.dst && o.gw == r.gw && o.src == r.src);
        if present {
            rep.unchanged += 1;
            continue;
        }
        if !nl.add_route(r, Exists::Keep).await? {
            return Err(Error::AlreadyExists {
                object: format!("route {} {}", r.name(), nl.obj("")),
                reason: "a route to that destination that is not Scrambler's host link's \
                         exists: the host's traffic to it (pods, or with node encryption a \
                         peer's underlay address) would not reach VPP"
                    .into(),
            });
        }
        rep.added += 1;
    }
    // node encryption's table and rules before the main table's stale routes go: a
    // release before this one put the peers' /32s into the main table (they go below)
    let plan = steering_plan(&nl, mesh, targets).await?;
    let steer = host_steering::reconcile(&nl, &plan).await?;
    rep.added += steer.added;
    rep.removed += steer.removed;
    rep.unchanged += steer.unchanged;
    let stale: Vec<RouteSpec> = owned
        .iter()
        .filter(|o| {
            !std::iter::once(&link_route)
                .chain(&routes)
                .any(|r| o.dst == r.dst && o.gw == r.gw)
        })
        .map(|o| RouteSpec::new(o.dst, o.gw, host.index).with_src(o.src))
        .collect();
    rep.removed += stale.len();
    nl.delete_routes(&stale).await?;
    Ok(rep)
}

/// Whether the host side of the link has what a reconcile gives it besides its address:
/// the permanent neighbour for the gateway ([`GATEWAY_V4`] → [`HOST_LINK_MAC`]), and,
/// with route protocol [`ROUTE_PROTO`] out of the link (`owned`), the link route to the
/// gateway and every cluster CIDR route via it from the tunnel address (`routes`).
fn host_side_complete(
    neigh: &[Neighbour],
    owned: &[RouteState],
    oif: u32,
    routes: &[RouteSpec],
) -> bool {
    let gw_ip = IpAddr::V4(GATEWAY_V4);
    let link_route = RouteSpec::new(IpNet::from(gw_ip), None, oif);
    neigh
        .iter()
        .any(|n| n.ip == gw_ip && n.mac == Some(HOST_LINK_MAC) && n.permanent)
        && std::iter::once(&link_route).chain(routes).all(|r| {
            owned.iter().any(|o| {
                o.oif == Some(oif)
                    && o.protocol == ROUTE_PROTO
                    && o.dst == r.dst
                    && o.gw == r.gw
                    && o.src == r.src
            })
        })
}

/// Whether the host link of the node in `netns` is in place for `mesh`: the veth pair up
/// with the tunnel address and the MTU for `underlay_mtu`, the gateway's permanent
/// neighbour and the routes into VPP (the link route, one per IPv4 cluster CIDR); VPP's
/// tagged interface up, in the gateway's table, with the /32 route (true when the node
/// has no IPv4 tunnel address). Node encryption's steering is checked apart
/// ([`host_steering::missing`]).
pub(super) async fn in_place(
    c: &VppClient,
    netns: &Netns,
    mesh: &Mesh,
    underlay_mtu: u32,
) -> Result<bool> {
    let Some(addr) = tunnel_v4(mesh) else {
        return Ok(true);
    };
    let nl = Nl::open(netns).await?;
    let Some(host) = owned_link(&nl, HOST_LINK_IF).await.ok().flatten() else {
        return Ok(false);
    };
    let want = IpNet::from(IpAddr::V4(addr));
    if !host.up
        || host.mtu != Some(mtu(underlay_mtu, mesh.outer_v6()))
        || !nl.addresses(host.index).await?.contains(&want)
    {
        return Ok(false);
    }
    let neigh = nl.neighbours(host.index).await?;
    let owned = nl.owned_routes(host.index, ROUTE_PROTO).await?;
    let routes = host_routes(mesh, host.index, addr);
    if !host_side_complete(&neigh, &owned, host.index, &routes) {
        return Ok(false);
    }
    let ops = AttachCalls { c };
    let Some(gw) = ops.find_gateway().await? else {
        return Ok(false);
    };
    match ops.pod_interface(HOST_LINK_VPP_IF).await? {
        Some(p) if p.tag == HOST_LINK_TAG && p.up => Ok(ops.interface_table(p.sw_if_index).await?
            == ops.interface_table(gw).await?
            && ops.routes_via(p.sw_if_index, false).await?.contains(&want)),
        _ => Ok(false),
    }
}

/// Takes the host link away (node encryption's rules and routes of the host, VPP's
/// interface with its neighbour and route, then the veth pair with the host's address and
/// routes); returns how many objects went.
pub(super) async fn remove(c: &VppClient, netns: &Netns) -> Result<usize> {
    let ops = AttachCalls { c };
    let mut n = host_steering::remove(netns).await?;
    if let Some(p) = ops.pod_interface(HOST_LINK_VPP_IF).await? {
        if p.tag == HOST_LINK_TAG {
            ops.remove_found_pod_interface(&p).await?;
            n += 1;
        }
    }
    let nl = Nl::open(netns).await?;
    adopt_half_made_pair(&nl).await?;
    for name in [HOST_LINK_IF, HOST_LINK_VPP_IF] {
        if let Some(l) = owned_link(&nl, name).await? {
            if nl.delete_link(l.index, name).await? {
                n += 1;
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::tests::mesh;

    fn owned(r: &RouteSpec) -> RouteState {
        RouteState {
            dst: r.dst,
            gw: r.gw,
            oif: Some(r.oif),
            table: scrambler_netlink::MAIN_TABLE,
            protocol: ROUTE_PROTO,
            src: r.src,
            unreachable: false,
            metric: None,
        }
    }

    #[test]
    fn only_an_unmarked_pair_of_the_host_links_names_is_adopted() {
        let end = |index, name: &str, peer, alias: Option<&str>| LinkState {
            index,
            name: name.into(),
            kind: Some("veth".into()),
            parent: Some(peer),
            alias: alias.map(String::from),
            ..Default::default()
        };
        let host = end(4, HOST_LINK_IF, 5, None);
        let vpp = end(5, HOST_LINK_VPP_IF, 4, None);
        assert!(half_made_pair(&host, &vpp));
        // one end marked already (the reconcile died between the two aliases)
        assert!(half_made_pair(
            &end(4, HOST_LINK_IF, 5, Some(HOST_LINK_ALIAS)),
            &vpp
        ));
        // both marked: a finished pair, nothing to adopt
        let done = end(5, HOST_LINK_VPP_IF, 4, Some(HOST_LINK_ALIAS));
        assert!(!half_made_pair(
            &end(4, HOST_LINK_IF, 5, Some(HOST_LINK_ALIAS)),
            &done
        ));
        // someone else's: another alias, not each other's peer, not veths
        assert!(!half_made_pair(
            &end(4, HOST_LINK_IF, 5, Some("theirs")),
            &vpp
        ));
        assert!(!half_made_pair(&host, &end(5, HOST_LINK_VPP_IF, 9, None)));
        assert!(!half_made_pair(&end(4, HOST_LINK_IF, 9, None), &vpp));
        let mut dummy = host.clone();
        dummy.kind = Some("dummy".into());
        assert!(!half_made_pair(&dummy, &vpp));
        // a peer in another namespace (its index there could be anything)
        let mut far = vpp.clone();
        far.name = "eth0".into();
        assert!(!half_made_pair(&host, &far));
    }

    #[test]
    fn the_host_side_needs_its_neighbour_and_every_route() {
        let m = mesh(scrambler_core::Keys::single(1));
        let addr = tunnel_v4(&m).unwrap();
        let routes = host_routes(&m, 5, addr);
        assert_eq!(routes.len(), 1);
        let link = RouteSpec::new(IpNet::from(IpAddr::V4(GATEWAY_V4)), None, 5);
        let all: Vec<RouteState> = std::iter::once(&link).chain(&routes).map(owned).collect();
        let neigh = vec![Neighbour {
            ip: IpAddr::V4(GATEWAY_V4),
            mac: Some(HOST_LINK_MAC),
            permanent: true,
        }];
        assert!(host_side_complete(&neigh, &all, 5, &routes));
        // a cluster CIDR route gone, or another protocol's, or from another source
        assert!(!host_side_complete(&neigh, &all[..1], 5, &routes));
        let mut foreign = all.clone();
        foreign[1].protocol = 4;
        assert!(!host_side_complete(&neigh, &foreign, 5, &routes));
        let mut other_src = all.clone();
        other_src[1].src = None;
        assert!(!host_side_complete(&neigh, &other_src, 5, &routes));
        // the link route gone
        assert!(!host_side_complete(&neigh, &all[1..], 5, &routes));
        // the neighbour gone, not permanent, or another MAC
        assert!(!host_side_complete(&[], &all, 5, &routes));
        let mut n = neigh.clone();
        n[0].permanent = false;
        assert!(!host_side_complete(&n, &all, 5, &routes));
        let mut n = neigh.clone();
        n[0].mac = Some([2, 0, 0, 0, 0, 9]);
        assert!(!host_side_complete(&n, &all, 5, &routes));
    }

    #[test]
    fn node_encryption_adds_nothing_to_the_main_table() {
        let mut m = mesh(scrambler_core::Keys::single(1));
        let addr = tunnel_v4(&m).unwrap();
        let off = host_routes(&m, 5, addr);
        m.node_encryption = Some(Default::default());
        // the peers' routes are in the host's steering table (host_steering), so a main
        // table /32 a release before made is stale here and goes
        assert_eq!(host_routes(&m, 5, addr), off);
        assert_eq!(off.len(), 1);
    }

    #[test]
    fn host_link_mtu_leaves_room_for_the_outer_family() {
        assert_eq!(mtu(1500, false), 1440);
        assert_eq!(mtu(1500, true), 1420);
        let mut m = crate::tunnel::tests::mesh(scrambler_core::Keys::single(1));
        assert_eq!(mtu(1500, m.outer_v6()), 1440);
        m.local.underlay.push("2001:db8::1".parse().unwrap());
        m.peers[0].underlay.push("2001:db8::2".parse().unwrap());
        assert_eq!(mtu(1500, m.outer_v6()), 1420);
    }
}
