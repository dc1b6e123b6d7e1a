//! Node encryption on a VPP node's host: which of the host's own packets ride the mesh.
//!
//! The host reaches peers' underlay addresses through the host link ([`super::host_link`])
//! only for the traffic node encryption steers, the way the kernel dataplane steers its
//! host: policy-routing rules in the host's namespace ([`SteeringRules`], shared with
//! `scrambler-xfrm`) at priorities [`HOST_RULE_PRIORITY`]..+2 — bypass `goto` rules per
//! bypass port, `ipproto P lookup` [`HOST_ROUTE_TABLE`] per steered protocol, a `nop` —
//! and in that table, marked with [`ROUTE_PROTO`], one route per target address
//! ([`targets`]): `<addr>/32 via` the host link's gateway `src <tunnel address>` when the
//! host link can carry it, else `unreachable <addr>` (an IPv6 address — the host link
//! holds no IPv6 tunnel address —, or every address on a node without an IPv4 tunnel
//! address): the host's steered traffic to it is refused, never sent by another route
//! of the host's. Bypass-port traffic goes on with the main table: a host that reaches its
//! datastore through a NIC of its own keeps reaching it whatever the mesh's state.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use scrambler_core::{Mesh, Netns, ReconcileReport, Result};
use scrambler_netlink::{Exists, Nl, RouteSpec, RouteState, RuleSpec, SteeringRules, ROUTE_PROTO};

use crate::attach::GATEWAY_V4;

/// The host's routing table of node encryption's routes (`table 92`): Scrambler's on a VPP
/// node (its routes carry [`ROUTE_PROTO`]).
pub const HOST_ROUTE_TABLE: u32 = 0x5c;
/// Priority of the host's bypass rules; the steering rules follow at +1, the `nop` at +2
/// (the priorities the kernel dataplane gives them by default).
pub const HOST_RULE_PRIORITY: u32 = 0x5c01;

/// The host's steering rules' places and marks.
pub(super) fn steering() -> SteeringRules {
    SteeringRules {
        bypass: HOST_RULE_PRIORITY,
        steer: HOST_RULE_PRIORITY + 1,
        nop: HOST_RULE_PRIORITY + 2,
        table: HOST_ROUTE_TABLE,
        protocol: ROUTE_PROTO,
    }
}

/// The addresses whose host traffic node encryption steers: every peer's underlay address
/// (both families), and the underlay address of a departed peer as long as VPP keeps its
/// drop route in the pods' table (`pods_table`, the owned routes there: the tombstone), so
/// that the host's traffic to it still meets that drop rather than any other route of the
/// host's; never a local underlay address.
pub(super) fn targets<'a>(
    mesh: &Mesh,
    pods_table: impl IntoIterator<Item = &'a IpNet>,
) -> Vec<IpAddr> {
    let peers = mesh.peers.iter().flat_map(|p| p.underlay.iter().copied());
    let kept = pods_table
        .into_iter()
        .filter(|p| p.prefix_len() == p.max_prefix_len())
        .map(|p| p.addr());
    let mut v: Vec<IpAddr> = peers
        .chain(kept)
        .filter(|a| !mesh.local.underlay.contains(a))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The host link as a way into VPP: its host end's index and the tunnel address.
#[derive(Debug, Clone, Copy)]
pub(super) struct HostLink {
    pub oif: u32,
    pub src: Ipv4Addr,
}

/// What the host's namespace gets for `mesh`: routes in [`HOST_ROUTE_TABLE`] and rules.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub routes: Vec<RouteSpec>,
    pub rules: Vec<RuleSpec>,
    /// Target addresses with an `unreachable` route: node encryption on, but the host's
    /// traffic to them cannot ride the mesh (it is refused).
    pub uncovered: usize,
}

/// The plan for `mesh` (nothing with node encryption off) over the host link `link` (none:
/// the node has no IPv4 tunnel address) for `targets`.
pub(super) fn plan(mesh: &Mesh, link: Option<HostLink>, targets: &[IpAddr]) -> Plan {
    let Some(ne) = &mesh.node_encryption else {
        return Plan::default();
    };
    let mut p = Plan::default();
    for a in targets {
        let dst = IpNet::from(*a);
        let route = match (a, link) {
            (IpAddr::V4(_), Some(l)) => RouteSpec::new(dst, Some(IpAddr::V4(GATEWAY_V4)), l.oif)
                .with_src(Some(IpAddr::V4(l.src))),
            _ => {
                p.uncovered += 1;
                RouteSpec {
                    unreachable: true,
                    ..RouteSpec::new(dst, None, 0)
                }
            }
        };
        p.routes.push(route.in_table(HOST_ROUTE_TABLE));
    }
    for v6 in [false, true] {
        if targets.iter().any(|a| a.is_ipv6() == v6) {
            p.rules.extend(steering().rules(v6, &ne.bypass));
        }
    }
    p
}

/// Whether the kernel's route `o` is `r`.
fn same_route(o: &RouteState, r: &RouteSpec) -> bool {
    o.dst == r.dst
        && o.unreachable == r.unreachable
        && (r.unreachable || (o.gw == r.gw && o.src == r.src && o.oif == Some(r.oif)))
}

/// The host's routes in [`HOST_ROUTE_TABLE`] marked with [`ROUTE_PROTO`], and its rules of
/// the steering shapes ([`SteeringRules::is_owned`]).
async fn owned(nl: &Nl) -> Result<(Vec<RouteState>, Vec<RuleSpec>)> {
    let routes = nl
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.table == HOST_ROUTE_TABLE && r.protocol == ROUTE_PROTO)
        .collect();
    let s = steering();
    let rules = nl
        .rules()
        .await?
        .iter()
        .filter_map(|r| r.spec())
        .filter(|r| s.is_owned(r))
        .collect();
    Ok((routes, rules))
}

/// The route as a deletable spec.
fn spec_of(o: &RouteState) -> RouteSpec {
    RouteSpec {
        unreachable: o.unreachable,
        metric: o.metric,
        ..RouteSpec::new(o.dst, o.gw, o.oif.unwrap_or(0)).with_src(o.src)
    }
    .in_table(o.table)
}

/// Brings the host's routes and rules to `want`: a changed route is replaced (deleted, then
/// added), missing routes are added before the rules, stale rules go before stale routes.
pub(super) async fn reconcile(nl: &Nl, want: &Plan) -> Result<ReconcileReport> {
    let mut rep = ReconcileReport::default();
    let (routes, rules) = owned(nl).await?;
    for r in &want.routes {
        if routes.iter().any(|o| same_route(o, r)) {
            rep.unchanged += 1;
            continue;
        }
        for o in routes.iter().filter(|o| o.dst == r.dst) {
            nl.delete_route(&spec_of(o)).await?;
        }
        nl.add_route(r, Exists::Fail).await?;
        rep.added += 1;
    }
    for r in &want.rules {
        if rules.contains(r) {
            rep.unchanged += 1;
        } else {
            nl.add_rule(r, Exists::Keep).await?;
            rep.added += 1;
        }
    }
    for r in rules.iter().filter(|r| !want.rules.contains(r)) {
        nl.delete_rule(r).await?;
        rep.removed += 1;
    }
    for o in routes
        .iter()
        .filter(|o| !want.routes.iter().any(|r| r.dst == o.dst))
    {
        nl.delete_route(&spec_of(o)).await?;
        rep.removed += 1;
    }
    if rep.added + rep.removed > 0 {
        tracing::info!(
            added = rep.added,
            removed = rep.removed,
            "host steering of node encryption reconciled"
        );
    }
    Ok(rep)
}

/// How many of `want`'s routes and rules the host's namespace lacks.
pub(super) async fn missing(nl: &Nl, want: &Plan) -> Result<usize> {
    let (routes, rules) = owned(nl).await?;
    let routes_missing = want
        .routes
        .iter()
        .filter(|r| !routes.iter().any(|o| same_route(o, r)))
        .count();
    let rules_missing = want.rules.iter().filter(|r| !rules.contains(r)).count();
    Ok(routes_missing + rules_missing)
}

/// Takes the host's steering rules and routes away; returns how many went.
pub(super) async fn remove(netns: &Netns) -> Result<usize> {
    let nl = Nl::open(netns).await?;
    reconcile(&nl, &Plan::default()).await.map(|r| r.removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::tests::mesh;
    use scrambler_core::node_encryption::{BypassPort, BypassProto, NodeEncryption};
    use scrambler_netlink::RuleTarget;

    fn ne(m: &mut Mesh) {
        m.node_encryption = Some(NodeEncryption {
            bypass: vec![BypassPort {
                proto: BypassProto::Tcp,
                port: 2379,
            }],
        });
    }

    #[test]
    fn targets_are_peers_and_tombstones_of_both_families_never_local() {
        let m = mesh(scrambler_core::Keys::single(1));
        let table: [IpNet; 5] = [
            "192.0.2.2/32".parse().unwrap(),
            "192.0.2.9/32".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
            "2001:db8::2/128".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ];
        let t = targets(&m, &table);
        let want: Vec<IpAddr> = ["192.0.2.2", "192.0.2.9", "2001:db8::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(t, want);
    }

    #[test]
    fn steered_ipv4_goes_into_vpp_the_rest_is_unreachable_in_the_table() {
        let mut m = mesh(scrambler_core::Keys::single(1));
        let t: Vec<IpAddr> = ["192.0.2.2", "2001:db8::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let link = HostLink {
            oif: 5,
            src: Ipv4Addr::new(10, 0, 1, 1),
        };
        // off: nothing
        assert_eq!(plan(&m, Some(link), &t), Plan::default());
        ne(&mut m);
        let p = plan(&m, Some(link), &t);
        assert!(p
            .routes
            .iter()
            .all(|r| r.table == HOST_ROUTE_TABLE && r.protocol == ROUTE_PROTO));
        assert_eq!(p.routes[0].dst, "192.0.2.2/32".parse::<IpNet>().unwrap());
        assert_eq!(p.routes[0].gw, Some(IpAddr::V4(GATEWAY_V4)));
        assert_eq!(p.routes[0].src, Some(IpAddr::V4(link.src)));
        assert!(!p.routes[0].unreachable);
        assert!(p.routes[1].unreachable);
        assert_eq!(p.uncovered, 1);
        // both families' rules: per family 2 bypass, 4 steering, 1 nop
        assert_eq!(p.rules.len(), 14);
        let s = steering();
        assert!(p.rules.iter().all(|r| s.is_owned(r)));
        assert!(p
            .rules
            .iter()
            .filter(|r| r.priority == s.steer)
            .all(|r| r.target == RuleTarget::Table(HOST_ROUTE_TABLE)));
        assert!(p
            .rules
            .iter()
            .any(|r| r.dport == Some(2379) && r.target == RuleTarget::Goto(s.nop)));
        // no host link (no IPv4 tunnel address): every address refused
        let p = plan(&m, None, &t);
        assert!(p.routes.iter().all(|r| r.unreachable));
        assert_eq!(p.uncovered, 2);
        // IPv4 targets only: IPv4 rules only
        let p = plan(&m, Some(link), &t[..1]);
        assert_eq!(p.rules.len(), 7);
        assert!(p.rules.iter().all(|r| r.src.addr().is_ipv4()));
    }

    #[test]
    fn a_route_is_the_same_only_with_its_gateway_source_and_kind() {
        let r = RouteSpec::new(
            "192.0.2.2/32".parse().unwrap(),
            Some(IpAddr::V4(GATEWAY_V4)),
            5,
        )
        .with_src(Some("10.0.1.1".parse().unwrap()))
        .in_table(HOST_ROUTE_TABLE);
        let o = RouteState {
            dst: r.dst,
            gw: r.gw,
            oif: Some(5),
            table: HOST_ROUTE_TABLE,
            protocol: ROUTE_PROTO,
            src: r.src,
            unreachable: false,
            metric: None,
        };
        assert!(same_route(&o, &r));
        assert!(!same_route(
            &RouteState {
                src: None,
                ..o.clone()
            },
            &r
        ));
        assert!(!same_route(
            &RouteState {
                oif: Some(6),
                ..o.clone()
            },
            &r
        ));
        let u = RouteState {
            unreachable: true,
            gw: None,
            oif: None,
            src: None,
            ..o.clone()
        };
        assert!(!same_route(&u, &r));
        let ur = RouteSpec {
            unreachable: true,
            ..RouteSpec::new(r.dst, None, 0)
        }
        .in_table(HOST_ROUTE_TABLE);
        assert!(same_route(&u, &ur));
        assert!(!same_route(&o, &ur));
        assert_eq!(spec_of(&o), r);
    }
}
