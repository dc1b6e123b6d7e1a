//! The routed-pod plan both veth dataplanes share (scrambler-cni's `veth` attachment and
//! scrambler-vpp's attachment): a pod has no on-link subnet and routes everything through a
//! link-local gateway that is the same in every pod ([`GATEWAY_V4`], [`GATEWAY_V6`]), and the
//! node end of its veth is named from the attachment id ([`host_ifname`]).
//!
//! Pure data: which gateway, which routes, which name. The dataplanes put it into the kernel
//! or VPP.

use crate::result::{CniResult, Interface, IpConfig, Route};
use crate::traits::AttachmentId;
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 gateway every pod routes through.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway every pod routes through (link-local).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Hex digits of [`attachment_digest`] in a [`host_ifname`] (with a 3-byte prefix the name
/// stays within the kernel's 15 bytes).
pub const HOST_IFNAME_DIGITS: usize = 11;

/// The gateway of an address family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

/// SHA-256 over container id, a NUL and ifname: stable and distinct per attachment.
pub fn attachment_digest(id: &AttachmentId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(id.container_id.as_bytes());
    h.update([0u8]);
    h.update(id.ifname.as_bytes());
    h.finalize().into()
}

/// Name of the node end of an attachment's veth: `prefix` and the first
/// [`HOST_IFNAME_DIGITS`] hex digits of [`attachment_digest`].
pub fn host_ifname(prefix: &str, id: &AttachmentId) -> String {
    let hex = hex::encode(attachment_digest(id));
    format!("{prefix}{}", &hex[..HOST_IFNAME_DIGITS])
}

/// The `ifalias` marking the node end of an attachment's veth as one network's:
/// `<mark>/<network>/<container id>/<ifname>`, `mark` naming the dataplane.
pub fn owner_alias(mark: &str, network: &str, id: &AttachmentId) -> String {
    format!("{mark}/{network}/{}/{}", id.container_id, id.ifname)
}

/// An [`owner_alias`] of `mark` taken apart: (network, attachment). `None` for any other
/// alias: another mark, or not exactly four non-empty `/`-separated fields (so the alias
/// of a network name holding a `/`, which older releases accepted, is no network's).
/// Callers compare the fields for equality: a network never owns by prefix.
pub fn parse_owner_alias<'a>(mark: &str, alias: &'a str) -> Option<(&'a str, AttachmentId)> {
    let mut fields = alias.split('/');
    let mut next = || fields.next().filter(|f| !f.is_empty());
    let (m, network, cid, ifname) = (next()?, next()?, next()?, next()?);
    (m == mark && fields.next().is_none()).then(|| (network, AttachmentId::new(cid, ifname)))
}

/// The routes a pod gets: the IPAM's routes with the next hop replaced by the gateway, and
/// a default route for every address family that has an address but no route; IPv4 first,
/// each route once.
pub fn pod_routes(addrs: &CniResult) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    for v6 in [false, true] {
        if !addrs.ips.iter().any(|c| c.address.addr().is_ipv6() == v6) {
            continue;
        }
        let fam: Vec<Route> = addrs
            .routes
            .iter()
            .filter(|r| r.dst.addr().is_ipv6() == v6)
            .map(|r| Route {
                dst: r.dst.trunc(),
                gw: Some(gateway_for(r.dst.addr())),
                mtu: r.mtu,
            })
            .collect();
        if fam.is_empty() {
            let any = if v6 {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            };
            out.push(Route {
                dst: IpNet::new(any, 0).unwrap_or_else(|_| IpNet::from(any)),
                gw: Some(gateway_for(any)),
                mtu: None,
            });
        } else {
            for r in fam {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// The CNI result of a routed pod: `interfaces` (the node end, then the pod end, which the
/// addresses name as interface 1), every IPAM address as a host address (`/32`, `/128`) with
/// the gateway of its family, [`pod_routes`], and the IPAM's DNS.
pub fn pod_result(addrs: &CniResult, interfaces: Vec<Interface>) -> CniResult {
    let ips = addrs
        .ips
        .iter()
        .map(|c| {
            let address = IpNet::from(c.address.addr());
            IpConfig {
                address,
                gateway: Some(gateway_for(address.addr())),
                interface: Some(1),
            }
        })
        .collect();
    CniResult {
        interfaces,
        ips,
        routes: pod_routes(addrs),
        dns: addrs.dns.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("scr", &AttachmentId::new("c0ffee", "eth0"));
        assert_eq!(a, host_ifname("scr", &AttachmentId::new("c0ffee", "eth0")));
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("scr"));
        assert_ne!(a, host_ifname("scr", &AttachmentId::new("c0ffee", "eth1")));
        assert_ne!(
            host_ifname("scr", &AttachmentId::new("ab", "ceth0")),
            host_ifname("scr", &AttachmentId::new("abc", "eth0"))
        );
    }

    #[test]
    fn owner_aliases_parse_exactly() {
        let id = AttachmentId::new("c0ffee", "eth0");
        let a = owner_alias("scrambler", "a", &id);
        assert_eq!(a, "scrambler/a/c0ffee/eth0");
        assert_eq!(parse_owner_alias("scrambler", &a), Some(("a", id.clone())));
        let ab = owner_alias("scrambler", "a-b", &id);
        assert_eq!(parse_owner_alias("scrambler", &ab), Some(("a-b", id)));
        // what a network named "a/b" got from older releases: nobody's, not network a's
        for other in [
            "scrambler/a/b/c0ffee/eth0",
            "scrambler/a/c0ffee",
            "scrambler/a/c0ffee/",
            "scrambler//c0ffee/eth0",
            "scrambler-vpp/a/c0ffee/eth0",
            "scramblerx/a/c0ffee/eth0",
            "",
        ] {
            assert_eq!(parse_owner_alias("scrambler", other), None, "{other:?}");
        }
    }

    #[test]
    fn routes_default_per_family_and_use_the_gateway() {
        let mut r = CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: None,
            }],
            ..Default::default()
        };
        let routes = pod_routes(&r);
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(routes[0].gw, Some(IpAddr::V4(GATEWAY_V4)));
        r.routes.push(Route {
            dst: "10.0.0.0/8".parse().unwrap(),
            gw: Some("10.1.0.1".parse().unwrap()),
            mtu: None,
        });
        r.ips.push(IpConfig {
            address: "fd00::5/64".parse().unwrap(),
            gateway: None,
            interface: None,
        });
        let routes = pod_routes(&r);
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].dst.to_string(), "10.0.0.0/8");
        assert_eq!(routes[1].dst.to_string(), "::/0");
        assert_eq!(routes[1].gw, Some(IpAddr::V6(GATEWAY_V6)));
    }

    #[test]
    fn routes_are_listed_once_ipv4_first() {
        let r = CniResult {
            ips: vec![
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: None,
                },
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: None,
                    interface: None,
                },
            ],
            routes: ["10.0.0.0/8", "10.2.0.0/16", "10.0.0.1/8"]
                .iter()
                .map(|d| Route {
                    dst: d.parse().unwrap(),
                    gw: None,
                    mtu: None,
                })
                .collect(),
            ..Default::default()
        };
        let dsts: Vec<String> = pod_routes(&r).iter().map(|r| r.dst.to_string()).collect();
        assert_eq!(dsts, ["10.0.0.0/8", "10.2.0.0/16", "::/0"]);
    }

    #[test]
    fn result_has_host_addresses_via_the_gateway() {
        let addrs = CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: Some("10.1.0.1".parse().unwrap()),
                interface: Some(7),
            }],
            ..Default::default()
        };
        let r = pod_result(&addrs, vec![]);
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.ips[0].address.to_string(), "10.1.0.5/32");
        assert_eq!(r.ips[0].gateway, Some(IpAddr::V4(GATEWAY_V4)));
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.routes, pod_routes(&addrs));
    }
}
